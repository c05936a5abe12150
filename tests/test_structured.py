"""Structured output: ``response_format`` and ``tool_choice`` by constrained decoding (llguidance).

The validation and the fenced library layer are tested without a model; the constraint itself
with real generation: tiny random models (whose free output is never JSON, so every valid answer
is the constraint's doing), greedy and sampled, one sequence and batched, and the offline default
model. Validity is asserted on every answer.
"""

from __future__ import annotations

import json
import sys
from typing import Literal
from typing_extensions import TypedDict

import jsonschema
import numpy as np
import pytest
from pydantic import BaseModel, Field

from midori_hf_nb.settings import check_overrides
from midori_hf_nb.stats import ResponseStats
from midori_hf_nb.structured import (
    ResponseFormat,
    StructuredOutputError,
    ToolChoice,
    response_format_from,
    tool_choice_from,
)
from midori_hf_nb.structured import backend
from midori_hf_nb.structured.processor import allowed_tokens, masked
from midori_hf_nb.structured.tools import call_schema

from .conftest import loaded_agent, run


class Person(BaseModel):
    name: str
    age: int


class Label(BaseModel):
    """A pydantic model whose every answer is short (for random models)."""

    colour: Literal["red", "green", "blue"]
    word: str = Field(max_length=6)
    count: int = Field(ge=0, le=99)


class Point(TypedDict):
    x: int
    y: int


#: A schema every answer of which is short (bounded strings and numbers), for random models.
SMALL = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "n": {"type": "integer", "minimum": 0, "maximum": 999},
        "tag": {"enum": ["red", "green", "blue"]},
        "word": {"type": "string", "maxLength": 6},
    },
    "required": ["ok", "n", "tag", "word"],
}


