"""The chat panel widget, driven through its methods and its buttons' ``click()``.

The panel's own behaviour (send, stream, Stop, Regenerate, Clear, errors, tools events, the
status line, settings, escaping, export) is tested with :class:`~midori_hf_nb.testing.ScriptedAgent`
and small protocol agents written here: no model, so fast and exact. A few end-to-end tests run
the real tiny model (and one the offline default model) so the local agent still works in the
panel. Each test runs its scenario inside an event loop (``run``), as a notebook kernel would, so
the panel starts its generations as tasks on that loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time

import pytest

from midori_hf_nb import AgentResponse, MemoryEntryData, MidoriAiAgentProtocol
from midori_hf_nb.config import HuggingFaceConfig
from midori_hf_nb.stats import ResponseStats, stats_of
from midori_hf_nb.testing import ScriptedAgent
from midori_hf_nb.notebook import ChatPanel
from midori_hf_nb.notebook.chat import render_transcript_html
from midori_hf_nb.notebook.chat.composer import MAX_INPUT_CHARS

from .conftest import loaded_agent, run, scripted

LONG_TEXT = " ".join(f"word{i}" for i in range(700))
STORY = "Once upon a time there was a very long story that went on and on. " * 20


async def wait_for(predicate, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def _send(panel, text=None):
    return await panel.send(text)


async def _regenerate(panel):
    return await panel.regenerate()


def record(widget) -> list[str]:
    """Every value an HTML widget shows from now on."""
    seen: list[str] = []
    widget.observe(lambda change: seen.append(change["new"]), names="value")
    return seen


# --------------------------------------------------------------------------- send, stream, status


def test_send_streams_the_answer_into_the_transcript():
    agent = ScriptedAgent("Hello from the panel.", delay=0.002, piece_chars=3)
    panel = ChatPanel(agent, throttle=0)
    live = record(panel.live_html)

    async def scenario():
        panel.input.value = "Hi there"
        assert panel.input.submit() is True  # Send, as the browser sends it
        assert panel.is_running and panel.input.busy and not panel.stop_button.disabled
        assert panel.regenerate_button.disabled and panel.input.value == ""  # sent: the box is cleared
        return await panel.wait()

    answer = run(scenario())
    assert answer["content"] == "Hello from the panel." and answer["role"] == "assistant"
    assert answer["finish_reason"] == "stop" and not answer["stopped"] and answer["error"] is None
    assert answer["completion_tokens"] == answer["tokens"] == 7  # 21 characters in pieces of 3
    assert [(t["role"], t["content"]) for t in panel.transcript] == [("user", "Hi there"),
                                                                      ("assistant", "Hello from the panel.")]
    assert all(isinstance(e, MemoryEntryData) for e in panel.memory)
    # the pieces streamed into the live view, each a prefix of the answer, with the cursor
    partial = [html for html in live if "▌" in html and "Hello" in html]
    assert len(partial) >= 3 and "Hello from the panel.▌" not in partial[0]
    assert panel.live_html.value == "" and "Hello from the panel." in panel.history_html.value
    assert not panel.is_running and not panel.input.busy and panel.stop_button.disabled
    # the next message carries the conversation as payload memory
    assert [(m.role, m.content) for m in panel.payload("And then?").memory] == [
        ("user", "Hi there"), ("assistant", "Hello from the panel.")]
    assert agent.calls[0].payload.memory is None and agent.calls[0].payload.user_message == "Hi there"


def test_answers_keep_their_statistics_under_the_response_stats_names():
    agent = ScriptedAgent("Twelve chars", piece_chars=4, model="scripted-model")
    panel = ChatPanel(agent)
    run(_send(panel, "q"))
    meta = panel.memory[-1].metadata
    assert {"completion_tokens", "total_seconds", "tokens_per_second", "finish_reason", "model"} <= set(meta)
    assert not {"tokens", "seconds"} & set(meta)  # no renamed keys
    stats = stats_of(panel.memory[-1])
    assert (stats.completion_tokens, stats.finish_reason, stats.model) == (3, "stop", "scripted-model")
    typed = panel.entries[-1]  # the panel's own fields (display counts...) are not statistics
    assert typed.stats == stats.replace(extra={}) and typed.display_events == stats.extra["display_events"]
    assert typed.length == 3 and typed.seconds == stats.total_seconds


def test_status_line_and_title_show_the_model_and_the_memory_readout():
    agent = ScriptedAgent("Done.", model="reported-model")
    panel = ChatPanel(agent)
    assert panel.status.startswith("ready") and "RSS" in panel.status
    assert repr(agent).replace("'", "&#x27;") in panel.title_html.value  # no config: the agent's repr
    run(_send(panel, "q"))
    assert panel.status.startswith("done · 2 tokens ·") and "tokens/s" in panel.status
    assert "finish: stop" in panel.status and "model: reported-model" in panel.status and "RSS" in panel.status
    assert "Chat · reported-model" in panel.title_html.value  # from the response statistics

    class Configured(ScriptedAgent):
        config = HuggingFaceConfig(model="configured-model", do_sample=False, max_new_tokens=7)

    configured = ChatPanel(Configured("x"))
    assert "Chat · configured-model" in configured.title_html.value
    assert (configured.greedy_input.value, configured.max_new_tokens_input.value) == (True, 7)
    assert "configured-model" in repr(configured)
    fixed = ChatPanel(ScriptedAgent("x"), title="My chat")
    run(_send(fixed, "q"))
    assert "Chat · My chat" in fixed.title_html.value  # a given title stays


# --------------------------------------------------------------------------- stop, busy, regenerate, clear


def test_stop_keeps_the_partial_answer_and_the_conversation_goes_on():
    agent = ScriptedAgent([STORY, "Short."], delay=0.005, piece_chars=5)
    panel = ChatPanel(agent)

    async def scenario():
        task = panel.send("Tell me a story.")
        assert isinstance(task, asyncio.Task) and not task.done()  # the caller returns at once
        await wait_for(lambda: len(panel.partial) >= 30)
        assert "▌" in panel.live_html.value
        seen = len(panel.partial)
        panel.stop_button.click()
        assert panel.status.startswith("stopping")
        return seen, await panel.wait()

    seen, stopped = run(scenario())
    assert stopped["stopped"] and stopped["finish_reason"] == "cancelled"
    assert STORY.startswith(stopped["content"]) and seen <= len(stopped["content"]) <= seen + 10
    assert "stopped" in panel.history_html.value and panel.status.startswith("stopped")
    assert not panel.is_running and panel.stop_button.disabled and not panel.input.busy
    nxt = run(_send(panel, "Now briefly."))
    assert nxt["content"] == "Short." and len(panel.memory) == 4
    assert agent.calls[1].payload.memory[1].content == stopped["content"]  # the stopped answer was sent


def test_stop_when_idle_and_refusals_while_busy():
    panel = ChatPanel(ScriptedAgent(STORY, delay=0.005))
    assert panel.stop() is False

    async def scenario():
        panel.send("first")
        with pytest.raises(RuntimeError, match="generation is running"):
            panel.send("second")
        panel.input.value = "typed meanwhile"
        assert panel.input.submit() is False  # refused, shown as a notice; the text goes back into the box
        assert "generation is running" in panel.notice and panel.input.value == "typed meanwhile"
        with pytest.raises(RuntimeError):
            panel.regenerate()
        assert panel.stop() is True
        await panel.wait()

    run(scenario())
    assert [t["role"] for t in panel.transcript] == ["user", "assistant"]
    assert panel.input.value == "typed meanwhile"


def test_cancelling_the_task_from_outside_records_the_answer_then_propagates():
    panel = ChatPanel(ScriptedAgent(STORY, delay=0.005))

    async def scenario():
        task = panel.send("go")
        await wait_for(lambda: len(panel.partial) > 8)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())
    assert panel.transcript[-1]["stopped"] and STORY.startswith(panel.transcript[-1]["content"])
    assert not panel.is_running and not panel.input.busy


def test_regenerate_replaces_the_last_answer():
    agent = ScriptedAgent(["first answer", "second answer"])
    panel = ChatPanel(agent)
    with pytest.raises(ValueError, match="no user message"):
        panel.regenerate()
    panel.regenerate_button.click()
    assert "no user message" in panel.notice

    async def scenario():
        await panel.send("Question?")
        panel.regenerate_button.click()
        return await panel.wait()

    again = run(scenario())
    assert again["content"] == "second answer"
    assert [(t["role"], t["content"]) for t in panel.transcript] == [("user", "Question?"),
                                                                      ("assistant", "second answer")]
    assert "first answer" not in panel.history_html.value and "second answer" in panel.history_html.value
    assert agent.calls[1].payload.user_message == "Question?" and agent.calls[1].payload.memory is None


def test_clear_forgets_everything_also_during_a_generation():
    panel = ChatPanel(ScriptedAgent(["one", STORY], delay=0.005))

    async def scenario():
        await panel.send("a")
        assert len(panel.memory) == 2
        panel.clear_button.click()
        assert panel.memory == [] and "No messages yet" in panel.history_html.value
        panel.send("b")
        await wait_for(lambda: panel.partial != "")
        assert panel.clear() == 1  # the user message; the running answer is stopped and not recorded
        await panel.wait()

    run(scenario())
    assert panel.memory == [] and panel.transcript == [] and panel.status.startswith("cleared")
    assert "No messages yet" in panel.history_html.value and panel.live_html.value == ""


# --------------------------------------------------------------------------- settings: the one settings path


def test_settings_reach_the_agent_through_check_overrides():
    agent = ScriptedAgent("ok")
    panel = ChatPanel(agent, greedy=True, max_new_tokens=40, seed=7)
    run(_send(panel, "q"))
    assert agent.calls[-1].overrides == {"max_new_tokens": 40, "do_sample": False, "seed": 7}
    panel.greedy_input.value = False
    panel.temperature_input.value = 0.3
    run(_send(panel, "q"))
    assert agent.calls[-1].overrides == {"max_new_tokens": 40, "do_sample": True, "temperature": 0.3, "seed": 7}
    # the rules of midori_hf_nb.settings: a temperature above 0 without greedy means sampling
    assert ChatPanel(agent, temperature=0.5).greedy_input.value is False
    assert ChatPanel(agent, temperature=0).greedy_input.value is True
    assert ChatPanel(agent, do_sample=False).greedy_input.value is True
    with pytest.raises(ValueError, match="contradict"):
        ChatPanel(agent, greedy=True, do_sample=True)
    with pytest.raises(ValueError, match=r"temperature=5 is not allowed: expected a number from 0.0 to 2.0"):
        ChatPanel(agent, temperature=5)
    with pytest.raises(ValueError, match=r"seed='x' is not allowed"):
        ChatPanel(agent, seed="x")


def test_invalid_settings_are_reported_and_the_input_is_kept():
    agent = ScriptedAgent("ok")
    panel = ChatPanel(agent)
    panel.greedy_input.value = False
    panel.temperature_input.value = -1.0
    panel.input.value = "my carefully typed question"
    assert panel.input.submit() is False
    assert "temperature" in panel.notice and "0.0 to 2.0" in panel.notice
    assert panel.input.value == "my carefully typed question" and panel.memory == []
    with pytest.raises(ValueError, match="temperature"):
        panel.send("programmatic")
    panel.temperature_input.value = 0.7
    panel.max_new_tokens_input.value = 0
    with pytest.raises(ValueError, match="max_new_tokens"):
        panel.send()
    assert panel.input.value == "my carefully typed question" and panel.memory == [] and agent.calls == []
    panel.max_new_tokens_input.value = 8
    panel.greedy_input.value = True

    answer = run(_send(panel))
    assert answer["content"] == "ok" and panel.notice == "" and panel.input.value == ""


def test_options_of_the_panel_are_checked():
    agent = ScriptedAgent("x")
    for options, message in [({"execute_tools": "yes"}, "execute_tools='yes'"),
                             ({"execute_tools": True}, r"needs tools=\[\.\.\.\]"),
                             ({"max_tool_steps": 0}, "max_tool_steps=0"),
                             ({"throttle": -1}, "throttle=-1"),
                             ({"system_prompt": 5}, "system_prompt"),
                             ({"enter_sends": "no"}, "enter_sends='no'")]:
        with pytest.raises(ValueError, match=message):
            ChatPanel(agent, **options)


# --------------------------------------------------------------------------- nothing lost


def test_an_error_during_generation_keeps_the_partial_text_the_transcript_and_the_input():
    agent = ScriptedAgent(["Fine.", RuntimeError("the server went away"), "Back again."], fail_after=3)
    panel = ChatPanel(agent)

    async def scenario():
        await panel.send("Short question.")
        panel.input.value = "an unsent draft"
        return await panel.send("<b>Another</b> question")

    failed = run(scenario())
    assert failed["error"] == "RuntimeError: the server went away" and failed["finish_reason"] == "error"
    assert failed["content"] == "failfailfail"  # the pieces that arrived before the failure
    assert panel.input.value == "an unsent draft"
    assert [t["role"] for t in panel.transcript] == ["user", "assistant", "user", "assistant"]
    html = panel.history_html.value
    assert "the server went away" in html and "failed" in html and "press Regenerate" in html
    assert "&lt;b&gt;Another&lt;/b&gt;" in html and "<b>Another" not in html
    assert panel.status.startswith("error: RuntimeError: the server went away")
    # the failed exchange stays visible but is not sent to the model again
    assert [m.content for m in panel.payload("next").memory] == ["Short question.", "Fine."]
    frame = panel.to_frame()
    assert frame["error"].iloc[3].startswith("RuntimeError") and frame["finish_reason"].iloc[3] == "error"
    again = run(_regenerate(panel))
    assert again["content"] == "Back again." and again["error"] is None and len(panel.memory) == 4


# --------------------------------------------------------------------------- any protocol agent


class InvokeOnlyAgent(MidoriAiAgentProtocol):
    """A protocol agent with the protocol's methods only: no stream, and ``invoke(payload)`` takes no settings."""

    def __init__(self, answer: str = "From invoke.", delay: float = 0.0) -> None:
        self.answer, self.delay, self.payloads = answer, delay, []

    def __repr__(self) -> str:
        return "InvokeOnlyAgent()"

    async def invoke(self, payload):
        self.payloads.append(payload)
        await asyncio.sleep(self.delay)
        stats = ResponseStats(model="remote-model", completion_tokens=3, total_seconds=0.5, finish_reason="stop")
        return AgentResponse(thinking="", response=self.answer, metadata=stats.as_dict())

    async def invoke_with_tools(self, payload, tools):
        return await self.invoke(payload)

    async def get_context_window(self) -> int:
        return 2048

    async def supports_streaming(self) -> bool:
        return False


