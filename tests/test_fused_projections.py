"""Fused query/key/value and gate/up projections, and weights kept in their source's precision
(numerics and structure; never timing: see benchmarks/)."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM

from midori_hf_nb import DEFAULT_MODEL, HuggingFaceConfig, HuggingFaceLocalAgent, make_payload
from midori_hf_nb import engine
from midori_hf_nb.engine import capabilities
from midori_hf_nb.engine.fusion import FUSABLE_ARCHITECTURES, FusedProjection, ProjectionPart, fuse_projections
from midori_hf_nb.engine.source_precision import FULL, source_precision
from midori_hf_nb.sources import default_model_path

from .conftest import run


def _greedy(model_dir, fuse: bool, dtype: str = "float32", **options):
    agent = HuggingFaceLocalAgent(model=str(model_dir), device="cpu", do_sample=False, max_new_tokens=24,
                                  progress=False, torch_dtype=dtype, fuse_projections=fuse, **options)
    lm = run(agent.load()).loaded_model
    call = agent.resolve_settings({})
    prompt = agent.build_prompt(lm, make_payload("Tell me a story about a dragon."), call)
    result = engine.generate(lm, prompt.input_ids, call.generation)
    return agent, lm, result


def test_fused_layers_give_the_tokens_of_unfused_in_float32(tiny_model):
    fused_agent, fused, a = _greedy(tiny_model, True)
    plain_agent, plain, b = _greedy(tiny_model, False)
    try:
        assert fused is not plain  # fuse_projections is part of what identifies a loaded model
        layers = fused.model.config.num_hidden_layers
        assert fused.fused_projections == 2 * layers and plain.fused_projections == 0
        attention = fused.model.model.layers[0].self_attn
        assert isinstance(attention.q_proj, ProjectionPart) and isinstance(attention.fused_projection, FusedProjection)
        assert attention.fused_projection.linear.out_features == sum(
            p.out_features for p in (attention.q_proj, attention.k_proj, attention.v_proj))
        assert not any(isinstance(m, ProjectionPart) for m in plain.model.modules())
        assert a.token_ids == b.token_ids and len(a.token_ids) == 24
    finally:
        run(fused_agent.unload_model()), run(plain_agent.unload_model())


def test_a_fused_layer_holds_the_original_weights_and_answers_any_call_order(tiny_model):
    reference = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    assert fuse_projections(model) == 2 * model.config.num_hidden_layers
    mine, theirs = model.model.layers[1].self_attn, reference.model.layers[1].self_attn
    x, y = torch.randn(1, 3, model.config.hidden_size), torch.randn(1, 3, model.config.hidden_size)
    with torch.inference_mode():
        # out of order, and a part called with another input: each still gets its own projection
        for part, own, inputs in ((mine.v_proj, theirs.v_proj, x), (mine.q_proj, theirs.q_proj, y),
                                  (mine.k_proj, theirs.k_proj, x), (mine.q_proj, theirs.q_proj, x)):
            assert torch.equal(part(inputs), own(inputs))
        assert mine.fused_projection._input is x  # q and k of x taken: v's slice is still held
        assert torch.equal(mine.v_proj(x), theirs.v_proj(x))
    assert mine.fused_projection._input is None  # every slice taken: nothing held between steps


@pytest.mark.parametrize("architecture", sorted(FUSABLE_ARCHITECTURES))
def test_each_known_architecture_runs_one_fused_product_per_group_and_keeps_its_logits(architecture):
    """The saving rests on each architecture calling a group's projections on one input: checked
    by counting the fused products of one forward, on a tiny random model of each."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(architecture, vocab_size=64, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                  max_position_embeddings=64)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(0, 64, (1, 7))
    with torch.inference_mode():
        expected = model(ids).logits
    assert fuse_projections(model) == 4
    calls = []
    for group in (m for m in model.modules() if isinstance(m, FusedProjection)):
        group.linear.register_forward_hook(lambda *args: calls.append(1))
    with torch.inference_mode():
        got = model(ids).logits
    assert len(calls) == 4  # one product per group, not one per projection
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture
def fresh_fallbacks(monkeypatch):
    """Fallbacks warn once per process: give the test its own record of what was announced."""
    from midori_hf_nb.engine.capabilities import fallbacks

    monkeypatch.setattr(fallbacks, "_warned", set())


