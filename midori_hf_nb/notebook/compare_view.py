"""Notebook views of a :func:`midori_hf_nb.compare` table: styled pivots, pass/fail, a speed chart.

* :func:`comparison_view`: a pandas Styler with one row per prompt and one column per setting
  (or per model, or per model and setting). Long text wraps; every cell and label is
  HTML-escaped, since model output is untrusted. In each row the fastest configuration
  (highest tokens/s) is tinted green and the slowest red; with checks, each answer starts with
  ✓ or ✗.
* :func:`results_view`: the tidy table, styled: wrapped and escaped text, a pass/fail column,
  status colours and tokens/s bars.
* :func:`plot_comparison`: a matplotlib bar chart of aggregate tokens/s and latency per
  configuration (from :func:`midori_hf_nb.compare.summarize`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..compare import STATUS_OK, check_columns, config_label, settings_columns, summarize

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure
    from pandas.io.formats.style import Styler

__all__ = ["comparison_view", "results_view", "plot_comparison", "FASTEST_STYLE", "SLOWEST_STYLE"]

FASTEST_STYLE = "background-color: rgba(46, 160, 67, 0.20); border-left: 3px solid #2ea043;"
SLOWEST_STYLE = "background-color: rgba(248, 81, 73, 0.16); border-left: 3px solid #f85149;"
PASS_STYLE = "color: #1a7f37; font-weight: 600;"
FAIL_STYLE = "color: #cf222e; font-weight: 600;"
MUTED_STYLE = "opacity: 0.6; font-style: italic;"

_COLUMNS = ("settings", "models", "config")


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
        text = "" if _missing(raw) else ("✓ pass" if bool(raw) else "✗ fail")
    else:
        text = "" if _missing(raw) else str(raw)
    if checks and value != "passed":
        passed = row.get("passed")
        if not _missing(passed):
            text = ("✓ " if bool(passed) else "✗ ") + text
    speed = _finite(row.get("tokens_per_second"))
    if show_speed and speed is not None:
        text += f"\n[{speed:.1f} tok/s]"
    return text


def _missing(value: Any) -> bool:
    import pandas as pd

    if value is None:
        return True
    if isinstance(value, (list, dict, tuple)):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def comparison_view(df: "pd.DataFrame", *, columns: str = "settings", value: str = "response",
                    width: str = "26em", highlight: bool = True, show_speed: bool = True) -> "Styler":
    """A styled pivot of a comparison: prompts as rows, configurations as columns.

    Args:
        columns: ``"settings"`` (one column per setting; several models then go into the row
            labels), ``"models"`` (one column per model; several settings go into the row labels)
            or ``"config"`` (one column per model and setting).
        value: the column shown in the cells (``"response"``, ``"thinking"``, ``"passed"``...).
        width: the maximum width of a cell; longer text wraps.
        highlight: tint the fastest (green) and slowest (red) configuration of each row by
            tokens/s.
        show_speed: add the row's tokens/s under each answer.

    Row labels are the prompt, plus the system prompt when there are several, plus the repeat
    when there are several. Everything shown is HTML-escaped.
    """
    import pandas as pd

    if columns not in _COLUMNS:
        raise ValueError(f"comparison_view: columns={columns!r} is not allowed: expected one of "
                         + ", ".join(map(repr, _COLUMNS)))
    if value not in df.columns:
        raise ValueError(f"comparison_view: value={value!r} is not allowed: expected a column of the frame "
                         f"(e.g. 'response', 'thinking', 'passed')")
    names = settings_columns(df)
    checks = check_columns(df)
    records = df.to_dict("records")
    several_models = df["model"].nunique() > 1
    setting_labels = [config_label(r, names, include_model=False) for r in records]
    several_settings = len(set(setting_labels)) > 1
    several_systems = df["system"].fillna("").nunique() > 1
    several_repeats = df["repeat"].nunique() > 1
    texts_per_prompt: dict[str, set] = {}
    for r in records:
        texts_per_prompt.setdefault(r["prompt"], set()).add(r["prompt_id"])

    index_names = ["prompt"]
    if several_systems:
        index_names.append("system")
    if columns == "settings" and several_models:
        index_names.append("model")
    if columns == "models" and several_settings:
        index_names.append("settings")
    if several_repeats:
        index_names.append("repeat")

    cells: dict[tuple, dict[str, str]] = {}
    speed: dict[tuple, dict[str, float | None]] = {}
    row_order: list[tuple] = []
    col_order: list[str] = []
    for r, setting in zip(records, setting_labels):
        prompt = r["prompt"] if len(texts_per_prompt[r["prompt"]]) == 1 else f"{r['prompt']} (#{r['prompt_id']})"
        key: list[Any] = [prompt]
        if several_systems:
            key.append(r["system"] or "")
        if columns == "settings" and several_models:
            key.append(r["model"])
        if columns == "models" and several_settings:
            key.append(setting)
        if several_repeats:
            key.append(int(r["repeat"]))
        col = {"settings": setting, "models": r["model"],
               "config": config_label(r, names, include_model=True)}[columns]
        index = tuple(key)
        if index not in cells:
            cells[index], speed[index] = {}, {}
            row_order.append(index)
        if col not in col_order:
            col_order.append(col)
        cells[index][col] = _answer_text(r, value, checks, show_speed)
        speed[index][col] = _finite(r.get("tokens_per_second")) if r["status"] == STATUS_OK else None

    multi = len(index_names) > 1
    idx = pd.MultiIndex.from_tuples(row_order, names=index_names) if multi else \
        pd.Index([k[0] for k in row_order], name="prompt")
    table = pd.DataFrame([[cells[k].get(c, "") for c in col_order] for k in row_order], index=idx,
                         columns=pd.Index(col_order, name=columns if columns != "config" else "model | settings"))
    speeds = pd.DataFrame([[speed[k].get(c) for c in col_order] for k in row_order], index=idx,
                          columns=table.columns, dtype="float64")

    def paint(_: "pd.DataFrame") -> "pd.DataFrame":
        css = pd.DataFrame("", index=table.index, columns=table.columns)
        if not highlight:
            return css
        for i in range(len(table.index)):
            values = speeds.iloc[i]
            valid = values.dropna()
            if len(valid) < 2 or valid.max() == valid.min():
                continue
            css.iloc[i, table.columns.get_loc(valid.idxmax())] = FASTEST_STYLE
            css.iloc[i, table.columns.get_loc(valid.idxmin())] = SLOWEST_STYLE
        return css

    styler = table.style.format(escape="html").format_index(escape="html", axis=0) \
        .format_index(escape="html", axis=1).apply(paint, axis=None).set_table_styles(_cell_css(width))
    notes = []
    if highlight:
        notes.append("green: the fastest configuration of the row (tokens/s); red: the slowest")
    if checks:
        notes.append("✓/✗: all checks passed / a check failed")
    if notes:
        styler = styler.set_caption("; ".join(notes))
    return styler


def results_view(df: "pd.DataFrame", *, width: str = "30em", columns: list[str] | None = None) -> "Styler":
    """The tidy comparison table, styled: escaped, wrapped text; pass/fail and status colours;
    tokens/s bars. ``columns`` picks the columns (default: the keys, settings, answer, status,
    tokens, speed and checks)."""
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
        view[col] = [("" if _missing(v) else ("✓ pass" if bool(v) else "✗ fail")) for v in view[col]]

    def verdict_css(column: "pd.Series") -> list[str]:
        return [PASS_STYLE if v.startswith("✓") else FAIL_STYLE if v.startswith("✗") else "" for v in column]

    def status_css(column: "pd.Series") -> list[str]:
        return ["" if v == STATUS_OK else (FAIL_STYLE if v == "error" else MUTED_STYLE) for v in column]

    styler = view.style.format(escape="html", precision=2, na_rep="").format_index(escape="html", axis=1) \
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
