"""Honest comparison timings: compare() warms each model up before it times anything, so the order of
the grid does not change the speed columns (issue: the first setting of notebook 04 showed 1.5 tokens/s
against 13.5 for the second, and swapping them swapped the figures)."""

from __future__ import annotations

import pytest

from midori_hf_nb import DEFAULT_MODEL, HuggingFaceLocalAgent
from midori_hf_nb.compare import compare
from midori_hf_nb.compare.frames import summarize
from midori_hf_nb.testing import ScriptedAgent

REPLY = "A steady answer of forty characters long."  # 11 pieces of 4 characters


class ColdStart(ScriptedAgent):
    """A scripted agent whose first call is slow (as a model's first forward pass is) and whose
    speed otherwise depends on the setting: ``top_k=10`` streams twice as fast as ``top_k=20``."""

    COLD_DELAY = 0.06  # seconds per piece of the very first call
    DELAYS = {10: 0.004, 20: 0.008}

    def stream(self, payload, *, events=False, **overrides):
        self.delay = self.COLD_DELAY if not self.calls else self.DELAYS[overrides.get("top_k", 20)]
        return super().stream(payload, events=events, **overrides)


def speeds(order: list[int], warmup: bool | None) -> dict[int, float]:
    """tokens/s per top_k setting (summarize's aggregate) for a grid whose settings come in ``order``."""
    agent = ColdStart(REPLY)
    df = compare(["one", "two", "three"], settings={"top_k": order}, models={"cold": agent}, concurrency=1,
                 progress=False, warmup=warmup)
    assert (df["status"] == "ok").all()
    summary = summarize(df)
    return {int(config.split("=")[1]): tps for config, tps in zip(summary["config"], summary["tokens_per_second"])}


def test_the_warm_up_is_not_charged_to_the_first_configuration():
    for order in ([10, 20], [20, 10]):
        measured = speeds(order, warmup=True)
        assert measured[10] > 1.4 * measured[20], (order, measured)  # the true ranking, in both orders


def test_without_the_warm_up_the_order_decides_the_ranking():
    """The same grid without warm-up: the first configuration pays for the cold call (the bug)."""
    measured = speeds([10, 20], warmup=False)
    assert measured[10] < measured[20], measured  # the faster setting ranks last when it runs first


def test_the_warm_up_of_an_agent_without_batching_is_opt_in_and_reported():
    agent = ColdStart(REPLY)
    events = []
    df = compare(["one"], settings={"top_k": [10]}, models={"cold": agent}, progress=False,
                 on_event=lambda e: events.append((e.kind, e.seconds)))
    assert len(agent.calls) == 1 and df.attrs["warmup_seconds"] == {}  # default: no extra call to such an agent
    agent = ColdStart(REPLY)
    events.clear()
    df = compare(["one"], settings={"top_k": [10]}, models={"cold": agent}, progress=False, warmup=True,
                 on_event=lambda e: events.append((e.kind, e.seconds)))
    assert len(agent.calls) == 2 and agent.calls[0].overrides == {"max_new_tokens": 8}
    warmups = [seconds for kind, seconds in events if kind == "warmup"]
    assert len(warmups) == 1 and warmups[0] >= 2 * ColdStart.COLD_DELAY  # the cold call, reported apart
    assert df.attrs["warmup_seconds"] == {"cold": warmups[0]}
    assert df["seconds"].iloc[0] < warmups[0]


@pytest.mark.parametrize("warmup", ["yes", 1, 0.0])
def test_warmup_is_checked(warmup):
    with pytest.raises(ValueError, match="warmup="):
        compare(["one"], models=ScriptedAgent("x"), progress=False, warmup=warmup)


@pytest.mark.slow
def test_a_local_model_is_warmed_up_before_its_first_configuration():
    """The default model, loaded by compare (the case of notebook 04): the first configuration's tokens/s
    is not an outlier. Measured in fresh processes without the warm-up, the first of two settings ran at
    a third of the second's speed in either order; with it, the ranking held in both orders."""
    agent = HuggingFaceLocalAgent(DEFAULT_MODEL, progress=False, do_sample=False, stop_on_repetition=False)
    events = []
    df = compare(["What is the capital of France?", "Name three fruits."], settings={"max_new_tokens": [16, 17, 18]},
                 models=agent, progress=False, on_event=lambda e: events.append(e.kind))
    assert events.index("warmup") < events.index("batch")
    assert (df["status"] == "ok").all()
    speeds = summarize(df)["tokens_per_second"].tolist()
    others = sorted(speeds[1:])
    assert speeds[0] > 0.7 * others[len(others) // 2], speeds  # cold, the first ran at a third to a half of the others
