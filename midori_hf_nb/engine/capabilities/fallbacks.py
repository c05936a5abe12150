"""Fast paths that are off: :func:`fallback` warns once per process naming the reason and the
path taken instead (a :class:`FastPathWarning`, also logged on the ``midori_hf_nb`` logger)."""

from __future__ import annotations

import logging
import threading
import warnings

logger = logging.getLogger("midori_hf_nb")


class FastPathWarning(RuntimeWarning):
    """A fast path of the engine is off on this installation; the message names the fallback."""


_warned: set[str] = set()
_warned_lock = threading.Lock()


def fallback(key: str, message: str) -> None:
    """Warn once per process (per ``key``) that a fast path is off and what runs instead."""
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(message)
    warnings.warn(message, FastPathWarning, stacklevel=3)


def warned_keys() -> frozenset[str]:
    """The fallbacks announced so far in this process (for tests and diagnostics)."""
    with _warned_lock:
        return frozenset(_warned)
