"""Hostile use of the local agent's streams: streams that are still held but no longer read.

A stream nobody reads generates a bounded look-ahead and then pauses, releasing the model;
reading again continues the answer where it paused, with the tokens an unpaused stream gives
(greedy). Real generation on the tiny random model (mechanics) and the default model (real text).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from midori_hf_nb import HuggingFaceLocalAgent, make_payload, stats_of

from .conftest import loaded_agent, run

#: the look-ahead the README documents (``midori_hf_nb.agent.live.STREAM_LOOKAHEAD``)
LOOKAHEAD = 64


def busy_threads() -> list[threading.Thread]:
    """Generation threads and shared decode loops still running."""
    return [t for t in threading.enumerate() if t.is_alive() and t.name in ("midori-generate", "midori-shared-decode")]


async def wait_until_idle(timeout: float) -> list[threading.Thread]:
    deadline = time.monotonic() + timeout
    while busy_threads() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return busy_threads()


@pytest.fixture(scope="module")
def long_agent(tiny_model):
    """A greedy agent on the tiny random model that writes long answers ("Cad Cad Cad ...")."""
    yield from loaded_agent(tiny_model, max_new_tokens=200, stop_on_repetition=False)


def test_the_documented_look_ahead_is_the_one_in_force():
    from midori_hf_nb.agent.live import STREAM_LOOKAHEAD

    assert STREAM_LOOKAHEAD == LOOKAHEAD


def test_a_hundred_abandoned_streams_pause_and_free_the_model(long_agent):
    tokenizer = long_agent.loaded_model.tokenizer

    async def scenario():
        streams, first = [], []
        for index in range(100):
            stream = long_agent.stream(make_payload(f"Hello number {index}"))
            async for piece in stream:  # still referenced, never read again
                first.append(piece)
                break
            streams.append(stream)
        left = await wait_until_idle(timeout=120)
        paused = [getattr(stream, "paused", None) for stream in streams]
        # the model serves another request at once: nothing holds it
        served = await asyncio.wait_for(long_agent.invoke(make_payload("Another request"), max_new_tokens=8), 60)
        ahead = []
        for stream in streams:
            stream.cancel()
            rest = [piece async for piece in stream]  # the look-ahead it had made before pausing
            ahead.append((rest, stream.response))
        return left, paused, served, first, ahead

    left, paused, served, first, ahead = run(scenario())
    assert left == []
    for piece, (rest, response) in zip(first, ahead):
        stats = stats_of(response)
        assert stats.finish_reason == "cancelled" and stats.completion_tokens < 200
        assert len(tokenizer.encode("".join(rest), add_special_tokens=False)) <= LOOKAHEAD + 2
        assert (piece + "".join(rest)).strip() == response.response  # nothing made was lost
    assert stats_of(served).completion_tokens == 8 and stats_of(served).finish_reason == "length"
    assert all(paused)


def test_a_paused_stream_read_again_gives_the_unpaused_answer(long_agent):
    prompt = make_payload("Tell me everything.")

    async def scenario():
        unpaused = await long_agent.invoke(prompt)
        stream = long_agent.stream(prompt)
        pieces = []
        async for piece in stream:
            pieces.append(piece)
            break
        idle = await wait_until_idle(timeout=60)
        was_paused = getattr(stream, "paused", None)
        pieces += [piece async for piece in stream]  # reading again continues the answer
        return unpaused, stream.response, pieces, idle, was_paused

    unpaused, resumed, pieces, idle, was_paused = run(scenario())
    assert idle == []  # paused: nothing runs while nobody reads
    assert resumed.response == unpaused.response
    assert "".join(pieces).strip() == resumed.response
    stats, reference = stats_of(resumed), stats_of(unpaused)
    assert stats.completion_tokens == reference.completion_tokens == 200
    assert stats.finish_reason == reference.finish_reason == "length"
    assert was_paused


def test_a_paused_constrained_stream_continues_inside_its_grammar(tiny_tools_model):
    """A constrained answer longer than the look-ahead: the continuation follows the grammar from
    where the paused part stopped, so the JSON is the unpaused one."""
    schema = {"type": "object", "required": ["words"],
              "properties": {"words": {"type": "array", "items": {"enum": ["red", "green", "blue"]},
                                       "minItems": 100, "maxItems": 100}}}
    for agent in loaded_agent(tiny_tools_model, max_new_tokens=800, stop_on_repetition=False):
        prompt = make_payload("A hundred colours.")

        async def scenario():
            unpaused = await agent.invoke(prompt, response_format=schema)
            stream = agent.stream(prompt, response_format=schema)
            async for _ in stream:
                break
            await wait_until_idle(timeout=60)
            was_paused = getattr(stream, "paused", None)
            await stream.collect()
            return unpaused, stream.response, was_paused

        unpaused, resumed, was_paused = run(scenario())
        assert stats_of(resumed).finish_reason == "stop", resumed.response
        assert len(json.loads(resumed.response)["words"]) == 100 and resumed.parsed == json.loads(resumed.response)
        assert resumed.response == unpaused.response
        assert was_paused


@pytest.mark.slow
def test_the_default_model_continues_a_paused_answer_word_for_word(default_model_dir):
    # kv_reuse off: the unpaused answer and the paused one both start from a full prefill (a
    # kept cache from the first call would make the second start differently in bfloat16)
    agent = HuggingFaceLocalAgent(model=str(default_model_dir), do_sample=False, max_new_tokens=160, progress=False,
                                  kv_reuse=False)
    prompt = make_payload("Write a long story about a lighthouse keeper and a storm.")

    async def scenario():
        try:
            unpaused = await agent.invoke(prompt)
            stream = agent.stream(prompt)
            pieces = []
            async for piece in stream:
                pieces.append(piece)
                break
            await wait_until_idle(timeout=120)
            was_paused = getattr(stream, "paused", None)
            pieces += [piece async for piece in stream]
            return unpaused, stream.response, pieces, was_paused
        finally:
            await agent.unload_model()

    unpaused, resumed, pieces, was_paused = run(scenario())
    assert stats_of(unpaused).completion_tokens > LOOKAHEAD + 20  # long enough to pause midway
    assert resumed.response == unpaused.response
    assert "".join(pieces).strip() == resumed.response
    assert was_paused
