"""compare() under hostile data: markup in any cell, style injection, spreadsheet formulas,
objects in the grid, and saved files that are too large, too deep or malformed.

Each case is a row of a table-driven test. The data comes from scripted agents and from files
written and edited here: the views and files are what is under test, not a model.
"""

from __future__ import annotations

import csv
import json
import math

import pandas as pd
import pytest

from midori_hf_nb import compare
from midori_hf_nb.compare import (
    FORMULA_TRIGGERS,
    LoadError,
    config_label,
    load_comparison,
    settings_columns,
    to_csv,
    to_jsonl,
    to_markdown,
)
from midori_hf_nb.compare.columns import REPR_LIMIT
from midori_hf_nb.notebook import comparison_view, results_view
from midori_hf_nb.testing import ScriptedAgent

IMG = "<img src=x onerror=alert(1)>"
ESCAPED_IMG = "&lt;img src=x onerror=alert(1)&gt;"


def scripted_frame(replies="fine answer", settings=None, checks=None, prompts=("first", "second")):
    return compare(list(prompts), settings=settings or {"temperature": [0, 0.7]}, models=ScriptedAgent(replies),
                   checks=checks, progress=False)


def rewrite_jsonl(df, path, column, value):
    """Write ``df`` as JSON lines with ``column`` set to ``value`` in every row, as an edited file would be."""
    to_jsonl(df, path)
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for record in lines:
        record[column] = value
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- markup in any cell

HOSTILE_CELLS = [
    ("tool_calls", [{"name": IMG, "arguments": {}, "id": "call_1"}]),  # a list of dicts: rendered by str()
    ("tool_calls", {"name": IMG}),
    ("tool_calls", IMG),
    ("response", IMG),
    ("thinking", IMG),
    ("error", IMG),
    ("model", IMG),
    ("prompt", IMG),
    ("system", IMG),
    ("finish_reason", IMG),
    ("setting:temperature", IMG),  # a setting column holding text
    ("setting:temperature", [IMG, 1]),  # ... or a list
    ("status", IMG),
]


@pytest.mark.parametrize("column, value", HOSTILE_CELLS, ids=[f"{c}-{type(v).__name__}" for c, v in HOSTILE_CELLS])
def test_views_escape_every_cell_of_a_loaded_comparison(tmp_path, column, value):
    df = load_comparison(rewrite_jsonl(scripted_frame(checks={"fine": "fine"}), tmp_path / "c.jsonl", column, value))
    name = column.removeprefix("setting:")
    shown = df[name].tolist()
    assert all(IMG in str(v) for v in shown)  # the hostile value is really in the frame
    views = [results_view(df, columns=list(df.columns)).to_html(), results_view(df).to_html(),
             comparison_view(df, columns="config").to_html()]
    if name in ("response", "thinking", "tool_calls", "error", "finish_reason", "status"):
        views.append(comparison_view(df, value=name).to_html())
    for html_text in views:
        assert "<img" not in html_text
    assert ESCAPED_IMG in views[0]


def test_a_check_named_with_markup_is_escaped():
    df = scripted_frame(checks={IMG: "fine"})
    for html_text in (results_view(df).to_html(), comparison_view(df).to_html()):
        assert "<img" not in html_text
    assert ESCAPED_IMG in results_view(df).to_html()


# --------------------------------------------------------------------------- width goes into <style>

@pytest.mark.parametrize("width, css", [
    ("26em", "26em"), ("320px", "320px"), ("40%", "40%"), ("12.5rem", "12.5rem"), (300, "300px"), (12.5, "12.5px"),
])
def test_view_width_accepts_numbers_and_css_lengths(width, css):
    df = scripted_frame()
    for html_text in (comparison_view(df, width=width).to_html(), results_view(df, width=width).to_html()):
        assert f"max-width: {css}" in html_text


@pytest.mark.parametrize("width", [
    "26em; } body { display: none", "</style><script>alert(1)</script>", "red", "26 em", "26", "em", "-5em",
    "1e3px", "calc(100% - 1px)", 0, -5, math.nan, math.inf, True, None, ["26em"],
])
def test_view_width_refuses_anything_else(width):
    df = scripted_frame()
    for view in (comparison_view, results_view):
        with pytest.raises(ValueError, match=r"width=.* is not allowed: expected a positive number \(pixels\) or a CSS length"):
            view(df, width=width)


# --------------------------------------------------------------------------- spreadsheet formulas in CSV

FORMULAS = ['=HYPERLINK("http://evil.example","click")', "+1+1", "-2+3", "@SUM(A1:A9)", "\tx", "\r=1+1",
            "'already quoted", "''", "=", "-"]
PLAIN = ["-5", "+3.25", "-1e-3", "safe text", "", "a=b"]


@pytest.mark.parametrize("text", FORMULAS + PLAIN)
def test_csv_guards_formula_cells_and_reads_them_back_exactly(tmp_path, text):
    df = compare(["first", text], systems=[text], models=ScriptedAgent(["plain", text]), progress=False)
    assert df["system"].tolist() == [text, text] and df["prompt"][1] == text  # taken exactly as given
    path = to_csv(df, tmp_path / "c.csv")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    guarded = text.startswith("'") or (text.startswith(FORMULA_TRIGGERS) and text not in PLAIN)
    expected = "'" + text if guarded else text
    assert [rows[0]["system"], rows[1]["system"], rows[1]["prompt"]] == [expected] * 3
    if df["response"][1] == text:  # answers are stripped of outer white space by the parser
        assert rows[1]["response"] == expected
    assert all(not cell.startswith(FORMULA_TRIGGERS) or cell in PLAIN for row in rows for cell in row.values())
    pd.testing.assert_frame_equal(load_comparison(path), df)  # the guard comes off again
    jsonl = to_jsonl(df, tmp_path / "c.jsonl")  # JSON lines stay exact
    assert json.loads(jsonl.read_text(encoding="utf-8").splitlines()[1])["prompt"] == text


