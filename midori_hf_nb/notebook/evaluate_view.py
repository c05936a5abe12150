"""Notebook views of an :class:`~midori_hf_nb.evaluate.Evaluation`: scoreboard, chart, answers, drill-down.

* :func:`scoreboard`: a pandas Styler with one row per configuration: pass rate with its 95%
  Wilson interval, mean score with its standard error and 95% interval, pass@k, pass^k and the
  counts (unscored verdicts among them). The best configuration is marked (★, tinted) only where
  it is significantly better than every other (:meth:`Evaluation.best`).
* :func:`plot_scores`: a matplotlib chart of pass rate and mean score per configuration with
  their intervals as error bars.
* :func:`answers_view`: items as rows, configurations as columns, each cell the passes over the
  repeats and the mean score.
* :func:`drill_down`: one answer in full: the prompt, the answer, every assertion's result and
  reason, and each judge's transcript (its instructions, prompt, raw text and parsed verdict).

Every cell, label and transcript is HTML-escaped by the notebook layer's one helper (model text,
rubrics and verdicts are untrusted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..compare.columns import is_missing
from .compare_view import FAIL_STYLE, MUTED_STYLE, PASS_STYLE, cell_html, css_length
from .escaping import NO_MATH_CLASS, escape_html

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from pandas.io.formats.style import Styler

    from ..evaluate import Evaluation

__all__ = ["BEST_STYLE", "DrillDown", "answers_view", "drill_down", "plot_scores", "scoreboard"]

BEST_STYLE = "background-color: rgba(46, 160, 67, 0.20); font-weight: 600;"


def _interval(low: float, high: float) -> str:
    if low is None or (isinstance(low, float) and math.isnan(low)):
        return "[n/a]"
    return f"[{low:.2f}, {high:.2f}]"


def _number(value: Any, digits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def scoreboard(evaluation: "Evaluation", *, alpha: float = 0.05) -> "Styler":
    """The scoreboard (see the module documentation): intervals shown, the best marked only where
    the difference is significant at ``alpha``."""
    import pandas as pd

    summary = evaluation.summary()
    best = evaluation.best(alpha=alpha) if len(summary) > 1 else {"pass_rate": None, "mean_score": None}
    rows = []
    for r in summary.to_dict("records"):
        rows.append({
            "configuration": r["config"],
            "pass rate [95% CI]": (("★ " if best["pass_rate"] == r["config"] else "")
                                   + f"{_number(r['pass_rate'])} {_interval(r['pass_low'], r['pass_high'])}"),
            "mean score ± SE [95% CI]": (("★ " if best["mean_score"] == r["config"] else "")
                                         + f"{_number(r['mean_score'])} ± {_number(r['score_se'])} "
                                         + _interval(r["score_low"], r["score_high"])),
            f"pass@{r['k']}": _number(r["pass_at_k"]),
            f"pass^{r['k']}": _number(r["pass_hat_k"]),
            "scored": r["scored"], "unscored": r["unscored"], "errors": r["errors"], "not run": r["not_run"],
            "flaky items": r["flaky_items"],
        })
    table = pd.DataFrame(rows)

    def marks(frame: "pd.DataFrame") -> "pd.DataFrame":
        css = pd.DataFrame("", index=frame.index, columns=frame.columns)
        for i, r in enumerate(summary.to_dict("records")):
            if best["pass_rate"] == r["config"]:
                css.iloc[i, 1] = BEST_STYLE
            if best["mean_score"] == r["config"]:
                css.iloc[i, 2] = BEST_STYLE
            if r["unscored"]:
                css.iloc[i, frame.columns.get_loc("unscored")] = FAIL_STYLE
        return css

    caption = (f"95% intervals: pass rate by Wilson's score interval, mean score ± its standard error over items "
               f"(repeats averaged). ★: best, and significantly better than every other configuration (McNemar's "
               f"exact test on paired pass/fail, paired bootstrap on scores, at {alpha:g}); no ★: no configuration is.")
    return table.style.format(formatter=cell_html).format_index(formatter=cell_html, axis=1).hide(axis="index") \
        .apply(marks, axis=None).set_caption(escape_html(caption)).set_table_styles([
            {"selector": "td", "props": "text-align: left; padding: 4px 8px; white-space: pre-wrap;"},
            {"selector": "th", "props": "text-align: left; padding: 4px 8px;"},
            {"selector": "caption", "props": "caption-side: bottom; text-align: left; opacity: 0.7; font-size: 0.85em;"},
        ])


def plot_scores(evaluation: "Evaluation", *, title: str | None = None) -> "Figure":
    """Pass rate and mean score per configuration, with their 95% intervals as error bars.
    Returns the matplotlib Figure (shown when it is a cell's result)."""
    import matplotlib.pyplot as plt

    summary = evaluation.summary()
    if summary.empty or not summary["scored"].sum():
        raise ValueError("plot_scores: no answer was scored, so there is nothing to plot")
    labels = list(summary["config"])
    positions = list(range(len(labels)))
    height = max(2.2, 0.6 * len(labels) + 1.2)
    fig, (pass_ax, score_ax) = plt.subplots(1, 2, figsize=(11, height), sharey=True)

    def errors(centre: str, low: str, high: str) -> list[list[float]]:
        below = [max(0.0, c - lo) if not math.isnan(lo) else 0.0 for c, lo in zip(summary[centre], summary[low])]
        above = [max(0.0, hi - c) if not math.isnan(hi) else 0.0 for c, hi in zip(summary[centre], summary[high])]
        return [below, above]

    pass_ax.barh(positions, summary["pass_rate"].fillna(0), xerr=errors("pass_rate", "pass_low", "pass_high"),
                 color="#3182bd", capsize=4)
    score_ax.barh(positions, summary["mean_score"].fillna(0), xerr=errors("mean_score", "score_low", "score_high"),
                  color="#fd8d3c", capsize=4)
    pass_ax.set_yticks(positions, labels)
    pass_ax.invert_yaxis()
    pass_ax.set_xlabel("pass rate (95% Wilson interval)")
    score_ax.set_xlabel("mean score (95% interval)")
    for ax in (pass_ax, score_ax):
        ax.set_xlim(0, 1.05)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title or "Evaluation per configuration")
    fig.tight_layout()
    plt.close(fig)  # returned for display; keeps pyplot from showing it a second time
    return fig


