"""The chat panel finished: input never lost (the queue), Esc, buttons in their real state, copy and
"as text", edit and resend (branches), the new settings, the response-format box and short model names.

Driven headless, through the input's own entry points (``submit``, the browser's messages, ``act``) and
the panel's methods, on a scripted agent (the panel's own behaviour: no model needed). The real browser
(keys, clipboard, screenshots) is ``tests/test_browser.py``.
"""

from __future__ import annotations

import asyncio
import html as html_module
import json
import re
from types import SimpleNamespace

import pytest

from midori_hf_nb import MemoryEntryData
from midori_hf_nb.notebook import ChatPanel
from midori_hf_nb.testing import ScriptedAgent

from .conftest import run
from .markup import assert_inert_markdown, text_of
from .test_chat_panel import browser_sends, wait_for
from .test_notebook_unfenced import CODE, MANGLED

STORY = "Once upon a time there was a story that went on and on. " * 30


def users(panel) -> list[str]:
    return [t["content"] for t in panel.transcript if t["role"] == "user"]


# --------------------------------------------------------------------------- input is never lost


def test_messages_sent_while_an_answer_runs_are_queued_shown_and_sent_in_order():
    agent = ScriptedAgent([STORY, "Second answer.", "Third answer."], delay=0.003)
    panel = ChatPanel(agent, throttle=0)
    replies = []
    panel.input.send = replies.append

    async def scenario():
        browser_sends(panel.input, {"type": "send", "id": "m1", "text": "first"})
        await wait_for(lambda: len(panel.partial) > 5)
        assert panel.input.busy  # the browser shows Queue instead of Send
        browser_sends(panel.input, {"type": "send", "id": "m2", "text": "second"})
        browser_sends(panel.input, {"type": "send", "id": "m3", "text": "third"})
        assert [r["accepted"] for r in replies] == [True, True, True]  # taken: the box is empty, nothing glued
        assert panel.queued == ["second", "third"]
        shown = text_of(panel.queue_html.value)
        assert shown.index("Queued 1: second") < shown.index("Queued 2: third") and "Back to the box" in shown
        return await panel.wait()

    last = run(scenario())
    assert last["content"] == "Third answer."
    assert users(panel) == ["first", "second", "third"]  # in order, each its own message
    assert [t["role"] for t in panel.transcript] == ["user", "assistant"] * 3
    assert agent.calls[2].payload.user_message == "third" and len(agent.calls[2].payload.memory) == 4
    assert panel.queued == [] and panel.queue_html.value == ""


def test_back_to_the_box_takes_a_queued_message_out_and_clear_returns_the_queue():
    panel = ChatPanel(ScriptedAgent(STORY, delay=0.003), throttle=0)

    async def scenario():
        panel.send("first")
        for text in ("second", "third", "fourth"):
            assert panel.input.submit(text) is True
        panel.input.act("unqueue", position=1)  # the button on "third"
        assert panel.queued == ["second", "fourth"] and panel.input.value == "third"
        panel.input.value = ""
        panel.clear()  # stops; the queue goes back into the box, in order, not sent
        assert panel.queued == [] and panel.input.value == "second\nfourth"
        await panel.wait()

    run(scenario())
    assert panel.transcript == [] and panel.input.value == "second\nfourth"


def test_a_queued_message_that_cannot_be_sent_goes_back_into_the_box():
    panel = ChatPanel(ScriptedAgent(["One.", "Two."], delay=0.01), throttle=0)

    async def scenario():
        panel.send("first")
        assert panel.input.submit("queued") is True
        panel.max_new_tokens_input.value = -3  # the settings became invalid meanwhile
        await panel.wait()

    run(scenario())
    assert users(panel) == ["first"] and panel.input.value == "queued"
    assert "went back into the box" in panel.notice and "max_new_tokens" in panel.notice


