"""Streaming into a cell: one display handle, throttled updates, thinking apart, interrupts keep partial text.

The display's behaviour is tested with the scripted agent (no model: exact and fast) and with protocol
agents that offer less (no ``stream``; a ``stream`` of plain text without ``events``). Two end-to-end
tests stream a real generation of the tiny model.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time

import pytest

from midori_hf_nb import AgentResponse, StreamEvent, make_payload
from midori_hf_nb.notebook import (
    DisplayStats,
    LiveView,
    RecordingSink,
    StreamState,
    display_stream,
    render_stream_html,
    stream_to_cell,
)
from midori_hf_nb.stats import ResponseStats, stats_of
from midori_hf_nb.testing import ScriptedAgent

from .conftest import loaded_agent, run, scripted
from .protocol_agents import InvokeOnlyAgent, PlainStreamAgent

LONG_TEXT = " ".join(f"w{i}" for i in range(150))


@pytest.fixture(scope="module")
def agent(tiny_model):
    yield from loaded_agent(tiny_model, max_new_tokens=400)


# --------------------------------------------------------------------------- end to end on a real model


def test_every_piece_updates_with_throttle_zero(agent):
    sink = RecordingSink(keep=True)
    view = LiveView(sink, throttle=0)
    text = "<think>First I plan.</think>The answer is forty two, said the model."
    response = run(stream_to_cell(agent, make_payload("q"), view=view, logits_processor=scripted(agent, text)))
    assert response.response == "The answer is forty two, said the model."
    assert response.thinking == "First I plan."
    stats = view.stats
    assert isinstance(stats, DisplayStats) and "display" not in response.metadata  # the response is left alone
    pieces = stats.events - 1  # every event but "done" is a piece
    assert pieces >= 5
    # one per piece, plus the final update, plus the ticks of the waiting display before the first piece
    assert stats.updates == sink.updates == pieces + 1 + stats.ticks
    assert len(sink.bundles) == sink.updates + 1  # the initial display, then updates of it
    final = sink.last["text/html"]
    assert "The answer is forty two, said the model." in final
    assert "<details" in final and "First I plan." in final  # thinking shown apart
    assert final.index("First I plan.") < final.index("The answer is")
    assert "tokens/s" in final and "finish: stop" in final  # the footer line
    assert "decode: engine" in final  # ... naming the decoder (forced output runs in the engine's loop)
    # while only thinking has arrived, the <details> block is open and dimmed; the answer is empty
    empty_answer = re.compile(r'<div class="midori-answer"><div class="midori-md [^"]*" style="[^"]*"></div>'
                              r'<span class="midori-cursor">▌</span></div>')
    thinking_only = [b["text/html"] for b in sink.bundles[1:] if "First I plan" in b["text/html"]
                     and empty_answer.search(b["text/html"])]
    assert thinking_only and all("<details class=\"midori-thinking\" open>" in h for h in thinking_only)
    assert "opacity" in thinking_only[0]


def test_keyboard_interrupt_stops_a_real_generation_and_keeps_partial_text(agent):
    sink = InterruptingSink(after_pieces=3)
    response = display_stream(agent, make_payload("q"), sink=sink, throttle=0,
                              logits_processor=scripted(agent, LONG_TEXT))
    assert sink.fired
    stats = stats_of(response)
    assert stats.finish_reason == "cancelled" and stats.completion_tokens < 300
    assert response.response and LONG_TEXT.startswith(response.response) and len(response.response) < len(LONG_TEXT)
    final = sink.last["text/html"]
    assert response.response in final and "finish: cancelled (interrupted)" in final


# --------------------------------------------------------------------------- the display, on the scripted agent


def test_large_throttle_gives_only_the_final_update():
    sink = RecordingSink(keep=True)
    view = LiveView(sink, throttle=3600)
    response = run(stream_to_cell(ScriptedAgent("Many small words arrive one by one here."), make_payload("q"),
                                  view=view))
    assert view.stats.events > 3 and view.stats.updates == sink.updates == 1
    assert "Many small words arrive one by one here." in sink.last["text/html"]
    assert response.response == "Many small words arrive one by one here."


def test_time_based_throttle_counts_updates_with_a_controlled_clock():
    ticks = itertools.count()  # each clock reading is one tick later
    view = LiveView(RecordingSink(), throttle=3, clock=lambda: next(ticks))
    run(stream_to_cell(ScriptedAgent("one two three four five six seven eight nine ten"), make_payload("q"),
                       view=view))
    pieces = view.state.pieces
    assert pieces == 12  # 48 characters in pieces of 4
    # start() reads tick 0; each piece's refresh reads one tick; an update is due every 3 ticks; one final update
    assert view.updates == pieces // 3 + 1 == view.stats.updates
    assert view.stats.as_dict() == {"updates": view.updates, "render_seconds": view.render_seconds,
                                    "events": pieces + 1, "throttle": 3.0, "ticks": 0}


def test_display_stream_blocking_form_matches():
    sink = RecordingSink()
    response = display_stream(ScriptedAgent("Blocking form."), make_payload("q"), sink=sink, throttle=0)
    assert response.response == "Blocking form."
    assert "Blocking form." in sink.last["text/html"] and "finish: stop" in sink.last["text/html"]


def test_overrides_reach_the_agent_and_its_statistics_are_read_typed():
    agent = ScriptedAgent("abcdefghijklmnopqrstuvwxyz", piece_chars=2)
    sink = RecordingSink()
    response = run(stream_to_cell(agent, make_payload("q"), sink=sink, max_new_tokens=3, seed=5))
    assert agent.calls[0].overrides == {"max_new_tokens": 3, "seed": 5}
    assert response.response == "abcdef" and stats_of(response).finish_reason == "length"
    assert "3 tokens" in sink.last["text/html"] and "finish: length" in sink.last["text/html"]


class InterruptingSink(RecordingSink):
    """Raises KeyboardInterrupt in the rendering thread once enough text has arrived (a user interrupt)."""

    def __init__(self, after_pieces: int) -> None:
        super().__init__(keep=True)
        self.after = after_pieces
        self.fired = False

    def update(self, bundle):
        super().update(bundle)
        if not self.fired and self.updates >= self.after:
            self.fired = True
            raise KeyboardInterrupt


def test_keyboard_interrupt_stops_the_stream_and_keeps_partial_text():
    sink = InterruptingSink(after_pieces=3)
    response = display_stream(ScriptedAgent(LONG_TEXT, delay=0.002), make_payload("q"), sink=sink, throttle=0)
    assert sink.fired
    assert stats_of(response).finish_reason == "cancelled"
    assert response.response and LONG_TEXT.startswith(response.response) and len(response.response) < len(LONG_TEXT)
    assert "finish: cancelled (interrupted)" in sink.last["text/html"]


def test_keyboard_interrupt_can_be_reraised():
    sink = InterruptingSink(after_pieces=2)
    with pytest.raises(KeyboardInterrupt):
        display_stream(ScriptedAgent(LONG_TEXT, delay=0.002), make_payload("q"), sink=sink, throttle=0,
                       on_interrupt="raise")
    assert "finish: cancelled" in sink.last["text/html"]  # the partial text stays on screen


def cancel_cell_after(updates: int, agent, mode: str):
    """Run a cell that streams and is cancelled (a kernel interrupt of an ``await`` cell) after some updates."""
    async def cell():
        task = asyncio.current_task()

        class CancellingSink(RecordingSink):
            def update(self, bundle):
                super().update(bundle)
                if self.updates == updates:
                    task.cancel()

        sink = CancellingSink()
        try:
            response = await stream_to_cell(agent, make_payload("q"), sink=sink, throttle=0, on_interrupt=mode)
        except asyncio.CancelledError:
            return "raised", sink
        return response, sink

    return run(cell())


@pytest.mark.parametrize("mode", ["return", "raise"])
def test_cancelling_the_cell_task_keeps_partial_text(mode):
    outcome, sink = cancel_cell_after(3, ScriptedAgent(LONG_TEXT, delay=0.002), mode)
    html = sink.last["text/html"]
    assert "finish: cancelled (interrupted)" in html
    if mode == "raise":
        assert outcome == "raised"
    else:
        assert stats_of(outcome).finish_reason == "cancelled"
        assert LONG_TEXT.startswith(outcome.response) and 0 < len(outcome.response) < len(LONG_TEXT)
        assert outcome.response in html


def test_one_display_handle_in_ipython():
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    InteractiveShell.instance()
    view = LiveView(throttle=0)  # the default sink inside IPython: one display handle
    with capture_output() as captured:
        run(stream_to_cell(ScriptedAgent("Shown in one output area."), make_payload("q"), view=view))
    outputs = captured.outputs
    assert len({o.transient["display_id"] for o in outputs}) == 1
    assert [o.update for o in outputs] == [False] + [True] * (len(outputs) - 1)
    assert len(outputs) - 1 == view.stats.updates
    assert "Shown in one output area." in outputs[-1].data["text/html"]
    assert outputs[-1].data["text/plain"].startswith("Shown in one output area.")


def test_the_response_is_left_as_the_agent_returned_it():
    agent = ScriptedAgent("Untouched.")
    stream = agent.stream(make_payload("q"), events=True)
    expected = run(stream.collect()).metadata
    response = run(stream_to_cell(ScriptedAgent("Untouched."), make_payload("q"), sink=RecordingSink()))
    assert set(response.metadata) == set(expected) == set(ResponseStats().as_dict())  # no key added or renamed


def test_tool_calls_are_listed_when_streamed_with_tools():
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    agent = ScriptedAgent('<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>')
    sink = RecordingSink(keep=True)
    response = run(stream_to_cell(agent, make_payload("q"), sink=sink, throttle=0, tools=[add]))
    assert agent.calls[0].tools == ["add"]  # offered through the agent's stream_with_tools
    assert response.tool_calls and response.tool_calls[0]["name"] == "add"
    live = [b["text/html"] for b in sink.bundles if "midori-tool-calls" in b["text/html"]]
    assert live and "(not executed)" in live[0]  # shown while streaming, never run
    html = sink.last["text/html"]
    assert "midori-tool-calls" in html and "&quot;a&quot;: 2" in html


# --------------------------------------------------------------------------- agents that offer less


def test_an_agent_without_stream_is_invoked_and_shown_once_at_the_end():
    agent = InvokeOnlyAgent("<think>quiet</think>Answered by invoke.")
    sink = RecordingSink(keep=True)
    view = LiveView(sink, throttle=0)
    response = run(stream_to_cell(agent, make_payload("q"), view=view, max_new_tokens=50))
    assert agent.calls == [{"tools": None, "max_new_tokens": 50}]
    assert response.response == "Answered by invoke." and response.thinking == "quiet"
    assert view.stats.events == 1 and view.stats.updates == sink.updates == 1  # one update, at the end
    html = sink.last["text/html"]
    assert "Answered by invoke." in html and "quiet" in html and "finish: stop" in html


def test_an_agent_without_stream_with_tools_is_offered_tools_through_invoke_with_tools():
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    agent = InvokeOnlyAgent('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 1}}</tool_call>')
    sink = RecordingSink()
    response = display_stream(agent, make_payload("q"), sink=sink, tools=[add])
    assert agent.calls == [{"tools": ["add"]}]
    assert response.tool_calls[0]["arguments"] == {"a": 1, "b": 1}
    assert "midori-tool-calls" in sink.last["text/html"]


def test_a_stream_of_plain_text_without_events():
    sink = RecordingSink(keep=True)
    response = display_stream(PlainStreamAgent("unused"), make_payload("q"), sink=sink, throttle=0)
    assert response.response == "plain text pieces" and stats_of(response).finish_reason == "stop"
    assert sink.updates == 4  # three pieces, then the final update
    assert "plain text pieces" in sink.last["text/html"]


def test_cancelling_an_invoke_only_agent_gives_a_cancelled_response():
    async def cell():
        asyncio.get_running_loop().call_later(0.2, asyncio.current_task().cancel)  # an interrupt mid-call
        sink = RecordingSink()
        return await stream_to_cell(InvokeOnlyAgent("never shown", delay=30), make_payload("q"), sink=sink), sink

    started = time.perf_counter()
    outcome, sink = run(cell())
    assert time.perf_counter() - started < 10  # the invoke was cancelled, not waited for
    assert isinstance(outcome, AgentResponse) and outcome.response == ""
    assert stats_of(outcome).finish_reason == "cancelled"
    assert "finish: cancelled (interrupted)" in sink.last["text/html"]


def test_a_failing_agent_shows_the_error_and_raises():
    sink = RecordingSink()
    with pytest.raises(RuntimeError, match="backend <down>"):
        run(stream_to_cell(ScriptedAgent(RuntimeError("backend <down>")), make_payload("q"), sink=sink))
    assert "error: RuntimeError: backend &lt;down&gt;" in sink.last["text/html"]


def test_a_stream_to_cell_of_something_that_is_not_an_agent_names_it():
    with pytest.raises(TypeError, match="agent=str is not allowed: expected a Midori protocol agent"):
        run(stream_to_cell("not an agent", make_payload("q"), sink=RecordingSink()))


# --------------------------------------------------------------------------- pure parts


def test_render_is_pure_and_escapes():
    state = StreamState(answer="a <b>bold</b> claim", thinking="<script>x()</script>", pieces=2)
    html = render_stream_html(state)
    assert "<b>" not in html and "<script>" not in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "&lt;script&gt;x()&lt;/script&gt;" in html
    assert "streaming" in html
    assert "Thinking" not in render_stream_html(state, show_thinking=False)


@pytest.mark.parametrize("throttle", [-1, float("nan"), "0.1", True])
def test_view_rejects_a_bad_throttle(throttle):
    with pytest.raises(ValueError, match="throttle=.* is not allowed: expected seconds >= 0"):
        LiveView(RecordingSink(), throttle=throttle)


def test_feed_accepts_events_directly():
    view = LiveView(RecordingSink(), throttle=0).start()
    view.feed(StreamEvent("thinking", "hmm"))
    view.feed(StreamEvent("text", "Hi"))
    view.feed(StreamEvent("tool_call", "x", "not a dict"))  # another agent's malformed event is ignored
    assert view.updates == 2 and view.state.answer == "Hi" and view.state.thinking == "hmm"
    assert view.state.tool_calls == [] and view.stats.events == 3


def test_render_seconds_are_counted():
    class SlowSink(RecordingSink):
        def update(self, bundle):
            time.sleep(0.01)
            super().update(bundle)

    view = LiveView(SlowSink(), throttle=0)
    run(stream_to_cell(ScriptedAgent("abcdefgh"), make_payload("q"), view=view))
    assert view.stats.updates == 3 and view.stats.render_seconds >= 0.03
