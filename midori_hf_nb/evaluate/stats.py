"""The statistics of an evaluation, each with the source of its formula.

Pure functions on plain numbers (numpy for the resampling and the coincidence matrix, the
standard library for binomial sums and normal quantiles), tested on the worked examples of their
sources:

* :func:`wilson_interval`: a pass rate's confidence interval (Wilson 1927; Newcombe 1998);
* :func:`mean_interval`: a mean score, its standard error and a normal interval, computed over
  items after averaging each item's repeats (Miller 2024);
* :func:`pass_at_k` and :func:`pass_hat_k`: the chance that at least one of / all of ``k``
  attempts pass (Chen et al. 2021; Yao et al. 2024);
* :func:`mcnemar_exact`: the exact (conditional) McNemar test of paired pass/fail outcomes
  (McNemar 1947; Fagerland, Lydersen and Laake 2013);
* :func:`paired_bootstrap`: a percentile bootstrap interval of a mean paired difference
  (Efron and Tibshirani 1993; Koehn 2004);
* :func:`cohen_kappa` and :func:`krippendorff_alpha`: agreement between judges (Cohen 1960;
  Krippendorff 2011).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Sequence

#: the most resamples :func:`paired_bootstrap` draws at once (bounds its memory)
BOOTSTRAP_CHUNK = 1000


def normal_quantile(confidence: float) -> float:
    """The two-sided standard normal quantile of ``confidence`` (1.959964 for 0.95)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} is not allowed: expected a number between 0 and 1")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n``.

    Source: E. B. Wilson, "Probable inference, the law of succession, and statistical inference",
    JASA 22 (1927) 209-212; as method 3 of R. G. Newcombe, "Two-sided confidence intervals for the
    single proportion: comparison of seven methods", Statistics in Medicine 17 (1998) 857-872:

        centre = (p + z²/2n) / (1 + z²/n),  half-width = z √(p(1-p)/n + z²/4n²) / (1 + z²/n)

    with ``p = successes / n`` and ``z`` the normal quantile. Unlike the normal (Wald) interval it
    stays inside [0, 1] and is not empty at 0 or n successes. ``(nan, nan)`` for ``n = 0``.
    Repeats of one item are not independent trials, so over repeated items the interval is
    narrower than the truth; :func:`mean_interval` averages repeats per item first.
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"wilson_interval: successes={successes!r}, n={n!r}: expected 0 <= successes <= n")
    if n == 0:
        return math.nan, math.nan
    z = normal_quantile(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class MeanEstimate:
    """A mean with its standard error and a two-sided interval over ``n`` values."""

    mean: float
    se: float
    low: float
    high: float
    n: int


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> MeanEstimate:
    """The mean of ``values`` (one per item: the mean of its repeats), its standard error
    ``s / √n`` (``s`` the sample standard deviation) and the interval ``mean ± z·SE``.

    Source: E. Miller, "Adding Error Bars to Evals: A Statistical Approach to Language Model
    Evaluations", arXiv:2411.00640 (2024), sections 2-3: the central-limit standard error of an
    eval's mean; with several samples of one question, average them first and take the standard
    error over questions. The normal quantile (not Student's t) is the paper's; with few items
    the interval is somewhat too narrow. SE and interval are nan for fewer than two values.
    """
    clean = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(clean)
    if n == 0:
        return MeanEstimate(math.nan, math.nan, math.nan, math.nan, 0)
    mean = sum(clean) / n
    if n < 2:
        return MeanEstimate(mean, math.nan, math.nan, math.nan, n)
    variance = sum((v - mean) ** 2 for v in clean) / (n - 1)
    se = math.sqrt(variance / n)
    z = normal_quantile(confidence)
    return MeanEstimate(mean, se, mean - z * se, mean + z * se, n)


def _check_counts(n: int, c: int, k: int, where: str) -> None:
    if not (0 <= c <= n) or k < 1:
        raise ValueError(f"{where}: n={n!r}, c={c!r}, k={k!r}: expected 0 <= c <= n and k >= 1")


def pass_at_k(n: int, c: int, k: int) -> float:
    """The chance that at least one of ``k`` attempts passes, from ``c`` passes in ``n`` attempts.

    Source: M. Chen et al., "Evaluating Large Language Models Trained on Code", arXiv:2107.03374
    (2021), equation 1, the unbiased estimator ``1 - C(n-c, k) / C(n, k)``. nan when ``k > n``.
    """
    _check_counts(n, c, k, "pass_at_k")
    if k > n:
        return math.nan
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_hat_k(n: int, c: int, k: int) -> float:
    """pass^k: the chance that all of ``k`` attempts pass, from ``c`` passes in ``n`` attempts.

    Source: S. Yao et al., "τ-bench: A Benchmark for Tool-Agent-User Interaction in Real-World
    Domains", arXiv:2406.12045 (2024), section 5, the unbiased estimator ``C(c, k) / C(n, k)``.
    nan when ``k > n``.
    """
    _check_counts(n, c, k, "pass_hat_k")
    if k > n:
        return math.nan
    return math.comb(c, k) / math.comb(n, k)


def mcnemar_exact(b: int, c: int) -> float:
    """The two-sided p-value of McNemar's exact test for paired binary outcomes.

    ``b``: pairs where the first configuration passed and the second failed; ``c``: the reverse
    (the concordant pairs do not enter). Under the null hypothesis ``b ~ Binomial(b + c, 1/2)``,
    and the p-value is ``min(1, 2·P(X <= min(b, c)))``.

    Source: Q. McNemar, "Note on the sampling error of the difference between correlated
    proportions or percentages", Psychometrika 12 (1947) 153-157; the exact conditional form as
    in M. W. Fagerland, S. Lydersen and P. Laake, "The McNemar test for binary matched-pairs
    data: mid-p and asymptotic are better than exact conditional", BMC Medical Research
    Methodology 13:91 (2013), equation 2 (their worked example: b=1, c=7 gives p=0.070).
    1.0 when there is no discordant pair.
    """
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar_exact: b={b!r}, c={c!r}: expected counts >= 0")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_bootstrap(differences: Sequence[float], *, resamples: int = 10_000, confidence: float = 0.95,
                     seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of paired ``differences`` (one per item).

    Items are resampled with replacement ``resamples`` times (numpy's generator seeded with
    ``seed``, so the interval is reproducible) and the interval is the ``(1-confidence)/2`` and
    ``(1+confidence)/2`` quantiles of the resampled means.

    Source: B. Efron and R. J. Tibshirani, "An Introduction to the Bootstrap", Chapman & Hall
    (1993), chapter 13 (the percentile interval); resampling the paired test items as in
    P. Koehn, "Statistical Significance Tests for Machine Translation Evaluation", EMNLP 2004.
    ``(nan, nan)`` without differences.
    """
    import numpy as np

    values = np.asarray([float(d) for d in differences if d is not None and not math.isnan(float(d))])
    if resamples < 1:
        raise ValueError(f"paired_bootstrap: resamples={resamples!r} is not allowed: expected a positive integer")
    normal_quantile(confidence)  # checks it
    if values.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        count = min(BOOTSTRAP_CHUNK, resamples - start)
        picks = rng.integers(0, values.size, size=(count, values.size))
        means.append(values[picks].mean(axis=1))
    all_means = np.concatenate(means)
    tail = (1 - confidence) / 2
    low, high = np.quantile(all_means, [tail, 1 - tail])
    return float(low), float(high)


def cohen_kappa(first: Sequence[Any], second: Sequence[Any]) -> float:
    """Cohen's kappa between two raters' labels of the same units (pairs with a missing label,
    None, are left out).

    ``κ = (p_o - p_e) / (1 - p_e)`` with ``p_o`` the observed agreement and ``p_e`` the agreement
    expected from each rater's own label frequencies. Source: J. Cohen, "A coefficient of
    agreement for nominal scales", Educational and Psychological Measurement 20 (1960) 37-46,
    equation 1. nan without pairs, or when both raters always give one and the same label.
    """
    if len(first) != len(second):
        raise ValueError(f"cohen_kappa: {len(first)} and {len(second)} labels: expected one label per unit from each")
    pairs = [(a, b) for a, b in zip(first, second) if not _missing(a) and not _missing(b)]
    if not pairs:
        return math.nan
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    labels = {a for a, _ in pairs} | {b for _, b in pairs}
    expected = sum((sum(a == lab for a, _ in pairs) / n) * (sum(b == lab for _, b in pairs) / n) for lab in labels)
    if expected == 1:
        return math.nan
    return (observed - expected) / (1 - expected)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def krippendorff_alpha(data: Sequence[Sequence[Any]], level: str = "nominal") -> float:
    """Krippendorff's alpha of ``data``: one row per rater (judge), one column per unit, None (or
    nan) where a rater gave no value.

    ``α = 1 - (n - 1) · Σ o_ck δ²_ck / Σ n_c n_k δ²_ck`` over the coincidence matrix ``o`` of the
    pairable values (units with at least two values), ``n_c`` its margins and ``n`` their sum;
    ``δ²`` is 0/1 for ``level="nominal"`` and ``(c - k)²`` for ``level="interval"``. Source:
    K. Krippendorff, "Computing Krippendorff's Alpha-Reliability", University of Pennsylvania
    (2011), section C (its 4 x 12 example with missing values gives α = 0.743 nominal).
    nan when fewer than two values are pairable or every pairable value is the same.
    """
    import numpy as np

    if level not in ("nominal", "interval"):
        raise ValueError(f"krippendorff_alpha: level={level!r} is not allowed: expected 'nominal' or 'interval'")
    rows = [list(row) for row in data]
    if not rows or len({len(row) for row in rows}) != 1:
        raise ValueError("krippendorff_alpha: expected rows of equal length: one row per rater, one column per unit")
    units = [[row[u] for row in rows if not _missing(row[u])] for u in range(len(rows[0]))]
    units = [values for values in units if len(values) >= 2]
    labels = sorted({v for values in units for v in values}, key=lambda v: (str(type(v)), v))
    if len(labels) < 2:
        return math.nan
    index = {label: i for i, label in enumerate(labels)}
    coincidences = np.zeros((len(labels), len(labels)))
    for values in units:
        counts = np.zeros(len(labels))
        for v in values:
            counts[index[v]] += 1
        # ordered pairs of different values in the unit, each weighted 1 / (m_u - 1)
        coincidences += (np.outer(counts, counts) - np.diag(counts)) / (len(values) - 1)
    margins = coincidences.sum(axis=1)
    n = margins.sum()
    if level == "nominal":
        delta = 1.0 - np.eye(len(labels))
    else:
        points = np.asarray([float(label) for label in labels])
        delta = (points[:, None] - points[None, :]) ** 2
    expected = (np.outer(margins, margins) * delta).sum()
    if expected == 0:
        return math.nan
    return float(1.0 - (n - 1) * (coincidences * delta).sum() / expected)


__all__ = ["BOOTSTRAP_CHUNK", "MeanEstimate", "cohen_kappa", "krippendorff_alpha", "mcnemar_exact", "mean_interval",
           "normal_quantile", "paired_bootstrap", "pass_at_k", "pass_hat_k", "wilson_interval"]
