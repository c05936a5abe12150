"""``ScriptedAgent``: a Midori protocol agent that answers from a script, with no model and no torch.

It exists to test what the notebook layer does with any protocol agent (display, streaming into
a cell, the chat panel, the magics, comparison grids) quickly and exactly. It is not a stand-in
for what the local agent does: those claims are tested on real generation.

Each reply is a text, split into pieces of ``piece_chars`` characters and streamed with ``delay``
seconds between pieces; reasoning tags (``<think>...</think>``) and tool-call text are split off
by the project's own streaming parser, exactly as for a model's output. A reply may also be an
exception instance, raised when that reply's turn comes (after ``fail_after`` pieces, if given).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from functools import partial
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Sequence

from ..events import EventStream, StreamEvent
from ..log.capture import CallTicket, finish_call, start_call
from ..log.control import check_log_option
from ..load_progress import LoadProgress, LoadTracker
from ..parsing import StreamSplitter, extract_reasoning_blocks, parse_tool_calls_detailed
from ..protocol import AgentPayload, AgentResponse, MidoriAiAgentProtocol
from ..stats import ResponseStats


@dataclass
class ScriptedCall:
    """One call the agent received: the payload, the overrides and the tools offered (names)."""

    payload: AgentPayload
    overrides: dict[str, Any]
    tools: list[str] | None = None


@dataclass
class _State:
    stop: asyncio.Event | None = None
    stopped: bool = False
    response: AgentResponse | None = None
    pieces: list[str] = field(default_factory=list)


class ScriptedAgent(MidoriAiAgentProtocol):
    """Answers each call with the next reply of ``replies`` (the last one repeats).

    Args:
        replies: texts (or exception instances to raise) in the order calls arrive.
        delay: seconds between streamed pieces (0: as fast as the loop runs).
        piece_chars: characters per streamed piece (a stand-in for a token).
        context_window: what :meth:`get_context_window` reports.
        model: the model name put into the response statistics.
        fail_after: for an exception reply, how many pieces stream before it is raised.
        load_seconds: seconds the first call spends "loading the model" before its first piece,
            reporting stages and counts through :attr:`load_progress` as a real load does.
        log: the call log option of its calls, as for the project's agents (None: the process's switch).

    ``calls`` records every call (payload, overrides, tools). ``max_new_tokens`` (per call)
    bounds the number of pieces, with ``finish_reason="length"``; stopping a stream gives
    ``finish_reason="cancelled"`` with the pieces sent so far.
    """

    def __init__(self, replies: str | BaseException | Sequence[str | BaseException], *, delay: float = 0.0,
                 piece_chars: int = 4, context_window: int = 4096, model: str = "scripted",
                 fail_after: int = 0, load_seconds: float = 0.0, log: Any = None) -> None:
        self.replies = [replies] if isinstance(replies, (str, BaseException)) else list(replies)
        if not self.replies:
            raise ValueError("ScriptedAgent needs at least one reply")
        if isinstance(piece_chars, bool) or not isinstance(piece_chars, int) or piece_chars < 1:
            raise ValueError(f"piece_chars={piece_chars!r} is not allowed: expected a positive integer")
        self.delay = float(delay)
        self.piece_chars = piece_chars
        self.context_window = context_window
        self.model = model
        self.fail_after = fail_after
        self.load_seconds = float(load_seconds)
        self.calls: list[ScriptedCall] = []
        self.log = check_log_option(log, "ScriptedAgent(log=...)")
        self._loading: LoadProgress | None = None
        self._loaded = self.load_seconds <= 0

    @property
    def load_progress(self) -> LoadProgress | None:
        """The simulated load's progress while it runs (None before and after)."""
        return self._loading

    async def _load(self) -> None:
        """The simulated load: a tokenizer stage, then the weights counted 0..10."""
        if self._loaded:
            return
        tracker, key = LoadTracker(), object()
        tracker.begin(key, self.model)
        tracker.stage(key, "tokenizer")
        self._loading = tracker.current(key)
        steps = 10
        for done in range(steps + 1):
            await asyncio.sleep(self.load_seconds / (steps + 1))
            if done == 0:
                tracker.stage(key, "weights")
            tracker.count(key, "Loading weights", done, steps)
            self._loading = tracker.current(key)
        self._loading = None
        self._loaded = True

    def __repr__(self) -> str:
        return f"ScriptedAgent({len(self.replies)} replies, model={self.model!r})"

    def _next_reply(self) -> str | BaseException:
        return self.replies[min(len(self.calls) - 1, len(self.replies) - 1)]

    # ------------------------------------------------------------------ protocol

    async def invoke(self, payload: AgentPayload, **overrides: Any) -> AgentResponse:
        """The next reply as a response (streamed internally, so timings are real)."""
        return await self.stream(payload, events=True, **overrides).collect()

    async def invoke_with_tools(self, payload: AgentPayload, tools: list[Any], **overrides: Any) -> AgentResponse:
        """Like :meth:`invoke`; tool-call text in the reply becomes ``response.tool_calls``."""
        return await self.stream_with_tools(payload, tools, **overrides).collect()

    async def get_context_window(self) -> int:
        return self.context_window

    async def supports_streaming(self) -> bool:
        return True

    def stream(self, payload: AgentPayload, *, events: bool = False, **overrides: Any) -> "ScriptedStream":
        """Stream the next reply: text pieces, or :class:`StreamEvent` objects with ``events=True``."""
        self.calls.append(ScriptedCall(payload, dict(overrides)))
        return ScriptedStream(self, self._next_reply(), overrides, events=events, tools=None)

    def stream_with_tools(self, payload: AgentPayload, tools: list[Any], *, events: bool = True,
                          **overrides: Any) -> "ScriptedStream":
        """Like :meth:`stream`, with tool calls in the reply parsed into ``tool_call`` events."""
        names = [_tool_name(t) for t in tools]
        self.calls.append(ScriptedCall(payload, dict(overrides), names))
        return ScriptedStream(self, self._next_reply(), overrides, events=events, tools=names)

    async def unload_model(self) -> None:
        """Nothing to free."""


