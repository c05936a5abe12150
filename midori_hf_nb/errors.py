"""Errors shared by the modules that find and check model files (kept apart so neither imports the other)."""

from __future__ import annotations


class ModelSourceError(FileNotFoundError):
    """A model source could not be found; the message says what was looked for."""


__all__ = ["ModelSourceError"]
