"""The notebook layer on a served model: streaming into a cell, the chat panel, ``%midori use
--backend openai``, the memory readout and a local-vs-served ``compare()``, against the session's
real ``transformers serve`` process (tests/served_server.py)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest

from midori_hf_nb import OpenAICompatibleAgent, compare, make_payload
from midori_hf_nb.notebook.chat.generation import short_model_name
from midori_hf_nb.notebook import ChatPanel, MemoryReadout, RecordingSink, current_session, display_stream, stream_to_cell
from midori_hf_nb.notebook.memory import memory_readout
from midori_hf_nb.stats import stats_of

from .conftest import run
from .test_notebook_magics import execute, shell  # noqa: F401  (shell: the magics' shell fixture)
from .test_notebook_streaming import InterruptingSink

pytestmark = pytest.mark.slow  # the default model, locally and behind a real server

PARIS = "What is the capital of France?"
LONG = "Write a long story about a cat who travels around the world."


def test_stream_to_cell_shows_the_served_answer(served_agent):
    sink = RecordingSink(keep=True)
    response = run(stream_to_cell(served_agent, make_payload(PARIS), sink=sink, throttle=0))
    assert "Paris" in response.response and stats_of(response).backend == "openai"
    final = sink.last["text/html"]
    assert "Paris" in final and "tokens/s" in final and "finish: stop" in final
    assert sink.updates >= 4  # piece by piece, as the server sent them


def test_an_interrupt_closes_the_served_stream_and_keeps_the_partial_answer(served_agent):
    sink = InterruptingSink(after_pieces=3)
    response = display_stream(served_agent, make_payload(LONG), sink=sink, throttle=0, max_new_tokens=200)
    assert sink.fired
    stats = stats_of(response)
    assert stats.finish_reason == "cancelled" and 0 < stats.completion_tokens < 100
    assert response.response and "finish: cancelled (interrupted)" in sink.last["text/html"]


async def _wait_for(predicate, timeout: float = 120.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def test_chat_panel_chats_with_the_served_model_and_stops_it(served_agent):
    panel = ChatPanel(served_agent, greedy=True, max_new_tokens=24)

    async def scenario():
        first = await panel.send(PARIS)
        task = panel.send(LONG)
        assert isinstance(task, asyncio.Task)
        await _wait_for(lambda: len(panel.partial) >= 10)
        panel.stop_button.click()
        return first, await panel.wait()

    first, stopped = run(scenario())
    assert "Paris" in first["content"] and first["finish_reason"] == "stop"
    assert stopped["stopped"] and stopped["finish_reason"] == "cancelled" and stopped["content"]
    stats = stats_of(panel.memory[1])
    assert stats.backend == "openai" and stats.base_url == served_agent.base_url
    assert [t["role"] for t in panel.transcript] == ["user", "assistant", "user", "assistant"]
    assert "Paris" in panel.history_html.value
    # named by a short model id and the host, not by the raw cache path the server reports
    short = short_model_name(served_agent.config.model)
    label = f"{short} @ {urlsplit(served_agent.base_url).netloc}"
    assert "/" not in short and f"Chat · {label}" in panel.title_html.value
    run(_send_one(panel))
    assert f"model: {label}" in panel.status and served_agent.config.model not in panel.status


async def _send_one(panel):
    return await panel.send(PARIS)


def test_midori_use_backend_openai(shell, served_server):
    line = (f"%midori use --backend openai --base-url {served_server.base_url} --model {served_server.model} "
            "--greedy --max-new-tokens 24 --name served")
    result, captured = execute(shell, line)
    assert result.success, captured.stderr
    assert f"on the server at {served_server.base_url}" in captured.stdout
    agent = shell.user_ns["served"]
    assert isinstance(agent, OpenAICompatibleAgent) and current_session().agent is agent
    assert agent.config.greedy and agent.config.max_new_tokens == 24
    result, captured = execute(shell, f"%%midori --name answer --throttle 0\n{PARIS}")
    assert result.success, captured.stderr
    assert "Paris" in shell.user_ns["answer"].response
    assert "Paris" in captured.outputs[-1].data["text/html"]
    result, captured = execute(shell, "%midori status")
    assert "OpenAICompatibleAgent" in captured.stdout and "memory is on the server" in captured.stdout
    result, captured = execute(shell, "%midori memory --name mem")
    assert result.success, captured.stderr
    readout = shell.user_ns["mem"]
    # local models other tests loaded may still be in this process; the served one is never among them
    assert isinstance(readout, MemoryReadout) and served_server.model not in [m["model"] for m in readout.models]
    assert readout.remote == [{"model": served_server.model, "agent": "OpenAICompatibleAgent",
                               "base_url": served_server.base_url}]
    frame = readout.to_frame()
    assert frame["detail"].str.contains(f"remote/unknown.*served at {served_server.base_url}").any()


def test_midori_use_backend_refusals(shell, monkeypatch):
    result, captured = execute(shell, "%midori use --backend openai --base-url http://127.0.0.1:9/v1")
    assert not result.success and "--model NAME is required" in captured.stderr
    result, captured = execute(shell, "%midori use --backend openai --base-url nope --model m")
    assert not result.success and "OpenAIConfig.base_url" in captured.stderr
    monkeypatch.delenv("MISSING_KEY_VAR", raising=False)
    result, captured = execute(shell, "%midori use --backend openai --base-url http://h/v1 --model m "
                                      "--api-key-env MISSING_KEY_VAR")
    assert not result.success and "'MISSING_KEY_VAR' (--api-key-env) is not set" in captured.stderr
    result, captured = execute(shell, "%midori use --model m")
    assert not result.success and "--model go with --backend openai" in captured.stderr
    monkeypatch.setenv("SERVED_KEY", "sk-from-env-55555")
    result, captured = execute(shell, "%midori use --backend openai --base-url http://h/v1 --model m "
                                      "--api-key-env SERVED_KEY --name a")
    assert result.success and shell.user_ns["a"].config.api_key.reveal() == "sk-from-env-55555"
    assert "sk-from-env-55555" not in captured.stdout


def test_memory_readout_says_the_served_model_is_remote(served_agent):
    readout = memory_readout(served_agent)
    assert readout.remote[0]["base_url"] == served_agent.base_url
    assert "served at" in repr(readout) and "remote/unknown" in repr(readout)


def test_compare_local_and_served_in_one_table(default_agent, served_agent):
    prompts = [PARIS, "What is the capital of Italy?"]
    frame = compare(prompts, models={"local": default_agent, "served": served_agent},
                    settings={"greedy": [True], "max_new_tokens": [16]}, concurrency=2, progress=False)
    assert len(frame) == 4 and set(frame["model"]) == {"local", "served"}
    assert (frame["status"] == "ok").all()
    paris = frame[frame["prompt"] == PARIS]
    assert paris["response"].str.contains("Paris").all()
    served = frame[frame["model"] == "served"]
    local = frame[frame["model"] == "local"]
    assert served["batch"].nunique() == 2  # one invoke per row, run concurrently
    assert local["batch"].nunique() == 1  # the local rows ran as one batch
    assert (served["completion_tokens"] > 0).all() and (served["time_to_first_token"] > 0).all()