# --------------------------------------------------------------------------- objects in the grid


class HugeReprProcessor:
    """A settings value that is an object (as a logits processor is), with an enormous repr."""

    def __call__(self, input_ids, scores):  # pragma: no cover - never called by a scripted agent
        return scores

    def __repr__(self) -> str:
        return "<HugeReprProcessor " + "x" * 100_000 + ">"


def test_a_grid_holding_an_object_exports_by_a_bounded_repr(tmp_path):
    processor = HugeReprProcessor()
    df = scripted_frame(settings={"logits_processor": [[processor]], "max_new_tokens": [8]})
    assert df["logits_processor"].tolist() == [[processor], [processor]]
    label = config_label(df.iloc[0], settings_columns(df))
    assert len(label) < 2 * REPR_LIMIT and "HugeReprProcessor" in label
    expected = [repr(processor)[:REPR_LIMIT - 3] + "..."]
    for writer, name in ((to_csv, "c.csv"), (to_jsonl, "c.jsonl")):
        path = writer(df, tmp_path / name)
        assert path.stat().st_size < 10_000  # the repr was cut, not written in full
        back = load_comparison(path)
        assert back["logits_processor"].tolist() == [expected, expected]
        assert back["response"].tolist() == df["response"].tolist()
    markdown = to_markdown(df, tmp_path / "c.md")
    assert len(markdown) < 10_000
    assert "<img" not in results_view(df).to_html()


# --------------------------------------------------------------------------- files that are too much


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def jsonl_with(tmp_path, text: str):
    path = tmp_path / "c.jsonl"
    path.write_text(text, encoding="utf-8")
    return path


BAD_FILES = [
    ("too large", lambda p: (p / "c.jsonl", {"max_bytes": 10}), r"larger than max_bytes=10"),
    ("deep tool calls", lambda p: (jsonl_with(p, '{"tool_calls": ' + deep(40) + "}\n"), {}), r"max_depth=32"),
    ("very deep line", lambda p: (jsonl_with(p, deep(100_000) + "\n"), {}), r"max_depth=32"),
    ("deep under a lower limit", lambda p: (jsonl_with(p, '{"tool_calls": ' + deep(5) + "}\n"), {"max_depth": 3}),
     r"max_depth=3"),
    ("not an object", lambda p: (jsonl_with(p, "[1, 2]\n"), {}), r"line 1: expected a JSON object"),
    ("not JSON", lambda p: (jsonl_with(p, '{"model": \n'), {}), r"line 1: .* is not JSON"),
    ("wrong type", lambda p: (jsonl_with(p, '{"model": "m", "prompt_tokens": "many"}\n'), {}),
     r"column 'prompt_tokens': 'many' is not allowed: expected a whole number"),
    ("huge number", lambda p: (jsonl_with(p, '{"prompt_tokens": 1e400}\n'), {}), r"'prompt_tokens'"),
    ("setting named as a column", lambda p: (jsonl_with(p, '{"setting:prompt": 1}\n'), {}), r"'setting:prompt'"),
    ("not UTF-8", lambda p: ((p / "c.csv").write_bytes(b"model\n\xff\xfe\n") and p / "c.csv", {}), r"not UTF-8"),
    ("csv: deep setting", lambda p: ((p / "c.csv").write_text("model,setting:stop\nm," + deep(50) + "\n")
                                     and p / "c.csv", {}), r"row 1 column 'setting:stop'.*max_depth=32"),
    ("csv: bad number", lambda p: ((p / "c.csv").write_text("model,seconds\nm,fast\n") and p / "c.csv", {}),
     r"row 1 column 'seconds': 'fast' is not allowed: expected a number"),
    ("csv: extra cells", lambda p: ((p / "c.csv").write_text("model,prompt\nm,p,x\n") and p / "c.csv", {}),
     r"row 1: 3 cells, but the header has 2"),
    ("markdown: no table", lambda p: ((p / "c.md").write_text("# nothing here\n") and p / "c.md", {}),
     r"no Markdown table"),
    ("unknown suffix", lambda p: ((p / "c.xlsx").write_text("x") and p / "c.xlsx", {}), r"expected a \.csv"),
    ("bad limit", lambda p: (p / "c.jsonl", {"max_bytes": 0}), r"max_bytes=0 is not allowed"),
]


@pytest.mark.parametrize("case, make, message", BAD_FILES, ids=[c for c, _, _ in BAD_FILES])
def test_loading_refuses_files_that_are_too_much(tmp_path, case, make, message):
    to_jsonl(scripted_frame(), tmp_path / "c.jsonl")  # a valid file, for the cases that only set a limit
    path, limits = make(tmp_path)
    with pytest.raises(LoadError, match=message):
        load_comparison(path, **limits)


def test_loading_within_the_limits_still_works(tmp_path):
    reply = '<tool_call>{"name": "f", "arguments": {"a": {"b": [1]}}}</tool_call>'
    df = compare(["q"], models=ScriptedAgent(reply), tools=[{"name": "f", "description": "d"}], progress=False)
    assert df.loc[0, "tool_calls"][0]["arguments"] == {"a": {"b": [1]}}
    path = to_jsonl(df, tmp_path / "c.jsonl")
    back = load_comparison(path, max_bytes=path.stat().st_size, max_depth=6)
    pd.testing.assert_frame_equal(back, df)
    assert isinstance(LoadError("x"), ValueError)
