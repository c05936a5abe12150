"""Calling any Midori protocol agent from the notebook layer: one event stream for every agent.

The views (streaming into a cell, the magics, conversations) accept any object implementing
:class:`~midori_hf_nb.protocol.MidoriAiAgentProtocol`. :func:`open_event_stream` gives them one
surface whatever the agent offers:

* an agent with ``stream``: ``agent.stream(payload, events=True, **overrides)`` (``events`` is
  left out for a ``stream`` that does not take it; plain text pieces become ``text`` events);
* an agent without ``stream``: ``agent.invoke(payload, **overrides)``, seen as one ``done``
  event at the end;
* with ``tools``: the agent's own ``stream_with_tools`` when it has one, else its
  ``invoke_with_tools``. Tools are only ever offered through the agent's methods; the notebook
  layer never runs them.

:class:`EventStream` is an async iterator of :class:`~midori_hf_nb.StreamEvent` with
``response`` (the final response, a partial one after :meth:`EventStream.cancel`) and
``cancel()`` (safe to call from another thread). It holds no reference cycle, so dropping it
drops the agent's stream at once (the local agent then stops its generation).
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Awaitable, Callable

from ..events import EVENT_KINDS, StreamEvent
from ..protocol import AgentResponse
from ..stats import ResponseStats
from .escaping import to_text


def require_agent(agent: Any, where: str) -> Any:
    """``agent`` when it can answer a payload (an async ``invoke``), else ``TypeError`` naming ``where``."""
    if not callable(getattr(agent, "invoke", None)):
        raise TypeError(f"{where}: agent={type(agent).__name__} is not allowed: expected a Midori protocol agent "
                        "(an object with async invoke(payload), e.g. HuggingFaceLocalAgent or ScriptedAgent)")
    return agent


def is_local_agent(agent: Any) -> bool:
    """True for a :class:`~midori_hf_nb.HuggingFaceLocalAgent`, whose model lives in this process."""
    from ..agent import HuggingFaceLocalAgent

    return isinstance(agent, HuggingFaceLocalAgent)


def agent_model_name(agent: Any) -> str:
    """The name of an agent's model: the local agent's configured model, else the agent's ``model``
    attribute when it is text, else the agent's class name (plain text: escape it to show it)."""
    config = getattr(agent, "config", None)
    for value in (getattr(config, "model", None), getattr(agent, "model", None)):
        if isinstance(value, str) and value:
            return value
    return type(agent).__name__


