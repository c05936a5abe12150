"""The tool-call parser and the reasoning extractor, table-driven, without a model.

Each parser row gives the raw model text, the exact calls expected (name, arguments) in
order, whether a parse error must be recorded, and (where it matters) the text left for the
user once the call text is removed.
"""

from __future__ import annotations

import random
import re

import pytest

from midori_hf_nb import extract_reasoning, parse_tool_calls
from midori_hf_nb.parsing import (
    StreamSplitter,
    extract_reasoning_blocks,
    parse_tool_calls_detailed,
    prompt_opens_thinking,
)

KEEP = object()  #: the cleaned text must equal the input (nothing was a call)

SEARCH = ("search", {"query": "example"})
CALLS_JSON = '{"tool_calls": [{"name": "search", "arguments": {"query": "example"}}]}'

# (id, raw text, expected calls, errors expected, expected cleaned text or KEEP or None = not checked)
ROWS = [
    # ---- JSON {"tool_calls": [...]}
    ("json-plain", CALLS_JSON, [SEARCH], False, ""),
    ("json-prose-around", f"I will search now. {CALLS_JSON} Then I answer.", [SEARCH], False,
     "I will search now. Then I answer."),
    ("json-fenced", f"```json\n{CALLS_JSON}\n```", [SEARCH], False, ""),
    ("json-fenced-no-language-with-prose", f"Sure:\n```\n{CALLS_JSON}\n```\nDone.", [SEARCH], False, "Sure:\n\nDone."),
    ("json-two-calls",
     '{"tool_calls": [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {"y": "two"}}]}',
     [("a", {"x": 1}), ("b", {"y": "two"})], False, ""),
    ("json-arguments-as-json-string",
     '{"tool_calls": [{"name": "a", "arguments": "{\\"x\\": 1, \\"s\\": \\"t\\"}"}]}', [("a", {"x": 1, "s": "t"})], False, ""),
    ("json-openai-function-items",
     '{"tool_calls": [{"id": "call_abc", "type": "function", "function": {"name": "a", "arguments": "{\\"x\\": 1}"}}]}',
     [("a", {"x": 1})], False, ""),
    ("json-parameters-key", '{"tool_calls": [{"name": "a", "parameters": {"x": [1, 2]}}]}', [("a", {"x": [1, 2]})], False, ""),
    ("json-one-good-one-nameless", '{"tool_calls": [{"name": "a", "arguments": {}}, {"arguments": {"x": 1}}]}',
     [("a", {})], True, ""),
    ("json-tool-calls-not-a-list", '{"tool_calls": {"name": "a", "arguments": {}}}', [], True, ""),
    ("json-malformed-bracket", '{"tool_calls": [{"name": "a", "arguments": {"x": 1}]}', [], True, ""),
    ("json-malformed-missing-value", 'Calling: {"tool_calls": [{"name": "a", "arguments": {"x": }}]}', [], True, "Calling:"),
    ("json-python-literal", "{'tool_calls': [{'name': 'a', 'arguments': {'flag': True, 'n': None}}]}",
     [("a", {"flag": True, "n": None})], False, ""),
    ("json-arguments-not-object", '{"tool_calls": [{"name": "a", "arguments": [1, 2]}]}', [], True, ""),
    # ---- TOOL_CALL: name(arg=value)
    ("toolcall-seed", "TOOL_CALL: search(query=example, limit=10)", [("search", {"query": "example", "limit": 10})], False, ""),
    ("toolcall-quoted-commas-parens", "TOOL_CALL: note(text=\"a, b (c), d\", tag='x,y)')",
     [("note", {"text": "a, b (c), d", "tag": "x,y)"})], False, ""),
    ("toolcall-typed-values", 'TOOL_CALL: f(i=3, neg=-2, x=2.5, e=1e3, t=true, F=False, n=null, s="42")',
     [("f", {"i": 3, "neg": -2, "x": 2.5, "e": 1000.0, "t": True, "F": False, "n": None, "s": "42"})], False, ""),
    ("toolcall-no-arguments", "TOOL_CALL: now()", [("now", {})], False, ""),
    ("toolcall-two-lines-after-prose", "I need both.\nTOOL_CALL: a(x=1)\nTOOL_CALL: b(y=\"z\")",
     [("a", {"x": 1}), ("b", {"y": "z"})], False, "I need both."),
    ("toolcall-escaped-quote", 'TOOL_CALL: say(text="he said \\"hi\\"")', [("say", {"text": 'he said "hi"'})], False, ""),
    ("toolcall-list-and-dict-values", 'TOOL_CALL: f(items=[1, 2, 3], opts={"a": 1})',
     [("f", {"items": [1, 2, 3], "opts": {"a": 1}})], False, ""),
    ("toolcall-unquoted-apostrophe", "TOOL_CALL: search(query=don't panic, n=2)",
     [("search", {"query": "don't panic", "n": 2})], False, ""),
    ("toolcall-positional-argument", 'TOOL_CALL: search("x")', [], True, ""),
    ("toolcall-unclosed-paren", "TOOL_CALL: f(a=1\nThe answer is 3.", [], True, "The answer is 3."),
    ("toolcall-unclosed-nested-paren", "TOOL_CALL: f(a=g(1)", [], True, ""),
    ("toolcall-in-plain-fence", "```\nTOOL_CALL: f(a=1)\n```", [("f", {"a": 1})], False, ""),
    ("toolcall-multiline-arguments", 'TOOL_CALL: f(\n  a=1,\n  b="two"\n)', [("f", {"a": 1, "b": "two"})], False, ""),
    # ---- Hermes / Qwen <tool_call>
    ("hermes-one", '<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>', [("a", {"x": 1})], False, ""),
    ("hermes-several-with-prose",
     'Let me check both.\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
     '<tool_call>\n{"name": "b", "arguments": {"y": 2.5}}\n</tool_call>',
     [("a", {"x": 1}), ("b", {"y": 2.5})], False, "Let me check both."),
    ("hermes-parameters", '<tool_call>{"name": "a", "parameters": {"q": "w"}}</tool_call>', [("a", {"q": "w"})], False, ""),
    ("hermes-arguments-string", '<tool_call>{"name": "a", "arguments": "{\\"q\\": \\"w\\"}"}</tool_call>',
     [("a", {"q": "w"})], False, ""),
    ("hermes-unclosed-last-tag", '<tool_call>{"name": "a", "arguments": {}}', [("a", {})], False, ""),
    ("hermes-unclosed-truncated-json", '<tool_call>{"name": "a", "arguments": {"x": 1', [], True, ""),
    ("hermes-empty", "<tool_call></tool_call>", [], True, ""),
    ("hermes-not-json", "<tool_call>search for cats</tool_call>", [], True, ""),
    ("hermes-object-without-name", '<tool_call>{"arguments": {"x": 1}}</tool_call>', [], True, ""),
    ("hermes-good-then-bad",
     '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "arguments": {</tool_call>',
     [("a", {})], True, ""),
    # ---- bare call objects
    ("bare-arguments", '{"name": "get_weather", "arguments": {"city": "Paris"}}', [("get_weather", {"city": "Paris"})], False, ""),
    ("bare-parameters-after-prose", 'Checking the weather.\n{"name": "get_weather", "parameters": {"city": "Oslo"}}',
     [("get_weather", {"city": "Oslo"})], False, "Checking the weather."),
    ("bare-openai-item", '{"type": "function", "function": {"name": "a", "arguments": "{\\"x\\": 1}"}}',
     [("a", {"x": 1})], False, ""),
    ("bare-list-of-openai-items",
     '[{"type": "function", "function": {"name": "a", "arguments": {}}}, '
     '{"type": "function", "function": {"name": "b", "arguments": {"k": null}}}]',
     [("a", {}), ("b", {"k": None})], False, ""),
    ("bare-mistral-marker", '[TOOL_CALLS] [{"name": "a", "arguments": {"x": 1}}]', [("a", {"x": 1})], False, ""),
    ("bare-arguments-invalid-json-string", '{"name": "a", "arguments": "x=1"}', [], True, ""),
    ("bare-call-mid-sentence", 'Answer: 42 {"name": "a", "arguments": {}} and more', [("a", {})], False, "Answer: 42 and more"),
    ("stray-brace-before-call", f"Use {{x and then {CALLS_JSON}", [SEARCH], False, "Use {x and then"),
    # ---- things that are NOT calls
    ("empty", "", [], False, ""),
    ("whitespace", "  \n ", [], False, ""),
    ("plain-answer", "The capital of France is Paris.", [], False, KEEP),
    ("ordinary-json-object", 'Here is the data: {"name": "Bob", "age": 42}', [], False, KEEP),
    ("json-with-extra-keys", '{"name": "llama", "parameters": {"size": "7B"}, "license": "MIT"}', [], False, KEEP),
    ("list-of-ordinary-objects", '[{"name": "a"}, {"name": "b"}]', [], False, KEEP),
    ("malformed-ordinary-json", '{"name": "Bob", age: 3}', [], False, KEEP),
    ("python-code-fence",
     '```python\nx = {"name": "a", "arguments": {}}\nprint("TOOL_CALL: f(a=1)")\nTOOL_CALL: g()\n```', [], False, KEEP),
    ("javascript-braces", "function f() { return {a: 1}; }", [], False, KEEP),
    ("toolcall-inside-string", 'print("TOOL_CALL: f(a=1)")', [], False, KEEP),
    ("toolcall-word-without-call", "I can use TOOL_CALL: when needed, or XTOOL_CALL: f(a=1).", [], False, KEEP),
    # ---- reasoning around calls: drafts inside reasoning are not calls
    ("reasoning-draft-then-call", "<think>Maybe TOOL_CALL: f(a=1)?</think>TOOL_CALL: g(b=2)", [("g", {"b": 2})], False,
     "<think>Maybe TOOL_CALL: f(a=1)?</think>"),
    ("reasoning-unclosed-at-end", '<think>about {"name": "a", "arguments": {}}', [], False, KEEP),
    ("reasoning-lone-closing-tag",
     'I drafted <tool_call>{"name": "x", "arguments": {}}</tool_call> here</think>{"name": "y", "arguments": {}}',
     [("y", {})], False, 'I drafted <tool_call>{"name": "x", "arguments": {}}</tool_call> here</think>'),
    ("reasoning-then-hermes", '<think>need a</think>\n<tool_call>{"name": "a", "arguments": {}}</tool_call>',
     [("a", {})], False, "<think>need a</think>"),
    # ---- formats mixed in one output, in order of appearance
    ("mixed-formats",
     'First <tool_call>{"name": "a", "arguments": {}}</tool_call> then\nTOOL_CALL: b(n=1)\nand {"name": "c", "arguments": {}}',
     [("a", {}), ("b", {"n": 1}), ("c", {})], False, "First then\n\nand"),
]


