"""Assertions and their scorers (each type passing and failing, ``not-`` forms), test sets from
lists, DataFrames, CSV and JSON lines with templates, and reading promptfoo configurations."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from midori_hf_nb.evaluate import Assertion, TestSetError, assertion_from, load_items, load_promptfoo, score_deterministic
from midori_hf_nb.evaluate.items import render


def run(spec, response, expected=None, **row):
    return score_deterministic(assertion_from(spec), {"response": response, **row}, expected)


@pytest.mark.parametrize("spec, passing, failing", [
    ({"type": "equals", "value": "Paris"}, "Paris", "paris"),
    ({"type": "equals", "value": {"a": 1}}, '{"a": 1}', '{"a": 2}'),
    ({"type": "contains", "value": "Paris"}, "It is Paris.", "It is paris."),
    ({"type": "icontains", "value": "PARIS"}, "it is paris", "it is Lyon"),
    ({"type": "contains-any", "value": ["Paris", "Lyon"]}, "Lyon!", "Nice!"),
    ({"type": "icontains-any", "value": "paris, lyon"}, "LYON", "Nice"),
    ({"type": "contains-all", "value": ["a", "b"]}, "a and b", "a only"),
    ({"type": "icontains-all", "value": ["A", "B"]}, "a, b", "b"),
    ({"type": "regex", "value": r"^\d+$"}, "42", "42 apples"),
    ({"type": "starts-with", "value": "Yes"}, "Yes, it is.", "No, yes."),
    ({"type": "is-json"}, '{"x": [1, 2]}', "{x: 1}"),
    ({"type": "is-json", "value": {"type": "object", "required": ["name"]}}, '{"name": "Ada"}', '{"nom": "Ada"}'),
    ({"type": "word-count", "value": {"min": 2, "max": 3}}, "two words", "just one"[:4]),
    ({"type": "word-count", "value": 3}, "one two three", "one two"),
])
def test_each_scorer_passes_and_fails(spec, passing, failing):
    good, bad = run(spec, passing), run(spec, failing)
    assert (good.passed, good.score, good.status) == (True, 1.0, "scored")
    assert (bad.passed, bad.score) == (False, 0.0)
    assert good.reason and bad.reason and good.reason != bad.reason
    negated = run({**spec, "type": "not-" + spec["type"]}, passing)
    assert (negated.passed, negated.score) == (False, 0.0) and negated.reason.startswith("not: ")
    assert run({**spec, "type": "not-" + spec["type"]}, failing).passed is True


def test_latency_and_token_count_read_the_row():
    assert run({"type": "latency", "threshold": 500}, "x", seconds=0.2).passed is True
    slow = run({"type": "latency", "threshold": 500}, "x", seconds=0.8)
    assert slow.passed is False and "800 ms" in slow.reason
    assert run({"type": "token-count", "value": {"max": 10}}, "x", completion_tokens=7).passed is True
    assert run({"type": "token-count", "value": {"max": 10}}, "x", completion_tokens=11).passed is False
    missing = run({"type": "token-count", "value": 3}, "x")
    assert missing.status == "error" and missing.passed is False


def test_python_scorer_takes_the_row_and_its_errors_fail_the_assertion():
    def short(row):
        return len(row["response"]) < 10

    def graded(row):
        return {"pass": True, "score": 0.25, "reason": "a quarter"}

    def broken(row):
        raise RuntimeError("boom")

    assert run(short, "tiny").passed is True and run(short, "far too long here").passed is False
    assert (run(graded, "x").score, run(graded, "x").reason) == (0.25, "a quarter")
    assert run({"type": "python", "value": lambda row: 0.4, "threshold": 0.5}, "x").passed is False
    assert run({"type": "python", "value": lambda row: 0.4}, "x").passed is True  # above 0 without a threshold
    failed = run(broken, "x")
    assert (failed.status, failed.passed) == ("error", False) and "boom" in failed.reason
    assert run({"type": "not-python", "value": broken}, "x").passed is False  # a broken check never passes negated
    odd = run(lambda row: "yes", "x")
    assert odd.status == "error" and "expected a bool" in odd.reason


def test_value_none_takes_the_items_expected():
    assert score_deterministic(Assertion("contains"), {"response": "It is 4."}, expected="4").passed is True
    assert score_deterministic(Assertion("equals"), {"response": "5"}, expected="4").passed is False
    assert score_deterministic(Assertion("contains"), {"response": "x"}).status == "error"


@pytest.mark.parametrize("spec, message", [
    ({"type": "contans", "value": "x"}, "not understood"),
    ({"type": "contains", "value": "x", "transform": "output.upper()"}, "transform"),
    ({"type": "regex", "value": "("}, "regular expression"),
    ({"type": "latency"}, "threshold"),
    ({"type": "contains", "value": "x", "weight": -1}, "weight"),
    ({"type": "python", "value": "output == 'x'"}, "callable"),
    ({"type": "not-llm-rubric", "value": "x"}, "not understood"),
    ({"type": "llm-rubric", "value": ""}, "rubric"),
    ({"type": "is-json", "value": {"type": "nope"}}, "schema"),
    (3.5, "expected a dict"),
])
def test_bad_assertions_are_refused_naming_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        assertion_from(spec, "asserts[0]")


def test_templates_fill_variables_and_name_a_missing_one():
    assert render("Capital of {{ country }}?", {"country": "Peru"}, "x") == "Capital of Peru?"
    with pytest.raises(TestSetError, match="'city' is undefined"):
        render("{{ city }}", {"country": "Peru"}, "item 3")
    with pytest.raises(TestSetError, match="cannot be rendered"):
        render("{{ ''.__class__.__mro__[1].__subclasses__() }}", {}, "item 0")  # the sandbox refuses


def test_items_from_a_list_a_dataframe_csv_and_jsonl(tmp_path):
    listed = load_items(["plain prompt", {"prompt": "Hi {{name}}", "vars": {"name": "Ada"}, "expected": "Ada",
                                          "assert": [{"type": "contains", "value": "Ada"}], "id": "greet"}])
    assert [i.id for i in listed] == ["0", "greet"] and listed[1].asserts[0].type == "contains"
    frame = pd.DataFrame({"country": ["France", "Peru"], "expected": ["Paris", "Lima"],
                          "__expected": ["icontains: paris", "regex: Lima$"], "__description": ["fr", "pe"]})
    items = load_items(frame)
    assert items[0].vars == {"country": "France"} and items[0].expected == "Paris"
    assert items[1].asserts[0].type == "regex" and items[1].description == "pe"
    csv_path = tmp_path / "tests.csv"
    frame.to_csv(csv_path, index=False)
    assert [(i.vars, i.expected, i.asserts[0].label) for i in load_items(csv_path)] == \
        [(i.vars, i.expected, i.asserts[0].label) for i in items]
    jsonl = tmp_path / "tests.jsonl"
    jsonl.write_text("\n".join(json.dumps({"prompt": f"q{i}", "assert": [{"type": "equals", "value": str(i)}]})
                               for i in range(3)) + "\n")
    assert [i.asserts[0].value for i in load_items(jsonl)] == ["0", "1", "2"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n[1, 2]\n')
    with pytest.raises(TestSetError, match="line 2"):
        load_items(bad)
    with pytest.raises(TestSetError, match="more than once"):
        load_items([{"prompt": "a", "id": "x"}, {"prompt": "b", "id": "x"}])
    with pytest.raises(TestSetError, match="empty"):
        load_items([])


PROMPTFOO = """
description: capitals
prompts:
  - "Answer in one word: the capital of {{country}}?"
  - id: json
    raw: 'Reply with JSON {"capital": ...} for {{country}}'
