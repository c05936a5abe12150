"""Typed stream events, shared by every agent's streams and the notebook layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: the kinds of :class:`StreamEvent`
EVENT_KINDS = ("thinking", "text", "tool_call", "tool_result", "done")


@dataclass
class StreamEvent:
    """A typed piece of a stream: ``kind`` is ``"text"``, ``"thinking"``, ``"tool_call"``,
    ``"tool_result"`` (tool loops only) or ``"done"``.

    ``text`` carries the piece; ``data`` the parsed call (``tool_call``), the executed step's
    record (``tool_result``) or the final :class:`AgentResponse` (``done``). When token
    probabilities were asked for, ``logprobs`` holds the records
    (:class:`~midori_hf_nb.logprobs.TokenLogprob`) of the tokens generated since the previous event
    that carried some: all events' ``logprobs`` together are the answer's tokens in order (a
    token's text can show in a later piece, as the streamer holds back an unfinished word).
    """

    kind: str
    text: str = ""
    data: Any = None
    logprobs: list[Any] | None = None


class EventStream:
    """The iteration surface every stream of the project shares: an async iterator over
    :class:`StreamEvent` objects produced by ``iterator`` (an async generator that stores the
    final response in ``state.response``), yielding the events themselves (``events=True``) or
    only the text pieces of the answer.
    """

    def __init__(self, iterator: Any, state: Any, *, events: bool) -> None:
        self._iterator = iterator
        self._state = state
        self._events_mode = events

    def __aiter__(self) -> "EventStream":
        return self

    async def __anext__(self) -> Any:
        while True:
            event = await self._iterator.__anext__()
            if self._events_mode:
                return event
            if event.kind == "text":
                return event.text

    @property
    def response(self) -> Any:
        """The final response (None until the stream has ended; a stopped stream keeps its partial answer)."""
        return self._state.response

    async def collect(self) -> Any:
        """Run the stream to its end and return the final response."""
        async for _ in self:
            pass
        if self._state.response is None:  # pragma: no cover - every stream body sets it before ending
            raise RuntimeError("the stream ended without a response")
        return self._state.response


def with_pending(events: list[StreamEvent], pending: list[Any]) -> list[StreamEvent]:
    """``events`` with the token records in ``pending`` put on the first of them (``pending`` is
    then emptied); unchanged when there is no event or no record."""
    if events and pending:
        events[0].logprobs = list(pending)
        pending.clear()
    return events


def piece_events(piece: Any, offered: set[str], live_calls: list[dict]) -> list[StreamEvent]:
    """Events for one piece of a :class:`~midori_hf_nb.parsing.StreamSplitter`: thinking/text as
    they are, a tool piece as one ``tool_call`` event per call (marked ``unknown`` when its name is
    not in ``offered``), each call also appended to ``live_calls``."""
    if piece.kind != "tool":
        return [StreamEvent(piece.kind, piece.text)]
    events = []
    for found in piece.parse.calls if piece.parse is not None else []:
        found = dict(found)
        if found["name"] not in offered:
            found["unknown"] = True
        live_calls.append(found)
        events.append(StreamEvent("tool_call", found["name"], found))
    return events
