"""Streaming into a cell: one display handle, throttled updates, thinking apart, interrupts keep partial text."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from midori_hf_nb import HuggingFaceLocalAgent, StreamEvent, make_payload
from midori_hf_nb.notebook.display import STYLE_ANSWER
from midori_hf_nb.notebook import LiveView, RecordingSink, StreamState, display_stream, render_stream_html, stream_to_cell

from .conftest import loaded_agent, run, scripted

LONG_TEXT = " ".join(f"w{i}" for i in range(150))


@pytest.fixture(scope="module")
def agent(tiny_model):
    yield from loaded_agent(tiny_model, max_new_tokens=400)


def test_every_piece_updates_with_throttle_zero(agent):
    sink = RecordingSink(keep=True)
    text = "<think>First I plan.</think>The answer is forty two, said the model."
    response = run(stream_to_cell(agent, make_payload("q"), sink=sink, throttle=0,
                                  logits_processor=scripted(agent, text)))
    assert response.response == "The answer is forty two, said the model."
    assert response.thinking == "First I plan."
    stats = response.metadata["display"]
    pieces = stats["events"] - 1  # every event but "done" is a piece
    assert pieces >= 5
    assert stats["updates"] == sink.updates == pieces + 1  # one per piece, plus the final update
    assert len(sink.bundles) == sink.updates + 1  # the initial display, then updates of it
    final = sink.last["text/html"]
    assert "The answer is forty two, said the model." in final
    assert "<details" in final and "First I plan." in final  # thinking shown apart
    assert final.index("First I plan.") < final.index("The answer is")
    assert "tokens/s" in final and "finish: stop" in final  # the footer line
    assert "decode: engine" in final  # ... naming the decoder (forced output runs in the engine's loop)
    # while only thinking has arrived, the <details> block is open and dimmed; the answer is empty
    thinking_only = [b["text/html"] for b in sink.bundles[1:] if "First I plan" in b["text/html"]
                     and 'class="midori-answer" style="' + STYLE_ANSWER + '">▌' in b["text/html"]]
    assert thinking_only and all("<details class=\"midori-thinking\" open>" in h for h in thinking_only)
    assert "opacity" in thinking_only[0]


def test_large_throttle_gives_only_the_final_update(agent):
    sink = RecordingSink(keep=True)
    response = run(stream_to_cell(agent, make_payload("q"), sink=sink, throttle=3600,
                                  logits_processor=scripted(agent, "Many small words arrive one by one here.")))
    assert response.metadata["display"]["events"] > 3
    assert sink.updates == 1
    assert "Many small words arrive one by one here." in sink.last["text/html"]


def test_time_based_throttle_counts_updates_with_a_controlled_clock(agent):
    ticks = itertools.count()  # each clock reading is one tick later
    sink = RecordingSink()
    view = LiveView(sink, throttle=3, clock=lambda: next(ticks))
    response = run(stream_to_cell(agent, make_payload("q"), view=view,
                                  logits_processor=scripted(agent, "one two three four five six seven eight nine ten")))
    pieces = view.state.pieces
    assert pieces >= 6
    # start() reads tick 0; each piece's refresh reads one tick; an update is due every 3 ticks
    assert view.updates == pieces // 3 + 1
    assert response.metadata["display"]["updates"] == view.updates


def test_display_stream_blocking_form_matches(agent):
    sink = RecordingSink()
    response = display_stream(agent, make_payload("q"), sink=sink, throttle=0,
                              logits_processor=scripted(agent, "Blocking form."))
    assert response.response == "Blocking form."
    assert "Blocking form." in sink.last["text/html"]


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


def test_keyboard_interrupt_stops_generation_and_keeps_partial_text(agent):
    sink = InterruptingSink(after_pieces=3)
    response = display_stream(agent, make_payload("q"), sink=sink, throttle=0,
                              logits_processor=scripted(agent, LONG_TEXT))
    assert sink.fired
    assert response.metadata["finish_reason"] == "cancelled"
    assert response.response and LONG_TEXT.startswith(response.response)
    assert len(response.response) < len(LONG_TEXT)
    assert response.metadata["completion_tokens"] < 300
    final = sink.last["text/html"]
    assert response.response in final and "finish: cancelled (interrupted)" in final


def test_keyboard_interrupt_can_be_reraised(agent):
    sink = InterruptingSink(after_pieces=2)
    with pytest.raises(KeyboardInterrupt):
        display_stream(agent, make_payload("q"), sink=sink, throttle=0, on_interrupt="raise",
                       logits_processor=scripted(agent, LONG_TEXT))
    assert "finish: cancelled" in sink.last["text/html"]  # the partial text stays on screen


@pytest.mark.parametrize("mode", ["return", "raise"])
def test_cancelling_the_cell_task_keeps_partial_text(agent, mode):
    # ipykernel turns a kernel interrupt during an `await` cell into cancellation of the cell's task
    async def cell():
        task = asyncio.current_task()

        class CancellingSink(RecordingSink):
            def update(self, bundle):
                super().update(bundle)
                if self.updates == 3:
                    task.cancel()

        sink = CancellingSink()
        try:
            response = await stream_to_cell(agent, make_payload("q"), sink=sink, throttle=0, on_interrupt=mode,
                                            logits_processor=scripted(agent, LONG_TEXT))
        except asyncio.CancelledError:
            return "raised", sink
        return response, sink

    outcome, sink = run(cell())
    html = sink.last["text/html"]
    assert "finish: cancelled (interrupted)" in html
    if mode == "raise":
        assert outcome == "raised"
    else:
        assert outcome.metadata["finish_reason"] == "cancelled"
        assert LONG_TEXT.startswith(outcome.response) and len(outcome.response) < len(LONG_TEXT)
        assert outcome.response in html


def test_one_display_handle_in_ipython(agent):
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    InteractiveShell.instance()
    with capture_output() as captured:
        response = run(stream_to_cell(agent, make_payload("q"), throttle=0,
                                      logits_processor=scripted(agent, "Shown in one output area.")))
    outputs = captured.outputs
    ids = {o.transient["display_id"] for o in outputs}
    assert len(ids) == 1  # one display handle
    assert [o.update for o in outputs] == [False] + [True] * (len(outputs) - 1)
    assert len(outputs) - 1 == response.metadata["display"]["updates"]
    assert "Shown in one output area." in outputs[-1].data["text/html"]
    assert outputs[-1].data["text/plain"].startswith("Shown in one output area.")


def test_render_is_pure_and_escapes():
    state = StreamState(answer="a <b>bold</b> claim", thinking="<script>x()</script>", pieces=2)
    html = render_stream_html(state)
    assert "<b>" not in html and "<script>" not in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "&lt;script&gt;x()&lt;/script&gt;" in html
    assert "streaming" in html
    assert "Thinking" not in render_stream_html(state, show_thinking=False)


def test_view_rejects_a_negative_throttle():
    with pytest.raises(ValueError, match="throttle=-1"):
        LiveView(RecordingSink(), throttle=-1)


def test_tool_calls_are_listed_when_streamed_with_tools(tiny_tools_model):
    agent = HuggingFaceLocalAgent(model=str(tiny_tools_model), do_sample=False, max_new_tokens=80, progress=False)
    run(agent.load())
    try:
        def add(a: int, b: int) -> int:
            """Add two integers."""
            return a + b

        sink = RecordingSink()
        call = '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'
        response = run(stream_to_cell(agent, make_payload("q"), sink=sink, tools=[add],
                                      logits_processor=scripted(agent, call)))
        assert response.tool_calls and response.tool_calls[0]["name"] == "add"
        html = sink.last["text/html"]
        assert "midori-tool-calls" in html and "add" in html and "&quot;a&quot;: 2" in html
    finally:
        run(agent.unload_model())


def test_feed_accepts_events_directly():
    sink = RecordingSink()
    view = LiveView(sink, throttle=0).start()
    view.feed(StreamEvent("thinking", "hmm"))
    view.feed(StreamEvent("text", "Hi"))
    assert view.updates == 2 and view.state.answer == "Hi" and view.state.thinking == "hmm"
