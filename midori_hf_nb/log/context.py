"""What a logged call records about where it came from: the log context and the origin.

The **log context** (a context variable, so it follows tasks and, where this package starts a
thread, the thread) says which surface made the calls inside it and which conversation they
belong to::

    with midori_hf_nb.log.context(surface="judge", parent_id=answer_log_id, group_id=run_id):
        verdict = await judge.invoke(payload)     # recorded with these fields

The chat panel, the magics, ``stream_to_cell`` and ``compare()`` set it for their calls; an
evaluation API's judge calls are recorded the same way, by running them inside
``context(surface="judge", parent_id=...)`` (``parent_id``: the log id of the answer judged,
``response.metadata["log_id"]``).

The **origin** is where the call was made: the notebook's path, the cell's id and its execution
count inside a kernel, else the script's name. The core never imports IPython: the notebook
layer installs an origin provider (:func:`set_origin_provider`); without one, the notebook path
comes from ``JPY_SESSION_NAME`` (set by Jupyter for the kernel) and the script from ``sys.argv``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Iterator, Mapping

from .control import check_log_option

logger = logging.getLogger("midori_hf_nb")

#: the surfaces this package records (others are allowed: any short text)
SURFACES = ("api", "chat_panel", "magic", "stream_to_cell", "compare", "judge", "cli")
#: the origin fields a provider may return
ORIGIN_FIELDS = ("notebook", "cell_id", "execution_count", "script")
#: the longest text of a context field
MAX_CONTEXT_CHARS = 1000


@dataclass(frozen=True)
class LogContext:
    """Fields recorded with every call made inside :func:`context` (None: not set).

    ``surface``: what made the call (:data:`SURFACES`); ``conversation_id`` and
    ``conversation_name``: the conversation it belongs to; ``group_id``: calls that belong
    together (a comparison, a tool loop); ``parent_id``: the log id of the response this call is
    about (a judge's verdict on an answer); ``origin``: the notebook, cell and execution count to
    record instead of the current ones (a chat panel records the cell it was created in);
    ``log``: a ``log=`` option for the calls inside (see :func:`~.control.resolve_target`).
    """

    surface: str | None = None
    conversation_id: str | None = None
    conversation_name: str | None = None
    group_id: str | None = None
    parent_id: str | None = None
    origin: Mapping[str, Any] | None = None
    log: Any = None


_CONTEXT: contextvars.ContextVar[LogContext] = contextvars.ContextVar("midori_hf_nb_log_context",
                                                                      default=LogContext())
_TEXT_FIELDS = ("surface", "conversation_id", "conversation_name", "group_id", "parent_id")


def _checked(changes: dict[str, Any]) -> dict[str, Any]:
    known = {f.name for f in fields(LogContext)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ValueError(f"log context: {', '.join(unknown)} not allowed: expected some of {', '.join(sorted(known))}")
    for name in _TEXT_FIELDS:
        value = changes.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_CONTEXT_CHARS):
            raise ValueError(f"log context: {name}={value!r:.80} is not allowed: expected a text of at most "
                             f"{MAX_CONTEXT_CHARS} characters or None")
    if changes.get("origin") is not None and not isinstance(changes["origin"], Mapping):
        raise ValueError("log context: origin is not allowed: expected a mapping of notebook, cell_id, "
                         "execution_count and script")
    if "log" in changes:
        changes["log"] = check_log_option(changes["log"], "log context: log")
    return changes


def current_context() -> LogContext:
    """The log context of the running code."""
    return _CONTEXT.get()


@contextlib.contextmanager
def context(**changes: Any) -> Iterator[LogContext]:
    """Record the calls made inside the ``with`` block with these :class:`LogContext` fields
    (merged over the enclosing context; ``None`` leaves a field as it was)."""
    changes = _checked({k: v for k, v in changes.items() if v is not None})
    token = _CONTEXT.set(replace(_CONTEXT.get(), **changes))
    try:
        yield _CONTEXT.get()
    finally:
        _CONTEXT.reset(token)


def set_context(**changes: Any) -> contextvars.Token:
    """Set context fields for the rest of the current task (or thread); returns the token that
    :func:`reset_context` takes. For code that cannot use a ``with`` block."""
    changes = _checked({k: v for k, v in changes.items() if v is not None})
    return _CONTEXT.set(replace(_CONTEXT.get(), **changes))


def reset_context(token: contextvars.Token) -> None:
    """Undo a :func:`set_context`."""
    _CONTEXT.reset(token)


_PROVIDER: Callable[[], Mapping[str, Any] | None] | None = None


def set_origin_provider(provider: Callable[[], Mapping[str, Any] | None] | None) -> None:
    """Install the function that says where a call is made (the notebook layer's reads the
    kernel: notebook path, cell id, execution count); None removes it. It is called once per
    call, on the caller's thread, and must be quick."""
    global _PROVIDER
    if provider is not None and not callable(provider):
        raise ValueError("set_origin_provider: expected a function returning a mapping, or None")
    _PROVIDER = provider


def _plain_origin() -> dict[str, Any]:
    notebook = os.environ.get("JPY_SESSION_NAME")
    if notebook:
        return {"notebook": notebook}
    script = sys.argv[0] if sys.argv and sys.argv[0] else None
    return {"script": script if script not in ("-c", "-m") else f"python {script}"}


def current_origin() -> dict[str, Any]:
    """Where the running code is: the context's origin, else the provider's, else the
    notebook named by ``JPY_SESSION_NAME`` or the script's name."""
    given = _CONTEXT.get().origin
    if given is not None:
        return {k: given.get(k) for k in ORIGIN_FIELDS if given.get(k) is not None}
    provider = _PROVIDER
    if provider is not None:
        try:
            found = provider()
        except Exception as exc:  # a provider that fails must not fail the call
            logger.debug("the log origin provider failed: %s: %s", type(exc).__name__, exc)
            found = None
        if found:
            return {k: found.get(k) for k in ORIGIN_FIELDS if found.get(k) is not None}
    return _plain_origin()


__all__ = ["LogContext", "ORIGIN_FIELDS", "SURFACES", "context", "current_context", "current_origin",
           "reset_context", "set_context", "set_origin_provider"]
