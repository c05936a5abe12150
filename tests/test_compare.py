"""compare() on the local agent: grid schema, batching, seeds, model release, interruption,
failing rows, batch sizes, tool calls.

These are claims about what the local agent does in a grid, so they use real generation: the
tiny random model, and the offline default model for batched-equals-unbatched. Exact outputs,
where a test needs them, come from real generations forced by ScriptedOutput. The grid's own
mechanics on any protocol agent (checks, errors, concurrency, export) are tested with scripted
agents in test_compare_agents.py and test_compare_hostile.py.
"""

from __future__ import annotations

import itertools
import re

import pytest
import torch
from transformers import LogitsProcessor

from midori_hf_nb import HuggingFaceLocalAgent, compare, make_payload
from midori_hf_nb import engine
from midori_hf_nb.compare import load_comparison, offers_batching, suggest_batch_size, summarize, to_csv, to_jsonl
from midori_hf_nb.testing import ScriptedOutput

from .conftest import run

RESULT_COLUMNS = [
    "repeat", "response", "thinking", "tool_calls", "prompt_tokens", "completion_tokens",
    "time_to_first_token", "seconds", "tokens_per_second", "finish_reason", "reproducible", "seed", "batch",
    "batch_size", "status", "error",
]


class BatchRecorder(LogitsProcessor):
    """Records the batch dimension of every ``generate`` call it takes part in (scores untouched)."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self._last_len = -2

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        length = input_ids.shape[1]
        if length != self._last_len + 1:
            self.calls.append(input_ids.shape[0])
        self._last_len = length
        return scores


class InterruptAt(LogitsProcessor):
    """Raises KeyboardInterrupt at the first step of the ``generation``-th generate call (1-based)."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.seen = 0
        self._last_len = -2

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        length = input_ids.shape[1]
        if length != self._last_len + 1:
            self.seen += 1
            if self.seen == self.generation:
                raise KeyboardInterrupt
        self._last_len = length
        return scores


def key_of(agent: HuggingFaceLocalAgent) -> tuple:
    return engine.spec_for(agent.config).key


def loaded_keys() -> set:
    return set(engine.REGISTRY.keys())


# --------------------------------------------------------------------------- schema and batching


def test_grid_schema_row_count_and_batches(tiny_model, payload):
    recorder = BatchRecorder()
    agent = HuggingFaceLocalAgent(str(tiny_model), progress=False, logits_processor=[recorder])
    prompts = ["Hello there", payload("What is two plus two?", system="ignored")]
    grid = {"temperature": [0, 0.9], "max_new_tokens": [3]}
    # reproducible=False: the rows of a setting run in one left-padded batch (what this test counts);
    # reproducible rows decode together in the shared loop instead (tests/test_reproducible.py)
    df = compare(prompts, systems=["Be brief.", "Be kind."], settings=grid, models=agent, repeats=2,
                 progress=False, warmup=False, reproducible=False)  # warm-up: test_compare_timing.py

    assert list(df.columns) == ["model", "prompt_id", "prompt", "system", "temperature", "max_new_tokens",
                                *RESULT_COLUMNS]
    assert len(df) == 2 * 2 * 2 * 2  # prompts x systems x settings x repeats
    assert df.attrs["settings_columns"] == ["temperature", "max_new_tokens"]
    assert (df["status"] == "ok").all()
    assert set(df["system"]) == {"Be brief.", "Be kind."}  # systems replace the payload's own
    assert list(df["prompt"].unique()) == ["Hello there", "What is two plus two?"]
    # the table is in (model, prompt, system, setting, repeat) order
    expected = list(itertools.product([0, 1], ["Be brief.", "Be kind."], [0.0, 0.9], [0, 1]))
    assert list(zip(df["prompt_id"], df["system"], df["temperature"], df["repeat"])) == expected
    assert (df["max_new_tokens"] == 3).all()
    assert df["completion_tokens"].between(1, 3).all()
    assert (df["prompt_tokens"] > 0).all() and (df["seconds"] > 0).all()

    # rows sharing model and settings ran together: one generate call of 8 rows per setting
    assert recorder.calls == [8, 8]
    assert df.groupby("temperature")["batch"].nunique().tolist() == [1, 1]
    assert (df["batch_size"] == 8).all()

    # an explicit batch size cuts each group into batches; batch k of a group is seeded seed + k
    recorder.calls.clear()
    df3 = compare(prompts, systems=["Be brief.", "Be kind."], settings=grid, models=agent, repeats=2,
                  batch_size=3, seed=10, progress=False, warmup=False, reproducible=False)
    assert recorder.calls == [3, 3, 2, 3, 3, 2]
    assert df3["batch"].nunique() == 6
    for _, group in df3.groupby("temperature"):
        assert group["seed"].tolist() == [10] * 3 + [11] * 3 + [12] * 2
        assert group["batch_size"].tolist() == [3] * 6 + [2] * 2


