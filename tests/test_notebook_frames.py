"""DataFrames of tool calls, thinking blocks and conversation turns: documented columns and dtypes.

The tool loop and the token counts run on the tiny tools model (end to end); conversations run on the
scripted agent, which any protocol agent stands for here.
"""

from __future__ import annotations

import pandas as pd
import pytest

from midori_hf_nb import AgentResponse, MemoryEntryData, make_payload
from midori_hf_nb.notebook import (
    THINKING_COLUMNS,
    TOOL_CALL_COLUMNS,
    TURN_COLUMNS,
    Conversation,
    conversation_frame,
    thinking_frame,
    tool_calls_frame,
)
from midori_hf_nb.notebook import RecordingSink
from midori_hf_nb.stats import stats_of
from midori_hf_nb.testing import ScriptedAgent, ScriptedOutput

from .conftest import loaded_agent, run


def assert_schema(frame: pd.DataFrame, columns: dict[str, str]) -> None:
    assert list(frame.columns) == list(columns)
    assert {name: str(dtype) for name, dtype in frame.dtypes.items()} == columns


@pytest.fixture(scope="module")
def tools_agent(tiny_tools_model):
    yield from loaded_agent(tiny_tools_model, max_new_tokens=80)


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def broken(x: str) -> str:
    """Always fails."""
    raise RuntimeError("tool exploded")


def test_tool_calls_frame_from_a_tool_loop(tools_agent):
    scripts = ['<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
               '<tool_call>{"name": "broken", "arguments": {"x": "y"}}</tool_call>',
               "The sum is 3."]
    response = run(tools_agent.run_tools(make_payload("1+2?"), [add, broken],
                                         logits_processor=[ScriptedOutput(tools_agent.loaded_model.tokenizer, scripts)]))
    frame = tool_calls_frame(response)
    assert_schema(frame, TOOL_CALL_COLUMNS)
    assert frame["name"].tolist() == ["add", "broken"]
    assert frame["arguments"].tolist() == [{"a": 1, "b": 2}, {"x": "y"}]
    assert frame.loc[0, "result"] == 3 and pd.isna(frame.loc[0, "error"])
    assert frame.loc[1, "result"] is None and "tool exploded" in frame.loc[1, "error"]
    assert frame["executed"].tolist() == [True, True]
    assert frame["step"].tolist() == [1, 1] and frame["response"].tolist() == [0, 0]
    assert (frame["seconds"] >= 0).all()


def test_tool_calls_frame_parsed_but_not_executed(tools_agent):
    call = '<tool_call>{"name": "add", "arguments": {"a": 5, "b": 6}}</tool_call>'
    first = run(tools_agent.invoke_with_tools(make_payload("5+6?"), [add],
                                              logits_processor=[ScriptedOutput(tools_agent.loaded_model.tokenizer, call)]))
    plain = AgentResponse(thinking="", response="no tools here", metadata={})
    frame = tool_calls_frame([plain, first])
    assert_schema(frame, TOOL_CALL_COLUMNS)
    assert len(frame) == 1
    row = frame.iloc[0]
    assert row["response"] == 1 and row["name"] == "add" and row["arguments"] == {"a": 5, "b": 6}
    assert not row["executed"] and pd.isna(row["seconds"]) and row["result"] is None


def test_thinking_frame_one_row_per_block(tools_agent):
    text = "<think>first thought</think><think>second, longer thought</think>Answer."
    response = run(tools_agent.invoke(make_payload("q"),
                                      logits_processor=[ScriptedOutput(tools_agent.loaded_model.tokenizer, text)]))
    frame = thinking_frame([response, AgentResponse(thinking="", response="x", metadata={})])
    assert_schema(frame, THINKING_COLUMNS)
    assert frame["text"].tolist() == ["first thought", "second, longer thought"]
    assert frame["block"].tolist() == [0, 1] and frame["response"].tolist() == [0, 0]
    assert frame["chars"].tolist() == [len("first thought"), len("second, longer thought")]


def test_thinking_frame_without_metadata_uses_the_thinking_field():
    frame = thinking_frame(AgentResponse(thinking="only field", response="x"))
    assert frame["text"].tolist() == ["only field"]


def test_conversation_frame_from_exchanges_with_any_agent():
    conversation = Conversation()
    agent = ScriptedAgent(["Hi there.", "<think>recall</think>Hi again."])
    first = run(conversation.ask(agent, "Say hi.", max_new_tokens=40))
    second = run(conversation.stream(agent, "Again?", sink=RecordingSink()))
    # the second request carried the first exchange as memory
    memory = agent.calls[1].payload.memory
    assert [(m.role, m.content) for m in memory] == [("user", "Say hi."), ("assistant", "Hi there.")]
    assert agent.calls[0].overrides == {"max_new_tokens": 40}
    frame = conversation.frame()
    assert_schema(frame, TURN_COLUMNS)
    assert frame["role"].tolist() == ["user", "assistant", "user", "assistant"]
    assert frame["content"].tolist() == ["Say hi.", "Hi there.", "Again?", "Hi again."]
    assert frame.loc[1, "tokens"] == stats_of(first).completion_tokens == 3
    assert frame.loc[3, "tokens"] == stats_of(second).completion_tokens
    assert frame.loc[1, "seconds"] == pytest.approx(stats_of(first).total_seconds)
    assert frame.loc[1, "finish_reason"] == "stop" and pd.isna(frame.loc[0, "seconds"])
    assert pd.isna(frame.loc[0, "tokens"])  # no tokenizer in this process for a scripted agent
    assert frame["timestamp"].notna().all() and frame["turn"].tolist() == [0, 1, 2, 3]


