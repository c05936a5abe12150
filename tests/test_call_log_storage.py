"""The call log's file: API keys never in it, writes that fail (read-only, full, in the way,
locked) never failing a generation, the size bound, deletion that leaves no trace in the file's
bytes, and several processes writing at once."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from midori_hf_nb import HuggingFaceLocalAgent, OpenAICompatibleAgent, log, make_payload
from midori_hf_nb.log import schema
from midori_hf_nb.log.writer import LogWriteWarning
from midori_hf_nb.served import ServerAuthError
from midori_hf_nb.testing import ScriptedAgent

from .conftest import ROOT, log_rows, run

RIGHT_KEY = "sk-right-key-0123456789"
WRONG_KEY = "sk-wrong-key-9876543210"


def file_bytes(path: Path) -> bytes:
    """Every byte of the log: the database, its write-ahead log and its shared-memory index."""
    return b"".join(Path(f"{path}{suffix}").read_bytes() for suffix in ("", "-wal", "-shm")
                    if Path(f"{path}{suffix}").exists())


@pytest.fixture(scope="module")
def tiny_agent(tiny_model):
    agent = HuggingFaceLocalAgent(model=str(tiny_model), do_sample=False, max_new_tokens=6, progress=False)
    run(agent.load())
    yield agent
    run(agent.unload_model())


@contextlib.contextmanager
def log_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found: list = []
        yield found
        log.flush(30)
    found.extend(w for w in caught if issubclass(w.category, LogWriteWarning))


def generations(tiny_agent, count: int = 6) -> list[str]:
    """Scripted calls and one real generation; their answers."""
    answers = [run(ScriptedAgent(f"answer {i} " + "z" * 2000).invoke(make_payload(f"q{i} " + "y" * 2000))).response
               for i in range(count)]
    answers.append(run(tiny_agent.invoke(make_payload("Hello"))).response)
    return answers


# --------------------------------------------------------------------------- keys


@pytest.mark.slow  # the gateway fronts `transformers serve` on the offline default model
def test_api_keys_in_headers_settings_and_error_text_never_reach_the_file(call_log, gateway, served_server,
                                                                          monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", RIGHT_KEY)  # the agent's key from the environment, sent as a header
    agent = OpenAICompatibleAgent(model=served_server.model, base_url=gateway.base_url, do_sample=False,
                                  max_new_tokens=8)
    good = run(agent.invoke(make_payload("What is the capital of France?"), stop=[RIGHT_KEY]))  # and in a setting
    refused = OpenAICompatibleAgent(model=served_server.model, base_url=gateway.base_url, api_key=WRONG_KEY)
    with pytest.raises(ServerAuthError):  # the gateway's error repeats the key it was sent
        run(refused.invoke(make_payload("Hi")))
    with pytest.raises(RuntimeError):
        run(ScriptedAgent(RuntimeError(f"upstream refused Authorization: Bearer {RIGHT_KEY}")).invoke(make_payload("x")))
    rows = log_rows(call_log)
    assert [r["backend"] for r in rows] == ["openai", "openai", "scripted"] and good.response
    assert rows[0]["response"] == good.response and rows[0]["base_url"] == gateway.base_url
    assert json.loads(rows[0]["options_json"])["stop"] == ["***"]
    assert "HTTP 401" in rows[1]["error"] and "***" in rows[1]["error"]
    assert rows[2]["error"].endswith("Bearer ***")
    data = file_bytes(call_log)
    assert RIGHT_KEY.encode() not in data and WRONG_KEY.encode() not in data
    assert b"right-key" not in data and b"wrong-key" not in data


# --------------------------------------------------------------------------- writes that fail


@contextlib.contextmanager
def tmpfs(where: Path, options: str):
    """A small tmpfs at ``where`` (root only); skips where it cannot be mounted."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def unwritable(kind: str, tmp_path: Path):
    """A log path that cannot be written: a file where its folder should be, or a read-only folder."""
    if kind == "file in the way":
        (tmp_path / "blocked").write_text("not a folder")
        return contextlib.nullcontext(tmp_path / "blocked" / "logs.db")
    if os.geteuid() == 0:  # root writes into any folder: a read-only file system instead
        return _read_only_mount(tmp_path)
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    return contextlib.nullcontext(folder / "logs.db")