def test_summary_aggregates_batches(tiny_model):
    df = compare(["a b c", "d e", "f"], settings={"max_new_tokens": [4, 6], "temperature": [0]},
                 models=str(tiny_model), batch_size=2, progress=False)
    summary = summarize(df)
    assert summary["config"].tolist() == ["max_new_tokens=4, temperature=0", "max_new_tokens=6, temperature=0"]
    for (_, group), (_, line) in zip(df.groupby("max_new_tokens", sort=False), summary.iterrows()):
        batch_seconds = group.drop_duplicates("batch")["seconds"]
        assert line["batches"] == 2 and line["rows"] == 3 and line["ok"] == 3
        assert line["completion_tokens"] == group["completion_tokens"].sum()
        assert line["seconds"] == pytest.approx(batch_seconds.sum())
        assert line["tokens_per_second"] == pytest.approx(group["completion_tokens"].sum() / batch_seconds.sum())


@pytest.fixture(scope="module")
def float32_agent():
    """Greedy agent on the default model in float32, where padding leaves the numerics exact."""
    from midori_hf_nb import DEFAULT_MODEL

    agent = HuggingFaceLocalAgent(DEFAULT_MODEL, torch_dtype="float32", do_sample=False, progress=False)
    yield agent
    agent.unload_model_sync()


@pytest.mark.slow
def test_batched_greedy_equals_unbatched_on_default_model(float32_agent):
    default_agent = float32_agent
    prompts = [
        "What is the capital of France?",
        "Name three colours.",
        "Write one sentence about the sea and the wind on a grey winter morning.",
        "2+2=?",
        "Explain in one sentence why the sky looks blue to people on the ground.",
    ]
    system = "You are a helpful assistant."
    df = compare(prompts, systems=[system], settings={"max_new_tokens": [20], "greedy": [True]},
                 models=default_agent, progress=False)
    assert (df["status"] == "ok").all()
    assert (df["batch_size"] == len(prompts)).all()  # one batch...
    assert df["prompt_tokens"].nunique() > 1  # ...of prompts of different lengths: left padding was used
    for row in df.to_dict("records"):
        alone = run(default_agent.invoke(make_payload(row["prompt"], system), max_new_tokens=20, greedy=True,
                                         reproducible=True))
        assert row["response"] == alone.response, row["prompt"]
        assert row["completion_tokens"] == alone.metadata["completion_tokens"]
        assert row["finish_reason"] == alone.metadata["finish_reason"]


# --------------------------------------------------------------------------- seeds


def test_seed_makes_sampled_rows_reproducible(tiny_model):
    agent = HuggingFaceLocalAgent(str(tiny_model), progress=False, top_k=1000, top_p=1.0)
    prompts = ["one", "two words", "three words here"]
    grid = {"temperature": [1.0], "max_new_tokens": [6]}

    def table(seed, batch_size=None):
        return compare(prompts, settings=grid, models=agent, repeats=2, seed=seed, batch_size=batch_size,
                       progress=False)

    first, second, other = table(7), table(7), table(8)
    assert first["response"].tolist() == second["response"].tolist()
    assert first["response"].tolist() != other["response"].tolist()
    # repeats inside one table are different samples
    assert (first[first["repeat"] == 0]["response"].tolist() != first[first["repeat"] == 1]["response"].tolist())

    # one row per batch: each row equals a single invoke with the row's seed
    single = table(3, batch_size=1)
    assert single["seed"].tolist() == list(range(3, 3 + len(single)))
    try:
        for row in single.to_dict("records"):
            alone = run(agent.invoke(make_payload(row["prompt"]), seed=int(row["seed"]), temperature=1.0,
                                     max_new_tokens=6, reproducible=True))
            assert alone.response == row["response"]
    finally:
        agent.unload_model_sync()


# --------------------------------------------------------------------------- model lifetime


