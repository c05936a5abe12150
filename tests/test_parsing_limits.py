"""The parser under hostile model output: every bound of ``midori_hf_nb.parsing.limits`` at and
past its edge, a table of malformed inputs that the parser and the live splitter must survive
(recording the reason, never raising), and time guards against quadratic behaviour.

Pure Python, no model. The time guards measure this process's CPU time (other work on a shared
machine does not count), are generous (an order of magnitude above the times measured) and only
catch quadratic regressions, which take minutes at these sizes.
"""

from __future__ import annotations

import ast
import inspect
import random
import re
import time

import pytest

import midori_hf_nb.parsing as parsing
from midori_hf_nb.parsing import (
    MAX_CALLS,
    MAX_DEPTH,
    MAX_ERRORS,
    MAX_INPUT_CHARS,
    MAX_LITERAL_CHARS,
    MAX_NUMBER_DIGITS,
    StreamSplitter,
    extract_reasoning,
    normalise_call,
    parse_tool_calls,
    parse_tool_calls_detailed,
)
from midori_hf_nb.parsing import limits

LIMIT_NAMES = ["MAX_INPUT_CHARS", "MAX_CALLS", "MAX_ERRORS", "MAX_DEPTH", "MAX_NUMBER_DIGITS",
               "MAX_LITERAL_CHARS", "WORK_PER_CHAR", "WORK_FLOOR"]


def calls_of(result) -> list[tuple[str, dict]]:
    return [(c["name"], c["arguments"]) for c in result.calls]


def split_in_pieces(text: str, seed: str, tools: bool = True) -> list:
    """Feed ``text`` to a splitter in pieces of random sizes (fixed seed); all pieces out."""
    lone_close = re.search(r"</(think|thinking|reasoning|chain_of_thought)>", text, re.I)
    opened = re.search(r"<(think|thinking|reasoning|chain_of_thought)>", text, re.I)
    splitter = StreamSplitter(start_in_thinking=bool(lone_close and (opened is None or lone_close.start() < opened.start())),
                              tools=tools)
    rng = random.Random(seed)
    biggest = max(8, len(text) // 400)
    pieces, i = [], 0
    while i < len(text):
        n = rng.randint(1, biggest)
        pieces += splitter.feed(text[i:i + n])
        i += n
    return pieces + splitter.finish()


# --------------------------------------------------------------------------- the bounds themselves


def test_limits_are_documented_module_constants():
    source = inspect.getsource(limits)
    documented = set()
    body = ast.parse(source).body
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.Assign) and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)):
            documented |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    for name in LIMIT_NAMES:
        value = getattr(limits, name)
        assert isinstance(value, int) and value > 0, name
        assert name in documented, f"{name} has no docstring"
        assert name in limits.__doc__ and name in parsing.__doc__, f"{name} is not named in the module docstrings"
        assert getattr(parsing, name) == value  # re-exported for callers


# --------------------------------------------------------------------------- the three reported faults


def test_deep_brackets_in_a_tool_call_tag_are_an_error_not_a_recursion_error():
    result = parse_tool_calls_detailed("<tool_call>" + "[" * 1000 + "]" * 1000 + "</tool_call>")
    assert result.calls == []
    assert len(result.errors) == 1 and "nested 1000 levels deep (limit 64)" in result.errors[0]
    assert parse_tool_calls("<tool_call>" + "[" * 1000 + "]" * 1000 + "</tool_call>") == []


def test_a_4500_digit_number_is_an_error_for_that_call():
    result = parse_tool_calls_detailed("TOOL_CALL: f(a=" + "9" * 4500 + ")\nTOOL_CALL: g(b=2)")
    assert calls_of(result) == [("g", {"b": 2})]
    assert result.errors == ["TOOL_CALL f: argument 'a' out of bounds (a number has 4500 digits (limit 100))"]


