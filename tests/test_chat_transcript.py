"""The chat panel's transcript: hostile files and memory refused with errors naming the field,
version 1 files read, everything the exports write escaped, and the package's shape.

No model: the scripted agent answers, and most tests never generate at all.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from midori_hf_nb import MemoryEntryData
from midori_hf_nb.notebook import ChatPanel
from midori_hf_nb.notebook.chat import document as chat_document
from midori_hf_nb.notebook.chat import read_document, render_transcript_html
from midori_hf_nb.notebook.chat.transcript import MAX_MESSAGES
from midori_hf_nb.testing import ScriptedAgent

from .conftest import ROOT, run
from .markup import assert_inert_markdown

V1_FILE = Path(__file__).parent / "data" / "chat_panel_v1.json"
PACKAGE = ROOT / "midori_hf_nb" / "notebook" / "chat"


def v2_document() -> dict:
    """A valid current-version document: a question, an answer with statistics and a tool call."""
    panel = ChatPanel(ScriptedAgent('It is 5. <tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'),
                      tools=[{"name": "add", "description": "Add two numbers."}])
    run(_send(panel, "Add 2 and 3."))
    return json.loads(panel.to_json())


async def _send(panel, text):
    return await panel.send(text)


def v1_document() -> dict:
    return json.loads(V1_FILE.read_text())


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


def with_answer_metadata(source, **fields):
    def change(document):
        document["memory"][1]["metadata"].update(fields)
        return json.dumps(document)
    return source, change


def with_settings(**fields):
    def change(document):
        document["settings"].update(fields)
        return json.dumps(document)
    return v2_document, change


def with_message(index, **fields):
    def change(document):
        document["memory"][index].update(fields)
        return json.dumps(document)
    return v2_document, change


def raw(text):
    return v2_document, lambda _document: text


FORMAT = '{"format": "midori-hf-nb/chat-panel", "version": 2, '

#: (id, (make a valid document, turn it into the hostile text), the error expected: a regex)
HOSTILE_FILES = [
    ("v1 seconds not a number", with_answer_metadata(v1_document, seconds="abc"),
     r"transcript message 1: metadata field 'total_seconds'='abc' is not allowed: expected a number of seconds >= 0"),
    ("v2 total_seconds not a number", with_answer_metadata(v2_document, total_seconds="abc"),
     r"transcript message 1: metadata field 'total_seconds'='abc' is not allowed: expected a number of seconds"),
    ("negative completion tokens", with_answer_metadata(v2_document, completion_tokens=-1),
     r"metadata field 'completion_tokens'=-1 is not allowed: expected a whole number >= 0"),
    ("unknown finish reason", with_answer_metadata(v2_document, finish_reason="exploded"),
     r"'finish_reason'='exploded' is not allowed: expected one of stop, length, cancelled, error"),
    ("thinking not text", with_answer_metadata(v2_document, thinking=5),
     r"transcript message 1: metadata field 'thinking'=5 is not allowed: expected text"),
    ("error not text", with_answer_metadata(v2_document, error=["x"]),
     r"metadata field 'error'=\['x'\] is not allowed: expected text"),
    ("stopped not true or false", with_answer_metadata(v1_document, stopped="yes"),
     r"metadata field 'stopped'='yes' is not allowed: expected true or false"),
    ("tool step seconds not a number", with_answer_metadata(v2_document, tool_steps=[{"name": "add", "seconds": "x"}]),
     r"metadata field 'tool_steps'\[0\]\.seconds='x' is not allowed: expected a number >= 0"),
    ("tool steps not records", with_answer_metadata(v2_document, tool_steps=[1]),
     r"metadata field 'tool_steps'=\[1\] is not allowed: expected a list of at most \d+ records"),
    ("tool call not an object", with_message(1, tool_calls=[1]),
     r"transcript message 1: tool_calls\[0\]=1 is not allowed: expected an object with a 'name'"),
    ("tool calls not a list", with_message(1, tool_calls="add"),
     r"tool_calls='add' is not allowed: expected a list"),
    ("role markup", with_message(0, role="<img src=x onerror=alert(1)>"),
     r"transcript message 0: role='<img src=x onerror=alert\(1\)>' is not allowed: expected one of user, "
     r"assistant, system, tool"),
    ("role unknown in v1", (v1_document, lambda d: json.dumps({**d, "memory": [{"role": "robot", "content": "x"}]})),
     r"transcript message 0: role='robot' is not allowed"),
    ("content not text", with_message(0, content={"text": "hi"}),
     r"transcript message 0: content=\{'text': 'hi'\} is not allowed: expected text"),
    ("timestamp not a number", with_message(0, timestamp="yesterday"),
     r"timestamp='yesterday' is not allowed: expected seconds since the epoch"),
    ("metadata not an object", with_message(0, metadata=[1]),
     r"metadata=\[1\] is not allowed: expected an object"),
    ("unknown message field", with_message(0, colour="red"),
     r"transcript message 0: unknown field\(s\) 'colour'"),
    ("temperature not a number", with_settings(temperature="hot"),
     r"settings: HuggingFaceConfig\.temperature='hot' is not allowed: expected a number"),
    ("temperature out of range", with_settings(temperature=99),
     r"settings: HuggingFaceConfig\.temperature=99 is not allowed: expected a number from 0\.0 to 2\.0"),
    ("greedy not true or false", with_settings(greedy="no"),
     r"settings: greedy='no' is not allowed: expected true or false"),
    ("max_new_tokens not an integer", with_settings(max_new_tokens=1e30),
     r"settings: HuggingFaceConfig\.max_new_tokens=1e\+30 is not allowed: expected a positive integer"),
    ("max_new_tokens huge integer", raw(FORMAT + '"memory": [], "settings": {"max_new_tokens": ' + "9" * 40 + "}}"),
     r"the integer 9+\.\.\. \(40 digits\) is not allowed: expected at most 20 digits"),
    ("system prompt not text", with_settings(system_prompt=5),
     r"settings\.system_prompt is not allowed: expected text"),
    ("enter_sends not true or false", with_settings(enter_sends="yes"),
     r"settings\.enter_sends='yes' is not allowed: expected true or false"),
    ("unknown setting", with_settings(colour=1), r"unknown setting\(s\) 'colour'"),
    ("NaN", raw(FORMAT + '"memory": [], "settings": {"temperature": NaN}}'),
     r"the number NaN is not allowed: expected finite numbers"),
    ("a number too large for a float", raw(FORMAT + '"memory": [], "settings": {"temperature": 1e400}}'),
     r"the number 1e400 is not allowed: expected finite numbers"),
    ("100,000 levels of nesting", raw(FORMAT + '"memory": [], "x": ' + nested(100_000) + "}"),
     r"nests lists and objects more than 64 levels deep"),
    ("100 levels inside an answer's metadata", with_answer_metadata(v2_document, deep=json.loads(nested(100))),
     r"nests lists and objects more than 64 levels deep"),
    ("too many messages", raw(FORMAT + '"memory": [' + ",".join(['{"role": "user", "content": "x"}'] * (MAX_MESSAGES + 1))
                              + "]}"), rf"{MAX_MESSAGES + 1} messages are not allowed: expected at most {MAX_MESSAGES}"),
    ("not JSON", raw("not json"), r"the text is not valid JSON"),
    ("other format", raw('{"format": "other"}'), r"expected a document with format 'midori-hf-nb/chat-panel'"),
    ("unknown version", raw('{"format": "midori-hf-nb/chat-panel", "version": 9, "memory": []}'),
     r"version 9 is not supported: expected one of 1, 2"),
    ("memory not a list", raw(FORMAT + '"memory": {}}'), r"'memory' must be a list of messages"),
    ("session id not text", raw(FORMAT + '"memory": [], "session_id": 5}'), r"session_id=5 is not allowed"),
]


@pytest.mark.parametrize("make, change, message", [(*row[1], row[2]) for row in HOSTILE_FILES],
                         ids=[row[0] for row in HOSTILE_FILES])
def test_a_hostile_transcript_file_is_refused_naming_the_field(make, change, message):
    text = change(make())
    with pytest.raises(ValueError, match=message) as caught:
        ChatPanel.from_json(ScriptedAgent("x"), text)
    assert str(caught.value).startswith("ChatPanel.from_json: ")
    assert type(caught.value) is not RecursionError


HOSTILE_MEMORY = [
    ("role markup", MemoryEntryData(role="<img src=x onerror=alert(1)>", content="hi"),
     r"ChatPanel\(memory=\.\.\.\): transcript message 0: role='<img src=x onerror=alert\(1\)>' is not allowed"),
    ("content not text", MemoryEntryData(role="user", content=None), r"content=None is not allowed: expected text"),
    ("statistics of the wrong type", MemoryEntryData(role="assistant", content="a", metadata={"total_seconds": "abc"}),
     r"metadata field 'total_seconds'='abc' is not allowed"),
    ("a dict, not an entry", {"role": "user", "content": "hi"}, r"transcript message 0 is dict: expected MemoryEntryData"),
]


@pytest.mark.parametrize("entry, message", [row[1:] for row in HOSTILE_MEMORY], ids=[row[0] for row in HOSTILE_MEMORY])
def test_hostile_memory_is_refused_at_the_boundary(entry, message):
    with pytest.raises(ValueError, match=message):
        ChatPanel(ScriptedAgent("x"), memory=[entry])


def test_the_size_of_the_text_is_bounded(monkeypatch):
    monkeypatch.setattr(chat_document, "MAX_CHARS", 1000)
    text = json.dumps({**v2_document(), "padding": "x" * 2000})
    with pytest.raises(ValueError, match=r"characters are not allowed: expected at most 1000"):
        ChatPanel.from_json(ScriptedAgent("x"), text)


def test_a_valid_document_still_reads_after_the_checks():
    document = read_document(json.dumps(v2_document()))
    assert document.version == chat_document.JSON_VERSION == 3 and [e.role for e in document.memory] == ["user", "assistant"]
    assert document.memory[1].tool_calls[0]["name"] == "add"


# --------------------------------------------------------------------------- version 1


def test_a_version_1_file_is_read_with_its_statistics_under_their_names():
    agent = ScriptedAgent("Continued.")
    panel = ChatPanel.from_json(agent, V1_FILE.read_text())
    entries = panel.entries
    assert [e.role for e in entries] == ["user", "assistant"] * 4
    first = entries[1]
    assert first.content == "The capital of France is Paris." and first.thinking == "Paris is the capital."
    assert (first.stats.completion_tokens, first.stats.finish_reason, first.stats.model) == (17, "stop", "scripted-v1")
    assert first.stats.total_seconds == pytest.approx(0.1967728699996769)
    assert entries[3].stopped and entries[3].stats.finish_reason == "cancelled"
    assert entries[5].error == "RuntimeError: the backend went away"
    assert panel.transcript[7]["tool_calls"][0]["name"] == "add"
    assert (panel.greedy_input.value, panel.max_new_tokens_input.value) == (True, 64)
    assert "17 tokens" in panel.history_html.value and "the backend went away" in panel.history_html.value
    # saved again, it is the current version with the ResponseStats names; read again, nothing changed
    again = json.loads(panel.to_json())
    assert again["version"] == 3 and again["branches"] == []
    answers = [m["metadata"] for m in again["memory"] if m["role"] == "assistant"]
    assert all(not {"tokens", "seconds"} & set(meta) for meta in answers)
    assert answers[0]["completion_tokens"] == 17 and "total_seconds" in answers[0]
    assert ChatPanel.from_json(agent, json.dumps(again)).transcript == panel.transcript
    # the failed exchange is kept in view and left out of what the model is sent
    answer = run(_send(panel, "Go on."))
    assert answer["content"] == "Continued."
    assert [m.content for m in agent.calls[0].payload.memory][-2:] == ["Add 2 and 3.", ""]
    assert "And now?" not in [m.content for m in agent.calls[0].payload.memory]


def test_a_version_1_user_token_count_keeps_its_meaning():
    document = v1_document()
    document["memory"][0]["metadata"] = {"tokens": 9}
    panel = ChatPanel.from_json(ScriptedAgent("x"), json.dumps(document))
    assert panel.transcript[0]["tokens"] == 9 and panel.to_frame()["tokens"].iloc[0] == 9


# --------------------------------------------------------------------------- exports escape what they write


def test_the_exports_escape_everything_they_write():
    panel = ChatPanel(ScriptedAgent("x"), memory=[
        MemoryEntryData(role="user", content="<script>alert(1)</script>"),
        MemoryEntryData(role="assistant", content="*not bold*", tool_calls=[{"name": "<img src=x>", "arguments": {}}],
                        metadata={"error": "<b>failed</b>", "thinking": "<i>hmm</i>", "model": "<img src=y>"}),
    ])
    panel.memory.append(MemoryEntryData(role="<img src=x onerror=alert(1)>", content="edited in by hand"))
    markdown = panel.to_markdown(title="<script>t</script>")
    html = render_transcript_html(panel.memory)
    for tag in ("<script", "<img", "<b>", "<i>"):
        assert tag not in html, (tag, html)
    assert_inert_markdown(markdown)
    assert "\n*not bold*\n" in markdown  # the answer keeps its own Markdown
    assert "\\<img src=x onerror=alert(1)>" in markdown  # what the export adds is escaped, and reads as written
    assert "\\<script>alert(1)\\</script>" in markdown and "&lt;" not in markdown
    assert "midori-chat-other" in html  # an unknown role gets no class of its own
    assert "&lt;b&gt;failed&lt;/b&gt;" in html and "&lt;i&gt;hmm&lt;/i&gt;" in html


# --------------------------------------------------------------------------- the package's shape


def _modules():
    return sorted(PACKAGE.glob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_each_module_is_small_and_each_function_short(path):
    text = path.read_text()
    assert len(text.splitlines()) <= 400, f"{path.name} has {len(text.splitlines())} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 60, f"{path.name}: {node.name} has {length} lines"


def _private_reads(tree: ast.Module) -> tuple[set[str], set[str], list[str]]:
    """(private names this module defines on self or as methods, private self-names it reads, imported private names)."""
    defined, read, imported = set(), set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            imported += [a.name for a in node.names if a.name.startswith("_")]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("_"):
            defined.add(node.name)
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                (defined if isinstance(node.ctx, ast.Store) else read).add(node.attr)
            elif isinstance(node.value, ast.Name):
                imported.append(f"{node.value.id}.{node.attr}")
    return defined, read, imported


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_no_private_name_is_read_across_modules(path):
    defined, read, imported = _private_reads(ast.parse(path.read_text()))
    assert imported == [], f"{path.name} reads private names of other modules: {imported}"
    assert read <= defined, f"{path.name} reads private attributes set elsewhere: {sorted(read - defined)}"


def test_a_hand_edited_memory_list_still_renders():
    panel = ChatPanel(ScriptedAgent("x"))
    panel.memory.append(MemoryEntryData(role="assistant", content=7, tool_calls=[1, {"name": "ok", "arguments": {}}],
                                        metadata={"completion_tokens": "many", "stopped": "yes", "thinking": 3}))
    html = render_transcript_html(panel.memory)
    entry = panel.entries[0]
    assert entry.content == "7" and entry.stats.completion_tokens is None and not entry.stopped
    assert [row["name"] for row in entry.tool_rows()] == ["ok"] and "midori-tool-calls" in html


def test_the_markdown_export_reads_as_plain_text_and_renders_safely():
    panel = ChatPanel(ScriptedAgent("x"), memory=[
        MemoryEntryData(role="user", content="Line one of my message.\nLine two: <b>bold?</b> costs 5.19 s"),
        MemoryEntryData(role="assistant", content="It took 5.19 s. Use `<b>` for bold.",
                        metadata={"completion_tokens": 7, "total_seconds": 5.19, "finish_reason": "stop"}),
    ])
    markdown = panel.to_markdown()
    assert "Line one of my message.  \nLine two: \\<b>bold?\\</b> costs 5.19 s  " in markdown
    assert "It took 5.19 s." in markdown and "*7 tokens · 5.19 s · finish: stop*" in markdown
    assert "\\." not in markdown and "&lt;" not in markdown and "&gt;" not in markdown
    assert_inert_markdown(markdown)
