"""compare() on any protocol agent: the grid's own mechanics, on scripted agents (no model, exact).

What the local agent does in a grid (batching, seeds, numerics, releasing its model) is tested
on real generation in test_compare.py; here the agents are ScriptedAgent objects, which answer
through ``invoke`` only, so the rows run as concurrent calls.
"""

from __future__ import annotations

import asyncio
import re
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from midori_hf_nb import AgentResponse, MidoriAiAgentProtocol, compare, make_payload
from midori_hf_nb.compare import (
    CHECK_PREFIX,
    DEFAULT_CONCURRENCY,
    load_comparison,
    manages_model,
    offers_batching,
    to_csv,
    to_jsonl,
    to_markdown,
)
from midori_hf_nb.stats import stats_of
from midori_hf_nb.testing import ScriptedAgent

from .conftest import run
from .test_packaging import run_blocked

ROOT = Path(__file__).resolve().parents[1]

RESULT_COLUMNS = [
    "repeat", "response", "thinking", "tool_calls", "prompt_tokens", "completion_tokens",
    "time_to_first_token", "seconds", "tokens_per_second", "finish_reason", "reproducible", "seed", "batch",
    "batch_size", "status", "error",
]


class CountingAgent(ScriptedAgent):
    """A scripted agent that counts the calls it is answering at once."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.in_flight = 0
        self.most_in_flight = 0

    async def invoke(self, payload, **overrides):
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await super().invoke(payload, **overrides)
        finally:
            self.in_flight -= 1


class LoadingAgent(ScriptedAgent):
    """A scripted agent that loads and frees a 'model' (async ``load`` / ``unload_model`` only)."""

    def __init__(self, *args, loaded: bool = False, fail_load: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.is_loaded = loaded
        self.fail_load = fail_load
        self.loads = 0
        self.unloads = 0

    async def load(self):
        self.loads += 1
        if self.fail_load:
            raise OSError("weights missing")
        self.is_loaded = True
        return self

    async def unload_model(self) -> None:
        self.unloads += 1
        self.is_loaded = False


class MisreportingAgent(ScriptedAgent):
    """A scripted agent whose metadata carries values of the wrong types and unknown keys."""

    async def invoke(self, payload, **overrides):
        response = await super().invoke(payload, **overrides)
        response.metadata.update(completion_tokens="many", tokens_per_second=-3.0, finish_reason="exploded",
                                 seconds=99.0, prompt_tokens=7)
        return response


def quiet(**kwargs):
    return {"progress": False, **kwargs}


# --------------------------------------------------------------------------- the grid on invoke


def test_protocol_agent_rows_run_through_invoke_with_their_settings_and_seeds():
    agent = ScriptedAgent("<think>Plan.</think>The answer is 4.", piece_chars=4)
    assert not offers_batching(agent) and not manages_model(agent)
    df = compare(["What is 2+2?", make_payload("Say four.", "Be brief.")], systems=None,
                 settings={"temperature": [0, 0.7], "max_new_tokens": [3, 50]}, models=agent, repeats=2,
                 seed=10, **quiet())

    assert list(df.columns) == ["model", "prompt_id", "prompt", "system", "temperature", "max_new_tokens",
                                *RESULT_COLUMNS]
    assert len(df) == 2 * 4 * 2 and (df["status"] == "ok").all() and (df["model"] == "scripted").all()
    assert df["system"].tolist() == [""] * 8 + ["Be brief."] * 8  # each payload keeps its own
    # every row was one invoke call with its setting, and the k-th row of a setting got seed + k
    assert len(agent.calls) == 16
    by_prompt_setting = {(c.payload.user_message, c.overrides["temperature"], c.overrides["max_new_tokens"],
                          c.overrides["seed"]) for c in agent.calls}
    for row in df.to_dict("records"):
        assert (row["prompt"], row["temperature"], row["max_new_tokens"], row["seed"]) in by_prompt_setting
    for _, group in df.groupby(["temperature", "max_new_tokens"]):
        assert group["seed"].tolist() == [10, 11, 12, 13]
    assert (df["batch_size"] == 1).all() and df["batch"].nunique() == 16
    # the scripted agent honours max_new_tokens (pieces), so the grid's values show in the answers
    short, full = df[df["max_new_tokens"] == 3], df[df["max_new_tokens"] == 50]
    assert (short["finish_reason"] == "length").all() and (short["completion_tokens"] == 3).all()
    assert (full["response"] == "The answer is 4.").all() and (full["thinking"] == "Plan.").all()
    assert (full["finish_reason"] == "stop").all()


def test_every_figure_comes_from_the_typed_statistics():
    agent = ScriptedAgent("Paris.", piece_chars=2)
    df = compare(["Capital of France?"], settings={"max_new_tokens": [20]}, models=agent, **quiet())
    reference = stats_of(run(ScriptedAgent("Paris.", piece_chars=2).invoke(make_payload("q"))))
    row = df.iloc[0]
    assert row["completion_tokens"] == reference.completion_tokens == 3
    assert row["prompt_tokens"] == reference.prompt_tokens and row["finish_reason"] == reference.finish_reason
    assert row["seconds"] > 0 and row["tokens_per_second"] > 0 and row["time_to_first_token"] >= 0

    # metadata with values of the wrong type: the row is kept, those figures are missing, and a
    # metadata key that merely looks like a column ("seconds") does not land in it
    bad = compare(["q"], settings={"max_new_tokens": [20]}, models=MisreportingAgent("Paris."), **quiet())
    row = bad.iloc[0]
    assert row["status"] == "ok" and row["response"] == "Paris."
    assert pd.isna(row["completion_tokens"]) and pd.isna(row["tokens_per_second"]) and pd.isna(row["finish_reason"])
    assert row["prompt_tokens"] == 7
    assert row["seconds"] != 99.0 and row["seconds"] < 5


def test_two_agents_with_labels_each_run_their_own_rows():
    first, second = ScriptedAgent("from the first", model="m"), ScriptedAgent("from the second", model="m")
    events = []
    df = compare(["a", "b"], settings={"max_new_tokens": [40]}, models={"alpha": first, "beta": second},
                 on_event=lambda e: events.append((e.kind, e.model, e.done, e.total)), **quiet())
    assert df["model"].tolist() == ["alpha", "alpha", "beta", "beta"]
    assert df["response"].tolist() == ["from the first"] * 2 + ["from the second"] * 2
    assert len(first.calls) == 2 and len(second.calls) == 2
    # scripted agents load nothing: ready, one event per finished row, and no release
    assert [(k, m) for k, m, _, _ in events] == [("model_loaded", "alpha"), ("batch", "alpha"), ("batch", "alpha"),
                                                ("model_loaded", "beta"), ("batch", "beta"), ("batch", "beta")]
    assert [done for kind, _, done, _ in events if kind == "batch"] == [1, 2, 3, 4]

    unlabelled = compare(["a"], settings={"max_new_tokens": [40]}, models=[first, second], **quiet())
    assert unlabelled["model"].tolist() == ["m", "m [2]"]  # the agents' model names, made unique


def test_an_agent_that_raises_fails_only_its_row():
    agent = ScriptedAgent(["first answer", ConnectionError("server went away"), "third answer"])
    df = compare(["one", "two", "three"], models=agent, checks=["answer"], **quiet())
    assert df["status"].tolist() == ["ok", "error", "ok"]
    assert df.loc[1, "error"] == "ConnectionError: server went away"
    assert df["response"].tolist()[0::2] == ["first answer", "third answer"] and pd.isna(df.loc[1, "response"])
    assert df["passed"].tolist()[0::2] == [True, True] and pd.isna(df.loc[1, "passed"])  # checks skip failed rows


@pytest.mark.parametrize("where", ["agent", "check"])
def test_interrupt_keeps_finished_rows(where):
    replies = ["one", "two", KeyboardInterrupt() if where == "agent" else "three", "four", "five"]
    agent = ScriptedAgent(replies)

    def check(row):
        if row["response"] == "three":
            raise KeyboardInterrupt
        return True

    before = {t for t in threading.enumerate() if t.name == "midori-compare"}
    with pytest.warns(RuntimeWarning, match=r"interrupted: \d of 5 rows were not run"):
        df = compare(["p1", "p2", "p3", "p4", "p5"], models=agent, concurrency=1,
                     checks=[check] if where == "check" else None, **quiet())
    assert df.attrs["interrupted"] is True
    assert df["status"].tolist()[:2] == ["ok", "ok"] and df["response"].tolist()[:2] == ["one", "two"]
    if where == "agent":
        assert df["status"].tolist()[2:] == ["not run"] * 3
        assert len(agent.calls) == 3  # no call started after the interrupt
    else:  # the third row had answered when its check interrupted
        assert df["status"][2] == "ok" and df["passed"].tolist()[:2] == [True, True] and pd.isna(df["passed"][2])
        # calls that went on meanwhile were cancelled, or kept with their answer but not checked
        later = df.iloc[3:]
        assert set(later["status"]) <= {"ok", "not run"} and later["passed"].isna().all()
        assert later[later["status"] == "ok"]["response"].tolist() == ["four", "five"][:(later["status"] == "ok").sum()]
        assert len(agent.calls) >= 3 + (later["status"] == "ok").sum()
    assert {t for t in threading.enumerate() if t.name == "midori-compare"} == before  # the worker ended


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs POSIX signals")
def test_a_real_interrupt_while_waiting_cancels_the_running_calls():
    """SIGINT reaches the calling thread while it waits for the worker's calls (as a kernel
    interrupt does): the running calls are cancelled and the finished rows stay."""
    agent = ScriptedAgent("abcdefgh", delay=0.05, piece_chars=4)  # >= 0.1 s a row: 40 rows >= 2 s
    timers = []

    def interrupt_soon(event):
        # sent from another thread while compare waits (``done`` may step past 3 when rows finish together)
        if event.kind == "batch" and event.done >= 3 and not timers:
            timers.append(threading.Timer(0.02, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)))
            timers[0].start()

    # Python raises KeyboardInterrupt on SIGINT only with this handler in place; a process started in
    # the background by a non-interactive shell ignores SIGINT, so the test installs it, as kernels do
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.warns(RuntimeWarning, match="interrupted"):
            df = compare([f"prompt {i}" for i in range(40)], models=agent, concurrency=2,
                         on_event=interrupt_soon, **quiet())
    finally:
        signal.signal(signal.SIGINT, previous)
    timers[0].join()
    ok = (df["status"] == "ok").sum()
    assert df.attrs["interrupted"] is True and 3 <= ok < 40
    assert set(df["status"]) == {"ok", "not run"}
    assert list(df.index[df["status"] == "ok"])[-1] <= ok  # rows run in order, two at a time
    assert len(agent.calls) <= ok + 2  # at most the two calls running at the interrupt were cut short
    assert not [t for t in threading.enumerate() if t.name == "midori-compare"]


def test_concurrency_overlaps_calls_up_to_its_limit():
    def timed(concurrency, rows):
        agent = CountingAgent("abcdefgh", delay=0.05, piece_chars=4)  # two pieces: >= 0.1 s a row
        started = time.perf_counter()
        df = compare([f"prompt {i}" for i in range(rows)], models=agent, concurrency=concurrency, **quiet())
        assert (df["status"] == "ok").all()
        return time.perf_counter() - started, agent.most_in_flight

    one_row, _ = timed(1, 1)
    serial, serial_most = timed(1, 8)
    overlapped, most = timed(4, 8)
    assert serial_most == 1 and most == 4  # never more than the limit, and the limit is reached
    assert serial >= 8 * 0.1
    assert overlapped < 0.75 * 8 * one_row  # generous: four at a time is about 2 rows' time
    assert DEFAULT_CONCURRENCY == 4


def test_compare_runs_inside_a_running_event_loop():
    """As in a notebook cell: compare() is called while the kernel's loop runs in this thread."""

    async def cell():
        return compare(["a", "b"], models=ScriptedAgent("fine"), **quiet())

    df = asyncio.run(cell())
    assert df["response"].tolist() == ["fine", "fine"]


