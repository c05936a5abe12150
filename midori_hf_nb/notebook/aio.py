"""Run the agent's async API from synchronous code, also inside a running kernel loop.

In a notebook cell, prefer top-level ``await``::

    response = await agent.invoke(payload)

Plain functions cannot ``await``, and ``asyncio.run`` fails while the kernel's event loop is
running in the same thread. :func:`run` covers both cases:

* no loop is running in this thread: the coroutine runs with :func:`asyncio.run`;
* a loop is running (a Jupyter kernel, an async caller): the coroutine runs with
  :func:`asyncio.run` in a fresh worker thread and the caller blocks until it is done.
  This needs no patching of asyncio, and the agent is built for it: generation already runs
  in its own thread and touches no loop-bound state of the caller.

Choice about nest-asyncio: it is used only by ``run(coro, mode="nest")`` and
:func:`enable_nesting`, for the one case the worker thread cannot serve, a coroutine that
awaits objects bound to the *running* loop (a future, queue or task created on the
kernel's loop, e.g. by a widget). ``nest_asyncio2.apply()`` patches asyncio for the whole
process (pure-Python tasks and futures, re-entrant ``run_until_complete``), so it is never
applied implicitly. Futures created on the loop *before* the patch cannot be awaited
re-entrantly: call :func:`enable_nesting` first, then create the loop-bound objects.

Interrupting (``KeyboardInterrupt`` in the waiting thread) cancels the coroutine in the
worker and waits for it to finish its clean-up (a cancelled generation stops within a
token), then re-raises.

:class:`SyncAgent` wraps an agent with blocking methods built on :func:`run`.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any, Awaitable, Coroutine, Iterator, TypeVar

from ..loop_thread import AsyncIterPump, cancel_soon

T = TypeVar("T")

RUN_MODES = ("auto", "thread", "nest")


def loop_running() -> bool:
    """True when an asyncio event loop is running in the calling thread (e.g. inside a kernel)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _ThreadRunner:
    """Runs one coroutine with ``asyncio.run`` in its own thread and can cancel it."""

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self._coro = coro
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._started = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=contextvars.copy_context().run, args=(self._main,), name="midori-run",
                                       daemon=True)  # the caller's context (the call log's, the kernel's) goes along

    async def _wrapper(self) -> Any:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._started.set()
        return await self._coro

    def _main(self) -> None:
        try:
            self._result = asyncio.run(self._wrapper())
        except BaseException as exc:  # delivered to the waiting thread
            self._error = exc
        finally:
            self._started.set()

    def cancel(self) -> None:
        self._started.wait()
        cancel_soon(self._loop, self._task)

    def result(self, timeout: float | None) -> Any:
        self.thread.start()
        try:
            self.thread.join(timeout)
        except KeyboardInterrupt:
            self.cancel()
            self.thread.join()
            raise
        if self.thread.is_alive():
            self.cancel()
            self.thread.join()
            raise TimeoutError(f"run(): the coroutine did not finish within {timeout} s and was cancelled")
        if self._error is not None:
            raise self._error
        return self._result


def run(coro: Awaitable[T], *, timeout: float | None = None, mode: str = "auto") -> T:
    """Run ``coro`` to completion from synchronous code and return its result.

    Args:
        coro: a coroutine (or other awaitable).
        timeout: seconds to wait before cancelling the coroutine and raising ``TimeoutError``
            (``mode="thread"``/``"auto"`` only); None waits as long as it takes.
        mode: ``"auto"`` (default) uses :func:`asyncio.run` when no loop is running in this
            thread and a worker thread when one is; ``"thread"`` always uses a worker thread;
            ``"nest"`` runs on the running loop re-entrantly through ``nest_asyncio2`` (patches
            asyncio process-wide; only for coroutines bound to that loop).

    Exceptions of the coroutine propagate unchanged.
    """
    if mode not in RUN_MODES:
        raise ValueError(f"run(mode={mode!r}) is not allowed: expected one of {', '.join(map(repr, RUN_MODES))}")
    if not asyncio.iscoroutine(coro):
        if not hasattr(coro, "__await__"):
            raise TypeError(f"run() expects a coroutine or awaitable, got {type(coro).__name__}")
        awaitable = coro

        async def _await() -> Any:
            return await awaitable

        coro = _await()
    if mode == "nest":
        return _run_nested(coro)
    if mode == "auto" and not loop_running() and timeout is None:
        return asyncio.run(coro)  # type: ignore[arg-type]
    return _ThreadRunner(coro).result(timeout)  # type: ignore[arg-type]


