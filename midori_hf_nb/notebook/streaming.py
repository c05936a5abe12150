"""Live streaming of an answer into one notebook output area.

``response = await stream_to_cell(agent, payload)`` (top-level ``await`` in a cell) or
``response = display_stream(agent, payload)`` (blocking, from plain code or a magic) shows
the answer as it is generated. ``agent`` is any Midori protocol agent: its ``stream(payload,
events=True)`` when it has one, else its ``invoke`` (one update at the end); see
:mod:`.agent_calls`.

* one output area: a single display handle (``display(..., display_id=True)``) that is
  updated in place;
* updates are throttled by time (``throttle`` seconds, 0.1 by default) plus one final
  update, so rendering stays off the generation's critical path: generation runs in its
  own thread and the display is refreshed at most ten times a second;
* reasoning is shown apart from the answer, dimmed in a ``<details>`` block (open while the
  model is thinking, collapsed once the answer starts);
* interrupting the kernel (``KeyboardInterrupt`` in :func:`display_stream`, the task
  cancellation ipykernel uses for ``await`` cells in :func:`stream_to_cell`) stops the
  generation within a token and keeps the partial text; the response then has
  ``finish_reason == "cancelled"``;
* while the model loads, a ticking "loading model… N s" line with the load's stage and counts
  (conversion, weights) above the answer (:func:`load_progress_of`), collapsed to one finished
  line ("<model> loaded in N s") when the load ends; the seconds tick while waiting for the
  first token too;
* a one-line footer: tokens, seconds, tokens/s, finish reason, decoder (read typed, through
  :func:`~midori_hf_nb.stats.stats_of`).

The answer is rendered as safe Markdown (:mod:`.markdown`; ``markdown=False`` shows plain
text): while it streams, only its unsettled tail is re-rendered on each (throttled) update
(:class:`~.markdown.IncrementalMarkdown`), and the final answer is rendered whole. Every other
value shown is escaped (:mod:`.escaping`). The rendering is a pure function of a
:class:`StreamState` (:func:`render_stream_html`), usable outside IPython. Output goes to
a *sink* with an ``update(bundle)`` method: the IPython display handle inside a kernel, or
a :class:`RecordingSink` anywhere else (it keeps the updates, for tests and benchmarks).

The display's own statistics live apart from the response, which stays as the agent returned
it: :attr:`LiveView.stats` is a :class:`DisplayStats` (updates, events, render seconds,
throttle). Pass ``view=LiveView(...)`` to keep it::

    view = LiveView(throttle=0)
    response = await stream_to_cell(agent, payload, view=view)
    view.stats.updates, view.stats.render_seconds

To measure the display's overhead against raw generation, compare the
``decode_tokens_per_second`` statistic of ``stream_to_cell(..., throttle=0)`` (a display update
per piece) or the default throttle with that of ``agent.invoke`` on the same greedy request,
run alternately in one process.
"""

from __future__ import annotations

import asyncio
import queue
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..load_progress import LoadProgress
from ..log.context import context as log_context, current_context
from ..loop_thread import AsyncIterPump
from .agent_calls import open_event_stream
from .escaping import to_text
from .markdown import IncrementalMarkdown
from .display import probs_shade
from .sinks import default_sink
from .stream_view import StreamState, render_stream_html, render_stream_text

#: Default seconds between two display updates.
DEFAULT_THROTTLE = 0.1

#: Seconds between two refreshes of the display while no text has arrived (the ticking seconds
#: and the model's load progress).
WAIT_TICK = 0.25

INTERRUPT_MODES = ("return", "raise")


# --------------------------------------------------------------------------- the live view


