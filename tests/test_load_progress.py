"""Progress of a real model load, as the agent reports it while the load runs in another thread."""

from __future__ import annotations

import re
import threading
import time

import pytest

from midori_hf_nb import HuggingFaceLocalAgent
from midori_hf_nb.engine import REGISTRY, spec_for

from .conftest import run
from midori_hf_nb.load_progress import STAGES, LoadProgress, LoadTracker


@pytest.mark.slow
def test_a_real_default_model_load_reports_its_stages_and_weight_counts(default_model_dir):
    agent = HuggingFaceLocalAgent(model=str(default_model_dir), progress=False)
    assert REGISTRY.refcount(spec_for(agent.config).key) == 0, "the model is loaded already: nothing to observe"
    assert agent.load_progress is None  # not loading yet
    seen: list[LoadProgress] = []
    loader = threading.Thread(target=agent.load_sync)
    loader.start()
    while loader.is_alive():
        progress = agent.load_progress
        if progress is not None and (not seen or progress != seen[-1]):
            seen.append(progress)
        time.sleep(0.001)
    loader.join()
    try:
        stages = [p.stage for p in seen]
        assert "weights" in stages, stages
        assert stages == sorted(stages, key=STAGES.index)  # in order
        counts = [p for p in seen if p.stage == "weights" and p.total]
        assert counts, seen  # transformers' weight bar reported its count
        assert [p.done for p in counts] == sorted(p.done for p in counts) and counts[-1].total > 10
        assert all(p.model for p in seen)
        text = counts[-1].text()
        assert text.startswith("loading model… ") and f"/{counts[-1].total}" in text and "weights" in text
        assert agent.load_progress is None  # loaded: nothing is loading any more
    finally:
        agent.unload_model_sync()


def test_the_tracker_refuses_unknown_stages_and_forgets_ended_loads():
    tracker = LoadTracker()
    tracker.begin("k", "m")
    with pytest.raises(ValueError, match="stage='cooking' is not allowed"):
        tracker.stage("k", "cooking")
    tracker.stage("k", "weights")
    tracker.count("k", "Loading weights", 3, 5)
    progress = tracker.current("k")
    assert (progress.stage, progress.done, progress.total) == ("weights", 3, 5)
    assert progress.text(now=progress.started + 2.0) == "loading model… 2.0 s · weights: Loading weights 3/5"
    tracker.end("k")
    assert tracker.current("k") is None
    tracker.count("k", "late", 1, 1)  # a bar of an ended load changes nothing
    assert tracker.current("k") is None


def test_transformers_progress_bars_report_counts_and_draw_as_text_while_observed():
    from tqdm import std as tqdm_std
    from transformers.utils import logging as hf_logging

    from midori_hf_nb.engine import capabilities

    counts: list[tuple[str, int, int | None]] = []
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    try:
        with capabilities.observe_progress_bars(lambda *count: counts.append(count)):
            bar = hf_logging.tqdm(range(4), desc="Loading weights")
            assert isinstance(bar._bar, tqdm_std.tqdm) and type(bar._bar) is tqdm_std.tqdm  # text, not a widget
            assert list(bar) == [0, 1, 2, 3]
            with hf_logging.tqdm(total=2, desc="tensors") as manual:
                manual.update(2)
        assert counts == [("Loading weights", n, 4) for n in range(5)] + [("tensors", 0, 2), ("tensors", 2, 2)]
        plain = hf_logging.tqdm(range(2), desc="after")
        assert list(plain) == [0, 1] and not hasattr(plain, "_bar")  # the hook is gone afterwards
        plain.close()
        hf_logging.disable_progress_bar()
        with capabilities.observe_progress_bars(lambda *count: counts.append(count)):
            assert list(hf_logging.tqdm(range(2), desc="silent")) == [0, 1]  # disabled bars still count
        assert counts[-1] == ("silent", 2, 2)
    finally:
        (hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar)()


# --------------------------------------------------------------------------- where the user looks

LOADING_TEXT = re.compile(r"loading model… (\d+\.\d) s")


def loading_lines(bundles: list[dict[str, str]]) -> list[str]:
    return [m.group(0) for b in bundles for m in [LOADING_TEXT.search(b["text/html"])] if m]


