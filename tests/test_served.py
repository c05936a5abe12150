"""OpenAICompatibleAgent against a real ``transformers serve`` process on 127.0.0.1 (the default
model, greedy): answers, streams, tool calls, memory, overrides, cancellation, a server killed
mid-stream, and the errors of an unreachable server, a refused key, an unknown model and a
timeout. The server is started once per session (tests/served_server.py) and stopped by its PID.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time

import pytest

from midori_hf_nb import (
    ConfigError,
    MemoryEntryData,
    OpenAICompatibleAgent,
    StreamEvent,
    make_payload,
    stats_of,
)
from midori_hf_nb.served import (
    ServerAuthError,
    ServerTimeoutError,
    ServerUnreachableError,
    UnknownModelError,
)
from midori_hf_nb.served.local_server import free_port

from .conftest import run
from .served_server import start_server

pytestmark = pytest.mark.slow  # the default model behind a real server

PARIS = "What is the capital of France?"
LONG = "Write a long story about a cat who travels around the world."
SECRET = "sk-wrong-secret-key-987654321"


def get_weather(city: str) -> str:
    """Current weather of a city.

    Args:
        city: the city name
    """
    return "sunny"


def _call_text(city: str) -> str:
    return json.dumps({"tool_calls": [{"name": "get_weather", "arguments": {"city": city}}]})


def weather_payload(city: str = "Rome"):
    """A payload whose earlier turns show the model how to answer with a call (few-shot)."""
    memory = [MemoryEntryData("user", "Weather in Paris?"), MemoryEntryData("assistant", _call_text("Paris")),
              MemoryEntryData("user", "Weather in Berlin?"), MemoryEntryData("assistant", _call_text("Berlin"))]
    return make_payload(f"Weather in {city}?", "Answer with a tool call as JSON.", memory=memory)


def agent_on(server, **options) -> OpenAICompatibleAgent:
    return OpenAICompatibleAgent(model=server.model, base_url=server.base_url,
                                 **{"do_sample": False, "max_new_tokens": 24, **options})


# --------------------------------------------------------------------------- answers and streams


def test_answers_paris_with_usage_and_timing(served_agent, served_server):
    response = run(served_agent.invoke(make_payload(PARIS)))
    assert "Paris" in response.response
    stats = stats_of(response)
    assert stats.backend == "openai" and stats.device == "remote"
    assert stats.base_url == served_server.base_url
    assert stats.finish_reason == "stop" and stats.server_finish_reason == "stop"
    assert stats.model == served_server.model
    assert stats.prompt_tokens > 10 and 3 <= stats.completion_tokens <= 24  # the server's own usage
    assert 0 < stats.time_to_first_token <= stats.total_seconds <= stats.wall_seconds
    assert stats.call_to_first_token >= stats.time_to_first_token
    assert stats.tokens_per_second == pytest.approx(stats.completion_tokens / stats.total_seconds)
    assert stats.raw_text.strip() == response.response


def test_stream_pieces_concatenate_to_the_final_text(served_agent):
    async def go():
        stream = served_agent.stream(make_payload(PARIS), events=True)
        return [event async for event in stream], stream.response

    events, response = run(go())
    assert all(isinstance(e, StreamEvent) for e in events)
    texts = [e.text for e in events if e.kind == "text"]
    assert len(texts) >= 3  # arrived piece by piece
    assert "".join(texts) == response.response and "Paris" in response.response
    assert events[-1].kind == "done" and events[-1].data is response

    async def plain():
        return [piece async for piece in served_agent.stream(make_payload(PARIS))]

    assert "".join(run(plain())) == response.response  # greedy: the same answer again


def test_invoke_and_stream_give_the_same_greedy_answer(served_agent):
    answer = run(served_agent.invoke(make_payload(PARIS))).response

    async def pieces():
        return "".join([p async for p in served_agent.stream(make_payload(PARIS))])

    assert run(pieces()) == answer


def test_memory_reaches_the_model(served_agent):
    memory = [MemoryEntryData("user", "My name is Ada."), MemoryEntryData("assistant", "Nice to meet you, Ada!")]
    response = run(served_agent.invoke(make_payload("What is my name?", memory=memory), max_new_tokens=12))
    assert "Ada" in response.response
    without = run(served_agent.invoke(make_payload("What is my name?"), max_new_tokens=12))
    assert "Ada" not in without.response


def test_per_call_overrides(served_agent):
    short = run(served_agent.invoke(make_payload(LONG), max_new_tokens=3))
    stats = stats_of(short)
    assert stats.finish_reason == "length" and stats.completion_tokens == 3 and stats.max_new_tokens == 3
    assert stats.do_sample is False and stats.temperature == 0.0
    sampled = run(served_agent.invoke(make_payload(LONG), max_new_tokens=3, temperature=0.9, seed=7))
    assert stats_of(sampled).do_sample is True and stats_of(sampled).seed == 7
    again = run(served_agent.invoke(make_payload(LONG), max_new_tokens=3, temperature=0.9, seed=7))
    assert again.response == sampled.response  # the server seeds its sampling with the call's seed
    with pytest.raises(ConfigError, match="logits_processor.*served model cannot run Python"):
        run(served_agent.invoke(make_payload(PARIS), logits_processor=[lambda ids, scores: scores]))
    with pytest.raises(ConfigError, match="temperature"):
        run(served_agent.invoke(make_payload(PARIS), temperature=5))


def test_a_server_refusal_names_the_field(served_agent):
    from midori_hf_nb.served import ServerRequestError

    with pytest.raises(ServerRequestError, match=r"HTTP 422.*top_k") as info:
        run(served_agent.invoke(make_payload(PARIS), top_k=5, temperature=0.5))  # transformers serve has no top_k
    assert info.value.status == 422


# --------------------------------------------------------------------------- tools


def test_tool_call_read_from_the_answer(served_agent):
    response = run(served_agent.invoke_with_tools(weather_payload("Rome"), [get_weather], max_new_tokens=32))
    assert [(c["name"], c["arguments"]) for c in response.tool_calls] == [("get_weather", {"city": "Rome"})]
    assert response.tool_calls[0]["id"]
    stats = stats_of(response)
    assert stats.tools_offered == ["get_weather"] and stats.unknown_tool_calls == []
    assert "tool_calls" not in response.response


def test_tool_call_streams_as_an_event(served_agent):
    async def go():
        stream = served_agent.stream_with_tools(weather_payload("Madrid"), [get_weather], max_new_tokens=32)
        return [e async for e in stream], stream.response

    events, response = run(go())
    calls = [e for e in events if e.kind == "tool_call"]
    assert [(e.data["name"], e.data["arguments"]) for e in calls] == [("get_weather", {"city": "Madrid"})]
    assert calls[0].data["id"] == response.tool_calls[0]["id"]
    assert not any("tool_calls" in e.text for e in events if e.kind == "text")


def test_tools_are_sent_as_openai_tools(served_agent):
    from midori_hf_nb.tools import tool_schemas

    call = served_agent.resolve_settings({})
    body = served_agent.request_body(weather_payload(), call, tool_schemas([get_weather]))
    assert body["tools"][0]["type"] == "function" and body["tools"][0]["function"]["name"] == "get_weather"
    assert body["stream"] is True and body["temperature"] == 0.0 and body["max_tokens"] == 24


# --------------------------------------------------------------------------- a server that parses answers

#: ``transformers serve`` reads a tokenizer's ``response_template`` and sends what it matches as
#: ``tool_calls`` and ``reasoning_content`` (ChatML markers, as the default model's template has them)
RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "reasoning_content": {"open": "<think>", "close": "</think>", "content": "text"},
        "tool_calls": {"open_pattern": r"\s*<tool_call>", "close": "</tool_call>", "repeats": True, "content": "json",
                       "transform": {"type": "function", "function": "{content}"}},
        "content": {"close_pattern": r"\s*(?:<\|im_end\|>|<\|endoftext\|>)", "content": "text"},
    },
}


@pytest.fixture(scope="module")
def parsing_server(tmp_path_factory, default_model_dir):
    """``transformers serve`` on the default model's weights with a response template: the server
    itself sends tool calls as ``tool_calls`` and thinking as ``reasoning_content``."""
    folder = tmp_path_factory.mktemp("parsing") / "model"
    folder.mkdir()
    for item in default_model_dir.iterdir():
        if item.is_file() and item.name != "tokenizer_config.json":
            (folder / item.name).symlink_to(item)
    config = json.loads((default_model_dir / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "response_template": RESPONSE_TEMPLATE}))
    server = start_server(folder)
    try:
        yield server
    finally:
        server.stop()


def test_tool_calls_sent_by_the_server(parsing_server):
    agent = agent_on(parsing_server, max_new_tokens=40)
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "%s"}}\n</tool_call>'
    memory = [MemoryEntryData("user", "Weather in Paris?"), MemoryEntryData("assistant", call % "Paris"),
              MemoryEntryData("user", "Weather in Berlin?"), MemoryEntryData("assistant", call % "Berlin")]

    async def go():
        stream = agent.stream_with_tools(make_payload("Weather in Rome?", "Answer with a tool call.", memory=memory),
                                         [get_weather])
        return [e async for e in stream], stream.response

    events, response = run(go())
    assert [(c["name"], c["arguments"]) for c in response.tool_calls] == [("get_weather", {"city": "Rome"})]
    stats = stats_of(response)
    assert stats.server_finish_reason == "tool_calls" and stats.finish_reason == "stop" and stats.parser == "server"
    assert stats.raw_text == ""  # the server took the call out of the text
    calls = [e for e in events if e.kind == "tool_call"]
    assert len(calls) == 1 and calls[0].data["id"] == response.tool_calls[0]["id"]  # the server's id


def test_reasoning_content_sent_by_the_server(parsing_server):
    agent = agent_on(parsing_server)
    memory = [MemoryEntryData("user", "What is 2+2?"),
              MemoryEntryData("assistant", "<think>Two plus two makes four.</think>The answer is 4."),
              MemoryEntryData("user", "What is 3+3?"),
              MemoryEntryData("assistant", "<think>Three plus three makes six.</think>The answer is 6.")]

    async def go():
        stream = agent.stream(make_payload("What is 4+4?", memory=memory), events=True)
        return [e async for e in stream], stream.response

    events, response = run(go())
    thinking = "".join(e.text for e in events if e.kind == "thinking")
    assert thinking and response.thinking == thinking.strip() and "four" in thinking.lower()
    assert "".join(e.text for e in events if e.kind == "text") == response.response and "8" in response.response
    kinds = [e.kind for e in events]
    assert kinds.index("thinking") < kinds.index("text")  # thinking streamed first, apart from the answer
    assert stats_of(response).thinking_blocks == [response.thinking]


# --------------------------------------------------------------------------- cancellation


def test_cancel_closes_the_http_stream_and_keeps_the_partial_answer(served_agent, served_server):
    async def go():
        stream = served_agent.stream(make_payload(LONG), max_new_tokens=200)
        pieces = []
        async for piece in stream:
            pieces.append(piece)
            if len(pieces) == 3:
                threading.Thread(target=stream.cancel).start()  # from another thread, as a Stop button does
        return pieces, stream

    pieces, stream = run(go())
    assert 3 <= len(pieces) < 20
    stats = stats_of(stream.response)
    assert stats.finish_reason == "cancelled"
    assert stream.response.response == "".join(pieces).strip()
    assert stream.http_closed is True
    # the server is free again at once
    assert "Paris" in run(served_agent.invoke(make_payload(PARIS))).response


def test_cancelling_the_task_keeps_the_partial_answer(served_agent):
    async def go():
        stream = served_agent.stream(make_payload(LONG), max_new_tokens=200)
        seen = asyncio.Event()

        async def consume():
            async for _ in stream:
                seen.set()

        task = asyncio.ensure_future(consume())
        await seen.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return stream

    stream = run(go())
    assert stats_of(stream.response).finish_reason == "cancelled"
    assert stream.response.response and stream.http_closed is True


def test_breaking_out_of_the_loop_closes_the_stream(served_agent):
    """``break`` out of ``async for`` and nothing else (no ``aclose``, no ``cancel``, the garbage
    collector off): the HTTP stream of the running answer is closed, and the stream itself is freed
    at once (no reference cycle keeps it)."""
    import gc
    import weakref

    async def go():
        gc.disable()
        try:
            stream = served_agent.stream(make_payload(LONG), max_new_tokens=200)
            freed = weakref.ref(stream)
            async for _ in stream:
                http = stream._state.http  # the HTTP response of the answer under way (kept, not the stream)
                break
            del stream  # what leaving the function that looped does
            deadline = time.monotonic() + 30
            while not http.is_closed and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            return freed() is None, http.is_closed
        finally:
            gc.enable()

    freed, closed = run(go())
    assert freed, "the stream outlived the loop that dropped it: a reference cycle holds it"
    assert closed, "breaking out of the loop left the HTTP stream open"


# --------------------------------------------------------------------------- failures


def test_server_killed_mid_stream_keeps_the_partial_answer(default_model_dir, caplog):
    server = start_server(default_model_dir)  # its own server: this test kills it
    try:
        agent = agent_on(server, max_new_tokens=200)

        async def go():
            stream = agent.stream(make_payload(LONG))
            pieces = []
            async for piece in stream:
                pieces.append(piece)
                if len(pieces) == 3:
                    server.kill()
            return pieces, stream.response

        with caplog.at_level(logging.WARNING, logger="midori_hf_nb"):
            pieces, response = run(go())
        assert len(pieces) >= 3 and response.response == "".join(pieces).strip()
        stats = stats_of(response)
        assert stats.finish_reason == "error"
        assert "dropped the stream midway" in stats.error and server.base_url in stats.error
        assert any("partial answer is kept" in r.getMessage() for r in caplog.records)
        with pytest.raises(ServerUnreachableError, match="cannot reach the server at"):
            run(agent.invoke(make_payload(PARIS)))
    finally:
        server.stop()


def test_unreachable_server_is_named():
    url = f"http://127.0.0.1:{free_port()}/v1"
    agent = OpenAICompatibleAgent(model="m", base_url=url, api_key=SECRET)
    with pytest.raises(ServerUnreachableError) as info:
        run(agent.invoke(make_payload(PARIS)))
    message = str(info.value)
    assert url in message and "'m'" in message and "check that it runs" in message
    assert SECRET not in message and SECRET not in repr(info.value)
    assert isinstance(info.value, ConnectionError) and info.value.base_url == url


def test_unknown_model_lists_what_the_server_serves(served_server):
    agent = OpenAICompatibleAgent(model="no-such-model", base_url=served_server.base_url)
    with pytest.raises(UnknownModelError) as info:
        run(agent.invoke(make_payload(PARIS)))
    assert "does not serve model 'no-such-model'" in str(info.value)
    assert served_server.model in str(info.value) and info.value.available == [served_server.model]


def test_a_base_url_without_the_api_root_is_hinted(served_server):
    from midori_hf_nb.served import ServerRequestError

    root = served_server.base_url.removesuffix("/v1")
    agent = OpenAICompatibleAgent(model=served_server.model, base_url=root)
    with pytest.raises(ServerRequestError, match=r"HTTP 404.*base_url is the API root, e.g. http://HOST:PORT/v1"):
        run(agent.invoke(make_payload(PARIS)))


def test_timeout_of_a_server_that_never_answers():
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        agent = OpenAICompatibleAgent(model="m", base_url=url, timeout=0.5, api_key=SECRET)
        with pytest.raises(ServerTimeoutError) as info:
            run(agent.invoke(make_payload(PARIS)))
    assert "did not answer within timeout=0.5 s" in str(info.value) and url in str(info.value)
    assert isinstance(info.value, TimeoutError) and SECRET not in str(info.value)


def test_refused_key_is_reported_without_the_key(gateway, served_server, caplog):
    agent = OpenAICompatibleAgent(model=served_server.model, base_url=gateway.base_url, api_key=SECRET,
                                  do_sample=False, max_new_tokens=12)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ServerAuthError) as info:
            run(agent.invoke(make_payload(PARIS)))
    message = str(info.value)
    assert "refused the API key (HTTP 401" in message and gateway.base_url in message
    assert SECRET not in message and "***" in message  # the gateway repeated the key: it is masked
    assert info.value.status == 401 and isinstance(info.value, PermissionError)
    assert not any(SECRET in r.getMessage() for r in caplog.records)
    # the right key passes the gateway: the key is sent where it belongs
    good = OpenAICompatibleAgent(model=served_server.model, base_url=gateway.base_url,
                                 api_key="sk-right-key-0123456789", do_sample=False, max_new_tokens=12)
    assert "Paris" in run(good.invoke(make_payload(PARIS))).response


def test_the_key_never_shows(served_agent, served_server, caplog):
    agent = OpenAICompatibleAgent(model=served_server.model, base_url=served_server.base_url, api_key=SECRET,
                                  do_sample=False, max_new_tokens=8)
    with caplog.at_level(logging.DEBUG):
        response = run(agent.invoke(make_payload(PARIS)))
    shown = [repr(agent), repr(agent.config), str(agent.config), str(agent.config.api_key),
             f"{agent.config.api_key}", json.dumps(response.metadata), repr(response)]
    assert not any(SECRET in text for text in shown)
    assert not any(SECRET in r.getMessage() for r in caplog.records)
    assert agent.config.api_key.reveal() == SECRET
    import pickle

    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(agent)
