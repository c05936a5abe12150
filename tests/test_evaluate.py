"""evaluate() end to end: answers, deterministic scores, judges (local under the verdict schema,
served-like scripted ones), caching, interruption, promptfoo configurations, exports and views.

Claims about what the local agent does as a judge use real generation on the tiny random model,
with the exact answers and verdicts forced by ScriptedOutput (the verdict schema's constraint
runs beside it). The evaluation's own mechanics on any protocol agent (unscored verdicts, the
cache, an interrupt, several judges) use scripted agents.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from midori_hf_nb import HuggingFaceLocalAgent, Judge, evaluate
from midori_hf_nb.evaluate import VERDICT_SCHEMA, load_promptfoo
from midori_hf_nb.served.config import OpenAIConfig
from midori_hf_nb.served.request import request_body, resolve_served_settings
from midori_hf_nb.testing import ScriptedAgent, ScriptedOutput

from .conftest import loaded_agent

PASS = '{"reason": "names Paris", "score": 0.9, "pass": true}'
FAIL = '{"reason": "wrong city", "score": 0.1, "pass": false}'
WEAK = '{"reason": "names Paris, barely", "score": 0.4, "pass": true}'


@pytest.fixture(scope="module")
def tiny_agent(tiny_model):
    yield from loaded_agent(tiny_model, max_new_tokens=48)


def flags(series):
    """A nullable boolean column as Python values (None where missing)."""
    return [None if pd.isna(v) else bool(v) for v in series]


def forced(agent, *texts):
    return [ScriptedOutput(agent.loaded_model.tokenizer, list(texts))]


def test_local_judge_verdicts_under_the_schema_are_read_exactly(tiny_agent):
    answers = ["Paris.", "Lyon.", "Paris!"]
    items = [{"prompt": f"Capital of France? ({i})", "assert": [{"type": "llm-rubric", "value": "names Paris",
                                                                "threshold": 0.5}]} for i in range(3)]
    judge = Judge(tiny_agent, settings={"logits_processor": forced(tiny_agent, PASS, FAIL, WEAK)}, batch_size=1, seed=7)
    ev = evaluate(items, settings={"logits_processor": [forced(tiny_agent, *answers)]}, models=tiny_agent,
                  judge=judge, batch_size=1, progress=False)
    assert list(ev.answers["response"]) == answers
    scores = ev.scores
    assert list(scores["judge_status"]) == ["scored"] * 3
    assert list(scores["score"]) == [0.9, 0.1, 0.4]
    assert list(scores["passed"]) == [True, False, False]  # the third passes the judge but not the threshold
    assert "threshold 0.5" in scores["reason"].iloc[2]
    assert list(ev.answers["passed"]) == [True, False, False]
    assert [json.loads(raw) for raw in scores["judge_raw"]] == [json.loads(v) for v in (PASS, FAIL, WEAK)]
    assert list(scores["judge_seed"]) == [7, 8, 9]  # batch k of the judge's calls runs with seed + k
    settings = json.loads(scores["judge_settings"].iloc[0])
    assert settings["greedy"] is True and settings["response_format"]["response_format"] == VERDICT_SCHEMA
    assert scores["judge_prompt"].iloc[1].startswith("<Output>\nLyon.\n</Output>")
    assert scores["verdict_probability"].isna().all()  # filled once the judge's agent reports token probabilities
    assert ev.verdict_counts()["scored"] == 3


def test_a_local_verdict_cut_by_max_new_tokens_is_unscored_not_passed(tiny_agent):
    judge = Judge(tiny_agent, settings={"logits_processor": forced(tiny_agent, PASS)}, max_new_tokens=5)
    ev = evaluate([{"prompt": "q", "assert": [{"type": "llm-rubric", "value": "anything"}]}],
                  settings={"logits_processor": [forced(tiny_agent, "Paris.")]}, models=tiny_agent, judge=judge,
                  progress=False)
    row = ev.scores.iloc[0]
    assert (row["judge_status"], row["status"], row["judge_finish_reason"]) == ("unscored", "unscored", "length")
    assert "max_new_tokens" in row["judge_error"] and row["judge_raw"]
    assert ev.answers["passed"].isna().all() and ev.summary().iloc[0]["unscored"] == 1


def test_promptfoo_config_runs_unchanged_apart_from_its_provider(tiny_agent, tmp_path):
    config = tmp_path / "promptfooconfig.yaml"
    config.write_text("""