def test_escape_stops_the_answer_then_cancels_an_edit():
    panel = ChatPanel(ScriptedAgent([STORY, "Short."], delay=0.003), throttle=0)

    async def scenario():
        panel.send("tell me")
        await wait_for(lambda: len(panel.partial) > 10)
        panel.input.act("escape")  # Esc anywhere in the panel
        await panel.wait()

    run(scenario())
    assert panel.transcript[-1]["stopped"] and STORY.startswith(panel.transcript[-1]["content"])
    panel.input.act("edit", index=0)
    assert panel.editing == 0 and panel.input.value == "tell me" and panel.cancel_edit_button.layout.display is None
    panel.input.act("escape")  # nothing runs: Esc stops editing
    assert panel.editing is None and panel.input.value == "" and panel.cancel_edit_button.layout.display == "none"


def test_buttons_show_their_real_state():
    panel = ChatPanel(ScriptedAgent(STORY, delay=0.003), throttle=0)
    idle = (panel.stop_button.disabled, panel.stop_button.button_style, panel.regenerate_button.disabled,
            panel.input.busy)
    assert idle == (True, "", False, False)  # Stop neither enabled nor coloured while idle

    async def scenario():
        panel.send("go")
        running = (panel.stop_button.disabled, panel.stop_button.button_style, panel.regenerate_button.disabled,
                   panel.input.busy)
        assert running == (False, "warning", True, True)
        panel.stop()
        await panel.wait()

    run(scenario())
    assert (panel.stop_button.disabled, panel.stop_button.button_style, panel.input.busy) == (True, "", False)


def test_actions_from_the_browser_are_checked():
    panel = ChatPanel(ScriptedAgent("x"))
    seen = []
    panel.input.on_action(lambda action, numbers: seen.append((action, numbers)))
    for hostile in ({"type": "action", "action": "rm -rf", "numbers": {}},
                    {"type": "action", "action": "edit", "numbers": {"index": True}},
                    {"type": "action", "action": "edit", "numbers": {"index": 10**12}},
                    {"type": "action", "action": "edit", "numbers": {"index": "0"}},
                    {"type": "action", "action": "edit", "numbers": {"path": 1}},
                    {"type": "action", "action": "edit", "numbers": []}):
        browser_sends(panel.input, hostile)
    assert seen == []
    browser_sends(panel.input, {"type": "action", "action": "edit", "numbers": {"index": 4.0}})
    assert seen == [("edit", {"index": 4})] and "expected the position of one of your messages" in panel.notice
    with pytest.raises(ValueError, match="action='x' is not allowed"):
        panel.input.act("x")


# --------------------------------------------------------------------------- answers you can use


def test_messages_carry_copy_and_as_text_buttons_and_each_code_block_a_copy_button():
    answer = "Here:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\nand <b>more</b>."
    panel = ChatPanel(ScriptedAgent(answer), throttle=0)
    run(_send(panel, "add <two>"))
    html = panel.history_html.value
    assert "<b>" not in html and "&lt;b&gt;more" in html and "add &lt;two&gt;" in html  # still escaped
    user, reply = re.findall(r'<div class="midori-chat-(?:user|assistant)" data-midori-index="(\d)"', html)
    assert (user, reply) == ("0", "1")
    buttons = re.findall(r'data-midori-action="([a-z-]+)"(?: data-midori-index="(\d)")?', html)
    assert buttons == [("edit", "0"), ("copy", "0"), ("as-text", "1"), ("copy", "1"), ("copy-code", "")]
    source = re.search(r'<pre class="midori-chat-source" hidden>(.*?)</pre>', html, re.S).group(1)
    assert html_module.unescape(source) == answer  # Copy copies the answer's own text, exactly
    block = re.search(r'<div class="midori-codeblock">(.*?)</div>', html, re.S).group(1)
    assert "copy-code" in block and "def" in text_of(block)