def test_100000_tool_call_lines_parse_in_linear_time():
    text = "\n".join(f"TOOL_CALL: f(a={i})" for i in range(100_000))
    started = time.process_time()
    result = parse_tool_calls_detailed(text)
    elapsed = time.process_time() - started
    assert elapsed < 10, f"{elapsed:.1f} s: quadratic again?"  # about 0.8 s of CPU; it took 460-820 s before
    assert calls_of(result) == [("f", {"a": i}) for i in range(MAX_CALLS)]
    assert any(f"looked for in the first {MAX_INPUT_CHARS}" in e for e in result.errors)
    assert any(f"more than {MAX_CALLS} tool calls" in e for e in result.errors)
    assert result.dropped_calls > 40_000
    # the calls searched are removed; the unsearched tail stays in the text as it was
    assert result.text.startswith("TOOL_CALL: f(a=") and result.text.endswith("TOOL_CALL: f(a=99999)")
    assert len(result.text) < len(text) - MAX_INPUT_CHARS + 100


# --------------------------------------------------------------------------- each bound at its edge


def test_nesting_depth_bound_is_exact():
    ok = parse_tool_calls_detailed("TOOL_CALL: f(a=" + "[" * MAX_DEPTH + "]" * MAX_DEPTH + ")")
    assert len(ok.calls) == 1 and not ok.errors
    too_deep = parse_tool_calls_detailed("TOOL_CALL: f(a=" + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + ")")
    assert too_deep.calls == [] and f"nested {MAX_DEPTH + 1} levels deep" in too_deep.errors[0]


@pytest.mark.parametrize("template", [
    "TOOL_CALL: f(a={})",
    '{{"name": "f", "arguments": {{"a": {}}}}}',
    "{{'name': 'f', 'arguments': {{'a': {}}}}}",
    '<tool_call>{{"name": "f", "arguments": "{{\\"a\\": {}}}"}}</tool_call>',
])
def test_number_length_bound_is_exact_in_every_format(template):
    ok = parse_tool_calls_detailed(template.format("-" + "7" * MAX_NUMBER_DIGITS))
    assert calls_of(ok) == [("f", {"a": -int("7" * MAX_NUMBER_DIGITS)})] and not ok.errors
    too_long = parse_tool_calls_detailed(template.format("7" * (MAX_NUMBER_DIGITS + 1)))
    assert too_long.calls == []
    assert len(too_long.errors) == 1 and f"{MAX_NUMBER_DIGITS + 1} digits" in too_long.errors[0]


def test_calls_past_the_bound_are_dropped_and_their_text_removed():
    text = "Calling.\n" + "\n".join(f'<tool_call>{{"name": "f", "arguments": {{"i": {i}}}}}</tool_call>'
                                    for i in range(MAX_CALLS + 6))
    result = parse_tool_calls_detailed(text)
    assert calls_of(result) == [("f", {"i": i}) for i in range(MAX_CALLS)]
    assert result.dropped_calls == 6
    assert result.errors == [limits.TOO_MANY_CALLS]
    assert result.text == "Calling."


def test_errors_past_the_bound_are_left_out_with_a_note():
    result = parse_tool_calls_detailed("\n".join("TOOL_CALL: f(1)" for _ in range(MAX_ERRORS + 6)) + "\nTOOL_CALL: g()")
    assert calls_of(result) == [("g", {})]
    assert len(result.errors) == MAX_ERRORS + 1 and result.errors[-1] == limits.TOO_MANY_ERRORS
    assert result.dropped_errors == 6
    assert result.text == ""


def test_text_past_the_input_bound_is_kept_unsearched():
    text = "a" * (MAX_INPUT_CHARS - 20) + " TOOL_CALL: f(a=1) and TOOL_CALL: g(b=2)"
    result = parse_tool_calls_detailed(text)
    assert calls_of(result) == [("f", {"a": 1})]  # it ends before the bound
    assert result.text.endswith("and TOOL_CALL: g(b=2)")
    assert any(f"the output is {len(text)} characters long" in e for e in result.errors)


