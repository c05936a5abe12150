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
from functools import partial
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator

from ..events import EventStream, StreamEvent, piece_events, with_pending
from ..logprobs import LogprobsResponse
from ..parsing import StreamSplitter, extract_reasoning_blocks, normalise_call
from ..protocol import AgentPayload, AgentResponse
from ..stats import ResponseStats
from ..tools import tool_names
from ..tools.answers import adopt_live_ids, attach_tool_calls
from ..validation import validate_payload
from ..log.capture import CallTicket, finish_call, start_call
from .call_log import served_details
from .client import import_openai
from .errors import ServerRequestError, scrub
from .logprobs import ServedLogprobs, without_logprobs

if TYPE_CHECKING:  # pragma: no cover
    from .host import ServedHost

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

    def __init__(self, agent: "ServedHost", payload: AgentPayload, *, events: bool,
                 overrides: dict[str, Any], schemas: list[dict] | None = None, method: str = "stream") -> None:
        state = ServedState()
        overrides = dict(overrides)
        ticket = start_call(getattr(agent, "log", None), overrides.pop("log", None), method=method, payload=payload)
        if ticket is not None:
            ticket.details = partial(served_details, agent.config, None)
            ticket.tools = schemas
            ticket.secrets = (agent.config.api_key.reveal(),)
        super().__init__(logged_served(state, ticket, agent, payload, overrides, schemas), state, events=events)
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


def build_served_response(agent: "ServedHost", payload: AgentPayload, call: Any,
                          schemas: list[dict] | None, reading: _Reading, server_calls: _ServerCalls,
                          called_at: float, sent_at: float, probabilities: ServedLogprobs | None = None,
                          ) -> AgentResponse:
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
        answer, blocks, calls = attach_tool_calls(answer, blocks, structured, structured_errors, schemas, stats,
                                                  tools_in_template=None)
    stats.thinking_blocks = list(blocks)
    logprobs = probabilities.result(config.server) if probabilities is not None else None
    if logprobs is not None:
        stats.logprobs = logprobs.as_dict()
        return LogprobsResponse(thinking="\n\n".join(blocks), response=answer, code=None, tool_calls=calls,
                                metadata=stats.as_dict(), logprobs=logprobs)
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


class _Collector:
    """Turns the chunks of one stream into events, keeping what arrived (:class:`_Reading`)."""

    def __init__(self, schemas: list[dict] | None, probabilities: ServedLogprobs | None = None) -> None:
        self.reading = _Reading()
        self.probabilities = probabilities or ServedLogprobs(None)
        self.pending: list = []  # token records not yet put on an event
        self.server_calls = _ServerCalls()
        self.splitter = StreamSplitter(start_in_thinking=False, tools=schemas is not None)
        self.offered = set(tool_names(schemas or []))
        self.live_calls: list[dict] = []  # tool calls written as text, announced while streaming

    def absorb(self, chunk: Any) -> list[StreamEvent]:
        """The events of one chunk (reasoning, text, tool calls in the text), its usage and finish reason."""
        reading = self.reading
        if getattr(chunk, "usage", None) is not None:
            reading.usage = chunk.usage
        events: list[StreamEvent] = []
        records: list = []
        for choice in getattr(chunk, "choices", None) or []:
            delta = getattr(choice, "delta", None)
            if getattr(choice, "index", 0) not in (0, None) or delta is None:
                continue
            records.extend(self.probabilities.absorb(choice))
            thought = _reasoning_of(delta)
            if thought:
                reading.reasoning.append(thought)
                events.append(StreamEvent("thinking", thought))
            text = getattr(delta, "content", None)
            if isinstance(text, str) and text:
                reading.content.append(text)
                for piece in self.splitter.feed(text):
                    events.extend(piece_events(piece, self.offered, self.live_calls))
            deltas = getattr(delta, "tool_calls", None)
            if deltas:
                self.server_calls.feed(deltas)
            if thought or text or deltas:
                reading.pieces += 1
                if reading.first_at is None:
                    reading.first_at = time.perf_counter()
            if getattr(choice, "finish_reason", None):
                reading.finish = str(choice.finish_reason)
        self.pending.extend(records)
        return with_pending(events, self.pending)

    def finish(self) -> list[StreamEvent]:
        """The events of the text the splitter still holds."""
        return with_pending([event for piece in self.splitter.finish()
                             for event in piece_events(piece, self.offered, self.live_calls)], self.pending)