def test_as_text_shows_an_answer_s_own_text_and_back():
    answer = "**Bold** and\n\n```python\nx = 1\n```"
    panel = ChatPanel(ScriptedAgent(answer), throttle=0)
    run(_send(panel, "q"))
    assert "<strong>Bold</strong>" in panel.history_html.value
    panel.input.act("as-text", index=1)
    shown = panel.history_html.value
    assert "<strong>" not in shown and "**Bold**" in shown and "```python" in shown and "As Markdown" in shown
    assert 'class="midori-as-text"' in shown
    assert panel.show_as_text(1) is False  # toggled back
    assert "<strong>Bold</strong>" in panel.history_html.value
    with pytest.raises(ValueError, match="the position of an answer"):
        panel.show_as_text(0)


def test_the_mangled_unfenced_answer_shows_as_one_code_block_in_the_panel():
    panel = ChatPanel(ScriptedAgent(MANGLED, piece_chars=5), throttle=0)
    run(_send(panel, "Write a function that reverses a string."))
    html = panel.history_html.value
    blocks = [html_module.unescape(re.sub(r"<[^>]+>", "", b)) for b in re.findall(r"<pre class=\"midori-code[^>]*>(.*?)</pre>", html, re.S)]
    assert blocks == [CODE + "\n"] and "<h1" not in html


async def _send(panel, text):
    return await panel.send(text)


# --------------------------------------------------------------------------- edit and resend


def test_edit_and_resend_forks_and_the_old_branch_stays_reachable(tmp_path):
    agent = ScriptedAgent(["A1", "A2", "A3 (edited)"])
    panel = ChatPanel(agent, throttle=0)

    async def scenario():
        await panel.send("q1")
        await panel.send("q2")
        panel.input.act("edit", index=2)  # Edit on "q2": its text goes into the box
        assert panel.input.value == "q2" and "Editing message 3" in panel.notice
        assert panel.input.submit("q2, edited") is True  # Send forks there
        return await panel.wait()

    answer = run(scenario())
    assert answer["content"] == "A3 (edited)"
    assert [t["content"] for t in panel.transcript] == ["q1", "A1", "q2, edited", "A3 (edited)"]
    assert [m.content for m in agent.calls[2].payload.memory] == ["q1", "A1"]  # the old branch is not sent
    assert [(b.at, [m.content for m in b.messages]) for b in panel.branches] == [(2, ["q2", "A2"])]
    assert "2/2" in text_of(panel.history_html.value) and 'data-midori-action="branch"' in panel.history_html.value
    panel.input.act("branch", index=2, step=-1)  # ‹ : the first version again
    assert [t["content"] for t in panel.transcript] == ["q1", "A1", "q2", "A2"]
    assert panel.view_state()["versions"] == {2: (1, 2)}
    # the JSON document and the Markdown keep both versions; a new panel continues with them
    document = json.loads(panel.to_json())
    assert document["branches"][0]["at"] == 2 and document["branches"][0]["messages"][0]["content"] == "q2, edited"
    again = ChatPanel.from_json(ScriptedAgent("x"), panel.to_json())
    assert [t["content"] for t in again.transcript] == ["q1", "A1", "q2", "A2"]
    assert again.switch_branch(2) == (2, 2) and again.transcript[2]["content"] == "q2, edited"
    markdown = panel.to_markdown()
    assert "## Branch from message 3 (before an edit)" in markdown and "q2, edited" in markdown
    assert_inert_markdown(markdown)


def test_forks_inside_a_branch_come_back_with_it():
    panel = ChatPanel(ScriptedAgent(["A1", "A2", "B2", "C1"]), throttle=0)

    async def scenario():
        await panel.send("q1")
        await panel.send("q2")
        await panel.edit(2, "q2b")  # fork at 2
        await panel.edit(0, "q1c")  # fork at 0: the whole conversation, with its fork at 2, becomes a branch

    run(scenario())
    assert [t["content"] for t in panel.transcript] == ["q1c", "C1"]
    assert len(panel.branches) == 1 and len(panel.branches[0].branches) == 1
    panel.switch_branch(0)
    assert [t["content"] for t in panel.transcript] == ["q1", "A1", "q2b", "B2"]
    assert panel.view_state()["versions"] == {0: (1, 2), 2: (2, 2)}
    panel.switch_branch(2)
    assert [t["content"] for t in panel.transcript] == ["q1", "A1", "q2", "A2"]


