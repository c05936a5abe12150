"""Quantized weights kept on disk between loads (real loads and generation; never timing: see
benchmarks/)."""

from __future__ import annotations

import warnings

import pytest
import torch

from midori_hf_nb import DEFAULT_MODEL, HuggingFaceLocalAgent, make_payload
from midori_hf_nb import engine
from midori_hf_nb.engine import loading
from midori_hf_nb.engine.quantized_cache import QUANTIZED_FILE, packed_tensors, quantized_cache_dir
from midori_hf_nb.integrity import CacheRepairWarning

from .conftest import run


def _load_and_answer(model_dir, **options):
    agent = HuggingFaceLocalAgent(model=str(model_dir), device="cpu", do_sample=False, max_new_tokens=16,
                                  progress=False, torch_dtype="bfloat16", **options)
    try:
        lm = run(agent.load()).loaded_model
        call = agent.resolve_settings({})
        prompt = agent.build_prompt(lm, make_payload("Tell me a story about a dragon."), call)
        tokens = engine.generate(lm, prompt.input_ids, call.generation).token_ids
        return lm.quantized_from_cache, {k: v.clone() for k, v in packed_tensors(lm.model).items()}, tokens
    finally:
        run(agent.unload_model())


@pytest.fixture
def store(tmp_path, monkeypatch):
    """Quantized weights of the tiny model kept in a folder of this test (a folder source has none)."""
    folder = tmp_path / "cache" / "model.quantized"
    folder.parent.mkdir()
    monkeypatch.setattr(loading, "quantized_store", lambda spec, path: folder)
    return folder


@pytest.mark.parametrize("options", [{"quantize_weights": "int4"}, {"quantize_weights": "int8"},
                                     {"quantize_weights": "int4", "fuse_projections": False}])
def test_a_second_load_uses_the_saved_weights_and_answers_the_same(tiny_model, store, options):
    first_from_cache, first, first_tokens = _load_and_answer(tiny_model, **options)
    assert first_from_cache is False and (store / QUANTIZED_FILE).is_file()
    second_from_cache, second, second_tokens = _load_and_answer(tiny_model, **options)
    assert second_from_cache is True
    assert first.keys() == second.keys() and len(first) >= 4
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert second_tokens == first_tokens and len(first_tokens) >= 1


def test_a_damaged_copy_is_quantized_and_written_again(tiny_model, store):
    _, first, first_tokens = _load_and_answer(tiny_model, quantize_weights="int4")
    data = (store / QUANTIZED_FILE).read_bytes()
    (store / QUANTIZED_FILE).write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        from_cache, again, tokens = _load_and_answer(tiny_model, quantize_weights="int4")
    assert from_cache is False  # the half file was not used
    repairs = [str(w.message) for w in seen if issubclass(w.category, CacheRepairWarning)]
    assert len(repairs) == 1 and "truncated" in repairs[0] and "quantizing" in repairs[0]
    assert tokens == first_tokens and all(torch.equal(first[k], again[k]) for k in first)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert _load_and_answer(tiny_model, quantize_weights="int4")[0] is True  # written whole again
    assert not [w for w in seen if issubclass(w.category, CacheRepairWarning)]


def test_a_cache_that_cannot_be_written_loads_and_names_what_is_lost(tiny_model, tmp_path, monkeypatch):
    from midori_hf_nb.engine.capabilities import fallbacks

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setattr(loading, "quantized_store", lambda spec, path: blocker / "model.quantized")
    monkeypatch.setattr(fallbacks, "_warned", set())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        from_cache, _, tokens = _load_and_answer(tiny_model, quantize_weights="int4")
    assert from_cache is False and len(tokens) >= 1 and blocker.is_file()
    messages = [str(w.message) for w in seen if "cannot be kept" in str(w.message)]
    assert len(messages) == 1 and "quantizes them again" in messages[0]


def test_the_folder_name_holds_what_the_packed_form_depends_on(tmp_path):
    name = quantized_cache_dir(tmp_path / "bfloat16", "int4", "int8", True).name
    assert name.startswith("bfloat16.quantized-int4-head-int8-fused-torch")
    assert torch.__version__.split("+")[0] in name
    assert quantized_cache_dir(tmp_path / "bfloat16", "int4", None, False) != quantized_cache_dir(
        tmp_path / "bfloat16", "int4", None, True)
    assert quantized_cache_dir(tmp_path / "bfloat16", "int4", "int8", True).parent == tmp_path


@pytest.mark.slow
def test_the_default_model_loads_its_saved_quantized_weights(default_model_dir):
    """The default (a Q4_1 GGUF, quantized at load) keeps its quantized weights in the cache: a
    load after the first builds its layers from them and answers as before."""
    answers = []
    for _ in range(2):
        agent = HuggingFaceLocalAgent(model=DEFAULT_MODEL, do_sample=False, max_new_tokens=16, progress=False)
        try:
            response = run(agent.invoke(make_payload("What is the capital of France?", "You are a helpful assistant.")))
            lm = agent.loaded_model
            answers.append((lm.quantized_from_cache, response.response))
            store = loading.quantized_store(lm.spec, lm.path)
        finally:
            run(agent.unload_model())
    assert store is not None and (store / QUANTIZED_FILE).is_file()
    assert answers[1][0] is True and answers[1][1] == answers[0][1] and "Paris" in answers[1][1]
