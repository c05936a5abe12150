"""The one place the optional ``openai`` client is imported (on the first call, never at import time)."""

from __future__ import annotations

from typing import Any


def import_openai() -> Any:
    """The ``openai`` module, or an ``ImportError`` naming the extra that installs it."""
    try:
        import openai
    except ImportError:
        raise ImportError("OpenAICompatibleAgent needs the openai client: pip install 'midori-hf-nb[openai]'") from None
    return openai


__all__ = ["import_openai"]
