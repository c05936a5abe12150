"""Prompts through the model's own chat template, memory, fallback format and context fitting."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from midori_hf_nb import ContextWindowError, MemoryEntryData
from midori_hf_nb.prompting import build_prompt, plain_render


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def plain_tokenizer(tiny_plain_model):
    return AutoTokenizer.from_pretrained(tiny_plain_model)


def test_uses_chat_template_not_a_plain_string(tokenizer, payload):
    prompt = build_prompt(tokenizer, payload("Hi there", system="Be brief."), context_window=4096, max_new_tokens=64)
    assert prompt.used_chat_template
    assert prompt.text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n")
    assert "User:" not in prompt.text
    assert prompt.input_ids == tokenizer(prompt.text, add_special_tokens=False)["input_ids"]


def test_memory_roles_in_order(tokenizer, payload):
    memory = [MemoryEntryData("user", "My name is Alice"), MemoryEntryData("assistant", "Hello Alice!")]
    prompt = build_prompt(tokenizer, payload("What is my name?", memory=memory), context_window=4096,
                          max_new_tokens=64)
    text = prompt.text
    assert text.index("<|im_start|>user\nMy name is Alice") < text.index("<|im_start|>assistant\nHello Alice!") \
        < text.index("<|im_start|>user\nWhat is my name?")


def test_thinking_blob_used_only_without_memory(tokenizer, payload):
    p = payload("Continue.", thinking_blob="We were discussing rivers.")
    assert "We were discussing rivers." in build_prompt(tokenizer, p, context_window=4096, max_new_tokens=8).text
    p.memory = [MemoryEntryData("user", "hi"), MemoryEntryData("assistant", "hello")]
    assert "We were discussing rivers." not in build_prompt(tokenizer, p, context_window=4096, max_new_tokens=8).text


def test_user_profile_in_system_message(tokenizer, payload):
    p = payload("hi", user_profile={"name": "Ada", "language": "English"})
    text = build_prompt(tokenizer, p, context_window=4096, max_new_tokens=8).text
    assert "- name: Ada" in text and "- language: English" in text


def test_oldest_memory_dropped_first_to_fit(tokenizer, payload):
    memory = []
    for i in range(12):
        memory += [MemoryEntryData("user", f"question number {i} " + "word " * 20),
                   MemoryEntryData("assistant", f"answer number {i} " + "word " * 20)]
    p = payload("final question", memory=memory)
    full = build_prompt(tokenizer, p, context_window=100_000, max_new_tokens=10)
    assert full.dropped_memory == 0
    budget_window = full.num_tokens // 2 + 10
    fitted = build_prompt(tokenizer, p, context_window=budget_window, max_new_tokens=10)
    assert fitted.num_tokens <= budget_window - 10
    assert fitted.dropped_memory > 0 and fitted.dropped_memory % 2 == 0  # whole turns
    assert "question number 0 " not in fitted.text          # the oldest went first
    assert "answer number 11 " in fitted.text               # the newest stayed
    assert "final question" in fitted.text                  # the message is never cut
    first_kept = fitted.messages[1]
    assert first_kept["role"] == "user"


def test_message_alone_too_long_raises_clear_error(tokenizer, payload):
    p = payload("word " * 500, memory=[MemoryEntryData("user", "a"), MemoryEntryData("assistant", "b")])
    with pytest.raises(ContextWindowError, match=r"needs \d+ tokens but only 200 are available.*context_window=256"):
        build_prompt(tokenizer, p, context_window=256, max_new_tokens=56)


def test_plain_fallback_without_chat_template(plain_tokenizer, payload):
    assert plain_tokenizer.chat_template is None
    memory = [MemoryEntryData("user", "hi"), MemoryEntryData("assistant", "hello")]
    prompt = build_prompt(plain_tokenizer, payload("How are you?", system="Be kind.", memory=memory),
                          context_window=4096, max_new_tokens=8)
    assert not prompt.used_chat_template
    assert prompt.text == "Be kind.\n\nUser: hi\nAssistant: hello\nUser: How are you?\nAssistant:"
    assert prompt.text == plain_render(prompt.messages)


def test_template_rejecting_system_role_gets_it_merged(tokenizer, payload):
    strict = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    strict.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] ")
    prompt = build_prompt(strict, payload("Question?", system="Rules."), context_window=4096, max_new_tokens=8)
    assert prompt.text == "[user] Rules.\n\nQuestion?\n[assistant] "


# --------------------------------------------------------------------------- fitting long memory


def _fit_by_dropping_one_turn_at_a_time(tokenizer, payload, context_window, max_new_tokens, tools=None):
    """The reference: render, drop the oldest turn, render again, ... (what build_prompt must agree with)."""
    from midori_hf_nb.prompting import _drop_oldest_turn, memory_to_messages, render, system_text

    memory = memory_to_messages(payload.memory or [], structured_tools=tools is not None)
    system = system_text(payload, include_thinking_blob=not payload.memory, tool_instructions=None)
    head = [{"role": "system", "content": system}] if system else []
    total = len(memory)
    while True:
        text, ids, _ = render(tokenizer, [*head, *memory, {"role": "user", "content": payload.user_message}], tools)
        if len(ids) <= context_window - max_new_tokens:
            return text, ids, total - len(memory)
        if not memory:
            return None
        memory = _drop_oldest_turn(memory)


def _mixed_memory():
    """Turns of several shapes: an assistant first, tool calls with results, a tool entry, a system note."""
    return [
        MemoryEntryData("assistant", "Welcome back."),
        MemoryEntryData("user", "Look up the weather in Paris " + "please " * 5),
        MemoryEntryData("assistant", "", tool_calls=[{"name": "weather", "arguments": {"city": "Paris"},
                                                      "result": {"sky": "clear"}}]),
        MemoryEntryData("assistant", "It is clear in Paris."),
        MemoryEntryData("user", "And Rome? " + "thanks " * 8),
        MemoryEntryData("tool", "sunny", metadata={"name": "weather"}),
        MemoryEntryData("assistant", "Sunny in Rome."),
        MemoryEntryData("system", "Be brief from now on."),
        MemoryEntryData("user", "Summarise " + "everything " * 6),
        MemoryEntryData("assistant", "Clear in Paris, sunny in Rome."),
        MemoryEntryData("user", "Thanks."),
        MemoryEntryData("assistant", "You are welcome."),
    ]


@pytest.mark.parametrize("structured", [False, True], ids=["tools-as-text", "tools-in-template"])
def test_fitting_agrees_with_dropping_one_turn_at_a_time(tokenizer, payload, structured):
    p = payload("What was the weather?", memory=_mixed_memory())
    tools = [] if structured else None
    full = build_prompt(tokenizer, p, context_window=100_000, max_new_tokens=0, tools=tools)
    bare = build_prompt(tokenizer, payload("What was the weather?"), context_window=100_000, max_new_tokens=0)
    checked = 0
    for window in range(bare.num_tokens - 3, full.num_tokens + 3):
        expected = _fit_by_dropping_one_turn_at_a_time(tokenizer, p, window, 0, tools)
        if expected is None:
            with pytest.raises(ContextWindowError):
                build_prompt(tokenizer, p, context_window=window, max_new_tokens=0, tools=tools)
            continue
        got = build_prompt(tokenizer, p, context_window=window, max_new_tokens=0, tools=tools)
        assert (got.text, got.input_ids, got.dropped_memory) == expected, window
        assert got.num_tokens <= window
        checked += 1
    assert checked > 20


def test_turn_starts_are_where_dropping_turns_leaves_memory():
    import random

    from midori_hf_nb.prompting import _drop_oldest_turn, turn_starts

    rng = random.Random(7)
    for _ in range(300):
        memory = [{"role": rng.choice(["user", "assistant", "tool", "system"])} for _ in range(rng.randrange(0, 12))]
        expected, rest = [0], memory
        while rest:
            rest = _drop_oldest_turn(rest)
            expected.append(len(memory) - len(rest))
        assert turn_starts(memory) == expected, memory


def test_twenty_thousand_memory_entries_fit_in_linear_time(tokenizer, payload):
    import time

    memory = [MemoryEntryData("user" if i % 2 == 0 else "assistant",
                              f"entry {i}: " + "some words of the conversation " * 3) for i in range(20_000)]
    p = payload("What did we talk about?", memory=memory)
    started = time.perf_counter()
    prompt = build_prompt(tokenizer, p, context_window=2048, max_new_tokens=256)
    seconds = time.perf_counter() - started
    # About half a second on a busy 2-core machine; re-rendering after each dropped turn took hours.
    assert seconds < 10, f"fitting 20,000 memory entries took {seconds:.1f} s"
    assert prompt.num_tokens <= 2048 - 256
    assert 19_000 < prompt.dropped_memory < 20_000 and prompt.dropped_memory % 2 == 0
    assert "entry 19999: " in prompt.text and "entry 19997: " in prompt.text
    assert f"entry {prompt.dropped_memory - 1}: " not in prompt.text
    assert prompt.text.endswith("<|im_start|>user\nWhat did we talk about?<|im_end|>\n<|im_start|>assistant\n")
    one_more = build_prompt(tokenizer, payload("What did we talk about?", memory=memory[prompt.dropped_memory - 2:]),
                            context_window=100_000, max_new_tokens=0)
    assert one_more.num_tokens > 2048 - 256  # the next older turn would not have fitted