def weather(city: str, unit: str = "celsius") -> str:
    """Get the current weather.

    Args:
        city: The city.
        unit: celsius or fahrenheit.
    """
    return f"sunny in {city}"


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first term.
        b: The second term.
    """
    return a + b


def paint(colour: Literal["red", "green", "blue"], coats: Literal[1, 2, 3]) -> str:
    """Paint the wall.

    Args:
        colour: The colour.
        coats: How many coats.
    """
    return f"{coats} coats of {colour}"


#: A tool in OpenAI's format whose arguments are short by schema.
STAMP = {"type": "function", "function": {
    "name": "stamp", "description": "Stamp a short word.",
    "parameters": {"type": "object", "properties": {"word": {"type": "string", "maxLength": 5},
                                                    "times": {"type": "integer", "minimum": 1, "maximum": 9}},
                   "required": ["word", "times"]}}}

TOOLS = [weather, add]
#: Tools whose every call is short (for random models, which would fill an unbounded string)
SHORT_TOOLS = [paint, STAMP]


def assert_valid_call(found: dict, allowed: set[str]) -> None:
    from midori_hf_nb.tools import tool_schemas

    schemas = {s["function"]["name"]: s["function"]["parameters"] for s in tool_schemas(TOOLS + SHORT_TOOLS)}
    assert found["name"] in allowed, found
    assert not found.get("unknown"), found
    jsonschema.validate(found["arguments"], schemas[found["name"]])


# ---------------------------------------------------------------- validation (no model)


@pytest.mark.parametrize("value, kind, name", [
    (Person, "model", "Person"),
    ({"type": "object", "title": "Thing", "properties": {"a": {"type": "integer"}}}, "schema", "Thing"),
    ("json", "json", "json"),
    (list[int], "type", "list"),
    (Point, "type", "Point"),
])
def test_accepted_kinds(value, kind, name):
    fmt = response_format_from(value)
    assert isinstance(fmt, ResponseFormat)
    assert (fmt.kind, fmt.name) == (kind, name)
    assert fmt.constraint is not None and fmt.constraint.grammar
    assert response_format_from(fmt) is fmt
    assert response_format_from(None) is None


@pytest.mark.parametrize("value, words", [
    ("xml", ["'xml'", '"json"', "pydantic model class"]),
    (42, ["int", "JSON schema dict"]),
    (Person(name="a", age=1), ["not an instance"]),
    ({"type": "nope"}, ["not a valid JSON schema"]),
    ({"not": {"type": "string"}}, ["cannot compile", "not"]),
    ({"type": "integer", "minimum": 5, "maximum": 3}, ["cannot compile", "Unsatisfiable"]),
    ({"type": "string", "format": "weird"}, ["cannot compile", "weird"]),
])
def test_refused_formats_name_the_field_and_what_to_change(value, words):
    with pytest.raises(StructuredOutputError) as info:
        response_format_from(value)
    message = str(info.value)
    assert message.startswith("response_format")
    for word in words:
        assert word in message
    assert isinstance(info.value, ValueError)


def test_parse_checks_the_schema():
    assert response_format_from(Person).parse('{"name": "Ada", "age": 36}') == Person(name="Ada", age=36)
    assert response_format_from(list[int]).parse("[1, 2]") == [1, 2]
    assert response_format_from(SMALL).parse('{"ok": true, "n": 3, "tag": "red", "word": "hi"}')["n"] == 3
    with pytest.raises(StructuredOutputError, match="not JSON"):
        response_format_from("json").parse('{"a": ')
    with pytest.raises(StructuredOutputError, match="does not match the schema"):
        response_format_from(SMALL).parse('{"ok": 1}')
    with pytest.raises(StructuredOutputError, match="does not match Person"):
        response_format_from(Person).parse('{"name": "Ada"}')


def test_tool_choice_values():
    assert tool_choice_from("required") == ToolChoice("required")
    assert tool_choice_from({"name": "add"}) == ToolChoice("named", "add")
    assert tool_choice_from({"type": "function", "function": {"name": "add"}}) == ToolChoice("named", "add")
    assert tool_choice_from("auto").forces_call is False
    for bad in ("always", 3, {"name": ""}, {"tool": "add"}):
        with pytest.raises(StructuredOutputError, match="tool_choice=.*expected \"auto\", \"required\", \"none\""):
            tool_choice_from(bad)


def test_named_tool_must_be_offered():
    from midori_hf_nb.tools import tool_schemas

    with pytest.raises(StructuredOutputError, match="'nope'.*expected the name of an offered tool.*'weather', 'add'"):
        call_schema(tool_schemas(TOOLS), ToolChoice("named", "nope"))
    schema = call_schema(tool_schemas(TOOLS), ToolChoice("required"))
    assert [option["properties"]["name"]["const"] for option in schema["anyOf"]] == ["weather", "add"]


def test_overrides_carry_the_validated_objects():
    checked = check_overrides({"response_format": Person, "tool_choice": "required", "temperature": 0})
    assert isinstance(checked["response_format"], ResponseFormat)
    assert checked["tool_choice"] == ToolChoice("required")
    with pytest.raises(ValueError, match="response_format='yaml'"):
        check_overrides({"response_format": "yaml"})


def test_stats_keep_the_structured_fields():
    stats = ResponseStats(response_format="Person", tool_choice="required", structured_error="why")
    back = ResponseStats.from_metadata(stats.as_dict())
    assert (back.response_format, back.tool_choice, back.structured_error) == ("Person", "required", "why")
    assert "response_format" not in ResponseStats().as_dict()


# ---------------------------------------------------------------- the fenced library layer


def test_missing_library_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "llguidance", None)
    with pytest.raises(StructuredOutputError, match=r"midori-hf-nb\[structured\]"):
        response_format_from(Person)


def test_closed_objects_only_where_unspecified():
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}}},
                                               "c": {"type": "object", "additionalProperties": True,
                                                     "properties": {}}}}
    closed = backend.closed_objects(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False
    assert closed["properties"]["c"]["additionalProperties"] is True
    assert "additionalProperties" not in schema  # the given schema is not changed


def test_a_slow_tokenizer_is_refused_naming_it():
    class NotFast:
        pass

    with pytest.raises(StructuredOutputError, match=r"tokenizer \(NotFast\).*fast \(Rust-backed\)"):
        backend.tokenizer_for(NotFast(), 100, (0,))


def test_matcher_masks_follow_the_grammar(default_model_dir):
    """The bitmask the library writes, unpacked by the processor, allows exactly the tokens that
    keep the text a prefix of a valid answer (checked on every token of the vocabulary)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    width = len(tokenizer)
    eos = (tokenizer.eos_token_id,)
    lltokenizer = backend.tokenizer_for(tokenizer, width, eos)
    assert backend.tokenizer_for(tokenizer, width, eos) is lltokenizer  # cached
    grammar = backend.schema_grammar({"type": "integer", "minimum": 0, "maximum": 999})
    matcher = backend.Matcher(lltokenizer, grammar)
    mask = np.zeros((1, backend.bitmask_words(width)), dtype=np.int32)
    matcher.fill(mask, 0)
    allowed = allowed_tokens(mask, width + 5)[0]
    assert not allowed[width:].any()
    texts = {i: tokenizer.decode([i]) for i in range(width) if allowed[i]}
    assert texts and all(t.isdigit() and len(t) <= 3 for t in texts.values()), sorted(texts.values())[:20]
    digits = [i for i in range(width) if tokenizer.decode([i]) in {str(d) for d in range(10)}]
    assert all(allowed[i] for i in digits)
    import torch

    scores = torch.randn(1, width + 5)
    for dtype in (torch.float32, torch.bfloat16):  # numpy masking, and torch's for other dtypes and devices
        out = masked(scores.to(dtype), allowed_tokens(mask, width + 5))
        assert out.dtype == dtype and torch.isinf(out[0, ~torch.from_numpy(allowed)]).all()
        assert torch.equal(out[0, torch.from_numpy(allowed)], scores.to(dtype)[0, torch.from_numpy(allowed)])
    assert matcher.consume(tokenizer.convert_tokens_to_ids("4"))
    assert matcher.accepting and not matcher.stopped
    assert matcher.consume(eos[0]) and matcher.stopped
    assert matcher.error is None


