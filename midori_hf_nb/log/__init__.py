"""The call log: every generation of this package's agents, recorded in a local SQLite database.

Every call through any surface (``invoke``, ``stream``, the tool loop, ``generate_batch``, the
chat panel, the magics, ``compare()``; local and served agents) is written by one writer thread
per process, off the event loop and off the decode thread (:mod:`.writer`). It is on by
default, at :func:`default_location` (``MIDORI_HF_NB_LOG`` changes it or turns it off; see
:mod:`.control`); ``log=False`` on an agent or a call leaves it out.

Reading::

    from midori_hf_nb import log
    log.logs(5)                                  # the last five calls, a DataFrame
    log.logs(query="capital", model="SmolLM2")   # full-text search over prompts and answers
    log.transcript("my-chat")                    # a conversation rebuilt (id or name)
    log.delete(conversation="my-chat")           # deleted, and the file compacted

Control and privacy: :func:`off` / :func:`on`, :func:`set_redactor` (a hook that sees every
row before it is written), :func:`set_max_bytes`; API keys and credential variables are never
written (:mod:`.redact`). The README documents the schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..lazy import lazy_exports
from .capture import finish_call, start_call
from .record import LOG_ID_KEY, CallTicket, new_id
from .context import LogContext, context, current_context, current_origin, set_origin_provider
from .control import (
    LOG_ENV,
    MAX_MB_ENV,
    LogOptionError,
    as_log_path,
    check_log_option,
    check_max_bytes,
    default_location,
    reset_from_environment,
    state,
)

_EXPORTS = {
    "logs": ".reader",
    "select_rows": ".reader",
    "rows_json": ".reader",
    "parse_time": ".reader",
    "transcript": ".rebuild",
    "conversations": ".rebuild",
    "find_conversation": ".rebuild",
    "LoggedConversation": ".rebuild",
    "ConversationNotFound": ".rebuild",
    "delete": ".manage",
    "compact": ".manage",
    "info": ".manage",
    "DeleteResult": ".manage",
    "LogWriteWarning": ".writer",
    "text_redactor": ".redact",
    "RESPONSE_COLUMNS": ".rows",
}

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)


def on(path: Any = None) -> Path:
    """Record calls (from now on, in this process); ``path``: record to this file instead
    (a folder means ``FOLDER/logs.db``). Returns the log's path."""
    current = state()
    if path is not None:
        current.path = as_log_path(path, "on(path)")
    current.enabled = True
    return current.path


def off() -> None:
    """Record nothing in this process from now on, except calls whose agent or ``log=`` asks for it."""
    state().enabled = False


def is_on() -> bool:
    """Whether calls that do not say otherwise are recorded."""
    return state().enabled


def log_path() -> Path:
    """The log file calls are recorded to (it exists once the first call is recorded)."""
    return state().path


def set_redactor(redactor: Callable[[dict[str, Any]], Any] | None) -> None:
    """Install the redaction hook: called on the writer thread with each row (a dict of column
    values, secrets already masked) before anything is written; it returns the row, changed or
    not, or None to record nothing. If it raises, the row is dropped (one warning). None removes it."""
    if redactor is not None and not callable(redactor):
        raise LogOptionError("set_redactor: expected a function taking and returning a row (a dict), or None")
    state().redactor = redactor


def set_max_bytes(max_bytes: int) -> None:
    """The size bound of a log file (bytes, at least 64 KiB); once reached, calls are not
    recorded there (one warning) until entries are deleted or the bound raised."""
    state().max_bytes = check_max_bytes(max_bytes)


def flush(timeout: float | None = 10.0) -> bool:
    """Wait until this process's recorded calls are written; False on timeout."""
    from .writer import WRITER

    return WRITER.flush(timeout)


__all__ = sorted([
    "CallTicket", "LOG_ENV", "LOG_ID_KEY", "LogContext", "LogOptionError", "MAX_MB_ENV", "check_log_option", "context",
    "current_context", "current_origin", "default_location", "finish_call", "flush", "is_on", "log_path", "new_id",
    "off", "on", "reset_from_environment", "set_max_bytes", "set_origin_provider", "set_redactor", "start_call",
    *_EXPORTS,
])
