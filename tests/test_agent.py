"""The agent on real generation: the offline default model for behaviour, the tiny model for mechanics."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time

import pytest

from midori_hf_nb import DEFAULT_MODEL, AgentResponse, HuggingFaceLocalAgent, MemoryEntryData
from midori_hf_nb import engine
from midori_hf_nb.testing import ScriptedOutput

from .conftest import run

pytestmark = pytest.mark.slow


def generation_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "midori-generate" and t.is_alive()]


def wait_for_no_generation_threads(timeout: float = 10.0) -> list[threading.Thread]:
    deadline = time.monotonic() + timeout
    while generation_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    return generation_threads()


def test_capital_of_france(default_agent, payload):
    response = run(default_agent.invoke(payload("What is the capital of France?")))
    assert isinstance(response, AgentResponse)
    assert "Paris" in response.response
    meta = response.metadata
    for key in ("model", "prompt_tokens", "completion_tokens", "time_to_first_token", "total_seconds",
                "tokens_per_second", "finish_reason"):
        assert key in meta, key
    assert meta["model"] == DEFAULT_MODEL
    assert meta["finish_reason"] == "stop"
    assert meta["prompt_tokens"] > 10 and meta["completion_tokens"] >= 5
    assert 0 < meta["time_to_first_token"] <= meta["total_seconds"]
    assert meta["tokens_per_second"] == pytest.approx(meta["completion_tokens"] / meta["total_seconds"])


def test_stream_concatenation_equals_invoke(default_agent, payload):
    p = payload("Name three colours of the rainbow.")

    async def both():
        pieces = [piece async for piece in default_agent.stream(p)]
        return pieces, await default_agent.invoke(p)

    pieces, response = run(both())
    assert len(pieces) > 3
    assert all(isinstance(piece, str) for piece in pieces)
    assert "".join(pieces) == response.response


def test_length_finish_reason_and_per_call_overrides(default_agent, payload):
    response = run(default_agent.invoke(payload("Tell me a long story about a dragon."), max_new_tokens=5))
    assert response.metadata["finish_reason"] == "length"
    assert response.metadata["completion_tokens"] == 5
    with pytest.raises(ValueError, match="temperature"):
        run(default_agent.invoke(payload("hi"), temperature=9))


def test_seed_makes_sampling_reproducible(default_agent, payload):
    p = payload("Write one sentence about the sea.")
    a = run(default_agent.invoke(p, do_sample=True, temperature=1.0, seed=123, max_new_tokens=20))
    b = run(default_agent.invoke(p, do_sample=True, temperature=1.0, seed=123, max_new_tokens=20))
    c = run(default_agent.invoke(p, do_sample=True, temperature=1.0, seed=7, max_new_tokens=20))
    assert a.response == b.response
    assert a.metadata["seed"] == 123
    assert c.response != a.response


def test_memory_history_is_used(default_agent, payload):
    memory = [MemoryEntryData(role="user", content="My name is Alice."),
              MemoryEntryData(role="assistant", content="Nice to meet you, Alice!")]
    with_memory = run(default_agent.invoke(payload("What is my name?", memory=memory)))
    without = run(default_agent.invoke(payload("What is my name?")))
    assert "Alice" in with_memory.response
    assert "Alice" not in without.response
    assert with_memory.metadata["prompt_tokens"] > without.metadata["prompt_tokens"]


def test_sixteen_concurrent_invokes_load_once_and_release(payload):
    agent = HuggingFaceLocalAgent(model=DEFAULT_MODEL, do_sample=False, max_new_tokens=4, progress=False)
    loads_before = engine.REGISTRY.load_count

    async def many():
        return await asyncio.gather(*(agent.invoke(payload(f"Say the number {i}.")) for i in range(16)))

    responses = run(many())
    assert len(responses) == 16 and all(r.metadata["completion_tokens"] >= 1 for r in responses)
    # The default model may already be held by the session's shared agent; this agent adds one reference.
    assert engine.REGISTRY.load_count - loads_before <= 1
    key = agent.loaded_model.spec.key
    before_unload = engine.REGISTRY.refcount(key)
    run(agent.unload_model())
    assert engine.REGISTRY.refcount(key) == before_unload - 1
    assert not agent.is_loaded


def test_sixteen_concurrent_invokes_fresh_model_single_load(tiny_model, payload):
    agent = HuggingFaceLocalAgent(model=str(tiny_model), do_sample=False, max_new_tokens=3, progress=False)
    loads_before = engine.REGISTRY.load_count

    async def many():
        return await asyncio.gather(*(agent.invoke(payload(f"q{i}")) for i in range(16)))

    assert len(run(many())) == 16
    assert engine.REGISTRY.load_count - loads_before == 1
    assert agent.reference_count == 1
    run(agent.unload_model())
    assert agent.reference_count == 0


def test_generation_runs_off_the_event_loop(default_agent, payload):
    async def scenario():
        ticks = 0
        done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        await default_agent.load()
        response = await default_agent.invoke(payload("Count from one to ten in words."), max_new_tokens=24)
        done.set()
        await task
        return ticks, response

    ticks, response = run(scenario())
    expected = response.metadata["total_seconds"] / 0.01
    assert ticks > expected * 0.3, (ticks, expected)


def test_breaking_out_of_a_stream_stops_generation(default_agent, payload):
    async def scenario():
        await default_agent.load()
        stream = default_agent.stream(payload("Write a very long essay about the history of Rome."),
                                      max_new_tokens=400)
        count = 0
        async for _ in stream:
            count += 1
            if count == 3:
                break
        thread = stream.thread
        del stream
        return thread

    thread = run(scenario())
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert wait_for_no_generation_threads() == []


def test_cancel_stops_within_a_few_tokens(default_agent, payload):
    async def scenario():
        await default_agent.load()
        stream = default_agent.stream(payload("Write a very long essay about the history of Rome."),
                                      events=True, max_new_tokens=400)
        pieces = 0
        async for event in stream:
            if event.kind == "text":
                pieces += 1
                if pieces == 2:
                    stream.cancel()
        return stream.response

    response = run(scenario())
    assert response.metadata["finish_reason"] == "cancelled"
    assert response.metadata["completion_tokens"] < 30
    assert response.response  # the partial answer is kept
    assert wait_for_no_generation_threads() == []


def test_cancelling_the_task_stops_generation(default_agent, payload):
    async def scenario():
        await default_agent.load()
        task = asyncio.create_task(default_agent.invoke(payload("Write a very long essay about Rome."),
                                                        max_new_tokens=400))
        await asyncio.sleep(1.0)
        assert generation_threads()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())
    assert wait_for_no_generation_threads() == []


def test_cancelled_consumer_keeps_the_partial_response(default_agent, payload):
    async def scenario():
        await default_agent.load()
        stream = default_agent.stream(payload("Write a very long essay about the history of Rome."),
                                      max_new_tokens=400)

        async def consume():
            async for _ in stream:
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return stream.response

    response = run(scenario())
    assert response is not None
    assert response.metadata["finish_reason"] == "cancelled"
    assert 0 < response.metadata["completion_tokens"] < 400 and response.response
    assert wait_for_no_generation_threads() == []


def test_temperature_override_turns_sampling_on(tiny_model, payload):
    agent = HuggingFaceLocalAgent(model=str(tiny_model), do_sample=False, max_new_tokens=3, progress=False)
    greedy = run(agent.invoke(payload("q")))
    sampled = run(agent.invoke(payload("q"), temperature=1.5, seed=1))
    forced_greedy = run(agent.invoke(payload("q"), temperature=1.5, greedy=True))
    assert greedy.metadata["do_sample"] is False
    assert sampled.metadata["do_sample"] is True and sampled.metadata["temperature"] == 1.5
    assert forced_greedy.metadata["do_sample"] is False
    run(agent.unload_model())


def test_reasoning_tags_extracted_including_unclosed(tiny_model, payload):
    agent = HuggingFaceLocalAgent(model=str(tiny_model), do_sample=False, max_new_tokens=40, progress=False)

    async def scenario():
        lm = await agent.ensure_loaded()
        closed = await agent.invoke(payload("q"), logits_processor=[
            ScriptedOutput(lm.tokenizer, "<think>Paris is the capital.</think>It is Paris.")])
        truncated = await agent.invoke(payload("q"), max_new_tokens=10, logits_processor=[
            ScriptedOutput(lm.tokenizer, "Answer first. <reasoning>this goes on and on and on")])
        return closed, truncated

    closed, truncated = run(scenario())
    assert (closed.thinking, closed.response) == ("Paris is the capital.", "It is Paris.")
    assert truncated.metadata["finish_reason"] == "length"
    assert truncated.response == "Answer first."
    assert truncated.thinking.startswith("this")
    run(agent.unload_model())


def test_unload_really_returns_memory():
    """In a fresh process: load the default model, unload it, and check the memory comes back."""
    code = r"""
