"""The scripted test agent: the notebook layer's tests rely on what it promises."""

from __future__ import annotations

import asyncio

import pytest

from midori_hf_nb import make_payload
from midori_hf_nb.stats import stats_of
from midori_hf_nb.testing import ScriptedAgent

from .conftest import run


async def _events(agent, **kw):
    return [e async for e in agent.stream(make_payload("q"), events=True, **kw)]


def test_replies_come_in_order_in_pieces_with_thinking_apart():
    agent = ScriptedAgent(["<think>Plan first.</think>Hello there.", "Second."], piece_chars=3)
    events = run(_events(agent))
    kinds = {e.kind for e in events}
    assert kinds == {"thinking", "text", "done"}
    assert "".join(e.text for e in events if e.kind == "text") == "Hello there."
    assert "".join(e.text for e in events if e.kind == "thinking").strip() == "Plan first."
    done = events[-1].data
    assert (done.thinking, done.response) == ("Plan first.", "Hello there.")
    stats = stats_of(done)
    assert stats.backend == "scripted" and stats.finish_reason == "stop" and stats.completion_tokens > 3
    assert run(agent.invoke(make_payload("again"))).response == "Second."
    assert run(agent.invoke(make_payload("and again"))).response == "Second."  # the last reply repeats
    assert [c.payload.user_message for c in agent.calls] == ["q", "again", "and again"]


def test_max_new_tokens_and_cancel_end_the_reply():
    agent = ScriptedAgent("abcdefghijklmnop", piece_chars=2)
    short = run(agent.invoke(make_payload("q"), max_new_tokens=3))
    assert short.response == "abcdef" and stats_of(short).finish_reason == "length"
    assert agent.calls[-1].overrides == {"max_new_tokens": 3}

    async def stop_early():
        stream = agent.stream(make_payload("q"))
        got = []
        async for piece in stream:
            got.append(piece)
            if len(got) == 2:
                stream.cancel()
        return got, stream.response

    got, response = run(stop_early())
    assert got == ["ab", "cd"] and response.response == "abcd"
    assert stats_of(response).finish_reason == "cancelled"


def test_an_exception_reply_is_raised_after_its_pieces():
    agent = ScriptedAgent(RuntimeError("server went away"), fail_after=2)
    with pytest.raises(RuntimeError, match="server went away"):
        run(_events(agent))


def test_tool_call_text_becomes_tool_call_events():
    agent = ScriptedAgent('Let me look. <tool_call>{"name": "search", "arguments": {"q": "x"}}</tool_call>')

    async def scenario():
        return [e async for e in agent.stream_with_tools(make_payload("q"), [{"name": "search",
                                                                             "description": "d"}])]

    events = run(scenario())
    calls = [e.data for e in events if e.kind == "tool_call"]
    assert [(c["name"], c["arguments"]) for c in calls] == [("search", {"q": "x"})]
    assert events[-1].data.tool_calls[0]["name"] == "search"
    assert agent.calls[-1].tools == ["search"]


def test_delay_paces_the_pieces_and_the_task_can_be_cancelled():
    agent = ScriptedAgent("x" * 400, piece_chars=1, delay=0.01)

    async def scenario():
        stream = agent.stream(make_payload("q"))

        async def consume():
            async for _ in stream:
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return stream.response

    response = run(scenario())
    assert stats_of(response).finish_reason == "cancelled" and 0 < len(response.response) < 400