def test_edit_is_refused_while_an_answer_runs_and_for_an_answer():
    panel = ChatPanel(ScriptedAgent([STORY, "x"], delay=0.003), throttle=0)

    async def scenario():
        panel.send("q1")
        await wait_for(lambda: len(panel.partial) > 5)
        panel.input.act("edit", index=0)
        assert "An answer is running" in panel.notice and panel.editing is None
        panel.stop()
        await panel.wait()

    run(scenario())
    with pytest.raises(ValueError, match="one of your messages"):
        panel.edit(1, "not a user message")
    with pytest.raises(ValueError, match="did not fork"):
        panel.switch_branch(0)


@pytest.mark.parametrize("branches, message", [
    ([{"at": 5, "messages": [{"role": "user", "content": "x"}]}], "branches[0].at=5 is not allowed"),
    ([{"at": 0, "messages": []}], "messages must be a non-empty list"),
    ([{"at": 0, "messages": [{"role": "user", "content": "x"}], "extra": 1}], "expected an object with at"),
    ([{"at": 0, "messages": [{"role": "user", "content": "x"}],
       "branches": [{"at": 0, "messages": [{"role": "user", "content": "y"}]}]}], "branches[0].branches[0].at=0"),
    ([{"at": 0, "messages": [{"role": "<b>", "content": "x"}]}], "role"),
    ("not a list", "must be a list of branches"),
])
def test_bad_branches_in_a_document_are_refused_naming_them(branches, message):
    panel = ChatPanel(ScriptedAgent("x"), memory=[MemoryEntryData(role="user", content="q"),
                                                    MemoryEntryData(role="assistant", content="a")])
    document = {**json.loads(panel.to_json()), "branches": branches}
    with pytest.raises(ValueError, match=re.escape(message)):
        ChatPanel.from_json(ScriptedAgent("x"), json.dumps(document))
    old = {**json.loads(panel.to_json()), "version": 2}
    with pytest.raises(ValueError, match="'branches' is not allowed in a version 2 document"):
        ChatPanel.from_json(ScriptedAgent("x"), json.dumps(old))


# --------------------------------------------------------------------------- settings


def test_seed_top_p_top_k_and_the_repetition_guard_reach_the_agent_when_set():
    agent = ScriptedAgent("ok")
    panel = ChatPanel(agent)
    run(_send(panel, "q"))
    assert agent.calls[-1].overrides == {}  # nothing changed: the agent's own settings apply
    panel.seed_input.value = "42"
    panel.top_p_input.value = 0.5
    panel.top_k_input.value = 7
    panel.guard_input.value = False
    run(_send(panel, "q"))
    assert agent.calls[-1].overrides == {"seed": 42, "top_p": 0.5, "top_k": 7, "stop_on_repetition": False}
    panel.seed_input.value = "forty-two"
    panel.input.value = "kept"
    assert panel.input.submit() is False and panel.input.value == "kept"
    assert "seed='forty-two' is not allowed" in panel.notice
    panel.seed_input.value = ""
    panel.top_p_input.value = 1.5
    assert panel.input.submit() is False and "top_p" in panel.notice
    panel.top_p_input.value = 0.5
    saved = json.loads(panel.to_json())["settings"]
    assert (saved["top_p"], saved["top_k"], saved["seed"], saved["stop_on_repetition"]) == (0.5, 7, None, False)
    again = ChatPanel.from_json(agent, panel.to_json())
    assert (again.top_k_input.value, again.guard_input.value, again.seed_input.value) == (7, False, "")
    seeded = ChatPanel(agent, seed=3, top_k=9)
    assert (seeded.seed_input.value, seeded.top_k_input.value) == ("3", 9)