import asyncio, gc, json, weakref, psutil
from midori_hf_nb import DEFAULT_MODEL, HuggingFaceLocalAgent, make_payload
proc = psutil.Process()
agent = HuggingFaceLocalAgent(model=DEFAULT_MODEL, do_sample=False, max_new_tokens=4, progress=False)
import torch, transformers  # count imports as baseline, not as model memory
gc.collect()
base = proc.memory_info().rss
asyncio.run(agent.invoke(make_payload("Hi")))
ref = weakref.ref(agent.loaded_model.model)
weights = agent.loaded_model.footprint()["bytes"]
loaded = proc.memory_info().rss
asyncio.run(agent.unload_model())
gc.collect()
after = proc.memory_info().rss
print(json.dumps({"base": base, "loaded": loaded, "after": after, "weights": weights, "alive": ref() is not None}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["alive"] is False
    grown = figures["loaded"] - figures["base"]
    returned = figures["loaded"] - figures["after"]
    assert grown >= 0.8 * figures["weights"], figures
    assert returned >= 0.8 * figures["weights"], figures


def test_an_abandoned_stream_is_freed_at_once_and_stops_its_generation(tiny_model, payload):
    """Breaking out of `async for` frees the stream without the garbage collector (no reference
    cycle), and its finalizer stops the generation while the event loop keeps running."""
    import gc
    import weakref

    agent = HuggingFaceLocalAgent(model=str(tiny_model), do_sample=False, max_new_tokens=3000, context_window=4096,
                                  progress=False, device="cpu", stop_on_repetition=False)  # a long generation

    async def scenario():
        await agent.load()
        gc.disable()
        try:
            stream = agent.stream(payload("Tell me everything."))
            ref = weakref.ref(stream)
            async for _ in stream:
                thread = stream.thread
                break
            del stream
            freed = ref() is None
            started = time.monotonic()
            while thread.is_alive() and time.monotonic() - started < 30:
                await asyncio.sleep(0.005)
            return freed, thread.is_alive(), time.monotonic() - started
        finally:
            gc.enable()

    freed, alive, seconds = run(scenario())
    assert freed, "the stream outlived the loop that dropped it: a reference cycle holds it"
    assert not alive and seconds < 5, f"generation still running {seconds:.1f} s after the stream was dropped"
    run(agent.unload_model())


def test_a_long_memory_neither_blocks_the_event_loop_nor_takes_long(tiny_model, payload, monkeypatch):
    """20,000 memory entries: the prompt is fitted in a worker thread (a heartbeat task on the same
    loop keeps beating while the first render waits for it), with O(log n) renders of the template
    (n the turns kept), none of them longer than about twice the prompt it returns."""
    import math

    from midori_hf_nb import prompting

    memory = [MemoryEntryData(role="user" if i % 2 == 0 else "assistant", content=f"Message number {i} about rivers.")
              for i in range(20_000)]
    agent = HuggingFaceLocalAgent(model=str(tiny_model), do_sample=False, max_new_tokens=4, context_window=1024,
                                  progress=False, device="cpu")
    beats = [0]
    rendered: list[int] = []  # messages in each render of the chat template
    loop_ran_during_render: list[bool] = []
    real_render = prompting.render

    def render(tokenizer, messages, *args, **kwargs):
        if not loop_ran_during_render:  # the first render waits for three heartbeats (10 s at most)
            start, deadline = beats[0], time.monotonic() + 10
            while beats[0] < start + 3 and time.monotonic() < deadline:
                time.sleep(0.001)
            loop_ran_during_render.append(beats[0] >= start + 3)
        rendered.append(len(messages))
        return real_render(tokenizer, messages, *args, **kwargs)

    monkeypatch.setattr(prompting, "render", render)

    async def scenario():
        await agent.load()
        gaps: list[float] = []
        stop = asyncio.Event()

        async def heartbeat():
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                beats[0] += 1
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        beat = asyncio.create_task(heartbeat())
        await asyncio.sleep(0.02)
        started = time.perf_counter()
        response = await agent.invoke(payload("Which river did we discuss last?", memory=memory))
        seconds = time.perf_counter() - started
        stop.set()
        await beat
        return response, seconds, max(gaps)

    try:
        response, seconds, longest_gap = run(scenario())
    finally:
        run(agent.unload_model())
    dropped = response.metadata["memory_dropped"]
    assert dropped > 19_000  # most of the history did not fit the window
    assert loop_ran_during_render == [True], "the prompt was fitted on the event loop's thread: the loop stood still"
    kept = len(memory) - dropped
    # O(log n) renders, n the turns kept: galloping from the newest end, then bisecting
    assert len(rendered) <= 2 * math.ceil(math.log2(kept // 2 + 1)) + 4, (len(rendered), kept)
    assert max(rendered) <= 2 * (kept + 2) + 2, (max(rendered), kept)  # none much longer than the answer
    print(f"20,000 entries: invoke {seconds:.2f} s, {len(rendered)} renders of at most {max(rendered)} messages "
          f"({kept} kept), longest event-loop gap {longest_gap * 1000:.1f} ms")


def test_time_to_first_token_is_also_reported_from_the_call(tiny_model, payload):
    agent = HuggingFaceLocalAgent(model=str(tiny_model), do_sample=False, max_new_tokens=6, progress=False,
                                  device="cpu")
    response = run(agent.invoke(payload("q")))
    meta = response.metadata
    assert 0 < meta["time_to_first_token"] <= meta["call_to_first_token"] <= meta["wall_seconds"]
    run(agent.unload_model())