def answers_view(evaluation: "Evaluation") -> "Styler":
    """Items as rows, configurations as columns; each cell ``passes/scored`` over the repeats and
    the mean score (``?`` counts unscored answers). Escaped like every view."""
    import pandas as pd

    answers = evaluation.answers
    configs = evaluation.configs
    cells: dict[str, dict[str, str]] = {}
    state: dict[str, dict[str, str]] = {}
    for (item, config), group in answers.groupby(["item", "config"], sort=False):
        scored = group[group["passed"].notna()]
        passes = int(scored["passed"].astype(bool).sum())
        unknown = int(((group["status"] == "ok") & group["passed"].isna()).sum())
        mean = scored["score"].dropna().mean() if len(scored) else math.nan
        text = f"{passes}/{len(scored)} pass" + (f", {unknown} ?" if unknown else "") + f"\nscore {_number(mean)}"
        cells.setdefault(item, {})[config] = text
        state.setdefault(item, {})[config] = ("" if not len(scored) else PASS_STYLE if passes == len(scored)
                                              else FAIL_STYLE if passes == 0 else MUTED_STYLE)
    items = list(dict.fromkeys(answers["item"]))
    descriptions = {item: d for item, d in zip(answers["item"], answers["description"])}
    index = pd.Index([f"{item}: {descriptions[item]}" if isinstance(descriptions.get(item), str) else item
                      for item in items], name="item")
    table = pd.DataFrame([[cells[item].get(c, "") for c in configs] for item in items], index=index,
                         columns=pd.Index(configs, name="configuration"))
    css = pd.DataFrame([[state[item].get(c, "") for c in configs] for item in items], index=index,
                       columns=table.columns)
    return table.style.format(formatter=cell_html).format_index(formatter=cell_html, axis=0) \
        .format_index(formatter=cell_html, axis=1).apply(lambda _: css, axis=None).set_table_styles([
            {"selector": "td", "props": "white-space: pre-wrap; vertical-align: top; padding: 4px 8px;"}])


