"""Notebook views of a :func:`midori_hf_nb.compare` table: styled pivots, pass/fail, a speed chart.

* :func:`comparison_view`: a pandas Styler with one row per prompt and one column per setting
  (or per model, or per model and setting). Long text wraps; every cell and label, of any
  type, is HTML-escaped by one helper (:func:`cell_html`), since model output (and a comparison
  loaded from a file) is untrusted. In each row the fastest configuration
  (highest tokens/s) is tinted green and the slowest red; with checks, each answer starts with
  ✓ or ✗.
* :func:`results_view`: the tidy table, styled: wrapped and escaped text, a pass/fail column,
  status colours and tokens/s bars.
* :func:`plot_comparison`: a matplotlib bar chart of aggregate tokens/s and latency per
  configuration (from :func:`midori_hf_nb.compare.summarize`).
* :func:`comparison_tokens`: the drill-down of one cell, its answer's tokens shaded by probability
  (the grid's setting asked for ``top_logprobs``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..compare import STATUS_OK, check_columns, config_label, settings_columns, summarize
from ..compare.columns import is_missing
from .escaping import escape_html

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure
    from pandas.io.formats.style import Styler

__all__ = ["comparison_view", "comparison_tokens", "results_view", "plot_comparison", "cell_html", "css_length",
           "speed_css", "status_css", "verdict_css", "FASTEST_STYLE", "SLOWEST_STYLE"]

FASTEST_STYLE = "background-color: rgba(46, 160, 67, 0.20); border-left: 3px solid #2ea043;"
SLOWEST_STYLE = "background-color: rgba(248, 81, 73, 0.16); border-left: 3px solid #f85149;"
PASS_STYLE = "color: #1a7f37; font-weight: 600;"
FAIL_STYLE = "color: #cf222e; font-weight: 600;"
MUTED_STYLE = "opacity: 0.6; font-style: italic;"

_COLUMNS = ("settings", "models", "config")

#: a CSS length a view accepts for ``width``: a number and a unit, nothing else
CSS_LENGTH = re.compile(r"(?:\d{1,5}(?:\.\d{1,3})?|\.\d{1,3})(?:px|em|rem|ex|ch|%|vw|vh|pt|pc|cm|mm|in)")
CSS_LENGTH_ALLOWED = ("a positive number (pixels) or a CSS length: digits and one unit of px, em, rem, ex, "
                      "ch, %, vw, vh, pt, pc, cm, mm, in (e.g. '26em', '320px', '40%')")


def css_length(where: str, name: str, value: Any) -> str:
    """``value`` as a CSS length for a ``<style>`` block: a positive number means pixels; a
    string must match :data:`CSS_LENGTH`. Raises ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return f"{value:g}px"
    if isinstance(value, str) and CSS_LENGTH.fullmatch(value):
        return value
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    raise ValueError(f"{where}: {name}={shown} is not allowed: expected {CSS_LENGTH_ALLOWED}")


def cell_html(value: Any, precision: int = 2) -> str:
    """Any cell or label as escaped HTML text: empty when missing, floats to ``precision``
    decimals, everything else through the notebook layer's one escaping helper
    (:func:`~midori_hf_nb.notebook.escaping.escape_html`, which also survives a broken ``__str__``)."""
    if is_missing(value):
        return ""
    if isinstance(value, float) and not isinstance(value, bool):
        return escape_html(f"{value:.{precision}f}")
    return escape_html(value)


def _cell_css(width: str) -> list[dict[str, str]]:
    wrap = f"white-space: pre-wrap; word-break: break-word; max-width: {width}; vertical-align: top; text-align: left;"
    return [
        {"selector": "td", "props": wrap + " min-width: 8em; padding: 4px 8px;"},
        {"selector": "th", "props": wrap + " padding: 4px 8px;"},
        {"selector": "caption", "props": "caption-side: bottom; text-align: left; opacity: 0.7; font-size: 0.85em;"},
    ]


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _answer_text(row: dict[str, Any], value: str, checks: list[str], show_speed: bool) -> str:
    if row["status"] != STATUS_OK:
        error = row.get("error")
        return f"[{row['status']}]" + (f" {error}" if isinstance(error, str) and error else "")
    raw = row.get(value)
    if value == "passed":
        text = "" if is_missing(raw) else ("✓ pass" if bool(raw) else "✗ fail")
    else:
        text = "" if is_missing(raw) else str(raw)
    if checks and value != "passed":
        passed = row.get("passed")
        if not is_missing(passed):
            text = ("✓ " if bool(passed) else "✗ ") + text
    speed = _finite(row.get("tokens_per_second"))
    if show_speed and speed is not None:
        text += f"\n[{speed:.1f} tok/s]"
    return text


