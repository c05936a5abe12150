"""Errors shared across the package, kept apart so the modules that raise them need not import
each other: :class:`ModelSourceError` (finding and checking model files) and :class:`ConfigError`
with :func:`refusal_message`, the one wording of a refused value (configuration, settings,
generation options)."""

from __future__ import annotations

from typing import Any


class ModelSourceError(FileNotFoundError):
    """A model source could not be found; the message says what was looked for."""


class ConfigError(ValueError):
    """A configuration value or file is not acceptable; the message names the field or file."""


def _show(value: Any, limit: int = 80) -> str:
    """``repr(value)``, shortened when long."""
    text = repr(value)
    if len(text) > limit:
        size = f", {len(value)} items" if isinstance(value, (str, bytes, list, tuple, dict)) else ""
        text = f"{text[:limit - 20]}...{text[-8:]} (shortened{size})"
    return text


def refusal_message(field: str, value: Any, allowed: str) -> str:
    """The one wording of every refused value: ``FIELD=VALUE is not allowed: ALLOWED (got TYPE)``."""
    return f"{field}={_show(value)} is not allowed: {allowed} (got {type(value).__name__})"


__all__ = ["ConfigError", "ModelSourceError", "refusal_message"]
