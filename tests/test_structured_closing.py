"""Constrained answers close: number literals are bounded in the grammar, strings keep the
schema's bounds, and when the repetition guard notices a loop inside a constrained answer the
answer ends by a shortest completion of its grammar, so it still parses.

The grammar is checked token by token through the real logits processor on the default model's
tokenizer; the closing with real generation on a tiny random model whose output is forced into a
runaway (a digit pattern inside a number, a word inside a string) by a logits processor, on every
decode path (the shared engine loop, the engine's single-sequence loop, ``model.generate``) and in
a batch; and the offline default model answering five city questions under a schema.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch
from transformers import AutoTokenizer, LogitsProcessor

from midori_hf_nb import HuggingFaceLocalAgent
from midori_hf_nb.stats import stats_of
from midori_hf_nb.structured import backend, response_format_from
from midori_hf_nb.structured.closing import Scan, shortest_completion
from midori_hf_nb.structured.processor import GrammarLogitsProcessor

from .conftest import loaded_agent, run

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"},
                   "population_millions": {"type": "number"}},
    "required": ["city", "country", "population_millions"],
}

#: the runaway seen on the default model: a number whose digits never stop
DIGITS_PREFIX = '{"city": "Paris", "country": "France", "population_millions": 31212232'
#: a string that repeats one word
WORDS_PREFIX = '{"city": "Paris is'


class Runaway(LogitsProcessor):
    """Pushes every row towards ``prefix`` and then ``loop`` repeated forever: the scripted token
    gets a large bonus (its rivals are not removed), so where the grammar refuses it the model's
    own choice among the allowed tokens decides. A new generation is recognised when the input
    is not the previous input plus one token."""

    BONUS = 1e4

    def __init__(self, tokenizer, prefix: str, loop: str) -> None:
        self.prefix = tokenizer.encode(prefix, add_special_tokens=False)
        self.loop = tokenizer.encode(loop, add_special_tokens=False)
        self.start = 0
        self.last = -2

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        length = input_ids.shape[1]
        if length != self.last + 1:
            self.start = length
        self.last = length
        step = length - self.start
        script = self.prefix if step < len(self.prefix) else self.loop
        index = step if step < len(self.prefix) else (step - len(self.prefix)) % len(self.loop)
        out = scores.clone()
        out[:, script[index]] += self.BONUS
        return out


# ---------------------------------------------------------------- the grammar, token by token


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    return AutoTokenizer.from_pretrained(default_model_dir)


def grammar_takes(tokenizer, schema, text: str) -> bool:
    """True when the response_format's constraint, run as the engine runs it (the logits
    processor, on the default model's tokenizer), allows ``text`` token by token and ends there."""
    width, eos = len(tokenizer), (tokenizer.eos_token_id,)
    constraint = response_format_from(schema).constraint
    processor = GrammarLogitsProcessor(constraint, backend.tokenizer_for(tokenizer, width, eos), 1, width, eos)
    ids = torch.tensor([[0]])
    for token in [*tokenizer.encode(text, add_special_tokens=False), eos[0]]:
        scores = processor(ids, torch.zeros((1, width)))
        if not torch.isfinite(scores[0, token]):
            return False
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return True


@pytest.mark.parametrize("number", ["0", "-7", "3.25", "2.1e3", "-4E-12", "12345678901234567",
                                    "0.1234567890123456", "1.7976931348623157e308", "1e-17"])
def test_normal_numbers_are_accepted(tokenizer, number):
    assert grammar_takes(tokenizer, {"type": "number"}, number)
    assert grammar_takes(tokenizer, CITY, f'{{"city": "a", "country": "b", "population_millions": {number}}}')


@pytest.mark.parametrize("number", ["1" * 30, "3121223200000000000000000000000", "123456789012345678",
                                    "1.23456789012345678", "0.00000000000000001", "1e1234"])
def test_numbers_a_double_cannot_hold_are_refused(tokenizer, number):
    """More than 17 digits before the exponent, or more than 3 in it (a 30-digit number first)."""
    assert not grammar_takes(tokenizer, {"type": "number"}, number)
    assert not grammar_takes(tokenizer, CITY, f'{{"city": "a", "country": "b", "population_millions": {number}}}')


def test_integers_are_bounded_too(tokenizer):
    assert grammar_takes(tokenizer, {"type": "integer"}, "9" * 17)
    assert not grammar_takes(tokenizer, {"type": "integer"}, "9" * 30)


def test_strings_respect_max_length_and_are_otherwise_free(tokenizer):
    short = {"type": "object", "properties": {"code": {"type": "string", "maxLength": 5}}, "required": ["code"]}
    assert grammar_takes(tokenizer, short, '{"code": "abcde"}')
    assert not grammar_takes(tokenizer, short, '{"code": "abcdef"}')
    long_text = "digits 1234567890123456789012345678901234567890 and more " * 20
    assert grammar_takes(tokenizer, CITY, f'{{"city": "{long_text}", "country": "b", "population_millions": 1}}')