def comparison_view(df: "pd.DataFrame", *, columns: str = "settings", value: str = "response",
                    width: str = "26em", highlight: bool = True, show_speed: bool = True) -> "Styler":
    """A styled pivot of a comparison: prompts as rows, configurations as columns.

    Args:
        columns: ``"settings"`` (one column per setting; several models then go into the row
            labels), ``"models"`` (one column per model; several settings go into the row labels)
            or ``"config"`` (one column per model and setting).
        value: the column shown in the cells (``"response"``, ``"thinking"``, ``"passed"``...).
        width: the maximum width of a cell (a positive number of pixels or a CSS length such
            as ``"26em"``, see :func:`css_length`); longer text wraps.
        highlight: tint the fastest (green) and slowest (red) configuration of each row by
            tokens/s.
        show_speed: add the row's tokens/s under each answer.

    Row labels are the prompt, plus the system prompt when there are several, plus the repeat
    when there are several. Everything shown is HTML-escaped.
    """

    width = css_length("comparison_view", "width", width)
    if columns not in _COLUMNS:
        raise ValueError(f"comparison_view: columns={columns!r} is not allowed: expected one of "
                         + ", ".join(map(repr, _COLUMNS)))
    if value not in df.columns:
        raise ValueError(f"comparison_view: value={value!r} is not allowed: expected a column of the frame "
                         f"(e.g. 'response', 'thinking', 'passed')")
    layout = _Layout.of(df, columns)
    table, speeds = _pivot(df, layout, value, show_speed)
    styler = table.style.format(formatter=cell_html).format_index(formatter=cell_html, axis=0) \
        .format_index(formatter=cell_html, axis=1).set_table_styles(_cell_css(width))
    if highlight:
        styler = styler.apply(speed_css, axis=None, speeds=speeds)
    notes = []
    if highlight:
        notes.append("green: the fastest configuration of the row (tokens/s); red: the slowest")
    if layout.checks:
        notes.append("✓/✗: all checks passed / a check failed")
    if notes:
        styler = styler.set_caption("; ".join(notes))
    return styler


def comparison_tokens(df: "pd.DataFrame", row: Any, *, shade: str = "probability", processed: bool = False) -> Any:
    """The drill-down of one cell of a comparison: row ``row`` (an index label of ``df``) as a
    :func:`~.probs_view.token_view`, titled with its model, prompt and setting. The grid's
    setting must have asked for token probabilities (e.g. ``settings={"top_logprobs": [5]}``);
    otherwise the view says so. Raises ``ValueError`` for a label that is not in ``df``."""
    from .probs_view import token_view

    if row not in df.index:
        raise ValueError(f"comparison_tokens: row={row!r} is not allowed: expected an index label of the frame "
                         f"(0 to {len(df) - 1} for a fresh comparison)")
    record = df.loc[row]
    label = config_label(record, settings_columns(df))
    return token_view(record, shade=shade, processed=processed, title=f"{label} · prompt: {record['prompt']}")