def test_the_response_format_box_checks_as_you_type_and_answers_carry_a_schema_badge():
    schema = {"title": "City", "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    panel = ChatPanel(ScriptedAgent('{"name": "Paris"}'), throttle=0)
    field = panel.response_format_field
    assert field.box.rows >= 4 and field.widget in panel.settings_box.children[0].children
    assert "Free text" in field.check_html.value
    field.box.value = '{"type": "object",\n "properties": {'  # typed half-way: says where it breaks
    assert "✗" in field.check_html.value and "(line 2, column 17)" in field.check_html.value
    field.box.value = json.dumps(schema, indent=2)
    assert "✓ JSON schema &#x27;City&#x27;" in field.check_html.value
    answer = run(_send(panel, "A city."))
    assert panel.entries[-1].schema == "City" and answer["content"] == '{"name": "Paris"}'
    assert 'class="midori-chat-schema"' in panel.history_html.value and ">schema<" in panel.history_html.value
    field.box.value = ""
    run(_send(panel, "Free."))
    assert panel.entries[-1].schema is None and panel.history_html.value.count('class="midori-chat-schema"') == 1
    again = ChatPanel.from_json(ScriptedAgent("x"), panel.to_json())
    assert again.entries[1].schema == "City"


# --------------------------------------------------------------------------- short model names


def test_a_served_model_is_named_by_its_model_id_and_host():
    path = "/root/.cache/midori-hf-nb/gguf/SmolLM2-135M-Instruct.Q4_1-0123456789abcdef/bfloat16"

    class Served(ScriptedAgent):
        config = SimpleNamespace(model=path)
        base_url = "http://127.0.0.1:8011/v1"

    panel = ChatPanel(Served("Paris.", model=path))
    assert "Chat · SmolLM2-135M-Instruct.Q4_1 @ 127.0.0.1:8011" in panel.title_html.value
    assert f'title="{path} on http://127.0.0.1:8011/v1"' in panel.title_html.value  # the full form on hover
    run(_send(panel, "q"))
    assert "model: SmolLM2-135M-Instruct.Q4_1 @ 127.0.0.1:8011" in panel.status and path not in panel.status
    assert path not in text_of(panel.title_html.value)


def test_hub_ids_and_plain_names_stay_as_they_are():
    from midori_hf_nb.notebook.chat.generation import short_model_name

    assert short_model_name("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert short_model_name("offline:smollm2-135m-instruct") == "offline:smollm2-135m-instruct"
    assert short_model_name("/models/llama-3-8b/") == "llama-3-8b"


def test_the_queue_survives_a_stop_by_the_button():
    panel = ChatPanel(ScriptedAgent([STORY, "After."], delay=0.003), throttle=0)

    async def scenario():
        panel.send("long")
        panel.input.submit("next")
        await asyncio.sleep(0.05)
        panel.stop_button.click()
        return await panel.wait()

    assert run(scenario())["content"] == "After." and users(panel) == ["long", "next"]


def test_stop_with_a_queued_message_leaves_the_queued_answer_whole_on_a_real_model(tiny_model):
    """Stop ends the running answer only: the queued message's answer, generated by the model right
    after, runs to its own end (its budget here: a random model does not stop), never ``cancelled``."""
    from .conftest import loaded_agent

    agents = loaded_agent(tiny_model, max_new_tokens=160, stop_on_repetition=False)
    agent = next(agents)
    try:
        panel = ChatPanel(agent, throttle=0)

        async def scenario():
            panel.send("Count from 1 to 500.")
            await wait_for(lambda: panel._run is not None and len(panel._run.view.state.answer) > 20)
            panel.input.submit("What is 2 + 2?")
            assert panel.queued == ["What is 2 + 2?"]
            panel.stop_button.click()
            return await panel.wait()

        last = run(scenario())
        first = panel.transcript[1]
        assert users(panel) == ["Count from 1 to 500.", "What is 2 + 2?"]
        assert first["stopped"] and first["finish_reason"] == "cancelled" and first["completion_tokens"] < 160
        assert not last["stopped"] and last["finish_reason"] == "length", last
        assert last["completion_tokens"] == 160
    finally:
        agents.close()
