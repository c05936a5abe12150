"""Rows of an agent without batching: one ``invoke`` per row, several at a time.

The calls run on an event loop of their own in a worker thread (:class:`WorkerLoop`), so a
comparison runs the same from a script and inside a notebook kernel whose loop is busy running
the cell. Each finished call is handed to the calling thread as it finishes, where it is
recorded, checked and reported; interrupting the calling thread (Ctrl-C, a kernel interrupt)
cancels the calls still running and keeps the finished ones.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterator

from ..loop_thread import cancel_soon
from .rows import Outcome, Row

_ITEM, _END, _ERROR = "item", "end", "error"


class CallInterrupted(Exception):
    """Carries a ``KeyboardInterrupt`` (or ``SystemExit``) raised inside a call out of the worker's
    event loop as an ordinary exception, so the loop cancels the other calls and closes cleanly;
    the calling thread gets the original back."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(f"interrupted: {original!r}")
        self.original = original


class WorkerLoop:
    """Runs ``main(post, *args)`` with :func:`asyncio.run` in a daemon thread.

    What ``main`` passes to ``post`` comes out of :meth:`items` in the calling thread, in order.
    An exception of ``main`` is raised there after the items posted before it. Leaving
    :meth:`items` early (an exception in the caller, an interrupt) cancels ``main`` and waits
    for its clean-up.
    """

    def __init__(self, main: Callable[..., Awaitable[Any]], *args: Any) -> None:
        self._main = main
        self._args = args
        self._messages: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._ready = threading.Event()
        self.result: Any = None
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._thread_main,),
                                        name="midori-compare", daemon=True)  # the caller's context goes along

    def post(self, item: Any) -> None:
        """Hand ``item`` to the calling thread (safe from any thread)."""
        self._messages.put((_ITEM, item))

    def items(self) -> Iterator[Any]:
        """Start ``main`` and yield what it posts until it returns (its value is :attr:`result`)."""
        self._thread.start()
        finished = False
        try:
            while True:
                kind, value = self._messages.get()
                if kind == _ITEM:
                    yield value
                    continue
                finished = True
                if kind == _ERROR:
                    raise value
                return
        finally:
            if not finished:
                self.cancel()
                self.join()

    def leftovers(self) -> list[Any]:
        """Items posted but not yet taken by :meth:`items` (after it stopped early)."""
        left = []
        while True:
            try:
                kind, value = self._messages.get_nowait()
            except queue.Empty:
                return left
            if kind == _ITEM:
                left.append(value)

    def cancel(self) -> None:
        """Cancel ``main`` (its running calls get ``CancelledError``)."""
        self._ready.wait()
        cancel_soon(self._loop, self._task)

    def join(self) -> None:
        """Wait for the worker thread to end, through further interrupts."""
        while self._thread.is_alive():
            try:
                self._thread.join()
            except KeyboardInterrupt:  # a second interrupt: keep waiting for the clean-up
                continue

    def _thread_main(self) -> None:
        try:
            self.result = asyncio.run(self._run())
            self._messages.put((_END, None))
        except CallInterrupted as exc:
            self._messages.put((_ERROR, exc.original))
        except BaseException as exc:  # delivered to the calling thread
            self._messages.put((_ERROR, exc))
        finally:
            self._ready.set()

    async def _run(self) -> Any:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._ready.set()
        try:
            return await self._main(self.post, *self._args)
        except (KeyboardInterrupt, SystemExit) as exc:
            raise CallInterrupted(exc) from None


async def _await_call(post: Callable[[Any], None], function: Callable[[], Awaitable[Any]]) -> Any:
    return await function()


def run_coroutine(function: Callable[[], Awaitable[Any]]) -> Any:
    """``await function()`` from synchronous code (in a worker thread's loop); returns its value."""
    worker = WorkerLoop(_await_call, function)
    for _ in worker.items():
        pass
    return worker.result


@dataclass
class RowCall:
    """One row's ``invoke``: the row and the overrides it runs with (its setting and seed)."""

    row: Row
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None


def row_calls(rows: list[Row], seed: int | None) -> list[RowCall]:
    """The calls of rows run one at a time: the ``k``-th row of each setting gets ``seed + k``
    (as a batched run with ``batch_size=1`` would)."""
    position: dict[int, int] = {}
    calls = []
    for row in rows:
        k = position.get(row.setting_index, 0)
        position[row.setting_index] = k + 1
        row_seed = None if seed is None else seed + k
        overrides = dict(row.setting) if row_seed is None else {**row.setting, "seed": row_seed}
        calls.append(RowCall(row, overrides, row_seed))
    return calls


class ConcurrentCalls:
    """Runs :class:`RowCall` objects through ``agent.invoke`` (``invoke_with_tools`` when tools
    are offered), at most ``limit`` at a time; posts ``(call, Outcome)`` as each one finishes."""

    def __init__(self, agent: Any, calls: list[RowCall], limit: int, tools: list[Any] | None) -> None:
        self.agent = agent
        self.calls = calls
        self.limit = limit
        self.tools = tools
        #: set when a call was interrupted: no further call starts
        self.interrupted: BaseException | None = None

    async def main(self, post: Callable[[Any], None]) -> None:
        """Run every call (the :class:`WorkerLoop` main); an interrupt cancels the others at once."""
        semaphore = asyncio.Semaphore(self.limit)
        tasks = [asyncio.ensure_future(self.run_one(semaphore, post, call)) for call in self.calls]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def run_one(self, semaphore: asyncio.Semaphore, post: Callable[[Any], None], call: RowCall) -> None:
        """One call; an exception of the agent becomes the row's error, the other rows go on."""
        async with semaphore:
            if self.interrupted is not None:
                return
            try:
                if self.tools:
                    response = await self.agent.invoke_with_tools(call.row.payload, self.tools, **call.overrides)
                else:
                    response = await self.agent.invoke(call.row.payload, **call.overrides)
            except (KeyboardInterrupt, SystemExit) as exc:  # ends the run; the finished rows stay
                self.interrupted = exc
                raise CallInterrupted(exc) from None
            except Exception as exc:
                post((call, Outcome(error=exc, seed=call.seed, batch_size=1)))
                return
            post((call, Outcome(response=response, seed=call.seed, batch_size=1)))

    def worker(self) -> WorkerLoop:
        """A :class:`WorkerLoop` that runs the calls; its items are ``(call, outcome)`` pairs in
        the order the calls finish."""
        return WorkerLoop(self.main)


__all__ = ["CallInterrupted", "ConcurrentCalls", "RowCall", "WorkerLoop", "row_calls", "run_coroutine"]