def test_tool_rows_go_through_invoke_with_tools():
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    agent = ScriptedAgent(text)
    tool = {"name": "get_weather", "description": "Weather report for a city."}
    df = compare(["Weather in Paris?"], models=agent, tools=[tool], **quiet())
    assert agent.calls[0].tools == ["get_weather"]
    assert [(c["name"], c["arguments"]) for c in df.loc[0, "tool_calls"]] == [("get_weather", {"city": "Paris"})]
    no_tools = compare(["Weather in Paris?"], models=ScriptedAgent(text), **quiet())
    assert pd.isna(no_tools.loc[0, "tool_calls"])


def test_models_that_load_are_loaded_and_released_in_turn():
    fresh, mine, broken = LoadingAgent("fresh"), LoadingAgent("mine", loaded=True), LoadingAgent("x", fail_load=True)
    assert manages_model(fresh)
    events = []
    df = compare(["q1", "q2"], models={"fresh": fresh, "mine": mine, "broken": broken},
                 on_event=lambda e: events.append((e.kind, e.model)), **quiet())
    assert (fresh.loads, fresh.unloads, fresh.is_loaded) == (1, 1, False)
    assert (mine.unloads, mine.is_loaded) == (0, True)  # the caller's model stays loaded
    assert [e for e in events if e[0] != "batch"] == [("model_loaded", "fresh"), ("model_released", "fresh"),
                                                     ("model_loaded", "mine")]
    assert df["status"].tolist() == ["ok"] * 4 + ["error"] * 2
    assert (df[df["model"] == "broken"]["error"] == "loading the model failed: OSError: weights missing").all()
    assert len(broken.calls) == 0


