"""The call log from the notebook layer: chat panels that belong to a logged conversation, continue
it and leave a saved copy; ``%midori log``; the surfaces and origins recorded (a real kernel for the
cell id). Scripted agents: what is checked is the notebook layer's own behaviour."""

from __future__ import annotations

import json
import queue
import textwrap

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from midori_hf_nb import compare, log, make_payload
from midori_hf_nb.notebook import ChatPanel, stream_to_cell
from midori_hf_nb.notebook.chat.persistence import css_token
from midori_hf_nb.notebook.sinks import RecordingSink
from midori_hf_nb.testing import ScriptedAgent

from .conftest import log_rows, run
from .markup import VIEW_TAGS, problems

HOSTILE = '<img src=x onerror="alert(1)"><script>alert(2)</script>'


def live_markup(html: str) -> list[str]:
    """Markup in ``html`` that did not come from the view (the view's own message times carry a title)."""
    return [p for p in problems(html, VIEW_TAGS) if p != "<span title=...>"]


def execute(shell, code):
    with capture_output() as captured:
        result = shell.run_cell(textwrap.dedent(code))
    assert result.success, (captured.stdout, captured.stderr, result.error_in_exec)
    return captured


@pytest.fixture
def shell():
    shell = InteractiveShell.instance()
    execute(shell, "%load_ext midori_hf_nb")
    yield shell
    execute(shell, "%unload_ext midori_hf_nb")


# --------------------------------------------------------------------------- chat panels


def test_a_panel_records_its_conversation_and_a_new_panel_continues_it(call_log):
    first = ChatPanel(ScriptedAgent(["Paris.", "Berlin."]), conversation="capitals")
    first.send("France?")
    first.send("Germany?")
    rows = log_rows(call_log)
    assert [(r["surface"], r["conversation_id"], r["prompt"]) for r in rows] == [
        ("chat_panel", first.conversation.id, "France?"), ("chat_panel", first.conversation.id, "Germany?")]
    assert first.conversation.name == "capitals" and first.conversation.resumed == 0

    agent = ScriptedAgent("Rome.")
    again = ChatPanel(agent, conversation=first.conversation.id)  # after a restart: by id
    assert [(e.role, e.content) for e in again.memory] == [(e.role, e.content) for e in first.memory]
    assert again.conversation.id == first.conversation.id and "4 messages from the call log" in again.status
    again.send("Italy?")
    sent = agent.calls[0].payload.memory
    assert [m.content for m in sent] == ["France?", "Paris.", "Germany?", "Berlin."]  # the model sees the history
    by_name = ChatPanel(ScriptedAgent("x"), conversation="capitals")
    assert [e.content for e in by_name.memory][-2:] == ["Italy?", "Rome."]


def test_unknown_ids_are_refused_and_unknown_names_start_a_named_conversation(call_log):
    with pytest.raises(log.ConversationNotFound, match="no conversation with this id"):
        ChatPanel(ScriptedAgent("x"), conversation="01ARZ3NDEKTSV4RRFFQ69G5FAV")
    fresh = ChatPanel(ScriptedAgent("x"), conversation="my new chat")
    assert fresh.conversation.name == "my new chat" and fresh.memory == [] and fresh.status.startswith("ready")
    with pytest.raises(ValueError, match="memory= or conversation=, not both"):
        ChatPanel(ScriptedAgent("x"), conversation="my new chat", memory=[])
    quiet = ChatPanel(ScriptedAgent("quiet"), log=False)
    quiet.send("not recorded")
    assert log_rows(call_log) == []


def test_a_displayed_panel_is_followed_by_a_saved_escaped_copy_kept_up_to_date(shell, call_log):
    shell.user_ns["agent"] = ScriptedAgent(f"Answer with {HOSTILE}")
    shown = execute(shell, "from midori_hf_nb.notebook import ChatPanel\npanel = ChatPanel(agent, conversation='saved chat')\npanel")
    assert [sorted(o.data) for o in shown.outputs] == [
        ["application/vnd.jupyter.widget-view+json", "text/plain"], ["text/html", "text/plain"]]
    panel = shell.user_ns["panel"]
    token = css_token(panel.conversation.id)
    assert f"midori-chat-panel-{token}" in panel.widget._dom_classes  # the rule that hides the copy finds it
    updated = execute(shell, f"panel.send({HOSTILE!r})")
    html = updated.outputs[-1].data["text/html"]
    assert updated.outputs[-1].update  # the copy shown with the panel is updated in place
    assert f".jp-OutputArea:has(.midori-chat-panel-{token}) .midori-chat-static-{token}" in html
    assert f'ChatPanel(agent, conversation="{panel.conversation.id}")' in html and "saved chat" in html
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in html and "<script>" not in html
    assert live_markup(html.split("</style>", 1)[1]) == []
    assert "2 messages" in html and "Answer with" in html
    cleared = execute(shell, "panel.clear()")
    assert "0 messages" in cleared.outputs[-1].data["text/html"]


