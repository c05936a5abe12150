"""Figures per configuration, flaky items, paired comparisons and judge agreement, from the tables
of an evaluation (:mod:`.stats` holds the formulas and their sources).

The unit of the statistics is an answer that ran and was scored (``passed`` not missing):
answers whose call failed, that did not run, or whose verdict could not be read are counted
(``errors``, ``not_run``, ``unscored``) and left out of the rates and means, never counted as
passes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..compare.columns import STATUS_ERROR, STATUS_NOT_RUN, STATUS_OK
from .stats import (
    cohen_kappa,
    krippendorff_alpha,
    mcnemar_exact,
    mean_interval,
    paired_bootstrap,
    pass_at_k,
    pass_hat_k,
    wilson_interval,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: the significance level a difference must reach to be called significant
DEFAULT_ALPHA = 0.05


def config_order(answers: "pd.DataFrame") -> list[str]:
    """The configurations in the order they first appear."""
    return list(dict.fromkeys(answers["config"]))


def _scored(group: "pd.DataFrame") -> "pd.DataFrame":
    return group[(group["status"] == STATUS_OK) & group["passed"].notna()]


def item_passes(group: "pd.DataFrame") -> dict[str, tuple[int, int]]:
    """item -> (scored answers, passes) of one configuration."""
    scored = _scored(group)
    return {item: (len(g), int(g["passed"].astype(bool).sum())) for item, g in scored.groupby("item", sort=False)}


def config_summary(config: str, group: "pd.DataFrame", k: int, confidence: float = 0.95) -> dict[str, Any]:
    """One configuration's figures: pass rate with its Wilson interval, mean score with its
    standard error and interval (over items, repeats averaged first), pass@k and pass^k over the
    items with at least ``k`` scored repeats, and the counts."""
    scored = _scored(group)
    n, passes = len(scored), int(scored["passed"].astype(bool).sum())
    low, high = wilson_interval(passes, n, confidence)
    item_scores = scored.dropna(subset=["score"]).groupby("item", sort=False)["score"].mean()
    mean = mean_interval(list(item_scores), confidence)
    per_item = item_passes(group)
    eligible = [(m, c) for m, c in per_item.values() if m >= k]
    return {
        "config": config,
        "items": int(group["item"].nunique()),
        "answers": int((group["status"] == STATUS_OK).sum()),
        "scored": n,
        "unscored": int(((group["status"] == STATUS_OK) & group["passed"].isna()).sum()),
        "errors": int((group["status"] == STATUS_ERROR).sum()),
        "not_run": int((group["status"] == STATUS_NOT_RUN).sum()),
        "passes": passes,
        "pass_rate": passes / n if n else math.nan,
        "pass_low": low,
        "pass_high": high,
        "mean_score": mean.mean,
        "score_se": mean.se,
        "score_low": mean.low,
        "score_high": mean.high,
        "k": k,
        "pass_at_k": sum(pass_at_k(m, c, k) for m, c in eligible) / len(eligible) if eligible else math.nan,
        "pass_hat_k": sum(pass_hat_k(m, c, k) for m, c in eligible) / len(eligible) if eligible else math.nan,
        "flaky_items": sum(0 < c < m for m, c in per_item.values()),
    }


def summarize_evaluation(answers: "pd.DataFrame", k: int | None = None, confidence: float = 0.95) -> "pd.DataFrame":
    """One row per configuration (see :func:`config_summary`); ``k`` defaults to the number of
    repeats."""
    import pandas as pd

    k = k if k is not None else max(1, int(answers["repeat"].max()) + 1 if len(answers) else 1)
    records = [config_summary(config, answers[answers["config"] == config], k, confidence)
               for config in config_order(answers)]
    return pd.DataFrame.from_records(records)


def flaky_items(answers: "pd.DataFrame") -> "pd.DataFrame":
    """Items whose verdicts differ across repeats within one configuration: config, item,
    description, passes and scored answers."""
    import pandas as pd

    records = []
    for config in config_order(answers):
        group = answers[answers["config"] == config]
        for item, (m, c) in item_passes(group).items():
            if 0 < c < m:
                description = group.loc[group["item"] == item, "description"].iloc[0]
                records.append({"config": config, "item": item, "description": description, "passes": c, "scored": m})
    return pd.DataFrame.from_records(records, columns=["config", "item", "description", "passes", "scored"])


@dataclass(frozen=True)
class PairedComparison:
    """Configuration ``b`` against ``a`` on the same items.

    Pass/fail is paired by (item, repeat): ``only_a`` pairs where only ``a`` passed, ``only_b``
    where only ``b`` did; ``pass_difference`` is b's pass rate minus a's over those pairs and
    ``mcnemar_p`` the exact McNemar p-value. Scores are paired by item (repeats averaged):
    ``score_difference`` is the mean of b minus a, with its paired bootstrap interval.
    """

    a: str
    b: str
    pairs: int
    only_a: int
    only_b: int
    pass_rate_a: float
    pass_rate_b: float
    pass_difference: float
    mcnemar_p: float
    items: int
    score_difference: float
    score_low: float
    score_high: float
    alpha: float = DEFAULT_ALPHA

    @property
    def pass_significant(self) -> bool:
        """True when McNemar's p-value is below ``alpha``."""
        return self.mcnemar_p < self.alpha

    @property
    def score_significant(self) -> bool:
        """True when the score difference's interval excludes 0."""
        return not math.isnan(self.score_low) and (self.score_low > 0 or self.score_high < 0)

    def as_dict(self) -> dict[str, Any]:
        """The comparison as plain data, with the two significance flags."""
        return {**asdict(self), "pass_significant": self.pass_significant, "score_significant": self.score_significant}


