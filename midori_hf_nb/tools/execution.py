"""Running parsed tool calls for the opt-in loop of :meth:`HuggingFaceLocalAgent.run_tools`.

A call is checked against the tool's JSON schema, run under a timeout (a sync tool in a worker
thread of its own, an async tool as a task on the caller's loop), and its result turned into
bounded text for the model. Whatever goes wrong (an unknown tool, invalid arguments, a tool
that raises, even ``SystemExit``, a timeout, a result that cannot be written as text) becomes
a :class:`ToolStep` with ``error`` set, which the model sees as the call's result; only
``KeyboardInterrupt`` and the cancellation of the loop itself pass through.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import math
import numbers
import threading
import time
from typing import Any, Callable

from .results import (
    DEFAULT_MAX_RESULT_CHARS,
    ResultRoom,
    ToolStep,
    exception_text,
    text_outcome,
    truncate_text,
)
from .schemas import tool_schemas
from .validation import ArgumentValidator

#: Default seconds a tool may run before its call is abandoned (``tool_timeout``).
DEFAULT_TOOL_TIMEOUT: float = 30.0
#: Seconds a timed-out async tool is given to react to its cancellation before it is left behind.
CANCEL_GRACE_SECONDS = 1.0

_PLAIN = (str, int, float, bool, type(None))


def check_tool_options(tool_timeout: Any = DEFAULT_TOOL_TIMEOUT, max_result_chars: Any = DEFAULT_MAX_RESULT_CHARS,
                       caller: str = "run_tools") -> tuple[float | None, int]:
    """Validate the tool-loop options; returns ``(tool_timeout, max_result_chars)``.

    Raises ``ValueError`` naming the option and what is allowed: ``tool_timeout`` is a positive,
    finite number of seconds or None (no limit); ``max_result_chars`` a positive integer.
    ``caller`` (e.g. ``"run_tools"``) starts the message when given.
    """
    prefix = f"{caller}: " if caller else ""
    if tool_timeout is not None and (
        isinstance(tool_timeout, bool) or not isinstance(tool_timeout, numbers.Real)
        or not math.isfinite(float(tool_timeout)) or tool_timeout <= 0
    ):
        raise ValueError(f"{prefix}tool_timeout={tool_timeout!r} is not allowed: expected a positive number "
                         "of seconds (e.g. 30), or None for no limit")
    if isinstance(max_result_chars, bool) or not isinstance(max_result_chars, numbers.Integral) or max_result_chars < 1:
        raise ValueError(f"{prefix}max_result_chars={max_result_chars!r} is not allowed: expected a positive "
                         "integer number of characters (e.g. 4000)")
    return (None if tool_timeout is None else float(tool_timeout)), int(max_result_chars)


class _Pending:
    """An awaitable a sync tool returned, to be awaited on the loop."""

    def __init__(self, awaitable: Any) -> None:
        self.awaitable = awaitable


class _Done:
    """A sync tool's result and its text, both made in the tool's thread."""

    def __init__(self, result: Any, text_outcome: tuple[bool, str]) -> None:
        self.result = result
        self.text_outcome = text_outcome


def _run_sync(fn: Callable[..., Any], arguments: dict[str, Any]) -> _Pending | _Done:
    result = fn(**arguments)
    if inspect.isawaitable(result):
        return _Pending(result)
    return _Done(result, text_outcome(result))


def _start_thread(target: Callable[[], Any], name: str) -> tuple[asyncio.Future, threading.Thread]:
    """Run ``target`` in a daemon thread of its own; the future gets ``(True, value)`` or ``(False, exc)``.

    Not the loop's default executor: a tool that never returns would hold one of its workers
    and make ``asyncio.run`` and interpreter exit wait for it. A daemon thread is left behind.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()
    context = contextvars.copy_context()

    def deliver(outcome: tuple[bool, Any]) -> None:
        if not future.done():
            future.set_result(outcome)

    def run() -> None:
        try:
            outcome: tuple[bool, Any] = (True, context.run(target))
        except BaseException as exc:  # judged on the loop: contained, or re-raised if KeyboardInterrupt
            outcome = (False, exc)
        try:
            loop.call_soon_threadsafe(deliver, outcome)
        except RuntimeError:  # the loop has closed: nobody waits for this result any more
            pass

    thread = threading.Thread(target=run, name=f"midori-tool-{name}", daemon=True)
    thread.start()
    return future, thread