def test_an_agent_without_stream_is_invoked_and_the_settings_it_does_not_take_are_named():
    agent = InvokeOnlyAgent()
    untouched = ChatPanel(agent)  # settings the user neither gave nor changed are not sent
    assert untouched.generation_overrides() == {}
    panel = ChatPanel(agent, max_new_tokens=40, temperature=0.5)
    assert "Chat · InvokeOnlyAgent()" in panel.title_html.value
    first = run(_send(panel, "Hello?"))
    assert first["content"] == "From invoke." and first["completion_tokens"] == 3 and first["total_seconds"] == 0.5
    assert "From invoke." in panel.history_html.value and "Chat · remote-model" in panel.title_html.value
    assert "not taken by the agent: max_new_tokens, temperature, do_sample" in panel.status
    run(_send(panel, "Again?"))
    assert [m.content for m in agent.payloads[1].memory] == ["Hello?", "From invoke."]


def test_stop_cancels_an_awaited_invoke():
    panel = ChatPanel(InvokeOnlyAgent(delay=30))

    async def scenario():
        panel.send("slow")
        await asyncio.sleep(0.05)
        began = time.perf_counter()
        assert panel.stop()
        answer = await panel.wait()
        return answer, time.perf_counter() - began

    answer, seconds = run(scenario())
    assert seconds < 2 and answer["stopped"] and answer["finish_reason"] == "cancelled" and answer["content"] == ""
    assert answer["wall_seconds"] is not None and answer["model"] == "InvokeOnlyAgent()"