@dataclass
class _Layout:
    """Which labels a pivot's rows carry, and what its columns are."""

    columns: str
    names: list[str]
    checks: list[str]
    several_systems: bool
    models_in_rows: bool
    settings_in_rows: bool
    several_repeats: bool
    ambiguous_prompts: set[str]

    @classmethod
    def of(cls, df: "pd.DataFrame", columns: str) -> "_Layout":
        names = settings_columns(df)
        records = df.to_dict("records")
        ids_per_prompt: dict[str, set] = {}
        for r in records:
            ids_per_prompt.setdefault(r["prompt"], set()).add(r["prompt_id"])
        several_settings = len({config_label(r, names, include_model=False) for r in records}) > 1
        return cls(columns=columns, names=names, checks=check_columns(df),
                   several_systems=df["system"].fillna("").nunique() > 1,
                   models_in_rows=columns == "settings" and df["model"].nunique() > 1,
                   settings_in_rows=columns == "models" and several_settings,
                   several_repeats=df["repeat"].nunique() > 1,
                   ambiguous_prompts={p for p, ids in ids_per_prompt.items() if len(ids) > 1})

    @property
    def index_names(self) -> list[str]:
        flags = [(self.several_systems, "system"), (self.models_in_rows, "model"),
                 (self.settings_in_rows, "settings"), (self.several_repeats, "repeat")]
        return ["prompt", *(name for on, name in flags if on)]

    def row_key(self, r: dict[str, Any]) -> tuple:
        prompt = f"{r['prompt']} (#{r['prompt_id']})" if r["prompt"] in self.ambiguous_prompts else r["prompt"]
        key: list[Any] = [prompt]
        if self.several_systems:
            key.append(r["system"] or "")
        if self.models_in_rows:
            key.append(r["model"])
        if self.settings_in_rows:
            key.append(config_label(r, self.names, include_model=False))
        if self.several_repeats:
            key.append(int(r["repeat"]))
        return tuple(key)

    def column_key(self, r: dict[str, Any]) -> str:
        if self.columns == "models":
            return r["model"]
        return config_label(r, self.names, include_model=self.columns == "config")


def _pivot(df: "pd.DataFrame", layout: _Layout, value: str, show_speed: bool) -> tuple["pd.DataFrame", "pd.DataFrame"]:
    """The cells' text and the cells' tokens/s, prompts (and the other row labels) by columns."""
    import pandas as pd

    cells: dict[tuple, dict[str, str]] = {}
    speed: dict[tuple, dict[str, float | None]] = {}
    col_order: list[str] = []
    for r in df.to_dict("records"):
        index, col = layout.row_key(r), layout.column_key(r)
        cells.setdefault(index, {})[col] = _answer_text(r, value, layout.checks, show_speed)
        speed.setdefault(index, {})[col] = _finite(r.get("tokens_per_second")) if r["status"] == STATUS_OK else None
        if col not in col_order:
            col_order.append(col)
    rows = list(cells)
    names = layout.index_names
    idx = pd.MultiIndex.from_tuples(rows, names=names) if len(names) > 1 else \
        pd.Index([k[0] for k in rows], name="prompt")
    column_name = layout.columns if layout.columns != "config" else "model | settings"
    table = pd.DataFrame([[cells[k].get(c, "") for c in col_order] for k in rows], index=idx,
                         columns=pd.Index(col_order, name=column_name))
    speeds = pd.DataFrame([[speed[k].get(c) for c in col_order] for k in rows], index=idx,
                          columns=table.columns, dtype="float64")
    return table, speeds


def speed_css(table: "pd.DataFrame", speeds: "pd.DataFrame") -> "pd.DataFrame":
    """Styles tinting each row's fastest (:data:`FASTEST_STYLE`) and slowest
    (:data:`SLOWEST_STYLE`) cell by tokens/s (rows with fewer than two speeds stay plain)."""
    import pandas as pd

    css = pd.DataFrame("", index=table.index, columns=table.columns)
    for i in range(len(table.index)):
        valid = speeds.iloc[i].dropna()
        if len(valid) < 2 or valid.max() == valid.min():
            continue
        css.iloc[i, table.columns.get_loc(valid.idxmax())] = FASTEST_STYLE
        css.iloc[i, table.columns.get_loc(valid.idxmin())] = SLOWEST_STYLE
    return css