def test_the_table_is_big_enough():
    assert len(ROWS) >= 40
    assert len({row[0] for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize("raw,expected,has_errors,cleaned", [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_parser_table(raw, expected, has_errors, cleaned):
    result = parse_tool_calls_detailed(raw)
    assert [(c["name"], c["arguments"]) for c in result.calls] == expected
    assert bool(result.errors) is has_errors, result.errors
    assert all(isinstance(e, str) and e for e in result.errors)
    ids = [c["id"] for c in result.calls]
    assert all(isinstance(i, str) and i for i in ids)
    assert len(set(ids)) == len(ids)
    assert all(set(c) == {"name", "arguments", "id"} for c in result.calls)
    if cleaned is KEEP:
        assert result.text == raw.strip()
    elif cleaned is not None:
        assert result.text == cleaned
    # the public function gives the same calls and never raises
    assert [(c["name"], c["arguments"]) for c in parse_tool_calls(raw)] == expected


def test_ids_from_the_model_are_kept_and_duplicates_replaced():
    text = ('<tool_call>{"name": "a", "arguments": {}, "id": "c1"}</tool_call>'
            '<tool_call>{"name": "b", "arguments": {}, "id": "c1"}</tool_call>'
            '<tool_call>{"name": "c", "arguments": {}}</tool_call>')
    ids = [c["id"] for c in parse_tool_calls(text)]
    assert ids[0] == "c1" and len(set(ids)) == 3
    openai = parse_tool_calls('{"tool_calls": [{"id": "call_abc", "type": "function", "function": {"name": "a", "arguments": {}}}]}')
    assert openai[0]["id"] == "call_abc"


def test_ids_differ_between_parses():
    assert parse_tool_calls("TOOL_CALL: f()")[0]["id"] != parse_tool_calls("TOOL_CALL: f()")[0]["id"]


def test_prose_before_calls_and_the_rest_are_split():
    result = parse_tool_calls_detailed(f"Let me look that up.\n```json\n{CALLS_JSON}\n```\nBack soon.")
    assert result.prose_before_calls == "Let me look that up."
    assert result.answer == "Back soon."
    assert result.text == "Let me look that up.\n\nBack soon."
    none = parse_tool_calls_detailed("Just an answer.")
    assert none.prose_before_calls == "" and none.answer == "Just an answer."


def test_error_messages_say_what_is_wrong():
    errors = parse_tool_calls_detailed('TOOL_CALL: f(a=1\n<tool_call>{"name": "x", "arguments": "nope"}</tool_call>').errors
    assert any("unclosed parenthesis" in e and "TOOL_CALL f" in e for e in errors)
    assert any("'x'" in e and "not valid JSON" in e for e in errors)


@pytest.mark.parametrize("junk", [None, 12, "{" * 500, "(" * 200 + "TOOL_CALL: f(", "<tool_call>" * 50, "\x00\uffff"])
def test_parser_never_raises(junk):
    result = parse_tool_calls_detailed(junk)
    assert result.calls == [] or all("name" in c for c in result.calls)


# --------------------------------------------------------------------------- reasoning

REASONING_ROWS = [
    ("<think>2+2 is 4</think>The answer is 4.", "2+2 is 4", "The answer is 4."),
    ("<thinking>a</thinking>b", "a", "b"),
    ("<reasoning>a</reasoning> b", "a", "b"),
    ("<chain_of_thought>step 1</chain_of_thought>done", "step 1", "done"),
    ("<THINK>upper</THINK>case", "upper", "case"),
    ("<think>one</think>mid <think>two</think>end", "one\n\ntwo", "mid end"),
    ("Answer first <think>still thinking", "still thinking", "Answer first"),
    ("<think>partial", "partial", ""),
    ("I was thinking</think>Answer", "I was thinking", "Answer"),
    ("No tags at all.", "", "No tags at all."),
    ("", "", ""),
    ("<think></think>Empty block", "", "Empty block"),
    ('<think>need weather</think><tool_call>{"name": "w", "arguments": {}}</tool_call>', "need weather",
     '<tool_call>{"name": "w", "arguments": {}}</tool_call>'),
]


@pytest.mark.parametrize("raw,thinking,answer", REASONING_ROWS)
def test_extract_reasoning_table(raw, thinking, answer):
    assert extract_reasoning(raw) == (thinking, answer)


def test_reasoning_blocks_keep_their_order():
    blocks, answer = extract_reasoning_blocks("x</think><think>b</think>y<reasoning>c")
    assert blocks == ["x", "b", "c"] and answer == "y"


def test_prompt_opens_thinking():
    assert prompt_opens_thinking("<|im_start|>assistant\n<think>\n")
    assert not prompt_opens_thinking("<|im_start|>assistant\n<think>x</think>\n")
    assert not prompt_opens_thinking("<|im_start|>assistant\n")


# --------------------------------------------------------------------------- live splitting

SPLIT_TEXTS = [row[1] for row in ROWS] + [
    "<think>plan</think>Hello <tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call> after",
    "A `code` span and ``` plain fence ``` text",
    "```python\nprint({'a': 1})\n```\nThat prints a dict.",
    "<think>a</think>Let me check.\nTOOL_CALL: f(s=\"x, (y)\")\nthen more",
]


def _split(text: str, chunk, tools: bool = True):
    # a closing tag before any opening tag means the prompt opened the reasoning block
    lone_close = re.search(r"</(think|thinking|reasoning|chain_of_thought)>", text, re.I)
    opened = re.search(r"<(think|thinking|reasoning|chain_of_thought)>", text, re.I)
    starts_inside = bool(lone_close and (opened is None or lone_close.start() < opened.start()))
    splitter = StreamSplitter(start_in_thinking=starts_inside, tools=tools)
    pieces, i = [], 0
    while i < len(text):
        n = chunk()
        pieces += splitter.feed(text[i:i + n])
        i += n
    return pieces + splitter.finish()


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize("text", SPLIT_TEXTS)
def test_stream_splitter_agrees_with_the_parser_at_any_chunking(text):
    """Fed one character at a time or in random chunks, the live pieces hold the same thinking,
    the same calls and the same answer text as parsing the whole output at the end."""
    thinking, answer = extract_reasoning(text)
    reference = parse_tool_calls_detailed(answer)
    rng = random.Random(text)
    for chunk in [lambda: 1] + [lambda: rng.randint(1, 9)] * 6:
        pieces = _split(text, chunk)
        calls = [(c["name"], c["arguments"]) for p in pieces if p.kind == "tool" for c in p.parse.calls]
        assert calls == [(c["name"], c["arguments"]) for c in reference.calls]
        assert sum(len(p.parse.errors) for p in pieces if p.kind == "tool") == len(reference.errors)
        assert _squash("".join(p.text for p in pieces if p.kind == "text")) == _squash(reference.text)
        assert _squash("".join(p.text for p in pieces if p.kind == "thinking")) == _squash(thinking)


def test_stream_splitter_emits_a_call_as_soon_as_it_is_complete():
    splitter = StreamSplitter(tools=True)
    assert [p.kind for p in splitter.feed("Sure. TOOL_CALL: f(a=")] == ["text"]
    pieces = splitter.feed("1) and")
    assert [p.kind for p in pieces] == ["tool", "text"]
    assert pieces[0].parse.calls[0]["arguments"] == {"a": 1}


def test_stream_splitter_without_tools_passes_call_text_through():
    text = '<think>t</think>Hi <tool_call>{"name": "a", "arguments": {}}</tool_call>'
    pieces = _split(text, lambda: 3, tools=False)
    assert "".join(p.text for p in pieces if p.kind == "text") == extract_reasoning(text)[1]
    assert {p.kind for p in pieces} == {"thinking", "text"}


def test_stream_splitter_starting_inside_thinking():
    splitter = StreamSplitter(start_in_thinking=True)
    pieces = splitter.feed("still thinking</th") + splitter.feed("ink>answer") + splitter.finish()
    assert [(p.kind, p.text) for p in pieces] == [("thinking", "still thinking"), ("text", "answer")]


def test_stream_splitter_holds_a_brace_only_while_it_may_open_a_call():
    splitter = StreamSplitter(tools=True)
    assert "".join(p.text for p in splitter.feed("Use {")) == "Use"
    assert "".join(p.text for p in splitter.feed(" to open")) == " { to open"  # not JSON: released at once
    held = splitter.feed(' {"name": "a", "arguments": ')
    assert "".join(p.text for p in held) == ""  # may be a call: held until it closes
    pieces = splitter.feed("{}} done") + splitter.finish()
    assert [(p.kind, p.text) for p in pieces][1:] == [("text", " done")]
    assert pieces[0].kind == "tool" and pieces[0].parse.calls[0]["name"] == "a"