class PlainTextStreamAgent(InvokeOnlyAgent):
    """Streams plain text pieces through an async generator that has no ``cancel()``."""

    def stream(self, payload, *, events=False, **overrides):
        self.payloads.append((payload, events, overrides))

        async def pieces():
            for index in range(1000):
                await asyncio.sleep(0.002)
                yield f"piece{index} "

        return pieces()


def test_a_stream_without_cancel_is_left_on_stop_keeping_what_arrived():
    agent = PlainTextStreamAgent()
    panel = ChatPanel(agent, temperature=0.2)

    async def scenario():
        panel.send("stream please")
        await wait_for(lambda: "piece5 " in panel.partial)
        panel.stop()
        return await panel.wait()

    answer = run(scenario())
    assert answer["stopped"] and answer["finish_reason"] == "cancelled"
    assert answer["content"].startswith("piece0 piece1 ") and "piece999" not in answer["content"]
    payload, events, overrides = agent.payloads[0]
    assert events is True and overrides["temperature"] == 0.2 and overrides["do_sample"] is True


# --------------------------------------------------------------------------- thinking, tools, escaping


def test_thinking_is_shown_apart_in_a_collapsible_block():
    panel = ChatPanel(ScriptedAgent("<think>Let me think: 2+2.</think>It is 4."))
    answer = run(_send(panel, "What is 2+2?"))
    assert answer["content"] == "It is 4." and answer["thinking"] == "Let me think: 2+2."
    html = panel.history_html.value
    assert "<details" in html and "Let me think: 2+2." in html
    assert html.index("Let me think") < html.index("It is 4.")


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first number.
        b: the second number.
    """
    add.calls += 1
    return a + b


add.calls = 0


def explode() -> str:
    """A tool that always fails."""
    raise ValueError("the tool broke")


CALLS = ('<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'
         '<tool_call>{"name": "explode", "arguments": {}}</tool_call>')


def test_tool_call_events_stream_into_the_panel_and_are_not_run():
    add.calls = 0
    agent = ScriptedAgent("Let me add. " + CALLS, delay=0.002)
    panel = ChatPanel(agent, tools=[add, explode], throttle=0)
    live = record(panel.live_html)
    answer = run(_send(panel, "Add 2 and 3."))
    assert add.calls == 0 and agent.calls[-1].tools == ["add", "explode"]
    assert [(r["name"], r["arguments"], r["executed"]) for r in answer["tool_calls"]] == [
        ("add", {"a": 2, "b": 3}, False), ("explode", {}, False)]
    assert any("midori-tool-calls" in html and "▌" in html for html in live)  # shown while streaming
    html = panel.history_html.value
    assert "midori-tool-calls" in html and "(not executed)" in html and "explode" in html


def test_the_tool_loop_needs_an_agent_that_has_one():
    with pytest.raises(ValueError, match="has no stream_tools"):
        ChatPanel(ScriptedAgent("x"), tools=[add], execute_tools=True)


HOSTILE = "<script>alert('model')</script><img src=x onerror=alert(1)>"


def test_model_user_and_transcript_text_is_escaped_on_every_html_surface():
    reply = f"<think>{HOSTILE}</think>{HOSTILE}" + '<tool_call>{"name": "<img src=x onerror=alert(2)>", ' \
                                                   '"arguments": {"<b>": "<script>"}}</tool_call>'
    agent = ScriptedAgent([reply, RuntimeError(HOSTILE)], model=HOSTILE, delay=0.001)
    panel = ChatPanel(agent, tools=[add], title=None, throttle=0)
    widgets = [panel.history_html, panel.live_html, panel.title_html, panel.status_html, panel.notice_html]
    seen = [html for w in widgets for html in [w.value]]
    for widget in widgets:
        widget.observe(lambda change: seen.append(change["new"]), names="value")
    answer = run(_send(panel, "<script>alert('user')</script>"))
    assert answer["content"].startswith(HOSTILE) and answer["thinking"] == HOSTILE  # the markup really arrived
    failed = run(_send(panel, "again"))
    assert failed["error"] == f"RuntimeError: {HOSTILE}"
    panel.input.value = "<b>x</b>"
    panel.max_new_tokens_input.value = -5
    panel.input.submit()  # a notice
    assert len(seen) > 10
    for html in seen:
        assert "<script" not in html and "<img" not in html and "<b>" not in html, html
    assert "&lt;script&gt;alert(&#x27;user&#x27;)&lt;/script&gt;" in panel.history_html.value
    assert "&lt;img src=x onerror=alert(1)&gt;" in panel.history_html.value
    markdown = panel.to_markdown(title="<script>title</script>")
    assert "<script" not in markdown and "<img" not in markdown and "&lt;script&gt;" in markdown


# --------------------------------------------------------------------------- Enter sends


def browser_sends(widget, content) -> None:
    """Deliver a custom message to ``widget`` as the kernel receives one from the browser."""
    widget._handle_msg({"content": {"data": {"method": "custom", "content": content}, "comm_id": widget.model_id},
                        "buffers": []})


def test_send_uses_the_text_that_came_with_the_click_not_the_synced_draft():
    panel = ChatPanel(ScriptedAgent(["Paris.", "Later."], delay=0.02, piece_chars=1))
    replies = []
    panel.input.send = replies.append  # what goes back to the browser

    async def scenario():
        panel.input.value = "W"  # the draft the browser had synced when the click arrived
        browser_sends(panel.input, {"type": "send", "id": "a1", "text": "What is the capital of France?"})
        assert panel.is_running and replies == [{"type": "ack", "id": "a1", "accepted": True}]
        assert panel.input.value == "W"  # the box belongs to the browser: a draft typed since stays
        browser_sends(panel.input, {"type": "send", "id": "a2", "text": "typed while it answers"})
        assert replies[-1] == {"type": "ack", "id": "a2", "accepted": False}  # the browser puts it back
        assert "generation is running" in panel.notice
        return await panel.wait()

    answer = run(scenario())
    assert answer["content"] == "Paris."
    assert [t["content"] for t in panel.transcript] == ["What is the capital of France?", "Paris."]
    browser_sends(panel.input, {"type": "send", "id": "a3", "text": "   "})
    assert replies[-1]["accepted"] is False and panel.notice == "Type a message first."
    for hostile in ({"type": "send", "id": 5, "text": "x"}, {"type": "send", "id": "x" * 65, "text": "x"},
                    {"type": "send", "id": "b1", "text": ["x"]}, {"type": "other"}, "send"):
        browser_sends(panel.input, hostile)
    assert replies[-1] == {"type": "ack", "id": "b1", "accepted": False} and len(replies) == 4
    browser_sends(panel.input, {"type": "send", "id": "b2", "text": "x" * (MAX_INPUT_CHARS + 1)})
    assert replies[-1]["accepted"] is False and len(panel.transcript) == 2


def test_submit_clears_the_box_and_puts_refused_text_back():
    panel = ChatPanel(ScriptedAgent("Got it.", delay=0.001))
    panel.enter_sends_input.value = False
    assert panel.input.enter_sends is False  # the setting reaches the browser widget
    panel.enter_sends_input.value = True

    async def scenario():
        panel.input.value = "first\nline"
        assert panel.input.submit() is True and panel.input.value == ""
        assert panel.input.submit("second") is False  # a generation is running: the text goes back
        assert panel.input.value == "second"
        return await panel.wait()

    answer = run(scenario())
    assert answer["content"] == "Got it."
    assert panel.transcript[0]["content"] == "first\nline"


# --------------------------------------------------------------------------- export / import


def test_export_import_round_trip_and_continue():
    agent = ScriptedAgent(["Paris.", "Berlin.", "Rome."])
    panel = ChatPanel(agent, greedy=False)
    panel.system_prompt_input.value = "You answer with one word."
    panel.temperature_input.value = 0.3

    async def scenario():
        await panel.send("Capital of France?")
        await panel.send("Capital of Germany?")

    run(scenario())
    text = panel.to_json()
    document = json.loads(text)
    assert document["format"] == "midori-hf-nb/chat-panel" and document["version"] == 2
    assert len(document["memory"]) == 4 and document["memory"][1]["metadata"]["completion_tokens"] == 2

    restored = ChatPanel.from_json(agent, text)
    assert restored.transcript == panel.transcript
    assert restored.settings() == panel.settings() and restored.session_id == panel.session_id
    assert "Berlin." in restored.history_html.value
    assert [m.content for m in restored.payload("Capital of Italy?").memory] == [
        "Capital of France?", "Paris.", "Capital of Germany?", "Berlin."]
    answer = run(_send(restored, "Capital of Italy?"))
    assert answer["content"] == "Rome." and len(restored.memory) == 6
    assert agent.calls[-1].payload.system_context == "You answer with one word."
    assert agent.calls[-1].overrides["temperature"] == 0.3
    assert ChatPanel.from_json(agent, text, greedy=True).greedy_input.value is True  # options win

    frame = panel.to_frame()
    assert list(frame["role"]) == ["user", "assistant", "user", "assistant"]
    assert list(frame["content"])[1::2] == ["Paris.", "Berlin."]
    assert list(frame["finish_reason"])[1::2] == ["stop", "stop"]
    assert list(frame["tokens"])[1::2] == [2, 2]
    assert frame["seconds"].iloc[1] == stats_of(panel.memory[1]).total_seconds
    assert {"turn", "tokens", "seconds", "timestamp", "thinking", "stopped", "error"} <= set(frame.columns)

    markdown = panel.to_markdown()
    assert markdown.index("**You**") < markdown.index("\nParis.") < markdown.index("\nBerlin.")  # answers keep their Markdown


def test_send_without_a_running_loop_blocks_and_returns_the_answer():
    panel = ChatPanel(ScriptedAgent("Plain script."))
    answer = panel.send("Hello")
    assert answer["content"] == "Plain script." and not panel.is_running
    with pytest.raises(ValueError, match="empty"):
        panel.send("   ")
    with pytest.raises(ValueError, match="expects a string"):
        panel.send(5)


# --------------------------------------------------------------------------- the real agent, end to end


@pytest.fixture(scope="module")
def tiny_agent(tiny_model):
    yield from loaded_agent(tiny_model, max_new_tokens=32)


@pytest.fixture(scope="module")
def tiny_tools_agent(tiny_tools_model):
    yield from loaded_agent(tiny_tools_model, max_new_tokens=64)


def test_real_agent_streams_into_the_panel(tiny_agent):
    panel = ChatPanel(tiny_agent, logits_processor=scripted(tiny_agent, "Hello from the panel."))

    async def scenario():
        panel.input.value = "Hi there"
        panel.input.submit()
        assert panel.is_running
        return await panel.wait()

    answer = run(scenario())
    assert answer["content"] == "Hello from the panel." and answer["finish_reason"] == "stop"
    assert panel.transcript[0]["tokens"] > 0 and answer["completion_tokens"] > 0
    assert answer["model"] == str(tiny_agent.config.model)
    assert panel.status.startswith("done") and "tokens/s" in panel.status and "RSS" in panel.status
    assert "model weights" in panel.status and f"model: {tiny_agent.config.model}" in panel.status
    assert "decode: engine" in panel.status  # forced output runs in the engine's decode loop


def test_real_agent_generates_in_a_thread_and_stop_keeps_the_partial_answer(tiny_agent):
    from midori_hf_nb.testing import ScriptedOutput

    class HeldAtStep(ScriptedOutput):
        """The forced output; at its third decode step the generation (in its own thread) waits until
        a coroutine on the event loop has seen it there (10 s at most)."""

        steps = 0
        seen_by_the_loop: bool | None = None

        def __call__(self, input_ids, scores):
            self.steps += 1
            if self.steps == 3:
                self.seen_by_the_loop = seen.wait(10)
            return super().__call__(input_ids, scores)

    seen = threading.Event()
    forced = HeldAtStep(tiny_agent.loaded_model.tokenizer, [LONG_TEXT, "Short."])
    panel = ChatPanel(tiny_agent, max_new_tokens=1500, logits_processor=[forced])

    async def scenario():
        async def ticker():
            while True:
                if forced.steps == 3:
                    seen.set()
                await asyncio.sleep(0.001)

        ticking = asyncio.ensure_future(ticker())
        panel.send("Say a lot.")
        await wait_for(lambda: forced.seen_by_the_loop is not None)
        # the loop kept serving another coroutine while the model generated: it saw the generation held
        # at its third step (a generation that blocked the loop would wait in vain)
        assert forced.seen_by_the_loop is True, "the event loop did not run while the model generated"
        await wait_for(lambda: len(panel.partial.split()) >= 5)
        tokens_seen = len(tiny_agent.loaded_model.tokenizer.encode(panel.partial, add_special_tokens=False))
        panel.stop_button.click()
        stopped = await panel.wait()
        ticking.cancel()
        return tokens_seen, stopped

    began = time.perf_counter()
    tokens_seen, stopped = run(scenario())
    wall = time.perf_counter() - began
    assert stopped["stopped"] and stopped["finish_reason"] == "cancelled"
    assert 5 <= len(stopped["content"].split()) and LONG_TEXT.startswith(stopped["content"])
    assert tokens_seen <= stopped["completion_tokens"] <= tokens_seen + 8  # within a few tokens of Stop
    # throttled: at most one refresh per 0.1 s (plus the forced one on Stop), however many pieces arrive
    assert 1 <= panel.entries[-1].display_updates <= wall / 0.1 + 2
    nxt = run(_send(panel, "Now briefly."))
    assert nxt["content"] == "Short." and panel.payload("x").memory[1].content == stopped["content"]


def test_real_agent_error_is_shown_and_nothing_is_lost(tiny_model):
    agents = loaded_agent(tiny_model, max_new_tokens=8, context_window=64)
    agent = next(agents)
    try:
        panel = ChatPanel(agent, logits_processor=scripted(agent, "Fine."))

        async def scenario():
            await panel.send("Short question.")
            panel.input.value = "an unsent draft"
            return await panel.send("too long " + "word " * 200)

        failed = run(scenario())
        assert failed["error"].startswith("ContextWindowError") and failed["finish_reason"] == "error"
        assert panel.input.value == "an unsent draft" and panel.transcript[1]["content"] == "Fine."
        assert panel.status.startswith("error: ContextWindowError")
    finally:
        agents.close()


def test_real_tool_loop_runs_with_opt_in_and_reports_a_raising_tool(tiny_tools_agent):
    add.calls = 0
    panel = ChatPanel(tiny_tools_agent, tools=[add, explode], execute_tools=True,
                      logits_processor=scripted(tiny_tools_agent, CALLS, "The sum is 5."))
    answer = run(_send(panel, "Add 2 and 3, then explode."))
    assert add.calls == 1
    assert answer["content"] == "The sum is 5." and answer["error"] is None and answer["steps"] == 2
    rows = {r["name"]: r for r in answer["tool_calls"]}
    assert rows["add"]["result"] == 5 and rows["add"]["executed"]
    assert "ValueError: the tool broke" in rows["explode"]["error"]
    html = panel.history_html.value
    assert "midori-tool-calls" in html and "the tool broke" in html and "The sum is 5." in html
    again = ChatPanel.from_json(tiny_tools_agent, panel.to_json())  # the tool steps survive export and import
    assert again.transcript[1]["tool_calls"] == json.loads(json.dumps(answer["tool_calls"], default=str))


def test_real_tool_loop_streams_its_steps_and_stop_keeps_them(tiny_tools_agent):
    add.calls = 0
    long_answer = "The sum is 5. " + "More words follow here. " * 60
    panel = ChatPanel(tiny_tools_agent, tools=[add, explode], execute_tools=True, throttle=0,
                      logits_processor=scripted(tiny_tools_agent, CALLS, long_answer))

    async def scenario():
        task = panel.send("Add 2 and 3, then explode.")
        await wait_for(lambda: "the tool broke" in panel.live_html.value)  # results show while it runs
        await wait_for(lambda: "More words" in panel.live_html.value)
        assert panel.stop()
        return await task

    answer = run(scenario())
    assert add.calls == 1 and answer["stopped"] and answer["finish_reason"] == "cancelled"
    rows = {r["name"]: r for r in answer["tool_calls"]}
    assert rows["add"]["executed"] and rows["add"]["result"] == 5
    assert answer["content"].startswith("The sum is 5.") and len(answer["content"]) < len(long_answer)


@pytest.mark.slow
def test_default_model_answers_in_the_panel(default_agent):
    panel = ChatPanel(default_agent, greedy=True, max_new_tokens=24)
    answer = run(_send(panel, "What is the capital of France?"))
    assert "Paris" in answer["content"] and "Paris" in panel.history_html.value
    assert answer["tokens"] > 0 and answer["tokens_per_second"] > 0
    assert "tokens/s" in panel.status


# --------------------------------------------------------------------------- the panel, finished


def test_the_answer_carries_the_assistant_label_while_it_streams():
    panel = ChatPanel(ScriptedAgent("Streaming with a label.", delay=0.01, piece_chars=2), throttle=0)
    live = record(panel.live_html)
    run(_send(panel, "Hi"))
    streaming = [html for html in live if "midori-stream" in html and "▌" in html]
    assert streaming, live
    for html in streaming:
        assert html.startswith('<div class="midori-chat-live"') and ">Assistant</div>" in html
        assert html.index(">Assistant</div>") < html.index('class="midori-answer"')
    assert panel.live_html.value == ""  # the finished answer moved into the transcript


def test_clear_can_be_undone_until_the_next_message():
    panel = ChatPanel(ScriptedAgent(["One.", "Two.", "Three."]))
    run(_send(panel, "first"))
    run(_send(panel, "second"))
    before = panel.transcript
    assert panel.undo_clear_button.layout.display == "none"
    panel.clear_button.click()
    assert panel.memory == [] and "midori-chat-empty" in panel.history_html.value
    assert panel.undo_clear_button.layout.display is None and "Undo clear" in panel.status
    panel.undo_clear_button.click()
    assert panel.transcript == before and panel.undo_clear_button.layout.display == "none"
    assert "Two." in panel.history_html.value and panel.status.startswith("4 messages brought back")
    panel.clear()
    run(_send(panel, "third"))  # a new conversation: the cleared one is gone for good
    assert panel.undo_clear_button.layout.display == "none"
    with pytest.raises(ValueError, match="no cleared conversation"):
        panel.undo_clear()
    panel.undo_clear_button.click()  # a button shows the refusal as a notice
    assert "no cleared conversation" in panel.notice
    assert [t["content"] for t in panel.transcript] == ["third", "Three."]


def test_export_writes_json_and_markdown_next_to_the_notebook_and_says_where(tmp_path, monkeypatch):
    panel = ChatPanel(ScriptedAgent("The answer is `42`."))
    run(_send(panel, "What is *the* answer?"))
    monkeypatch.chdir(tmp_path)
    panel.export_button.click()
    written = sorted(tmp_path.iterdir())
    assert [p.suffix for p in written] == [".json", ".md"] and written[0].stem == written[1].stem
    assert written[0].stem.startswith("chat-")
    assert str(written[0]) in panel.notice and str(written[1]) in panel.notice
    assert 'class="midori-chat-info"' in panel.notice_html.value  # a note, not an error
    again = ChatPanel.from_json(ScriptedAgent("x"), written[0].read_text())
    assert again.transcript == panel.transcript
    assert written[1].read_text() == panel.to_markdown()
    first = panel.export(tmp_path, stem="mine")
    second = panel.export(tmp_path, stem="mine")  # never overwrites
    assert (first.json_path.name, second.json_path.name, second.markdown_path.name) == \
        ("mine.json", "mine-2.json", "mine-2.md") and second.messages == 2
    for stem in ("../escape", "a/b", "", ".hidden", "x" * 101):
        with pytest.raises(ValueError, match="stem="):
            panel.export(tmp_path, stem=stem)
    with pytest.raises(ValueError, match="expected an existing folder"):
        panel.export(tmp_path / "missing")
    monkeypatch.chdir(tmp_path / "..")
    (tmp_path / "locked").mkdir(mode=0o500)
    monkeypatch.chdir(tmp_path / "locked")
    if os.access(tmp_path / "locked", os.W_OK):  # root may write anywhere: nothing to refuse
        return
    panel.export_button.click()
    assert panel.notice.startswith("Export failed:")


def test_the_transcript_shows_when_a_message_was_sent_and_when_its_answer_ended():
    panel = ChatPanel(ScriptedAgent("A rather slow answer.", delay=0.05, piece_chars=1))  # about 1 s
    before = time.time()
    answer = run(_send(panel, "Hello"))
    user, assistant = panel.memory
    assert before <= user.timestamp and assistant.timestamp - user.timestamp >= 0.8
    assert answer["timestamp"] == assistant.timestamp
    html = panel.history_html.value
    for entry, what in ((user, "sent"), (assistant, "answer ended")):
        shown = time.strftime("%H:%M:%S", time.localtime(entry.timestamp))
        assert f">{shown}</span>" in html and f'title="{what} ' in html


def test_a_long_transcript_is_paged_so_the_browser_gets_a_bounded_html(tmp_path):
    memory = [MemoryEntryData(role="user" if i % 2 == 0 else "assistant", content=f"message {i} " + "x" * 1000)
              for i in range(20_000)]
    panel = ChatPanel(ScriptedAgent("x"), memory=memory)
    sent = len(panel.history_html.get_state()["value"])  # what the browser receives for the transcript
    whole = len(render_transcript_html(memory))
    assert whole > 20_000 * 1000  # the whole transcript as one HTML string: over 20 MB
    assert sent < 200_000 and whole / sent > 100
    assert "message 19999 " in panel.history_html.value and "message 19899 " not in panel.history_html.value
    assert "19900 earlier messages not shown" in panel.history_html.value
    assert panel.earlier_button.layout.display is None and "19900 more" in panel.earlier_button.description
    panel.earlier_button.click()
    assert "message 19899 " in panel.history_html.value and "19800 earlier" in panel.history_html.value
    assert panel.show_earlier() == 300 and len(panel.history_html.value) < 3 * 200_000
    # the JSON document holds it all (more than the 10,000 messages it used to refuse)
    again = ChatPanel.from_json(ScriptedAgent("x"), panel.to_json(indent=None))
    assert len(again.memory) == 20_000 and len(again.history_html.value) < 200_000