@dataclass
class DisplayStats:
    """What showing one stream cost the display (kept apart from the response's own statistics).

    ``updates``: display updates after the initial display (``ticks`` of them refreshed the
    waiting display before the first piece: seconds, load progress); ``events``: stream events received;
    ``render_seconds``: time spent rendering and updating; ``throttle``: the minimum seconds
    between updates.
    """

    throttle: float = DEFAULT_THROTTLE
    updates: int = 0
    events: int = 0
    render_seconds: float = 0.0
    ticks: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The statistics as a plain dict (``updates``, ``render_seconds``, ``events``, ``throttle``, ``ticks``)."""
        return {"updates": self.updates, "render_seconds": self.render_seconds, "events": self.events,
                "throttle": self.throttle, "ticks": self.ticks}


class LiveView:
    """Accumulates stream events and refreshes one display, at most every ``throttle`` seconds.

    Args:
        sink: where bundles go (default: :func:`default_sink`).
        throttle: minimum seconds between updates while streaming (0 updates on every
            piece); the final state is always shown.
        show_thinking: show reasoning (dimmed, collapsible) above the answer.
        title: an optional heading line (escaped).
        clock: the time source (``time.perf_counter``).
        markdown: render the answer as safe Markdown (default) or, with False, as plain text.
        probs: show the answer as its tokens shaded by probability (True, ``"probability"`` or
            ``"surprisal"``) as they arrive (:func:`~.probs_view.token_view`).

    :attr:`stats` is the view's :class:`DisplayStats`, updated as it goes; ``updates``,
    ``events`` and ``render_seconds`` read it.
    """

    def __init__(self, sink: Any = None, *, throttle: float = DEFAULT_THROTTLE, show_thinking: bool = True,
                 title: str | None = None, clock: Callable[[], float] = time.perf_counter,
                 markdown: bool = True, probs: Any = False) -> None:
        if isinstance(throttle, bool) or not isinstance(throttle, (int, float)) or not throttle >= 0:
            raise ValueError(f"throttle={throttle!r} is not allowed: expected seconds >= 0")
        self.sink = sink if sink is not None else default_sink()
        self.throttle = float(throttle)
        self.show_thinking = show_thinking
        self.markdown = markdown
        self.probs = probs_shade(probs)
        self.markdown_renderer = IncrementalMarkdown()
        self.clock = clock
        self.state = StreamState(title=title)
        self.stats = DisplayStats(throttle=self.throttle)
        self._started = 0.0
        self._last = float("-inf")
        self._dirty = False

    @property
    def updates(self) -> int:
        """Display updates so far (after the initial display)."""
        return self.stats.updates

    @property
    def events(self) -> int:
        """Stream events received so far."""
        return self.stats.events

    @property
    def render_seconds(self) -> float:
        """Seconds spent rendering and updating the display so far."""
        return self.stats.render_seconds

    def bundle(self) -> dict[str, str]:
        """The current mime bundle (``text/html`` and ``text/plain``)."""
        return {"text/html": render_stream_html(self.state, show_thinking=self.show_thinking, markdown=self.markdown,
                                                renderer=self.markdown_renderer, probs=self.probs),
                "text/plain": render_stream_text(self.state)}

    def start(self) -> "LiveView":
        """Show the initial (empty) state."""
        self._started = self.clock()
        began = time.perf_counter()
        self.sink.display(self.bundle())
        self.stats.render_seconds += time.perf_counter() - began
        self._last = self._started
        return self

    def feed(self, event: Any) -> None:
        """Take one :class:`~midori_hf_nb.StreamEvent` and refresh if the throttle allows."""
        self.stats.events += 1
        kind, text, data = getattr(event, "kind", None), to_text(getattr(event, "text", "")), getattr(event, "data", None)
        records = getattr(event, "logprobs", None)
        if isinstance(records, list) and self.probs is not None:
            self.state.tokens.extend(records)
        if kind == "text":
            self.state.answer += text
            self.state.pieces += 1
            self.state.end_loading()
        elif kind == "thinking":
            self.state.thinking += text
            self.state.pieces += 1
            self.state.end_loading()
        elif kind == "tool_call" and isinstance(data, dict):
            self.state.tool_calls.append(data)
        elif kind == "tool_result" and isinstance(data, dict):  # a tool loop ran a call: announced -> run
            self.state.tool_steps.append(data)
            self.state.tool_calls = [c for c in self.state.tool_calls if c.get("id") != data.get("id")]
        elif kind == "done":
            self.state.response = data
            return  # shown by finish()
        else:  # an unknown kind, or a tool event without its record: nothing to show
            return
        self._dirty = True
        self.refresh()

    def refresh(self, force: bool = False) -> bool:
        """Update the display if forced or if ``throttle`` seconds passed since the last update."""
        now = self.clock()
        if not force and (not self._dirty or now - self._last < self.throttle):
            return False
        self.state.elapsed = now - self._started
        began = time.perf_counter()
        self.sink.update(self.bundle())
        self.stats.render_seconds += time.perf_counter() - began
        self.stats.updates += 1
        self._last = now
        self._dirty = False
        return True

    def tick(self, loading: LoadProgress | None = None) -> bool:
        """While no text has arrived: show the seconds waited and ``loading`` (the model's load
        progress, None once loaded). Returns whether the display was refreshed."""
        if self.state.done or self.state.pieces:
            return False
        if loading is None:
            self.state.end_loading()
        else:
            self.state.loading = loading
        self._dirty = True
        refreshed = self.refresh(force=True)
        self.stats.ticks += refreshed
        return refreshed

    def mark_interrupted(self) -> None:
        """Note that the user interrupted; the next refresh says so."""
        self.state.interrupted = True
        self._dirty = True

    def finish(self, response: Any = None, error: BaseException | None = None) -> None:
        """Show the final state (always one update). The response is left as it is."""
        self.state.end_loading()
        if response is not None:
            self.state.response = response
        if error is not None:
            self.state.error = f"{type(error).__name__}: {error}"
        self.refresh(force=True)


def load_progress_of(agent: Any) -> LoadProgress | None:
    """The load progress of ``agent``'s model while it loads (an agent with a ``load_progress``
    property, such as :class:`~midori_hf_nb.HuggingFaceLocalAgent`); None otherwise."""
    if not isinstance(getattr(type(agent), "load_progress", None), property):
        return None
    progress = agent.load_progress
    return progress if isinstance(progress, LoadProgress) else None


async def tick_while_waiting(view: LiveView, agent: Any, *, period: float = WAIT_TICK,
                             on_tick: Callable[[LoadProgress | None], None] | None = None) -> None:
    """Until the first piece of text arrives (or the answer ends), refresh ``view`` every
    ``period`` seconds with the seconds waited and the model's load progress; ``on_tick`` gets
    the progress too (the chat panel's status line). Run it as a task beside the stream."""
    while not view.state.done and view.state.pieces == 0:
        await asyncio.sleep(period)
        progress = load_progress_of(agent)
        view.tick(progress)
        if on_tick is not None and not view.state.done and view.state.pieces == 0:
            on_tick(progress)


#: Alternatives per token asked for by ``probs=True`` when the call does not say.
PROBS_TOP_LOGPROBS = 5


def _start(agent: Any, payload: Any, on_interrupt: str, view: LiveView | None, tools: list | None,
           overrides: dict[str, Any], **view_options: Any) -> tuple[LiveView, Any]:
    """Check the options, open the agent's event stream and show the initial display."""
    if on_interrupt not in INTERRUPT_MODES:
        raise ValueError(f"on_interrupt={on_interrupt!r} is not allowed: expected 'return' or 'raise'")
    if view is not None and not isinstance(view, LiveView):
        raise ValueError(f"view={type(view).__name__} is not allowed: expected a LiveView or None")
    view = view or LiveView(view_options.pop("sink"), **view_options)
    if view.probs is not None and not any(overrides.get(k) for k in ("logprobs", "top_logprobs")):
        overrides = {**overrides, "top_logprobs": PROBS_TOP_LOGPROBS}
    surface = current_context().surface or "stream_to_cell"  # the magics' own surface is kept
    with log_context(surface=surface):  # the call log records the stream's call as made from here
        stream = open_event_stream(agent, payload, tools=tools, **overrides)
    view.start()
    return view, stream


async def stream_to_cell(agent: Any, payload: Any, *, throttle: float = DEFAULT_THROTTLE,
                         show_thinking: bool = True, title: str | None = None, sink: Any = None,
                         on_interrupt: str = "return", tools: list | None = None,
                         view: LiveView | None = None, markdown: bool = True, probs: Any = False,
                         **overrides: Any) -> Any:
    """Stream the answer to ``payload`` into the current output cell; return the final response.

    Use with top-level ``await`` in a cell. Args:
        agent: any Midori protocol agent (e.g. :class:`~midori_hf_nb.HuggingFaceLocalAgent`): its
            ``stream(payload, events=True)`` when it has one, else ``invoke`` (one update at the end).
        payload: the :class:`~midori_hf_nb.AgentPayload`.
        throttle: minimum seconds between display updates (0: every piece).
        show_thinking: show reasoning, dimmed and collapsible.
        title: an optional heading line.
        sink: where to render (default: a display handle in IPython, a :class:`RecordingSink` elsewhere).
        on_interrupt: when the cell is interrupted (the task is cancelled), ``"return"`` (default)
            stops the generation and returns the partial response (``finish_reason="cancelled"``);
            ``"raise"`` does the same clean-up, then re-raises ``CancelledError``.
        tools: offer these tools through the agent's ``stream_with_tools`` (else ``invoke_with_tools``);
            calls are shown, never executed here.
        view: a prepared :class:`LiveView` (overrides ``throttle``/``sink``/...); its ``stats``
            (:class:`DisplayStats`) count the updates afterwards.
        markdown: render the answer as safe Markdown (default); False shows it as plain text.
        probs: show the answer's tokens shaded by probability as they arrive, with their
            alternatives on hover (True, ``"probability"`` or ``"surprisal"``); asks the agent for
            ``top_logprobs=5`` unless the overrides ask for token probabilities themselves.
        **overrides: per-call settings passed to the agent's method (e.g. ``max_new_tokens``).
    """
    view, stream = _start(agent, payload, on_interrupt, view, tools, overrides,
                          sink=sink, throttle=throttle, show_thinking=show_thinking, title=title,
                          markdown=markdown, probs=probs)

    async def consume() -> Any:
        async for event in stream:
            view.feed(event)
        return stream.response

    consumer = asyncio.ensure_future(consume())
    ticker = asyncio.ensure_future(tick_while_waiting(view, agent))
    consumer.add_done_callback(lambda _: ticker.cancel())
    try:
        response = await asyncio.shield(consumer)
    except asyncio.CancelledError:
        stream.cancel()
        view.mark_interrupted()
        view.refresh(force=True)
        try:
            response = await consumer
        except BaseException as exc:
            view.finish(error=exc)
            raise
        view.finish(response)
        if on_interrupt == "raise":
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return response
    except BaseException as exc:
        view.finish(error=exc)
        raise
    view.finish(response)
    return response


def display_stream(agent: Any, payload: Any, *, throttle: float = DEFAULT_THROTTLE, show_thinking: bool = True,
                   title: str | None = None, sink: Any = None, on_interrupt: str = "return",
                   tools: list | None = None, view: LiveView | None = None, markdown: bool = True,
                   probs: Any = False, **overrides: Any) -> Any:
    """Blocking form of :func:`stream_to_cell`, for plain functions and magics.

    The stream runs in a worker thread; this thread renders. ``KeyboardInterrupt`` (interrupting
    the kernel) stops the generation and keeps the partial text: with ``on_interrupt="return"``
    (default) the partial response is returned, with ``"raise"`` the interrupt is re-raised
    after the display shows it. Arguments are those of :func:`stream_to_cell`.
    """
    view, stream = _start(agent, payload, on_interrupt, view, tools, overrides,
                          sink=sink, throttle=throttle, show_thinking=show_thinking, title=title,
                          markdown=markdown, probs=probs)
    pump = AsyncIterPump(stream, on_cancel=stream.cancel).start()
    interrupt: KeyboardInterrupt | None = None
    while True:
        try:
            try:
                kind, value = pump.get(timeout=WAIT_TICK)
            except queue.Empty:  # nothing yet: tick the waiting display (seconds, load progress)
                view.tick(load_progress_of(agent))
                continue
            if kind == "item":
                view.feed(value)
                continue
            if kind == "error":
                view.finish(error=value)
                raise value
            break
        except KeyboardInterrupt as exc:  # may arrive while waiting or while rendering
            if interrupt is None:
                interrupt = exc
                stream.cancel()
                view.mark_interrupted()
            continue  # keep draining: the generation stops within a token, then "done" arrives
    view.finish(stream.response)
    if interrupt is not None and on_interrupt == "raise":
        raise interrupt
    return stream.response


__all__ = [
    "DEFAULT_THROTTLE",
    "DisplayStats",
    "LiveView",
    "WAIT_TICK",
    "display_stream",
    "load_progress_of",
    "stream_to_cell",
    "tick_while_waiting",
]
