"""Reproducible mode (``reproducible=True``): the same prompt, settings and seed give the same
tokens alone, in a batch of any size and company, concurrently, from a kept KV cache, after an
edited history and on Regenerate in the chat panel -- on the offline default model in its default
dtype (bfloat16 on CPU), compared token for token. Without the mode, each of these changed greedy
answers on this model (see engine/reproducible.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from midori_hf_nb import DEFAULT_MODEL, HuggingFaceLocalAgent, compare, make_payload
from midori_hf_nb.config import ConfigError
from midori_hf_nb.engine.forward_mode import ForwardMode, tile_bounds
from midori_hf_nb.engine.prefix_cache import PrefixCacheStore
from midori_hf_nb.engine.reproducible import PREFILL_TILE
from midori_hf_nb.stats import ResponseStats, stats_of

from .conftest import loaded_agent, run

#: a system prompt long enough that a prompt spans more than one prefill tile (so a kept cache is reused)
SYSTEM = ("You are a helpful assistant. Answer in plain English, be precise and friendly, and when a question is "
          "ambiguous say which reading you chose. Keep answers short unless the user asks for detail; use lists "
          "for steps and name the units of every number you give.")
QUESTIONS = ["What is the capital of France?", "Write a haiku about autumn leaves.", "Explain recursion to a child.",
             "List three uses of copper.", "Why is the sky blue?", "Tell me a short story about a brave mouse.",
             "What is 17 times 23?",
             "Give me a recipe for pancakes with the amounts of flour, milk, eggs and butter, and say how long "
             "each side cooks in a hot pan."]
NEW = 24


@pytest.fixture(scope="module")
def exact_agent():
    """A greedy, reproducible agent on the default model (bfloat16 on CPU), released after the module."""
    agent = HuggingFaceLocalAgent(DEFAULT_MODEL, do_sample=False, max_new_tokens=NEW, progress=False,
                                  reproducible=True)
    run(agent.load())
    yield agent
    agent.unload_model_sync()


@pytest.fixture(scope="module")
def alone(exact_agent):
    """Each question's greedy answer asked alone, without a kept cache."""
    assert exact_agent.loaded_model.spec.dtype == "bfloat16"
    exact_agent.kv_reuse = False
    answers = {}
    for question in QUESTIONS:
        response = run(exact_agent.invoke(make_payload(question, SYSTEM)))
        stats = stats_of(response)
        assert stats.reproducible is True and stats.reproducible_reason is None
        assert stats.extra["shared_rows"] == 1
        answers[question] = response.response
    exact_agent.kv_reuse = True
    return answers


@pytest.mark.slow
@pytest.mark.parametrize("questions", [QUESTIONS[:1], QUESTIONS[:2], QUESTIONS[:3], QUESTIONS,
                                       [QUESTIONS[7], QUESTIONS[0], QUESTIONS[5]]],
                         ids=["1", "2", "3", "8", "mixed-lengths"])
def test_greedy_answers_in_a_batch_are_the_answers_alone(exact_agent, alone, questions):
    responses = exact_agent.generate_batch([make_payload(q, SYSTEM) for q in questions])
    assert [r.response for r in responses] == [alone[q] for q in questions]
    stats = [stats_of(r) for r in responses]
    assert all(s.reproducible is True for s in stats)
    assert max(s.extra["shared_rows"] for s in stats) == len(questions)  # the rows did decode together


@pytest.mark.slow
def test_concurrent_greedy_answers_are_the_answers_alone(exact_agent, alone):
    exact_agent.kv_reuse = False
    try:
        async def together():
            return await asyncio.gather(*[exact_agent.invoke(make_payload(q, SYSTEM)) for q in QUESTIONS[:4]])

        responses = run(together())
    finally:
        exact_agent.kv_reuse = True
    assert [r.response for r in responses] == [alone[q] for q in QUESTIONS[:4]]
    assert max(stats_of(r).extra["shared_rows"] for r in responses) > 1  # they shared the decode loop


def _converse(agent, session, questions, reuse):
    agent.kv_reuse = reuse
    memory, turns = [], []
    for question in questions:
        response = run(agent.invoke(make_payload(question, SYSTEM, memory=list(memory), session_id=session)))
        turns.append((response.response, stats_of(response).extra["reused_prompt_tokens"]))
        memory += [{"role": "user", "content": question}, {"role": "assistant", "content": response.response}]
    agent.kv_reuse = True
    return turns


