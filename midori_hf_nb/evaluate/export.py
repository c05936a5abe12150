"""Exporting an evaluation: CSV, JSON lines and Markdown, carrying scores and judge verdicts.

* CSV: one line per answer, assertion and grader (answers without any result get one line),
  with the answer's keys, text and outcome beside the assertion's score, reason and the judge's
  verdict; cells a spreadsheet would run as formulas are guarded as in
  :func:`midori_hf_nb.compare.to_csv`.
* JSON lines: one object per answer, its assertion results (with the verdicts) nested, values
  exactly as they are.
* Markdown: the figures per configuration, then one table line per answer with its verdicts'
  reasons. Model text (answers, reasons, raw verdicts) is HTML- and Markdown-escaped there, as in
  :func:`midori_hf_nb.compare.to_markdown`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from ..compare.columns import bounded_repr, is_missing, plain
from ..compare.export import spreadsheet_safe
from ..compare.markdown import escape_cell, format_value, table_line

#: what the functions here take: an :class:`~midori_hf_nb.evaluate.Evaluation` (its ``answers``,
#: ``scores`` and ``summary()``; named by its role, since the evaluation's methods call these)
EvaluationLike = Any

#: the answer's columns written beside each assertion result
ANSWER_COLUMNS = ("model", "config", "item", "description", "prompt", "system", "repeat", "response", "status",
                  "error", "seed", "completion_tokens", "seconds", "score", "passed", "unscored", "outcome")


def _value(value: Any) -> Any:
    value = plain(value)
    return None if is_missing(value) else value


def _answer_fields(row: dict[str, Any]) -> dict[str, Any]:
    return {f"answer_{c}" if c in ("score", "passed", "status", "error", "seed") else c: _value(row.get(c))
            for c in ANSWER_COLUMNS}


def export_rows(evaluation: EvaluationLike) -> list[dict[str, Any]]:
    """The CSV's rows: each answer's fields with each of its results (see the module documentation)."""
    scores = evaluation.scores
    by_answer: dict[int, list[dict[str, Any]]] = {}
    for record in scores.to_dict("records"):
        by_answer.setdefault(int(record["answer"]), []).append(record)
    rows = []
    result_columns = [c for c in scores.columns if c not in ("config", "item", "repeat")]
    for number, row in enumerate(evaluation.answers.to_dict("records")):
        base = _answer_fields(row)
        for record in by_answer.get(number, [None]):  # type: ignore[list-item]
            out = dict(base)
            for column in result_columns:
                out[column] = _value(record.get(column)) if record is not None else (number if column == "answer" else None)
            rows.append(out)
    return rows


def evaluation_to_csv(evaluation: EvaluationLike, path: str | os.PathLike) -> Path:
    """Write the evaluation as CSV (see the module documentation); returns the path."""
    rows = export_rows(evaluation)
    header = list(rows[0]) if rows else [*ANSWER_COLUMNS]
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for row in rows:
            writer.writerow([spreadsheet_safe("" if row.get(k) is None else str(row.get(k))) for k in header])
    return path


def evaluation_to_jsonl(evaluation: EvaluationLike, path: str | os.PathLike) -> Path:
    """Write one JSON object per answer with its results nested under ``"assertions"``; returns the path."""
    scores = evaluation.scores
    result_columns = [c for c in scores.columns if c not in ("answer", "config", "item", "repeat")]
    nested: dict[int, list[dict[str, Any]]] = {}
    for record in scores.to_dict("records"):
        nested.setdefault(int(record["answer"]), []).append({c: _value(record[c]) for c in result_columns})
    path = Path(path)
    with path.open("w", encoding="utf-8") as fh:
        for number, row in enumerate(evaluation.answers.to_dict("records")):
            obj = {**_answer_fields(row), "assertions": nested.get(number, [])}
            fh.write(json.dumps(obj, ensure_ascii=False, default=bounded_repr) + "\n")
    return path


def _interval(low: Any, high: Any) -> str:
    if low is None or (isinstance(low, float) and math.isnan(low)):
        return ""
    return f"[{low:.2f}, {high:.2f}]"


def summary_lines(evaluation: EvaluationLike) -> list[str]:
    """The Markdown table of the figures per configuration."""
    summary = evaluation.summary()
    header = ["config", "scored", "unscored", "pass rate", "95% interval", "mean score", "SE", "95% interval",
              "pass@k", "pass^k", "flaky items"]
    lines = [table_line([escape_cell(h) for h in header]), "|" + "|".join("---" for _ in header) + "|"]
    for r in summary.to_dict("records"):
        cells = [r["config"], format_value(r["scored"]), format_value(r["unscored"]), format_value(r["pass_rate"]),
                 _interval(r["pass_low"], r["pass_high"]), format_value(r["mean_score"]), format_value(r["score_se"]),
                 _interval(r["score_low"], r["score_high"]), format_value(r["pass_at_k"]),
                 format_value(r["pass_hat_k"]), format_value(r["flaky_items"])]
        lines.append(table_line([escape_cell(str(c)) for c in cells]))
    return lines


def evaluation_to_markdown(evaluation: EvaluationLike, path: str | os.PathLike | None = None) -> str:
    """A Markdown report of the evaluation (see the module documentation); written to ``path`` when given."""
    scores = evaluation.scores
    reasons: dict[int, list[str]] = {}
    for record in scores.to_dict("records"):
        judge = f" [{record['judge']}]" if isinstance(record.get("judge"), str) else ""
        verdict = {True: "pass", False: "fail"}.get(_value(record["passed"]), record["status"])
        reasons.setdefault(int(record["answer"]), []).append(
            f"{record['assertion']}{judge}: {verdict}: {record['reason'] or ''}")
    lines = ["## Figures per configuration", "", *summary_lines(evaluation), "", "## Answers", ""]
    header = ["config", "item", "repeat", "response", "passed", "score", "assertions"]
    lines += [table_line([escape_cell(h) for h in header]), "|" + "|".join("---" for _ in header) + "|"]
    for number, row in enumerate(evaluation.answers.to_dict("records")):
        passed = _value(row.get("passed"))
        cells = [row["config"], row["item"], format_value(_value(row["repeat"])), _value(row["response"]) or "",
                 "" if passed is None else ("pass" if passed else "fail"), format_value(_value(row["score"])),
                 "\n".join(reasons.get(number, []))]
        lines.append(table_line([escape_cell(str(c)) for c in cells]))
    text = "\n".join(lines) + "\n"
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


__all__ = ["ANSWER_COLUMNS", "evaluation_to_csv", "evaluation_to_jsonl", "evaluation_to_markdown", "export_rows",
           "summary_lines"]
