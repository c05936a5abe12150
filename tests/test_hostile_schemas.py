"""Hostile schemas and hostile patterns: refused with a StructuredOutputError naming the schema
path before anything recurses into them, and answers checked against patterns in linear time."""

from __future__ import annotations

import pytest

from midori_hf_nb.structured import ResponseFormat, StructuredOutputError, response_format_from
from midori_hf_nb.structured.schema_checks import MAX_SCHEMA_DEPTH

from .conftest import loaded_agent, run

pytestmark = pytest.mark.timeout(120)


def nested_objects(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def nested_arrays(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return schema


def nested_any_of(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"anyOf": [schema, {"type": "integer"}]}
    return schema


LEFT_RECURSIVE = {"$defs": {"A": {"anyOf": [{"$ref": "#/$defs/A"}, {"type": "string"}]}}, "$ref": "#/$defs/A"}


@pytest.mark.parametrize("schema, path", [
    (nested_objects(200), "#/properties/a/properties/a"),
    (nested_arrays(1000), "#/items/items"),
    (nested_arrays(5000), "#/items/items"),
    (nested_any_of(1000), "#/anyOf/0/anyOf/0"),
], ids=["objects-200", "arrays-1000", "arrays-5000", "anyOf-1000"])
def test_deep_schemas_are_refused_naming_the_path_and_the_bound(schema, path):
    with pytest.raises(StructuredOutputError) as caught:
        response_format_from(schema)
    message = str(caught.value)
    assert message.startswith("response_format:") and path in message
    assert f"more than {MAX_SCHEMA_DEPTH} levels" in message


def test_a_schema_within_the_bound_and_a_recursive_tree_are_accepted():
    assert response_format_from(nested_objects(20)).schema["type"] == "object"
    tree = {"$defs": {"node": {"type": "object", "properties": {
        "name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
        "required": ["name"]}}, "$ref": "#/$defs/node"}
    fmt = response_format_from(tree)
    assert fmt.parse('{"name": "a", "children": [{"name": "b", "children": []}]}')["children"][0]["name"] == "b"


def test_a_deep_tool_parameter_schema_is_refused_too():
    from midori_hf_nb.structured import ToolChoice
    from midori_hf_nb.structured.tools import tool_call_constraint

    tool = {"type": "function", "function": {"name": "f", "parameters": nested_arrays(300)}}
    with pytest.raises(StructuredOutputError, match=r"tool_choice: .*#/anyOf|tool_choice: .*#/properties"):
        tool_call_constraint([tool], ToolChoice("required"))


def test_a_left_recursive_schema_is_refused_naming_the_cycle():
    with pytest.raises(StructuredOutputError) as caught:
        response_format_from(LEFT_RECURSIVE)
    message = str(caught.value)
    assert "#/$defs/A" in message and "left-recursive" in message
    # the same through oneOf/allOf and a root reference
    with pytest.raises(StructuredOutputError, match="left-recursive"):
        response_format_from({"oneOf": [{"allOf": [{"$ref": "#"}]}, {"type": "integer"}]})


def test_an_undefined_forward_reference_is_a_structured_error():
    with pytest.raises(StructuredOutputError) as caught:
        response_format_from(dict[str, "Unresolved"])  # noqa: F821
    assert "not fully defined" in str(caught.value) and caught.value.__class__ is StructuredOutputError


def test_checking_against_a_recursive_schema_never_escapes_as_recursion_error():
    # made by hand, past the checks: a failure while parsing is named, not a RecursionError
    fmt = ResponseFormat("schema", LEFT_RECURSIVE, "schema")
    with pytest.raises(StructuredOutputError, match="recursion limit"):
        fmt.parse('"x"')
    deep = response_format_from({"$defs": {"l": {"type": "array", "items": {"$ref": "#/$defs/l"}}}, "$ref": "#/$defs/l"})
    with pytest.raises(StructuredOutputError, match="recursion limit|not JSON"):
        deep.parse("[" * 5000 + "]" * 5000)


@pytest.fixture(scope="module")
def tiny_agent(tiny_model):
    yield from loaded_agent(tiny_model, max_new_tokens=8)


def test_invoke_with_a_left_recursive_schema_is_refused_before_generating(tiny_agent, payload):
    with pytest.raises(StructuredOutputError, match="left-recursive"):
        run(tiny_agent.invoke(payload("Say a word."), response_format=LEFT_RECURSIVE))


# --------------------------------------------------------------------------- patterns in linear time


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pattern, text, matches", [
    ("(a|a)*b", "a" * 40, False),            # backtracking re: 2**40 steps
    ("(a|a)*b", "a" * 40 + "b", True),
    ("^(a+)+$", "a" * 40 + "!", False),
    ("^(a+)+$", "a" * 40, True),
    ("(x+x+)+y", "x" * 5000, False),
])
def test_patterns_are_checked_in_linear_time(pattern, text, matches):
    import json

    fmt = response_format_from({"type": "string", "pattern": pattern})
    if matches:
        assert fmt.parse(json.dumps(text)) == text
    else:
        with pytest.raises(StructuredOutputError, match="does not match"):
            fmt.parse(json.dumps(text))


@pytest.mark.timeout(60)
def test_pattern_properties_and_additional_keys_are_checked_in_linear_time():
    schema = {"type": "object", "patternProperties": {"^(a+)+$": {"type": "integer"}}, "additionalProperties": False}
    fmt = response_format_from(schema)
    assert fmt.parse('{"' + "a" * 40 + '": 1}') == {"a" * 40: 1}
    with pytest.raises(StructuredOutputError, match="Additional properties"):
        fmt.parse('{"' + "a" * 40 + '!": 1}')
    with pytest.raises(StructuredOutputError, match="is not of type 'integer'"):
        fmt.parse('{"' + "a" * 40 + '": "x"}')


def test_pattern_semantics_are_json_schema_s():
    from midori_hf_nb.structured.backend import pattern_search

    assert pattern_search("b", "abc")            # a search, not a full match
    assert not pattern_search("^b", "abc")       # anchors anchor
    assert not pattern_search("b$", "ab\n")      # ECMA-262: $ is the end, not before a final newline
    assert pattern_search("^a\\nb$", "a\nb") and pattern_search('^"x$', '"x')
    assert pattern_search("^.{3}$", "é€😀")      # characters, not bytes
    assert not pattern_search("x", "\ud800")     # a lone surrogate matches nothing


def test_a_pattern_the_library_cannot_run_is_a_structured_error():
    from midori_hf_nb.structured.backend import pattern_search

    with pytest.raises(StructuredOutputError, match="cannot be checked"):
        pattern_search("(?=a)a", "a")