def _tool_name(tool: Any) -> str:
    if isinstance(tool, dict):
        function = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        return str(function.get("name"))
    return getattr(tool, "__name__", type(tool).__name__)


class ScriptedStream(EventStream):
    """The stream of one scripted reply; the same surface as the local agent's stream. Like the
    project's agents, it records the call in the call log (:mod:`midori_hf_nb.log`; ``log=`` on
    the agent or the call as for them)."""

    def __init__(self, agent: ScriptedAgent, reply: str | BaseException, overrides: dict[str, Any], *,
                 events: bool, tools: list[str] | None) -> None:
        state = _State()
        overrides = dict(overrides)
        ticket = start_call(agent.log, overrides.pop("log", None), method="stream", payload=agent.calls[-1].payload)
        if ticket is not None:
            ticket.details = partial(_details, agent, dict(overrides))
            ticket.tools = [{"name": name} for name in tools] if tools is not None else None
        super().__init__(_logged(state, ticket, agent, reply, overrides, tools), state, events=events)
        weakref.finalize(self, _State.__setattr__, state, "stopped", True)

    def cancel(self) -> None:
        """Stop: the reply ends at the current piece with ``finish_reason="cancelled"``."""
        self._state.stopped = True

    async def aclose(self) -> None:
        """Stop and close the stream."""
        self._state.stopped = True
        await self._iterator.aclose()


def _details(agent: ScriptedAgent, overrides: dict[str, Any]) -> dict[str, Any]:
    return {"model": agent.model, "backend": "scripted", "options": overrides}


async def _logged(state: _State, ticket: CallTicket | None, agent: ScriptedAgent, reply: str | BaseException,
                  overrides: dict[str, Any], tools: list[str] | None) -> AsyncIterator[StreamEvent]:
    events = _run(state, agent, reply, overrides, tools)
    try:
        async for event in events:
            yield event
    except BaseException as exc:
        closed = isinstance(exc, (asyncio.CancelledError, GeneratorExit))
        finish_call(ticket, state.response, None if closed and state.response is not None
                    else "cancelled" if closed else exc)
        raise
    finally:
        await events.aclose()
    finish_call(ticket, state.response)


async def _run(state: _State, agent: ScriptedAgent, reply: str | BaseException, overrides: dict[str, Any],
               tools: list[str] | None) -> AsyncIterator[StreamEvent]:
    started = time.perf_counter()
    limit = overrides.get("max_new_tokens")
    text = reply if isinstance(reply, str) else ""
    pieces = [text[i:i + agent.piece_chars] for i in range(0, len(text), agent.piece_chars)]
    if isinstance(reply, BaseException):
        pieces = ["fail"] * agent.fail_after
    await agent._load()
    splitter = StreamSplitter(tools=tools is not None)
    sent: list[str] = []
    first: float | None = None
    finish = "stop"
    try:
        for index, piece in enumerate(pieces):
            if state.stopped:
                finish = "cancelled"
                break
            if isinstance(limit, int) and index >= limit:
                finish = "length"
                break
            if agent.delay:
                await asyncio.sleep(agent.delay)
            else:
                await asyncio.sleep(0)
            if state.stopped:
                finish = "cancelled"
                break
            sent.append(piece)
            if first is None:
                first = time.perf_counter()
            for part in splitter.feed(piece):
                for event in _events(part):
                    yield event
        if isinstance(reply, BaseException):
            raise reply
        for part in splitter.finish():
            for event in _events(part):
                yield event
    except asyncio.CancelledError:
        finish = "cancelled"
        state.response = _response(agent, "".join(sent), finish, started, first, tools)
        raise
    state.response = _response(agent, "".join(sent), finish, started, first, tools)
    yield StreamEvent("done", state.response.response, state.response)


def _events(part: Any) -> list[StreamEvent]:
    if part.kind != "tool":
        return [StreamEvent(part.kind, part.text)]
    return [StreamEvent("tool_call", c["name"], c) for c in (part.parse.calls if part.parse else [])]


def _response(agent: ScriptedAgent, raw: str, finish: str, started: float, first: float | None,
              tools: list[str] | None) -> AgentResponse:
    blocks, answer = extract_reasoning_blocks(raw)
    calls = None
    stats = ResponseStats(model=agent.model, backend="scripted", completion_tokens=len(raw) and
                          -(-len(raw) // agent.piece_chars), prompt_tokens=0, finish_reason=finish, raw_text=raw)
    if tools is not None:
        parsed = parse_tool_calls_detailed(answer)
        answer = parsed.text
        calls = parsed.calls or None
        stats.tools_offered = sorted(tools)
        stats.tool_parse_errors = list(parsed.errors)
        stats.unknown_tool_calls = [c["name"] for c in parsed.calls if c["name"] not in tools]
    seconds = time.perf_counter() - started
    stats.total_seconds = stats.wall_seconds = seconds
    stats.time_to_first_token = None if first is None else first - started
    stats.tokens_per_second = (stats.completion_tokens or 0) / seconds if seconds > 0 else 0.0
    stats.thinking_blocks = list(blocks)
    return AgentResponse(thinking="\n\n".join(blocks), response=answer, code=None, tool_calls=calls,
                         metadata=stats.as_dict())


__all__ = ["ScriptedAgent", "ScriptedCall", "ScriptedStream"]