def _accepts_events(method: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # no signature to read: assume the local agent's surface
        return True
    return any(p.name == "events" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _as_event(item: Any) -> StreamEvent | None:
    """An item of an agent's stream as a :class:`StreamEvent` (text pieces become ``text`` events)."""
    if item is None:
        return None
    if isinstance(item, str):
        return StreamEvent("text", item)
    kind = getattr(item, "kind", None)
    if isinstance(kind, str):
        return item if kind in EVENT_KINDS else None
    return StreamEvent("text", to_text(item))


def cancelled_response(answer: str = "", thinking: str = "") -> AgentResponse:
    """The response of a call stopped before its agent returned one (``finish_reason="cancelled"``)."""
    return AgentResponse(thinking=thinking, response=answer, code=None, tool_calls=None,
                         metadata=ResponseStats(finish_reason="cancelled").as_dict())


class EventStream:
    """Typed events of one call to any protocol agent (see the module docstring).

    Create it with :func:`open_event_stream`. Iterating yields :class:`StreamEvent` objects;
    afterwards :attr:`response` is the agent's response.
    """

    def __init__(self, source: Any = None, call: Callable[[], Awaitable[Any]] | None = None) -> None:
        self._source = source
        self._iterator = source.__aiter__() if source is not None else None
        self._call = call
        self._done: Any = None
        self._answer: list[str] = []
        self._thinking: list[str] = []
        self._stopped = False
        self._finished = False
        self._task: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __aiter__(self) -> "EventStream":
        return self

    async def __anext__(self) -> StreamEvent:
        if self._finished:
            raise StopAsyncIteration
        if self._iterator is None:
            return await self._invoke_once()
        while True:
            if self._stopped and not callable(getattr(self._source, "cancel", None)):
                await self.aclose()  # a stream that cannot be told to stop is closed instead
                raise StopAsyncIteration
            try:
                item = await self._iterator.__anext__()
            except StopAsyncIteration:
                self._finished = True
                raise
            event = _as_event(item)
            if event is None:
                continue
            if event.kind == "text":
                self._answer.append(event.text)
            elif event.kind == "thinking":
                self._thinking.append(event.text)
            elif event.kind == "done":
                self._done = event.data
            return event

    async def _invoke_once(self) -> StreamEvent:
        self._finished = True
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.ensure_future(self._call())  # type: ignore[misc]
        self._call = None
        if self._stopped:
            self._task.cancel()
        try:
            response = await self._task
        except asyncio.CancelledError:
            if not self._stopped:
                raise
            response = cancelled_response()
        self._done = response
        return StreamEvent("done", to_text(getattr(response, "response", "")), response)

    @property
    def response(self) -> Any:
        """The final response: the agent stream's own, else the ``done`` event's, else (a stream
        that ended or was stopped without one) a response built from the pieces received."""
        own = getattr(self._source, "response", None) if self._source is not None else None
        if own is not None:
            return own
        if self._done is not None:
            return self._done
        if self._source is None or not (self._finished or self._stopped):
            return None
        answer, thinking = "".join(self._answer), "".join(self._thinking)
        if self._stopped:
            return cancelled_response(answer, thinking)
        return AgentResponse(thinking=thinking, response=answer, code=None, tool_calls=None,
                             metadata=ResponseStats(finish_reason="stop").as_dict())

    def cancel(self) -> None:
        """Stop the call: the agent stream's ``cancel()`` when it has one (it ends within a piece and
        keeps the partial answer), else the stream is closed, or the ``invoke`` task cancelled.
        Safe from any thread."""
        self._stopped = True
        cancel = getattr(self._source, "cancel", None)
        if callable(cancel):
            cancel()
        task, loop = self._task, self._loop
        if task is not None and loop is not None and not task.done():
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop already closed: nothing left to cancel
                pass

    async def aclose(self) -> None:
        """Close the agent's stream (or cancel the ``invoke`` task) without waiting for the rest."""
        self._finished = True
        close = getattr(self._source, "aclose", None)
        if callable(close):
            await close()
        if self._task is not None and not self._task.done():
            self._task.cancel()


def open_event_stream(agent: Any, payload: Any, *, tools: list | None = None, **overrides: Any) -> EventStream:
    """An :class:`EventStream` of ``agent`` answering ``payload`` (see the module docstring).

    ``overrides`` go to the agent's method as keyword arguments (per-call settings of the local
    agent; check them first with :func:`midori_hf_nb.settings.check_overrides`).
    """
    require_agent(agent, "open_event_stream")
    if tools is not None:
        streamer = getattr(agent, "stream_with_tools", None)
        if callable(streamer):
            return EventStream(streamer(payload, tools, events=True, **overrides))
        invoke_with_tools = getattr(agent, "invoke_with_tools", None)
        if not callable(invoke_with_tools):
            raise TypeError(f"open_event_stream: agent={type(agent).__name__} has no invoke_with_tools: "
                            "expected a Midori protocol agent to offer tools to")
        return EventStream(call=lambda: invoke_with_tools(payload, tools, **overrides))
    streamer = getattr(agent, "stream", None)
    if callable(streamer):
        if _accepts_events(streamer):
            return EventStream(streamer(payload, events=True, **overrides))
        return EventStream(streamer(payload, **overrides))
    return EventStream(call=lambda: agent.invoke(payload, **overrides))


__all__ = ["EventStream", "agent_model_name", "cancelled_response", "is_local_agent", "open_event_stream",
           "require_agent"]
