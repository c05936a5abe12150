"""Hostile transcript files and exports: bytes that are not UTF-8, timestamps no clock or table
holds and lone surrogates are refused at import with errors naming the field; an export that
fails (a full disk, text no file can hold) leaves no file behind, also through the Export button.

No model: the scripted agent answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest

from midori_hf_nb import MemoryEntryData
from midori_hf_nb.notebook import ChatPanel
from midori_hf_nb.notebook.chat.transcript import MAX_TIMESTAMP
from midori_hf_nb.testing import ScriptedAgent

from .conftest import run

pytestmark = pytest.mark.timeout(120)


def document(**message) -> dict:
    panel = ChatPanel(ScriptedAgent("Hello."), memory=[MemoryEntryData(role="user", content="Hi.", timestamp=1.7e9)])
    data = json.loads(panel.to_json())
    data["memory"][0].update(message)
    return data


def test_utf16_and_invalid_utf8_bytes_are_clear_errors():
    text = json.dumps(document())
    cases = {
        "UTF-16": text.encode("utf-16"),          # with a byte order mark
        "UTF-16 text (every": text.encode("utf-16-le"),  # without one
        "UTF-32": text.encode("utf-32"),
        "byte 0xff at offset 1": b"{\xff}",
    }
    for expected, data in cases.items():
        with pytest.raises(ValueError) as caught:
            ChatPanel.from_json(ScriptedAgent("x"), data)
        assert type(caught.value) is not UnicodeDecodeError and expected in str(caught.value)
        assert "UTF-8" in str(caught.value)
    # a UTF-8 byte order mark is only a mark
    panel = ChatPanel.from_json(ScriptedAgent("x"), b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert panel.memory[0].content == "Hi."


@pytest.mark.parametrize("timestamp", [1e17, 1e300, MAX_TIMESTAMP + 1, -1.0])
def test_timestamps_no_clock_or_table_holds_are_refused_at_import(timestamp):
    with pytest.raises(ValueError, match=r"transcript message 0: timestamp=.* is not allowed: expected seconds since"):
        ChatPanel.from_json(ScriptedAgent("x"), json.dumps(document(timestamp=timestamp)))
    with pytest.raises(ValueError, match=r"ChatPanel\(memory=\.\.\.\): transcript message 0: timestamp="):
        ChatPanel(ScriptedAgent("x"), memory=[MemoryEntryData(role="user", content="Hi.", timestamp=timestamp)])


def test_the_latest_timestamp_allowed_renders_everywhere():
    panel = ChatPanel(ScriptedAgent("x"), memory=[MemoryEntryData(role="user", content="Hi.", timestamp=MAX_TIMESTAMP)])
    assert "2262" in panel.pages.html(panel.memory)
    assert str(panel.to_frame()["timestamp"].iloc[0]).startswith("2262-04-11")


@pytest.mark.parametrize("where, change", [
    ("content", lambda m: m.update(content="a\ud800b")),
    ("metadata key", lambda m: m.update(metadata={"\udfff": 1})),
])
def test_a_lone_surrogate_from_a_json_escape_is_refused_at_import(where, change):
    data = document()
    change(data["memory"][0])
    text = json.dumps(data)  # ensure_ascii: the surrogate travels as a \\ud800 escape
    assert "\\ud800" in text or "\\udfff" in text
    with pytest.raises(ValueError, match="lone surrogate") as caught:
        ChatPanel.from_json(ScriptedAgent("x"), text)
    assert "transcript message 0" in str(caught.value) and f"{where} holds" in str(caught.value)


def test_a_lone_surrogate_in_tool_call_arguments_is_refused_from_memory():
    entry = MemoryEntryData(role="assistant", content="ok",
                            tool_calls=[{"name": "f", "arguments": {"text": ["\ud800"]}}])
    with pytest.raises(ValueError, match=r"tool_calls\[0\]\['arguments'\]\['text'\]\[0\] holds a lone surrogate"):
        ChatPanel(ScriptedAgent("x"), memory=[entry])


def _files(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_an_export_of_text_no_file_can_hold_leaves_nothing(tmp_path, monkeypatch):
    panel = ChatPanel(ScriptedAgent("Hello."))
    panel.send("Hi.")  # no running loop: the answer runs to its end here
    panel.memory.append(MemoryEntryData(role="assistant", content="bad \ud800 text"))  # bypassing the checks
    with pytest.raises(ValueError, match="lone surrogate"):
        panel.export(tmp_path)
    assert _files(tmp_path) == []
    monkeypatch.chdir(tmp_path)
    panel.export_button.click()
    assert "Export failed" in panel._notice and _files(tmp_path) == []


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs (root only; skipped elsewhere), unmounted afterwards."""
    folder = tmp_path / f"tiny-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_an_export_onto_a_full_disk_leaves_no_partial_file(full_disk, monkeypatch):
    big = "word " * 120_000  # 600 KB of answer: more than the disk holds
    panel = ChatPanel(ScriptedAgent("x"), memory=[MemoryEntryData(role="user", content="Hi."),
                                                  MemoryEntryData(role="assistant", content=big)])
    with pytest.raises(OSError):
        panel.export(full_disk, stem="chat")
    assert _files(full_disk) == []
    monkeypatch.chdir(full_disk)
    panel.export_button.click()
    assert "Export failed" in panel._notice and _files(full_disk) == []
    # a conversation that fits is written whole, and an existing name is never replaced
    small = ChatPanel(ScriptedAgent("x"), memory=[MemoryEntryData(role="user", content="Hi.")])
    first = small.export(full_disk, stem="chat")
    second = small.export(full_disk, stem="chat")
    assert second.json_path.name == "chat-2.json"
    assert _files(full_disk) == ["chat-2.json", "chat-2.md", "chat.json", "chat.md"]
    assert json.loads(first.json_path.read_text())["memory"][0]["content"] == "Hi."
