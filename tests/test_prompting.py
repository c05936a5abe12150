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
