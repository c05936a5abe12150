"""Helpers for event loops that run in worker threads (shared by the notebook layer's blocking
helpers and ``compare()``'s concurrent calls)."""

from __future__ import annotations

import asyncio
from typing import Any


def cancel_soon(loop: asyncio.AbstractEventLoop | None, task: "asyncio.Task[Any] | None") -> None:
    """Cancel ``task`` on ``loop`` from another thread; nothing when either is missing or the
    loop has already closed (then there is nothing left to cancel)."""
    if loop is None or task is None:
        return
    try:
        loop.call_soon_threadsafe(task.cancel)
    except RuntimeError:  # the loop already closed
        pass


__all__ = ["cancel_soon"]