class BareProtocolAgent(MidoriAiAgentProtocol):
    """Exactly the protocol: invoke(payload) with no per-call options."""

    def __init__(self) -> None:
        self.payloads = []

    async def invoke(self, payload):
        self.payloads.append(payload)
        return AgentResponse(thinking="", response=f"echo: {payload.user_message}", metadata={"completion_tokens": 2})

    async def invoke_with_tools(self, payload, tools):
        return await self.invoke(payload)

    async def get_context_window(self) -> int:
        return 1024

    async def supports_streaming(self) -> bool:
        return False


def test_an_agent_with_only_the_protocols_methods():
    agent = BareProtocolAgent()
    df = compare(["one", "two"], models=agent, seed=5, **quiet())
    assert df["response"].tolist() == ["echo: one", "echo: two"] and (df["status"] == "ok").all()
    assert df["model"].tolist() == ["BareProtocolAgent"] * 2  # no model name: the class names it
    assert df["seed"].isna().all()  # invoke(payload) takes no seed, so none was passed or claimed
    assert df["completion_tokens"].tolist() == [2, 2] and df["seconds"].isna().all()  # what it reports, no more
    with pytest.raises(ValueError, match="settings=.*takes no per-call options"):
        compare(["one"], models=agent, settings={"temperature": [0.5]}, **quiet())
    assert len(agent.payloads) == 2


