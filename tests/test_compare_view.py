"""Notebook views of a comparison: escaping, fastest/slowest highlight, pass/fail display, the chart.

The comparisons come from scripted agents: the views' own behaviour is under test, not a model's.
More hostile cases (every column, style injection through ``width``) are in test_compare_hostile.py.
"""

from __future__ import annotations

import re

import matplotlib
import pytest

matplotlib.use("Agg")

from midori_hf_nb import compare  # noqa: E402
from midori_hf_nb.compare import summarize  # noqa: E402
from midori_hf_nb.notebook import comparison_view, plot_comparison, results_view  # noqa: E402
from midori_hf_nb.notebook.compare_view import FASTEST_STYLE, SLOWEST_STYLE  # noqa: E402
from midori_hf_nb.testing import ScriptedAgent  # noqa: E402

HOSTILE = "<script>alert(1)</script> & <img src=x onerror=alert(2)>"


@pytest.fixture(scope="module")
def hostile_table():
    """A comparison whose answers and prompt carry markup: 2 prompts x 3 settings."""
    agent = ScriptedAgent(HOSTILE, piece_chars=8)
    return compare(["<b>bold prompt</b>", "plain prompt"],
                   settings={"max_new_tokens": [40], "temperature": [0, 0.5, 1.0]}, models=agent,
                   checks={"has script": "<script>", "says hello": "hello"}, progress=False)


def cells_with(html_text: str, style: str) -> set[tuple[int, int]]:
    """(row, column) of the data cells a Styler rule with ``style`` applies to."""
    found = set()
    for selectors, body in re.findall(r"([^{}]+)\{([^{}]*)\}", html_text):
        if style.split(";")[0].split(":")[1].strip() in body:
            found |= {(int(r), int(c)) for r, c in re.findall(r"_row(\d+)_col(\d+)", selectors)}
    return found


def test_styled_views_escape_model_output(hostile_table):
    assert (hostile_table["response"] == HOSTILE).all()
    for html_text in (comparison_view(hostile_table).to_html(), results_view(hostile_table).to_html(),
                      comparison_view(hostile_table, columns="config").to_html()):
        assert "<script>" not in html_text and "<img" not in html_text and "<b>bold" not in html_text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text
        assert "&lt;b&gt;bold prompt&lt;/b&gt;" in html_text  # labels are escaped too


def test_comparison_view_layout_and_speed_highlight(hostile_table):
    styler = comparison_view(hostile_table)
    table = styler.data
    assert list(table.index) == ["<b>bold prompt</b>", "plain prompt"]
    assert list(table.columns) == ["max_new_tokens=40, temperature=0.0", "max_new_tokens=40, temperature=0.5",
                                   "max_new_tokens=40, temperature=1.0"]
    html_text = styler.to_html()
    speeds = hostile_table.pivot(index="prompt_id", columns="temperature", values="tokens_per_second").to_numpy()
    expected_fast = {(i, int(speeds[i].argmax())) for i in range(2)}
    expected_slow = {(i, int(speeds[i].argmin())) for i in range(2)}
    assert cells_with(html_text, FASTEST_STYLE) == expected_fast
    assert cells_with(html_text, SLOWEST_STYLE) == expected_slow
    assert cells_with(comparison_view(hostile_table, highlight=False).to_html(), FASTEST_STYLE) == set()


def test_pass_fail_display(hostile_table):
    assert hostile_table["check: has script"].all() and not hostile_table["check: says hello"].any()
    assert not hostile_table["passed"].any()
    table = comparison_view(hostile_table, show_speed=False).data
    assert all(cell == "✗ " + HOSTILE for cell in table.to_numpy().ravel())
    verdicts = comparison_view(hostile_table, value="passed", show_speed=False).data
    assert set(verdicts.to_numpy().ravel()) == {"✗ fail"}
    tidy = results_view(hostile_table)
    assert tidy.data["check: has script"].tolist() == ["✓ pass"] * 6
    assert tidy.data["passed"].tolist() == ["✗ fail"] * 6
    assert "✓ pass" in tidy.to_html()


def test_columns_by_model():
    df = compare(["hi"], settings={"max_new_tokens": [2], "temperature": [0, 0.7]},
                 models={"chatml": ScriptedAgent("first"), "plain": ScriptedAgent("second")}, progress=False)
    by_model = comparison_view(df, columns="models").data
    assert list(by_model.columns) == ["chatml", "plain"]
    assert by_model.index.names == ["prompt", "settings"] and len(by_model) == 2
    by_setting = comparison_view(df).data
    assert by_setting.index.names == ["prompt", "model"] and len(by_setting.columns) == 2
    with pytest.raises(ValueError, match="columns"):
        comparison_view(df, columns="rows")


def test_plot_matches_summary(hostile_table):
    fig = plot_comparison(hostile_table)
    speed_ax, latency_ax = fig.axes[:2]
    summary = summarize(hostile_table)
    assert [p.get_width() for p in speed_ax.patches] == pytest.approx(summary["tokens_per_second"].tolist())
    assert [p.get_width() for p in latency_ax.patches] == pytest.approx(summary["latency"].tolist())
    assert [t.get_text() for t in speed_ax.get_yticklabels()] == summary["config"].tolist()