# ---------------------------------------------------------------- real generation: tiny random model


@pytest.fixture(scope="module")
def tiny_agent(tiny_tools_model):
    yield from loaded_agent(tiny_tools_model, max_new_tokens=64)


def test_tiny_model_answers_match_the_schema_greedy_and_sampled(tiny_agent, payload):
    """A random model writes no JSON on its own; under the constraint every answer validates,
    greedy and with 8 sampling seeds, on the engine's own decode loop."""
    free = run(tiny_agent.invoke(payload("Anything.")))
    with pytest.raises(json.JSONDecodeError):
        json.loads(free.response)
    answers = [run(tiny_agent.invoke(payload("Anything."), response_format=SMALL))]
    answers += [run(tiny_agent.invoke(payload(f"Anything {seed}."), response_format=SMALL, do_sample=True,
                                      temperature=1.0, seed=seed)) for seed in range(8)]
    for response in answers:
        stats = ResponseStats.from_metadata(response.metadata)
        assert stats.finish_reason == "stop", response.response
        assert stats.decode_path == "engine"
        assert stats.response_format == "schema" and stats.structured_error is None
        jsonschema.validate(json.loads(response.response), SMALL)
        assert response.parsed == json.loads(response.response)
    assert len({a.response for a in answers}) > 1  # sampling still samples, within the grammar


def test_tiny_model_batches_are_constrained_through_generate(tiny_agent, payload):
    payloads = [payload("One."), payload("Two, a longer prompt than the first."), payload("Three.")]
    for options in ({}, {"do_sample": True, "temperature": 1.0, "seed": 3}):
        responses = tiny_agent.generate_batch(payloads, response_format=SMALL, **options)
        assert len(responses) == 3
        for response in responses:
            stats = ResponseStats.from_metadata(response.metadata)
            assert stats.decode_path == "generate"
            assert stats.finish_reason == "stop", response.response
            jsonschema.validate(response.parsed, SMALL)


def test_decode_loop_generate_is_constrained_too(tiny_tools_model, payload):
    for agent in loaded_agent(tiny_tools_model, max_new_tokens=64, decode_loop="generate"):
        for seed in range(3):
            response = run(agent.invoke(payload("Anything."), response_format=Label, do_sample=True, seed=seed))
            assert ResponseStats.from_metadata(response.metadata).decode_path == "generate"
            assert isinstance(response.parsed, Label), response.response


def test_streamed_pieces_add_up_to_the_raw_json(tiny_agent, payload):
    async def go():
        stream = tiny_agent.stream(payload("Anything."), response_format=Label)
        pieces = [piece async for piece in stream]
        return pieces, stream.response

    pieces, response = run(go())
    assert len(pieces) > 1 and "".join(pieces) == response.response
    assert isinstance(response.parsed, Label)
    assert response.parsed == Label.model_validate_json(response.response)


def test_budget_ends_before_the_json_closes(tiny_agent, payload):
    response = run(tiny_agent.invoke(payload("Anything."), response_format=Person, max_new_tokens=4))
    stats = ResponseStats.from_metadata(response.metadata)
    assert stats.finish_reason == "length"
    assert response.parsed is None
    assert response.response.startswith('{"name": ') or response.response.startswith('{"')
    assert "max_new_tokens=4" in stats.structured_error
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.response)


