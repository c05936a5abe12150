"""``ServedStream``: an async iterator over one streamed chat completion of a server.

The response body is read as it arrives, as server-sent events (:mod:`.sse`, bounded and as the
specification says), and each chunk is turned (:mod:`.chunks`) into the same typed
:class:`~midori_hf_nb.StreamEvent` objects the local agent's streams yield: ``thinking`` (the
server's ``reasoning_content``, or ``<think>`` blocks in the text), ``text``, ``tool_call`` (the
server's ``tool_calls``, or calls written as text, read by the project's parser) and ``done``.

Stopping closes the HTTP stream at once (the server sees the connection close and can stop
generating): :meth:`ServedStream.cancel` (from any thread), :meth:`ServedStream.aclose`, breaking
out of the loop, dropping the stream or cancelling the consuming task. The partial answer is
kept with ``finish_reason="cancelled"``. A stream the server drops or breaks midway (the server
stopped, the connection broke, a piece took longer than ``timeout``, the call passed its
``deadline``, an event that is not JSON, a bound of :mod:`.limits` passed) ends with the partial
answer and ``finish_reason="error"``; the statistics' ``error`` says what happened. A server
that sends more than the token budget is cut on the client (``finish_reason="length"``).
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

from ..events import EventStream, StreamEvent
from ..parsing import extract_reasoning_blocks
from ..protocol import AgentPayload, AgentResponse
from ..stats import ResponseStats
from ..tools.answers import adopt_live_ids, attach_tool_calls
from ..validation import validate_payload
from ..log.capture import CallTicket, finish_call, start_call
from .call_log import served_details
from .chunks import BudgetReached, Collector, Reading, checked_usage, read_chunk, server_words
from .client import http_failure, import_openai
from .errors import ServerTimeoutError, scrub
from .redaction import guard_logs, secret_of
from .sse import MalformedStreamError, SSEDecoder

if TYPE_CHECKING:  # pragma: no cover
    from .host import ServedHost

logger = logging.getLogger("midori_hf_nb")


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


def _finish_reason(reading: Reading) -> str:
    if reading.cancelled:
        return "cancelled"
    if reading.error is not None:
        return "error"
    return "length" if reading.finish == "length" or reading.cut else "stop"


def build_served_response(agent: "ServedHost", payload: AgentPayload, call: Any, schemas: list[dict] | None,
                          collector: Collector, called_at: float, sent_at: float) -> AgentResponse:
    """The protocol response of one streamed answer, with its statistics in ``metadata``."""
    now = time.perf_counter()
    reading, server_calls = collector.reading, collector.server_calls
    raw_text = "".join(reading.content)
    blocks, answer = extract_reasoning_blocks(raw_text)
    reasoning = "".join(reading.reasoning).strip()
    if reasoning:
        blocks = [reasoning, *blocks]
    config = call.config
    completion, prompt_tokens, usage_note = checked_usage(reading.usage, config.max_new_tokens)
    if completion is None:
        completion = reading.pieces  # no (believable) usage from the server: one piece is about one token
    total = now - sent_at
    first = None if reading.first_at is None else reading.first_at - sent_at
    decode = None
    if first is not None and completion >= 2 and total - first > 0:
        decode = (completion - 1) / (total - first)
    structured, structured_errors = server_calls.parsed()
    notes = list(reading.notes)
    if usage_note:
        notes.append(usage_note)
    if collector.key_found:
        notes.append(f"the server's answer contained the API key ({collector.key_found} times): each was "
                     "replaced by ***")
        logger.warning("%s (model %r): the server's answer contained the API key; it was masked",
                       type(agent).__name__, config.model)
    stats = ResponseStats(
        model=config.model, backend="openai", session_id=payload.session_id,
        prompt_tokens=prompt_tokens, completion_tokens=completion,
        time_to_first_token=first, total_seconds=total, wall_seconds=now - called_at,
        call_to_first_token=None if reading.first_at is None else reading.first_at - called_at,
        tokens_per_second=completion / total if total > 0 else None, decode_tokens_per_second=decode,
        finish_reason=_finish_reason(reading), device="remote", seed=call.seed, do_sample=not call.greedy,
        temperature=0.0 if call.greedy else config.temperature, max_new_tokens=config.max_new_tokens,
        raw_text=raw_text, parser="server" if (reasoning or server_calls.calls) else "tags",
        base_url=config.server, error=reading.error, server_finish_reason=reading.finish, notes=notes or None,
    )
    calls = None
    if schemas is not None:
        answer, blocks, calls = attach_tool_calls(answer, blocks, structured, structured_errors, schemas, stats,
                                                  tools_in_template=None)
    stats.thinking_blocks = list(blocks)
    return AgentResponse(thinking="\n\n".join(blocks), response=answer, code=None, tool_calls=calls,
                         metadata=stats.as_dict())


async def _settle(task: asyncio.Future) -> None:
    """Cancel ``task`` and wait until it has ended (its exception, if any, is not raised)."""
    task.cancel()
    await asyncio.wait({task})


class _Body:
    """The open response of one stream: its bytes, read one piece at a time, and its closing."""

    def __init__(self, response: Any) -> None:
        self.response = response
        self.http = response.http_response
        self.pieces = response.iter_bytes()

    async def close(self) -> None:
        for close in (self.pieces.aclose, self.response.close):
            try:
                await close()
            except Exception as exc:  # the connection is already gone: nothing left to close
                logger.debug("closing the HTTP stream: %s: %s", type(exc).__name__, exc)


def _midway_error(exc: BaseException, body: _Body, agent: "ServedHost", timeout: float) -> str:
    """What went wrong with a stream the server had started to send (never with the key)."""
    url = agent.config.server
    kind = http_failure(exc, body.http)
    if kind == "timeout":
        text = f"no piece of the answer arrived within timeout={timeout} s: the server at {url} stopped sending"
    elif kind == "decoding":
        text = f"the server at {url} sent a body that cannot be decoded ({type(exc).__name__}: {exc})"
    elif kind == "transport":
        cause = exc.__cause__ or exc
        text = f"the server at {url} dropped the stream midway ({type(cause).__name__}: {cause})"
    else:
        text = f"reading the stream from the server at {url} failed midway ({type(exc).__name__}: {exc})"
    return scrub(text, secret_of(agent.config.api_key))


async def _open(state: ServedState, agent: "ServedHost", body: dict[str, Any], waker: asyncio.Future,
                openai: Any, deadline_at: float, deadline: float) -> _Body | None:
    """The server's stream for ``body``, or None when the stream was stopped before the server answered."""
    client = agent.client()
    guard_logs(agent.config.api_key)  # again: the HTTP stack may have made loggers since the client
    manager = client.chat.completions.with_streaming_response.create(**body)
    opening = asyncio.ensure_future(manager.__aenter__())
    try:
        await asyncio.wait({opening, waker}, timeout=max(0.0, deadline_at - time.perf_counter()),
                           return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        opening.cancel()
        raise
    if not opening.done():  # stopped first, or the deadline passed
        await _settle(opening)
        if not opening.cancelled() and opening.exception() is None:  # it answered meanwhile
            await _Body(opening.result()).close()
        if not waker.done():
            c = agent.config
            raise ServerTimeoutError(f"the server at {c.server} did not answer within deadline={deadline} s for "
                                     f"model {c.model!r}: check that it runs and is not overloaded, or raise "
                                     "deadline", base_url=c.server, model=c.model)
        return None
    try:
        response = opening.result()
    except openai.OpenAIError as exc:
        raise await agent.explain(exc) from None
    state.http = response.http_response
    return _Body(response)


class _Events:
    """The events of a stream's bytes: SSE events read as chunks (see :mod:`.sse`, :mod:`.chunks`)."""

    def __init__(self, collector: Collector, agent: "ServedHost") -> None:
        self.decoder = SSEDecoder()
        self.collector = collector
        self.agent = agent
        self.done = False  # the server sent [DONE]

    def feed(self, data: bytes) -> tuple[list[StreamEvent], Exception | None]:
        """The events of ``data`` up to the first problem, and that problem: a
        :class:`MalformedStreamError` (also for an error event) or :class:`BudgetReached`."""
        events: list[StreamEvent] = []
        try:
            for kind, text in self.decoder.feed(data):
                if text.strip() == "[DONE]":
                    self.done = True
                    break
                secret = secret_of(self.agent.config.api_key)
                chunk = None if kind == "error" else read_chunk(text, secret)
                if chunk is None or chunk.get("error"):
                    error = (chunk or {}).get("error", text)
                    message = error.get("message", error) if isinstance(error, dict) else error
                    raise MalformedStreamError(f"the server sent an error midway: {server_words(message, secret)}")
                events += self.collector.absorb(chunk)
        except (BudgetReached, MalformedStreamError) as exc:
            self.done = True
            return events, exc
        return events, None


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
    config = call.config
    deadline_at = called_at + config.deadline
    state.loop, state.wake = asyncio.get_running_loop(), asyncio.Event()
    if state.stop.is_set():
        state.wake.set()
    collector = Collector(schemas, config.max_new_tokens, secret_of(config.api_key))
    reading = collector.reading
    reader = _Events(collector, agent)

    def respond() -> AgentResponse:
        if reader.decoder.replaced and not any("UTF-8" in n for n in reading.notes):
            reading.notes.append("the server sent bytes that are not UTF-8: each was replaced by U+FFFD")
        state.response = build_served_response(agent, payload, call, schemas, collector, called_at, sent_at)
        return state.response

    sent_at = time.perf_counter()
    waker = asyncio.ensure_future(state.wake.wait())
    stream = None
    try:
        stream = await _open(state, agent, body, waker, openai, deadline_at, config.deadline)
        reading.cancelled = stream is None
        while stream is not None and not reading.cancelled and not reader.done:
            if state.stop.is_set():
                reading.cancelled = True
                break
            following = asyncio.ensure_future(stream.pieces.__anext__())
            try:
                await asyncio.wait({following, waker}, timeout=max(0.0, deadline_at - time.perf_counter()),
                                   return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:  # the consuming task was cancelled: keep the partial answer
                following.cancel()
                reading.cancelled = True
                await stream.close()
                respond()
                raise
            if not following.done():  # stopped, or the deadline passed, while waiting for the next piece
                await _settle(following)
                if waker.done():
                    reading.cancelled = True
                else:
                    reading.error = (f"the answer took longer than deadline={config.deadline} s (the server at "
                                     f"{config.server} was still sending)")
                break
            try:
                data = following.result()
            except StopAsyncIteration:
                reader.decoder.finish()
                break
            except Exception as exc:  # noqa: BLE001 - the HTTP library's errors, classified in the message
                reading.error = _midway_error(exc, stream, agent, config.timeout)
                break
            events, problem = reader.feed(data)
            if isinstance(problem, BudgetReached):
                reading.notes.append(f"the server sent more than max_new_tokens={config.max_new_tokens} pieces "
                                     "(it ignored max_tokens): the answer was cut there on the client")
            elif problem is not None:
                reading.error = f"the server at {config.server} sent a stream that cannot be read: {problem}"
            for event in events:
                yield event
        if stream is not None and reading.finish is None and not (reading.cancelled or reading.cut or reading.error):
            reading.error = "the server ended the stream without saying why (no finish_reason)"
        for event in collector.finish():
            yield event
        if stream is not None:
            await stream.close()
        response = respond()
        if reading.error:
            logger.warning("%s (model %r): %s; the partial answer is kept", type(agent).__name__,
                           config.model, reading.error)
        for found in adopt_live_ids(response.tool_calls or [], collector.live_calls):
            yield StreamEvent("tool_call", found["name"], found)
        yield StreamEvent("done", response.response, response)
    finally:
        waker.cancel()
        if stream is not None:
            await stream.close()


__all__ = ["ServedStream", "build_served_response", "run_served"]