def _midway_error(exc: BaseException, openai: Any, agent: "ServedHost", timeout: float) -> str:
    """What went wrong with a stream the server had started to send (never with the key)."""
    url = agent.config.server
    if isinstance(exc, openai.APITimeoutError):
        text = f"no piece of the answer arrived within timeout={timeout} s: the server at {url} stopped sending"
    elif isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        text = f"the server at {url} dropped the stream midway ({type(cause).__name__}: {cause})"
    else:
        text = f"the server at {url} sent an error midway: {exc}"
    return scrub(text, agent.config.api_key.reveal())


async def _open(state: ServedState, agent: "ServedHost", body: dict[str, Any], waker: asyncio.Future,
                openai: Any) -> Any:
    """The server's stream for ``body``, or None when the stream was stopped before the server answered."""
    opening = asyncio.ensure_future(agent.client().chat.completions.create(**body))
    try:
        await asyncio.wait({opening, waker}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        opening.cancel()
        raise
    if not opening.done():  # stopped first
        await _settle(opening)
        if not opening.cancelled() and opening.exception() is None:  # it answered meanwhile
            await _close(opening.result())
        return None
    try:
        stream = opening.result()
    except openai.OpenAIError as exc:
        raise await agent.explain(exc) from None
    state.http = stream.response
    return stream


async def logged_served(state: ServedState, ticket: CallTicket | None, agent: "ServedHost", payload: AgentPayload,
                        overrides: dict[str, Any], schemas: list[dict] | None) -> AsyncIterator[StreamEvent]:
    """The events of :func:`run_served`, with the call handed to the call log when it ends."""
    events = run_served(state, agent, payload, overrides, schemas, ticket)
    try:
        async for event in events:
            yield event
    except BaseException as exc:
        stopped = isinstance(exc, (asyncio.CancelledError, GeneratorExit)) and state.response is not None
        error = None if stopped else ("cancelled" if isinstance(exc, (asyncio.CancelledError, GeneratorExit))
                                      else f"{type(exc).__name__}: {exc}")
        finish_call(ticket, state.response, error)
        raise
    finally:
        await events.aclose()
    finish_call(ticket, state.response)


async def run_served(state: ServedState, agent: "ServedHost", payload: AgentPayload,
                     overrides: dict[str, Any], schemas: list[dict] | None,
                     ticket: CallTicket | None = None) -> AsyncIterator[StreamEvent]:
    """The events of one streamed answer (the body of :class:`ServedStream`)."""
    openai = import_openai()
    called_at = time.perf_counter()
    payload = validate_payload(payload)
    call = agent.resolve_settings(overrides)
    if ticket is not None:
        ticket.details = partial(served_details, agent.config, call)
    body = agent.request_body(payload, call, schemas)
    state.loop, state.wake = asyncio.get_running_loop(), asyncio.Event()
    if state.stop.is_set():
        state.wake.set()
    probabilities = ServedLogprobs(call.probabilities)
    collector = _Collector(schemas, probabilities)
    reading = collector.reading

    def respond() -> AgentResponse:
        state.response = build_served_response(agent, payload, call, schemas, reading, collector.server_calls,
                                               called_at, sent_at, probabilities)
        return state.response

    sent_at = time.perf_counter()
    waker = asyncio.ensure_future(state.wake.wait())
    stream = None
    try:
        try:
            stream = await _open(state, agent, body, waker, openai)
        except ServerRequestError as exc:  # a server that refuses the logprobs parameters: ask again without
            if exc.status not in (400, 422) or without_logprobs(body) == body:
                raise
            probabilities.refused = f"HTTP {exc.status}: {exc}"[:400]
            stream = await _open(state, agent, without_logprobs(body), waker, openai)
        reading.cancelled = stream is None
        while stream is not None and not reading.cancelled:
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
                respond()
                raise
            if not following.done():  # stopped while waiting for the next piece
                await _settle(following)
                reading.cancelled = True
                break
            try:
                chunk = following.result()
            except StopAsyncIteration:
                if reading.finish is None:
                    reading.error = "the server ended the stream without saying why (no finish_reason)"
                break
            except openai.OpenAIError as exc:
                reading.error = _midway_error(exc, openai, agent, call.config.timeout)
                break
            for event in collector.absorb(chunk):
                yield event
        for event in collector.finish():
            yield event
        if stream is not None:
            await _close(stream)
        response = respond()
        if reading.error:
            logger.warning("%s (model %r): %s; the partial answer is kept", type(agent).__name__,
                           agent.config.model, reading.error)
        for found in adopt_live_ids(response.tool_calls or [], collector.live_calls):
            yield StreamEvent("tool_call", found["name"], found)
        yield StreamEvent("done", response.response, response,
                          logprobs=list(collector.pending) if collector.pending else None)
    finally:
        waker.cancel()
        if stream is not None:
            await _close(stream)


__all__ = ["ServedStream", "build_served_response", "run_served"]