def test_models_released_between_model_groups(tiny_model, tiny_plain_model):
    first = HuggingFaceLocalAgent(str(tiny_model), progress=False)
    second = HuggingFaceLocalAgent(str(tiny_plain_model), progress=False)
    ours = {key_of(first), key_of(second)}
    assert loaded_keys() & ours == set()  # precondition: no other test left them loaded
    events = []

    def on_event(event):
        events.append((event.kind, event.model, loaded_keys() & ours))

    df = compare(["hi", "hello"], settings={"max_new_tokens": [2]}, models={"A": first, "B": second},
                 on_event=on_event, progress=False)
    assert (df["status"] == "ok").all() and df["model"].unique().tolist() == ["A", "B"]
    kinds = [(kind, model) for kind, model, _ in events]
    assert kinds == [("model_loaded", "A"), ("warmup", "A"), ("batch", "A"), ("model_released", "A"),
                     ("model_loaded", "B"), ("warmup", "B"), ("batch", "B"), ("model_released", "B")]
    loaded_at = {(kind, model): keys for kind, model, keys in events}
    assert loaded_at[("model_loaded", "A")] == {key_of(first)}
    assert loaded_at[("model_released", "A")] == set()
    assert loaded_at[("model_loaded", "B")] == {key_of(second)}  # never both in memory
    assert loaded_keys() & ours == set()
    assert not first.is_loaded and not second.is_loaded


def test_caller_loaded_agent_stays_loaded(tiny_model, tiny_plain_model):
    mine = HuggingFaceLocalAgent(str(tiny_model), progress=False).load_sync()
    try:
        lm = mine.loaded_model
        df = compare(["hi"], settings={"max_new_tokens": [2]}, models=[mine, str(tiny_plain_model)],
                     progress=False)
        assert (df["status"] == "ok").all()
        assert mine.is_loaded and mine.loaded_model is lm and mine.reference_count == 1
        assert lm.model is not None  # not freed under the caller
        plain_key = engine.spec_for(HuggingFaceLocalAgent(str(tiny_plain_model)).config).key
        assert plain_key not in loaded_keys()  # the model compare loaded itself is gone
    finally:
        mine.unload_model_sync()


# --------------------------------------------------------------------------- interruption


@pytest.mark.parametrize("where", ["generation", "check"])
def test_interrupt_keeps_finished_rows(tiny_model, where):
    processors = [InterruptAt(2)] if where == "generation" else []
    agent = HuggingFaceLocalAgent(str(tiny_model), progress=False, logits_processor=processors)
    calls = []

    def check(row):
        calls.append(row["temperature"])
        if row["temperature"] > 0:  # the first row of the second group
            raise KeyboardInterrupt
        return True

    grid = {"temperature": [0, 0.9, 1.2], "max_new_tokens": [3]}
    with pytest.warns(RuntimeWarning, match="interrupted"):
        # InterruptAt counts generate calls: no warm-up call, and left-padded batches (reproducible
        # rows run one at a time with the agent's own logits processors)
        df = compare(["hi", "hello"], settings=grid, models=agent, checks=[check] if where == "check" else None,
                     progress=False, warmup=False, reproducible=False)
    assert len(df) == 6 and df.attrs["interrupted"] is True
    finished = df[df["temperature"] == 0]
    assert (finished["status"] == "ok").all()
    assert finished["response"].notna().all() and (finished["completion_tokens"] > 0).all()
    if where == "generation":  # the second batch never finished
        assert (df[df["temperature"] > 0]["status"] == "not run").all()
        assert df[df["temperature"] > 0]["response"].isna().all()
    else:  # the second batch had generated when its check interrupted; the third never ran
        assert (df[df["temperature"] == 0.9]["status"] == "ok").all()
        assert (df[df["temperature"] == 1.2]["status"] == "not run").all()
        assert finished["passed"].tolist() == [True, True]
    assert not agent.is_loaded and key_of(agent) not in loaded_keys()


# --------------------------------------------------------------------------- checks and errors


def test_failing_row_is_isolated(tiny_model):
    agent = HuggingFaceLocalAgent(str(tiny_model), progress=False, context_window=80)
    long_prompt = "word " * 200  # cannot fit the context window
    df = compare(["short", long_prompt, "also short"], settings={"max_new_tokens": [3]}, models=agent,
                 progress=False)
    assert df["status"].tolist() == ["ok", "error", "ok"]
    assert "ContextWindowError" in df.loc[1, "error"]
    assert df.loc[[0, 2], "response"].notna().all()


