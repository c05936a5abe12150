"""Token probabilities as data: the per-call options and their checks, the OpenAI shape and its
plain form, reading untrusted forms (servers, transcripts) within bounds, and the public helpers
(``token_probability``, ``step_at``, the DataFrame)."""

from __future__ import annotations

import json
import math
import re

import pytest

from midori_hf_nb import AgentResponse, ConfigError, MemoryEntryData
from midori_hf_nb.logprobs import (
    Logprobs,
    LogprobsError,
    PromptLogprobs,
    PromptToken,
    TokenLogprob,
    TopLogprob,
    least_confident,
    logprobs_frame,
    logprobs_of,
    prompt_perplexity,
    read_logprobs,
    step_at,
    token_probability,
)
from midori_hf_nb.settings import check_overrides
from midori_hf_nb.stats import ResponseStats, StatsError


def record(token: str, logprob: float, token_id: int, alternatives: list[tuple[str, float, int, float | None]],
           processed: float | None = None, **extra) -> TokenLogprob:
    return TokenLogprob(token, logprob, list(token.encode()), [TopLogprob(t, lp, list(t.encode()), i, p)
                                                              for t, lp, i, p in alternatives],
                        token_id, logprob if processed is None else processed, **extra)


def answer() -> Logprobs:
    """" true" chosen at step 2, with "true"/" false" as alternatives (a judge's verdict)."""
    return Logprobs(content=[
        record('{"', -0.01, 1, [('{"', -0.01, 1, 0.0)], processed=0.0, rank=1, entropy=0.05, allowed=1,
               top_forbidden=False),
        record("pass", -0.2, 2, [("pass", -0.2, 2, -0.1), ("score", -1.8, 3, -1.9)], rank=1, entropy=0.6, allowed=2,
               top_forbidden=False),
        record(" true", math.log(0.7), 4, [(" true", math.log(0.7), 4, math.log(0.72)),
                                           (" false", math.log(0.25), 5, math.log(0.28)),
                                           ("<b>", math.log(0.01), 6, None)],
               processed=math.log(0.72), rank=1, entropy=0.7, allowed=2, top_forbidden=False),
    ], prompt=PromptLogprobs([PromptToken("a", None, 9), PromptToken("b", -1.0, 10), PromptToken("c", -3.0, 11)]),
        top=3)


# --------------------------------------------------------------------------- options


def test_options_are_checked_and_normalised():
    assert check_overrides({"top_logprobs": 5}) == {"logprobs": True, "top_logprobs": 5}  # k > 0 turns logprobs on
    assert check_overrides({"logprobs": True, "prompt_logprobs": True}) == {"logprobs": True, "prompt_logprobs": True}
    assert check_overrides({"logprobs": False, "top_logprobs": 0}) == {}  # nothing asked: nothing recorded
    with pytest.raises(ConfigError, match="top_logprobs=21 is not allowed: expected a whole number from 0 to 20"):
        check_overrides({"top_logprobs": 21})
    with pytest.raises(ConfigError, match="top_logprobs=True is not allowed"):
        check_overrides({"top_logprobs": True})
    with pytest.raises(ConfigError, match="logprobs='yes' is not allowed: expected true or false"):
        check_overrides({"logprobs": "yes"})
    with pytest.raises(ConfigError, match="prompt_logprobs=1 is not allowed"):
        check_overrides({"prompt_logprobs": 1})


def test_settings_carry_the_request_and_leave_generate_options_alone():
    from midori_hf_nb import HuggingFaceConfig
    from midori_hf_nb.settings import resolve_call_settings

    call = resolve_call_settings(HuggingFaceConfig(model="m"), {"top_logprobs": 3, "prompt_logprobs": True,
                                                               "repetition_penalty": 1.1})
    request = call.generation.probabilities
    assert (request.tokens, request.top, request.prompt) == (True, 3, True)
    assert call.generation.extra == {"repetition_penalty": 1.1}
    assert resolve_call_settings(HuggingFaceConfig(model="m"), {}).generation.probabilities is None


# --------------------------------------------------------------------------- the shape and its plain form


def test_openai_shape_and_round_trip():
    found = answer()
    plain = found.as_dict()
    assert [set(item) >= {"token", "logprob", "bytes", "top_logprobs"} for item in plain["content"]] == [True] * 3
    assert plain["content"][2]["top_logprobs"][2] == {"token": "<b>", "logprob": math.log(0.01), "bytes": [60, 98, 62],
                                                      "id": 6}  # no processed value: it had no chance
    assert read_logprobs(json.loads(json.dumps(plain))) == found
    assert found.content[2].bytes == list(" true".encode())
    assert found.tokens == ['{"', "pass", " true"]
    assert found.prompt.perplexity == pytest.approx(math.exp(2.0))
    assert prompt_perplexity(found) == pytest.approx(math.exp(2.0))
    assert found.perplexity == pytest.approx(math.exp(-(-0.01 - 0.2 + math.log(0.7)) / 3))