def test_bounds_step_aside_when_the_schema_needs_a_longer_literal(tokenizer):
    """A schema that asks for more digits than the bounds allow (a constant) still gets its answer."""
    huge = {"type": "object", "properties": {"id": {"const": 10 ** 24}}, "required": ["id"]}
    assert grammar_takes(tokenizer, huge, '{"id": 1' + "0" * 24 + "}")


# ---------------------------------------------------------------- the shortest completion


@pytest.mark.parametrize("schema, text, completion", [
    (CITY, '{"city": "Paris is very very very', '", "country": "", "population_millions": 0}'),
    (CITY, DIGITS_PREFIX, "}"),
    (CITY, '{"city": "Paris", "country": "France", "population_millions": -', "0}"),
    ({"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}, "minItems": 3},
                                       "n": {"type": "integer"}}, "required": ["tags", "n"]},
     '{"tags": ["a", "b', '", ""], "n": 0}'),
    ({"type": "object"}, '{"a": [1, 2, {"b": "ccc', '"}]}'),
    ({"type": "array", "items": {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}},
     '[{"a": "x"}, {"a', '": ""}]'),
])
def test_shortest_completions(tokenizer, schema, text, completion):
    matcher = backend.Matcher(backend.tokenizer_for(tokenizer, len(tokenizer), (tokenizer.eos_token_id,)),
                              backend.schema_grammar(schema), backend.literal_bounds_grammar())
    for token in tokenizer.encode(text, add_special_tokens=False):
        assert matcher.allows(token) and matcher.consume(token)
    tokens = shortest_completion(matcher, text.encode(), max_tokens=100)
    assert tokenizer.decode(tokens) == completion
    jsonschema.validate(json.loads(text + completion), schema)
    assert not matcher.accepting  # the search looked ahead on copies
    assert shortest_completion(matcher, text.encode(), max_tokens=len(tokens) - 1) is None


def test_completions_through_patterns_formats_enums_and_lengths(tokenizer):
    """Where a string may not close yet, the search writes what its rules need."""
    schema = {"type": "object", "required": ["code", "day", "colour", "name", "flags"], "properties": {
        "code": {"type": "string", "pattern": "^[0-9]+x$"}, "day": {"type": "string", "format": "date"},
        "colour": {"enum": ["red", "green"]}, "name": {"type": "string", "minLength": 12},
        "flags": {"type": "object", "properties": {"on": {"type": "boolean"}, "none": {"type": "null"}},
                  "required": ["on", "none"]}}}
    lltokenizer = backend.tokenizer_for(tokenizer, len(tokenizer), (tokenizer.eos_token_id,))
    text = '{"code": "00'
    matcher = backend.Matcher(lltokenizer, backend.schema_grammar(schema), backend.literal_bounds_grammar())
    for token in tokenizer.encode(text, add_special_tokens=False):
        assert matcher.consume(token)
    answer = json.loads(text + tokenizer.decode(shortest_completion(matcher, text.encode(), 200)))
    jsonschema.validate(answer, schema)
    assert answer["code"] == "00x" and answer["colour"] == "red" and len(answer["name"]) == 12


def test_the_scan_follows_strings_escapes_and_containers():
    scan = Scan().read(b'{"a": ["x\\"]", 1, ')
    assert scan.stack == ((ord("{"), 0), (ord("["), 2)) and not scan.in_string
    assert scan.closer() == ord("]")
    inside = Scan().read(b'{"a": "x\\')
    assert inside.in_string and inside.escaped and inside.closer() is None
    assert inside.step(ord("n")).closer() == ord('"')


# ---------------------------------------------------------------- forced runaways on a tiny model


@pytest.fixture(scope="module")
def tiny_agent(tiny_model):
    yield from loaded_agent(tiny_model, max_new_tokens=160)


def _runaway(agent, prefix, loop):
    return [Runaway(agent.loaded_model.tokenizer, prefix, loop)]


def _check_digits(response):
    stats = stats_of(response)
    assert stats.finish_reason == "stop", response.response
    assert response.response.startswith(DIGITS_PREFIX)
    jsonschema.validate(response.parsed, CITY)
    mantissa = response.response.split('"population_millions": ')[1].rstrip("}").lower().split("e")[0]
    assert sum(c.isdigit() for c in mantissa) <= backend.MAX_NUMBER_DIGITS


