"""The call log: every generation recorded in SQLite, with llm's column names; control, privacy,
reading, transcripts. Scripted agents for the log's own behaviour; real generations on the tiny
model for what the local agent records (settings and their sources, the model, tool loops, batches)."""

from __future__ import annotations

import json
import sqlite3
import warnings

import pytest

from midori_hf_nb import HuggingFaceLocalAgent, MemoryEntryData, log, make_payload
from midori_hf_nb.log.control import LogOptionError, state_from_environment
from midori_hf_nb.log.writer import LogWriteWarning
from midori_hf_nb.testing import ScriptedAgent, ScriptedOutput

from .conftest import log_rows, run


def ask(agent, text, **overrides):
    return run(agent.invoke(make_payload(text, "Be brief."), **overrides))


@pytest.fixture(scope="module")
def tiny_agent(tiny_model):
    agent = HuggingFaceLocalAgent(model=str(tiny_model), do_sample=False, max_new_tokens=12, progress=False)
    run(agent.load())
    yield agent
    run(agent.unload_model())


# --------------------------------------------------------------------------- what is recorded


def test_a_call_is_recorded_with_llms_columns_and_its_log_id(call_log):
    agent = ScriptedAgent("<think>France's capital.</think>Paris is the capital.")
    with log.context(conversation_id="conv-1", conversation_name="geography"):
        response = run(agent.invoke(make_payload("Capital of France?", "Answer in one line.")))
    [row] = log_rows(call_log)
    assert row["id"] == response.metadata["log_id"] and len(row["id"]) == 26
    assert (row["prompt"], row["system"], row["response"]) == ("Capital of France?", "Answer in one line.",
                                                               "Paris is the capital.")
    assert row["reasoning"] == "France's capital." and row["model"] == "scripted" and row["backend"] == "scripted"
    assert row["conversation_id"] == "conv-1" and row["surface"] == "api" and row["method"] == "stream"
    assert row["output_tokens"] == response.metadata["completion_tokens"] and row["finish_reason"] == "stop"
    assert isinstance(row["duration_ms"], int) and row["datetime_utc"].endswith("+00:00")
    assert json.loads(row["prompt_json"])["user"] == "Capital of France?"
    assert json.loads(row["response_json"])["metadata"]["finish_reason"] == "stop"
    conn = sqlite3.connect(str(call_log))
    assert conn.execute("SELECT id, name, model FROM conversations").fetchall() == [("conv-1", "geography", "scripted")]
    assert conn.execute("SELECT rowid FROM responses_fts WHERE responses_fts MATCH 'paris'").fetchall()  # FTS5
    conn.close()


def test_the_local_agent_records_model_settings_their_sources_and_messages(call_log, tiny_agent, tiny_model):
    memory = [MemoryEntryData("user", "Hi"), MemoryEntryData("assistant", "Hello!")]
    payload = make_payload("Name a colour.", "You are terse.", memory=memory)
    forced = ScriptedOutput(tiny_agent.loaded_model.tokenizer, "Blue.")
    response = run(tiny_agent.invoke(payload, temperature=0.0, seed=7, logits_processor=[forced]))
    [row] = log_rows(call_log)
    assert response.response == "Blue." and row["response"] == "Blue." and row["method"] == "invoke"
    assert row["model"] == str(tiny_model) and row["resolved_model"] == tiny_agent.loaded_model.path
    assert row["device"] == "cpu" and row["dtype"] == tiny_agent.loaded_model.spec.dtype
    options, sources = json.loads(row["options_json"]), json.loads(row["option_sources_json"])
    assert options["seed"] == 7 and options["max_new_tokens"] == 12 and options["temperature"] == 0.0
    assert sources["temperature"] == "call" and sources["max_new_tokens"] == "agent"
    assert "ScriptedOutput" in options["generate_options"]["logits_processor"][0]
    sent = json.loads(row["prompt_json"])
    assert [(m["role"], m["content"]) for m in sent["memory"]] == [("user", "Hi"), ("assistant", "Hello!")]
    assert sent["system"] == "You are terse." and row["input_tokens"] == response.metadata["prompt_tokens"]