@contextlib.contextmanager
def _read_only_mount(tmp_path: Path):
    with tmpfs(tmp_path / "ro", "ro,size=64k") as where:
        yield where / "logs.db"


@pytest.mark.parametrize("kind", ["file in the way", "read-only folder"])
def test_a_log_that_cannot_be_written_leaves_every_generation_working_with_one_warning(kind, call_log, tmp_path,
                                                                                        tiny_agent):
    with unwritable(kind, tmp_path) as path:
        log.on(path)
        with log_warnings() as found:
            answers = generations(tiny_agent)
        assert answers[:6] == [f"answer {i} " + "z" * 2000 for i in range(6)] and isinstance(answers[6], str)
        assert len(found) == 1, [str(w.message) for w in found]
        assert f"cannot open the call log at {path}" in str(found[0].message) and "MIDORI_HF_NB_LOG" in str(found[0].message)
        assert not path.exists()


def test_a_full_disk_leaves_every_generation_working_with_one_warning(call_log, tmp_path, tiny_agent):
    with tmpfs(tmp_path / "small", "size=512k") as where:
        path = log.on(where / "logs.db")
        run(ScriptedAgent("first").invoke(make_payload("before the disk fills")))
        assert [r["prompt"] for r in log_rows(path)] == ["before the disk fills"]
        with open(where / "filler", "wb") as filler, contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        with log_warnings() as found:
            answers = generations(tiny_agent, count=20)
        assert len(answers) == 21 and answers[19] == "answer 19 " + "z" * 2000
        assert len(found) == 1, [str(w.message) for w in found]
        assert "disk (or the file's folder) is full" in str(found[0].message)
        (where / "filler").unlink()
        run(ScriptedAgent("later").invoke(make_payload("after space was freed")))
        assert log_rows(path)[-1]["prompt"] == "after space was freed"  # the log goes on


