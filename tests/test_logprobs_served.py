"""Token probabilities from served models, against real server processes on 127.0.0.1:
``transformers serve`` (which ignores the parameters: the answer says so in a note), a small server
that returns them in the OpenAI format (``served_logprobs_server.py``: the same structure as the
local agent's, the same tokens and log-probabilities), and the same server refusing them (the
answer comes without them, and the note says why)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from midori_hf_nb import OpenAICompatibleAgent, make_payload
from midori_hf_nb.logprobs import BranchError, LogprobsResponse, token_probability
from midori_hf_nb.notebook import token_view

from .conftest import loaded_agent, run

ROOT = Path(__file__).resolve().parents[1]
SERVER = Path(__file__).with_name("served_logprobs_server.py")
QUESTION = "What is the capital of France?"


class LogprobsServer:
    """``served_logprobs_server.py`` as a process (stopped by its process id)."""

    def __init__(self, model_dir: Path, *options: str) -> None:
        from midori_hf_nb.served.local_server import free_port

        self.port = free_port()
        self.model = str(model_dir)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen([sys.executable, str(SERVER), str(self.port), self.model, *options],
                                        stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{self.base_url}/models", timeout=2)
                return
            except (OSError, urllib.error.URLError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the token-probability test server did not start") from None
                time.sleep(0.3)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def agent(self, **options) -> OpenAICompatibleAgent:
        return OpenAICompatibleAgent(model=self.model, base_url=self.base_url, do_sample=False, max_new_tokens=16,
                                     **options)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


@pytest.fixture(scope="module")
def logprobs_server(default_model_dir):
    server = LogprobsServer(default_model_dir)
    try:
        yield server
    finally:
        server.stop()


def test_the_request_asks_the_server_only_when_the_call_does():
    agent = OpenAICompatibleAgent(model="m", base_url="http://127.0.0.1:9/v1")
    payload = make_payload(QUESTION)
    body = agent.request_body(payload, agent.resolve_settings({"top_logprobs": 4}))
    assert body["logprobs"] is True and body["top_logprobs"] == 4 and "extra_body" not in body
    alone = agent.request_body(payload, agent.resolve_settings({"logprobs": True}))
    assert alone["logprobs"] is True and "top_logprobs" not in alone
    plain = agent.request_body(payload, agent.resolve_settings({}))
    assert "logprobs" not in plain and "top_logprobs" not in plain
    assert "logprobs" not in agent.request_body(payload, agent.resolve_settings({"prompt_logprobs": True}))


@pytest.mark.slow
def test_transformers_serve_returns_none_and_the_note_says_so(served_agent, served_server):
    response = run(served_agent.invoke(make_payload(QUESTION), top_logprobs=3, max_new_tokens=12))
    assert "Paris" in response.response  # the answer is not lost
    assert isinstance(response, LogprobsResponse) and response.logprobs.content == []
    assert response.logprobs.note == (f"the server at {served_server.base_url} returned no token probabilities (it "
                                      "ignores or does not support the logprobs and top_logprobs parameters)")
    assert response.metadata["logprobs"]["note"] == response.logprobs.note
    assert "returned no token probabilities" in token_view(response).html
    with pytest.raises(BranchError, match="only answers of a local agent"):
        run(response.branch(0, 0))


@pytest.mark.slow
def test_a_server_that_returns_them_gives_the_local_structure(logprobs_server, default_model_dir):
    served = logprobs_server.agent()
    payload = make_payload(QUESTION, "You are a helpful assistant.")

    async def stream():
        events = [event async for event in served.stream(payload, events=True, top_logprobs=3)]
        return events, events[-1].data

    events, response = run(stream())
    for local in loaded_agent(default_model_dir, torch_dtype="float32", kv_reuse=False):
        expected = run(local.invoke(payload, greedy=True, max_new_tokens=16, top_logprobs=3))
    found = response.logprobs
    assert found.source == "server" and found.note is None and found.top == 3
    assert "Paris" in response.response
    assert [t.token for t in found.content] == [t.token for t in expected.logprobs.content]
    for mine, theirs in zip(found.content, expected.logprobs.content):
        assert mine.logprob == pytest.approx(theirs.logprob, abs=1e-4)
        assert mine.bytes == theirs.bytes
        assert [a.token for a in mine.top_logprobs] == [a.token for a in theirs.top_logprobs]
        assert mine.processed_logprob is None and mine.rank is None and mine.id is None  # a server gives raw values
    assert [r for e in events for r in (e.logprobs or [])] == found.content  # streamed with the pieces
    assert sum(1 for e in events if e.kind == "text" and e.logprobs) > 2
    step = next(i for i, t in enumerate(found.content) if t.token == " Paris")
    assert token_probability(response, step, " Paris") == pytest.approx(token_probability(expected, step), abs=1e-4)
    assert response.metadata["logprobs"]["content"][step]["token"] == " Paris"


@pytest.mark.slow
def test_a_server_that_refuses_them_answers_without_them(default_model_dir):
    server = LogprobsServer(default_model_dir, "--refuse")
    try:
        response = run(server.agent().invoke(make_payload(QUESTION), top_logprobs=2))
    finally:
        server.stop()
    assert "Paris" in response.response and response.logprobs.content == []
    assert "refused the logprobs parameters (HTTP 422" in response.logprobs.note
    assert "not supported by this server" in response.logprobs.note