def test_an_openai_object_reads_as_it_is():
    server = {"content": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105],
                           "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]},
                                            {"token": "Hello", "logprob": -1.2, "bytes": None}]}]}
    found = read_logprobs(server)
    assert found.content[0].top_logprobs[1].token == "Hello" and found.content[0].processed_logprob is None
    assert token_probability(found, 0, "Hello") == pytest.approx(math.exp(-1.2))


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["content"][0].update(logprob=float("nan")), "logprobs.content[0].logprob"),
    (lambda d: d["content"][0].update(logprob=0.5), "logprobs.content[0].logprob"),
    (lambda d: d["content"][0].update(logprob="-1"), "logprobs.content[0].logprob"),
    (lambda d: d["content"][1].update(token="x" * 1001), "logprobs.content[1].token"),
    (lambda d: d["content"][1].update(bytes=[256]), "logprobs.content[1].bytes"),
    (lambda d: d["content"][2].update(top_logprobs=[{"token": "a", "logprob": -1.0}] * 21),
     "logprobs.content[2].top_logprobs"),
    (lambda d: d["content"][2]["top_logprobs"][0].update(id=-3), "logprobs.content[2].top_logprobs[0].id"),
    (lambda d: d["content"][2].update(rank=0), "logprobs.content[2].rank"),
    (lambda d: d["content"][2].update(top_forbidden="no"), "logprobs.content[2].top_forbidden"),
    (lambda d: d.update(content="tokens"), "logprobs.content"),
    (lambda d: d.update(source="somewhere"), "logprobs.source"),
    (lambda d: d["prompt"]["tokens"][1].update(logprob=float("inf")), "logprobs.prompt.tokens[1].logprob"),
])
def test_untrusted_forms_are_refused_naming_the_field(mutate, field):
    data = json.loads(json.dumps(answer().as_dict()))
    mutate(data)
    with pytest.raises(LogprobsError, match="^" + re.escape(field) + "="):
        read_logprobs(data)


def test_minus_infinity_means_no_chance():
    data = answer().as_dict()
    data["content"][2]["top_logprobs"][2]["processed_logprob"] = float("-inf")
    assert read_logprobs(data).content[2].top_logprobs[2].processed_logprob is None
    data["content"][0]["logprob"] = -1e9  # far below what a double's exp holds: kept as the floor
    assert read_logprobs(data).content[0].logprob == -1000.0


# --------------------------------------------------------------------------- helpers


def test_token_probability_of_the_chosen_token_and_alternatives():
    response = AgentResponse(thinking="", response="...", metadata={"logprobs": answer().as_dict()})
    assert token_probability(response, 2) == pytest.approx(0.7)
    assert token_probability(response, 2, processed=True) == pytest.approx(0.72)
    assert token_probability(response, 2, " false") == pytest.approx(0.25)
    assert token_probability(response, 2, 5, processed=True) == pytest.approx(0.28)  # by id
    assert token_probability(response, 2, "<b>", processed=True) == 0.0  # recorded, but no chance when sampled
    assert token_probability(response, 2, "false") is None  # not recorded: " false" is another token
    assert token_probability(response, -1) == pytest.approx(0.7)
    with pytest.raises(LookupError, match="step=3 is not allowed"):
        token_probability(response, 3)
    with pytest.raises(LookupError, match="no token probabilities"):
        token_probability(AgentResponse(thinking="", response="x", metadata={}), 0)


def test_step_at_a_character_of_the_answer():
    text = "".join(answer().tokens)  # '{"pass true'
    assert [step_at(answer(), text.index(part)) for part in ('{"', "pass", " true")] == [0, 1, 2]
    assert step_at(answer(), len(text)) is None


def test_sources_it_reads():
    found = answer()
    row = {"response": "x", "token_logprobs": found.as_dict()}  # a comparison row
    metadata = {"logprobs": found.as_dict()}
    assert logprobs_of(row) == logprobs_of(metadata) == logprobs_of(found.as_dict()) == found
    assert logprobs_of({"response": "x"}) is None and logprobs_of(None) is None
    with pytest.raises(LogprobsError, match="metadata\\['logprobs'\\].content"):
        logprobs_of(AgentResponse(thinking="", response="x", metadata={"logprobs": {"content": 3}}))


def test_frame_and_least_confident():
    frame = logprobs_frame(answer())
    assert list(frame["token"]) == ['{"', "pass", " true"] and str(frame["rank"].dtype) == "Int64"
    assert frame.loc[2, "alternatives"][1] == (" false", pytest.approx(0.25), pytest.approx(0.28))
    assert frame.loc[0, "allowed"] == 1 and not frame.loc[2, "top_forbidden"]
    assert frame.loc[2, "surprisal_bits"] == pytest.approx(-math.log2(0.7))
    assert list(logprobs_frame(AgentResponse(thinking="", response="", metadata={})).columns) == list(frame.columns)
    assert [step for step, _ in least_confident(answer(), 2)] == [2, 1]


