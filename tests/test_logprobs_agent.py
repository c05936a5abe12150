"""Token probabilities through the rest of the agent's surface, on a tiny model with forced output:
the tool loop's final answer, calls with tools, batches (prompt probabilities included, and a
batch's answers branch), and branching under a tool loop's context."""

from __future__ import annotations

import pytest

from midori_hf_nb import make_payload
from midori_hf_nb.logprobs import LogprobsResponse

from .conftest import loaded_agent, run, scripted


@pytest.fixture(scope="module")
def agent(tiny_model):
    yield from loaded_agent(tiny_model, max_new_tokens=40, kv_reuse=False)


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return a * b


def texts(response: LogprobsResponse) -> str:
    return "".join(record.token for record in response.logprobs.content)


def test_the_tool_loop_gives_the_final_answer_s_tokens(agent):
    forced = scripted(agent, "TOOL_CALL: multiply(a=6, b=7)", "It is 42.")
    response = run(agent.run_tools(make_payload("6 * 7?"), [multiply], logits_processor=forced, top_logprobs=2))
    assert response.response == "It is 42." and response.metadata["steps"] == 2
    assert isinstance(response, LogprobsResponse)
    assert texts(response).startswith("It is 42.")  # the final step's tokens (then its end token)
    assert response.metadata["logprobs"]["content"][0]["token"] == response.logprobs.content[0].token
    assert all(len(record.top_logprobs) == 2 for record in response.logprobs.content)
    assert all(record.processed_logprob == 0.0 for record in response.logprobs.content)  # forced: no competitor


def test_calls_with_tools_carry_them(agent):
    forced = scripted(agent, "TOOL_CALL: multiply(a=2, b=3)")
    response = run(agent.invoke_with_tools(make_payload("2 * 3?"), [multiply], logits_processor=forced,
                                           logprobs=True))
    assert response.tool_calls[0]["name"] == "multiply"
    assert texts(response).startswith("TOOL_CALL: multiply(a=2, b=3)")


def test_a_batch_records_each_answer_and_its_prompt(agent):
    payloads = [make_payload("Hello there"), make_payload("A longer question, with more words in it?")]
    responses = agent.generate_batch(payloads, max_new_tokens=6, greedy=True, top_logprobs=3, prompt_logprobs=True)
    for payload, response in zip(payloads, responses):
        assert len(response.logprobs.content) == response.metadata["completion_tokens"]
        prompt = response.logprobs.prompt
        assert len(prompt.tokens) == response.metadata["prompt_tokens"] and prompt.perplexity > 1
    assert responses[0].logprobs.prompt.tokens != responses[1].logprobs.prompt.tokens
    step = 1
    alternative = responses[1].logprobs.content[step].top_logprobs[2]
    branched = run(responses[1].branch(step, alternative.id))
    assert [r.id for r in branched.logprobs.content[:step]] == [r.id for r in responses[1].logprobs.content[:step]]
    assert branched.logprobs.content[step].id == alternative.id


def test_a_paused_stream_keeps_every_token_record(tiny_model):
    """A stream nobody reads pauses after its look-ahead and continues when read again: its token
    records are those of the answer that never paused, streamed with its pieces."""
    from .test_hostile_streams import wait_until_idle

    prompt = make_payload("Tell me everything.")

    async def scenario(agent):
        unpaused = await agent.invoke(prompt, logprobs=True)
        stream = agent.stream(prompt, events=True, logprobs=True)
        events = []
        async for event in stream:
            events.append(event)
            break
        idle = await wait_until_idle(timeout=60)
        was_paused = stream.paused
        events += [event async for event in stream]
        return unpaused, stream.response, events, idle, was_paused

    for agent in loaded_agent(tiny_model, max_new_tokens=200, stop_on_repetition=False):
        unpaused, resumed, events, idle, was_paused = run(scenario(agent))
    assert idle == [] and was_paused
    content = resumed.logprobs.content
    assert len(content) == resumed.metadata["completion_tokens"] == 200
    assert [r.id for r in content] == [r.id for r in unpaused.logprobs.content]
    assert all(abs(a.logprob - b.logprob) < 1e-3 for a, b in zip(content, unpaused.logprobs.content))
    assert [r for e in events for r in (e.logprobs or [])] == content
