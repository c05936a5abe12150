"""The model's generation lock: granted in the order it was asked for, and telling its holder
whether anyone waits.

A plain ``threading.Lock`` lets whichever thread is scheduled first take a released lock, so a
thread that releases and re-acquires in a loop (the shared decode loop, :mod:`.shared_decode`)
can keep it from a thread that has long been waiting. :class:`FairLock` hands the lock to the
waiters in arrival order, and :attr:`FairLock.waiting` lets the holder see that someone waits, so
it can finish what it started and step aside.
"""

from __future__ import annotations

import threading
import time
from collections import deque


class FairLock:
    """A non-reentrant lock granted first come, first served (the ``threading.Lock`` interface)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._locked = False
        self._queue: deque[object] = deque()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock after everyone who asked before; False when not blocking, or on ``timeout``."""
        with self._cond:
            if not self._locked and not self._queue:
                self._locked = True
                return True
            if not blocking:
                return False
            me = object()
            self._queue.append(me)
            deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
            try:
                while self._locked or self._queue[0] is not me:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                self._locked = True
                return True
            finally:
                self._queue.remove(me)
                self._cond.notify_all()  # the next in line may now be first

    def release(self) -> None:
        """Release the lock; the longest waiter takes it next."""
        with self._cond:
            if not self._locked:
                raise RuntimeError("release of an unlocked FairLock")
            self._locked = False
            self._cond.notify_all()

    def locked(self) -> bool:
        """True while someone holds the lock."""
        return self._locked

    @property
    def waiting(self) -> int:
        """How many threads wait for the lock now."""
        return len(self._queue)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["FairLock"]