prompts:
  - "Reply with JSON naming the capital of {{country}}."
providers:
  - openai:gpt-4o-mini
tests:
  - vars: {country: France}
    assert:
      - type: contains
        value: Paris
      - type: regex
        value: '"city":\\s*"[A-Z]'
      - type: is-json
        value: {type: object, required: [city]}
      - type: llm-rubric
        value: names the capital of {{country}}
  - vars: {country: Peru}
    assert:
      - type: contains
        value: Lima
      - type: is-json
      - type: llm-rubric
        value: names the capital of {{country}}
""")
    suite = load_promptfoo(config)
    assert suite.not_understood == []
    judge = Judge(tiny_agent, settings={"logits_processor": forced(tiny_agent, PASS, FAIL)}, batch_size=1)
    ev = evaluate(suite, settings={"logits_processor": [forced(tiny_agent, '{"city": "Paris"}', "Cusco")]},
                  models=tiny_agent, judge=judge, batch_size=1, progress=False)
    assert list(ev.answers["prompt"]) == ["Reply with JSON naming the capital of France.",
                                         "Reply with JSON naming the capital of Peru."]
    scores = ev.scores.set_index(["item", "assertion"])
    assert scores.loc[("0", "contains 'Paris'"), "passed"] and scores.loc[("0", "is-json {'type': 'object', "
                                                                            "'required': ['city']}"), "passed"]
    assert scores.loc[("0", "regex '\"city\":\\\\s*\"[A-Z]'"), "passed"]
    assert scores.loc[("0", "llm-rubric 'names the capital of France'"), "passed"]  # the rubric's variable filled
    assert not scores.loc[("1", "contains 'Lima'"), "passed"] and not scores.loc[("1", "is-json"), "passed"]
    assert "names the capital of Peru" in scores.loc[("1", "llm-rubric 'names the capital of Peru'"), "judge_prompt"]
    assert list(ev.answers["passed"]) == [True, False]


def test_a_served_judge_is_sent_the_verdict_schema_as_response_format():
    from midori_hf_nb.structured import response_format_from

    config = OpenAIConfig(model="m", base_url="http://127.0.0.1:9/v1")
    call = resolve_served_settings(config, {"greedy": True, "response_format": response_format_from(VERDICT_SCHEMA)})
    body = request_body(config, __import__("midori_hf_nb").make_payload("x"), call, None, None)
    sent = body["extra_body"]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["schema"] == VERDICT_SCHEMA
    assert sent["json_schema"]["strict"] is True and body["temperature"] == 0.0


def test_an_unparsable_served_judge_verdict_is_unscored_and_never_a_pass():
    answers = ScriptedAgent(["Paris is the capital."])
    judge = ScriptedAgent(["Sure! The answer passes.", "```json\n" + PASS + "\n```", '{"reason": "x", "score": 7, "pass": true}'])
    items = [{"prompt": f"Capital of France? {i}", "assert": [{"type": "llm-rubric", "value": f"names Paris {i}"}]}
             for i in range(3)]
    ev = evaluate(items, models=answers, judge=Judge(judge, concurrency=1), progress=False)
    scores = ev.scores
    assert list(scores["judge_status"]) == ["unscored", "scored", "unscored"]  # garbage, a fenced verdict, score 7
    assert scores["judge_raw"].iloc[0] == "Sure! The answer passes."
    assert "not JSON" in scores["judge_error"].iloc[0] and "schema" in scores["judge_error"].iloc[2]
    assert flags(ev.answers["passed"]) == [None, True, None]
    assert ev.verdict_counts() == {"scored": 1, "unscored": 2, "error": 0, "not run": 0, "cached": 0}
    wide = ev.by_assertion()  # one column per assertion
    assert flags(wide["llm-rubric 'names Paris 1'"]) == [None, True, None]
    assert list(ev.by_assertion("status")["llm-rubric 'names Paris 0'"])[0] == "unscored"
    row = ev.summary().iloc[0]
    assert (row["scored"], row["unscored"], row["passes"]) == (1, 2, 1)
    assert all("response_format" in call.overrides and call.overrides["greedy"] is True for call in judge.calls)


def test_verdicts_are_cached_in_a_file_but_answer_repeats_are_not(tmp_path):
    cache = tmp_path / "verdicts.jsonl"
    answers = ScriptedAgent(["Paris."])
    judge_agent = ScriptedAgent([PASS])
    items = [{"prompt": "Capital?", "assert": [{"type": "llm-rubric", "value": "names Paris"}]}]
    first = evaluate(items, models=answers, judge=Judge(judge_agent, cache=cache), repeats=3, progress=False)
    assert len(answers.calls) == 3  # every repeat is answered
    assert len(judge_agent.calls) == 1  # three identical judge prompts: asked once
    assert list(first.scores["judge_cached"]) == [False, True, True]
    again = evaluate(items, models=answers, judge=Judge(judge_agent, cache=cache), repeats=2, progress=False)
    assert len(answers.calls) == 5 and len(judge_agent.calls) == 1  # the file answered
    assert list(again.scores["judge_cached"]) == [True, True] and list(again.scores["score"]) == [0.9, 0.9]
    other = evaluate(items, models=answers, judge=Judge(judge_agent, cache=cache, seed=1), progress=False)
    assert len(judge_agent.calls) == 2 and not other.scores["judge_cached"].iloc[0]  # another seed: another key


def test_an_interrupt_during_verdicts_keeps_what_finished(recwarn):
    answers = ScriptedAgent(["Paris."])
    judge_agent = ScriptedAgent([PASS], delay=0.05)  # each verdict takes a while: the interrupt finds calls to stop
    items = [{"prompt": f"Capital? {i}", "assert": ["Paris", {"type": "llm-rubric", "value": f"names Paris {i}"}]}
             for i in range(6)]
    seen = []

    def stop_after_two(event):
        if event.phase == "verdicts" and event.event.kind == "batch":
            seen.append(event.event.done)
            if event.event.done == 2:
                raise KeyboardInterrupt

    ev = evaluate(items, models=answers, judge=Judge(judge_agent, concurrency=1), on_event=stop_after_two,
                  progress=False)
    assert ev.interrupted and any("interrupted" in str(w.message) for w in recwarn)
    assert (ev.answers["status"] == "ok").all()  # every answer finished before the judge started
    statuses = list(ev.scores.dropna(subset=["judge"])["judge_status"])
    assert statuses.count("scored") >= 2 and "not run" in statuses
    assert set(statuses) <= {"scored", "not run"}
    unjudged = ev.answers[ev.answers["passed"].isna()]
    assert len(unjudged) == statuses.count("not run")  # never counted as passes


def test_several_judges_give_an_agreement_table():
    answers = ScriptedAgent(["a", "b", "c", "d"])
    strict = ScriptedAgent([PASS, FAIL, FAIL, PASS])
    lenient = ScriptedAgent([PASS, PASS, FAIL, PASS])
    items = [{"prompt": f"q{i}", "assert": [{"type": "llm-rubric", "value": "good"}]} for i in range(4)]
    ev = evaluate(items, models=answers, judge=[Judge(strict, label="strict", concurrency=1),
                                                Judge(lenient, label="lenient", concurrency=1)],
                  concurrency=1, progress=False)
    agreement = ev.agreement().set_index("judges")
    assert agreement.loc["strict / lenient", "units"] == 4
    assert agreement.loc["strict / lenient", "cohen_kappa"] == pytest.approx(0.5)  # p_o 3/4, p_e 1/2
    # coincidences of the pass flags: o11 = 4, o00 = 2, o01 = o10 = 1; alpha = 1 - 7 * 2 / (2 * 3 * 5) = 8/15
    assert agreement.loc["all", "alpha_pass"] == pytest.approx(8 / 15)
    # an answer the judges split on (one pass, one fail) fails: a tie is not a majority
    assert list(ev.answers["passed"]) == [True, False, False, True]


def test_exports_and_views_escape_model_text_and_carry_verdicts(tmp_path):
    pytest.importorskip("IPython")
    from midori_hf_nb.notebook import answers_view, drill_down, plot_scores, scoreboard

    hostile = "<script>alert(1)</script> =SUM(A1) | **bold**"
    answers = ScriptedAgent([hostile])
    judge = ScriptedAgent(['{"reason": "<img src=x onerror=alert(2)>", "score": 0.5, "pass": true}'])
    ev = evaluate([{"prompt": "q", "assert": ["script", {"type": "llm-rubric", "value": "<b>ok</b>"}]}],
                  systems={"a": "A.", "b": "B."}, models=answers, judge=Judge(judge), repeats=2, progress=False)
    html = drill_down(ev, 0).html() + scoreboard(ev).to_html() + answers_view(ev).to_html()
    assert "<script>" not in html and "<img" not in html and "&lt;script&gt;" in html and "&lt;img" in html
    assert "judge transcript" in html and "&lt;Output&gt;" in html  # the judge's prompt is shown, escaped
    markdown = ev.to_markdown(tmp_path / "report.md")
    assert "<script>" not in markdown and "&lt;script&gt;" in markdown and "\\*\\*bold\\*\\*" in markdown
    csv_text = ev.to_csv(tmp_path / "ev.csv").read_text()
    assert ",'=SUM" not in csv_text or "'" in csv_text  # formulas guarded
    assert "judge_raw" in csv_text.splitlines()[0] and "onerror" in csv_text
    lines = [json.loads(line) for line in ev.to_jsonl(tmp_path / "ev.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and lines[0]["response"] == hostile
    assert lines[0]["assertions"][1]["judge_reason"] == "<img src=x onerror=alert(2)>"
    assert plot_scores(ev).axes[0].get_xlabel().startswith("pass rate")


def test_bad_arguments_are_refused_before_anything_runs():
    agent = ScriptedAgent(["x"])
    with pytest.raises(ValueError, match="judge"):
        evaluate([{"prompt": "q", "assert": [{"type": "llm-rubric", "value": "good"}]}], models=agent, progress=False)
    with pytest.raises(ValueError, match="has no prompt"):
        evaluate([{"vars": {"x": 1}}], models=agent, progress=False)
    with pytest.raises(ValueError, match="'y' is undefined"):
        evaluate([{"vars": {"x": 1}}], prompts="{{ y }}", models=agent, progress=False)
    with pytest.raises(ValueError, match="settings"):
        Judge(agent, settings=["greedy"])
    assert agent.calls == []


def test_a_local_agent_that_answers_and_judges_is_loaded_once(tiny_model):
    agent = HuggingFaceLocalAgent(str(tiny_model), progress=False, max_new_tokens=8)
    events = []
    evaluate([{"prompt": "hi", "assert": [{"type": "llm-rubric", "value": "polite"}]}], models=agent,
             judge=Judge(agent, settings={"logits_processor": [ScriptedOutput(_tokenizer(tiny_model), PASS)]}),
             on_event=lambda e: events.append((e.phase, e.event.kind)), progress=False)
    assert ("answers", "model_loaded") in events and ("verdicts", "batch") in events
    assert ("answers", "model_released") not in events and not agent.is_loaded  # released once, at the end


def _tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.mark.parametrize("count, starred", [(12, True), (3, False)])
def test_the_scoreboard_marks_the_best_only_where_it_is_significant(count, starred):
    pytest.importorskip("IPython")
    from midori_hf_nb.notebook import scoreboard

    items = [{"prompt": f"Capital of France? {i}", "assert": ["Paris"]} for i in range(count)]
    ev = evaluate(items, models={"good": ScriptedAgent(["Paris."]), "bad": ScriptedAgent(["Lyon."])}, progress=False)
    assert ev.configs == ["good", "bad"]
    paired = ev.paired("bad", "good")
    assert (paired.only_b, paired.only_a) == (count, 0)
    assert paired.mcnemar_p == pytest.approx(2 / 2 ** count)  # significant at 12 items, not at 3
    html = scoreboard(ev).to_html()
    assert ("★ 1.00 [" in html) is starred
    assert ev.best()["pass_rate"] == ("good" if starred else None)
