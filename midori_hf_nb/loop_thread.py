"""Helpers for event loops that run in worker threads (shared by the notebook layer's blocking
helpers and ``compare()``'s concurrent calls)."""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
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


class AsyncIterPump:
    """Iterates an async iterator in a worker thread, handing its items over a thread-safe queue."""

    _END = object()

    def __init__(self, iterator: Any, on_cancel: Any = None) -> None:
        self._iterator = iterator
        self._on_cancel = on_cancel
        self.items: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=contextvars.copy_context().run, args=(self._main,), name="midori-stream",
                                       daemon=True)  # the caller's context (the call log's, the kernel's) goes along

    def _main(self) -> None:
        async def consume() -> None:
            try:
                async for item in self._iterator:
                    self.items.put(("item", item))
            finally:
                close = getattr(self._iterator, "aclose", None)
                if close is not None:
                    await close()

        try:
            asyncio.run(consume())
            self.items.put(("end", None))
        except BaseException as exc:
            self.items.put(("error", exc))

    def start(self) -> "AsyncIterPump":
        self.thread.start()
        return self

    def get(self, timeout: float | None = None) -> tuple[str, Any]:
        """The next ``(kind, value)``: ``("item", x)``, ``("end", None)``, ``("error", exc)``; raises ``queue.Empty``."""
        return self.items.get(timeout=timeout)

    def cancel(self) -> None:
        if self._on_cancel is not None:
            self._on_cancel()


__all__ = ["AsyncIterPump", "cancel_soon"]
