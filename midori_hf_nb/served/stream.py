"""``ServedStream``: an async iterator over one streamed chat completion of a server.

Chunks are read from the HTTP stream as they arrive and turned into the same typed
:class:`~midori_hf_nb.StreamEvent` objects the local agent's streams yield: ``thinking`` (the
server's ``reasoning_content``, or ``<think>`` blocks in the text), ``text``, ``tool_call`` (the
server's ``tool_calls``, or calls written as text, read by the project's parser) and ``done``.

Stopping closes the HTTP stream at once (the server sees the connection close and can stop
generating): :meth:`ServedStream.cancel` (from any thread), :meth:`ServedStream.aclose`, breaking
out of the loop, dropping the stream or cancelling the consuming task. The partial answer is
kept with ``finish_reason="cancelled"``. A stream the server drops midway (the server stopped,
the connection broke, a piece took longer than ``timeout``) ends with the partial answer and
``finish_reason="error"``; the statistics' ``error`` says what happened.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator

from ..agent.events import EventStream, StreamEvent
from ..agent.responses import adopt_live_ids
from ..parsing import StreamSplitter, extract_reasoning_blocks, normalise_call, parse_tool_calls_detailed, unique_ids
from ..protocol import AgentPayload, AgentResponse
from ..stats import ResponseStats
from ..tools import tool_names
from ..validation import validate_payload
from .errors import scrub

if TYPE_CHECKING:  # pragma: no cover
    from .agent import OpenAICompatibleAgent

logger = logging.getLogger("midori_hf_nb")

#: the most tool calls read from the ``tool_calls`` of one answer, and characters of one call's arguments
MAX_SERVER_CALLS = 64
MAX_ARGUMENT_CHARS = 1_000_000


@dataclass
class ServedState:
    """What a stream and its running request share (nothing refers back to the stream)."""

    stop: threading.Event = field(default_factory=threading.Event)
    response: AgentResponse | None = None
    loop: asyncio.AbstractEventLoop | None = None
    wake: asyncio.Event | None = None
    #: the HTTP response of the stream (None before the server answered)
    http: Any = None

    def request_stop(self) -> None:
        """Ask the stream to stop (safe from any thread): it closes the HTTP stream at once."""
        self.stop.set()
        loop, wake = self.loop, self.wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop is closed: nothing is reading any more
                pass


class ServedStream(EventStream):
    """An async iterator over one streamed answer of a server (see the module docstring).

    Iterating yields text pieces of the answer (or :class:`StreamEvent` objects with
    ``events=True``); afterwards :attr:`response` holds the final :class:`AgentResponse`.
    """

    def __init__(self, agent: "OpenAICompatibleAgent", payload: AgentPayload, *, events: bool,
                 overrides: dict[str, Any], schemas: list[dict] | None = None) -> None:
        state = ServedState()
        super().__init__(run_served(state, agent, payload, overrides, schemas), state, events=events)
        weakref.finalize(self, state.request_stop)

    def cancel(self) -> None:
        """Stop: the HTTP stream is closed and the answer ends with ``finish_reason="cancelled"``."""
        self._state.request_stop()

    async def aclose(self) -> None:
        """Stop and close the HTTP stream now."""
        self._state.request_stop()
        await self._iterator.aclose()

    @property
    def http_closed(self) -> bool | None:
        """Whether the HTTP response is closed (None before the server answered)."""
        http = self._state.http
        return None if http is None else bool(http.is_closed)

    async def __aenter__(self) -> "ServedStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


class _ServerCalls:
    """Tool calls assembled from ``tool_calls`` deltas (a call's pieces share its ``index``)."""

    def __init__(self) -> None:
        self.calls: dict[int, dict[str, Any]] = {}
        self.errors: list[str] = []

    def feed(self, deltas: Any) -> None:
        for delta in deltas or []:
            index = getattr(delta, "index", None)
            if not isinstance(index, int):
                index = len(self.calls)
            if index not in self.calls:
                if len(self.calls) >= MAX_SERVER_CALLS:
                    if len(self.errors) < 1:
                        self.errors.append(f"more than {MAX_SERVER_CALLS} tool calls: the rest were not read")
                    continue
                self.calls[index] = {"id": None, "name": "", "arguments": []}
            call = self.calls[index]
            if getattr(delta, "id", None):
                call["id"] = str(delta.id)
            function = getattr(delta, "function", None)
            if function is not None:
                if getattr(function, "name", None):
                    call["name"] += str(function.name)
                if getattr(function, "arguments", None):
                    call["arguments"].append(str(function.arguments))

    def parsed(self) -> tuple[list[dict[str, Any]], list[str]]:
        """The calls as ``{"name", "arguments", "id"}`` and the errors of those that cannot be read."""
        calls, errors = [], list(self.errors)
        for index in sorted(self.calls):
            raw = self.calls[index]
            arguments = "".join(raw["arguments"])
            if len(arguments) > MAX_ARGUMENT_CHARS:
                errors.append(f"tool call {raw['name']!r}: arguments longer than {MAX_ARGUMENT_CHARS} characters")
                continue
            found, error = normalise_call({"id": raw["id"], "function": {"name": raw["name"], "arguments": arguments}})
            if found:
                calls.append(found)
            else:
                errors.append(error or "unreadable tool call")
        return calls, errors


def _piece_events(piece: Any, offered: set[str], live_calls: list[dict]) -> list[StreamEvent]:
    """Events for one piece of the splitter: thinking/text as they are, a tool piece as its calls."""
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


def _reasoning_of(delta: Any) -> str:
    """The reasoning text of a delta: ``reasoning_content`` (``transformers serve``, DeepSeek,
    vLLM) or ``reasoning`` (vLLM's newer name, Ollama)."""
    for name in ("reasoning_content", "reasoning"):
        value = getattr(delta, name, None)
        if value is None:
            value = (getattr(delta, "model_extra", None) or {}).get(name)
        if isinstance(value, str) and value:
            return value
    return ""


@dataclass
class _Reading:
    """What has arrived so far."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    pieces: int = 0
    first_at: float | None = None
    finish: str | None = None
    usage: Any = None
    error: str | None = None
    cancelled: bool = False


def _finish_reason(reading: _Reading) -> str:
    if reading.cancelled:
        return "cancelled"
    if reading.error is not None:
        return "error"
    return "length" if reading.finish == "length" else "stop"


def build_served_response(agent: "OpenAICompatibleAgent", payload: AgentPayload, call: Any,
                          schemas: list[dict] | None, reading: _Reading, server_calls: _ServerCalls,
                          called_at: float, sent_at: float) -> AgentResponse:
    """The protocol response of one streamed answer, with its statistics in ``metadata``."""
    now = time.perf_counter()
    raw_text = "".join(reading.content)
    blocks, answer = extract_reasoning_blocks(raw_text)
    reasoning = "".join(reading.reasoning).strip()
    if reasoning:
        blocks = [reasoning, *blocks]
    usage = reading.usage
    completion = getattr(usage, "completion_tokens", None)
    prompt_tokens = getattr(usage, "prompt_tokens", None)
    if not isinstance(completion, int):
        completion = reading.pieces  # no usage from the server: one piece is about one token
    total = now - sent_at
    first = None if reading.first_at is None else reading.first_at - sent_at
    decode = None
    if first is not None and completion >= 2 and total - first > 0:
        decode = (completion - 1) / (total - first)
    config = call.config
    structured, structured_errors = server_calls.parsed()
    stats = ResponseStats(
        model=config.model, backend="openai", session_id=payload.session_id,
        prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else None, completion_tokens=completion,
        time_to_first_token=first, total_seconds=total, wall_seconds=now - called_at,
        call_to_first_token=None if reading.first_at is None else reading.first_at - called_at,
        tokens_per_second=completion / total if total > 0 else None, decode_tokens_per_second=decode,
        finish_reason=_finish_reason(reading), device="remote", seed=call.seed, do_sample=not call.greedy,
        temperature=0.0 if call.greedy else config.temperature, max_new_tokens=config.max_new_tokens,
        raw_text=raw_text, parser="server" if (reasoning or server_calls.calls) else "tags",
        base_url=config.server, error=reading.error, server_finish_reason=reading.finish,
    )
    calls = None
    if schemas is not None:
        parsed = parse_tool_calls_detailed(answer)
        parsed.calls = unique_ids(structured + parsed.calls)
        parsed.errors = structured_errors + parsed.errors
        offered = set(tool_names(schemas))
        for found in parsed.calls:
            if found["name"] not in offered:
                found["unknown"] = True
        if parsed.calls and parsed.prose_before_calls:
            blocks = [*blocks, parsed.prose_before_calls]
            answer = parsed.answer
        else:
            answer = parsed.text
        calls = parsed.calls or None
        stats.tools_offered = sorted(offered)
        stats.tools_in_template = None
        stats.tool_parse_errors = list(parsed.errors)
        stats.unknown_tool_calls = [c["name"] for c in parsed.calls if c["name"] not in offered]
    stats.thinking_blocks = list(blocks)
    return AgentResponse(thinking="\n\n".join(blocks), response=answer, code=None, tool_calls=calls,
                         metadata=stats.as_dict())


async def _settle(task: asyncio.Future) -> None:
    """Cancel ``task`` and wait until it has ended (its exception, if any, is not raised)."""
    task.cancel()
    await asyncio.wait({task})


async def _close(stream: Any) -> None:
    try:
        await stream.close()
    except Exception as exc:  # the connection is already gone: nothing left to close
        logger.debug("closing the HTTP stream: %s: %s", type(exc).__name__, exc)


async def run_served(state: ServedState, agent: "OpenAICompatibleAgent", payload: AgentPayload,
                     overrides: dict[str, Any], schemas: list[dict] | None) -> AsyncIterator[StreamEvent]:
    """The events of one streamed answer (the body of :class:`ServedStream`)."""
    import openai

    called_at = time.perf_counter()
    payload = validate_payload(payload)
    call = agent.resolve_settings(overrides)
    body = agent.request_body(payload, call, schemas)
    state.loop = asyncio.get_running_loop()
    state.wake = asyncio.Event()
    if state.stop.is_set():
        state.wake.set()
    client = agent.client()
    reading = _Reading()
    server_calls = _ServerCalls()
    splitter = StreamSplitter(start_in_thinking=False, tools=schemas is not None)
    offered = set(tool_names(schemas or []))
    live_calls: list[dict] = []
    key = agent.config.api_key.reveal()

    sent_at = time.perf_counter()
    opening = asyncio.ensure_future(client.chat.completions.create(**body))
    waker = asyncio.ensure_future(state.wake.wait())
    stream = None
    try:
        try:
            await asyncio.wait({opening, waker}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            opening.cancel()
            raise
        if not opening.done():  # stopped before the server answered
            await _settle(opening)
            reading.cancelled = True
            if not opening.cancelled() and opening.exception() is None:  # it answered meanwhile
                await _close(opening.result())
        else:
            try:
                stream = opening.result()
            except openai.OpenAIError as exc:
                raise await agent.explain(exc) from None
            state.http = stream.response
        while stream is not None:
            if state.stop.is_set():
                reading.cancelled = True
                break
            following = asyncio.ensure_future(stream.__anext__())
            try:
                await asyncio.wait({following, waker}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:  # the consuming task was cancelled: keep the partial answer
                following.cancel()
                reading.cancelled = True
                await _close(stream)
                state.response = build_served_response(agent, payload, call, schemas, reading, server_calls,
                                                       called_at, sent_at)
                raise
            if not following.done():
                await _settle(following)
                reading.cancelled = True
                break
            try:
                chunk = following.result()
            except StopAsyncIteration:
                if reading.finish is None:
                    reading.error = "the server ended the stream without saying why (no finish_reason)"
                break
            except openai.APITimeoutError:
                reading.error = (f"no piece of the answer arrived within timeout={call.config.timeout} s: the server "
                                 "at {url} stopped sending".format(url=agent.config.server))
                break
            except openai.APIConnectionError as exc:
                cause = exc.__cause__ or exc
                reading.error = scrub(f"the server at {agent.config.server} dropped the stream midway "
                                      f"({type(cause).__name__}: {cause})", key)
                break
            except openai.OpenAIError as exc:
                reading.error = scrub(f"the server at {agent.config.server} sent an error midway: {exc}", key)
                break
            if getattr(chunk, "usage", None) is not None:
                reading.usage = chunk.usage
            for choice in chunk.choices or []:
                if getattr(choice, "index", 0) not in (0, None):
                    continue
                delta = choice.delta
                events: list[StreamEvent] = []
                thought = _reasoning_of(delta) if delta is not None else ""
                if thought:
                    reading.reasoning.append(thought)
                    events.append(StreamEvent("thinking", thought))
                text = getattr(delta, "content", None) if delta is not None else None
                if isinstance(text, str) and text:
                    reading.content.append(text)
                    for piece in splitter.feed(text):
                        events.extend(_piece_events(piece, offered, live_calls))
                deltas = getattr(delta, "tool_calls", None) if delta is not None else None
                if deltas:
                    server_calls.feed(deltas)
                if thought or text or deltas:
                    reading.pieces += 1
                    if reading.first_at is None:
                        reading.first_at = time.perf_counter()
                if choice.finish_reason:
                    reading.finish = str(choice.finish_reason)
                for event in events:
                    yield event
        for piece in splitter.finish():
            for event in _piece_events(piece, offered, live_calls):
                yield event
        if stream is not None:
            await _close(stream)
        response = build_served_response(agent, payload, call, schemas, reading, server_calls, called_at, sent_at)
        state.response = response
        if reading.error:
            logger.warning("%s (model %r): %s; the partial answer is kept", type(agent).__name__,
                           agent.config.model, reading.error)
        for found in adopt_live_ids(response.tool_calls or [], live_calls):
            yield StreamEvent("tool_call", found["name"], found)
        yield StreamEvent("done", response.response, response)
    finally:
        waker.cancel()
        if not opening.done():
            opening.cancel()
        if stream is not None:
            await _close(stream)


__all__ = ["ServedStream", "build_served_response", "run_served"]
