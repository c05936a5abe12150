"""``AgentStream``: an async iterator over one generation of the local agent.

The iteration runs in an async generator that holds the agent and a small shared state (the
stop event, the thread, the final response), never the ``AgentStream`` object itself, so no
reference cycle keeps an abandoned stream alive: when the consumer lets go of it (``break`` out
of ``async for agent.stream(...)``, an exception, a dropped variable) it is collected at once
and its finalizer sets the stop event, which ends the generation within a token.

A stream that is still held but no longer read does not run on either: the generation makes at
most :data:`~.live.STREAM_LOOKAHEAD` tokens nobody has taken, then pauses (it stops, the model
serves other requests, its KV cache is kept). When the reader has taken every piece and asks
for more, the generation continues from the prompt and the tokens so far with the rest of the
budget, from the kept cache, so a greedy answer is the one an unpaused stream gives.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from functools import partial
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator

from ..parsing import StreamSplitter, prompt_opens_thinking
from ..protocol import AgentPayload, AgentResponse
from ..settings import apply_tool_choice, with_model_defaults
from ..tools import tool_names
from ..validation import validate_payload
from ..events import EventStream, StreamEvent, piece_events
from ..log.capture import CallTicket, finish_call, start_call
from .call_log import local_details
from .live import GenerationParts, LookAhead
from ..tools.answers import adopt_live_ids
from .responses import build_response

if TYPE_CHECKING:  # pragma: no cover
    from .host import GenerationHost


@dataclass
class StreamState:
    """What a stream and its running generation share (nothing refers back to the stream)."""

    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    response: AgentResponse | None = None
    #: the stop event of the running part of the generation (a paused stream runs in parts)
    part_stop: threading.Event | None = None
    lookahead: LookAhead | None = None

    def request_stop(self) -> None:
        """Stop the generation (safe from any thread and from a finalizer)."""
        self.stop.set()
        part = self.part_stop
        if part is not None:
            part.set()


class AgentStream(EventStream):
    """An async iterator over one generation.

    Iterating yields text pieces of the answer (or :class:`StreamEvent` objects with
    ``events=True``). After the iteration ends, :attr:`response` holds the final
    :class:`AgentResponse`. Breaking out of the loop, dropping the stream, calling :meth:`cancel`
    or :meth:`aclose`, or cancelling the consuming task stops the generation within a token.

    A stream still held but no longer read (``async for piece in stream: break``) generates at
    most :data:`~.live.STREAM_LOOKAHEAD` tokens further, then pauses: the generation stops and
    the model serves other requests. Reading again continues the answer where it paused (from
    the kept KV cache where there is one); a greedy answer is the one an unpaused stream gives.
    """

    def __init__(self, agent: "GenerationHost", payload: AgentPayload, *, events: bool,
                 overrides: dict[str, Any], schemas: list[dict] | None = None,
                 continuation: list[dict] | None = None, method: str = "stream", group_id: str | None = None) -> None:
        state = StreamState()
        overrides = dict(overrides)
        ticket = start_call(getattr(agent, "log", None), overrides.pop("log", None), method=method,
                            group_id=group_id, payload=payload)
        super().__init__(logged_generation(state, ticket, agent, payload, overrides, schemas, continuation), state,
                         events=events)
        weakref.finalize(self, state.request_stop)

    @property
    def thread(self) -> threading.Thread | None:
        """The thread of the running part of the generation (None before the model is loaded)."""
        return self._state.thread

    @property
    def paused(self) -> bool:
        """True while the generation is paused because nobody read the stream (it continues
        when reading resumes)."""
        lookahead = self._state.lookahead
        return bool(lookahead is not None and lookahead.paused and self._state.response is None
                    and not self._state.stop.is_set())

    def cancel(self) -> None:
        """Ask the generation to stop; it ends within a token with ``finish_reason="cancelled"``."""
        self._state.request_stop()

    async def aclose(self) -> None:
        """Stop the generation and wait until its thread has ended."""
        self._state.request_stop()
        await self._iterator.aclose()
        thread = self._state.thread
        if thread is not None and thread.is_alive():
            await asyncio.to_thread(thread.join)

    async def __aenter__(self) -> "AgentStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


def stop_reason(exc: BaseException) -> str:
    """What a call that ended by ``exc`` records as its error."""
    if isinstance(exc, GeneratorExit):
        return "the stream was closed before the answer ended"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return f"{type(exc).__name__}: {exc}"


async def logged_generation(state: StreamState, ticket: CallTicket | None, agent: "GenerationHost",
                            payload: AgentPayload, overrides: dict[str, Any], schemas: list[dict] | None,
                            continuation: list[dict] | None) -> AsyncIterator[StreamEvent]:
    """The events of :func:`run_generation`, with the call handed to the call log when it ends
    (answered, stopped or failed; nothing when ``ticket`` is None)."""
    if ticket is None:
        async for event in run_generation(state, agent, payload, overrides, schemas, continuation):
            yield event
        return
    ticket.details = partial(local_details, agent.config, None, None)
    events = run_generation(state, agent, payload, overrides, schemas, continuation, ticket)
    try:
        async for event in events:
            yield event
    except BaseException as exc:
        stopped = isinstance(exc, (asyncio.CancelledError, GeneratorExit)) and state.response is not None
        finish_call(ticket, state.response, None if stopped else stop_reason(exc))
        raise
    finally:
        await events.aclose()
    finish_call(ticket, state.response)


async def run_generation(state: StreamState, agent: "GenerationHost", payload: AgentPayload,
                         overrides: dict[str, Any], schemas: list[dict] | None,
                         continuation: list[dict] | None, ticket: CallTicket | None = None) -> AsyncIterator[StreamEvent]:
    """The events of one generation (the body of :class:`AgentStream`)."""
    called_at = time.perf_counter()
    payload = await asyncio.to_thread(validate_payload, payload)  # refused before a model loads, naming the field
    call, schemas = apply_tool_choice(agent.resolve_settings(overrides), schemas)  # refused before a model loads
    if ticket is not None:
        ticket.tools, ticket.continuation = schemas, continuation
        ticket.details = partial(local_details, agent.config, None, call)
    lm = await agent.ensure_loaded()
    call = with_model_defaults(call, agent.resolve_settings(overrides))  # the loaded model's own defaults
    if ticket is not None:
        ticket.details = partial(local_details, agent.config, lm, call)
    from .. import engine

    engine.check_generation_kwargs(call.generation.extra)
    prompt = await asyncio.to_thread(agent.build_prompt, lm, payload, call, schemas, continuation)
    reuse_key = agent.reuse_key(payload)
    private = reuse_key is None  # kv_reuse off: a key of this stream's own, so a pause keeps its cache
    if private:
        reuse_key = ("paused-stream", object())
    parts = GenerationParts(state, lm, prompt.input_ids, call.generation, reuse_key)
    splitter = StreamSplitter(start_in_thinking=prompt_opens_thinking(prompt.text), tools=schemas is not None)
    offered = set(tool_names(schemas or []))
    live_calls: list[dict] = []  # tool calls announced while generating
    model_name = str(agent.config.model)
    live = parts.start()
    try:
        while True:
            try:
                if live.queue.empty():
                    parts.lookahead.waiting(True)
                try:
                    kind, value, tokens = await live.queue.get()
                finally:
                    parts.lookahead.waiting(False)
                parts.lookahead.taken(tokens)
            except asyncio.CancelledError:
                # The consuming task was cancelled: stop, keep the partial answer, re-raise.
                state.request_stop()
                result = await live.drain()
                if result is not None:
                    parts.results.append(result)
                    state.response = build_response(model_name, lm, prompt, parts.result(), call, payload, schemas,
                                                    called_at)
                raise
            if kind == "text":
                for piece in splitter.feed(value):
                    for event in piece_events(piece, offered, live_calls):
                        yield event
            elif kind == "error":
                raise value
            elif parts.paused(value):
                live = parts.start()  # the reader has taken every piece and wants more: continue
            else:
                break
        held = parts.held_text()
        for piece in [*(splitter.feed(held) if held else []), *splitter.finish()]:
            for event in piece_events(piece, offered, live_calls):
                yield event
        response = build_response(model_name, lm, prompt, parts.result(), call, payload, schemas, called_at)
        state.response = response
        for found in adopt_live_ids(response.tool_calls or [], live_calls):
            yield StreamEvent("tool_call", found["name"], found)
        yield StreamEvent("done", response.response, response)
    finally:
        state.request_stop()  # no-op after a normal end; stops an abandoned generation
        if private:
            lm.prefix_caches.drop(reuse_key)
