"""The result of :func:`~.run.evaluate`: the answers, the scores, and what can be read from them.

:class:`Evaluation` holds two tables:

* ``answers``: one row per answer, the columns of :func:`~midori_hf_nb.compare` plus ``item``,
  ``description``, ``template``, ``config`` (the configuration's label), ``score`` (the weighted
  mean of its assertions' scores), ``passed`` (None when unknown: an unscored verdict),
  ``unscored`` (how many assertions) and ``outcome`` (why);
* ``scores``: one row per answer, assertion and grader (:data:`SCORE_COLUMNS`): the assertion,
  its score, pass flag, status and reason, and for a judge its verdict: the rendered prompt, the
  raw text, the seed, the settings, its own statistics, whether it came from the cache, and
  ``verdict_probability`` (filled when the judge's agent reports token probabilities; None until
  then).

Its methods give the figures per configuration (:meth:`Evaluation.summary`), the flaky items,
paired comparisons, the best configuration where it is significantly best, the judges'
agreement, one answer's details (:meth:`Evaluation.drill`) and the exports (:mod:`.export`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .items import TestItem
from .summary import (
    DEFAULT_ALPHA,
    PairedComparison,
    best_configurations,
    config_order,
    flaky_items,
    judge_agreement,
    paired_comparison,
    summarize_evaluation,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: the columns of the scores table, in order
SCORE_COLUMNS = (
    "answer", "config", "item", "repeat", "assertion_index", "assertion", "type", "weight", "threshold", "score",
    "passed", "status", "reason", "judge", "judge_status", "judge_prompt", "judge_system", "judge_raw",
    "judge_reason", "judge_error", "judge_seed", "judge_settings", "judge_prompt_tokens", "judge_completion_tokens",
    "judge_seconds", "judge_finish_reason", "judge_batch", "judge_batch_size", "judge_cached", "verdict_probability",
)


@dataclass
class Evaluation:
    """What :func:`~.run.evaluate` returns (see the module documentation)."""

    answers: "pd.DataFrame"
    score_records: list[dict[str, Any]] = field(repr=False)
    items: list[TestItem] = field(repr=False)
    judges: list[str]
    repeats: int
    interrupted: bool = False
    #: parts of a promptfoo configuration that were not understood and not run
    not_understood: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        counts = self.verdict_counts()
        return (f"Evaluation({len(self.items)} items, {len(self.configs)} configurations, {len(self.answers)} answers, "
                f"verdicts {counts}, interrupted={self.interrupted})")

    @property
    def configs(self) -> list[str]:
        """The configurations' labels, in order."""
        return config_order(self.answers)

    @cached_property
    def scores(self) -> "pd.DataFrame":
        """The scores table (:data:`SCORE_COLUMNS`), with each answer's config, item and repeat."""
        import pandas as pd

        frame = pd.DataFrame.from_records(self.score_records, columns=[c for c in SCORE_COLUMNS
                                                                       if c not in ("config", "item", "repeat")])
        keys = self.answers[["config", "item", "repeat"]]
        for column in ("config", "item", "repeat"):
            frame[column] = [keys[column].iloc[i] for i in frame["answer"]] if len(frame) else []
        frame["passed"] = frame["passed"].astype("boolean")
        frame["score"] = frame["score"].astype("float64")
        frame["verdict_probability"] = frame["verdict_probability"].astype("float64")
        for column in ("judge_seed", "judge_prompt_tokens", "judge_completion_tokens", "judge_batch", "judge_batch_size"):
            frame[column] = frame[column].astype("Int64")
        frame["judge_cached"] = frame["judge_cached"].astype("boolean")
        return frame[list(SCORE_COLUMNS)]

    def by_assertion(self, value: str = "passed") -> "pd.DataFrame":
        """The answers' keys with one column per assertion (its label; a judge's name after it
        when several judges grade it) holding each answer's ``value``: ``"passed"`` (None where
        unscored or not asked), ``"score"``, ``"reason"`` or ``"status"``."""
        import pandas as pd

        if value not in ("passed", "score", "reason", "status"):
            raise ValueError(f"by_assertion: value={value!r} is not allowed: expected 'passed', 'score', 'reason' "
                             "or 'status'")
        scores = self.scores
        several = len(self.judges) > 1
        columns = [a if not several or not isinstance(j, str) else f"{a} [{j}]"
                   for a, j in zip(scores["assertion"], scores["judge"])]
        wide = scores.assign(column=columns).pivot_table(index="answer", columns="column", values=value,
                                                         aggfunc="first", dropna=False, sort=False)
        keys = self.answers[["config", "item", "repeat", "response"]]
        out = pd.concat([keys, wide.reindex(range(len(keys)))], axis=1)
        out.columns.name = None
        return out

    def verdict_counts(self) -> dict[str, int]:
        """How many judge verdicts were scored, unscored, failed (``error``) or not run, and how
        many of them came from the judge cache."""
        counts = {"scored": 0, "unscored": 0, "error": 0, "not run": 0, "cached": 0}
        for record in self.score_records:
            status = record.get("judge_status")
            if status is None:
                continue
            counts[status] = counts.get(status, 0) + 1
            counts["cached"] += bool(record.get("judge_cached"))
        return counts

    def summary(self, k: int | None = None, confidence: float = 0.95) -> "pd.DataFrame":
        """Figures per configuration: pass rate and its Wilson interval, mean score with its
        standard error and interval, pass@k and pass^k (``k``: the repeats by default), counts
        (:func:`~.summary.config_summary`)."""
        return summarize_evaluation(self.answers, k if k is not None else self.repeats, confidence)

    def flaky(self) -> "pd.DataFrame":
        """The items whose verdicts differ across repeats, per configuration."""
        return flaky_items(self.answers)

    def paired(self, a: str, b: str, *, resamples: int = 10_000, seed: int = 0,
               alpha: float = DEFAULT_ALPHA) -> PairedComparison:
        """Configuration ``b`` against ``a`` on the same items: McNemar's exact test on pass/fail
        and a paired bootstrap interval on the score difference
        (:func:`~.summary.paired_comparison`)."""
        return paired_comparison(self.answers, a, b, resamples=resamples, seed=seed, alpha=alpha)

    def best(self, *, alpha: float = DEFAULT_ALPHA) -> dict[str, str | None]:
        """The best configuration by pass rate and by mean score, each only where it is
        significantly better than every other (else None)."""
        return best_configurations(self.answers, alpha=alpha)

    def agreement(self) -> "pd.DataFrame":
        """The judges' agreement: Cohen's kappa per pair, Krippendorff's alpha over all."""
        return judge_agreement(self.scores, self.judges)

    def drill(self, answer: int) -> dict[str, Any]:
        """One answer in full: its row of the answers table (``"answer"``) and its assertion
        results with reasons and judge transcripts (``"scores"``, a list of dicts)."""
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(self.answers):
            raise ValueError(f"drill: answer={answer!r} is not allowed: expected a row number from 0 to "
                             f"{len(self.answers) - 1}")
        scores = self.scores
        return {"answer": self.answers.iloc[answer].to_dict(),
                "scores": scores[scores["answer"] == answer].to_dict("records")}

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the scores table joined with each answer to CSV (:func:`~.export.evaluation_to_csv`)."""
        from .export import evaluation_to_csv

        return evaluation_to_csv(self, path)

    def to_jsonl(self, path: str | os.PathLike) -> Path:
        """Write one JSON object per answer, with its assertion results and verdicts nested."""
        from .export import evaluation_to_jsonl

        return evaluation_to_jsonl(self, path)

    def to_markdown(self, path: str | os.PathLike | None = None) -> str:
        """A Markdown report: the figures per configuration, then every answer's verdicts."""
        from .export import evaluation_to_markdown

        return evaluation_to_markdown(self, path)


__all__ = ["Evaluation", "SCORE_COLUMNS"]
