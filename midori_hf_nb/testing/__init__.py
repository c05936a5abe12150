"""Utilities for tests and demos.

- :class:`ScriptedAgent` (no torch): a protocol agent that answers from a script, to test the
  notebook layer (display, chat panel, magics, comparison) without loading a model.
- :class:`ScriptedOutput` and :func:`build_tiny_model` (torch and transformers, imported on first
  use): exact output from a real generation, and a small random model to generate with.
"""

from __future__ import annotations

from typing import Any

from .scripted_agent import ScriptedAgent, ScriptedStream

_MODEL_NAMES = ("ScriptedOutput", "TOOLS_CHAT_TEMPLATE", "build_tiny_model")


def __getattr__(name: str) -> Any:
    if name in _MODEL_NAMES:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ScriptedAgent", "ScriptedOutput", "ScriptedStream", "TOOLS_CHAT_TEMPLATE", "build_tiny_model"]