# --------------------------------------------------------------------------- surfaces


def test_magics_stream_to_cell_and_compare_record_their_surfaces(shell, call_log):
    shell.user_ns["agent"] = ScriptedAgent(["One.", "Two."])
    execute(shell, "%midori use agent")
    execute(shell, "%%midori\nFirst?")
    execute(shell, "%%midori --no-stream\nSecond?")
    session_conversation = log_rows(call_log)[0]["conversation_id"]
    execute(shell, "%midori reset")
    execute(shell, "%%midori\nThird?")
    response = run(stream_to_cell(ScriptedAgent("Streamed."), make_payload("Fourth?"), sink=(sink := RecordingSink())))
    frame = compare(["p1", "p2"], models=[ScriptedAgent("c")], progress=False, warmup=True)
    rows = log_rows(call_log)
    assert [(r["surface"], r["prompt"]) for r in rows] == [
        ("magic", "First?"), ("magic", "Second?"), ("magic", "Third?"), ("stream_to_cell", "Fourth?"),
        ("compare", "p1"), ("compare", "p2")]  # the warm-up is not recorded
    assert rows[1]["conversation_id"] == session_conversation != rows[2]["conversation_id"] is not None
    assert rows[4]["group_id"] == rows[5]["group_id"] is not None and len(frame) == 2
    assert f"log id {response.metadata['log_id']}" in sink.last["text/plain"]  # the saved output names the call


def test_the_log_magic_lists_searches_shows_transcripts_and_deletes(shell, call_log):
    shell.user_ns["agent"] = ScriptedAgent(["Paris is nice.", f"Careful: {HOSTILE}"])
    execute(shell, "%midori use agent")
    execute(shell, "%%midori\nTell me about Paris")
    execute(shell, "%%midori\nAnything else?")
    table = execute(shell, "%midori log -n 5 --name found")
    html = table.outputs[-1].data["text/html"]
    assert "Tell me about Paris" in html and "&lt;script&gt;" in html and "<script>" not in html
    assert list(shell.user_ns["found"]["prompt"]) == ["Tell me about Paris", "Anything else?"]
    printed = execute(shell, "%midori log -q paris --json")
    assert [r["prompt"] for r in json.loads(printed.stdout)] == ["Tell me about Paris"]
    cid = shell.user_ns["found"]["conversation_id"][0]
    shown = execute(shell, f"%midori log transcript {cid}")
    transcript = shown.outputs[-1].data["text/html"]
    assert "Tell me about Paris" in transcript and f"conversation=&quot;{cid}&quot;" in transcript
    assert live_markup(transcript) == []
    assert "records to" in execute(shell, "%midori log on").stdout
    assert "is off" in execute(shell, "%midori log off").stdout
    execute(shell, "%%midori\nNot recorded?")
    execute(shell, "%midori log on")
    deleted = execute(shell, f"%midori log delete --cid {cid}")
    assert "Deleted 2 call(s) and 1 conversation(s)" in deleted.stdout
    assert "No logged calls match" in execute(shell, "%midori log").stdout
    with capture_output():
        refused = shell.run_cell("%midori log delete")
    assert not refused.success and "everything=True" in str(refused.error_in_exec)


# --------------------------------------------------------------------------- a real kernel


def test_a_kernel_records_the_notebook_the_cell_id_and_the_execution_count(tmp_path):
    jupyter_client = pytest.importorskip("jupyter_client")
    path = tmp_path / "kernel-log" / "logs.db"
    import os

    env = {**os.environ, "MIDORI_HF_NB_LOG": str(path), "JPY_SESSION_NAME": "work/analysis.ipynb"}
    manager, client = jupyter_client.manager.start_new_kernel(kernel_name="python3", startup_timeout=120, env=env)
    try:
        code = ("import midori_hf_nb.notebook\nfrom midori_hf_nb import make_payload\n"
                "from midori_hf_nb.testing import ScriptedAgent\n"
                "await ScriptedAgent('Hi.').invoke(make_payload('From a cell'))")
        message = client.session.msg("execute_request", {"code": code, "silent": False, "store_history": True,
                                                         "user_expressions": {}, "allow_stdin": False,
                                                         "stop_on_error": True}, metadata={"cellId": "cell-7f3a"})
        client.shell_channel.send(message)
        reply = None
        while reply is None or reply["parent_header"].get("msg_id") != message["header"]["msg_id"]:
            try:
                reply = client.get_shell_msg(timeout=120)
            except queue.Empty:
                raise AssertionError("the kernel did not answer") from None
        assert reply["content"]["status"] == "ok", reply["content"]
        client.execute_interactive("from midori_hf_nb import log; log.flush()", timeout=60)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    [row] = log_rows(path)
    assert (row["notebook"], row["cell_id"]) == ("work/analysis.ipynb", "cell-7f3a")
    assert row["execution_count"] == reply["content"]["execution_count"] and row["script"] is None
