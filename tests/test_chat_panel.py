"""The chat panel widget, driven through its methods and its buttons' ``click()``, on real generation.

Mechanics run on the tiny random model with outputs forced by ``ScriptedOutput`` (a real
``generate`` whose tokens are chosen by the processor); one test asks the offline default model.
Each test runs its scenario inside an event loop (``run``), as a notebook kernel would, so the
panel starts its generations as tasks on that loop.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from transformers import LogitsProcessor

from midori_hf_nb import MemoryEntryData
from midori_hf_nb.notebook import ChatPanel

from .conftest import loaded_agent, run, scripted

LONG_TEXT = " ".join(f"word{i}" for i in range(700))


@pytest.fixture(scope="module")
def tiny_agent(tiny_model):
    yield from loaded_agent(tiny_model, max_new_tokens=32)


@pytest.fixture(scope="module")
def tiny_tools_agent(tiny_tools_model):
    yield from loaded_agent(tiny_tools_model, max_new_tokens=64)


async def wait_for(predicate, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


class RaiseAfter(LogitsProcessor):
    """Raises ``MemoryError`` at the ``after``-th generated token (a failure in the middle of a generation)."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.calls = 0

    def __call__(self, input_ids, scores):
        self.calls += 1
        if self.calls > self.after:
            raise MemoryError("simulated: the device ran out of memory")
        return scores


# --------------------------------------------------------------------------- send, transcript, status


def test_send_button_streams_answer_into_transcript(tiny_agent):
    panel = ChatPanel(tiny_agent, logits_processor=scripted(tiny_agent, "Hello from the panel."))

    async def scenario():
        panel.input.value = "Hi there"
        panel.send_button.click()
        assert panel.is_running and panel.send_button.disabled and not panel.stop_button.disabled
        assert panel.input.value == ""  # sent: the box is cleared
        return await panel.wait()

    answer = run(scenario())
    assert answer["content"] == "Hello from the panel."
    assert answer["finish_reason"] == "stop" and not answer["stopped"] and answer["error"] is None
    assert [(t["role"], t["content"]) for t in panel.transcript] == [("user", "Hi there"),
                                                                      ("assistant", "Hello from the panel.")]
    assert all(isinstance(e, MemoryEntryData) for e in panel.memory)
    assert panel.transcript[0]["tokens"] > 0 and answer["tokens"] > 0
    assert "Hello from the panel." in panel.history_html.value and "Hi there" in panel.history_html.value
    assert panel.live_html.value == ""
    assert panel.status.startswith("done") and "tokens/s" in panel.status and "RSS" in panel.status
    assert "model weights" in panel.status
    assert "decode: engine" in panel.status
    assert not panel.is_running and not panel.send_button.disabled and panel.stop_button.disabled
    # the next message carries the conversation as payload memory
    follow_up = panel.payload("And then?")
    assert [(m.role, m.content) for m in follow_up.memory] == [("user", "Hi there"),
                                                               ("assistant", "Hello from the panel.")]


def test_generation_runs_as_a_task_and_stop_keeps_the_partial_answer(tiny_agent):
    panel = ChatPanel(tiny_agent, max_new_tokens=1500, logits_processor=scripted(tiny_agent, LONG_TEXT, "Short."))

    async def scenario():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticking = asyncio.ensure_future(ticker())
        task = panel.send("Say a lot.")
        assert isinstance(task, asyncio.Task) and not task.done()  # the caller returns at once
        await wait_for(lambda: len(panel.partial.split()) >= 5)
        ticks_while_generating = ticks
        assert "▌" in panel.live_html.value  # the live (streaming) view
        tokens_seen = len(tiny_agent.loaded_model.tokenizer.encode(panel.partial, add_special_tokens=False))
        panel.stop_button.click()
        stopped = await panel.wait()
        ticking.cancel()
        return ticks_while_generating, tokens_seen, stopped

    began = time.perf_counter()
    ticks, tokens_seen, stopped = run(scenario())
    wall = time.perf_counter() - began
    assert ticks > 0  # the loop kept serving other coroutines while the model generated
    assert stopped["stopped"] and stopped["finish_reason"] == "cancelled"
    assert 5 <= len(stopped["content"].split()) and LONG_TEXT.startswith(stopped["content"])
    # ends within a few tokens of what had been shown when Stop was pressed
    assert tokens_seen <= stopped["tokens"] <= tokens_seen + 8
    assert "stopped" in panel.history_html.value and stopped["content"][:40] in panel.history_html.value
    assert panel.status.startswith("stopped")
    assert not panel.is_running and panel.stop_button.disabled and not panel.send_button.disabled
    entry = panel.memory[-1]
    meta = entry.metadata
    # throttled: at most one refresh per 0.1 s (plus the forced one on Stop), however many pieces arrive
    assert 1 <= meta["display_updates"] <= wall / 0.1 + 2
    # the panel goes on: the stopped answer is part of the conversation sent next
    nxt = run(_send(panel, "Now briefly."))
    assert nxt["content"] == "Short." and len(panel.memory) == 4
    assert panel.payload("x").memory[1].content == stopped["content"]


