"""Tools offered to a real generation: schemas, prompts, every call format, errors, streaming.

Exact outputs come from ``ScriptedOutput``, a logits processor that forces the tokens of a
text inside a real ``generate`` on the tiny random models, so tokenization, streaming,
decoding and parsing all run for real. ``tiny_model`` has a chat template without tools
support, ``tiny_tools_model`` one that renders ``tools=``.
"""

from __future__ import annotations

import json

import pytest

from midori_hf_nb import HuggingFaceLocalAgent, ToolSchemaError
from midori_hf_nb.parsing import parse_tool_calls
from midori_hf_nb.testing import ScriptedOutput
from midori_hf_nb.tools import tool_instructions, tool_schema, tool_schemas

from .conftest import loaded_agent, run


def _agent(path):
    return loaded_agent(path, max_new_tokens=96)


@pytest.fixture(scope="module")
def plain_agent(tiny_model):
    yield from _agent(tiny_model)


@pytest.fixture(scope="module")
def tools_agent(tiny_tools_model):
    yield from _agent(tiny_tools_model)


def script(agent: HuggingFaceLocalAgent, texts) -> ScriptedOutput:
    return ScriptedOutput(agent.loaded_model.tokenizer, texts)


def prompt_text(agent: HuggingFaceLocalAgent, scripted: ScriptedOutput, index: int = 0) -> str:
    """The prompt that reached ``generate`` in the ``index``-th generation, decoded."""
    return agent.loaded_model.tokenizer.decode(scripted.prompts[index])


def get_weather(city: str, unit: str = "celsius") -> str:
    """Get the current weather for a city.

    Args:
        city: The city name.
        unit: The temperature unit (choices: ["celsius", "fahrenheit"])
    """
    return f"Sunny in {city}"


def search(query: str, limit: int = 5) -> str:
    """Search the web.

    Args:
        query: What to look for.
        limit: How many results.
    """
    return f"Results for {query}"


TOOLS = [get_weather, search]


def calls_of(response):
    return [(c["name"], c["arguments"]) for c in response.tool_calls or []]


def assert_ids_unique(calls):
    ids = [c["id"] for c in calls or []]
    assert all(isinstance(i, str) and i for i in ids) and len(set(ids)) == len(ids)


# --------------------------------------------------------------------------- schemas


def test_callable_schema_through_get_json_schema():
    schema = tool_schema(get_weather)
    assert schema["type"] == "function"
    fn = schema["function"]
    assert fn["name"] == "get_weather"
    assert fn["description"] == "Get the current weather for a city."
    assert fn["parameters"]["required"] == ["city"]
    assert fn["parameters"]["properties"]["city"] == {"type": "string", "description": "The city name."}
    assert fn["parameters"]["properties"]["unit"]["enum"] == ["celsius", "fahrenheit"]


def test_callable_without_args_section_is_described_without_argument_descriptions():
    def lookup(word: str, strict: bool = False) -> str:
        """Look up a word."""
        return word

    fn = tool_schema(lookup)["function"]
    assert fn["description"] == "Look up a word."
    assert fn["parameters"]["properties"] == {"word": {"type": "string"}, "strict": {"type": "boolean"}}
    assert fn["parameters"]["required"] == ["word"]


def test_missing_docstring_is_a_clear_error():
    def convert(amount: float) -> float:
        return amount

    with pytest.raises(ToolSchemaError) as info:
        tool_schema(convert)
    assert "'convert'" in str(info.value) and "no docstring" in str(info.value)


def test_missing_type_hints_are_named():
    def scale(value, factor: float, offset):
        """Scale a value."""
        return value * factor + offset

    with pytest.raises(ToolSchemaError) as info:
        tool_schema(scale)
    message = str(info.value)
    assert "'scale'" in message and "'value'" in message and "'offset'" in message and "type hint" in message
    assert "'factor'" not in message