def paired_comparison(answers: "pd.DataFrame", a: str, b: str, *, resamples: int = 10_000, seed: int = 0,
                      alpha: float = DEFAULT_ALPHA) -> PairedComparison:
    """Compare configurations ``a`` and ``b`` (labels of the ``config`` column) on their common
    items: McNemar's exact test on paired pass/fail, a paired bootstrap interval (at
    ``1 - alpha``) on the score difference."""
    configs = config_order(answers)
    for name, label in (("a", a), ("b", b)):
        if label not in configs:
            raise ValueError(f"paired_comparison: {name}={label!r} is not allowed: expected one of {configs!r}")
    first = _scored(answers[answers["config"] == a]).set_index(["item", "repeat"])
    second = _scored(answers[answers["config"] == b]).set_index(["item", "repeat"])
    common = first.index.intersection(second.index)
    pa = first.loc[common, "passed"].astype(bool).to_numpy()
    pb = second.loc[common, "passed"].astype(bool).to_numpy()
    only_a, only_b, n = int((pa & ~pb).sum()), int((~pa & pb).sum()), len(common)
    sa = first.dropna(subset=["score"]).groupby(level="item")["score"].mean()
    sb = second.dropna(subset=["score"]).groupby(level="item")["score"].mean()
    items = sa.index.intersection(sb.index)
    differences = list(sb.loc[items] - sa.loc[items])
    low, high = paired_bootstrap(differences, resamples=resamples, confidence=1 - alpha, seed=seed)
    return PairedComparison(
        a=a, b=b, pairs=n, only_a=only_a, only_b=only_b,
        pass_rate_a=float(pa.mean()) if n else math.nan, pass_rate_b=float(pb.mean()) if n else math.nan,
        pass_difference=float(pb.mean() - pa.mean()) if n else math.nan, mcnemar_p=mcnemar_exact(only_a, only_b),
        items=len(items), score_difference=sum(differences) / len(differences) if differences else math.nan,
        score_low=low, score_high=high, alpha=alpha)


def best_configurations(answers: "pd.DataFrame", *, alpha: float = DEFAULT_ALPHA, resamples: int = 2000,
                        seed: int = 0) -> dict[str, str | None]:
    """The configuration with the highest pass rate (``"pass_rate"``) and mean score
    (``"mean_score"``), each only where its difference from every other configuration is
    significant (McNemar p < ``alpha``; the bootstrap interval excluding 0); None otherwise."""
    summary = summarize_evaluation(answers)
    best: dict[str, str | None] = {"pass_rate": None, "mean_score": None}
    if len(summary) < 2:
        return best
    for metric in best:
        values = summary[["config", metric]].dropna()
        if values.empty:
            continue
        top = values.sort_values(metric, ascending=False, kind="stable").iloc[0]["config"]
        others = [c for c in summary["config"] if c != top]
        tests = [paired_comparison(answers, other, top, resamples=resamples, seed=seed, alpha=alpha) for other in others]
        if metric == "pass_rate" and all(t.pass_significant and t.pass_difference > 0 for t in tests):
            best[metric] = top
        if metric == "mean_score" and all(t.score_significant and t.score_difference > 0 for t in tests):
            best[metric] = top
    return best


def judge_agreement(scores: "pd.DataFrame", judges: list[str] | None = None) -> "pd.DataFrame":
    """How far several judges agree on the same (answer, assertion) units: Cohen's kappa on the
    pass flags of each pair of judges, and Krippendorff's alpha over all judges (nominal on the
    pass flags, interval on the scores). Unscored verdicts are missing values. ``judges``: their
    order (default: as they appear). Empty with fewer than two judges."""
    import pandas as pd

    judged = scores[scores["judge"].notna()]
    judges = list(judges) if judges is not None else list(dict.fromkeys(judged["judge"]))
    columns = ["judges", "units", "cohen_kappa", "alpha_pass", "alpha_score"]
    if len(judges) < 2:
        return pd.DataFrame(columns=columns)
    passes = judged.pivot_table(index=["answer", "assertion_index"], columns="judge", values="passed",
                                aggfunc="first", dropna=False)
    values = judged.pivot_table(index=["answer", "assertion_index"], columns="judge", values="score",
                                aggfunc="first", dropna=False)

    def column(frame: "pd.DataFrame", judge: str) -> list[Any]:
        if judge not in frame.columns:
            return [None] * len(frame)
        return [None if pd.isna(v) else v for v in frame[judge]]

    records = []
    for i, first in enumerate(judges):
        for second in judges[i + 1:]:
            a, b = column(passes, first), column(passes, second)
            records.append({"judges": f"{first} / {second}", "units": sum(x is not None and y is not None
                                                                        for x, y in zip(a, b)),
                            "cohen_kappa": cohen_kappa([None if x is None else bool(x) for x in a],
                                                       [None if y is None else bool(y) for y in b]),
                            "alpha_pass": math.nan, "alpha_score": math.nan})
    pass_rows = [[None if v is None else int(bool(v)) for v in column(passes, j)] for j in judges]
    score_rows = [[None if v is None else float(v) for v in column(values, j)] for j in judges]
    records.append({"judges": "all", "units": len(passes), "cohen_kappa": math.nan,
                    "alpha_pass": krippendorff_alpha(pass_rows, "nominal"),
                    "alpha_score": krippendorff_alpha(score_rows, "interval")})
    return pd.DataFrame.from_records(records, columns=columns)


__all__ = ["DEFAULT_ALPHA", "PairedComparison", "best_configurations", "config_order", "config_summary",
           "flaky_items", "item_passes", "judge_agreement", "paired_comparison", "summarize_evaluation"]
