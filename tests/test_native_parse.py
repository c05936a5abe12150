"""A tokenizer's own response parser (``tokenizer.response_template``) versus the tag fallback.

transformers 5 tokenizers may ship a declarative ``response_template`` (saved in
``tokenizer_config.json``) read by ``tokenizer.parse_response(text, prefix=prompt, tools=...)``.
The agent uses it when present (``metadata["parser"] == "tokenizer"``) and falls back to its
tag parser when the tokenizer has none or the template cannot parse the output
(``metadata["parser"] == "tags"``).

The template here uses ``<plan>...</plan>`` for reasoning, a delimiter the tag parser does not
know, so the tests can tell which parser produced ``thinking`` and ``response``. Outputs are
forced in real generations on tiny random models by ``ScriptedOutput``.
"""

from __future__ import annotations

import json

import pytest

from midori_hf_nb.testing import ScriptedOutput, build_tiny_model

from .conftest import loaded_agent, run

#: Reasoning in <plan> blocks, Hermes-style <tool_call> JSON calls, the rest is content.
RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "reasoning_content": {"open": "<plan>", "close": "</plan>", "content": "text"},
        "tool_calls": {
            "open_pattern": r"\s*<tool_call>",
            "close": "</tool_call>",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"close_pattern": r"\s*<\|im_end\|>", "content": "text"},
    },
}

#: ChatML whose generation prompt pre-writes the opening <plan> (the model continues inside it).
PREFILL_CHAT_TEMPLATE = (
    "{%- for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n<plan>{%- endif %}"
)


def _with_response_template(folder, template):
    """Give the tokenizer saved in ``folder`` a response template (saved to tokenizer_config.json)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.response_template = template
    tokenizer.save_pretrained(folder)
    return folder


def _agent(path):
    return loaded_agent(path, max_new_tokens=96)


@pytest.fixture(scope="module")
def template_agent(tmp_path_factory, default_model_dir):
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny-response-template") / "model", default_model_dir)
    yield from _agent(_with_response_template(folder, RESPONSE_TEMPLATE))


@pytest.fixture(scope="module")
def prefill_agent(tmp_path_factory, default_model_dir):
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny-prefill") / "model", default_model_dir,
                              chat_template=PREFILL_CHAT_TEMPLATE)
    yield from _agent(_with_response_template(folder, RESPONSE_TEMPLATE))


@pytest.fixture(scope="module")
def tags_agent(tiny_model):
    """The same tokenizer and chat template without a response template."""
    yield from _agent(tiny_model)


def forced(agent, texts) -> ScriptedOutput:
    return ScriptedOutput(agent.loaded_model.tokenizer, texts)


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first term.
        b: The second term.
    """
    return a + b


def test_the_template_survives_saving_and_loading(template_agent, tags_agent):
    assert template_agent.loaded_model.tokenizer.response_template == RESPONSE_TEMPLATE
    assert getattr(tags_agent.loaded_model.tokenizer, "response_template", None) is None


def test_thinking_and_answer_come_from_the_tokenizer(template_agent, payload):
    text = "<plan>Two and two make four.</plan>The answer is 4."
    response = run(template_agent.invoke(payload("What is 2 + 2?"), logits_processor=[forced(template_agent, text)]))
    assert response.metadata["raw_text"] == text  # the forced output reached the parser unchanged
    assert response.metadata["parser"] == "tokenizer"
    assert response.thinking == "Two and two make four."
    assert response.response == "The answer is 4."
    assert response.metadata["thinking_blocks"] == ["Two and two make four."]


def test_without_a_template_the_tags_parser_answers(tags_agent, payload):
    text = "<plan>Two and two make four.</plan>The answer is 4."
    response = run(tags_agent.invoke(payload("What is 2 + 2?"), logits_processor=[forced(tags_agent, text)]))
    assert response.metadata["parser"] == "tags"
    # <plan> is not a reasoning tag of the tag parser: everything stays in the answer
    assert response.thinking == "" and response.response == text

    think = "<think>Two and two make four.</think>The answer is 4."
    response = run(tags_agent.invoke(payload("What is 2 + 2?"), logits_processor=[forced(tags_agent, think)]))
    assert response.metadata["parser"] == "tags"
    assert response.thinking == "Two and two make four." and response.response == "The answer is 4."


