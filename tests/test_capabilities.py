"""Each probe of a torch / transformers internal (engine/capabilities/) on the installed versions,
and the decode path a generation reports (``metadata["decode_path"]``)."""

from __future__ import annotations

import logging
import threading
import warnings

import pytest
import torch
import transformers
from packaging.version import Version
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaForCausalLM, StoppingCriteriaList

from midori_hf_nb import HuggingFaceLocalAgent, make_payload
from midori_hf_nb.engine import capabilities
from midori_hf_nb.engine.capabilities import FastPathWarning
from midori_hf_nb.testing import ScriptedOutput

from .conftest import loaded_agent, run

NEW_CACHE_NAME = Version(transformers.__version__) >= Version("5.24.0")
#: the name LlamaForCausalLM's forward takes the cache under in this transformers
LLAMA_CACHE_ARGUMENT = "cache" if NEW_CACHE_NAME else "past_key_values"


@pytest.fixture(scope="module")
def tiny(tiny_model):
    yield from loaded_agent(tiny_model, max_new_tokens=12, device="cpu")


class PastKeyValuesLlama(LlamaForCausalLM):
    """A Llama whose forward names the cache ``past_key_values``, as transformers did before 5.24."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, logits_to_keep=0, **kwargs):
        if past_key_values is not None:
            kwargs[LLAMA_CACHE_ARGUMENT] = past_key_values
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               inputs_embeds=inputs_embeds, use_cache=use_cache, logits_to_keep=logits_to_keep,
                               **kwargs)


class OwnInputsLlama(LlamaForCausalLM):
    """A Llama that prepares its own generation inputs (as multimodal models do)."""

    def prepare_inputs_for_generation(self, *args, **kwargs):
        return super().prepare_inputs_for_generation(*args, **kwargs)


# --------------------------------------------------------------------------- probes


def test_the_cache_argument_is_the_one_this_transformers_names(tiny):
    model = tiny.loaded_model.model
    support = capabilities.decode_loop_support(model)
    assert support.supported and support.reason is None
    assert support.cache_argument == ("cache" if NEW_CACHE_NAME else "past_key_values")
    assert capabilities.forward_cache_argument(model) == support.cache_argument
    assert tiny.loaded_model.decode_support == support


def test_probes_of_input_preparation_and_dynamic_cache(tiny):
    model = tiny.loaded_model.model
    assert capabilities.prepares_inputs_the_standard_way(model) is True
    assert capabilities.supports_dynamic_cache(model) is True
    assert capabilities.cache_can_drop_rows() is True
    cache = capabilities.new_dynamic_cache(model)
    assert type(cache).__name__ == "DynamicCache"


def test_models_the_loop_cannot_drive_are_named_with_the_reason(tiny):
    model = tiny.loaded_model.model
    original = type(model)
    try:
        model.__class__ = OwnInputsLlama
        support = capabilities.decode_loop_support(model)
        assert not support.supported and "prepares its own generation inputs" in support.reason
    finally:
        model.__class__ = original

    class EncoderDecoder:
        class config:
            is_encoder_decoder = True

    assert "encoder-decoder" in capabilities.decode_loop_support(EncoderDecoder()).reason

    class NoCache(torch.nn.Module):
        config = model.config

        def forward(self, input_ids, logits_to_keep=0):
            return input_ids

    support = capabilities.decode_loop_support(NoCache())
    assert not support.supported and "takes neither of cache, past_key_values" in support.reason


def test_changed_generation_options_leave_out_bookkeeping():
    assert capabilities.changed_generation_options(GenerationConfig()) == set()
    assert capabilities.changed_generation_options(GenerationConfig(repetition_penalty=1.3)) == {"repetition_penalty"}
    assert not capabilities.changed_generation_options(GenerationConfig()) & capabilities.CONFIG_BOOKKEEPING_KEYS


def test_sampling_warpers_follow_the_settings():
    names = [type(w).__name__ for w in capabilities.sampling_warpers(GenerationConfig(
        do_sample=True, temperature=0.7, top_k=40, top_p=0.8))]
    assert names == ["TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper"]
    assert [type(w).__name__ for w in capabilities.sampling_warpers(GenerationConfig(
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0))] == []


def test_callback_streamer_hands_over_the_decoded_text(tiny):
    tokenizer = tiny.loaded_model.tokenizer
    ids = tokenizer.encode("Hello there, general Kenobi. How are you today?", add_special_tokens=False)
    pieces: list[str] = []
    streamer = capabilities.callback_streamer(tokenizer, pieces.append, threading.RLock())
    streamer.put(torch.tensor([ids[:1]]))  # the prompt (skipped)
    for token in ids[1:]:
        streamer.put(torch.tensor([token]))
    streamer.end()
    assert "".join(pieces) == tokenizer.decode(ids[1:])


def test_a_text_carry_joins_a_paused_streamer_to_its_continuation(tiny):
    """The streamer of a paused generation keeps the word it held (``TextStreamer``'s
    ``token_cache``/``print_len``) and the next one starts from it: the pieces of both equal one
    streamer's, split at every token (mid-word, mid-character of a multi-byte letter)."""
    tokenizer = tiny.loaded_model.tokenizer
    ids = tokenizer.encode("Hello there, généràl Kenobi 🙂 how are you?", add_special_tokens=False)
    for cut in range(2, len(ids)):
        pieces: list[str] = []
        carry = capabilities.TextCarry()
        first = capabilities.callback_streamer(tokenizer, pieces.append, threading.RLock(), carry=carry)
        first.put(torch.tensor([ids[:1]]))
        for token in ids[1:cut]:
            first.put(torch.tensor([token]))
        carry.hold = True
        first.end()  # paused: nothing flushed
        carry.hold = False
        counted: list[int] = []
        second = capabilities.callback_streamer(tokenizer, pieces.append, threading.RLock(), counted.append, carry)
        second.put(torch.tensor([ids[:cut]]))  # the prompt of the continuation (skipped)
        for token in ids[cut:]:
            second.put(torch.tensor([token]))
        second.end()
        assert "".join(pieces) == tokenizer.decode(ids[1:]), cut
        assert sum(counted) == len(ids) - cut
    assert "text-carry" not in capabilities.warned_keys()