def test_stop_when_idle_and_busy_refusals(tiny_agent):
    panel = ChatPanel(tiny_agent, max_new_tokens=1500, logits_processor=scripted(tiny_agent, LONG_TEXT))
    assert panel.stop() is False

    async def scenario():
        panel.send("first")
        with pytest.raises(RuntimeError, match="generation is running"):
            panel.send("second")
        panel.input.value = "typed meanwhile"
        panel.send_button.click()  # refused, shown as a notice; the input stays
        assert "generation is running" in panel.notice and panel.input.value == "typed meanwhile"
        with pytest.raises(RuntimeError):
            panel.regenerate()
        assert panel.stop() is True
        await panel.wait()

    run(scenario())
    assert [t["role"] for t in panel.transcript] == ["user", "assistant"]
    assert panel.input.value == "typed meanwhile"


# --------------------------------------------------------------------------- regenerate, clear


def test_regenerate_replaces_the_last_answer(tiny_agent):
    panel = ChatPanel(tiny_agent, logits_processor=scripted(tiny_agent, "first answer", "second answer"))
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


def test_clear_forgets_everything_also_during_a_generation(tiny_agent):
    panel = ChatPanel(tiny_agent, max_new_tokens=1500, logits_processor=scripted(tiny_agent, "one", LONG_TEXT))

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
    assert panel.memory == [] and panel.transcript == []
    assert "No messages yet" in panel.history_html.value and panel.live_html.value == ""


# --------------------------------------------------------------------------- nothing lost


def test_invalid_settings_are_reported_and_the_input_is_kept(tiny_agent):
    panel = ChatPanel(tiny_agent, logits_processor=scripted(tiny_agent, "ok"))
    panel.greedy_input.value = False
    panel.temperature_input.value = -1.0
    panel.input.value = "my carefully typed question"
    panel.send_button.click()
    assert "temperature" in panel.notice and "0.0 to 2.0" in panel.notice
    assert panel.input.value == "my carefully typed question" and panel.memory == []
    with pytest.raises(ValueError, match="temperature"):
        panel.send("programmatic")
    panel.temperature_input.value = 0.7
    panel.max_new_tokens_input.value = 0
    with pytest.raises(ValueError, match="max_new_tokens"):
        panel.send()
    assert panel.input.value == "my carefully typed question" and panel.memory == []
    panel.max_new_tokens_input.value = 8
    panel.greedy_input.value = True

    answer = run(_send_from_input(panel))
    assert answer["content"] == "ok" and panel.notice == "" and panel.input.value == ""


async def _send_from_input(panel):
    return await panel.send()


def test_error_during_generation_is_shown_and_nothing_is_lost(tiny_model):
    agents = loaded_agent(tiny_model, max_new_tokens=8, context_window=64)
    agent = next(agents)
    try:
        panel = ChatPanel(agent, logits_processor=scripted(agent, "Fine."))

        async def scenario():
            await panel.send("Short question.")
            panel.input.value = "an unsent draft"
            failed = await panel.send("<b>too long</b> " + "word " * 200)
            return failed

        failed = run(scenario())
        assert failed["error"].startswith("ContextWindowError") and failed["finish_reason"] == "error"
        assert panel.input.value == "an unsent draft"
        assert [t["role"] for t in panel.transcript] == ["user", "assistant", "user", "assistant"]
        assert panel.transcript[1]["content"] == "Fine."
        html = panel.history_html.value
        assert "ContextWindowError" in html and "failed" in html and "press Regenerate" in html
        assert "&lt;b&gt;too long&lt;/b&gt;" in html and "<b>too long" not in html
        assert panel.status.startswith("error: ContextWindowError")
        # the failed exchange stays visible but is not sent to the model again
        assert [m.content for m in panel.payload("next").memory] == ["Short question.", "Fine."]
        frame = panel.to_frame()
        assert frame["error"].iloc[3].startswith("ContextWindowError") and frame["finish_reason"].iloc[3] == "error"
    finally:
        agents.close()