def _check_words(response, max_new_tokens=160):
    stats = stats_of(response)
    assert stats.finish_reason == "repetition", response.response
    assert stats.closing_tokens and stats.closing_tokens > 0
    assert stats.completion_tokens < max_new_tokens
    assert response.parsed is not None and stats.structured_error is None, stats.structured_error
    assert response.parsed["city"].startswith("Paris is very very very")
    assert response.parsed["country"] == "" and response.parsed["population_millions"] == 0
    assert response.response.endswith('", "country": "", "population_millions": 0}')


@pytest.mark.parametrize("path", ["shared", "engine", "generate"])
def test_forced_runaways_close_and_parse_on_every_decode_path(tiny_agent, tiny_model, payload, path):
    """``shared``: the engine's shared decode loop (the default); ``engine``: its single-sequence
    loop (sharing off); ``generate``: ``model.generate`` (``decode_loop="generate"``)."""
    agent = tiny_agent
    if path == "generate":
        agent = HuggingFaceLocalAgent(model=str(tiny_model), do_sample=False, max_new_tokens=160, progress=False,
                                      decode_loop="generate")
        run(agent.load())
    lm = agent.loaded_model
    lm.share_decoding = path == "shared"
    try:
        digits = run(agent.invoke(payload("Describe Paris as JSON."), response_format=CITY,
                                  logits_processor=_runaway(agent, DIGITS_PREFIX, "0")))
        words = run(agent.invoke(payload("Describe Paris as JSON."), response_format=CITY,
                                 logits_processor=_runaway(agent, WORDS_PREFIX, " very")))
    finally:
        lm.share_decoding = True
        if agent is not tiny_agent:
            run(agent.unload_model())
    for response in (digits, words):
        assert stats_of(response).decode_path == ("generate" if path == "generate" else "engine")
    _check_digits(digits)
    _check_words(words)


def test_forced_runaways_close_in_a_batch(tiny_agent, payload):
    payloads = [payload("Describe Paris as JSON."), payload("Describe Paris as JSON, a longer question."),
                payload("Paris?")]
    for prefix, loop, check in ((DIGITS_PREFIX, "0", _check_digits), (WORDS_PREFIX, " very", _check_words)):
        responses = tiny_agent.generate_batch(payloads, response_format=CITY,
                                              logits_processor=_runaway(tiny_agent, prefix, loop))
        assert len(responses) == 3
        for response in responses:
            assert stats_of(response).decode_path == "generate"
            check(response)


def test_a_streamed_closing_reaches_the_stream(tiny_agent, payload):
    async def go():
        stream = tiny_agent.stream(payload("Describe Paris as JSON."), response_format=CITY,
                                   logits_processor=_runaway(tiny_agent, WORDS_PREFIX, " very"))
        pieces = [piece async for piece in stream]
        return pieces, stream.response

    pieces, response = run(go())
    assert "".join(pieces) == response.response
    _check_words(response)


def test_a_closing_that_does_not_fit_ends_at_the_loop(tiny_agent, payload):
    """The guard notices the loop about 40 tokens in; the completion needs 14 more."""
    response = run(tiny_agent.invoke(payload("Describe Paris as JSON."), response_format=CITY, max_new_tokens=44,
                                     logits_processor=_runaway(tiny_agent, WORDS_PREFIX, " very")))
    stats = stats_of(response)
    assert stats.finish_reason == "repetition" and stats.closing_tokens is None
    assert response.parsed is None and "fits in max_new_tokens=44" in stats.structured_error
    assert response.response.startswith(WORDS_PREFIX) and stats.completion_tokens < 44


def test_without_the_guard_the_runaway_string_runs_to_the_budget(tiny_agent, payload):
    response = run(tiny_agent.invoke(payload("Describe Paris as JSON."), response_format=CITY, max_new_tokens=60,
                                     stop_on_repetition=False,
                                     logits_processor=_runaway(tiny_agent, WORDS_PREFIX, " very")))
    stats = stats_of(response)
    assert stats.finish_reason == "length" and stats.closing_tokens is None and response.parsed is None


# ---------------------------------------------------------------- the offline default model


@pytest.mark.slow
def test_five_city_questions_all_parse_on_the_default_model(payload):
    from midori_hf_nb import DEFAULT_MODEL

    agent = HuggingFaceLocalAgent(model=DEFAULT_MODEL, do_sample=False, progress=False)
    try:
        responses = [run(agent.invoke(payload(f"Describe {city} as JSON."), response_format=CITY))
                     for city in ("Paris", "Tokyo", "Cairo", "Lima", "Oslo")]
    finally:
        run(agent.unload_model())
    for response in responses:
        stats = stats_of(response)
        assert response.parsed is not None, (response.response, stats.finish_reason, stats.structured_error)
        jsonschema.validate(response.parsed, CITY)
        assert stats.finish_reason in ("stop", "repetition")
