"""Concurrent generations on one model share its decode loop: requests join at a step boundary,
keep their own settings, stream and can be cancelled."""

from __future__ import annotations

import asyncio

import pytest

from midori_hf_nb import make_payload
from midori_hf_nb.engine import capabilities
from midori_hf_nb.stats import stats_of

from .conftest import loaded_agent, run

SYSTEM = "You are a helpful assistant."
PROMPTS = ["What is the capital of France?", "Name three colours.", "Write a short poem about the sea.",
           "What does a compiler do?"]


@pytest.fixture(scope="module")
def fp32_agent(default_model_dir):
    yield from loaded_agent(default_model_dir, torch_dtype="float32", kv_reuse=False)


def _payloads():
    return [make_payload(p, SYSTEM, session_id=f"s{i}") for i, p in enumerate(PROMPTS)]


@pytest.mark.slow  # the default model (fp32_agent)
def test_concurrent_invokes_join_one_loop_and_give_the_sequential_tokens(fp32_agent):
    limits = [12, 20, 16, 8]  # per-request settings stay per request

    async def together():
        return await asyncio.gather(*(fp32_agent.invoke(p, max_new_tokens=n, greedy=True)
                                      for p, n in zip(_payloads(), limits)))

    async def in_a_row():
        return [await fp32_agent.invoke(p, max_new_tokens=n, greedy=True) for p, n in zip(_payloads(), limits)]

    sequential = run(in_a_row())
    concurrent = run(together())
    assert [stats_of(r).extra["shared_rows"] for r in sequential] == [1, 1, 1, 1]
    assert max(stats_of(r).extra["shared_rows"] for r in concurrent) >= 2  # they decoded together
    for alone, shared, limit in zip(sequential, concurrent, limits):
        assert shared.response == alone.response
        stats = stats_of(shared)
        assert stats.completion_tokens <= limit and stats.decode_path == "engine"
        if stats.finish_reason == "length":
            assert stats.completion_tokens == limit


@pytest.mark.slow  # the default model (fp32_agent)
def test_concurrent_streams_stream_and_one_can_be_cancelled(fp32_agent):
    async def main():
        streams = [fp32_agent.stream(p, events=True, max_new_tokens=24, greedy=True) for p in _payloads()]
        texts = [[] for _ in streams]

        async def consume(index, stream):
            async for event in stream:
                if event.kind == "text":
                    texts[index].append(event.text)
                    if index == 1:
                        stream.cancel()
            return stream.response

        responses = await asyncio.gather(*(consume(i, s) for i, s in enumerate(streams)))
        return texts, responses

    texts, responses = run(main())
    stats = [stats_of(r) for r in responses]
    assert stats[1].finish_reason == "cancelled" and stats[1].completion_tokens < 24
    for index, (pieces, response) in enumerate(zip(texts, responses)):
        if index != 1:
            assert "".join(pieces).strip() == response.response.strip()
            assert stats[index].finish_reason in ("stop", "length")


@pytest.mark.slow  # the default model (fp32_agent)
def test_sampled_and_greedy_requests_share_the_loop(fp32_agent):
    async def main():
        payloads = _payloads()
        return await asyncio.gather(
            fp32_agent.invoke(payloads[0], max_new_tokens=10, greedy=True),
            fp32_agent.invoke(payloads[1], max_new_tokens=10, temperature=0.9, top_k=20, seed=3),
            fp32_agent.invoke(payloads[2], max_new_tokens=10, greedy=True))

    greedy_alone = run(fp32_agent.invoke(_payloads()[0], max_new_tokens=10, greedy=True))
    responses = run(main())
    assert responses[0].response == greedy_alone.response
    assert stats_of(responses[1]).do_sample is True and stats_of(responses[1]).completion_tokens > 0


@pytest.mark.slow  # the default model (fp32_agent)
def test_sharing_can_be_turned_off(fp32_agent):
    lm = fp32_agent.loaded_model
    lm.share_decoding = False
    try:
        async def main():
            return await asyncio.gather(*(fp32_agent.invoke(p, max_new_tokens=6) for p in _payloads()[:2]))

        responses = run(main())
    finally:
        lm.share_decoding = True
    assert [stats_of(r).extra["shared_rows"] for r in responses] == [1, 1]


def test_stacked_caches_give_the_logits_of_separate_sequences(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    assert capabilities.cache_rows_support()
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    argument = capabilities.forward_cache_argument(model)
    prompts = [torch.arange(3, 15)[None], torch.arange(20, 27)[None]]
    caches, expected = [], []
    with torch.inference_mode():
        for ids in prompts:
            cache = capabilities.new_dynamic_cache(model)
            model(input_ids=ids, use_cache=True, **{argument: cache})
            caches.append(cache)
            step = capabilities.new_dynamic_cache(model)
            model(input_ids=ids, use_cache=True, **{argument: step})
            expected.append(model(input_ids=torch.tensor([[5]]), use_cache=True, **{argument: step}).logits[0, -1])
        stacked = capabilities.stack_cache_rows(model, [(caches[0], 0), (caches[1], 5)])
        assert capabilities.cache_length(stacked) == 12
        mask = torch.tensor([[1] * 12 + [1], [0] * 5 + [1] * 7 + [1]])
        out = model(input_ids=torch.tensor([[5], [5]]), attention_mask=mask, position_ids=torch.tensor([[12], [7]]),
                    use_cache=True, **{argument: stacked}).logits[:, -1]
    torch.testing.assert_close(out[0], expected[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[1], expected[1], rtol=1e-4, atol=1e-4)


class _FailsAfter:
    """A logits processor that raises on its third call."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, input_ids, scores):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("processor failed")
        return scores


@pytest.mark.slow  # the default model (fp32_agent)
def test_a_failing_request_ends_alone_with_its_error(fp32_agent):
    async def main():
        payloads = _payloads()
        return await asyncio.gather(
            fp32_agent.invoke(payloads[0], max_new_tokens=12, greedy=True),
            fp32_agent.invoke(payloads[1], max_new_tokens=12, logits_processor=[_FailsAfter()]),
            return_exceptions=True)

    good, bad = run(main())
    assert isinstance(bad, RuntimeError) and "processor failed" in str(bad)
    assert stats_of(good).completion_tokens > 3 and stats_of(good).finish_reason in ("stop", "length")