def test_failure_in_the_middle_of_a_generation_keeps_the_partial_text(tiny_agent):
    text = "alpha beta gamma delta epsilon zeta eta theta"
    panel = ChatPanel(tiny_agent, max_new_tokens=64,
                      logits_processor=[*scripted(tiny_agent, text), RaiseAfter(after=6)])
    failed = run(_send(panel, "Go."))
    assert failed["error"].startswith("MemoryError: simulated")
    assert failed["content"] and text.startswith(failed["content"]) and failed["content"] != text
    assert "MemoryError" in panel.history_html.value and failed["content"] in panel.history_html.value
    assert not panel.is_running and not panel.send_button.disabled


async def _send(panel, text):
    return await panel.send(text)


# --------------------------------------------------------------------------- thinking, tools, escaping


def test_thinking_is_shown_apart_in_a_collapsible_block(tiny_agent):
    panel = ChatPanel(tiny_agent, logits_processor=scripted(tiny_agent, "<think>Let me think: 2+2.</think>It is 4."))
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


def test_tool_calls_are_shown_and_not_run_without_opt_in(tiny_tools_agent):
    add.calls = 0
    panel = ChatPanel(tiny_tools_agent, tools=[add, explode], logits_processor=scripted(tiny_tools_agent, CALLS))
    answer = run(_send(panel, "Add 2 and 3."))
    assert add.calls == 0
    assert [(r["name"], r["executed"]) for r in answer["tool_calls"]] == [("add", False), ("explode", False)]
    html = panel.history_html.value
    assert "midori-tool-calls" in html and "(not executed)" in html and "add" in html


def test_tools_run_with_opt_in_and_a_raising_tool_is_reported(tiny_tools_agent):
    add.calls = 0
    with pytest.raises(ValueError, match=r"execute_tools=True\) needs tools"):
        ChatPanel(tiny_tools_agent, execute_tools=True)
    panel = ChatPanel(tiny_tools_agent, tools=[add, explode], execute_tools=True,
                      logits_processor=scripted(tiny_tools_agent, CALLS, "The sum is 5."))
    answer = run(_send(panel, "Add 2 and 3, then explode."))
    assert add.calls == 1
    assert answer["content"] == "The sum is 5." and answer["error"] is None
    rows = {r["name"]: r for r in answer["tool_calls"]}
    assert rows["add"]["result"] == 5 and rows["add"]["executed"]
    assert "ValueError: the tool broke" in rows["explode"]["error"]
    html = panel.history_html.value
    assert "midori-tool-calls" in html and "the tool broke" in html and "The sum is 5." in html
    # the tool steps survive an export and import
    again = ChatPanel.from_json(tiny_tools_agent, panel.to_json())
    assert again.transcript[1]["tool_calls"] == json.loads(json.dumps(answer["tool_calls"], default=str))


def test_user_and_model_html_is_escaped_everywhere(tiny_agent):
    model_text = "<script>alert('model')</script><img src=x onerror=alert(1)>"
    user_text = "<script>alert('user')</script>"
    panel = ChatPanel(tiny_agent, title="<i>title</i>", throttle=0, logits_processor=scripted(tiny_agent, model_text))
    seen_live: list[str] = []
    panel.live_html.observe(lambda change: seen_live.append(change["new"]), names="value")
    answer = run(_send(panel, user_text))
    assert answer["content"] == model_text  # the model really produced the markup
    for html in [panel.history_html.value, panel.title_html.value, panel.status_html.value, *seen_live]:
        assert "<script" not in html and "<img" not in html and "<i>" not in html
    assert "&lt;script&gt;alert(&#x27;user&#x27;)&lt;/script&gt;" in panel.history_html.value
    assert "&lt;img src=x onerror=alert(1)&gt;" in panel.history_html.value
    assert any("&lt;script&gt;" in html for html in seen_live)  # also while streaming
    markdown = panel.to_markdown()
    assert "<script" not in markdown and "<img" not in markdown and "&lt;script&gt;" in markdown
    panel.input.value = "<b>x</b>"
    panel.max_new_tokens_input.value = -5
    panel.send_button.click()
    assert "<b>" not in panel.notice_html.value


# --------------------------------------------------------------------------- Enter sends


def test_enter_at_the_end_sends_and_elsewhere_makes_a_new_line(tiny_agent):
    panel = ChatPanel(tiny_agent, logits_processor=scripted(tiny_agent, "Got it."))

    async def scenario():
        panel.input.value = "first line"
        panel.input.value = "first\nline"  # a line break inside the text stays
        assert not panel.is_running and panel.input.value == "first\nline"
        panel.input.value = "first\nline\n"  # Enter at the end sends
        assert panel.is_running and panel.input.value == ""
        answer = await panel.wait()
        panel.enter_sends_input.value = False
        panel.input.value = "draft\n"  # with Enter sends off, it is a new line
        assert not panel.is_running and panel.input.value == "draft\n"
        return answer

    answer = run(scenario())
    assert answer["content"] == "Got it."
    assert panel.transcript[0]["content"] == "first\nline"