@pytest.mark.slow
def test_kept_cache_turns_and_an_edited_history_give_the_answers_of_a_full_prefill(exact_agent, alone):
    questions = QUESTIONS[:3]
    edited = ["What is the capital of Spain?", *questions[1:]]
    # the references first: turning kv_reuse off forgets the agent's kept caches
    without = _converse(exact_agent, "turns-off", questions, reuse=False)
    reference = _converse(exact_agent, "edited-off", edited, reuse=False)
    with_reuse = _converse(exact_agent, "turns-on", questions, reuse=True)
    assert [t[0] for t in with_reuse] == [t[0] for t in without]
    assert without[0][0] == alone[questions[0]]
    assert all(reused == 0 for _, reused in without)
    assert all(reused >= PREFILL_TILE and reused % PREFILL_TILE == 0 for _, reused in with_reuse[1:])

    # the same session with its first question edited: only what still matches is reused
    again = _converse(exact_agent, "turns-on", edited, reuse=True)
    assert [t[0] for t in again] == [t[0] for t in reference]
    assert again[0][1] >= PREFILL_TILE  # the system prompt's whole tiles were reused


@pytest.mark.slow
def test_regenerate_gives_the_same_answer_from_a_kept_cache(exact_agent, alone):
    payload = make_payload(QUESTIONS[1], SYSTEM, session_id="regenerate")
    first = run(exact_agent.invoke(payload))
    second = run(exact_agent.invoke(payload))
    assert first.response == second.response == alone[QUESTIONS[1]]
    assert stats_of(second).extra["reused_prompt_tokens"] >= PREFILL_TILE


@pytest.mark.slow
def test_the_chat_panels_regenerate_gives_the_same_greedy_answer(exact_agent, alone):
    from midori_hf_nb.notebook import ChatPanel

    # an agent without reproducible=True on the same loaded model: the panel asks for it (greedy)
    plain = HuggingFaceLocalAgent(DEFAULT_MODEL, do_sample=False, max_new_tokens=NEW, progress=False)
    panel = ChatPanel(plain, system_prompt=SYSTEM)
    try:
        async def scenario():
            first = await panel.send(QUESTIONS[2])
            again = await panel.regenerate()
            return first, again

        first, again = run(scenario())
    finally:
        plain.unload_model_sync()
    assert first["content"] == again["content"] == alone[QUESTIONS[2]]
    metadata = panel.memory[-1].metadata
    assert metadata["reproducible"] is True and metadata["reused_prompt_tokens"] >= PREFILL_TILE


@pytest.mark.slow
def test_seeded_samples_are_the_same_alone_batched_and_concurrent(exact_agent):
    exact_agent.kv_reuse = False
    questions = QUESTIONS[:3]
    options = {"temperature": 0.8, "seed": 7}
    try:
        solo = [run(exact_agent.invoke(make_payload(q, SYSTEM), **options)).response for q in questions]
        batched = exact_agent.generate_batch([make_payload(q, SYSTEM) for q in questions], **options)

        async def together():
            return await asyncio.gather(*[exact_agent.invoke(make_payload(q, SYSTEM), **options) for q in questions])

        concurrent = run(together())
    finally:
        exact_agent.kv_reuse = True
    assert [r.response for r in batched] == solo
    assert [r.response for r in concurrent] == solo
    assert all(stats_of(r).reproducible for r in [*batched, *concurrent])
    assert len(set(solo)) == len(solo)  # sampled answers (not all the same text)


@pytest.mark.slow
def test_a_comparison_grid_is_the_same_for_every_batch_size(exact_agent, alone):
    questions = QUESTIONS[:4]
    grids = [compare(questions, systems=[SYSTEM], settings={"greedy": [True], "max_new_tokens": [NEW]},
                     models=exact_agent, batch_size=size, progress=False, warmup=False) for size in (4, 1)]
    for grid in grids:
        assert grid["response"].tolist() == [alone[q] for q in questions]
        assert grid["reproducible"].tolist() == [True] * len(questions)
    # sampled and seeded: each row has a seed of its own, whatever the batch size
    sampled = [compare(questions, systems=[SYSTEM], settings={"temperature": [0.9], "max_new_tokens": [8]},
                       models=exact_agent, batch_size=size, seed=5, progress=False, warmup=False)
               for size in (4, 1)]
    assert sampled[0]["seed"].tolist() == sampled[1]["seed"].tolist() == [5, 6, 7, 8]
    assert sampled[0]["response"].tolist() == sampled[1]["response"].tolist()


# --------------------------------------------------------------------------- metadata and bookkeeping (tiny model)


@pytest.fixture(scope="module")
def tiny(tiny_model):
    yield from loaded_agent(tiny_model, max_new_tokens=6)