# --------------------------------------------------------------------------- checks and arguments


def test_checks_columns():
    text = "The capital of France is Paris."
    checks = {
        "paris": "Paris",
        "london": re.compile(r"\bLondon\b"),
        "long enough": lambda row: row["completion_tokens"] >= 5,
        "broken": lambda row: 1 / 0,
    }
    df = compare(["Capital of France?", "Say it again."], models=ScriptedAgent(text), checks=checks, **quiet())
    assert (df["response"] == text).all() and (df["status"] == "ok").all()
    assert df.attrs["check_columns"] == [CHECK_PREFIX + n for n in checks]
    assert df["check: paris"].tolist() == [True, True]
    assert df["check: london"].tolist() == [False, False]
    assert df["check: long enough"].tolist() == [True, True]
    assert df["check: broken"].tolist() == [False, False]
    assert df["passed"].tolist() == [False, False]
    assert df["error"].str.contains("ZeroDivisionError").all()

    ok = compare(["Capital of France?"], models=ScriptedAgent(text), checks=["Paris", re.compile(r"paris", re.I)],
                 **quiet())
    assert ok["check: contains 'Paris'"].tolist() == [True]
    assert ok["check: matches 'paris'"].tolist() == [True]
    assert ok["passed"].tolist() == [True]


@pytest.mark.parametrize("kwargs, field", [
    (dict(settings={"temperature": [3.0]}), "temperature"),
    (dict(settings={"top_p": [0]}), "top_p"),
    (dict(settings={"greedy": [True], "do_sample": [True]}), "greedy"),
    (dict(settings={"max_new_tokens": [0]}), "max_new_tokens"),
    (dict(settings={"seed": [1]}), "seed"),
    (dict(seed=2**64), "seed"),
    (dict(seed=True), "seed"),
    (dict(concurrency=0), "concurrency"),
    (dict(concurrency=2.5), "concurrency"),
    (dict(models=[object()]), "models[0]"),
    (dict(models=[]), "models"),
    (dict(tools="get_weather"), "tools"),
])
def test_settings_and_arguments_are_checked_before_any_call(kwargs, field):
    agent = ScriptedAgent("never")
    options = {"models": agent, **quiet(), **kwargs}
    with pytest.raises(ValueError, match=re.escape(field)):
        compare(["hi"], **options)
    assert agent.calls == []