# --------------------------------------------------------------------------- export / import


def test_export_import_round_trip_and_continue(tiny_agent):
    panel = ChatPanel(tiny_agent, logits_processor=scripted(tiny_agent, "Paris.", "Berlin.", "Rome."))
    panel.system_prompt_input.value = "You answer with one word."
    panel.temperature_input.value = 0.3

    async def scenario():
        await panel.send("Capital of France?")
        await panel.send("Capital of Germany?")

    run(scenario())
    text = panel.to_json()
    document = json.loads(text)
    assert document["format"] == "midori-hf-nb/chat-panel" and len(document["memory"]) == 4

    restored = ChatPanel.from_json(tiny_agent, text, logits_processor=scripted(tiny_agent, "Rome."))
    assert restored.transcript == panel.transcript
    assert restored.settings() == panel.settings()
    assert "Berlin." in restored.history_html.value
    assert [m.content for m in restored.payload("Capital of Italy?").memory] == [
        "Capital of France?", "Paris.", "Capital of Germany?", "Berlin."]
    answer = run(_send(restored, "Capital of Italy?"))
    assert answer["content"] == "Rome." and len(restored.memory) == 6

    frame = panel.to_frame()
    assert list(frame["role"]) == ["user", "assistant", "user", "assistant"]
    assert list(frame["content"])[1::2] == ["Paris.", "Berlin."]
    assert list(frame["finish_reason"])[1::2] == ["stop", "stop"]
    assert {"turn", "tokens", "seconds", "timestamp", "thinking", "stopped", "error"} <= set(frame.columns)

    markdown = panel.to_markdown()
    assert markdown.index("**You**") < markdown.index("Paris\\.") < markdown.index("Berlin\\.")


@pytest.mark.parametrize("text, message", [
    ("not json", "not valid JSON"),
    ('{"format": "other"}', "format"),
    ('{"format": "midori-hf-nb/chat-panel", "version": 9, "memory": []}', "version 9"),
    ('{"format": "midori-hf-nb/chat-panel", "version": 1, "memory": [{"role": "robot", "content": "x"}]}',
     r"memory\[0\].role='robot'"),
    ('{"format": "midori-hf-nb/chat-panel", "version": 1, "memory": [], "settings": {"colour": 1}}',
     "unknown setting"),
])
def test_from_json_rejects_bad_documents(tiny_agent, text, message):
    with pytest.raises(ValueError, match=message):
        ChatPanel.from_json(tiny_agent, text)


def test_send_without_a_running_loop_blocks_and_returns_the_answer(tiny_agent):
    panel = ChatPanel(tiny_agent, logits_processor=scripted(tiny_agent, "Plain script."))
    answer = panel.send("Hello")
    assert answer["content"] == "Plain script." and not panel.is_running
    with pytest.raises(ValueError, match="empty"):
        panel.send("   ")


# --------------------------------------------------------------------------- the default model


@pytest.mark.slow
def test_default_model_answers_in_the_panel(default_agent):
    panel = ChatPanel(default_agent, greedy=True, max_new_tokens=24)
    answer = run(_send(panel, "What is the capital of France?"))
    assert "Paris" in answer["content"]
    assert "Paris" in panel.history_html.value
    assert answer["tokens"] > 0 and answer["tokens_per_second"] > 0
    assert "tokens/s" in panel.status


def test_tool_loop_streams_its_steps_and_stop_keeps_them(tiny_tools_agent):
    add.calls = 0
    long_answer = "The sum is 5. " + "More words follow here. " * 60
    panel = ChatPanel(tiny_tools_agent, tools=[add, explode], execute_tools=True, throttle=0,
                      logits_processor=scripted(tiny_tools_agent, CALLS, long_answer))

    async def scenario():
        task = panel.send("Add 2 and 3, then explode.")
        await wait_for(lambda: "the tool broke" in panel.live_html.value)   # results show while it runs
        await wait_for(lambda: "More words" in panel.live_html.value)
        assert panel.stop()
        return await task

    answer = run(scenario())
    assert add.calls == 1
    assert answer["stopped"] and answer["finish_reason"] == "cancelled"
    rows = {r["name"]: r for r in answer["tool_calls"]}
    assert rows["add"]["executed"] and rows["add"]["result"] == 5
    assert "ValueError: the tool broke" in rows["explode"]["error"]
    assert answer["content"].startswith("The sum is 5.") and len(answer["content"]) < len(long_answer)
