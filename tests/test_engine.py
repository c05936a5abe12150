"""Devices, dtypes, quantization through BitsAndBytesConfig, and shared reference-counted loading."""

from __future__ import annotations

import copy
import sys
import weakref

import pytest
import torch

from midori_hf_nb import HuggingFaceConfig, HuggingFaceLocalAgent, make_payload
from midori_hf_nb import engine
from midori_hf_nb.engine import DeviceError, QuantizationError
from midori_hf_nb.sources import resolve_source
from midori_hf_nb.testing.models import BNB_4BIT_BLOCKSIZE, BNB_CPU_BLOCK_N

from .conftest import run
from .suite_guards import cpu_description


@pytest.mark.cpu_path
def test_auto_device_and_dtype_on_cpu_machine(cpu_path):
    if torch.cuda.is_available() or engine.mps_available():
        pytest.skip("this test describes a CPU-only machine")
    assert engine.resolve_device("auto") == "cpu"
    # "auto" is bfloat16 on an x86 CPU with AVX2 or better, float32 on others (documented in HuggingFaceConfig)
    capability = torch.backends.cpu.get_cpu_capability()
    expected = "bfloat16" if capability in ("AVX2", "AVX512") else "float32"
    cpu_path("torch_dtype='auto' on CPU", f"{expected} ({cpu_description()})")
    assert engine.resolve_dtype("auto", "cpu") == expected
    assert engine.resolve_dtype("auto", "cpu", "8bit") == "float32"  # bitsandbytes on CPU stays float32
    assert engine.resolve_dtype("float32", "cpu") == "float32"
    assert engine.resolve_dtype("bfloat16", "cpu") == "bfloat16"


def test_unavailable_devices_are_clear_errors():
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="device='cuda'.*not available.*device='cpu'"):
            engine.resolve_device("cuda")
    if not engine.mps_available():
        with pytest.raises(DeviceError, match="device='mps'.*not available"):
            engine.resolve_device("mps")


def test_unavailable_device_surfaces_on_first_use(tiny_model):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    agent = HuggingFaceLocalAgent(model=str(tiny_model), device="cuda", progress=False)
    with pytest.raises(DeviceError):
        run(agent.invoke(make_payload("hi")))
    assert not agent.is_loaded


@pytest.mark.parametrize("dtype, expected", [("float32", torch.float32), ("bfloat16", torch.bfloat16),
                                             ("float16", torch.float16)])
def test_dtype_strings_map_to_torch_dtypes(tiny_model, dtype, expected):
    config = HuggingFaceConfig(model=str(tiny_model), device="cpu", torch_dtype=dtype, progress=False)
    lm = engine.acquire(config)
    try:
        assert lm.model.dtype == expected
        assert lm.footprint()["dtype"] == dtype
    finally:
        engine.release(lm)


def test_same_spec_shares_one_model_and_frees_on_last_release(tiny_model):
    a = HuggingFaceLocalAgent(model=str(tiny_model), device="cpu", do_sample=False, max_new_tokens=2, progress=False)
    b = HuggingFaceLocalAgent(model=str(tiny_model), device="auto", do_sample=False, max_new_tokens=2, progress=False)
    other = "float32" if engine.resolve_dtype("auto", "cpu") != "float32" else "bfloat16"
    c = HuggingFaceLocalAgent(model=str(tiny_model), device="cpu", torch_dtype=other, progress=False)
    run(a.load()), run(b.load()), run(c.load())
    assert a.loaded_model is b.loaded_model            # "auto" resolves to cpu: same spec
    assert c.loaded_model is not a.loaded_model        # another dtype is another copy
    assert a.reference_count == 2 and c.reference_count == 1
    model_ref = weakref.ref(a.loaded_model.model)
    run(a.unload_model())
    assert b.is_loaded and b.reference_count == 1 and model_ref() is not None
    run(b.unload_model())
    assert b.reference_count == 0 and model_ref() is None
    run(c.unload_model())