def test_invalid_arguments_name_the_field(tiny_model):
    source = str(tiny_model)
    before = loaded_keys()
    cases = [
        (dict(settings={"temperature": [3.0]}), "temperature"),
        (dict(settings={"no_such_option": [1]}), "no_such_option"),
        (dict(settings={"seed": [1]}), "seed"),
        (dict(settings={"max_new_tokens": []}), "max_new_tokens"),
        (dict(settings=[("temperature", 1)]), "settings"),
        (dict(repeats=0), "repeats"),
        (dict(batch_size=0), "batch_size"),
        (dict(seed="x"), "seed"),
        (dict(checks=[42]), "checks"),
        (dict(models=[42]), "models"),
        (dict(systems=[None]), "systems"),
    ]
    for kwargs, field in cases:
        with pytest.raises(ValueError, match=re.escape(field)):
            compare(["hi"], **{"models": source, "progress": False, **kwargs})
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        compare(["hi", 3], models=source, progress=False)
    assert loaded_keys() == before  # nothing was loaded for a bad request


def test_suggest_batch_size_follows_free_memory(tiny_model):
    assert suggest_batch_size is engine.suggest_batch_size  # the engine's memory model, re-exported
    agent = HuggingFaceLocalAgent(str(tiny_model), progress=False).load_sync()
    try:
        lm = agent.loaded_model
        sizes = [suggest_batch_size(lm, 40, 64, available_bytes=b) for b in (10_000, 10**6, 10**7, 10**12)]
        assert sizes[0] == 1  # never below one
        assert sizes == sorted(sizes)  # more memory, larger batches
        assert sizes[-1] == engine.batching.CPU_BATCH_CAP == 16  # capped on a CPU
        assert suggest_batch_size(lm, 40, 4096, available_bytes=10**7) <= suggest_batch_size(
            lm, 40, 64, available_bytes=10**7)  # longer answers, smaller batches
        # a batch is sized by its longest prompt
        assert suggest_batch_size(lm, [3, 400, 40], 64, available_bytes=10**7) == suggest_batch_size(
            lm, 400, 64, available_bytes=10**7) < suggest_batch_size(lm, 40, 64, available_bytes=10**7)
        lengths = engine.estimate_prompt_tokens(lm, ["short", "a much longer prompt than the first one"])
        assert lengths[0] < lengths[1] and lengths[0] > engine.batching.TEMPLATE_MARKUP_TOKENS
        with pytest.raises(ValueError, match="prompt_lengths"):
            suggest_batch_size(lm, [-1], 64)
    finally:
        agent.unload_model_sync()


# --------------------------------------------------------------------------- export and tools


def test_a_logits_processor_in_the_grid_runs_and_exports(tiny_model, tmp_path):
    recorder = BatchRecorder()
    agent = HuggingFaceLocalAgent(str(tiny_model), progress=False)
    assert offers_batching(agent)
    df = compare(["hi", "hello"], settings={"logits_processor": [[recorder]], "max_new_tokens": [2]}, models=agent,
                 progress=False, reproducible=False)
    assert (df["status"] == "ok").all() and recorder.calls == [2]  # the grid's processor took part in the batch
    recorder.calls.clear()  # reproducible rows with a logits processor of their own run one at a time
    again = compare(["hi", "hello"], settings={"logits_processor": [[recorder]], "max_new_tokens": [2]}, models=agent,
                    progress=False, warmup=False)
    assert again["reproducible"].tolist() == [True, True] and recorder.calls == [1, 1]
    for writer, name in ((to_csv, "t.csv"), (to_jsonl, "t.jsonl")):
        back = load_comparison(writer(df, tmp_path / name))
        assert back["logits_processor"].tolist() == [[repr(recorder)]] * 2  # objects come back as their repr
        assert back["response"].tolist() == df["response"].tolist()


def test_thinking_and_tool_call_columns(tiny_tools_model):
    from transformers import AutoTokenizer

    def get_weather(city: str) -> str:
        """Weather report for a city.

        Args:
            city: the city's name.
        """
        return f"sunny in {city}"

    text = '<think>The user wants weather.</think><tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    scripted = ScriptedOutput(AutoTokenizer.from_pretrained(tiny_tools_model), text)
    agent = HuggingFaceLocalAgent(str(tiny_tools_model), progress=False, logits_processor=[scripted])
    df = compare(["Weather in Paris?", "And now?"], settings={"max_new_tokens": [60]}, models=agent,
                 tools=[get_weather], progress=False)
    assert (df["status"] == "ok").all()
    assert df["thinking"].tolist() == ["The user wants weather."] * 2
    for calls in df["tool_calls"]:
        assert [(c["name"], c["arguments"]) for c in calls] == [("get_weather", {"city": "Paris"})]
    no_tools = compare(["Weather in Paris?"], settings={"max_new_tokens": [60]}, models=agent, progress=False)
    assert no_tools["tool_calls"].isna().all()  # calls are parsed only when tools are offered