def test_unsupported_type_hint_names_the_function():
    class Point:
        pass

    def move(point: Point) -> None:
        """Move a point.

        Args:
            point: the point
        """

    with pytest.raises(ToolSchemaError, match="'move'"):
        tool_schema(move)


def test_dict_tools():
    only_name = tool_schema({"name": "lookup", "description": "Look up a word in the dictionary."})
    assert only_name == {"type": "function", "function": {
        "name": "lookup", "description": "Look up a word in the dictionary.",
        "parameters": {"type": "object", "properties": {}}}}
    openai = {"type": "function", "function": {"name": "f", "description": "d",
                                               "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}
    assert tool_schema(openai) == openai
    assert tool_schema(openai["function"]) == openai
    with pytest.raises(ToolSchemaError, match="has no 'name'"):
        tool_schema({"description": "nameless"})
    with pytest.raises(ToolSchemaError, match="'parameters' must be a JSON-schema object"):
        tool_schema({"name": "x", "parameters": "a string"})


def test_tool_lists_are_checked():
    with pytest.raises(ToolSchemaError, match="offered more than once: search"):
        tool_schemas([search, {"name": "search", "description": "again"}])
    with pytest.raises(ToolSchemaError, match="wrap a single tool in a list"):
        tool_schemas(search)
    assert tool_schemas(None) == []


def test_instructions_show_formats_the_parser_accepts():
    text = tool_instructions(tool_schemas(TOOLS))
    assert "- get_weather(city: string, unit: string (optional)): Get the current weather for a city." in text
    examples = [line for line in text.splitlines() if "TOOL_NAME" in line]
    assert examples == ['{"tool_calls": [{"name": "TOOL_NAME", "arguments": {"ARG": "VALUE"}}]}',
                        'TOOL_CALL: TOOL_NAME(ARG="VALUE", OTHER=2)']
    assert [(c["name"], c["arguments"]) for c in parse_tool_calls("\n".join(examples))] == [
        ("TOOL_NAME", {"ARG": "VALUE"}), ("TOOL_NAME", {"ARG": "VALUE", "OTHER": 2})]


def test_schema_errors_come_before_any_generation(plain_agent, payload):
    def nodoc(x: int):
        return x

    with pytest.raises(ToolSchemaError, match="'nodoc'"):
        run(plain_agent.invoke_with_tools(payload("hi"), [nodoc]))


# --------------------------------------------------------------------------- prompts


def test_template_with_tools_gets_the_schemas(tools_agent, payload):
    forced = script(tools_agent, '<tool_call>{"name": "search", "arguments": {"query": "tea"}}</tool_call>')
    response = run(tools_agent.invoke_with_tools(payload("Find tea."), TOOLS, logits_processor=[forced]))
    prompt = prompt_text(tools_agent, forced)
    for tool in TOOLS:
        assert json.dumps(tool_schema(tool), ensure_ascii=False) in prompt
    assert "<tools>" in prompt and "You can call these tools:" not in prompt and "TOOL_NAME" not in prompt
    assert response.metadata["tools_in_template"] is True
    assert response.metadata["tools_offered"] == ["get_weather", "search"]
    assert calls_of(response) == [("search", {"query": "tea"})]


def test_template_without_tools_gets_instructions_in_the_system_message(plain_agent, payload):
    forced = script(plain_agent, "TOOL_CALL: search(query=tea)")
    response = run(plain_agent.invoke_with_tools(payload("Find tea.", system="Be brief."), TOOLS,
                                                 logits_processor=[forced]))
    prompt = prompt_text(plain_agent, forced)
    system = prompt.split("<|im_start|>system\n", 1)[1].split("<|im_end|>", 1)[0]
    assert system == "Be brief.\n\n" + tool_instructions(tool_schemas(TOOLS))
    assert '{"tool_calls": [{"name": "TOOL_NAME", "arguments": {"ARG": "VALUE"}}]}' in system
    assert 'TOOL_CALL: TOOL_NAME(ARG="VALUE", OTHER=2)' in system
    assert response.metadata["tools_in_template"] is False
    assert calls_of(response) == [("search", {"query": "tea"})]


def test_dict_tool_with_only_name_and_description(tools_agent, plain_agent, payload):
    lookup = {"name": "lookup", "description": "Look up a word in the dictionary."}
    forced = script(tools_agent, '<tool_call>{"name": "lookup", "arguments": {"word": "tea"}}</tool_call>')
    response = run(tools_agent.invoke_with_tools(payload("Define tea."), [lookup], logits_processor=[forced]))
    assert json.dumps(tool_schema(lookup)) in prompt_text(tools_agent, forced)
    assert response.tool_calls == [{"name": "lookup", "arguments": {"word": "tea"}, "id": response.tool_calls[0]["id"]}]
    forced = script(plain_agent, 'TOOL_CALL: lookup(word="tea")')
    response = run(plain_agent.invoke_with_tools(payload("Define tea."), [lookup], logits_processor=[forced]))
    assert "- lookup(): Look up a word in the dictionary." in prompt_text(plain_agent, forced)
    assert calls_of(response) == [("lookup", {"word": "tea"})]


# --------------------------------------------------------------------------- every format, real generation

WEATHER_PARIS = ("get_weather", {"city": "Paris"})
TEA = ("search", {"query": "tea"})

FORMATS = [
    ("json", '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}', [WEATHER_PARIS], "", ""),
    ("json-in-prose", 'Checking. {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]} One moment.',
     [WEATHER_PARIS], "One moment.", "Checking."),
    ("json-fenced", '```json\n{"tool_calls": [{"name": "search", "arguments": {"query": "tea", "limit": 2}}]}\n```',
     [("search", {"query": "tea", "limit": 2})], "", ""),
    ("toolcall", 'TOOL_CALL: search(query="cats, dogs (pets)", limit=3)', [("search", {"query": "cats, dogs (pets)", "limit": 3})],
     "", ""),
    ("toolcall-seed", "TOOL_CALL: search(query=example, limit=10)", [("search", {"query": "example", "limit": 10})], "", ""),
    ("hermes-two",
     '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
     '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "fahrenheit"}}\n</tool_call>',
     [WEATHER_PARIS, ("get_weather", {"city": "Oslo", "unit": "fahrenheit"})], "", ""),
    ("bare-arguments", '{"name": "search", "arguments": {"query": "tea"}}', [TEA], "", ""),
    ("bare-parameters", '{"name": "search", "parameters": {"query": "tea"}}', [TEA], "", ""),
    ("arguments-json-string", '{"tool_calls": [{"name": "search", "arguments": "{\\"query\\": \\"tea\\"}"}]}', [TEA], "", ""),
    ("openai-item", '{"type": "function", "function": {"name": "search", "arguments": "{\\"query\\": \\"tea\\"}"}}', [TEA], "", ""),
]


@pytest.mark.parametrize("text,expected,answer,thinking", [f[1:] for f in FORMATS], ids=[f[0] for f in FORMATS])
def test_every_format_through_invoke_with_tools(plain_agent, payload, text, expected, answer, thinking):
    forced = script(plain_agent, text)
    response = run(plain_agent.invoke_with_tools(payload("Use a tool."), TOOLS, logits_processor=[forced]))
    meta = response.metadata
    assert meta["raw_text"] == text and meta["finish_reason"] == "stop"
    assert calls_of(response) == expected
    assert_ids_unique(response.tool_calls)
    assert response.response == answer and response.thinking == thinking
    assert meta["tool_parse_errors"] == [] and meta["unknown_tool_calls"] == []


@pytest.mark.parametrize("text,expected", [
    ('<tool_call>{"name": "search", "arguments": {"query": "tea"}}</tool_call>', [TEA]),
    ("TOOL_CALL: get_weather(city=Paris)", [WEATHER_PARIS]),
])
def test_formats_on_a_template_with_tools(tools_agent, payload, text, expected):
    response = run(tools_agent.invoke_with_tools(payload("Use a tool."), TOOLS,
                                                 logits_processor=[script(tools_agent, text)]))
    assert calls_of(response) == expected and response.response == ""


def test_answer_without_a_call(plain_agent, payload):
    text = 'The weather tool is not needed: {"name": "Paris", "population": 2100000}.'
    response = run(plain_agent.invoke_with_tools(payload("Hi"), TOOLS, logits_processor=[script(plain_agent, text)]))
    assert response.tool_calls is None and response.response == text
    assert response.metadata["tool_parse_errors"] == []


def test_mixed_thinking_and_tool_calls(plain_agent, payload):
    text = ('<think>The user wants the weather, so I call the tool.</think>Let me check the weather.\n'
            '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\nBack in a moment.')
    response = run(plain_agent.invoke_with_tools(payload("Weather?"), TOOLS, logits_processor=[script(plain_agent, text)]))
    assert response.metadata["thinking_blocks"] == ["The user wants the weather, so I call the tool.",
                                                    "Let me check the weather."]
    assert response.thinking == "The user wants the weather, so I call the tool.\n\nLet me check the weather."
    assert response.response == "Back in a moment."
    assert calls_of(response) == [WEATHER_PARIS]


def test_draft_calls_inside_thinking_are_not_calls(plain_agent, payload):
    text = '<think>Maybe TOOL_CALL: search(query=cats)? No.</think>TOOL_CALL: search(query=dogs)'
    response = run(plain_agent.invoke_with_tools(payload("Search"), TOOLS, logits_processor=[script(plain_agent, text)]))
    assert calls_of(response) == [("search", {"query": "dogs"})]
    assert response.thinking == "Maybe TOOL_CALL: search(query=cats)? No."


def test_malformed_json_is_recorded_not_raised(plain_agent, payload):
    text = 'Searching. {"tool_calls": [{"name": "search", "arguments": {"query": "tea"}]}'
    response = run(plain_agent.invoke_with_tools(payload("Find tea."), TOOLS, logits_processor=[script(plain_agent, text)]))
    assert response.tool_calls is None
    errors = response.metadata["tool_parse_errors"]
    assert len(errors) == 1 and "malformed tool-call JSON" in errors[0]
    assert response.response == "Searching."  # the broken call text does not reach the user...
    assert response.metadata["raw_text"] == text  # ...but nothing is lost


def test_malformed_call_next_to_a_good_one(tools_agent, payload):
    text = ('<tool_call>{"name": "search", "arguments": {"query": </tool_call>'
            '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>')
    response = run(tools_agent.invoke_with_tools(payload("Go"), TOOLS, logits_processor=[script(tools_agent, text)]))
    assert calls_of(response) == [WEATHER_PARIS]
    assert len(response.metadata["tool_parse_errors"]) == 1
    assert "not valid JSON" in response.metadata["tool_parse_errors"][0]


def test_unknown_tool_is_flagged(plain_agent, payload):
    text = "TOOL_CALL: launch_rockets(count=3)\nTOOL_CALL: search(query=tea)"
    response = run(plain_agent.invoke_with_tools(payload("Go"), TOOLS, logits_processor=[script(plain_agent, text)]))
    assert calls_of(response) == [("launch_rockets", {"count": 3}), TEA]
    assert response.tool_calls[0]["unknown"] is True and "unknown" not in response.tool_calls[1]
    assert response.metadata["unknown_tool_calls"] == ["launch_rockets"]


def test_invoke_and_stream_with_tools_never_execute(plain_agent, payload):
    executed = []

    def delete_file(path: str) -> str:
        """Delete a file.

        Args:
            path: The file to delete.
        """
        executed.append(path)
        return "deleted"

    text = 'TOOL_CALL: delete_file(path="/tmp/important")'
    response = run(plain_agent.invoke_with_tools(payload("Clean up"), [delete_file],
                                                 logits_processor=[script(plain_agent, text)]))
    assert calls_of(response) == [("delete_file", {"path": "/tmp/important"})]
    streamed = run(plain_agent.stream_with_tools(payload("Clean up"), [delete_file],
                                                 logits_processor=[script(plain_agent, text)]).collect())
    assert calls_of(streamed) == [("delete_file", {"path": "/tmp/important"})]
    assert executed == []
    assert "tool_steps" not in response.metadata


# --------------------------------------------------------------------------- streaming events


async def _events(stream):
    return [event async for event in stream]


def test_stream_events_tell_thinking_from_text(plain_agent, payload):
    text = "<think>Two and two make four.</think>The answer is 4."
    events = run(_events(plain_agent.stream(payload("2+2?"), events=True, logits_processor=[script(plain_agent, text)])))
    kinds = [e.kind for e in events]
    assert kinds[-1] == "done" and "tool_call" not in kinds
    first_text = kinds.index("text")
    assert set(kinds[:first_text]) == {"thinking"} and set(kinds[first_text:-1]) == {"text"}
    assert "".join(e.text for e in events if e.kind == "thinking") == "Two and two make four."
    assert "".join(e.text for e in events if e.kind == "text") == "The answer is 4."
    assert events[-1].data.response == "The answer is 4." and events[-1].data.thinking == "Two and two make four."
    plain = run(_events(plain_agent.stream(payload("2+2?"), logits_processor=[script(plain_agent, text)])))
    assert all(isinstance(p, str) for p in plain) and "".join(plain) == "The answer is 4."


def test_stream_with_tools_announces_calls_live(plain_agent, payload):
    text = ('<think>Need the weather.</think>Let me check.\nTOOL_CALL: get_weather(city="Paris")\n'
            "One moment please.")
    stream = plain_agent.stream_with_tools(payload("Weather?"), TOOLS, logits_processor=[script(plain_agent, text)])
    events = run(_events(stream))
    kinds = [e.kind for e in events]
    call_at = kinds.index("tool_call")
    later_text = [i for i, e in enumerate(events) if e.kind == "text" and "moment" in e.text]
    assert later_text and call_at < later_text[0], kinds  # announced before the text after it was generated
    assert kinds.count("tool_call") == 1 and kinds[-1] == "done"
    assert "".join(e.text for e in events if e.kind == "thinking") == "Need the weather."
    texts = "".join(e.text for e in events if e.kind == "text")
    assert "TOOL_CALL" not in texts and texts.startswith("Let me check.") and texts.endswith("One moment please.")
    call = events[call_at].data
    assert (call["name"], call["arguments"]) == WEATHER_PARIS
    final = stream.response
    assert final is events[-1].data
    assert final.tool_calls[0]["id"] == call["id"]
    assert final.thinking == "Need the weather.\n\nLet me check." and final.response == "One moment please."


def test_stream_with_tools_hermes_and_unknown(tools_agent, payload):
    text = ('<tool_call>{"name": "search", "arguments": {"query": "tea"}}</tool_call>'
            '<tool_call>{"name": "order_pizza", "arguments": {"size": "L"}}</tool_call>')
    events = run(_events(tools_agent.stream_with_tools(payload("Go"), TOOLS, logits_processor=[script(tools_agent, text)])))
    calls = [e.data for e in events if e.kind == "tool_call"]
    assert [(c["name"], c["arguments"]) for c in calls] == [TEA, ("order_pizza", {"size": "L"})]
    assert calls[1]["unknown"] is True and "unknown" not in calls[0]
    assert not [e for e in events if e.kind == "text"]
    assert [c["id"] for c in events[-1].data.tool_calls] == [c["id"] for c in calls]