def test_streams_tool_loops_and_batches_are_recorded_each_generation(call_log, tiny_agent):
    tokenizer = tiny_agent.loaded_model.tokenizer

    def multiply(a: int, b: int) -> int:
        """Multiply two integers.

        Args:
            a: The first factor.
            b: The second factor.
        """
        return a * b

    async def go():
        pieces = [p async for p in tiny_agent.stream(make_payload("Say hi"), logits_processor=[
            ScriptedOutput(tokenizer, "Hi there.")])]
        loop = await tiny_agent.run_tools(make_payload("6 times 7?"), [multiply], max_new_tokens=64, logits_processor=[
            ScriptedOutput(tokenizer, ['<tool_call>{"name": "multiply", "arguments": {"a": 6, "b": 7}}</tool_call>',
                                       "It is 42."])])
        return "".join(pieces), loop

    text, loop = run(go())
    batch = tiny_agent.generate_batch([make_payload("One"), make_payload("Two")], max_new_tokens=4)
    rows = log_rows(call_log)
    assert [r["method"] for r in rows] == ["stream", "tool_loop", "tool_loop", "generate_batch", "generate_batch"]
    assert rows[0]["response"] == text == "Hi there."
    first, second = rows[1], rows[2]
    assert first["group_id"] == second["group_id"] is not None
    assert json.loads(first["tool_calls_json"])[0]["arguments"] == {"a": 6, "b": 7}
    assert json.loads(second["tool_results_json"])[0]["content"].endswith("42") and second["response"] == loop.response
    assert rows[3]["group_id"] == rows[4]["group_id"] and [r["prompt"] for r in rows[3:]] == ["One", "Two"]
    assert [r["id"] for r in rows[3:]] == [b.metadata["log_id"] for b in batch]


def test_a_failed_call_is_recorded_with_its_error(call_log):
    agent = ScriptedAgent(RuntimeError("the model fell over"), fail_after=2)
    with pytest.raises(RuntimeError, match="fell over"):
        ask(agent, "Will this work?")
    [row] = log_rows(call_log)
    assert row["prompt"] == "Will this work?" and row["finish_reason"] == "error"
    assert row["error"] == "RuntimeError: the model fell over"


# --------------------------------------------------------------------------- control


def test_log_false_per_agent_per_call_and_in_a_context_records_nothing(call_log, tmp_path):
    ask(ScriptedAgent("a", log=False), "agent off")
    ask(ScriptedAgent("b"), "call off", log=False)
    with log.context(log=False):
        ask(ScriptedAgent("c"), "context off")
    other = tmp_path / "experiment.db"
    ask(ScriptedAgent("d"), "elsewhere", log=other)
    ask(ScriptedAgent("e"), "recorded")
    assert [r["prompt"] for r in log_rows(call_log)] == ["recorded"]
    assert [r["prompt"] for r in log_rows(other)] == ["elsewhere"]


def test_off_and_on_switch_the_process_and_an_agent_can_insist(call_log):
    log.off()
    try:
        ask(ScriptedAgent("x"), "while off")
        ask(ScriptedAgent("y", log=True), "insisted")
    finally:
        log.on()
    ask(ScriptedAgent("z"), "back on")
    assert [r["prompt"] for r in log_rows(call_log)] == ["insisted", "back on"]


def test_the_environment_sets_the_switch_the_location_and_the_bound(tmp_path):
    assert state_from_environment({"MIDORI_HF_NB_LOG": "off"}).enabled is False
    assert state_from_environment({"MIDORI_HF_NB_LOG": "0"}).enabled is False
    custom = state_from_environment({"MIDORI_HF_NB_LOG": str(tmp_path / "mine.db"), "MIDORI_HF_NB_LOG_MAX_MB": "2"})
    assert custom.enabled and custom.path == tmp_path / "mine.db" and custom.max_bytes == 2 << 20
    default = state_from_environment({})
    assert default.enabled and default.path.name == "logs.db" and "midori-hf-nb" in str(default.path)
    assert state_from_environment({"MIDORI_HF_NB_LOG_MAX_MB": "lots"}).notes  # a bad bound is reported, not used


def test_bad_log_options_are_refused_naming_the_field():
    with pytest.raises(LogOptionError, match=r"ScriptedAgent\(log=...\)=3"):
        ScriptedAgent("x", log=3)
    with pytest.raises(LogOptionError, match=r"HuggingFaceLocalAgent\(log=...\)"):
        HuggingFaceLocalAgent(model="org/name", log=[1])
    with pytest.raises(ValueError, match="log"):
        run(ScriptedAgent("x").invoke(make_payload("q"), log=""))
    with pytest.raises(LogOptionError, match="at least 65536"):
        log.set_max_bytes(10)


# --------------------------------------------------------------------------- privacy


