"""HuggingFaceConfig validation: every bad value names the field, the value and what is allowed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from midori_hf_nb import DEFAULT_MODEL, ConfigError, HuggingFaceConfig, HuggingFaceLocalAgent


def test_defaults_match_protocol_table():
    """The protocol table's options, with the generation defaults chosen for small chat models
    (greedy decoding, and temperature 0.2 instead of the table's 0.7 once sampling is on; see
    config.GENERATION_DEFAULTS), each marked unset so the model's own generation_config.json can
    supply it."""
    cfg = HuggingFaceConfig(model="org/name")
    assert (cfg.device, cfg.torch_dtype, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k) == (
        "auto", "auto", 512, 0.2, 0.9, 50)
    assert cfg.unset_fields == {"max_new_tokens", "temperature", "top_p", "top_k", "do_sample"}
    assert cfg.stop_on_repetition is True
    assert (cfg.do_sample, cfg.context_window, cfg.trust_remote_code, cfg.load_in_8bit, cfg.load_in_4bit) == (
        False, 4096, False, False, False)


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("device", "tpu", "'auto', 'cpu', 'cuda', 'mps'"),
        ("torch_dtype", "int8", "'auto', 'float16', 'float32', 'bfloat16'"),
        ("temperature", 2.5, "0.0 to 2.0"),
        ("temperature", -0.1, "0.0 to 2.0"),
        ("top_p", 0.0, "(0, 1]"),
        ("top_p", 1.5, "(0, 1]"),
        ("max_new_tokens", 0, "positive integer"),
        ("max_new_tokens", -5, "positive integer"),
        ("top_k", 0, "positive integer"),
        ("context_window", 0, "positive integer"),
        ("context_window", 12.5, "positive integer"),
        ("do_sample", "yes", "true or false"),
        ("trust_remote_code", 1, "true or false"),
    ],
)
def test_bad_values_name_field_value_and_allowed(field, value, allowed):
    with pytest.raises(ValueError) as info:
        HuggingFaceConfig(model="org/name", **{field: value})
    message = str(info.value)
    assert field in message
    assert repr(value) in message
    assert allowed in message


def test_both_quantizations_rejected():
    with pytest.raises(ValueError, match="load_in_8bit.*load_in_4bit"):
        HuggingFaceConfig(model="org/name", load_in_8bit=True, load_in_4bit=True)


def test_empty_model_rejected():
    with pytest.raises(ConfigError, match="model"):
        HuggingFaceConfig(model="  ")


def test_agent_constructor_validates_too():
    with pytest.raises(ValueError, match="temperature"):
        HuggingFaceLocalAgent(model=DEFAULT_MODEL, temperature=3)


def test_cuda_index_accepted_and_replace_validates():
    cfg = HuggingFaceConfig(model="org/name", device="cuda:1")
    assert cfg.device == "cuda:1"
    with pytest.raises(ValueError, match="top_k"):
        cfg.replace(top_k=-1)


def test_unknown_kwargs_become_generation_kwargs():
    cfg = HuggingFaceConfig.from_kwargs("org/name", repetition_penalty=1.2, max_new_tokens=7)
    assert cfg.max_new_tokens == 7
    assert cfg.generation_kwargs == {"repetition_penalty": 1.2}


def test_creating_an_agent_imports_no_torch_and_loads_nothing():
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "from midori_hf_nb import HuggingFaceLocalAgent, DEFAULT_MODEL\n"
        "a = HuggingFaceLocalAgent(model=DEFAULT_MODEL, device='cpu')\n"
        "b = HuggingFaceLocalAgent(model='does/not-exist')\n"
        "assert not a.is_loaded and not b.is_loaded\n"
        "print(sorted(m for m in ('torch', 'transformers', 'IPython', 'ipywidgets') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