def test_conversation_stamps_the_message_when_sent_and_the_answer_when_it_ended():
    conversation = Conversation()
    agent = ScriptedAgent("Slowly now.", delay=0.05, piece_chars=1)  # 11 pieces: about 0.55 s
    run(conversation.ask(agent, "q1"))
    run(conversation.stream(agent, "q2", sink=RecordingSink()))
    stamps = [t.timestamp() for t in conversation.frame()["timestamp"]]
    assert stamps == sorted(stamps)
    for sent, ended in (stamps[0:2], stamps[2:4]):
        assert ended - sent >= 0.4  # the message is stamped when sent, not when its answer arrived
    with pytest.raises(ValueError, match=r"add\(timestamp=-1\) is not allowed"):
        conversation.add("user", "x", timestamp=-1)
    assert conversation.add("user", "x", timestamp=5.0).timestamp == 5.0


def test_an_answer_turn_keeps_the_statistics_under_their_own_names():
    conversation = Conversation()
    response = run(conversation.ask(ScriptedAgent("abcdefgh"), "q"))
    stats = stats_of(response)
    assert conversation.entries[1].metadata == {
        "completion_tokens": stats.completion_tokens, "total_seconds": stats.total_seconds,
        "tokens_per_second": stats.tokens_per_second, "finish_reason": "stop"}
    assert conversation.entries[0].metadata is None  # no tokenizer: the user turn has no count


def test_conversation_records_an_answer_whose_metadata_is_not_statistics():
    conversation = Conversation()
    conversation.add_exchange("q", AgentResponse(thinking="", response="a", metadata="not a dict"))
    conversation.add_exchange("q", AgentResponse(thinking="", response="b", metadata={"completion_tokens": "many"}))
    frame = conversation.frame()
    assert frame["content"].tolist() == ["q", "a", "q", "b"] and frame["tokens"].isna().all()
    with pytest.raises(ValueError, match=r"add\(stats=dict\) is not allowed: expected ResponseStats"):
        conversation.add("assistant", "x", stats={"completion_tokens": 1})


def test_frames_of_another_agents_malformed_values_do_not_fail():
    response = AgentResponse(thinking="t", response="r", tool_calls=["not a dict"], metadata={
        "tool_steps": [{"step": "one", "name": 7, "arguments": None, "id": 3, "result": {"ok": 1}, "error": None,
                        "seconds": "slow"}],
        "thinking_blocks": "not a list"})
    frame = tool_calls_frame(response)
    assert_schema(frame, TOOL_CALL_COLUMNS)
    assert pd.isna(frame.loc[0, "step"]) and frame.loc[0, "name"] == "7" and frame.loc[0, "id"] == "3"
    assert pd.isna(frame.loc[0, "seconds"]) and frame.loc[0, "result"] == {"ok": 1}
    assert frame.loc[1, "name"] == "not a dict" and not frame.loc[1, "executed"]
    assert thinking_frame(response)["text"].tolist() == ["t"]  # a malformed thinking_blocks falls back
    turns = conversation_frame([{"role": "user", "content": "x", "timestamp": 1e300, "metadata": {"tokens": 2.5}}])
    assert pd.isna(turns.loc[0, "timestamp"]) and pd.isna(turns.loc[0, "tokens"])


def test_conversation_frame_from_memory_entries_and_dicts_with_a_tokenizer(tools_agent):
    tokenizer = tools_agent.loaded_model.tokenizer
    turns = [MemoryEntryData(role="user", content="hello world"),
             {"role": "assistant", "content": "hi", "metadata": {"tokens": 7, "seconds": 0.5}}]
    frame = conversation_frame(turns, tokenizer=tokenizer)
    assert_schema(frame, TURN_COLUMNS)
    assert frame["tokens"].tolist() == [len(tokenizer.encode("hello world", add_special_tokens=False)), 7]
    assert pd.isna(frame.loc[0, "timestamp"])


@pytest.mark.parametrize("build, columns", [
    (lambda: tool_calls_frame([]), TOOL_CALL_COLUMNS),
    (lambda: tool_calls_frame(None), TOOL_CALL_COLUMNS),
    (lambda: tool_calls_frame(AgentResponse(thinking="", response="no calls")), TOOL_CALL_COLUMNS),
    (lambda: thinking_frame([]), THINKING_COLUMNS),
    (lambda: thinking_frame(AgentResponse(thinking="", response="no thinking")), THINKING_COLUMNS),
    (lambda: conversation_frame([]), TURN_COLUMNS),
    (lambda: Conversation().frame(), TURN_COLUMNS),
])
def test_empty_input_gives_empty_frame_with_same_columns(build, columns):
    frame = build()
    assert frame.empty
    assert_schema(frame, columns)


def test_bad_turn_is_a_clear_error():
    with pytest.raises(ValueError, match="turn 0 has no 'role'"):
        conversation_frame([{"content": "x"}])
    with pytest.raises(ValueError, match="role='robot'"):
        Conversation().add("robot", "x")
