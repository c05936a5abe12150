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
import re
from dataclasses import asdict, dataclass, field
from typing import Any

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

    ``verdict_probability`` is the probability the judge gave its verdict's ``pass`` token; it
    is filled when the judge's agent reports token probabilities, and stays None until then.
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


def verdict_probability(result: Any) -> float | None:
    """The probability the judge gave the token of its verdict's ``pass`` flag, from a finished
    judge row's result; None while the judge's agent reports no token probabilities. This is
    where :attr:`Verdict.verdict_probability` is filled when the agent reports them."""
    return None


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
           "VERDICT_UNSCORED", "Verdict", "parse_verdict", "verdict_probability", "verdict_schema"]