def test_required_tool_choice_always_gives_a_valid_call(tiny_agent, payload):
    plain = run(tiny_agent.invoke_with_tools(payload("Paint the wall."), SHORT_TOOLS))
    assert not plain.tool_calls  # the random model never calls on its own
    for choice, allowed in (("required", {"paint", "stamp"}), ({"name": "stamp"}, {"stamp"}),
                            ({"name": "paint"}, {"paint"})):
        for seed in range(4):
            response = run(tiny_agent.invoke_with_tools(payload("Paint the wall."), SHORT_TOOLS, tool_choice=choice,
                                                        do_sample=True, temperature=1.0, seed=seed))
            stats = ResponseStats.from_metadata(response.metadata)
            assert stats.tool_parse_errors == [] and stats.finish_reason == "stop", response.metadata["raw_text"]
            assert len(response.tool_calls) == 1
            assert_valid_call(response.tool_calls[0], allowed)
            assert stats.tool_choice == (choice if isinstance(choice, str) else choice["name"])


def test_tool_choice_none_offers_no_tools(tiny_agent, payload):
    response = run(tiny_agent.invoke_with_tools(payload("Weather?"), TOOLS, tool_choice="none"))
    stats = ResponseStats.from_metadata(response.metadata)
    assert response.tool_calls is None and stats.tools_offered is None and stats.tool_choice == "none"


def test_tool_choice_refusals(tiny_agent, payload):
    with pytest.raises(StructuredOutputError, match="needs tools"):
        run(tiny_agent.invoke(payload("x"), tool_choice="required"))
    with pytest.raises(StructuredOutputError, match="cannot be combined with tools"):
        run(tiny_agent.invoke_with_tools(payload("x"), TOOLS, response_format=Person))
    with pytest.raises(StructuredOutputError, match="expected the name of an offered tool"):
        run(tiny_agent.invoke_with_tools(payload("x"), TOOLS, tool_choice={"name": "nope"}))


def test_run_tools_forces_the_first_call_only(tiny_agent, payload):
    response = run(tiny_agent.run_tools(payload("Paint the wall."), SHORT_TOOLS, max_steps=2,
                                        tool_choice={"name": "paint"}, max_new_tokens=32))
    stats = ResponseStats.from_metadata(response.metadata)
    first = stats.tool_steps[0]
    assert first["step"] == 1 and first["name"] == "paint" and first["status"] == "ok", first
    assert first["result"] == f"{first['arguments']['coats']} coats of {first['arguments']['colour']}"
    assert stats.steps == 2  # the second step ran unforced ("auto")


# ---------------------------------------------------------------- real generation: the default model


@pytest.mark.slow
def test_default_model_extracts_fields_into_a_pydantic_model(default_agent, payload):
    texts = [("Ada Lovelace was 36 years old when she died.", "Ada Lovelace"),
             ("My neighbour Tom is 52.", "Tom"),
             ("Maria, aged 29, works as a nurse.", "Maria")]
    for text, name in texts:
        response = run(default_agent.invoke(payload(f"{text}\nGive the person's name and age as JSON."),
                                            response_format=Person, max_new_tokens=40))
        stats = ResponseStats.from_metadata(response.metadata)
        assert stats.finish_reason == "stop" and stats.decode_path == "engine"
        assert isinstance(response.parsed, Person), response.response
        assert response.parsed == Person.model_validate_json(response.response)
        assert name.split()[0] in response.parsed.name


@pytest.mark.slow
def test_default_model_batch_and_forced_call(default_agent, payload):
    responses = default_agent.generate_batch([payload("Bob is 12 years old. JSON please."),
                                              payload("Describe Alice (40) as JSON.")], response_format=Person,
                                             max_new_tokens=40)
    for response in responses:
        assert isinstance(response.parsed, Person), response.response
    response = run(default_agent.invoke_with_tools(payload("What is the weather in Paris?"), TOOLS,
                                                   tool_choice="required"))
    assert len(response.tool_calls) == 1
    assert_valid_call(response.tool_calls[0], {"weather", "add"})


# ---------------------------------------------------------------- compare() grid setting


