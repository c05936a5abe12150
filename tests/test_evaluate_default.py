"""A paired comparison of two system prompts on the offline default model, end to end: 40 items x
3 repeats, a deterministic check and the same small model as a constrained judge."""

from __future__ import annotations

import json
import re

import pytest

from midori_hf_nb import Judge, evaluate


def sums(count: int) -> list[dict]:
    out = []
    for i in range(count):
        a, b = 3 + (7 * i) % 41, 2 + (11 * i) % 37
        out.append({"prompt": f"What is {a} + {b}?", "expected": str(a + b), "id": f"sum-{i}",
                    "assert": [{"type": "contains"},
                               {"type": "llm-rubric", "value": f"The answer states that the sum is {a + b}."}]})
    return out


@pytest.mark.slow
def test_a_paired_comparison_of_two_system_prompts_on_the_default_model(default_agent):
    pytest.importorskip("IPython")
    from midori_hf_nb.notebook import scoreboard

    judge = Judge(default_agent, max_reason_chars=80)
    ev = evaluate(sums(40), systems={"terse": "Answer with the number only.",
                                     "tutor": "You are a patient maths tutor. Explain briefly."},
                  settings={"temperature": [0.7], "max_new_tokens": [12]}, models=default_agent, judge=judge,
                  repeats=3, seed=0, progress=False)
    assert len(ev.answers) == 240 and (ev.answers["status"] == "ok").all()
    judged = ev.scores[ev.scores["judge"].notna()]
    assert len(judged) == 240  # one verdict per answer
    counts = ev.verdict_counts()
    assert counts["scored"] == 240 and counts["unscored"] == counts["error"] == counts["not run"] == 0
    asked = 240 - counts["cached"]
    assert asked == judged["judge_prompt"].nunique() and asked > 80  # sampled repeats differ: most are asked
    for raw in judged["judge_raw"]:  # every verdict's own text parses to the schema's three fields
        assert set(json.loads(raw)) == {"reason", "score", "pass"}
    assert ev.answers["passed"].notna().all()

    summary = ev.summary().set_index("config")
    assert list(summary.index) == ["terse", "tutor"]
    for config in summary.index:
        row = summary.loc[config]
        assert row["scored"] == 120 and row["items"] == 40 and row["k"] == 3
        assert 0 <= row["pass_low"] <= row["pass_rate"] <= row["pass_high"] <= 1
        assert row["score_low"] <= row["mean_score"] <= row["score_high"] and row["score_se"] > 0
        assert row["pass_hat_k"] <= row["pass_rate"] <= row["pass_at_k"] or row["pass_rate"] in (0, 1)
    paired = ev.paired("terse", "tutor")
    assert paired.pairs == 120 and paired.items == 40 and 0 < paired.mcnemar_p <= 1
    assert paired.score_low <= paired.score_difference <= paired.score_high

    html = scoreboard(ev).to_html()
    intervals = re.findall(r"\d\.\d\d \[\d\.\d\d, \d\.\d\d\]", html)
    assert len(intervals) >= 4  # pass rate and mean score of both configurations, with their intervals
