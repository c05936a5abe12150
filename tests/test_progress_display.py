"""Progress of a comparison grid: one line in the cell that ends as a finished line, a text bar on a
terminal, nothing anywhere else (never a widget or a stderr bar left part way in a saved notebook)."""

from __future__ import annotations

import contextlib
import io

from midori_hf_nb import Judge, compare, evaluate, progress_display
from midori_hf_nb.notebook.progress_line import ProgressLine
from midori_hf_nb.notebook.sinks import RecordingSink
from midori_hf_nb.testing import ScriptedAgent

from .test_load_progress import FakeTerminal


def test_compare_in_a_notebook_ends_as_one_finished_line():
    import midori_hf_nb.notebook  # noqa: F401  (registers the notebook's progress line)

    sinks: list[RecordingSink] = []

    def front_end(**options):
        sinks.append(RecordingSink(keep=True))
        return ProgressLine(sink=sinks[-1], **options)

    previous = progress_display.register_front_end(front_end)
    try:
        frame = compare(["a", "b", "c"], models=ScriptedAgent("ok"), settings={"max_new_tokens": [4]})
    finally:
        progress_display.register_front_end(previous)
    assert len(frame) == 3 and len(sinks) == 1
    shown = [b["text/plain"] for b in sinks[0].bundles]
    assert shown[0].startswith("compare: 0/3 rows")
    assert shown[-1].startswith("compare: 3/3 rows in ") and shown[-1].endswith(" s")  # the finished line
    assert 'class="midori-progress"' in sinks[0].bundles[-1]["text/html"]


def test_an_evaluation_in_a_notebook_ends_as_one_finished_line_per_phase():
    import midori_hf_nb.notebook  # noqa: F401  (registers the notebook's progress line)

    sinks: list[RecordingSink] = []

    def front_end(**options):
        sinks.append(RecordingSink(keep=True))
        return ProgressLine(sink=sinks[-1], **options)

    verdict = '{"reason": "names Paris", "score": 0.9, "pass": true}'
    items = [{"prompt": f"Capital of France? {i}", "assert": [{"type": "llm-rubric", "value": f"names Paris {i}"}]}
             for i in range(2)]
    previous = progress_display.register_front_end(front_end)
    try:
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            ev = evaluate(items, models=ScriptedAgent(["Paris."]), judge=Judge(ScriptedAgent([verdict]), concurrency=1))
    finally:
        progress_display.register_front_end(previous)
    assert list(ev.scores["judge_status"]) == ["scored", "scored"] and stderr.getvalue() == ""
    finished = [sink.bundles[-1]["text/plain"] for sink in sinks]
    assert [line.split(":")[0] for line in finished] == ["answers", "verdicts"], finished
    assert finished[0].startswith("answers: 2/2 rows in ") and finished[1].startswith("verdicts: 2/2 rows in ")


def test_without_a_front_end_a_bar_shows_only_on_a_terminal():
    previous = progress_display.register_front_end(None)
    try:
        for stream, drawn in ((io.StringIO(), False), (FakeTerminal(), True)):
            with contextlib.redirect_stderr(stream):
                compare(["a", "b"], models=ScriptedAgent("ok"), settings={"max_new_tokens": [4]})
            assert ("compare" in stream.getvalue()) is drawn, stream.getvalue()
        quiet = io.StringIO()
        with contextlib.redirect_stderr(quiet):
            assert isinstance(progress_display.progress_display(total=1, desc="x", unit="row", enabled=False),
                              progress_display.SilentProgress)
    finally:
        progress_display.register_front_end(previous)


def test_the_notebook_registers_its_front_end_on_import():
    import midori_hf_nb.notebook as notebook

    previous = progress_display.register_front_end(None)
    progress_display.register_front_end(previous)
    assert previous is notebook._progress_front_end
    from midori_hf_nb.notebook.progress_line import ProgressLine
    from midori_hf_nb.notebook.sinks import in_ipython

    shown = notebook._progress_front_end(total=1, desc="x", unit="row")
    assert isinstance(shown, ProgressLine) if in_ipython() else shown is None  # a line only inside IPython