def test_tool_calls_come_from_the_tokenizer_with_typed_arguments(template_agent, payload):
    text = ('<plan>Use the adder.</plan>Adding now.\n'
            '<tool_call>{"name": "add", "arguments": {"a": "2", "b": 3}}</tool_call>')
    response = run(template_agent.invoke_with_tools(payload("2 + 3?"), [add],
                                                    logits_processor=[forced(template_agent, text)]))
    meta = response.metadata
    assert meta["parser"] == "tokenizer" and meta["tool_parse_errors"] == []
    # the tokenizer's parser casts "2" to 2 from the tool's schema (tools= reached parse_response)
    assert [(c["name"], c["arguments"]) for c in response.tool_calls] == [("add", {"a": 2, "b": 3})]
    assert response.tool_calls[0]["id"]
    assert "<tool_call>" not in response.response and "Use the adder." in response.thinking
    assert "<plan>" not in response.thinking + response.response


def test_an_unknown_tool_from_the_tokenizer_is_flagged(template_agent, payload):
    text = '<tool_call>{"name": "delete_everything", "arguments": {}}</tool_call>'
    response = run(template_agent.invoke_with_tools(payload("Clean up."), [add],
                                                    logits_processor=[forced(template_agent, text)]))
    assert response.metadata["parser"] == "tokenizer"
    assert [(c["name"], c.get("unknown")) for c in response.tool_calls] == [("delete_everything", True)]
    assert response.metadata["unknown_tool_calls"] == ["delete_everything"]


def test_a_call_the_tokenizer_cannot_read_is_recorded(template_agent, payload):
    # valid JSON, so the tokenizer's parser succeeds, but not a call: it must not vanish silently
    text = '<plan>Try it.</plan><tool_call>{"arguments": {"a": 1}}</tool_call>'
    response = run(template_agent.invoke_with_tools(payload("2 + 3?"), [add],
                                                    logits_processor=[forced(template_agent, text)]))
    meta = response.metadata
    assert meta["parser"] == "tokenizer" and response.tool_calls is None
    assert len(meta["tool_parse_errors"]) == 1 and "without a name" in meta["tool_parse_errors"][0]


def test_a_parse_failure_falls_back_to_tags(template_agent, payload):
    # malformed JSON inside <tool_call>: the tokenizer's json field raises, the tag parser takes over
    text = '<think>Let me add.</think><tool_call>{"name": "add", "arguments": {"a": 2,</tool_call>'
    response = run(template_agent.invoke_with_tools(payload("2 + ?"), [add],
                                                    logits_processor=[forced(template_agent, text)]))
    meta = response.metadata
    assert meta["parser"] == "tags"
    assert response.thinking == "Let me add."
    assert response.tool_calls is None and meta["tool_parse_errors"]
    assert "<tool_call>" not in response.response


def test_the_prompt_is_the_parsers_prefix(prefill_agent, payload):
    # the chat template pre-writes "<plan>": the model's output starts inside the reasoning block
    scripted = forced(prefill_agent, "Half of ten is five.</plan>It is 5.")
    response = run(prefill_agent.invoke(payload("Half of 10?"), logits_processor=[scripted]))
    prompt = prefill_agent.loaded_model.tokenizer.decode(scripted.prompts[0])
    assert prompt.endswith("<|im_start|>assistant\n<plan>")
    assert response.metadata["parser"] == "tokenizer"
    assert response.thinking == "Half of ten is five."
    assert response.response == "It is 5."


def test_run_tools_executes_calls_read_by_the_tokenizer(template_agent, payload):
    seen = []

    def multiply(a: int, b: int) -> int:
        """Multiply two integers.

        Args:
            a: The first factor.
            b: The second factor.
        """
        seen.append((a, b))
        return a * b

    scripted = forced(template_agent, [
        '<plan>Multiply first.</plan><tool_call>{"name": "multiply", "arguments": {"a": "6", "b": "7"}}</tool_call>',
        "<plan>The tool said 42.</plan>6 times 7 is 42.",
    ])
    response = run(template_agent.run_tools(payload("6 * 7?"), [multiply], logits_processor=[scripted]))
    assert seen == [(6, 7)]  # typed by the tokenizer's parser before execution
    assert response.metadata["parser"] == "tokenizer"
    assert response.response == "6 times 7 is 42."
    assert response.thinking == "Multiply first.\n\nThe tool said 42."
    steps = response.metadata["tool_steps"]
    assert [(s["name"], s["result"]) for s in steps] == [("multiply", 42)]
    second_prompt = template_agent.loaded_model.tokenizer.decode(scripted.prompts[1])
    assert json.dumps({"a": 6, "b": 7}) in second_prompt and "Result of tool multiply: 42" in second_prompt