# --------------------------------------------------------------------------- metadata and transcripts


def test_statistics_keep_checked_probabilities():
    stats = ResponseStats.from_metadata({"logprobs": answer().as_dict(), "completion_tokens": 3})
    assert read_logprobs(stats.logprobs) == answer()
    assert "logprobs" not in ResponseStats().as_dict()  # left out while not asked
    bad = {"logprobs": {"content": [{"token": "a", "logprob": "high"}]}}
    assert ResponseStats.from_metadata(bad).logprobs is None  # dropped when read leniently
    with pytest.raises(StatsError, match="metadata field 'logprobs'.content\\[0\\].logprob"):
        ResponseStats.from_metadata(bad, strict=True)


def test_chat_transcripts_keep_them_and_refuse_bad_ones():
    from midori_hf_nb.notebook.chat.document import read_document, write_document
    from midori_hf_nb.notebook.chat.transcript import TranscriptEntry

    entry = TranscriptEntry(role="assistant", content="true", stats=ResponseStats(logprobs=answer().as_dict()))
    text = write_document([MemoryEntryData("user", "ok?"), entry.to_memory()], {}, model="m", session_id="s")
    loaded = read_document(text).memory[1]
    assert logprobs_of(TranscriptEntry.from_memory(loaded).as_response()) == answer()
    hostile = json.loads(text)
    hostile["memory"][1]["metadata"]["logprobs"]["content"][0]["top_logprobs"] = [{"token": "x", "logprob": -1}] * 50
    with pytest.raises(ValueError, match="transcript message 1: .*top_logprobs=.* is not allowed: expected a list of at "
                                         "most 20 items"):
        read_document(json.dumps(hostile))


def test_the_recorder_s_numbers_on_the_cpu_and_on_an_accelerator_agree():
    """The CPU path (numpy, in the decoding thread) and the accelerator path (torch, on the device) give
    the same numbers; the torch path is exercised here on CPU tensors."""
    import torch

    from midori_hf_nb.engine.logprobs import _row_values, device_values

    generator = torch.Generator().manual_seed(0)
    raw = torch.randn(3, 5000, generator=generator) * 4
    processed = raw / 0.7
    processed[:, ::2] = float("-inf")  # a constraint (or top-k) left only some tokens
    tokens = torch.tensor([int(row[1::2].argmax()) * 2 + 1 for row in processed])
    on_device = device_values(raw, processed, tokens, 5)
    for row in range(3):
        values, ids, top_raw, top_processed = _row_values(raw[row].numpy(), processed[row].numpy(),
                                                          int(tokens[row]), 5)
        expected = on_device[row]
        assert ids == expected[1] and values[2] == expected[0][2]
        assert values[:2] + values[3:] == pytest.approx(expected[0][:2] + expected[0][3:], abs=1e-4)
        assert top_raw == pytest.approx(expected[2], abs=1e-4)
        assert [v if v != float("-inf") else None for v in top_processed] == \
            [pytest.approx(v, abs=1e-4) if v != float("-inf") else None for v in expected[3]]
    same = device_values(raw, raw, tokens, 0)
    assert [v[0][0] for v in same] == [v[0][1] for v in same] and same[0][1] == []


def test_agents_refuse_them_as_construction_options():
    from midori_hf_nb import HuggingFaceLocalAgent, OpenAICompatibleAgent

    with pytest.raises(ConfigError, match="top_logprobs'\\]=5 is not allowed: top_logprobs is a per-call option"):
        HuggingFaceLocalAgent(model="m", top_logprobs=5)
    with pytest.raises(ConfigError, match="logprobs'\\]=True is not allowed: logprobs is a per-call option"):
        OpenAICompatibleAgent(model="m", base_url="http://127.0.0.1:9/v1", logprobs=True)


def test_a_server_s_records_are_bounded_and_checked():
    from midori_hf_nb.logprobs import ProbabilityRequest
    from midori_hf_nb.served.logprobs import ServedLogprobs

    item = {"token": "a", "logprob": -0.1, "bytes": [97], "top_logprobs": [{"token": "b", "logprob": -3.0}] * 25}
    reading = ServedLogprobs(ProbabilityRequest(tokens=True, top=3), budget=4)
    assert len(reading.absorb({"logprobs": {"content": [item] * 50}})) == 20  # max_new_tokens and some slack
    assert all(len(record.top_logprobs) == 20 for record in reading.content)  # a longer list is cut
    assert "more than 20 token records" in reading.result("http://server").note
    broken = ServedLogprobs(ProbabilityRequest(tokens=True))
    broken.absorb({"logprobs": {"content": [item, {"token": "<x>", "logprob": "sure"}, item]}})
    found = broken.result("http://server")
    assert len(found.content) == 1 and "could not be read: logprobs.content[1].logprob='sure'" in found.note
    assert ServedLogprobs(None).result("http://server") is None
