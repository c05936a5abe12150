"""The evaluation's statistics on constructed data, against the worked examples of their sources.

Each expected value comes from the publication the formula's docstring cites, so a wrong formula
(a Wald instead of a Wilson interval, a one-sided McNemar p, pass@k without the unbiased
estimator, kappa without chance correction) fails here.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from midori_hf_nb.evaluate.stats import (
    cohen_kappa,
    krippendorff_alpha,
    mcnemar_exact,
    mean_interval,
    paired_bootstrap,
    pass_at_k,
    pass_hat_k,
    wilson_interval,
)
from midori_hf_nb.evaluate.summary import best_configurations, flaky_items, paired_comparison, summarize_evaluation

N = None


@pytest.mark.parametrize("successes, n, low, high", [
    # Newcombe (1998), Table I, method 3 (Wilson score interval without continuity correction)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_interval_matches_newcombe_table_1(successes, n, low, high):
    got = wilson_interval(successes, n)
    assert got[0] == pytest.approx(low, abs=5e-5)
    assert got[1] == pytest.approx(high, abs=5e-5)


def test_wilson_interval_is_not_the_wald_interval_and_refuses_impossible_counts():
    # Wald at 0/20 is [0, 0]; Wilson is not empty
    assert wilson_interval(0, 20)[1] > 0.15
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 3)


def test_mcnemar_exact_matches_fagerland_worked_example():
    # Fagerland, Lydersen & Laake (2013): b=1, c=7 discordant pairs -> exact conditional p = 0.070
    assert mcnemar_exact(1, 7) == pytest.approx(0.0703125, abs=1e-9)  # 2 * 9/256
    assert mcnemar_exact(7, 1) == mcnemar_exact(1, 7)  # two-sided: symmetric
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0  # capped at 1
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)


def test_pass_at_k_and_pass_hat_k_follow_their_unbiased_estimators():
    # Chen et al. (2021): 1 - C(n-c, k) / C(n, k)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)
    assert pass_at_k(3, 0, 3) == 0.0
    assert pass_at_k(3, 1, 3) == 1.0
    assert math.isnan(pass_at_k(2, 1, 3))
    # Yao et al. (2024): C(c, k) / C(n, k)
    assert pass_hat_k(10, 3, 2) == pytest.approx(3 / 45)
    assert pass_hat_k(3, 3, 3) == 1.0
    assert pass_hat_k(3, 2, 3) == 0.0


def test_cohen_kappa_matches_the_two_rater_example():
    # 50 units: both yes 20, A yes / B no 5, A no / B yes 10, both no 15 -> p_o = 0.7, p_e = 0.5, kappa = 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a + [None], b + ["yes"]) == pytest.approx(0.4)  # a missing label leaves its unit out
    assert math.isnan(cohen_kappa(["yes"] * 4, ["yes"] * 4))


def test_krippendorff_alpha_matches_krippendorff_2011_and_the_reference_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers x 12 units
    data = [[1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
            [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
            [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
            [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N]]
    assert krippendorff_alpha(data, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(data, "interval") == pytest.approx(0.849, abs=5e-4)
    # the 3 coders x 15 units example of the reference article (nominal 0.691, interval 0.811)
    rows = ["*    *    *    *    *    3    4    1    2    1    1    3    3    *    3",
            "1    *    2    1    3    3    4    3    *    *    *    *    *    *    *",
            "*    *    2    1    3    4    4    *    2    1    1    3    3    *    4"]
    coded = [[None if v == "*" else int(v) for v in row.split()] for row in rows]
    assert krippendorff_alpha(coded, "nominal") == pytest.approx(0.691, abs=5e-4)
    assert krippendorff_alpha(coded, "interval") == pytest.approx(0.811, abs=5e-4)


def test_mean_interval_averages_repeats_per_item_first():
    estimate = mean_interval([0.0, 1.0, 0.5, 0.5])
    assert estimate.mean == pytest.approx(0.5)
    assert estimate.se == pytest.approx(math.sqrt((0.25 + 0.25) / 3 / 4))
    assert estimate.low == pytest.approx(0.5 - 1.959964 * estimate.se, abs=1e-6)
    assert math.isnan(mean_interval([0.7]).se)


def test_paired_bootstrap_is_reproducible_and_brackets_the_mean_difference():
    assert paired_bootstrap([0.25] * 12) == (0.25, 0.25)
    diffs = [0.0, 1.0, 0.5, 1.0, 0.0, 0.5, 1.0, 1.0]
    low, high = paired_bootstrap(diffs, seed=3)
    assert low < sum(diffs) / len(diffs) < high
    assert paired_bootstrap(diffs, seed=3) == (low, high)
    assert 0 <= low and high <= 1


def _answers(configs: dict[str, list[list[bool]]], scores: dict[str, list[list[float]]] | None = None) -> pd.DataFrame:
    """A constructed answers table: configs -> item -> repeat -> passed (and score)."""
    records = []
    for config, items in configs.items():
        for i, repeats in enumerate(items):
            for r, passed in enumerate(repeats):
                score = scores[config][i][r] if scores else float(passed)
                records.append({"config": config, "item": str(i), "repeat": r, "status": "ok", "passed": passed,
                                "score": score, "description": f"item {i}"})
    frame = pd.DataFrame.from_records(records)
    frame["passed"] = frame["passed"].astype("boolean")
    return frame


def test_summary_paired_comparison_and_best_on_constructed_data():
    # 20 items, 1 repeat: A passes 5, B passes 17 (B wins on 12 items, A on none)
    answers = _answers({"A": [[i < 5] for i in range(20)], "B": [[i < 17] for i in range(20)]})
    summary = summarize_evaluation(answers).set_index("config")
    assert summary.loc["A", "pass_rate"] == 0.25 and summary.loc["B", "pass_rate"] == 0.85
    assert (summary.loc["A", "pass_low"], summary.loc["A", "pass_high"]) == pytest.approx(wilson_interval(5, 20))
    paired = paired_comparison(answers, "A", "B")
    assert (paired.only_a, paired.only_b, paired.pairs) == (0, 12, 20)
    assert paired.mcnemar_p == pytest.approx(mcnemar_exact(0, 12))
    assert paired.pass_difference == pytest.approx(0.6)
    assert paired.pass_significant and paired.score_significant
    assert best_configurations(answers) == {"pass_rate": "B", "mean_score": "B"}


def test_best_is_not_marked_when_the_difference_is_not_significant():
    # one discordant pair: B looks better, McNemar p = 1
    answers = _answers({"A": [[i < 5] for i in range(10)], "B": [[i < 6] for i in range(10)]})
    assert best_configurations(answers) == {"pass_rate": None, "mean_score": None}


def test_pass_at_k_over_repeats_and_flaky_items():
    answers = _answers({"A": [[True, False, False], [True, True, True], [False, False, False]]})
    row = summarize_evaluation(answers).iloc[0]
    assert row["k"] == 3
    assert row["pass_at_k"] == pytest.approx((1 + 1 + 0) / 3)
    assert row["pass_hat_k"] == pytest.approx((0 + 1 + 0) / 3)
    assert row["flaky_items"] == 1
    flaky = flaky_items(answers)
    assert list(flaky["item"]) == ["0"] and flaky.iloc[0]["passes"] == 1


def test_unscored_answers_are_counted_and_never_passes():
    answers = _answers({"A": [[True], [True], [True]]})
    answers.loc[1, "passed"] = pd.NA
    answers.loc[1, "score"] = math.nan
    row = summarize_evaluation(answers).iloc[0]
    assert (row["scored"], row["unscored"], row["passes"]) == (2, 1, 2)