providers:
  - openai:gpt-4o-mini
defaultTest:
  assert:
    - type: latency
      threshold: 600000
tests:
  - description: France
    vars: {country: France}
    assert:
      - type: contains
        value: Paris
      - type: regex
        value: "^[A-Z]"
        weight: 2
  - vars: {country: Peru}
    threshold: 0.5
    assert:
      - type: is-json
      - type: llm-rubric
        value: names the capital of {{country}}
      - type: javascript
        value: output.length < 5
      - type: contains
        value: Lima
        transform: output.trim()
    options: {provider: openai:gpt-4o}
sharing: true
"""


def test_promptfoo_config_is_read_and_what_is_not_understood_is_listed(tmp_path):
    path = tmp_path / "promptfooconfig.yaml"
    path.write_text(PROMPTFOO)
    with pytest.warns(UserWarning, match="not understood"):
        suite = load_promptfoo(path)
    assert list(suite.prompts) == ["prompt 1", "json"]
    assert suite.providers == ["openai:gpt-4o-mini"]
    france, peru = suite.items
    assert france.description == "France" and france.vars == {"country": "France"}
    assert [a.full_type for a in france.asserts] == ["contains", "regex", "latency"]  # defaultTest appended
    assert france.asserts[1].weight == 2.0
    assert [a.full_type for a in peru.asserts] == ["is-json", "llm-rubric", "latency"] and peru.threshold == 0.5
    skipped = "\n".join(suite.not_understood)
    assert "sharing" in skipped and "javascript" in skipped and "transform" in skipped and "options" in skipped
    assert len(suite.not_understood) == 4


def test_promptfoo_tests_from_a_csv_file_and_prompts_from_a_text_file(tmp_path):
    (tmp_path / "prompts.txt").write_text("First {{x}}\n---\nSecond {{x}}\n")
    (tmp_path / "cases.csv").write_text("x,__expected\n1,contains: 1\n2,not-contains: 3\n")
    path = tmp_path / "promptfooconfig.yaml"
    path.write_text("prompts: [file://prompts.txt]\ntests: file://cases.csv\n")
    suite = load_promptfoo(path)
    assert list(suite.prompts.values()) == ["First {{x}}", "Second {{x}}"]
    assert [(i.vars, i.asserts[0].full_type) for i in suite.items] == [({"x": "1"}, "contains"), ({"x": "2"}, "not-contains")]
    assert suite.not_understood == []


def test_a_regex_assertion_keeps_a_compiled_pattern():
    pattern = re.compile(r"\bcat\b")
    assert run(pattern, "a cat sat").passed is True
    assert assertion_from(pattern).label == "regex '\\\\bcat\\\\b'"