def results_view(df: "pd.DataFrame", *, width: str = "30em", columns: list[str] | None = None) -> "Styler":
    """The tidy comparison table, styled: escaped, wrapped text; pass/fail and status colours;
    tokens/s bars. ``columns`` picks the columns (default: the keys, settings, answer, status,
    tokens, speed and checks); ``width`` is the maximum width of a text cell (a positive number
    of pixels or a CSS length, see :func:`css_length`). Every cell, of any type (a ``tool_calls``
    list, a setting that is an object), is escaped by :func:`cell_html`."""
    width = css_length("results_view", "width", width)
    names = settings_columns(df)
    checks = check_columns(df)
    if columns is None:
        columns = ["model", "prompt", "system", *names, "repeat", "response", "status", "completion_tokens",
                   "tokens_per_second", *checks, *(["passed"] if "passed" in df.columns else [])]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"results_view: columns {missing!r} are not allowed: expected columns of the frame")
    view = df[columns].copy()
    verdict_columns = [c for c in columns if c in checks or c == "passed"]
    for col in verdict_columns:
        view[col] = [("" if is_missing(v) else ("✓ pass" if bool(v) else "✗ fail")) for v in view[col]]

    styler = view.style.format(formatter=cell_html).format_index(formatter=cell_html, axis=1) \
        .hide(axis="index").set_table_styles([
            {"selector": "td", "props": "vertical-align: top; text-align: left; padding: 4px 8px;"},
            {"selector": "th", "props": "vertical-align: bottom; text-align: left; padding: 4px 8px;"},
        ])
    text = [c for c in columns if c in ("model", "prompt", "system", "response", "thinking", "error")]
    if text:
        styler = styler.set_properties(subset=text, **{"white-space": "pre-wrap", "word-break": "break-word",
                                                       "max-width": width, "min-width": "8em"})
    if "response" in columns:
        styler = styler.set_properties(subset=["response"], **{"min-width": "18em"})
    if verdict_columns:
        styler = styler.apply(verdict_css, subset=verdict_columns)
    if "status" in columns:
        styler = styler.apply(status_css, subset=["status"])
    if "tokens_per_second" in columns and view["tokens_per_second"].notna().any():
        styler = styler.bar(subset=["tokens_per_second"], color="#9ecae1")
    return styler


def verdict_css(column: "pd.Series") -> list[str]:
    """Pass (✓) and fail (✗) colours of a verdict column."""
    return [PASS_STYLE if str(v).startswith("✓") else FAIL_STYLE if str(v).startswith("✗") else "" for v in column]


def status_css(column: "pd.Series") -> list[str]:
    """Colours of the ``status`` column: plain for ok, red for errors, muted for rows not run."""
    return ["" if v == STATUS_OK else (FAIL_STYLE if v == "error" else MUTED_STYLE) for v in column]


def plot_comparison(df: "pd.DataFrame", *, title: str | None = None) -> "Figure":
    """Bar charts of aggregate tokens/s and latency (mean seconds per ``generate`` call) per
    configuration. Returns the matplotlib Figure (shown when it is a cell's result)."""
    import matplotlib.pyplot as plt

    summary = summarize(df)
    summary = summary[summary["ok"] > 0]
    if summary.empty:
        raise ValueError("plot_comparison: no row of the frame ran (status 'ok'), so there is nothing to plot")
    several_models = summary["model"].nunique() > 1
    labels = [f"{m} | {c}" if several_models else c for m, c in zip(summary["model"], summary["config"])]
    height = max(2.2, 0.55 * len(labels) + 1.2)
    fig, (speed_ax, latency_ax) = plt.subplots(1, 2, figsize=(11, height), sharey=True)
    positions = list(range(len(labels)))
    speed_bars = speed_ax.barh(positions, summary["tokens_per_second"], color="#3182bd")
    latency_bars = latency_ax.barh(positions, summary["latency"], color="#fd8d3c")
    speed_ax.set_yticks(positions, labels)
    speed_ax.invert_yaxis()
    speed_ax.set_xlabel("tokens / s (aggregate)")
    latency_ax.set_xlabel("seconds per generate call (mean)")
    speed_ax.bar_label(speed_bars, fmt="%.1f", padding=2)
    latency_ax.bar_label(latency_bars, fmt="%.2f", padding=2)
    for ax in (speed_ax, latency_ax):
        ax.margins(x=0.18)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title or "Speed per configuration")
    fig.tight_layout()
    plt.close(fig)  # returned for display; keeps pyplot from showing it a second time
    return fig
