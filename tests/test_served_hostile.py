"""The served agent against hostile servers: real local processes (tests/hostile_server.py) on
127.0.0.1 and a free port, each misbehaving in one documented way, started by the test and
stopped by process id. Every test is bounded in time.

Malformed output ends as ``finish_reason="error"`` with ``stats.error`` and the partial answer
kept, or is read as the SSE specification says; what a server sends is bounded (the token budget
counted on the client, one event's size, the answer's size, a total deadline); the API key never
shows; tool calls without ``index`` are assembled and NaN/Infinity are refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
import tracemalloc
import urllib.request
from pathlib import Path

import pytest

from midori_hf_nb import OpenAICompatibleAgent, make_payload, stats_of
from midori_hf_nb.served import OpenAIConfig, ServerAuthError, UnknownModelError
from midori_hf_nb.served.local_server import free_port

from .conftest import run

SCRIPT = Path(__file__).with_name("hostile_server.py")
SECRET = "sk-hostile-test-key-0123456789"
SHORT_KEY = "k3y"
GOOD_ANSWER = "Hello world, this is fine."

pytestmark = pytest.mark.timeout(120)


class HostileServer:
    """``hostile_server.py`` in one mode, as a process on 127.0.0.1."""

    def __init__(self, mode: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen([sys.executable, str(SCRIPT), str(self.port), mode], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1)
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the hostile server ({mode}) did not start") from None
                time.sleep(0.05)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def agent(self, **options) -> OpenAICompatibleAgent:
        return OpenAICompatibleAgent(model="hostile-model", base_url=self.base_url,
                                     **{"api_key": SECRET, "do_sample": False, "max_new_tokens": 64, "timeout": 10,
                                        **options})

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def hostile():
    """Start a hostile server in a mode (``hostile("non-json")``); every one is stopped by PID."""
    started: list[HostileServer] = []

    def start(mode: str) -> HostileServer:
        server = HostileServer(mode)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def bounded(coro, seconds: float = 30):
    """Run ``coro`` and fail (not hang) when it takes longer than ``seconds``."""
    return run(asyncio.wait_for(coro, seconds))


async def streamed(agent, payload=None, **overrides):
    stream = agent.stream(payload or make_payload("Hi"), **overrides)
    pieces = [piece async for piece in stream]
    return pieces, stream.response


def weather(city: str) -> str:
    """Weather of a city.

    Args:
        city: the city name
    """
    return "sunny"


def lookup(token: str, q: str) -> str:
    """Look something up.

    Args:
        token: an access token
        q: the query
    """
    return "found"


# --------------------------------------------------------------------------- 2: malformed output


def test_a_non_json_data_line_ends_as_an_error_keeping_the_partial_answer(hostile):
    agent = hostile("non-json").agent()
    pieces, response = bounded(streamed(agent))
    stats = stats_of(response)
    assert stats.finish_reason == "error"
    assert "not JSON" in stats.error and agent.base_url in stats.error
    assert SECRET not in stats.error and "***" in stats.error  # the line quoted, the key masked
    assert response.response == "Hello" and "".join(pieces) == "Hello"


def test_id_event_retry_and_comment_lines_are_read_as_the_specification_says(hostile):
    pieces, response = bounded(streamed(hostile("sse-fields").agent()))
    stats = stats_of(response)
    assert stats.finish_reason == "stop" and stats.error is None
    assert response.response == GOOD_ANSWER and "".join(pieces) == GOOD_ANSWER


def test_invalid_utf8_is_replaced_as_the_specification_says(hostile):
    pieces, response = bounded(streamed(hostile("invalid-utf8").agent()))
    stats = stats_of(response)
    assert stats.finish_reason == "stop"
    assert response.response == "Hello bad \ufffd\ufffd bytes world, this is fine."
    assert "".join(pieces) == response.response
    assert any("not UTF-8" in note for note in stats.notes)


def test_a_byte_order_mark_before_the_first_event_is_stripped(hostile):
    pieces, response = bounded(streamed(hostile("bom").agent()))
    assert pieces[0] == "Hel" and response.response == GOOD_ANSWER
    assert stats_of(response).finish_reason == "stop"


@pytest.mark.parametrize("mode, prompt_tokens", [("negative-usage", None), ("absurd-usage", 7)])
def test_impossible_usage_counts_are_refused(hostile, mode, prompt_tokens):
    response = bounded(hostile(mode).agent().invoke(make_payload("Hi")))
    stats = stats_of(response)
    assert response.response == GOOD_ANSWER
    assert stats.completion_tokens == 8  # the pieces counted on the client, not the server's number
    assert stats.prompt_tokens == prompt_tokens  # each count is refused on its own
    assert stats.tokens_per_second is not None and 0 < stats.tokens_per_second
    assert any("usage" in note for note in stats.notes)


# --------------------------------------------------------------------------- 3: bounds


def test_a_server_ignoring_max_tokens_stops_at_the_budget(hostile):
    agent = hostile("endless").agent()
    response = bounded(agent.invoke(make_payload("Hi"), max_new_tokens=16))
    stats = stats_of(response)
    assert stats.finish_reason == "length" and stats.completion_tokens == 16
    assert response.response == " ".join(["more"] * 16)
    assert any("max_new_tokens=16" in note for note in stats.notes)
    pieces, streamed_response = bounded(streamed(agent, max_new_tokens=5))
    assert len(pieces) == 5 and stats_of(streamed_response).finish_reason == "length"


def test_endless_reasoning_counts_against_the_budget(hostile):
    response = bounded(hostile("endless-reasoning").agent().invoke(make_payload("Hi"), max_new_tokens=16))
    stats = stats_of(response)
    assert stats.finish_reason == "length" and stats.completion_tokens == 16
    assert response.thinking == " ".join(["thinking"] * 16) and response.response == ""


def test_a_trickling_server_ends_at_the_deadline(hostile):
    assert OpenAIConfig(model="m").deadline == 600.0  # the documented default
    server = hostile("trickle")
    for agent, overrides in ((server.agent(deadline=2.0), {}), (server.agent(), {"deadline": 2.0})):
        started = time.monotonic()
        response = bounded(agent.invoke(make_payload("Hi"), **overrides))
        stats = stats_of(response)
        assert stats.finish_reason == "error" and "deadline=2.0 s" in stats.error
        assert time.monotonic() - started < 20
        assert GOOD_ANSWER.startswith(response.response)  # what came before the deadline is kept


def test_the_answer_size_is_bounded(hostile):
    from midori_hf_nb.served.limits import MAX_ANSWER_CHARS

    response = bounded(hostile("huge-pieces").agent().invoke(make_payload("Hi"), max_new_tokens=1000))
    stats = stats_of(response)
    assert stats.finish_reason == "error" and f"{MAX_ANSWER_CHARS:,}" in stats.error
    assert 0 < len(response.response) <= MAX_ANSWER_CHARS


def test_a_gzip_bomb_does_not_inflate_memory(hostile):
    agent = hostile("gzip-bomb").agent()
    tracemalloc.start()
    try:
        response = bounded(agent.invoke(make_payload("Hi")), 60)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    stats = stats_of(response)
    assert stats.finish_reason == "error" and "longer than" in stats.error
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"


# --------------------------------------------------------------------------- 4: the key


@pytest.mark.parametrize("key", [SECRET, SHORT_KEY])
def test_the_key_in_a_model_id_is_masked(hostile, key):
    agent = hostile("key-in-models").agent(api_key=key)
    with pytest.raises(UnknownModelError) as info:
        bounded(agent.invoke(make_payload("Hi")))
    shown = [str(info.value), repr(info.value), repr(info.value.available)]
    assert not any(key in text for text in shown)
    assert "ft:other-model:***:v1" in info.value.available
    assert key not in repr(bounded(agent.list_models()))


@pytest.mark.parametrize("key", [SECRET, SHORT_KEY])
def test_a_refusal_repeating_a_short_key_is_masked(hostile, key):
    with pytest.raises(ServerAuthError) as info:
        bounded(hostile("refuse-key").agent(api_key=key).invoke(make_payload("Hi")))
    assert key not in str(info.value) and "***" in str(info.value)


@pytest.mark.parametrize("key", [SECRET, SHORT_KEY])
def test_the_key_echoed_by_a_server_never_shows(hostile, key, caplog):
    agent = hostile("echo-key").agent(api_key=key)
    with caplog.at_level(logging.DEBUG):
        response = bounded(agent.invoke_with_tools(make_payload("Hi"), [lookup]))
        pieces, streamed_response = bounded(streamed(agent))
    assert caplog.records  # the HTTP client logged at DEBUG (with the echoed header)
    assert not any(key in record.getMessage() for record in caplog.records)
    stats = stats_of(response)
    shown = [response.response, response.thinking, json.dumps(response.tool_calls), json.dumps(response.metadata),
             repr(response), "".join(pieces), streamed_response.response]
    assert not any(key in text for text in shown)
    assert response.response == "Your key: *** (keep it safe)." and "".join(pieces) == response.response
    assert response.tool_calls[0]["arguments"] == {"token": "***", "q": "x"}
    assert any("API key" in note for note in stats.notes)


def test_transcripts_and_exports_carry_no_key(hostile, tmp_path):
    from midori_hf_nb.notebook import ChatPanel

    panel = ChatPanel(hostile("echo-key").agent())

    async def chat():
        return await panel.send("Hi")

    bounded(chat())
    export = panel.export(tmp_path)
    texts = [panel.to_markdown(), panel.to_json(), json.dumps(panel.transcript, default=str),
             *(path.read_text(encoding="utf-8") for path in sorted(tmp_path.iterdir()))]
    assert len(texts) > 3 and export is not None
    assert not any(SECRET in text for text in texts)
    assert all("***" in text for text in texts[:2])


# --------------------------------------------------------------------------- 5: tool-call deltas


def test_tool_call_deltas_without_index_are_assembled_by_id(hostile):
    response = bounded(hostile("no-index").agent().invoke_with_tools(make_payload("Weather?"), [weather]))
    assert response.tool_calls == [{"name": "weather", "arguments": {"city": "Rome"}, "id": "call_a"},
                                   {"name": "weather", "arguments": {"city": "Oslo"}, "id": "call_b"}]
    assert not stats_of(response).tool_parse_errors


def test_nan_and_infinity_arguments_are_refused_as_parse_errors(hostile):
    response = bounded(hostile("nan-arguments").agent().invoke_with_tools(make_payload("Weather?"), [weather]))
    assert response.tool_calls == [{"name": "weather", "arguments": {"city": "Nice", "days": 2}, "id": "call_ok"}]
    errors = stats_of(response).tool_parse_errors
    assert len(errors) == 2 and "NaN" in errors[0] and "Infinity" in errors[1]


def test_nan_and_infinity_are_refused_in_calls_written_as_text():
    from midori_hf_nb.parsing import normalise_call, parse_tool_calls_detailed

    for value in ("NaN", "Infinity", "-Infinity", "1e999"):
        call, error = normalise_call({"name": "f", "arguments": f'{{"x": {value}}}'})
        assert call is None and "not plain JSON" in error, value
        parsed = parse_tool_calls_detailed(f'<tool_call>{{"name": "f", "arguments": {{"x": {value}}}}}</tool_call>')
        assert parsed.calls == [] and any("not plain JSON" in e for e in parsed.errors), value
