"""A judge's verdict: its schema, how its text is read, and what is kept of it.

The verdict is the JSON object ``{"reason": str, "score": number in [0, 1], "pass": bool}``
(:data:`VERDICT_SCHEMA`, the reason first so the judge states it before it scores). A local judge
generates it under the structured-output constraint, so it always parses unless
``max_new_tokens`` runs out; a served judge is sent the schema as ``response_format``, which a
server may ignore. :func:`parse_verdict` reads the text strictly (after an optional Markdown code
fence) and validates it against the schema: anything else is **unscored**, with the judge's raw
text kept, and never counts as a pass.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ..logprobs import LogprobsError, logprobs_of

#: the longest reason a constrained judge may write (bounds the verdict's tokens)
MAX_REASON_CHARS = 240

def verdict_schema(max_reason_chars: int = MAX_REASON_CHARS) -> dict[str, Any]:
    """The verdict's JSON schema, its reason at most ``max_reason_chars`` characters long."""
    return {
        "title": "verdict",
        "type": "object",
        "properties": {
            "reason": {"type": "string", "maxLength": max_reason_chars},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "pass": {"type": "boolean"},
        },
        "required": ["reason", "score", "pass"],
        "additionalProperties": False,
    }


#: the verdict a judge returns (the default reason length)
VERDICT_SCHEMA: dict[str, Any] = verdict_schema()

VERDICT_SCORED = "scored"
VERDICT_UNSCORED = "unscored"
VERDICT_ERROR = "error"  #: the judge's call failed (the error is kept)
VERDICT_NOT_RUN = "not run"  #: interrupted before the judge answered

_FENCE = re.compile(r"^\s*```(?:json)?\s*\n?(.*?)\n?```\s*$", re.DOTALL)


@dataclass
class Verdict:
    """One judge call's outcome, kept for every row that asked for it.

    ``status``: ``"scored"``, ``"unscored"`` (the text is not a verdict: ``raw`` holds it),
    ``"error"`` (the call failed: ``error``) or ``"not run"``. ``prompt`` and ``system`` are the
    rendered judge prompt; ``seed`` and ``settings`` what the call ran with; the statistics are
    the judge's own. ``cached``: served from the judge cache (same judge, settings and prompt).

    ``verdict_probability`` is the probability the judge gave its verdict's ``pass`` flag
    (:func:`verdict_probability`); None when the judge's agent reports no token probabilities.
    """

    status: str
    judge: str
    prompt: str
    system: str = ""
    score: float | None = None
    passed: bool | None = None
    reason: str | None = None
    raw: str | None = None
    error: str | None = None
    seed: int | None = None
    settings: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    seconds: float | None = None
    finish_reason: str | None = None
    batch: int | None = None
    batch_size: int | None = None
    cached: bool = False
    verdict_probability: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The verdict as plain data (for caches and exports)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Verdict":
        """A verdict from :meth:`as_dict`'s data (unknown keys ignored)."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


#: the alternatives a judge asks for at each step (``top_logprobs``), so that a verdict's
#: probability also counts the other tokens that spell the same flag (``"true"``, ``" true"``, ``" t"``)
VERDICT_TOP_LOGPROBS = 5

_PASS_FLAG = re.compile(r'"pass"\s*:\s*(true|false)')


def _squeezed(text: str) -> str:
    return "".join(text.split())


def _spells(token: str, before: str, target: str) -> bool:
    """Whether a token at the deciding step spells the flag in ``target`` (``before`` + the flag, no
    whitespace): it goes past ``before`` and agrees with ``target`` as far as either reaches."""
    text = _squeezed(token)
    if len(text) <= len(before):
        return False
    if target.startswith(text):
        return True
    return text.startswith(target) and not text[len(target):len(target) + 1].isalnum()


def verdict_probability(result: Any, passed: bool | None = None) -> float | None:
    """The probability the judge gave its verdict's ``pass`` flag, from a finished judge row's
    result (or anything :func:`~midori_hf_nb.logprobs.logprobs_of` reads); None when the judge's
    agent reported no token probabilities, or they do not show the flag.

    The flag is the last ``"pass": true|false`` of the generated tokens; the deciding step is the
    token where its value begins. The probability is the sum, over the generated token and the
    recorded alternatives at that step, of those that spell the same value (``" true"``,
    ``"true"``, ``" t"``, ...): after them the value can only be completed one way. The recorded
    alternatives are the model's :data:`VERDICT_TOP_LOGPROBS` most likely tokens, so a spelling
    outside them is not counted (the figure is then a lower bound). It is read
    from the distribution the token was drawn from (``processed_logprob``: for a local judge under
    the verdict schema, the model's probabilities renormalised over what the schema allowed), or
    the raw log-probabilities where only those are known (a server's). It is conditional on the
    tokens before it (the reason and score the judge wrote). ``passed``: the parsed flag; when
    given and the tokens show the other value, None.
    """
    try:
        found = logprobs_of(result)
    except LogprobsError:
        return None
    if found is None or not found.content:
        return None
    joined = "".join(record.token for record in found.content)
    matches = list(_PASS_FLAG.finditer(joined))
    if not matches:
        return None
    flag = matches[-1]
    if passed is not None and (flag.group(1) == "true") != passed:
        return None
    start = 0
    for record in found.content:
        if start + len(record.token) > flag.start(1):
            break
        start += len(record.token)
    before = _squeezed(joined[start:flag.start(1)])
    target = before + flag.group(1)
    processed = record.processed_logprob is not None
    seen: set[Any] = set()
    total = 0.0
    for candidate in (record, *record.top_logprobs):
        key = candidate.id if candidate.id is not None else candidate.token
        if key in seen or not _spells(candidate.token, before, target):
            continue
        seen.add(key)
        value = candidate.processed_logprob if processed else candidate.logprob
        if value is not None:
            total += math.exp(value)
    return min(total, 1.0)


def parse_verdict(text: str | None, finish_reason: str | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """``(verdict, None)`` when ``text`` is a verdict matching :data:`VERDICT_SCHEMA` (plain, or in
    one Markdown code fence), else ``(None, why)``."""
    if text is None:
        return None, "the judge returned no text"
    if finish_reason == "length":
        return None, "the verdict reached max_new_tokens before the JSON closed"
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    if len(body) > 20 * MAX_REASON_CHARS:
        return None, "the verdict is far longer than a verdict"
    try:
        value = json.loads(body)
    except RecursionError:
        return None, "the verdict is nested too deeply"
    except ValueError as exc:
        return None, f"the verdict is not JSON ({exc.msg})"
    import jsonschema

    relaxed = verdict_schema()
    relaxed["properties"]["reason"] = {"type": "string"}
    try:
        jsonschema.validate(value, relaxed)  # a served judge may write a longer reason: still a verdict
    except jsonschema.ValidationError as exc:
        return None, f"the verdict does not match the schema: {exc.message[:200]}"
    return value, None


__all__ = ["MAX_REASON_CHARS", "VERDICT_ERROR", "VERDICT_NOT_RUN", "VERDICT_SCHEMA", "VERDICT_SCORED",
           "VERDICT_TOP_LOGPROBS", "VERDICT_UNSCORED", "Verdict", "parse_verdict", "verdict_probability",
           "verdict_schema"]