def test_a_file_locked_by_another_writer_leaves_generation_working_with_one_warning(call_log, monkeypatch):
    run(ScriptedAgent("first").invoke(make_payload("before the lock")))
    log.flush()
    from midori_hf_nb.log.writer import WRITER

    WRITER.close_target(call_log)
    monkeypatch.setattr(schema, "BUSY_TIMEOUT_SECONDS", 0.2)
    holder = sqlite3.connect(str(call_log), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with log_warnings() as found:
            answers = [run(ScriptedAgent(f"a{i}").invoke(make_payload(f"while locked {i}"))).response for i in range(4)]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert answers == ["a0", "a1", "a2", "a3"]
    assert len(found) == 1 and "locked" in str(found[0].message)
    run(ScriptedAgent("free").invoke(make_payload("after the lock")))
    assert [r["prompt"] for r in log_rows(call_log)][-1] == "after the lock"


def test_the_size_bound_stops_recording_with_one_clear_warning_until_entries_are_deleted(call_log):
    log.set_max_bytes(256 * 1024)
    with log_warnings() as found:
        answers = [run(ScriptedAgent("ok " + "w" * 30_000).invoke(make_payload(f"big {i} " + "v" * 30_000))).response[:2]
                   for i in range(20)]
    assert answers == ["ok"] * 20
    assert len(found) == 1
    message = str(found[0].message)
    assert "reached its size bound of 256 KiB" in message
    assert "MIDORI_HF_NB_LOG_MAX_MB" in message and "midori_hf_nb.log.delete" in message
    kept = len(log_rows(call_log))
    assert 0 < kept < 20
    result = log.delete(everything=True)
    assert result.deleted == kept and result.size_after < 256 * 1024
    run(ScriptedAgent("small").invoke(make_payload("after deleting")))
    assert [r["prompt"] for r in log_rows(call_log)] == ["after deleting"]


# --------------------------------------------------------------------------- deletion


def test_deleted_text_leaves_no_trace_in_the_files_bytes(call_log):
    secret, kept = "Quetzalcoatlusflux", "Brontosaurusmarker"
    agent = ScriptedAgent([f"{secret} answer one", f"The {secret} again", f"{kept} stays", "dated one"])
    with log.context(conversation_id="private", conversation_name="the secret one"):
        first = run(agent.invoke(make_payload(f"Tell me about {secret}")))
        run(agent.invoke(make_payload(f"More {secret} please")))
    with log.context(conversation_id="public"):
        run(agent.invoke(make_payload(f"And {kept}?")))
    log.flush()
    before = file_bytes(call_log)
    assert secret.encode() in before and secret.lower().encode() in before  # the text, and the index's words
    result = log.delete(conversation="the secret one")
    assert (result.deleted, result.conversations, result.compacted, result.wal_emptied) == (2, 1, True, True)
    after = file_bytes(call_log)
    assert secret.encode() not in after and secret.lower().encode() not in after
    assert b"the secret one" not in after and first.metadata["log_id"].encode() not in after
    assert kept.encode() in after and kept.lower().encode() in after  # what was not deleted is all there
    assert list(log.logs(query=kept)["prompt"]) == [f"And {kept}?"] and log.logs(query=secret).empty


def test_deletion_by_id_and_by_time_range(call_log):
    agent = ScriptedAgent(["one", "two", "three"])
    ids = [run(agent.invoke(make_payload(p))).metadata["log_id"] for p in ("first", "second", "third")]
    assert log.delete(ids=ids[1]).deleted == 1
    assert [r["prompt"] for r in log_rows(call_log)] == ["first", "third"]
    assert log.delete(until="2000-01-01").deleted == 0
    assert log.delete(since="1h").deleted == 2 and log_rows(call_log) == []
    with pytest.raises(ValueError, match="everything=True"):
        log.delete()


# --------------------------------------------------------------------------- many writers

WORKER = """
import asyncio, json, sys
from midori_hf_nb import HuggingFaceLocalAgent, log, make_payload
from midori_hf_nb.testing import ScriptedAgent

worker, calls, real_calls, tiny = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
scripted = ScriptedAgent([f"answer {worker}-{i} " + "x" * (i % 97) for i in range(calls)], delay=0.0005,
                         model=f"scripted-{worker}")

async def main():
    with log.context(conversation_id=f"worker-{worker}"):
        for i in range(calls - real_calls):
            await scripted.invoke(make_payload(f"question {worker}-{i}"))
        real = HuggingFaceLocalAgent(model=tiny, do_sample=False, max_new_tokens=4, progress=False)
        for i in range(calls - real_calls, calls):
            await real.invoke(make_payload(f"question {worker}-{i}"))

asyncio.run(main())
"""


def test_three_processes_writing_at_once_lose_nothing(tmp_path, tiny_model):
    path, calls, real_calls = tmp_path / "shared" / "logs.db", 300, 3
    env = {**os.environ, "MIDORI_HF_NB_LOG": str(path), "PYTHONPATH": str(ROOT)}
    workers = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(WORKER), str(w), str(calls), str(real_calls),
                                 str(tiny_model)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for w in range(3)]
    results = [(w.wait(timeout=600), w.stderr.read()) for w in workers]
    for w in workers:
        w.stdout.close()
        w.stderr.close()
    assert [code for code, _ in results] == [0, 0, 0], [err[-2000:] for _, err in results]
    conn = sqlite3.connect(str(path))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = conn.execute("SELECT conversation_id, prompt, response, model, pid, prompt_json, response_json, "
                            "options_json FROM responses").fetchall()
        assert conn.execute("SELECT DISTINCT script FROM responses").fetchall() == [("python -c",)]  # the origin
        assert conn.execute("SELECT count(*) FROM responses_fts WHERE responses_fts MATCH 'question'").fetchone() == (900,)
    finally:
        conn.close()
    assert len(rows) == 3 * calls == 900
    for worker in range(3):
        mine = [r for r in rows if r[0] == f"worker-{worker}"]
        assert sorted(r[1] for r in mine) == sorted(f"question {worker}-{i}" for i in range(calls))
        assert len({r[4] for r in mine}) == 1  # one process wrote them
        for conversation, prompt, response, model, _, prompt_json, response_json, options_json in mine:
            index = int(prompt.rsplit("-", 1)[1])
            assert json.loads(prompt_json)["user"] == prompt and json.loads(response_json)["metadata"]
            json.loads(options_json)
            if index < calls - real_calls:  # scripted: the exact answer, whole
                expected = (f"answer {worker}-{index} " + "x" * (index % 97)).strip()
                assert response == expected and model == f"scripted-{worker}"
            else:  # a real generation on the tiny model
                assert model == str(tiny_model) and isinstance(response, str)
