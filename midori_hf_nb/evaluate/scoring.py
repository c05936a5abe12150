"""Scoring finished answers: each assertion's result, the judges' verdicts, and the row's outcome.

For every answer that ran, each assertion of its item (and the evaluation's own) gives one
:class:`AssertionResult` per grader: a deterministic scorer, or each judge for ``llm-rubric``.
:func:`combine` turns an answer's results into its score and pass flag, as promptfoo does: the
score is the weighted mean of the assertions' scores; the answer passes when no assertion
fails, or, with a test ``threshold``, when the score reaches it. An assertion graded by several
judges takes their mean score and their majority pass. An **unscored** assertion (a verdict
that could not be read, a judge call that failed) is never a pass: the answer's pass flag is
then unknown (None) unless another assertion already failed it, and its score is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .assertions import Assertion
from .scorers import STATUS_ERROR, STATUS_SCORED, STATUS_UNSCORED, Score
from .verdicts import VERDICT_SCORED, Verdict


@dataclass
class AssertionResult:
    """One grader's result of one assertion on one answer (``verdict`` for a judge's)."""

    answer: int  #: the answer's row number in the answers table
    index: int  #: the assertion's position in the item's list
    assertion: Assertion
    result: Score
    judge: str | None = None
    verdict: Verdict | None = field(default=None, repr=False)


def rubric_score(assertion: Assertion, verdict: Verdict) -> Score:
    """An ``llm-rubric`` assertion's result from a judge's verdict: the verdict's score, and a
    pass when the verdict passes and its score reaches the assertion's ``threshold`` (if any)."""
    if verdict.status != VERDICT_SCORED or verdict.score is None or verdict.passed is None:
        why = verdict.error or verdict.status
        return Score(None, None, f"{verdict.judge}: {verdict.status}: {why}", STATUS_UNSCORED)
    passed = verdict.passed and (assertion.threshold is None or verdict.score >= assertion.threshold)
    reason = verdict.reason or ""
    if verdict.passed and not passed:
        reason += f" (score {verdict.score:g} < threshold {assertion.threshold:g})"
    return Score(verdict.score, passed, reason)


def merged(results: list[AssertionResult]) -> Score:
    """One assertion's result from its graders: itself for one; for several judges the mean of
    the scored verdicts' scores and their majority pass (a tie fails); unscored when none scored."""
    if len(results) == 1:
        return results[0].result
    scored = [r.result for r in results if r.result.status == STATUS_SCORED]
    if not scored:
        return Score(None, None, "no judge gave a verdict that could be read", STATUS_UNSCORED)
    passes = sum(bool(s.passed) for s in scored)
    score = sum(float(s.score) for s in scored) / len(scored)
    return Score(score, passes * 2 > len(scored), f"{passes} of {len(scored)} judges passed it")


@dataclass
class Outcome:
    """An answer's outcome: ``score`` and ``passed`` (None when unknown), how many assertions
    were unscored, and a short reason."""

    score: float | None
    passed: bool | None
    unscored: int
    reason: str


def combine(results: list[AssertionResult], threshold: float | None = None) -> Outcome:
    """An answer's outcome from all its assertion results (see the module documentation)."""
    by_index: dict[int, list[AssertionResult]] = {}
    for r in results:
        by_index.setdefault(r.index, []).append(r)
    if not by_index:
        return Outcome(None, None, 0, "no assertions")
    parts = [(group[0].assertion, merged(group)) for group in by_index.values()]
    unscored = sum(s.status == STATUS_UNSCORED for _, s in parts)
    failed = [a.label for a, s in parts if s.status in (STATUS_SCORED, STATUS_ERROR) and s.passed is False]
    score = None
    if not unscored:
        weight = sum(a.weight for a, _ in parts)
        score = sum(a.weight * float(s.score or 0.0) for a, s in parts) / weight if weight > 0 else 0.0
    if threshold is not None:
        if score is None:
            return Outcome(None, None, unscored, f"{unscored} assertion(s) unscored: the score is unknown")
        passed = score >= threshold
        return Outcome(score, passed, 0, f"score {score:.2f} {'>=' if passed else '<'} threshold {threshold:g}")
    if failed:
        return Outcome(score, False, unscored, "failed: " + "; ".join(failed[:3]) + (" ..." if len(failed) > 3 else ""))
    if unscored:
        return Outcome(None, None, unscored, f"{unscored} assertion(s) unscored: not counted as passed")
    return Outcome(score, True, 0, "all assertions passed")


def result_record(r: AssertionResult) -> dict[str, Any]:
    """One row of the scores table (see :mod:`.run` for the columns)."""
    v = r.verdict
    record: dict[str, Any] = {
        "answer": r.answer, "assertion_index": r.index, "assertion": r.assertion.label,
        "type": r.assertion.full_type, "weight": r.assertion.weight, "threshold": r.assertion.threshold,
        "score": r.result.score, "passed": r.result.passed, "status": r.result.status, "reason": r.result.reason,
        "judge": r.judge,
    }
    for name in ("status", "prompt", "system", "raw", "reason", "error", "seed", "settings", "prompt_tokens",
                 "completion_tokens", "seconds", "finish_reason", "batch", "batch_size", "cached"):
        record[f"judge_{name}"] = getattr(v, name) if v is not None else None
    # filled when the judge's agent reports token probabilities; None until then
    record["verdict_probability"] = v.verdict_probability if v is not None else None
    return record


__all__ = ["AssertionResult", "Outcome", "combine", "merged", "result_record", "rubric_score"]