def test_python_literal_reading_has_a_total_allowance():
    body = "x" * (MAX_LITERAL_CHARS // 2)
    call = "<tool_call>{'name': 'f', 'arguments': {'s': '%s'}}</tool_call>" % body
    result = parse_tool_calls_detailed(call + call)
    assert calls_of(result) == [("f", {"s": body})]  # the second would pass the allowance
    assert len(result.errors) == 1 and "not valid JSON" in result.errors[0]
    as_json = '<tool_call>{"name": "f", "arguments": {"s": "%s"}}</tool_call>' % body
    assert len(parse_tool_calls(as_json * 3)) == 3  # JSON has no such allowance


def test_the_work_bound_stops_overlapping_scans():
    text = "{'a': '{" * 40_000  # every brace sits inside another brace's string: scans would overlap
    started = time.process_time()
    result = parse_tool_calls_detailed(text)
    assert time.process_time() - started < 20
    assert result.calls == [] and len(result.errors) == 1 and "stopped looking for tool calls" in result.errors[0]
    assert result.text == text  # nothing was taken out


def test_values_must_be_json_data():
    tuples = parse_tool_calls_detailed("<tool_call>{'name': 'f', 'arguments': {'a': (1, (2, 3))}}</tool_call>")
    assert calls_of(tuples) == [("f", {"a": [1, [2, 3]]})]
    for text, reason in [
        ("<tool_call>{'name': 'f', 'arguments': {'a': {1, 2}}}</tool_call>", "set is not a JSON value"),
        ("<tool_call>{'name': 'f', 'arguments': {'a': b'x'}}</tool_call>", "bytes is not a JSON value"),
        ("TOOL_CALL: f(a=[1j])", "complex is not a JSON value"),
        ("TOOL_CALL: f(opts={1: 'a'})", "an object key is int"),
    ]:
        result = parse_tool_calls_detailed(text)
        assert result.calls == [] and len(result.errors) == 1 and reason in result.errors[0], (text, result.errors)


class _BadRepr:
    def __repr__(self):
        raise RuntimeError("no repr")


def _deep_dict(levels: int) -> dict:
    root = node = {}
    for _ in range(levels):
        node["a"] = {}
        node = node["a"]
    return root


def _cycle() -> dict:
    args: dict = {}
    args["self"] = args
    return args


@pytest.mark.parametrize("obj,reason", [
    ({"name": "f", "arguments": _deep_dict(5000)}, "nested more than 64 levels deep"),
    ({"name": "f", "arguments": _cycle()}, "nested more than 64 levels deep"),
    ({"name": "f", "arguments": {"n": 10 ** 5000}}, "more than 100 digits"),
    ({"name": "f", "arguments": {"s": {1, 2}}}, "set is not a JSON value"),
    ({"name": "f", "arguments": "[" * 5000}, "nested 5000 levels deep"),
    ({"name": _BadRepr()}, "tool call without a name"),
    (_deep_dict(5000), "tool call without a name"),
    ([_BadRepr()], "tool call is not an object"),
])
def test_normalise_call_gives_reasons_for_hostile_objects(obj, reason):
    """The agent hands the tokenizer's own parse to normalise_call: it must not raise either."""
    call, error = normalise_call(obj)
    assert call is None and reason in error


# --------------------------------------------------------------------------- malformed inputs, table-driven

D = 1000
# (id, raw text, the calls expected, substrings each of which some error must contain ([] = no errors))
MALFORMED = [
    ("deep-list-in-tag", "<tool_call>" + "[" * D + "]" * D + "</tool_call>", [], ["nested 1000 levels deep"]),
    ("deep-object-in-tag", '<tool_call>{"name": "f", "arguments": ' + '{"a": ' * D + "1" + "}" * D + "}</tool_call>",
     [], ["levels deep (limit 64)"]),
    ("deep-bare-call", '{"name": "f", "arguments": {"a": ' + "[" * D + "]" * D + "}}", [],
     ["tool-call JSON out of bounds (nested"]),
    ("deep-arguments-string", '{"name": "f", "arguments": "' + "[" * D + "]" * D + '"}', [], ["arguments out of bounds"]),
    ("deep-toolcall-value", "TOOL_CALL: f(a=" + "[" * D + "]" * D + ")", [], ["argument 'a' out of bounds (nested"]),
    ("deep-parens-are-text", "TOOL_CALL: f(a=" + "(" * D + ")" * D + ")", [("f", {"a": "(" * D + ")" * D})], []),
    ("deep-unclosed-brackets", "Look: " + "[{" * 20_000, [], []),
    ("digits-toolcall", "TOOL_CALL: f(a=" + "9" * 4500 + ")", [], ["4500 digits"]),
    ("digits-json", '<tool_call>{"name": "f", "arguments": {"a": -' + "9" * 5000 + "}}</tool_call>", [], ["5000 digits"]),
    ("digits-python-literal", "{'name': 'f', 'arguments': {'a': " + "9" * 5000 + "}}", [], ["5000 digits"]),
    ("digits-in-a-string-are-fine", '{"name": "f", "arguments": {"a": "' + "9" * 5000 + '"}}', [("f", {"a": "9" * 5000})], []),
    ("unterminated-string-at-end", 'TOOL_CALL: f(a="never closed', [], ["unclosed parenthesis"]),
    ("unterminated-json-at-end", 'Calling {"name": "f", "arguments": {"a": "x', [], ["brackets never balance"]),
    ("backslash-at-end", '{"name": "f", "arguments": {"a": "x\\', [], ["brackets never balance"]),
    ("unterminated-string-in-tag", '<tool_call>{"name": "f", "arguments": {"a": "x</tool_call>', [], ["not valid JSON"]),
    ("mistral-unclosed", '[TOOL_CALLS] [{"name": "f", "arguments": {', [], ["brackets never balance"]),
    ("nul-bytes-in-toolcall", 'TOOL_CALL: f(a="x\x00y", b=\'\\x00\')', [("f", {"a": "x\x00y", "b": "\x00"})], []),
    ("raw-nul-in-json-string", '<tool_call>{"name": "f", "arguments": {"a": "\x00"}}</tool_call>', [], ["not valid JSON"]),
    ("lone-surrogates", '<tool_call>{"name": "f", "arguments": {"a": "\ud800", "b": "\\udfff"}}</tool_call>\udc00',
     [("f", {"a": "\ud800", "b": "\udfff"})], []),
    ("set-value", "<tool_call>{'name': 'f', 'arguments': {'a': {1, 2}}}</tool_call>", [], ["set is not a JSON value"]),
    ("complex-value", "TOOL_CALL: f(a=[1j])", [], ["complex is not a JSON value"]),
    ("non-string-key", "TOOL_CALL: f(opts={1: 'a'})", [], ["an object key is int"]),
    ("many-unclosed-think-tags", "<think>" * 5000 + "TOOL_CALL: f(a=1)", [], []),
    ("dotted-capital-i-tags", "<THİNK>TOOL_CALL: f(a=1)</THİNK>TOOL_CALL: g(b=2)", [("g", {"b": 2})], []),
    ("many-empty-fences", "```\n```\n" * 5000 + "TOOL_CALL: f(a=1)", [("f", {"a": 1})], []),
    ("many-empty-tool-tags", "<tool_call></tool_call>" * 100, [], ["empty <tool_call> block", "more than 64 tool-call parse errors"]),
    ("too-many-calls", "\n".join(f"TOOL_CALL: f(a={i})" for i in range(70)), [("f", {"a": i}) for i in range(64)],
     ["more than 64 tool calls"]),
    ("huge-string-argument", 'TOOL_CALL: write(text="' + "x" * 300_000 + '")', [("write", {"text": "x" * 300_000})], []),
    ("over-the-input-bound", "x" * MAX_INPUT_CHARS + " TOOL_CALL: f(a=1)", [], ["were looked for in the first"]),
    ("overlapping-scans", "{'a': '{" * 40_000, [], ["stopped looking for tool calls"]),
]
#: Rows where the splitter need not find the same calls: it has no input bound (its cost is linear,
#: and the final parse of the whole output is the bounded one).
SPLITTER_MAY_DIFFER = {"over-the-input-bound"}


def test_the_malformed_table_is_big_enough():
    assert len(MALFORMED) >= 20
    assert len({row[0] for row in MALFORMED}) == len(MALFORMED)


@pytest.mark.parametrize("raw,expected,errors", [row[1:] for row in MALFORMED], ids=[row[0] for row in MALFORMED])
def test_malformed_input_is_a_recorded_error(raw, expected, errors):
    result = parse_tool_calls_detailed(raw)
    assert calls_of(result) == expected
    for part in errors:
        assert any(part in e for e in result.errors), (part, result.errors[:3])
    if not errors:
        assert result.errors == []
    assert not any("parser failed" in e for e in result.errors)  # a bound caught it, not the last wall
    assert all(isinstance(e, str) and len(e) < 400 for e in result.errors)
    extract_reasoning(raw)  # never raises either


@pytest.mark.parametrize("row", MALFORMED, ids=[row[0] for row in MALFORMED])
def test_the_splitter_survives_the_malformed_table_in_random_pieces(row):
    name, raw, expected, _ = row
    pieces = split_in_pieces(raw, seed=name)
    assert all(p.kind in ("text", "thinking", "tool") and isinstance(p.text, str) for p in pieces)
    if name not in SPLITTER_MAY_DIFFER:
        reference = parse_tool_calls_detailed(extract_reasoning(raw)[1])
        assert [(c["name"], c["arguments"]) for p in pieces if p.kind == "tool" for c in p.parse.calls] == calls_of(reference)


# --------------------------------------------------------------------------- time guards against quadratic behaviour

HOSTILE = [
    ("unclosed-think-tags", "<think>" * 100_000),
    ("unclosed-braces", "{" * 300_000),
    ("unclosed-call-lines", "TOOL_CALL: f(\n" * 40_000),
    ("unclosed-call-quotes", 'TOOL_CALL: f(a="x\n' * 30_000),
    ("bare-call-objects", '{"name": "f", "arguments": {}}\n' * 15_000),
    ("empty-tool-tags", "<tool_call></tool_call>" * 20_000),
    ("empty-fences", "```\n```\n" * 40_000),
    ("quoted-commas", '{"a": ",",' * 40_000),
    ("code-without-fences", "function f() { if (x) { return {a: 1, b: [1, 2]}; } }\n" * 6_000),
]


@pytest.mark.parametrize("text", [row[1] for row in HOSTILE], ids=[row[0] for row in HOSTILE])
def test_hostile_text_takes_linear_time(text):
    started = time.process_time()
    parse_tool_calls_detailed(text)
    extract_reasoning(text)
    parse_seconds = time.process_time() - started
    started = time.process_time()
    splitter = StreamSplitter(tools=True)
    splitter.feed(text)  # one big piece: the splitter must not rescan its buffer per marker
    splitter.finish()
    split_seconds = time.process_time() - started
    assert parse_seconds < 20 and split_seconds < 20, (parse_seconds, split_seconds)


def test_the_splitter_holds_a_long_call_fed_one_character_at_a_time_in_linear_time():
    splitter = StreamSplitter(tools=True)
    started = time.process_time()
    out = splitter.feed('Writing. <tool_call>{"name": "write", "arguments": {"text": "')
    for _ in range(200_000):
        out += splitter.feed("x")
    out += splitter.feed('"}}</tool_call> Done.') + splitter.finish()
    assert time.process_time() - started < 20
    assert [p.kind for p in out] == ["text", "tool", "text"]
    assert out[1].parse.calls[0]["arguments"] == {"text": "x" * 200_000}


def test_whitespace_fed_one_character_at_a_time_is_held_in_linear_time():
    splitter = StreamSplitter()
    started = time.process_time()
    out = splitter.feed("Hi")
    for _ in range(200_000):
        out += splitter.feed(" ")
    out += splitter.feed("there") + splitter.finish()
    assert time.process_time() - started < 20
    assert "".join(p.text for p in out) == "Hi" + " " * 200_000 + "there"


def test_the_splitter_counts_calls_over_the_whole_stream():
    text = "".join(f"TOOL_CALL: f(a={i})\n" for i in range(MAX_CALLS + 10))
    pieces = split_in_pieces(text, seed="count")
    calls = [c for p in pieces if p.kind == "tool" for c in p.parse.calls]
    errors = [e for p in pieces if p.kind == "tool" for e in p.parse.errors]
    assert [c["arguments"]["a"] for c in calls] == list(range(MAX_CALLS))
    assert errors == [limits.TOO_MANY_CALLS]
    assert "".join(p.text for p in pieces if p.kind == "text") == ""  # the dropped calls' text is not answer text


def test_tags_with_case_folding_characters_split_like_the_parser_reads_them():
    """'İ'.lower() is two characters: tags must be matched without lower-casing the text."""
    text = "Ab İ <THİNK>plan</THİNK>answer İ"
    thinking, answer = extract_reasoning(text)
    for chunk in (1, 3, 100):
        splitter = StreamSplitter(tools=True)
        out = [p for i in range(0, len(text), chunk) for p in splitter.feed(text[i:i + chunk])] + splitter.finish()
        assert "".join(p.text for p in out if p.kind == "thinking") == thinking == "plan"
        assert "".join(p.text for p in out if p.kind == "text") == answer == "Ab İ answer İ"