def _fast_path_messages(seen) -> list[str]:
    return [str(w.message) for w in seen if issubclass(w.category, capabilities.FastPathWarning)]


def test_an_unknown_architecture_loads_unfused_with_a_named_fallback(fresh_fallbacks):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=32)).eval()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert fuse_projections(model, "tiny-gpt2") == 0
    assert "fused_projections:gpt2" in capabilities.warned_keys()
    messages = [m for m in _fast_path_messages(seen) if "not fused" in m]
    assert len(messages) == 1 and "tiny-gpt2" in messages[0] and "each runs as its own product" in messages[0]
    assert not any(isinstance(m, ProjectionPart) for m in model.modules())


def test_projections_of_an_unexpected_kind_stay_unfused_with_a_named_fallback(tiny_model, fresh_fallbacks):
    """A known architecture whose projections are not plain linear layers (here a subclass, as
    bitsandbytes' layers are) keeps them as they are and says so."""

    class OtherLinear(torch.nn.Linear):
        pass

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    for layer in model.model.layers:
        layer.self_attn.q_proj.__class__ = OtherLinear
        layer.mlp.gate_proj.__class__ = OtherLinear
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert fuse_projections(model, "odd-llama") == 0
    messages = [m for m in _fast_path_messages(seen) if "odd-llama" in m]
    assert len(messages) == 1 and "q_proj/k_proj/v_proj" in messages[0] and "own product" in messages[0]
    assert not any(isinstance(m, ProjectionPart) for m in model.modules())


def _save_tiny_gpt2(folder, tokenizer_source):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=512,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_an_agent_on_an_unfusable_architecture_names_the_fallback_and_generates(tmp_path, default_model_dir,
                                                                                fresh_fallbacks):
    """Real generation through the agent: a GPT-2 model cannot be fused; loading it warns once,
    naming the model and what runs instead, and its answer is the one of an unfused load."""
    folder = _save_tiny_gpt2(tmp_path / "gpt2", default_model_dir)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        agent, lm, fused_default = _greedy(folder, True)
    try:
        messages = [m for m in _fast_path_messages(seen) if "not fused" in m]
        assert len(messages) == 1, _fast_path_messages(seen)
        assert "gpt2" in messages[0] and "each runs as its own product" in messages[0]
        assert lm.fused_projections == 0 and not any(isinstance(m, ProjectionPart) for m in lm.model.modules())
        assert "fused_projections:gpt2" in capabilities.warned_keys()
    finally:
        run(agent.unload_model())
    plain_agent, plain, unfused = _greedy(folder, False)
    try:
        assert fused_default.token_ids == unfused.token_ids and len(unfused.token_ids) >= 1
    finally:
        run(plain_agent.unload_model())


def test_fused_and_unfused_batches_give_the_same_tokens_in_float32(tiny_model):
    """A left-padded batch (the comparison grid's path) decodes the same tokens fused and unfused."""
    prompts = ["Tell me a story about a dragon.", "What is 2 + 2?", "Name three colours of the rainbow, please."]
    outputs = []
    for fuse in (True, False):
        agent = HuggingFaceLocalAgent(model=str(tiny_model), device="cpu", do_sample=False, max_new_tokens=16,
                                      progress=False, torch_dtype="float32", fuse_projections=fuse)
        lm = run(agent.load()).loaded_model
        try:
            call = agent.resolve_settings({})
            batch = [agent.build_prompt(lm, make_payload(p), call).input_ids for p in prompts]
            outputs.append([r.token_ids for r in engine.generate_batch(lm, batch, call.generation)])
            assert lm.fused_projections == (2 * lm.model.config.num_hidden_layers if fuse else 0)
        finally:
            run(agent.unload_model())
    assert outputs[0] == outputs[1] and all(len(ids) >= 1 for ids in outputs[0])