def test_cpu_probes_answer_on_this_torch():
    capability = capabilities.cpu_capability()
    assert isinstance(capability, str) and capability
    assert isinstance(capabilities.cpu_has_native_bf16_gemm(), bool)


def test_weight_kernels_exist_and_compute_the_product():
    assert capabilities.missing_weight_kernels("int8") == []
    assert capabilities.missing_weight_kernels("int4") == []
    torch.manual_seed(0)
    x = torch.randn(3, 64)
    q = torch.randint(-127, 128, (16, 64), dtype=torch.int8)
    scale = torch.rand(16) + 0.5
    expected = (x @ q.to(torch.float32).t()) * scale
    assert torch.allclose(capabilities.int8_weight_matmul(x, q, scale), expected, rtol=1e-4, atol=1e-3)
    q4 = torch.randint(0, 16, (16, 64), dtype=torch.int32)
    scales = torch.rand(2, 16) + 0.5  # groups of 32 inputs: 2 groups x 16 outputs
    zeros = torch.randn(2, 16)
    weight = (q4.view(16, 2, 32) - 8).to(torch.float32) * scales.t()[..., None] + zeros.t()[..., None]
    packed = capabilities.int4_pack(q4)
    result = capabilities.int4_weight_matmul(x.to(torch.bfloat16), packed, 32,
                                             torch.stack([scales, zeros], dim=-1).to(torch.bfloat16))
    assert torch.allclose(result.to(torch.float32), x @ weight.view(16, 64).t(), rtol=0.05, atol=0.5)


def test_google_docstring_parser_reads_arguments():
    description, args, returns = capabilities.parse_google_docstring(
        "Add two numbers.\n\nArgs:\n    a: the first\n    b: the second\n\nReturns:\n    the sum")
    assert description == "Add two numbers." and args == {"a": "the first", "b": "the second"}
    assert returns == "the sum"


def test_tokenizer_response_parsing_probe(tiny):
    tokenizer = tiny.loaded_model.tokenizer
    assert capabilities.tokenizer_parses_responses(tokenizer) is False  # no response template
    assert callable(getattr(tokenizer, "parse_response", None))  # the method itself exists in 5.x


def test_fallback_warns_once_per_process_and_logs(caplog):
    key = "test-fallback-once"
    with caplog.at_level(logging.WARNING, logger="midori_hf_nb"):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            capabilities.fallback(key, "the fast path is off; the slow one runs")
            capabilities.fallback(key, "the fast path is off; the slow one runs")
    assert [str(w.message) for w in seen if issubclass(w.category, FastPathWarning)] == [
        "the fast path is off; the slow one runs"]
    assert caplog.text.count("the fast path is off") == 1
    assert key in capabilities.warned_keys()


# --------------------------------------------------------------------------- the decode loop under either name


def test_the_loop_drives_a_model_that_names_the_cache_past_key_values(tiny_model):
    """Transformers before 5.24 named the cache argument past_key_values: same tokens as generate."""
    agent = HuggingFaceLocalAgent(model=str(tiny_model), device="cpu", do_sample=False, max_new_tokens=16,
                                  progress=False, torch_dtype="float32")
    lm = run(agent.load()).loaded_model
    original, support = type(lm.model), lm.decode_support
    try:
        lm.model.__class__ = PastKeyValuesLlama
        lm.decode_support = capabilities.decode_loop_support(lm.model)
        assert lm.decode_support.supported and lm.decode_support.cache_argument == "past_key_values"
        response = run(agent.invoke(make_payload("Tell me a story.")))
        assert response.metadata["decode_path"] == "engine"
        lm.model.__class__ = original
        ids = agent.loaded_model.tokenizer.apply_chat_template(
            [{"role": "system", "content": "You are a helpful assistant."},
             {"role": "user", "content": "Tell me a story."}], add_generation_prompt=True, return_dict=True,
            return_tensors="pt")["input_ids"]
        plain = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
        with torch.inference_mode():
            expected = plain.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                                      pad_token_id=lm.pad_token_id)[0, ids.shape[1]:]
        expected_text = lm.tokenizer.decode(
            [t for t in expected.tolist() if t not in lm.eos_token_ids], skip_special_tokens=True)
        assert response.metadata["raw_text"] == expected_text
    finally:
        lm.model.__class__ = original
        lm.decode_support = support
        run(agent.unload_model())


