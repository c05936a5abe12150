"""The records of the call log: a call's ticket while it runs, and the finished call handed to
the writer thread; ids (ULIDs) and times."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

from .context import LogContext

#: the metadata key of a response that holds its log id
LOG_ID_KEY = "log_id"

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(now: float | None = None) -> str:
    """A new ULID: 26 characters, sortable by time (milliseconds), 80 random bits after."""
    millis = int((time.time() if now is None else now) * 1000)
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def utc_text(seconds: float) -> str:
    """``seconds`` since the epoch as the ``datetime_utc`` text of a row (ISO 8601, UTC)."""
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat()


@dataclass
class CallTicket:
    """A call being recorded: its id, target database, start and where it came from, plus what
    the agent learns while the call runs (:attr:`details`, :attr:`payload`, ...)."""

    id: str
    target: Any
    started: float
    perf: float
    method: str
    context: LogContext
    origin: dict[str, Any]
    #: a function returning the model and settings fields of the row (called on the writer thread)
    details: Callable[[], dict[str, Any]] | None = None
    payload: Any = None
    tools: list[dict] | None = None
    continuation: list[dict] | None = None
    #: texts removed from everything written (an API key)
    secrets: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PendingCall:
    """A finished call on its way to the writer thread."""

    ticket: CallTicket
    response: Any
    error: str | None
    duration_ms: int


class InFlight:
    """The calls being recorded that have not finished yet (the writer waits for a pause between
    calls before writing, so its work does not compete with a generation). A ticket that is never
    finished (a stream nobody iterated) stops counting when it is garbage collected."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: set[str] = set()

    def add(self, ticket: CallTicket) -> None:
        with self._lock:
            self._ids.add(ticket.id)
        weakref.finalize(ticket, self.discard, ticket.id)

    def discard(self, ticket_id: str) -> None:
        with self._lock:
            self._ids.discard(ticket_id)

    def __len__(self) -> int:
        return len(self._ids)


#: the process's calls in flight
IN_FLIGHT = InFlight()

__all__ = ["CallTicket", "IN_FLIGHT", "InFlight", "LOG_ID_KEY", "PendingCall", "new_id", "utc_text"]
