"""Defaults that serve the model: settings the user did not set come from the model's own
generation_config.json, else from the project defaults for small chat models; the repetition guard
ends a looping generation (engine loop, generate path and batches) with finish_reason "repetition"."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest

from midori_hf_nb import HuggingFaceConfig, HuggingFaceLocalAgent, make_payload
from midori_hf_nb.config import GENERATION_DEFAULTS
from midori_hf_nb.engine.repetition import LoopDetector, first_loop_end
from midori_hf_nb.settings import RepetitionGuard, model_generation_defaults, resolve_call_settings
from midori_hf_nb.stats import stats_of
from midori_hf_nb.testing import ScriptedOutput

from .conftest import run

MODEL = {"temperature": 0.55, "top_k": 7, "top_p": 0.8, "do_sample": True, "max_new_tokens": 9}


# --------------------------------------------------------------------------- precedence (no model)


def test_unset_fields_take_the_model_values_then_the_project_defaults():
    config = HuggingFaceConfig(model="m")
    call = resolve_call_settings(config, {}, model_defaults={"temperature": 0.55, "top_k": 7})
    gen = call.generation
    assert (gen.temperature, gen.top_k) == (0.55, 7)  # the model's
    assert (gen.top_p, gen.max_new_tokens, gen.do_sample) == (GENERATION_DEFAULTS["top_p"],
                                                              GENERATION_DEFAULTS["max_new_tokens"], True)
    assert call.origins == {"temperature": "model", "top_k": "model", "top_p": "default",
                            "max_new_tokens": "default", "do_sample": "default"}
    assert resolve_call_settings(config, {}).generation.temperature == GENERATION_DEFAULTS["temperature"]


def test_the_user_beats_the_model_and_the_call_beats_both():
    config = HuggingFaceConfig(model="m", temperature=0.9, max_new_tokens=30)
    call = resolve_call_settings(config, {"top_k": 3}, model_defaults=MODEL)
    gen = call.generation
    assert (gen.temperature, gen.max_new_tokens) == (0.9, 30)  # set by the user: the model's are ignored
    assert gen.top_k == 3 and gen.top_p == 0.8  # the call's, then the model's
    assert call.origins == {"temperature": "agent", "max_new_tokens": "agent", "top_k": "call", "top_p": "model",
                            "do_sample": "model"}
    greedy = resolve_call_settings(config, {"greedy": True}, model_defaults=MODEL)
    assert greedy.generation.greedy and greedy.origins["do_sample"] == "call"


def test_a_field_set_by_replace_or_rebuilt_from_options_stays_set():
    config = HuggingFaceConfig(model="m").replace(top_k=11)
    assert "top_k" not in config.unset_fields and "temperature" in config.unset_fields
    rebuilt = HuggingFaceLocalAgent.from_config(config).config
    assert rebuilt.unset_fields == config.unset_fields
    assert resolve_call_settings(rebuilt, {}, model_defaults=MODEL).generation.top_k == 11


@pytest.mark.parametrize("values, taken, warned", [
    ({"temperature": 7.0, "top_k": 7}, {"top_k": 7}, "temperature=7.0"),
    ({"top_p": 0, "do_sample": "yes"}, {}, "top_p=0"),
    ({"max_new_tokens": -1, "repetition_penalty": 1.3}, {}, "max_new_tokens=-1"),
    ({"temperature": None, "top_k": True}, {}, "top_k=True"),
])
def test_values_from_a_model_file_are_checked(values, taken, warned):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert model_generation_defaults(values, source="m/generation_config.json") == taken
    assert any(warned in str(w.message) and "m/generation_config.json" in str(w.message) for w in caught)


# --------------------------------------------------------------------------- a real model with its own file


@pytest.fixture(scope="module")
def model_with_config(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("with-generation-config") / "model"
    shutil.copytree(tiny_model, folder)
    path = folder / "generation_config.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**data, **MODEL}))
    return folder


def test_a_loaded_model_supplies_what_the_user_did_not_set(model_with_config):
    agent = HuggingFaceLocalAgent(model=str(model_with_config), top_k=3, progress=False, device="cpu")
    assert agent.resolve_settings().generation.max_new_tokens == GENERATION_DEFAULTS["max_new_tokens"]  # not loaded
    run(agent.load())
    try:
        call = agent.resolve_settings()
        assert (call.generation.temperature, call.generation.max_new_tokens, call.generation.top_k) == (0.55, 9, 3)
        response = run(agent.invoke(make_payload("hi"), seed=1, stop_on_repetition=False))
        stats = stats_of(response)
        assert stats.completion_tokens <= 9  # the model's max_new_tokens bounded the real generation
        assert stats.finish_reason in ("length", "stop")
    finally:
        run(agent.unload_model())


def test_the_chat_panel_leaves_unset_settings_to_the_model_and_sends_what_the_user_changes(model_with_config):
    pytest.importorskip("ipywidgets")
    from midori_hf_nb.notebook import ChatPanel

    agent = HuggingFaceLocalAgent(model=str(model_with_config), progress=False, device="cpu")
    panel = ChatPanel(agent, stop_on_repetition=False, seed=1)
    try:
        assert not {"max_new_tokens", "temperature", "greedy"} & set(panel.generation_overrides())
        answer = panel.send("hi")  # no running loop: runs to completion
        assert answer["max_new_tokens"] == 9 and answer["completion_tokens"] <= 9  # the model's own value
        panel.max_new_tokens_input.value = 4
        panel.greedy_input.value = True
        assert panel.generation_overrides()["max_new_tokens"] == 4
        answer = panel.send("hi again")
        assert answer["max_new_tokens"] == 4 and answer["do_sample"] is False and answer["completion_tokens"] <= 4
        given = ChatPanel(agent, max_new_tokens=6)  # given as a keyword: always sent
        assert given.generation_overrides()["max_new_tokens"] == 6
    finally:
        run(agent.unload_model())


# --------------------------------------------------------------------------- the repetition guard


def test_the_detector_sees_loops_and_not_mere_reuse():
    guard = RepetitionGuard()
    assert first_loop_end([5, 6] * 40, guard) == 32  # a 2-token loop: stopped after 32 tokens
    sentence = list(range(100, 120))
    assert first_loop_end(sentence * 5, guard) == 80  # a 20-token sentence: its fourth copy
    assert first_loop_end(list(range(1000)), guard) is None  # counting up never repeats
    assert first_loop_end([1, 2, 3, 1, 2, 4] * 20, guard) == 32  # a 6-token pattern
    assert first_loop_end([7] * 31, guard) is None and first_loop_end([7] * 31, None) is None
    detector = LoopDetector(RepetitionGuard(max_period=4, min_repeats=3, min_tokens=6))
    assert [detector.push(t) for t in [1, 2, 1, 2, 1, 2]] == [False] * 5 + [True]


@pytest.fixture(scope="module")
def tiny_agent(tiny_model):
    agent = HuggingFaceLocalAgent(model=str(tiny_model), do_sample=False, max_new_tokens=512, progress=False,
                                  device="cpu")
    run(agent.load())
    yield agent
    run(agent.unload_model())


LOOP = "My name is Ada" + ", ada" * 300


@pytest.mark.parametrize("decode_loop", ["auto", "generate"])
def test_a_forced_loop_ends_with_finish_reason_repetition(tiny_agent, tiny_model, decode_loop):
    agent = HuggingFaceLocalAgent(model=str(tiny_model), do_sample=False, max_new_tokens=512, progress=False,
                                  device="cpu", decode_loop=decode_loop)  # shares tiny_agent's loaded model
    forced = [ScriptedOutput(tiny_agent.loaded_model.tokenizer, LOOP)]
    try:
        response = run(agent.invoke(make_payload("What is my name?"), logits_processor=forced))
    finally:
        run(agent.unload_model())
    stats = stats_of(response)
    assert stats.finish_reason == "repetition"
    assert stats.completion_tokens < 60  # not 512
    assert response.response.startswith("My name is Ada, ada, ada")
    assert stats.decode_path == ("engine" if decode_loop == "auto" else "generate")  # the guard runs in both


def test_without_the_guard_the_loop_runs_to_the_budget(tiny_agent):
    forced = [ScriptedOutput(tiny_agent.loaded_model.tokenizer, LOOP)]
    response = run(tiny_agent.invoke(make_payload("What is my name?"), logits_processor=forced,
                                     stop_on_repetition=False, max_new_tokens=120))
    stats = stats_of(response)
    assert stats.finish_reason == "length" and stats.completion_tokens == 120


def test_in_a_batch_only_the_looping_row_is_stopped(tiny_agent):
    tokenizer = tiny_agent.loaded_model.tokenizer
    forced = [ScriptedOutput(tokenizer, [LOOP])]
    responses = tiny_agent.generate_batch([make_payload("a"), make_payload("a longer question")],
                                          logits_processor=forced, max_new_tokens=200)
    for response in responses:  # every row gets the same forced text
        stats = stats_of(response)
        assert stats.finish_reason == "repetition" and stats.completion_tokens < 60
        assert response.response.startswith("My name is Ada, ada")
    counting = " ".join(str(i) for i in range(200))
    responses = tiny_agent.generate_batch([make_payload("a"), make_payload("b")],
                                          logits_processor=[ScriptedOutput(tokenizer, counting)], max_new_tokens=80)
    assert [stats_of(r).finish_reason for r in responses] == ["length", "length"]