def test_stream_to_cell_ticks_the_load_progress_above_the_answer():
    from midori_hf_nb import make_payload
    from midori_hf_nb.notebook import RecordingSink, stream_to_cell
    from midori_hf_nb.testing import ScriptedAgent

    agent = ScriptedAgent("Paris is the capital.", load_seconds=1.2, delay=0.01)
    sink = RecordingSink(keep=True)
    response = run(stream_to_cell(agent, make_payload("Capital of France?", "sys"), sink=sink))
    assert response.response == "Paris is the capital."
    htmls = [b["text/html"] for b in sink.bundles]
    loading = [h for h in htmls if 'class="midori-loading"' in h]
    assert len(loading) >= 3, "the loading line was not refreshed while the model loaded"
    seconds = [float(LOADING_TEXT.search(h).group(1)) for h in loading]
    assert seconds == sorted(seconds) and seconds[-1] > seconds[0]  # it ticks
    assert any("weights: Loading weights" in h and "/10" in h for h in loading)
    for html in loading:  # above the answer
        assert html.index('class="midori-loading"') < html.index('class="midori-answer"')
    assert "loading the model…" in loading[0]  # the footer says so too
    assert 'class="midori-loading"' not in htmls[-1] and "Paris is the capital." in htmls[-1]


def test_display_stream_ticks_the_load_progress_without_an_event_loop():
    from midori_hf_nb import make_payload
    from midori_hf_nb.notebook import RecordingSink, display_stream
    from midori_hf_nb.testing import ScriptedAgent

    agent = ScriptedAgent("Done.", load_seconds=1.0)
    sink = RecordingSink(keep=True)
    response = display_stream(agent, make_payload("Hi", "sys"), sink=sink)
    assert response.response == "Done."
    assert len(set(loading_lines(sink.bundles))) >= 2
    assert "midori-loading" not in sink.bundles[-1]["text/html"]


def test_chat_panel_status_line_shows_the_load_then_the_answer():
    from midori_hf_nb.notebook import ChatPanel
    from midori_hf_nb.testing import ScriptedAgent

    panel = ChatPanel(ScriptedAgent("Hello.", load_seconds=1.2, delay=0.01), throttle=0)
    statuses: list[str] = []
    lives: list[str] = []
    panel.status_html.observe(lambda change: statuses.append(change["new"]), names="value")
    panel.live_html.observe(lambda change: lives.append(change["new"]), names="value")

    async def scenario():
        return await panel.send("Hi")

    answer = run(scenario())
    assert answer["content"] == "Hello."
    loading = [s for s in statuses if "loading model…" in s]
    assert len(set(loading)) >= 3 and any("Loading weights" in s for s in loading)
    first_loading = statuses.index(loading[0])
    assert any("done" in s for s in statuses[first_loading:])  # the load came first, then the answer
    assert any('class="midori-loading"' in html for html in lives)  # also above the live answer
    assert panel.status.startswith("done")


def test_a_load_in_a_real_kernel_leaves_no_widget_behind(tiny_model):
    """A saved notebook shows a widget's output as "Error displaying widget: model not found" once
    the kernel is gone; the load progress must draw as text and HTML only."""
    jupyter_client = pytest.importorskip("jupyter_client")
    import queue

    code = (f"from midori_hf_nb import HuggingFaceLocalAgent, make_payload\n"
            f"from midori_hf_nb.notebook import stream_to_cell\n"
            f"agent = HuggingFaceLocalAgent(model={str(tiny_model)!r}, progress=True, max_new_tokens=4)\n"
            f"response = await stream_to_cell(agent, make_payload('Hi', 'sys'))\n"
            f"print('finish:', response.metadata['finish_reason'])\n")
    manager, client = jupyter_client.manager.start_new_kernel(kernel_name="python3", startup_timeout=120)
    try:
        msg_id = client.execute(code)
        outputs: list[dict] = []
        deadline = time.monotonic() + 180
        while True:
            try:
                msg = client.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("the cell did not finish in time") from None
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
            outputs.append({"type": msg["msg_type"], **msg["content"]})
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    errors = [o for o in outputs if o["type"] == "error"]
    assert not errors, errors
    displays = [o for o in outputs if o["type"] in ("display_data", "update_display_data")]
    assert displays and all("midori-stream" in o["data"]["text/html"] for o in displays)
    assert not [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    streamed = "".join(o.get("text", "") for o in outputs if o["type"] == "stream")
    assert "finish:" in streamed and "Loading" in streamed  # the text progress bars of the load