def enable_nesting() -> bool:
    """Make the running loop re-entrant with ``nest_asyncio2`` (process-wide patch of asyncio).

    Needed only for ``run(coro, mode="nest")``; call it before creating the loop-bound futures
    or queues that such a coroutine awaits. Returns False when no loop is running (nothing to do).
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    import nest_asyncio2

    nest_asyncio2.apply(loop)
    return True


def _run_nested(coro: Coroutine[Any, Any, T]) -> T:
    if not enable_nesting():
        return asyncio.run(coro)
    return asyncio.get_running_loop().run_until_complete(coro)


def iterate(aiterator: Any, *, on_cancel: Any = None) -> Iterator[Any]:
    """Iterate an async iterator from synchronous code (a worker thread drives it).

    Closing the generator early (``break``) or an exception in the consumer calls
    ``on_cancel`` (e.g. ``stream.cancel``) and waits for the worker to finish.
    """
    pump = AsyncIterPump(aiterator, on_cancel).start()
    finished = False
    try:
        while True:
            kind, value = pump.get()
            if kind == "item":
                yield value
            elif kind == "error":
                finished = True
                raise value
            else:
                finished = True
                return
    finally:
        if not finished:
            pump.cancel()
            while pump.thread.is_alive():
                try:
                    pump.thread.join()
                except KeyboardInterrupt:  # a second interrupt: keep waiting for clean-up
                    continue


def _texts(items: Iterator[Any]) -> Iterator[str]:
    """The text pieces among stream events; closing this closes ``items`` (which stops the stream)."""
    try:
        for event in items:
            if event.kind == "text":
                yield event.text
    finally:
        items.close()  # type: ignore[attr-defined]


class SyncAgent:
    """Blocking versions of an agent's methods, usable in plain functions inside a notebook.

    ``agent`` is any Midori protocol agent (``load`` needs the local agent).
    ``agent_sync = SyncAgent(agent)``; then ``agent_sync.invoke(payload)`` returns the
    :class:`~midori_hf_nb.AgentResponse`. Every method accepts the keyword overrides of the
    async method it wraps. Attributes not defined here are those of the wrapped agent.
    """

    def __init__(self, agent: Any) -> None:
        self.agent = agent

    def __repr__(self) -> str:
        return f"SyncAgent({self.agent!r})"

    def __getattr__(self, name: str) -> Any:
        if name == "agent":  # not set yet (e.g. while copying): no recursion
            raise AttributeError(name)
        return getattr(self.agent, name)

    def invoke(self, payload: Any, **overrides: Any) -> Any:
        """``agent.invoke(payload, **overrides)``, blocking."""
        return run(self.agent.invoke(payload, **overrides))

    def invoke_with_tools(self, payload: Any, tools: list[Any], **overrides: Any) -> Any:
        """``agent.invoke_with_tools(payload, tools, **overrides)``, blocking."""
        return run(self.agent.invoke_with_tools(payload, tools, **overrides))

    def run_tools(self, payload: Any, tools: list[Any], max_steps: int = 5, **overrides: Any) -> Any:
        """``agent.run_tools(payload, tools, max_steps, **overrides)``, blocking."""
        return run(self.agent.run_tools(payload, tools, max_steps=max_steps, **overrides))

    def load(self) -> Any:
        """Load the model now; returns the wrapped agent."""
        return run(self.agent.load())

    def unload_model(self) -> None:
        """Release the agent's model reference."""
        run(self.agent.unload_model())

    def get_context_window(self) -> int:
        """The configured context window."""
        return run(self.agent.get_context_window())

    def stream(self, payload: Any, *, events: bool = False, **overrides: Any) -> Iterator[Any]:
        """A synchronous iterator over the agent's stream: text pieces, or
        :class:`~midori_hf_nb.StreamEvent` objects with ``events=True``. Any protocol agent (one
        without ``stream`` is invoked: a single ``done`` event). Breaking out stops the generation."""
        from .agent_calls import open_event_stream

        stream = open_event_stream(self.agent, payload, **overrides)
        items = iterate(stream, on_cancel=stream.cancel)
        return items if events else _texts(items)

    def display_stream(self, payload: Any, **options: Any) -> Any:
        """Stream into the current output cell (see :func:`~midori_hf_nb.notebook.display_stream`)."""
        from .streaming import display_stream

        return display_stream(self.agent, payload, **options)


__all__ = ["SyncAgent", "enable_nesting", "iterate", "loop_running", "run"]
