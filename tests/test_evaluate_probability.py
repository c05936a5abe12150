"""A judge's verdict probability: the probability its token records give the verdict's pass flag.

On the tiny random model, a logits processor forces a verdict's text up to its ``"pass":`` and
then leaves a chosen distribution over the tokens that may spell the flag; the verdict schema's
constraint runs beside it, so the probability read back is the one the judge drew the flag from.
The reading itself (which tokens spell the flag, summed over the recorded alternatives) is checked
on hand-built records, including a server's, which carry raw log-probabilities only: on the random
model the spellings a test chooses are not among the alternatives recorded, the model's own top ones.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LogitsProcessor

from midori_hf_nb import Judge, evaluate, make_payload
from midori_hf_nb.evaluate.verdicts import VERDICT_TOP_LOGPROBS, verdict_probability
from midori_hf_nb.logprobs import Logprobs, TokenLogprob, TopLogprob
from midori_hf_nb.testing import ScriptedAgent, ScriptedOutput

from .conftest import loaded_agent, run

HEAD = '{"reason": "ok", "score": 1, "pass":'
ITEM = [{"prompt": "Capital of France?", "assert": [{"type": "llm-rubric", "value": "names Paris"}]}]


class FlagChoice(LogitsProcessor):
    """Forces ``HEAD``, then at the flag's step leaves only the tokens of ``choice`` with the given
    probabilities, then forces ``}`` and the end: one generation per instance."""

    def __init__(self, tokenizer, choice: dict[str, float]) -> None:
        self.head = tokenizer.encode(HEAD, add_special_tokens=False)
        self.tail = tokenizer.encode("}", add_special_tokens=False) + [tokenizer.eos_token_id]
        self.choice = {}
        for text, p in choice.items():
            ids = tokenizer.encode(text, add_special_tokens=False)
            assert len(ids) == 1, f"{text!r} is not one token"
            self.choice[ids[0]] = math.log(p)
        self.start: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.start is None:
            self.start = input_ids.shape[1]
        step = input_ids.shape[1] - self.start
        out = torch.full_like(scores, float("-inf"))
        if step < len(self.head):
            out[:, self.head[step]] = 0.0
        elif step == len(self.head):
            for token, value in self.choice.items():
                out[:, token] = value
        else:
            out[:, self.tail[min(step - len(self.head) - 1, len(self.tail) - 1)]] = 0.0
        return out


@pytest.fixture(scope="module")
def tiny_agent(tiny_model):
    yield from loaded_agent(tiny_model, max_new_tokens=48)


def judged(agent, choice, **judge_options):
    tokenizer = agent.loaded_model.tokenizer
    judge = Judge(agent, settings={"logits_processor": [FlagChoice(tokenizer, choice)]}, cache=False,
                  **judge_options)
    ev = evaluate(ITEM, settings={"logits_processor": [[ScriptedOutput(tokenizer, "Paris.")]]}, models=agent,
                  judge=judge, progress=False)
    return judge, ev.scores.iloc[0]


@pytest.mark.parametrize("choice, passed, expected", [
    ({" true": 0.7, " false": 0.3}, True, 0.7),
    ({" true": 0.2, " false": 0.8}, False, 0.8),
    # the schema's constraint writes a space after the colon: "true" had no chance when the flag was drawn
    ({" true": 0.45, "true": 0.2, " false": 0.35}, True, 0.45 / 0.8),
])
def test_a_local_judge_fills_the_probability_it_drew_the_flag_from(tiny_agent, choice, passed, expected):
    judge, row = judged(tiny_agent, choice)
    assert judge.settings["top_logprobs"] == VERDICT_TOP_LOGPROBS
    assert row["judge_status"] == "scored" and bool(row["passed"]) is passed
    assert row["verdict_probability"] == pytest.approx(expected, abs=1e-5)


def test_a_judge_told_not_to_record_them_leaves_it_empty(tiny_agent):
    tokenizer = tiny_agent.loaded_model.tokenizer
    judge = Judge(tiny_agent, settings={"logits_processor": [FlagChoice(tokenizer, {" true": 0.7, " false": 0.3})],
                                        "logprobs": False}, cache=False)
    ev = evaluate(ITEM, settings={"logits_processor": [[ScriptedOutput(tokenizer, "Paris.")]]}, models=tiny_agent,
                  judge=judge, progress=False)
    assert "top_logprobs" not in judge.settings
    assert ev.scores.iloc[0]["judge_status"] == "scored" and ev.scores["verdict_probability"].isna().all()


def test_an_agent_without_probabilities_is_not_asked_for_them():
    agent = ScriptedAgent(['{"reason": "fine", "score": 1, "pass": true}'])
    judge = Judge(agent)
    assert "top_logprobs" not in judge.settings
    ev = evaluate(ITEM, settings=None, models=ScriptedAgent(["Paris."]), judge=judge, progress=False)
    assert ev.scores.iloc[0]["judge_status"] == "scored" and ev.scores["verdict_probability"].isna().all()


def record(token, logprob, alternatives=(), processed=None):
    return TokenLogprob(token, logprob, top_logprobs=[TopLogprob(t, lp, processed_logprob=p)
                                                       for t, lp, p in alternatives],
                        processed_logprob=processed)


def test_which_tokens_spell_the_flag():
    lp = math.log
    # the flag's value begins inside a token that also closes the key
    head = [record('{"reason": "a \\"pass\\": false", "score": 1, "pass', lp(0.9))]
    flag = record('": true', lp(0.5), [('": true', lp(0.5), None), ('":true', lp(0.1), None),
                                       ('": t', lp(0.05), None), ('": false', lp(0.2), None),
                                       ('": trueish', lp(0.04), None), ('":', lp(0.1), None)])
    served = Logprobs(content=[*head, flag, record("}", 0.0)])
    assert verdict_probability(served) == pytest.approx(0.65)  # raw: a server's records have no processed ones
    assert verdict_probability(served, passed=True) == pytest.approx(0.65)
    assert verdict_probability(served, passed=False) is None  # the tokens disagree with the parsed flag
    local = Logprobs(content=[*head, record(" false", lp(0.3), [(" false", lp(0.3), lp(0.6)),
                                                              (" true", lp(0.5), lp(0.4)),
                                                              (" f", lp(0.1), None)], processed=lp(0.6))])
    local.content[0] = record(head[0].token + '":', lp(0.9))
    assert verdict_probability(local) == pytest.approx(0.6)  # processed: " f" had no chance when drawn
    assert verdict_probability(Logprobs(content=[record("no verdict", 0.0)])) is None
    assert verdict_probability(None) is None
    assert verdict_probability({"content": "not a list"}) is None  # malformed records are no probability


@pytest.mark.slow
def test_the_default_model_as_judge_gives_each_verdict_its_probability(default_agent):
    judge = Judge(default_agent, max_reason_chars=60, cache=False, batch_size=1)
    items = [{"prompt": q, "assert": [{"type": "llm-rubric", "value": "The answer names a city."}]}
             for q in ("What is the capital of France?", "What is 2 + 2?")]
    ev = evaluate(items, settings={"max_new_tokens": [12]}, models=default_agent, judge=judge, progress=False)
    for row in ev.scores.itertuples():
        assert row.judge_status == "scored"
        # the same call again, its token records kept: the verdict's probability is read from them
        response = run(default_agent.invoke(make_payload(row.judge_prompt, row.judge_system), **judge.settings))
        assert response.response == row.judge_raw
        records = response.logprobs.content
        flag = next(i for i in range(len(records) - 1, -1, -1) if records[i].token.strip() in ("true", "false"))
        passed = records[flag].token.strip() == "true"
        assert passed == bool(row.passed)
        chosen = records[flag].processed_prob
        other = sum(a.processed_prob for a in records[flag].top_logprobs
                    if a.token.strip() == ("false" if passed else "true"))
        assert row.verdict_probability == pytest.approx(verdict_probability(response), abs=1e-6)
        assert chosen - 1e-6 <= row.verdict_probability <= 1 - other + 1e-6
        assert 0 < row.verdict_probability <= 1