def test_metadata_says_whether_an_answer_is_reproducible_and_why_not(tiny):
    payload = make_payload("Hello there")
    off = stats_of(run(tiny.invoke(payload)))
    assert off.reproducible is False and "off" in off.reproducible_reason
    unseeded = stats_of(run(tiny.invoke(payload, reproducible=True, temperature=0.7)))
    assert unseeded.reproducible is False and unseeded.reproducible_reason == "sampled without a seed"
    greedy = stats_of(run(tiny.invoke(payload, reproducible=True)))
    assert greedy.reproducible is True and greedy.reproducible_reason is None
    found = tiny.loaded_model.reproducible
    assert found.supported and found.products in ("rows", "tiles")
    back = ResponseStats.from_metadata({"reproducible": True, "reproducible_reason": None})
    assert back.reproducible is True
    with pytest.raises(ValueError, match="reproducible"):
        ResponseStats.from_metadata({"reproducible": "yes"}, strict=True)


def test_per_row_seeds_need_a_reproducible_call(tiny):
    payloads = [make_payload("one"), make_payload("two words")]
    with pytest.raises(ConfigError, match="reproducible"):
        tiny.generate_batch(payloads, seeds=[1, 2], temperature=0.9)
    with pytest.raises(ConfigError, match="one per payload"):
        tiny.generate_batch(payloads, seeds=[1], temperature=0.9, reproducible=True)
    with pytest.raises(ConfigError, match="seeds and seed"):
        tiny.generate_batch(payloads, seeds=[1, 2], seed=3, temperature=0.9, reproducible=True)
    rows = tiny.generate_batch(payloads, seeds=[1, 2], temperature=0.9, reproducible=True, top_k=1000)
    alone = [run(tiny.invoke(p, seed=s, temperature=0.9, reproducible=True, top_k=1000)) for p, s in zip(payloads, (1, 2))]
    assert [r.response for r in rows] == [r.response for r in alone]
    with pytest.raises(ValueError, match="reproducible"):
        compare(["x"], models=tiny, reproducible="yes", progress=False)


def test_a_kept_cache_is_reused_in_whole_exact_tiles_only():
    class Fake:
        def __init__(self, length):
            self.length = length

        def get_seq_length(self):
            return self.length

        def crop(self, remove):
            self.length += remove

    store = PrefixCacheStore()
    ids = list(range(300))
    store.put("a", ids[:200], Fake(200), 1, exact=128)  # 128 positions prefilled in whole tiles
    assert store.take("a", ids, tile=64).reused == 128
    store.put("a", ids[:200], Fake(200), 1, exact=128)
    assert store.take("a", ids[:100] + [-1], tile=64).reused == 64  # the shared prefix, in whole tiles
    store.put("a", ids[:200], Fake(200), 1)  # not reproducibly prefilled: nothing for a reproducible call
    assert store.take("a", ids, tile=64).reused == 0
    store.put("a", ids[:200], Fake(200), 1)
    assert store.take("a", ids).reused == 200  # an ordinary call reuses everything that matches


def test_forward_modes_and_tiles():
    assert tile_bounds(130, 64) == [(0, 64), (64, 128), (128, 130)]
    assert tile_bounds(0, 8) == []
    ForwardMode("decode", 0)
    for kind, tile in (("prefill", 0), ("other", 8), ("decode", -1)):
        with pytest.raises(ValueError):
            ForwardMode(kind, tile)


def test_a_served_agent_answers_reproducible_false_with_the_reason():
    from midori_hf_nb.served.config import OpenAIConfig
    from midori_hf_nb.served.request import resolve_served_settings

    config = OpenAIConfig(model="m", base_url="http://127.0.0.1:9/v1")
    assert resolve_served_settings(config, {"reproducible": True}).reproducible is True
    assert resolve_served_settings(config, {}).reproducible is False


# --------------------------------------------------------------------------- paused streams and evaluation

#: the stream look-ahead the README documents (``midori_hf_nb.agent.live.STREAM_LOOKAHEAD``)
LOOKAHEAD = 64
STORY = "Write a long story about a lighthouse keeper and a storm."


async def _read_with_a_pause(agent, payload, **options):
    """Stream ``payload``, stop reading after the first piece until the generation has paused,
    then read the rest. Returns the response, the pieces and whether the stream paused."""
    stream = agent.stream(payload, **options)
    pieces = []
    async for piece in stream:
        pieces.append(piece)
        break
    deadline = time.monotonic() + 120
    while getattr(stream, "paused", None) is not True and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    was_paused = getattr(stream, "paused", None)
    pieces += [piece async for piece in stream]
    return stream.response, pieces, was_paused


