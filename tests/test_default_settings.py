"""Defaults that serve the model: settings the user did not set come from the model's own
generation_config.json, else from the project defaults for small chat models (greedy, chosen by
benchmarks/default_settings.py); the README's first question is answered right on the defaults by
the command line, a fresh chat panel and %%midori; the repetition guard ends a looping generation
(engine loop, generate path and batches) with finish_reason "repetition"."""

from __future__ import annotations

import json
import re
import shutil
import warnings

import pytest

from midori_hf_nb import DEFAULT_MODEL, HuggingFaceConfig, HuggingFaceLocalAgent, make_payload
from midori_hf_nb.config import GENERATION_DEFAULTS
from midori_hf_nb.engine.repetition import LoopDetector, first_loop_end
from midori_hf_nb.notebook import current_session
from midori_hf_nb.settings import RepetitionGuard, model_generation_defaults, resolve_call_settings
from midori_hf_nb.stats import stats_of
from midori_hf_nb.testing import ScriptedOutput

from .conftest import ROOT, run
from .test_cli import run_cli
from .test_notebook_magics import execute, shell  # noqa: F401  (shell: the magics' shell fixture)

MODEL = {"temperature": 0.55, "top_k": 7, "top_p": 0.8, "do_sample": True, "max_new_tokens": 9}


# --------------------------------------------------------------------------- precedence (no model)


def test_unset_fields_take_the_model_values_then_the_project_defaults():
    config = HuggingFaceConfig(model="m")
    call = resolve_call_settings(config, {}, model_defaults={"temperature": 0.55, "top_k": 7})
    gen = call.generation
    assert (gen.temperature, gen.top_k) == (0.55, 7)  # the model's
    assert (gen.top_p, gen.max_new_tokens, gen.do_sample) == (GENERATION_DEFAULTS["top_p"],
                                                              GENERATION_DEFAULTS["max_new_tokens"], False)
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
        assert call.generation.do_sample and call.origins["do_sample"] == "model"  # samples, unlike the project default
        response = run(agent.invoke(make_payload("hi"), seed=1, stop_on_repetition=False))
        stats = stats_of(response)
        assert stats.do_sample is True and stats.temperature == 0.55
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


# --------------------------------------------------------------------------- the README's first question


def readme_first_question() -> str:
    """The question of the README's first ``python -m midori_hf_nb "..."`` command."""
    text = (ROOT / "README.md").read_text()
    return re.search(r'python -m midori_hf_nb "([^"]+)"', text).group(1)


def says_paris(answer: str) -> bool:
    return re.search(r"\bParis\b", answer) is not None


@pytest.fixture(scope="module")
def defaults_agent():
    """The offline default model with every generation setting left to the defaults."""
    agent = HuggingFaceLocalAgent(model=DEFAULT_MODEL, progress=False)
    run(agent.load())
    yield agent
    run(agent.unload_model())


@pytest.mark.slow
def test_the_defaults_answer_the_readme_question_right_and_the_same_for_any_seed(defaults_agent):
    """The defaults decode greedily, so the answer does not depend on the random state: twenty
    answers (no seed, then seeds 1-19) carry the same tokens and all say Paris. Sampled at the
    former defaults (temperature 0.2) about one answer in three was French nonsense."""
    question = readme_first_question()
    assert question == "What is the capital of France?"
    call = defaults_agent.resolve_settings()
    assert call.origins["do_sample"] == "default"  # nothing in the model's file or the agent chose
    payload = make_payload(question, "You are a helpful assistant.")
    answers = [run(defaults_agent.invoke(payload, seed=seed)) for seed in (None, *range(1, 20))]
    texts = [a.response for a in answers]
    assert [t for t in texts if not says_paris(t)] == []
    assert len(set(texts)) == 1, set(texts)
    assert {stats_of(a).completion_tokens for a in answers} == {stats_of(answers[0]).completion_tokens}
    assert all(stats_of(a).do_sample is False for a in answers)


@pytest.mark.slow
def test_the_readme_first_command_answers_paris_on_every_run():
    """The README's first command, as a user runs it: separate processes (each with its own random
    state) print the same answer, and it says Paris."""
    question = readme_first_question()
    outputs = [run_cli(question) for _ in range(3)]
    for out in outputs:
        assert out.returncode == 0, out.stderr
        assert says_paris(out.stdout), out.stdout
    assert len({out.stdout for out in outputs}) == 1, [out.stdout for out in outputs]


@pytest.mark.slow
def test_a_fresh_chat_panel_answers_the_readme_question_and_regenerate_can_sample(defaults_agent):
    """A new ``ChatPanel(agent)`` sends no generation settings of its own, so its first answer is
    the defaults' (greedy: right, and Regenerate gives it again); with Greedy unticked in Settings,
    Regenerate samples at the default temperature."""
    pytest.importorskip("ipywidgets")
    from midori_hf_nb.notebook import ChatPanel

    panel = ChatPanel(defaults_agent)
    assert panel.greedy_input.value is True
    assert panel.generation_overrides() == {}
    first = panel.send(readme_first_question())  # no running loop: runs to completion
    assert says_paris(first["content"]) and first["do_sample"] is False, first["content"]
    again = panel.regenerate()
    assert again["content"] == first["content"] and len(panel.transcript) == 2
    panel.greedy_input.value = False
    assert panel.generation_overrides() == {"do_sample": True, "temperature": GENERATION_DEFAULTS["temperature"]}
    sampled = panel.regenerate()
    assert sampled["do_sample"] is True and sampled["temperature"] == GENERATION_DEFAULTS["temperature"]
    assert sampled["content"] and len(panel.transcript) == 2


@pytest.mark.slow
def test_the_first_midori_cell_answers_the_readme_question_on_the_defaults(shell):
    """``%%midori`` with no options on a fresh session (the offline default model, its defaults)."""
    result, captured = execute(shell, f"%%midori --name r\n{readme_first_question()}")
    assert result.success, captured.stderr
    response = shell.user_ns["r"]
    assert current_session().agent.config.model == DEFAULT_MODEL
    assert says_paris(response.response) and stats_of(response).do_sample is False, response.response