def test_the_redaction_hook_sees_every_row_before_it_is_written(call_log):
    seen = []
    emails = log.text_redactor(lambda text: text.replace("ada@example.com", "[email]"))  # every text column

    def redact(row):
        seen.append(row["prompt"])
        return None if "skip me" in row["prompt"] else emails(row)

    log.set_redactor(redact)
    ask(ScriptedAgent("Write to ada@example.com."), "Mail ada@example.com?")
    ask(ScriptedAgent("ok"), "skip me please")
    rows = log_rows(call_log)
    assert seen == ["Mail ada@example.com?", "skip me please"]
    assert [(r["prompt"], r["response"]) for r in rows] == [("Mail [email]?", "Write to [email].")]
    assert b"ada@example.com" not in call_log.read_bytes() + call_log.with_name("logs.db-wal").read_bytes()


def test_a_failing_redaction_hook_drops_the_row_with_one_warning(call_log):
    def broken(row):
        raise KeyError("oops")

    log.set_redactor(broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        answers = [ask(ScriptedAgent(f"answer {i}"), f"question {i}").response for i in range(3)]
        log.flush()
    assert answers == ["answer 0", "answer 1", "answer 2"]
    assert log_rows(call_log) == []
    found = [w for w in caught if issubclass(w.category, LogWriteWarning)]
    assert len(found) == 1 and "redaction hook raised KeyError" in str(found[0].message)


def test_credentials_in_the_environment_never_reach_the_file(call_log, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_SecretTokenValue123456")
    agent = ScriptedAgent("Your token is hf_SecretTokenValue123456, use Authorization: Bearer abcdefgh12345678.")
    ask(agent, "My token is hf_SecretTokenValue123456", metadata_note={"api_key": "plain-key-0000000"})
    [row] = log_rows(call_log)
    assert "***" in row["prompt"] and "Bearer ***" in row["response"]
    assert json.loads(row["options_json"])["metadata_note"] == {"api_key": "***"}
    data = call_log.read_bytes() + call_log.with_name("logs.db-wal").read_bytes()
    for secret in (b"hf_SecretTokenValue123456", b"abcdefgh12345678", b"plain-key-0000000"):
        assert secret not in data


# --------------------------------------------------------------------------- reading


def test_filters_like_llm_logs(call_log):
    agent = ScriptedAgent(["Paris.", "Berlin.", "Rome."], model="geo-model")
    with log.context(conversation_id="c-geo", conversation_name="capitals"):
        ask(agent, "France?")
        ask(agent, "Germany?")
    ask(agent, "Italy?")
    ask(ScriptedAgent("Four.", model="maths-model"), "2+2?")
    assert list(log.logs(2)["prompt"]) == ["Italy?", "2+2?"]  # the last two, oldest first
    assert list(log.logs(query="berlin")["response"]) == ["Berlin."]
    assert list(log.logs(0, model="maths")["prompt"]) == ["2+2?"]
    assert list(log.logs(0, conversation="capitals")["prompt"]) == ["France?", "Germany?"]
    assert list(log.logs(0, conversation="c-geo")["prompt"]) == ["France?", "Germany?"]
    assert log.logs(0, since="1h").shape[0] == 4 and log.logs(0, until="2000-01-01").empty
    assert log.logs(0, query='"OR" NEAR(').empty  # search words are quoted: no query syntax error
    rows = json.loads(log.rows_json(log.select_rows(1, columns=["prompt", "prompt_json"])))
    assert rows[0]["prompt"] == "2+2?" and rows[0]["prompt_json"]["user"] == "2+2?"
    with pytest.raises(ValueError, match="since='yesterday-ish' is not allowed"):
        log.logs(since="yesterday-ish")


def test_a_conversation_is_rebuilt_as_a_transcript(call_log):
    agent = ScriptedAgent(["Paris.", "Berlin.", "Bonn, then Berlin."])
    memory: list[MemoryEntryData] = []
    with log.context(conversation_id="c-1", conversation_name="trip"):
        for question in ("France?", "Germany?"):
            response = run(agent.invoke(make_payload(question, memory=list(memory))))
            memory += [MemoryEntryData("user", question), MemoryEntryData("assistant", response.response)]
        run(agent.invoke(make_payload("Germany?", memory=memory[:2])))  # a regenerated last answer
    conversation = log.transcript("trip")
    assert conversation.id == "c-1" and len(conversation.response_ids) == 3
    assert [(e.role, e.content) for e in conversation.memory] == [
        ("user", "France?"), ("assistant", "Paris."), ("user", "Germany?"), ("assistant", "Bonn, then Berlin.")]
    assert conversation.memory[-1].metadata["completion_tokens"] > 0
    assert "user: France?" in conversation.text()
    assert list(log.conversations()["name"]) == ["trip"]
    with pytest.raises(log.ConversationNotFound, match="no logged conversation"):
        log.transcript("nothing-like-this")