def test_fused_layers_are_quantized_and_widened_like_any_linear(tiny_model):
    agent = HuggingFaceLocalAgent(model=str(tiny_model), device="cpu", progress=False, do_sample=False,
                                  max_new_tokens=4, torch_dtype="bfloat16", quantize_weights="int4")
    lm = run(agent.load()).loaded_model
    try:
        groups = [m for m in lm.model.modules() if isinstance(m, FusedProjection)]
        assert groups and all(isinstance(g.linear, engine.Int4WeightLinear) for g in groups)
        assert run(agent.invoke(make_payload("hello"))).metadata["completion_tokens"] >= 1
    finally:
        run(agent.unload_model())


def test_int8_head_beside_int4_layers(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16).eval()
    embeddings = model.get_input_embeddings().weight
    engine.quantize_weights(model, "int4", head="int8")
    assert isinstance(model.lm_head, engine.Int8WeightLinear)
    assert model.get_input_embeddings().weight is embeddings and embeddings.dtype == torch.bfloat16
    assert model.config.tie_word_embeddings is False
    assert any(isinstance(m, engine.Int4WeightLinear) for m in model.modules())


def test_the_source_precision_of_the_default_gguf_is_its_own():
    precision = source_precision("gguf", str(default_model_path()))
    assert (precision.layers, precision.head) == ("int4", "int8")  # Q4_1 layers, a Q8_0 embedding table as head
    assert "Q4_0/Q4_1" in precision.reason
    assert source_precision("dir", "/nowhere") is FULL


def test_auto_quantization_follows_the_source_only_where_asked(tiny_model):
    auto = engine.spec_for(HuggingFaceConfig(model=DEFAULT_MODEL, device="cpu", quantize_weights="auto"))
    assert (auto.quantization, auto.head_quantization) == ("int4", "int8")
    exact = engine.spec_for(HuggingFaceConfig(model=DEFAULT_MODEL, device="cpu", quantize_weights="auto",
                                              torch_dtype="float32"))
    assert (exact.quantization, exact.head_quantization, exact.dtype) == (None, None, "float32")
    folder = engine.spec_for(HuggingFaceConfig(model=str(tiny_model), device="cpu", quantize_weights="auto"))
    assert (folder.quantization, folder.head_quantization) == (None, None)
    # bitsandbytes and "auto" do not conflict: "auto" steps aside
    assert HuggingFaceConfig(model="x", quantize_weights="auto", load_in_8bit=True).quantization == "8bit"


@pytest.mark.slow
def test_default_model_fused_matches_unfused_in_float32_and_answers_in_its_source_precision(default_model_dir):
    agent_a, fused, a = _greedy(DEFAULT_MODEL, True)
    agent_b, plain, b = _greedy(DEFAULT_MODEL, False)
    try:
        assert fused.fused_projections == 60 and a.token_ids == b.token_ids
    finally:
        run(agent_a.unload_model()), run(agent_b.unload_model())
    source = HuggingFaceLocalAgent(model=DEFAULT_MODEL, do_sample=False, max_new_tokens=16, progress=False,
                                   quantize_weights="auto")
    try:
        response = run(source.invoke(make_payload("What is the capital of France?", "You are a helpful assistant.")))
        footprint = source.loaded_model.footprint()
        assert footprint["quantization"] == "int4" and footprint["head_quantization"] == "int8"
        assert "Paris" in response.response
    finally:
        run(source.unload_model())


def test_auto_quantization_steps_aside_where_torch_kernels_are_scalar():
    """With torch's kernels forced down to scalar code (ATEN_CPU_CAPABILITY=default), int4/int8
    products are slower than MKL's float32: "auto" keeps full weights and names the fallback."""
    import json
    import os
    import subprocess
    import sys

    code = ("import json, warnings\n"
            "warnings.simplefilter('always')\n"
            "from midori_hf_nb import DEFAULT_MODEL, HuggingFaceConfig, engine\n"
            "with warnings.catch_warnings(record=True) as seen:\n"
            "    spec = engine.spec_for(HuggingFaceConfig(model=DEFAULT_MODEL, device='cpu'))\n"
            "print(json.dumps([spec.quantization, spec.head_quantization, spec.dtype, [str(w.message) for w in seen]]))\n")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=True)
    quantization, head, dtype, messages = json.loads(out.stdout.strip().splitlines()[-1])
    assert (quantization, head, dtype) == (None, None, "float32")
    assert any("keeps full weights" in m and "DEFAULT" in m for m in messages)