def test_compare_grid_runs_free_and_constrained(tiny_tools_model):
    from midori_hf_nb.compare import compare

    def valid(row) -> bool:
        try:
            Label.model_validate_json(row["response"])
        except ValueError:
            return False
        return True

    table = compare(["Describe a label.", "Another label, please."], models=str(tiny_tools_model),
                    settings={"response_format": [None, Label], "max_new_tokens": [48]},
                    checks={"valid": valid}, progress=False, model_kwargs={"do_sample": False})
    assert len(table) == 4 and (table["status"] == "ok").all()
    constrained = table[table["response_format"].notna()]
    free = table[table["response_format"].isna()]
    assert len(constrained) == 2 and constrained["check: valid"].all()
    assert not free["check: valid"].any()  # the random model's free text is never a Label
    with pytest.raises(ValueError, match="response_format='yaml'"):
        compare("x", models=str(tiny_tools_model), settings={"response_format": ["yaml"]}, progress=False)


# ---------------------------------------------------------------- the chat panel's setting


def test_chat_panel_response_format_setting(tiny_agent):
    from midori_hf_nb.notebook import ChatPanel

    async def send(panel, text):
        return await panel.send(text)

    panel = ChatPanel(tiny_agent, throttle=0, max_new_tokens=64)
    assert panel.response_format_field.widget in panel.settings_box.children[0].children
    panel.response_format_field.widget.value = json.dumps(SMALL)
    for question in ("First.", "Second."):
        answer = run(send(panel, question))
        assert answer["finish_reason"] == "stop"
        jsonschema.validate(json.loads(answer["content"]), SMALL)
    panel.response_format_field.widget.value = "yaml please"
    with pytest.raises(ValueError, match="Response format='yaml please' is not allowed: expected empty"):
        panel.send("Third.")
    panel.response_format_field.widget.value = '{"type": "nope"}'
    with pytest.raises(ValueError, match="Response format: not a valid JSON schema"):
        panel.send("Third.")
    panel.response_format_field.widget.value = ""
    assert "response_format" not in panel.generation_overrides()
    # given to the panel: shown by name and used while the field keeps it
    named = ChatPanel(tiny_agent, throttle=0, response_format=Label, max_new_tokens=64)
    assert named.response_format_field.widget.value == "Label"
    answer = run(send(named, "A label."))
    assert Label.model_validate_json(answer["content"])


def test_chat_panel_tool_loop_with_a_forced_first_call(tiny_agent):
    from midori_hf_nb.notebook import ChatPanel

    async def send(panel, text):
        return await panel.send(text)

    panel = ChatPanel(tiny_agent, tools=[paint], execute_tools=True, max_tool_steps=2, tool_choice="required",
                      throttle=0, max_new_tokens=32)
    answer = run(send(panel, "Paint the wall."))
    rows = answer["tool_calls"]
    assert rows and rows[0]["name"] == "paint" and rows[0]["executed"]
    assert rows[0]["result"] == f"{rows[0]['arguments']['coats']} coats of {rows[0]['arguments']['colour']}"


# ---------------------------------------------------------------- %%midori --schema NAME


def test_cell_magic_schema_names_a_notebook_variable(tiny_tools_model):
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    def execute(code):
        with capture_output() as captured:
            result = shell.run_cell(code)
        return result, captured

    shell = InteractiveShell.instance()
    assert execute("%load_ext midori_hf_nb")[0].success
    try:
        result, captured = execute(f"%midori load --model {tiny_tools_model} --greedy --max-new-tokens 64 "
                                   "--no-progress")
        assert result.success, captured.stderr
        shell.user_ns.update({"Label": Label, "small_schema": SMALL, "point": Point, "not_a_schema": 42})
        for name, check in (("Label", lambda r: isinstance(r.parsed, Label)),
                            ("small_schema", lambda r: jsonschema.validate(r.parsed, SMALL) is None),
                            ("json", lambda r: isinstance(r.parsed, dict))):
            result, captured = execute(f"%%midori --schema {name} --name answer --no-memory\nDescribe it.")
            assert result.success, captured.stderr
            response = shell.user_ns["answer"]
            # the random model may loop inside the answer: the guard then closes it by the grammar's
            # shortest completion (structured/closing.py), so it parses either way
            assert response.metadata["finish_reason"] in ("stop", "repetition"), response.response
            assert check(response), response.response
        result, captured = execute("%%midori --schema missing_variable\nDescribe it.")
        assert not result.success
        assert "--schema 'missing_variable' names no variable in the notebook" in str(result.error_in_exec)
        result, captured = execute("%%midori --schema not_a_schema\nDescribe it.")
        assert not result.success
        assert "--schema not_a_schema: response_format=42 (int) is not allowed" in str(result.error_in_exec)
    finally:
        execute("%midori unload")
        execute("%unload_ext midori_hf_nb")