# --------------------------------------------------------------------------- which path ran


@pytest.mark.slow
def test_the_default_call_on_the_default_model_takes_the_engines_loop(default_agent):
    """A silent fall-back to model.generate on the default path fails here (and in the benchmark smoke run)."""
    greedy = run(default_agent.invoke(make_payload("What is the capital of France?"), max_new_tokens=8))
    assert greedy.metadata["decode_path"] == "engine", greedy.metadata["decode_path_reason"]
    assert greedy.metadata["decode_path_reason"] is None
    sampled = run(default_agent.invoke(make_payload("What is the capital of France?"), max_new_tokens=8,
                                       temperature=0.7, seed=3))
    assert sampled.metadata["decode_path"] == "engine", sampled.metadata["decode_path_reason"]
    batch = default_agent.generate_batch([make_payload("Hi."), make_payload("Name a colour.")], max_new_tokens=4)
    assert {r.metadata["decode_path"] for r in batch} == {"engine"}


@pytest.mark.parametrize("overrides, reason", [
    ({"repetition_penalty": 1.3}, "generation options the engine's loop does not honour: repetition_penalty"),
    ({"min_new_tokens": 4}, "generation options the engine's loop does not honour: min_new_tokens"),
    ({"num_beams": 2, "do_sample": False}, "num_beams"),
    ({"stopping_criteria": "none"}, "generate() options the engine's loop does not run: stopping_criteria"),
])
def test_documented_cases_use_generate_and_say_why(tiny, overrides, reason):
    if overrides.get("stopping_criteria") == "none":
        overrides = {"stopping_criteria": StoppingCriteriaList()}
    if "num_beams" in overrides:
        response = tiny.generate_batch([make_payload("hi")], **overrides)[0]
    else:
        response = run(tiny.invoke(make_payload("hi"), **overrides))
    assert response.metadata["decode_path"] == "generate"
    assert reason in response.metadata["decode_path_reason"]


def test_decode_loop_generate_and_sampled_batches_use_generate(tiny_model):
    agent = HuggingFaceLocalAgent(model=str(tiny_model), device="cpu", do_sample=False, max_new_tokens=4,
                                  progress=False, decode_loop="generate")
    try:
        response = run(agent.invoke(make_payload("hi")))
        assert response.metadata["decode_path"] == "generate"
        assert response.metadata["decode_path_reason"] == "decode_loop='generate' was set"
    finally:
        run(agent.unload_model())
    sampler = HuggingFaceLocalAgent(model=str(tiny_model), device="cpu", do_sample=True, max_new_tokens=4,
                                    progress=False)
    try:
        rows = sampler.generate_batch([make_payload("hi"), make_payload("hello there")], seed=1)
        assert {r.metadata["decode_path_reason"] for r in rows} == {"sampled batches decode through generate"}
    finally:
        run(sampler.unload_model())


def test_a_model_the_loop_cannot_drive_warns_once_and_reports_generate(tiny):
    lm = tiny.loaded_model
    original, support = type(lm.model), lm.decode_support
    try:
        lm.model.__class__ = OwnInputsLlama
        lm.decode_support = capabilities.decode_loop_support(lm.model)
        response = run(tiny.invoke(make_payload("hi")))
        assert response.metadata["decode_path"] == "generate"
        assert "prepares its own generation inputs" in response.metadata["decode_path_reason"]
    finally:
        lm.model.__class__ = original
        lm.decode_support = support


def test_forced_output_runs_in_the_engines_loop_with_the_tokens_of_generate(tiny, tiny_model):
    """Logits processors of one sequence run in the engine's loop: exact outputs forced in tests
    (and constrained decoding) take the default fast path, token for token as model.generate."""
    text = 'Forced answer with {"json": [1, 2]} and more.'
    answers = {}
    slow = HuggingFaceLocalAgent(model=str(tiny_model), device="cpu", do_sample=False, max_new_tokens=12,
                                 progress=False, decode_loop="generate")
    for loop, agent in (("auto", tiny), ("generate", slow)):
        forced = ScriptedOutput(tiny.loaded_model.tokenizer, text)
        response = run(agent.invoke(make_payload("hi"), logits_processor=[forced], max_new_tokens=40))
        answers[loop] = (response.metadata["raw_text"], response.metadata["completion_tokens"],
                         response.metadata["decode_path"])
    run(slow.unload_model())
    assert answers["auto"] == (text, answers["generate"][1], "engine")
    assert answers["generate"][0] == text and answers["generate"][2] == "generate"
    rows = tiny.generate_batch([make_payload("a"), make_payload("b")],
                               logits_processor=[ScriptedOutput(tiny.loaded_model.tokenizer, "x")])
    assert {r.metadata["decode_path_reason"] for r in rows} == {"logits processors in a batch decode through generate"}