async def _guarded(start: Callable[[], Any]) -> tuple[bool, Any]:
    """Await ``start()``; every exception is returned, so none reaches the task machinery
    (which re-raises ``SystemExit`` out of the event loop)."""
    try:
        return True, await start()
    except BaseException as exc:
        return False, exc


_TIMED_OUT = object()


class _Clock:
    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.started = time.perf_counter()

    def left(self) -> float | None:
        return None if self.timeout is None else max(0.0, self.timeout - (time.perf_counter() - self.started))


async def _wait_future(future: asyncio.Future, clock: _Clock) -> Any:
    try:
        return await asyncio.wait_for(future, clock.left())
    except asyncio.TimeoutError:
        return _TIMED_OUT


async def _wait_task(start: Callable[[], Any], clock: _Clock) -> Any:
    """Like ``asyncio.wait_for`` on a task, without waiting forever for one that ignores cancellation."""
    task = asyncio.ensure_future(_guarded(start))
    try:
        done, _ = await asyncio.wait({task}, timeout=clock.left())
        if done:
            return task.result()
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_GRACE_SECONDS)
    except asyncio.CancelledError:  # the loop itself was cancelled: so is the tool
        task.cancel()
        raise
    return _TIMED_OUT


class ToolRunner:
    """Runs the parsed calls of one opt-in tool loop.

    Args:
        tools: the tools offered (callables run; dicts are descriptions only).
        tool_timeout: seconds a call may take, or None for no limit. A sync tool runs in a
            daemon thread of its own; on timeout it is abandoned, but a Python thread cannot be
            stopped, so it keeps running in the background (its result is ignored, and
            ``ToolStep.note`` says so). An async tool runs as a task on the caller's loop and
            is cancelled on timeout. An async tool that blocks the loop (e.g. ``time.sleep``)
            cannot be timed out.
        max_result_chars: the longest result (or error) text given to the model; longer ones
            are cut and end with ``[truncated: N of M characters]``.

    Raises ``ValueError`` for invalid options and :class:`ToolSchemaError` for a tool that
    cannot be described, before anything runs.
    """

    def __init__(self, tools: list[Any] | None, *, tool_timeout: float | None = DEFAULT_TOOL_TIMEOUT,
                 max_result_chars: int = DEFAULT_MAX_RESULT_CHARS, caller: str = "run_tools") -> None:
        self.tool_timeout, self.max_result_chars = check_tool_options(tool_timeout, max_result_chars, caller)
        tools = [] if tools is None else tools
        if hasattr(tools, "__iter__") and not isinstance(tools, (dict, str, bytes)) and not callable(tools):
            tools = list(tools)  # a generator is read once
        self.schemas = tool_schemas(tools)
        self.offered = {s["function"]["name"] for s in self.schemas}
        self.functions: dict[str, Callable[..., Any]] = {}
        self.validators: dict[str, ArgumentValidator] = {}
        for tool, schema in zip(tools, self.schemas):
            if callable(tool) and not isinstance(tool, dict):
                name = schema["function"]["name"]
                self.functions[name] = tool
                self.validators[name] = ArgumentValidator(name, schema["function"].get("parameters") or {}, tool)

    def room(self, tokenizer: Any, context_window: int, metadata: dict[str, Any], calls: int,
             lock: Any = None) -> ResultRoom:
        """A :class:`ResultRoom` for the ``calls`` results of the generation that gave ``metadata``."""
        return ResultRoom.after_generation(tokenizer, context_window, metadata, calls, lock)

    async def run(self, step: int, call: dict[str, Any], room: ResultRoom | None = None) -> ToolStep:
        """Run one parsed call; never raises except for ``KeyboardInterrupt`` and the loop's cancellation.

        Returns the :class:`ToolStep`; its ``content`` is the text for the model, at most
        ``max_result_chars`` characters (plus the truncation note), cut further to fit
        ``room`` when given.
        """
        name = str(call.get("name"))
        arguments = call.get("arguments")
        arguments = {} if arguments is None else arguments
        record = ToolStep(step=step, name=name, arguments=dict(arguments) if isinstance(arguments, dict) else {},
                          call_id=str(call.get("id") or ""))
        started = time.perf_counter()
        await self._run(record, arguments)
        record.seconds = time.perf_counter() - started
        if record.status != "ok":
            record.result = None
            text = f"Error: {record.error}"
        else:
            text = record.content
        record.result_chars = len(text)
        if len(text) > self.max_result_chars:
            record.content = truncate_text(text, self.max_result_chars, len(text))
            record.shown_chars = self.max_result_chars
            record.add_note(f"text for the model cut to {self.max_result_chars} of {len(text)} characters "
                             "(max_result_chars)")
        else:
            record.content, record.shown_chars = text, len(text)
        if room is not None:
            room.fit(record)
        return record

    def _refuse(self, record: ToolStep, status: str, error: str) -> None:
        record.status, record.error = status, error

    async def _run(self, record: ToolStep, arguments: Any) -> None:
        fn = self.functions.get(record.name)
        if fn is None:
            if record.name in self.offered:
                return self._refuse(record, "not_runnable",
                                    f"tool {record.name!r} was offered only as a description (a dict), so there is "
                                    "nothing to run; pass a Python callable to let it run")
            return self._refuse(record, "unknown_tool", f"unknown tool {record.name!r}; available: "
                                f"{', '.join(sorted(self.functions)) or 'none'}")
        try:
            invalid = self.validators[record.name].check(arguments)
        except Exception as exc:  # a schema jsonschema cannot apply (e.g. a bad regex pattern)
            invalid = (f"the arguments of tool {record.name!r} cannot be checked, so it was not run: "
                       f"{exception_text(exc, False)}")
        if invalid:
            return self._refuse(record, "invalid_arguments", invalid)
        clock = _Clock(self.tool_timeout)
        thread = None
        if inspect.iscoroutinefunction(fn):
            outcome = await _wait_task(functools.partial(fn, **arguments), clock)
        else:
            future, thread = _start_thread(functools.partial(_run_sync, fn, arguments), record.name)
            outcome = await _wait_future(future, clock)
            if outcome is not _TIMED_OUT and outcome[0] and isinstance(outcome[1], _Pending):
                pending = outcome[1].awaitable
                outcome = await _wait_task(lambda: pending, clock)
                thread = None
        if outcome is _TIMED_OUT:
            return self._timed_out(record, thread)
        ok, value = outcome
        if not ok:
            if isinstance(value, KeyboardInterrupt):
                raise value
            return self._refuse(record, "error", exception_text(value))
        if isinstance(value, _Done):  # a sync tool: its result was written as text in its thread
            result, (converted, text) = value.result, value.text_outcome
        else:
            result = value
            if isinstance(result, _PLAIN):
                converted, text = text_outcome(result)
            else:  # a str() or JSON encoding may be slow or hang: off the loop, under the same clock
                future, thread = _start_thread(functools.partial(text_outcome, result), f"{record.name}-text")
                conversion = await _wait_future(future, clock)
                if conversion is _TIMED_OUT:
                    return self._timed_out(record, thread)
                converted, text = conversion[1] if conversion[0] else (False, exception_text(conversion[1]))
        if not converted:
            return self._refuse(record, "bad_result", f"tool {record.name!r} ran, but {text}")
        record.result, record.content = result, text

    def _timed_out(self, record: ToolStep, thread: threading.Thread | None) -> None:
        self._refuse(record, "timeout", f"tool {record.name!r} did not finish within {self.tool_timeout:g} s "
                                        "(tool_timeout) and was abandoned")
        if thread is not None and thread.is_alive():
            record.add_note(f"its thread {thread.name!r} is still running: a Python thread cannot be stopped, "
                             "so it runs on in the background and its result is ignored")


async def execute_call(step: int, call: dict[str, Any], functions: dict[str, Callable[..., Any]],
                       offered: set[str] | None = None, *, tool_timeout: float | None = DEFAULT_TOOL_TIMEOUT,
                       max_result_chars: int = DEFAULT_MAX_RESULT_CHARS) -> ToolStep:
    """Run one parsed call of ``functions`` (by name) with the checks of :class:`ToolRunner`.

    A name in ``offered`` but not in ``functions`` is a tool offered only as a description.
    Nothing raises except ``KeyboardInterrupt`` and cancellation; see :meth:`ToolRunner.run`.
    """
    runner = ToolRunner(list(functions.values()), tool_timeout=tool_timeout, max_result_chars=max_result_chars)
    runner.offered |= set(offered or ())
    return await runner.run(step, call)