def test_unknown_generation_option_is_named(tiny_model):
    agent = HuggingFaceLocalAgent(model=str(tiny_model), device="cpu", progress=False, temprature=0.5)
    with pytest.raises(ValueError, match="'temprature'"):
        run(agent.invoke(make_payload("hi")))
    run(agent.unload_model())


def test_quantization_without_bitsandbytes_says_how_to_install(tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    config = HuggingFaceConfig(model=str(tiny_model), device="cpu", load_in_8bit=True, progress=False)
    with pytest.raises(QuantizationError, match=r"pip install 'midori-hf-nb\[quantization\]'"):
        engine.load(engine.spec_for(config), progress=False)


def test_quantization_on_mps_is_refused_with_advice(tiny_model):
    spec = engine.LoadSpec(resolve_source(str(tiny_model)), "mps", "float16", "4bit", False)
    with pytest.raises(QuantizationError, match="device='mps'.*device='cpu' or 'cuda'"):
        engine.load(spec, progress=False)


def _bnb_paths(bits: str) -> str:
    """Which of bitsandbytes' CPU kernels a quantized layer uses on this CPU (and in this process)."""
    if bits == "4bit":
        from bitsandbytes.functional import has_avx512bf16

        return ("AVX512-BF16: weights repacked for bitsandbytes' packed 4-bit kernel" if has_avx512bf16()
                else "no AVX512-BF16: 4-bit weights dequantized for each product")
    from bitsandbytes.backends.cpu import ops

    return ("AVX512 kernels: int8 products through torch._int_mm" if getattr(ops, "_has_avx512", False)
            else "no AVX512 kernels: bitsandbytes' default int8 product (in float32)")


@pytest.mark.slow
@pytest.mark.cpu_path
@pytest.mark.parametrize("bits, layer", [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_bitsandbytes_quantization_on_cpu(tiny_model, bits, layer, cpu_path):
    pytest.importorskip("bitsandbytes")
    agent = HuggingFaceLocalAgent(model=str(tiny_model), device="cpu", do_sample=False, max_new_tokens=4,
                                  progress=False, **{f"load_in_{bits}": True})
    try:
        response = run(agent.invoke(make_payload("hello")))
        layers = {type(m).__name__ for m in agent.loaded_model.model.modules()}
        assert layer in layers
        assert agent.loaded_model.footprint()["quantization"] == bits
        assert response.metadata["quantization"] == bits and response.metadata["completion_tokens"] >= 1
        cpu_path(f"bitsandbytes {bits} generation", _bnb_paths(bits))
    finally:
        run(agent.unload_model())


@pytest.mark.cpu_path
@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_quantized_tiny_model_fits_the_cpu_kernels_of_every_cpu(tiny_model, bits, cpu_path):
    """Every quantized layer of the tiny model has the shapes bitsandbytes' CPU kernels need on any
    x86-64 CPU: 4-bit weights are repacked on CPUs with AVX512-BF16 in blocks of 32 output rows and
    ``in_features // blocksize`` absmax columns; 8-bit products go through ``torch._int_mm`` on
    CPUs with AVX512. Those functions are run here on the model's own weights, whatever this CPU
    is, so a shape they refuse fails on every machine, not only on the newer ones."""
    bnb = pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as F

    config = HuggingFaceConfig(model=str(tiny_model), device="cpu", progress=False, **{f"load_in_{bits}": True})
    lm = engine.acquire(config)
    try:
        kind = bnb.nn.Linear4bit if bits == "4bit" else bnb.nn.Linear8bitLt
        layers = [(name, m) for name, m in lm.model.named_modules() if isinstance(m, kind)]
        assert len(layers) == 7 * lm.model.config.num_hidden_layers  # q, k, v, o, gate, up, down
        for name, layer in layers:
            assert layer.out_features % BNB_CPU_BLOCK_N == 0, (name, layer.out_features)
            assert layer.in_features % BNB_4BIT_BLOCKSIZE == 0, (name, layer.in_features)
        if bits == "4bit":
            repack = getattr(F, "_convert_weight_packed_for_cpu", None)
            unpack = getattr(F, "_convert_weight_packed_for_cpu_inverse", None)
            assert repack is not None and unpack is not None, "bitsandbytes' CPU repacking moved: check this test"
            for name, layer in layers:
                state = layer.weight.quant_state
                assert layer.in_features % state.blocksize == 0, (name, state.blocksize)
                data, original = layer.weight.data.clone(), copy.deepcopy(state)
                packed, packed_state = repack(data.clone(), copy.deepcopy(state))
                assert packed.shape == (layer.out_features, layer.in_features // 2), name
                blocks = layer.in_features // state.blocksize
                assert packed_state.absmax.shape == (blocks, layer.out_features), name
                expected_absmax = original.absmax.float().reshape(layer.out_features, blocks).t()
                assert torch.allclose(packed_state.absmax.float(), expected_absmax, rtol=1e-2), name  # in bfloat16
                restored, _ = unpack(packed, packed_state)
                assert torch.equal(restored.view(torch.uint8).reshape(-1), data.view(torch.uint8).reshape(-1)), name
            direct = "bitsandbytes' repacking run on every 4-bit layer"
        else:
            for name, layer in layers:
                weight = layer.weight.data
                assert weight.dtype == torch.int8 and weight.shape == (layer.out_features, layer.in_features), name
                rows = torch.randint(-127, 128, (3, layer.in_features), dtype=torch.int8)
                assert torch.equal(torch._int_mm(rows, weight.t()), rows.int() @ weight.int().t()), name
            direct = "torch._int_mm run on every 8-bit layer"
        ids = torch.tensor([lm.tokenizer.encode("hello there")])
        with torch.inference_mode():
            if bits == "4bit":  # first the dequantizing path every CPU has, whatever this one would take
                packs = [layer.support_avx512bf16_for_cpu for _, layer in layers]
                for _, layer in layers:
                    layer.support_avx512bf16_for_cpu = False
                dequantized = lm.model(ids).logits
                for (_, layer), flag in zip(layers, packs):
                    layer.support_avx512bf16_for_cpu = flag
                direct += "; the dequantizing path run and compared with this CPU's own"
            logits = lm.model(ids).logits  # a real forward pass through the kernels this CPU takes
        assert torch.isfinite(logits).all()
        if bits == "4bit":  # the packed AVX512-BF16 kernel computes in bfloat16: close, not equal
            assert torch.allclose(logits, dequantized, rtol=0.05, atol=0.05)
        cpu_path(f"bitsandbytes {bits} layers", f"{_bnb_paths(bits)}; {direct}")
    finally:
        engine.release(lm)


def test_unload_during_a_generation_waits_for_it(tiny_model):
    """Freeing the last reference while another thread generates lets that generation finish."""
    import threading

    from midori_hf_nb.testing import ScriptedOutput

    config = HuggingFaceConfig(model=str(tiny_model), device="cpu", progress=False)
    lm = engine.acquire(config)
    text = " ".join(f"w{i}" for i in range(120))
    forced = ScriptedOutput(lm.tokenizer, text)
    started, outcome = threading.Event(), {}

    def generate():
        try:
            outcome["result"] = engine.generate(
                lm, lm.tokenizer.encode("hi"), engine.GenerationSettings(max_new_tokens=400,
                                                                         extra={"logits_processor": [forced]}),
                on_text=lambda _: started.set())
        except Exception as exc:  # pragma: no cover - the failure this test guards against
            outcome["error"] = exc

    worker = threading.Thread(target=generate)
    worker.start()
    assert started.wait(60)
    assert engine.release(lm)           # the last reference goes while the generation runs
    worker.join(60)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].text == text and lm.model is None