@dataclass
class DrillDown:
    """One answer in full (see :func:`drill_down`); shows as HTML in a notebook, as text elsewhere."""

    answer: dict[str, Any]
    scores: list[dict[str, Any]]
    width: str = "60em"

    def _field(self, name: str, value: Any) -> str:
        text = "" if is_missing(value) else value
        return (f"<div style='margin: 2px 0'><b>{escape_html(name)}</b>: "
                f"<span style='white-space: pre-wrap'>{escape_html(text)}</span></div>")

    def _result(self, s: dict[str, Any]) -> str:
        verdict = {True: "✓ pass", False: "✗ fail"}.get(None if is_missing(s["passed"]) else bool(s["passed"]),
                                                      f"? {s['status']}")
        style = PASS_STYLE if verdict.startswith("✓") else FAIL_STYLE if verdict.startswith("✗") else MUTED_STYLE
        head = (f"<div style='margin-top: 6px'><span style='{style}'>{escape_html(verdict)}</span> "
                f"<b>{escape_html(s['assertion'])}</b> (score {escape_html(_number(s['score']))}, weight "
                f"{escape_html(s['weight'])}): <span style='white-space: pre-wrap'>{escape_html(s['reason'] or '')}</span></div>")
        if is_missing(s.get("judge")):
            return head
        transcript = "".join(self._field(n, s.get(k)) for n, k in (
            ("judge", "judge"), ("status", "judge_status"), ("seed", "judge_seed"), ("settings", "judge_settings"),
            ("cached", "judge_cached"), ("tokens", "judge_completion_tokens"), ("seconds", "judge_seconds"),
            ("finish reason", "judge_finish_reason"), ("verdict probability", "verdict_probability"),
            ("instructions", "judge_system"), ("prompt", "judge_prompt"), ("raw verdict", "judge_raw"),
            ("why unscored", "judge_error")) if k != "judge_error" or not is_missing(s.get(k)))
        return head + f"<details style='margin-left: 1.5em'><summary>judge transcript</summary>{transcript}</details>"

    def html(self) -> str:
        """The drill-down as escaped HTML."""
        a = self.answer
        passed = None if is_missing(a.get("passed")) else bool(a["passed"])
        verdict = {True: "✓ passed", False: "✗ failed", None: "? not scored"}[passed]
        fields = "".join(self._field(n, a.get(k)) for n, k in (
            ("configuration", "config"), ("item", "item"), ("description", "description"), ("repeat", "repeat"),
            ("system", "system"), ("prompt", "prompt"), ("answer", "response"), ("status", "status"),
            ("error", "error"), ("score", "score"), ("outcome", "outcome")))
        results = "".join(self._result(s) for s in self.scores)
        return (f"<div class='{NO_MATH_CLASS}' style='max-width: {self.width}; font-size: 0.92em'>"
                f"<div style='font-size: 1.05em; font-weight: 600'>{escape_html(verdict)}</div>{fields}"
                f"<div style='margin-top: 8px'><b>assertions</b></div>{results}</div>")

    def _repr_html_(self) -> str:
        return self.html()

    def __repr__(self) -> str:
        lines = [f"{self.answer.get('config')} | item {self.answer.get('item')} | repeat {self.answer.get('repeat')}",
                 f"answer: {self.answer.get('response')!r}"]
        lines += [f"  {s['assertion']}: {s['status']} {s['passed']} {s['reason']!r}" for s in self.scores]
        return "\n".join(lines)


def drill_down(evaluation: "Evaluation", answer: int, *, width: str = "60em") -> DrillDown:
    """One answer (its row number in ``evaluation.answers``) in full: shown as escaped HTML."""
    details = evaluation.drill(answer)
    return DrillDown(details["answer"], details["scores"], css_length("drill_down", "width", width))
