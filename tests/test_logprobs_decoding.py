"""Token probabilities on the default model, on every decoder: for greedy decoding the chosen token's
processed probability is the highest of its step, and the raw log-probabilities (the token's and
its top alternatives') equal those of a separate forward pass over the same tokens (float32).
Also: sampled steps (temperature, top-k), concurrent requests sharing the decode loop, the prompt's
log-probabilities, streaming, branching and the grammar's pressure under a constraint."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

from midori_hf_nb import AgentResponse, HuggingFaceLocalAgent, make_payload
from midori_hf_nb.logprobs import BranchError, LogprobsResponse, token_probability

from .conftest import loaded_agent, run

pytestmark = pytest.mark.slow

SYSTEM = "You are a helpful assistant."
PROMPTS = ["What is the capital of France?", "Name three colours.", "What does a compiler do?"]
TOP = 5
#: float32 on one CPU: the decode loop's cached steps and one full forward pass agree to about 1e-5
TOLERANCE = 1e-4
#: rows of a padded batch run their products with several rows: a little more rounding
BATCH_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def fp32_agent(default_model_dir):
    yield from loaded_agent(default_model_dir, torch_dtype="float32", kv_reuse=False, max_new_tokens=20)


@pytest.fixture(scope="module")
def generate_agent(default_model_dir, fp32_agent):
    """The same loaded model, always decoding through ``model.generate``."""
    yield from loaded_agent(default_model_dir, torch_dtype="float32", kv_reuse=False, max_new_tokens=20,
                            decode_loop="generate")


def payload(text: str, system: str = SYSTEM):
    return make_payload(text, system)


def forward_rows(agent: HuggingFaceLocalAgent, prompt_ids: list[int], tokens: list[int]) -> torch.Tensor:
    """log_softmax of the logits that predicted each token, from one forward pass over prompt + tokens."""
    model = agent.loaded_model.model
    ids = torch.tensor([prompt_ids + tokens], dtype=torch.long)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0].float()
    start = len(prompt_ids) - 1
    return torch.log_softmax(logits[start:start + len(tokens)], dim=-1)


def prompt_ids(agent: HuggingFaceLocalAgent, text: str, system: str = SYSTEM) -> list[int]:
    lm = agent.loaded_model
    call = agent.resolve_settings({})
    return agent.build_prompt(lm, payload(text, system), call).input_ids


def check_greedy(agent: HuggingFaceLocalAgent, response: LogprobsResponse, text: str, tolerance: float) -> None:
    """Every step: the chosen token is the processed distribution's most likely (rank 1 among the
    raw logits too), and the raw log-probabilities equal a separate forward pass."""
    content = response.logprobs.content
    assert len(content) == response.metadata["completion_tokens"] > 3
    tokens = [record.id for record in content]
    rows = forward_rows(agent, prompt_ids(agent, text), tokens)
    for step, record in enumerate(content):
        processed = [alt.processed_logprob for alt in record.top_logprobs]
        assert record.processed_logprob is not None and all(p is None or record.processed_logprob >= p for p in processed)
        assert record.rank == 1 and record.top_logprobs[0].id == record.id
        assert abs(record.logprob - rows[step, record.id].item()) < tolerance, (step, record)
        values, ids = rows[step].topk(TOP)
        assert [alt.id for alt in record.top_logprobs] == ids.tolist()
        assert all(abs(alt.logprob - v) < tolerance for alt, v in zip(record.top_logprobs, values.tolist()))
        entropy = -(rows[step].exp() * rows[step]).sum().item()
        assert abs(record.entropy - entropy) < 10 * tolerance
        assert record.token == agent.loaded_model.tokenizer.decode([record.id])
        assert bytes(record.bytes).decode("utf-8", errors="replace") == record.token


@pytest.mark.parametrize("shared", [True, False], ids=["shared-loop", "single-loop"])
def test_greedy_on_the_engine_loop(fp32_agent, shared):
    lm = fp32_agent.loaded_model
    before = lm.share_decoding
    lm.share_decoding = shared
    try:
        response = run(fp32_agent.invoke(payload(PROMPTS[0]), greedy=True, top_logprobs=TOP))
    finally:
        lm.share_decoding = before
    assert isinstance(response, LogprobsResponse) and response.metadata["decode_path"] == "engine"
    assert "Paris" in response.response
    check_greedy(fp32_agent, response, PROMPTS[0], TOLERANCE)


def test_greedy_on_generate(generate_agent):
    response = run(generate_agent.invoke(payload(PROMPTS[1]), greedy=True, top_logprobs=TOP))
    assert response.metadata["decode_path"] == "generate"
    check_greedy(generate_agent, response, PROMPTS[1], TOLERANCE)


@pytest.mark.parametrize("path", ["engine", "generate"])
def test_greedy_batch(fp32_agent, generate_agent, path):
    agent = fp32_agent if path == "engine" else generate_agent
    responses = agent.generate_batch([payload(p) for p in PROMPTS], greedy=True, top_logprobs=TOP)
    for text, response in zip(PROMPTS, responses):
        assert response.metadata["decode_path"] == path
        check_greedy(agent, response, text, BATCH_TOLERANCE)


def test_concurrent_requests_sharing_the_loop(fp32_agent):
    async def together():
        return await asyncio.gather(*(fp32_agent.invoke(payload(p), greedy=True, top_logprobs=TOP) for p in PROMPTS))

    responses = run(together())
    assert max(r.metadata["shared_rows"] for r in responses) > 1
    for text, response in zip(PROMPTS, responses):
        check_greedy(fp32_agent, response, text, BATCH_TOLERANCE)


@pytest.mark.parametrize("path", ["engine", "generate"])
def test_sampled_steps_record_the_distribution_drawn_from(fp32_agent, generate_agent, path):
    agent = fp32_agent if path == "engine" else generate_agent
    temperature, top_k = 0.7, 3
    response = run(agent.invoke(payload(PROMPTS[1]), temperature=temperature, top_k=top_k, top_p=1.0, seed=3,
                                top_logprobs=TOP))
    assert response.metadata["decode_path"] == path
    for record in response.logprobs.content:
        raw = [alt.logprob for alt in record.top_logprobs[:top_k]]
        norm = math.log(sum(math.exp(v / temperature) for v in raw))
        for alt, value in zip(record.top_logprobs[:top_k], raw):
            assert abs(alt.processed_logprob - (value / temperature - norm)) < 1e-4
        assert all(alt.processed_logprob is None for alt in record.top_logprobs[top_k:])  # outside top-k
        assert record.rank <= top_k and record.processed_logprob is not None


def test_prompt_logprobs_and_perplexity(fp32_agent):
    texts = {"plain": "You are a helpful assistant.",
             "odd": "Purple giraffes calculate tax returns underwater, said the teapot."}
    found = {}
    for name, system in texts.items():
        response = run(fp32_agent.invoke(payload(PROMPTS[0], system), greedy=True, max_new_tokens=2,
                                          prompt_logprobs=True))
        prompt = response.logprobs.prompt
        ids = prompt_ids(fp32_agent, PROMPTS[0], system)
        assert [t.id for t in prompt.tokens] == ids and prompt.tokens[0].logprob is None
        rows = forward_rows(fp32_agent, ids[:1], ids[1:])
        assert all(abs(t.logprob - rows[i, t.id].item()) < TOLERANCE for i, t in enumerate(prompt.tokens[1:]))
        mean = sum(t.logprob for t in prompt.tokens[1:]) / (len(ids) - 1)
        assert prompt.perplexity == pytest.approx(math.exp(-mean))
        assert response.metadata["logprobs"]["prompt"]["perplexity"] == pytest.approx(prompt.perplexity)
        assert response.logprobs.content == []  # only the prompt was asked for
        found[name] = prompt.perplexity
    assert found["odd"] > found["plain"]


def test_streamed_pieces_carry_the_tokens_in_order(fp32_agent):
    async def consume():
        stream = fp32_agent.stream(payload(PROMPTS[2]), events=True, greedy=True, logprobs=True)
        events = [event async for event in stream]
        return events, stream.response

    events, response = run(consume())
    carried = [record for event in events for record in (event.logprobs or [])]
    assert carried == response.logprobs.content
    text_events = [e for e in events if e.kind == "text"]
    assert sum(1 for e in text_events if e.logprobs) >= len(text_events) // 2  # tokens stream with the pieces
    assert all(record.top_logprobs == [] for record in carried)  # logprobs=True alone: no alternatives


def test_off_by_default_and_nothing_recorded(fp32_agent):
    from midori_hf_nb import engine
    from midori_hf_nb.engine.logprobs import new_recorder

    response = run(fp32_agent.invoke(payload(PROMPTS[0]), greedy=True))
    assert type(response) is AgentResponse and "logprobs" not in response.metadata
    lm = fp32_agent.loaded_model
    call = fp32_agent.resolve_settings({"greedy": True})
    assert call.generation.probabilities is None and new_recorder(lm, None, {}) is None
    result = engine.generate(lm, prompt_ids(fp32_agent, PROMPTS[0]), call.generation)
    assert result.logprobs is None and result.prompt_logprobs is None


def test_branch_from_an_alternative(fp32_agent):
    original = run(fp32_agent.invoke(payload(PROMPTS[0]), greedy=True, top_logprobs=TOP))
    before = (original.response, list(original.logprobs.content))
    step = next(i for i, r in enumerate(original.logprobs.content) if r.top_logprobs[1].logprob > -6)
    alternative = original.logprobs.content[step].top_logprobs[1]
    branched = run(original.branch(step, alternative.token))
    content = branched.logprobs.content
    assert [r.id for r in content[:step]] == [r.id for r in original.logprobs.content[:step]]
    assert content[step].id == alternative.id and content[step].processed_logprob == 0.0
    assert abs(content[step].logprob - alternative.logprob) < TOLERANCE  # the same context as the original's step
    assert branched.logprobs.branch == {"step": step, "token": alternative.id, "forced": step + 1}
    assert (original.response, original.logprobs.content) == before  # the original is kept as it was
    assert token_probability(branched, step) == pytest.approx(math.exp(alternative.logprob))
    again = run(branched.branch(0, branched.logprobs.content[0].top_logprobs[2].id))  # a branch branches too
    assert again.logprobs.content[0].id == branched.logprobs.content[0].top_logprobs[2].id
    with pytest.raises(BranchError, match="step=999"):
        run(original.branch(999, 0))
    with pytest.raises(BranchError, match="not among the alternatives"):
        run(original.branch(step, "<no such token>"))


def test_grammar_pressure_under_a_schema(fp32_agent):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    response = run(fp32_agent.invoke(payload(PROMPTS[0]), greedy=True, top_logprobs=TOP, response_format=schema))
    assert response.parsed is not None and "city" in response.parsed
    content = response.logprobs.content
    assert all(isinstance(r.allowed, int) and r.allowed >= 1 for r in content)
    assert content[0].top_forbidden is True  # the model would begin with prose; the schema wants "{"
    for record in content:
        if record.allowed == 1:
            assert record.processed_logprob == 0.0
        allowed = [alt.processed_logprob for alt in record.top_logprobs if alt.processed_logprob is not None]
        assert all(record.processed_logprob >= p for p in allowed)
        if record.top_forbidden:
            assert record.rank > 1 and record.top_logprobs[0].processed_logprob is None
    forbidden = content[0].top_logprobs[0]
    with pytest.raises(BranchError, match="forbids"):
        run(response.branch(0, forbidden.token))
    assert response.metadata["logprobs"]["content"][0]["top_forbidden"] is True