# --------------------------------------------------------------------------- export


def test_export_round_trip(tmp_path):
    text = 'Line one | a, "b"\nline <b>two</b> & *three* \\ end NA'
    agent = ScriptedAgent([text, text, ValueError("prompt too long"), ValueError("prompt too long")])
    grid = {"temperature": [0, 0.5], "max_new_tokens": [400], "do_sample": [True], "repetition_penalty": [1.0],
            "stop_strings": [["END", "|"]]}
    df = compare(["first", "word " * 200], systems=["sys, with comma"], settings=grid, models=agent,
                 checks=["Line"], concurrency=1, progress=False)
    assert df["status"].tolist() == ["ok", "ok", "error", "error"]
    assert (df.loc[df["status"] == "ok", "response"] == text).all()

    for writer, name in ((to_csv, "t.csv"), (to_jsonl, "t.jsonl")):
        back = load_comparison(writer(df, tmp_path / name))
        pd.testing.assert_frame_equal(back, df, obj=name)
        assert back.attrs["settings_columns"] == df.attrs["settings_columns"]

    md = to_markdown(df, tmp_path / "t.md")
    assert "<b>" not in md and "&lt;b&gt;" in md  # model text is escaped
    back = load_comparison(tmp_path / "t.md")
    for col in ["temperature", "max_new_tokens", "do_sample", "repetition_penalty", "stop_strings"]:
        pd.testing.assert_series_equal(back[col], df[col], obj=col)
    for col in ["model", "prompt", "system", "response", "status", "check: contains 'Line'", "passed"]:
        pd.testing.assert_series_equal(back[col], df[col], obj=col)
    assert back.attrs["settings_columns"] == df.attrs["settings_columns"]


# --------------------------------------------------------------------------- the core alone, the README


def test_compare_on_a_protocol_agent_needs_no_torch_or_ipython():
    out = run_blocked(
        "from midori_hf_nb import compare\n"
        "from midori_hf_nb.compare import to_jsonl, load_comparison\n"
        "from midori_hf_nb.testing import ScriptedAgent\n"
        "df = compare(['a', 'b'], settings={'max_new_tokens': [8]}, models=ScriptedAgent('ok'), progress=False)\n"
        "assert df['response'].tolist() == ['ok', 'ok'], df\n"
        "import sys, tempfile, os\n"
        "path = os.path.join(tempfile.mkdtemp(), 'c.jsonl')\n"
        "assert load_comparison(to_jsonl(df, path))['response'].tolist() == ['ok', 'ok']\n"
        "assert 'torch' not in sys.modules and 'IPython' not in sys.modules\n"
        "print('compare ok')\n")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "compare ok" in out.stdout


def readme_comparison_code() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Prompt comparison", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "the README's Prompt comparison section has no python block"
    return "\n".join(blocks)


def test_the_readme_comparison_example_runs_as_written(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    code = readme_comparison_code()
    assert "midori_hf_nb.compare import" in code and "to_csv" in code  # the export spelling is in the example
    namespace = {"agent": ScriptedAgent("2+2 is 4.")}
    exec(compile(code, "<README.md: Prompt comparison>", "exec"), namespace)  # the README's own code, on a scripted agent
    df = namespace["df"]
    assert len(df) == 2 * 2 and (df["check: mentions 4"]).all()
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert saved == ["comparison.csv", "comparison.jsonl", "comparison.md"]
    pd.testing.assert_frame_equal(namespace["again"], df)  # read back from the CSV, exactly