@pytest.mark.slow
@pytest.mark.parametrize("options", [{}, {"temperature": 0.8, "seed": 11}], ids=["greedy", "seeded"])
def test_a_paused_stream_continues_with_the_answer_it_gives_unpaused(exact_agent, options):
    # the continuation resumes from the cache its first part left, with the decode step and the
    # random numbers the unpaused generation would have used
    payload = make_payload(STORY, session_id=f"paused-{len(options)}")
    options = {**options, "max_new_tokens": LOOKAHEAD + 40}
    unpaused = run(exact_agent.invoke(payload, **options))
    resumed, pieces, was_paused = run(_read_with_a_pause(exact_agent, payload, **options))
    assert was_paused is True
    assert stats_of(unpaused).completion_tokens > LOOKAHEAD + 8  # long enough to pause midway
    assert resumed.response == unpaused.response
    assert "".join(pieces).strip() == resumed.response
    stats = stats_of(resumed)
    assert stats.reproducible is True and stats.reproducible_reason is None


@pytest.fixture(scope="module")
def long_tiny(tiny_model):
    """A greedy, reproducible agent on the tiny random model that writes long answers."""
    yield from loaded_agent(tiny_model, max_new_tokens=LOOKAHEAD + 40, stop_on_repetition=False, reproducible=True)


def test_a_paused_stream_that_lost_its_cache_says_it_is_not_reproducible(long_tiny):
    payload = make_payload("Hello there", session_id="lost")
    kept, _, paused = run(_read_with_a_pause(long_tiny, payload))
    assert paused is True and stats_of(kept).reproducible is True

    async def forget_while_paused():
        stream = long_tiny.stream(payload)
        async for _ in stream:
            break
        deadline = time.monotonic() + 60
        while getattr(stream, "paused", None) is not True and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        long_tiny.forget_session("lost")  # the first part's cache is gone: the answer so far is prefilled
        rest = [piece async for piece in stream]
        return stream.response, rest

    lost, rest = run(forget_while_paused())
    assert rest
    stats = stats_of(lost)
    assert stats.reproducible is False and "paused stream" in stats.reproducible_reason


@pytest.mark.slow
def test_evaluation_repeats_of_a_greedy_answer_agree_whatever_their_batch(exact_agent, alone):
    from midori_hf_nb import evaluate

    questions = QUESTIONS[:3]
    ev = evaluate(questions, systems={"s": SYSTEM}, settings={"greedy": [True], "max_new_tokens": [NEW]},
                  models=exact_agent, repeats=3, batch_size=2, progress=False, warmup=False)
    answers = ev.answers
    assert len(answers) == 9 and (answers["status"] == "ok").all()
    assert answers["reproducible"].tolist() == [True] * 9
    assert set(answers["batch_size"]) == {1, 2}  # repeats ran in batches of other sizes and company
    for question in questions:
        repeats = answers[answers["prompt"] == question]["response"].tolist()
        assert repeats == [alone[question]] * 3


def _records(response):
    """The token ids of ``response`` and, flat, each token's raw and processed log-probability."""
    content = response.logprobs.content
    return [r.id for r in content], [value for r in content for value in (r.logprob, r.processed_logprob)]


def test_reproducible_batches_record_the_token_probabilities_of_the_answers_alone(tiny):
    # a reproducible batch decodes its rows together in the shared loop: each row keeps its own records
    payloads = [make_payload("one"), make_payload("two words here")]
    options = {"reproducible": True, "logprobs": True, "top_logprobs": 3}
    seeded = {**options, "temperature": 0.9, "top_k": 1000}
    for extra, seeds in ((options, None), (seeded, [4, 5])):
        rows = tiny.generate_batch(payloads, seeds=seeds, **extra)
        alone = [run(tiny.invoke(p, **({**extra, "seed": s} if s is not None else extra)))
                 for p, s in zip(payloads, seeds or [None, None])]
        for row, single in zip(rows, alone):
            assert stats_of(row).reproducible is True
            assert stats_of(row).completion_tokens == len(row.logprobs.content) > 0
            (ids, values), (single_ids, single_values) = _records(row), _records(single)
            assert ids == single_ids and values == pytest.approx(single_values, abs=1e-4)


def test_a_paused_reproducible_stream_keeps_the_records_of_every_part(long_tiny):
    options = {"logprobs": True, "top_logprobs": 2}
    payload = make_payload("Hello there", session_id="records")
    unpaused = run(long_tiny.invoke(make_payload("Hello there", session_id="records-unpaused"), **options))
    resumed, pieces, paused = run(_read_with_a_pause(long_tiny, payload, **options))
    assert paused is True and stats_of(resumed).reproducible is True
    assert resumed.response == unpaused.response
    assert stats_of(resumed).completion_tokens == len(resumed.logprobs.content) > LOOKAHEAD
    (ids, values), (unpaused_ids, unpaused_values) = _records(resumed), _records(unpaused)
    assert ids == unpaused_ids and values == pytest.approx(unpaused_values, abs=1e-4)
