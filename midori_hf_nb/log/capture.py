"""What an agent does to record a call: :func:`start_call` when the call is made, then
:func:`finish_call` once it has a response (or failed). Both run on the caller's thread and
cost a few microseconds: they keep references and hand them to the writer thread
(:mod:`.writer`), which builds the row (:mod:`.rows`), removes secrets, runs the redaction hook
and writes. Nothing here raises into the call: a broken record is dropped with one warning.

The response of a recorded call carries its log id in ``metadata["log_id"]``.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from .context import current_context, current_origin
from .control import check_log_option, resolve_target
from .record import IN_FLIGHT, LOG_ID_KEY, CallTicket, PendingCall, new_id, utc_text
from .writer import WRITER


def start_call(agent_option: Any, call_option: Any = None, *, method: str, group_id: str | None = None,
               payload: Any = None) -> CallTicket | None:
    """A ticket for a call about to run, or None when it is not to be recorded (``log=False``
    on the call, the log context or the agent, or the process switch is off). A ``log=``
    value that is not allowed raises ``ValueError`` naming it, before anything runs."""
    call_option = check_log_option(call_option, "log")
    ctx = current_context()
    target = resolve_target(call_option, ctx.log, agent_option)
    if target is None:
        return None
    if group_id is not None and ctx.group_id is None:
        ctx = replace(ctx, group_id=group_id)
    ticket = CallTicket(id=new_id(), target=target, started=time.time(), perf=time.perf_counter(), method=method,
                        context=ctx, origin=current_origin(), payload=payload)
    IN_FLIGHT.add(ticket)
    return ticket


def describe_error(error: BaseException | str | None) -> str | None:
    """The text recorded for a failed call."""
    if error is None or isinstance(error, str):
        return error
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def finish_call(ticket: CallTicket | None, response: Any = None, error: BaseException | str | None = None) -> None:
    """Hand a finished call to the writer (nothing when ``ticket`` is None). ``response``: the
    response, partial for a stopped call; ``error``: why the call failed."""
    if ticket is None:
        return
    duration = int(round((time.perf_counter() - ticket.perf) * 1000))
    metadata = getattr(response, "metadata", None)
    if isinstance(metadata, dict):
        metadata[LOG_ID_KEY] = ticket.id
    IN_FLIGHT.discard(ticket.id)
    WRITER.submit(PendingCall(ticket, response, describe_error(error), duration))


__all__ = ["CallTicket", "LOG_ID_KEY", "PendingCall", "describe_error", "finish_call", "new_id", "start_call",
           "utc_text"]
