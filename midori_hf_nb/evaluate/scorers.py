"""Deterministic scorers: each assertion type's score in [0, 1], pass flag and reason for one answer.

:func:`score_deterministic` runs one :class:`~.assertions.Assertion` (anything but
``llm-rubric``, which a judge grades: :mod:`.judge`) on a finished row of the answers table
(a dict: ``response``, ``seconds``, ``completion_tokens``...). Semantics follow promptfoo's:

* ``equals``: the answer is the value exactly (a dict or list value: the answer parsed as JSON
  equals it); ``contains``/``icontains`` (case-insensitive), ``contains-any``/``-all`` and their
  ``i`` forms, ``starts-with``, ``regex`` (a match anywhere);
* ``is-json``: the whole answer is JSON (and matches the value's JSON schema, when given);
* ``python``: a callable of the row returning a bool, a number in [0, 1] (passes above 0, or
  at ``threshold`` and above when one is given), a ``(pass, score, reason)`` tuple or a dict with
  those keys; an exception fails the assertion with the error as reason (``status="error"``);
* ``latency``: the answer's ``seconds`` at most ``threshold`` milliseconds (for a batched row,
  the batch's time: what the request waited);
* ``word-count`` and ``token-count`` (this project's: ``completion_tokens``): exactly ``value``,
  or within ``{"min": N, "max": M}``.

``not-`` forms flip the pass flag and give ``1 - score``. Scores of the text types are 1 or 0.
A value None takes the item's ``expected``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from ..compare.columns import bounded_repr
from ..structured.formats import MAX_PARSE_CHARS
from .assertions import Assertion

STATUS_SCORED = "scored"
STATUS_UNSCORED = "unscored"  #: a judge's verdict that could not be read: never a pass
STATUS_ERROR = "error"  #: the scorer itself failed (a python check raised): counts as failed
STATUS_NOT_RUN = "not run"


@dataclass
class Score:
    """One assertion's result on one answer: ``score`` in [0, 1] and ``passed`` (both None when
    unscored), a ``reason`` and a ``status`` (:data:`STATUS_SCORED`, ``"unscored"``, ``"error"``,
    ``"not run"``)."""

    score: float | None
    passed: bool | None
    reason: str
    status: str = STATUS_SCORED

    def negated(self) -> "Score":
        """The ``not-`` form: pass flipped, score ``1 - score``."""
        if self.status != STATUS_SCORED or self.score is None or self.passed is None:
            return self
        return Score(1.0 - self.score, not self.passed, f"not: {self.reason}", self.status)


def _shown(text: Any) -> str:
    return bounded_repr(text, 80)


def _verdict(passed: bool, reason_pass: str, reason_fail: str) -> Score:
    return Score(1.0 if passed else 0.0, passed, reason_pass if passed else reason_fail)


def _text_score(kind: str, value: Any, output: str) -> Score:
    lower = output.lower()
    if kind == "contains":
        return _verdict(value in output, f"contains {_shown(value)}", f"does not contain {_shown(value)}")
    if kind == "icontains":
        return _verdict(value.lower() in lower, f"contains {_shown(value)} (any case)",
                        f"does not contain {_shown(value)} (any case)")
    if kind in ("contains-any", "icontains-any"):
        hay, needles = (lower, [v.lower() for v in value]) if kind.startswith("i") else (output, value)
        found = [v for v, n in zip(value, needles) if n in hay]
        return _verdict(bool(found), f"contains {_shown(found[0]) if found else ''}",
                        f"contains none of {_shown(value)}")
    if kind in ("contains-all", "icontains-all"):
        hay, needles = (lower, [v.lower() for v in value]) if kind.startswith("i") else (output, value)
        missing = [v for v, n in zip(value, needles) if n not in hay]
        return _verdict(not missing, f"contains all of {_shown(value)}", f"lacks {_shown(missing)}")
    if kind == "starts-with":
        return _verdict(output.startswith(value), f"starts with {_shown(value)}", f"does not start with {_shown(value)}")
    if kind == "regex":
        pattern: re.Pattern = value
        match = pattern.search(output)
        return _verdict(match is not None, f"matches {_shown(pattern.pattern)} at {_shown(match.group()) if match else ''}",
                        f"does not match {_shown(pattern.pattern)}")
    raise ValueError(f"not a text assertion: {kind!r}")


def _equals(value: Any, output: str) -> Score:
    if isinstance(value, (dict, list)):
        try:
            parsed = json.loads(output) if len(output) <= MAX_PARSE_CHARS else None
        except (ValueError, RecursionError):
            parsed = None
        return _verdict(parsed == value, "equals the expected JSON", f"is not the JSON {_shown(value)}")
    expected = "" if value is None else str(value)
    return _verdict(output == expected, f"equals {_shown(expected)}", f"is not {_shown(expected)}")


def _is_json(schema: Any, output: str) -> Score:
    if len(output) > MAX_PARSE_CHARS:
        return Score(0.0, False, f"longer than {MAX_PARSE_CHARS} characters: not parsed")
    try:
        value = json.loads(output)
    except RecursionError:
        return Score(0.0, False, "JSON nested too deeply to parse")
    except ValueError as exc:
        return Score(0.0, False, f"not JSON: {exc}")
    if schema is None:
        return Score(1.0, True, "is JSON")
    import jsonschema

    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        return Score(0.0, False, f"JSON, but not valid against the schema: {exc.message[:200]}")
    return Score(1.0, True, "is JSON valid against the schema")


def _count(kind: str, limits: Any, row: Mapping[str, Any], output: str) -> Score:
    if kind == "word-count":
        count, unit = len(output.split()), "words"
    else:
        tokens = row.get("completion_tokens")
        if tokens is None or (isinstance(tokens, float) and math.isnan(tokens)):
            return Score(0.0, False, "the agent reported no completion_tokens", STATUS_ERROR)
        count, unit = int(tokens), "tokens"
    if isinstance(limits, int):
        return _verdict(count == limits, f"{count} {unit}", f"{count} {unit}, expected {limits}")
    low, high = limits.get("min"), limits.get("max")
    inside = (low is None or count >= low) and (high is None or count <= high)
    bounds = f"[{low if low is not None else ''}, {high if high is not None else ''}]"
    return _verdict(inside, f"{count} {unit}, within {bounds}", f"{count} {unit}, outside {bounds}")


def _python(check: Any, threshold: float | None, row: Mapping[str, Any]) -> Score:
    name = getattr(check, "__name__", "check")
    try:
        result = check(dict(row))
    except Exception as exc:  # a broken check fails its assertion; the evaluation goes on
        return Score(0.0, False, f"{name} raised {type(exc).__name__}: {exc}", STATUS_ERROR)
    reason = f"{name} returned {_shown(result)}"
    if isinstance(result, Mapping):
        result = (result.get("pass"), result.get("score"), result.get("reason"))
    if isinstance(result, tuple) and len(result) == 3:
        passed, score, text = result
        score = (1.0 if passed else 0.0) if score is None else score
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not 0 <= score <= 1:
            return Score(0.0, False, f"{name}: score {_shown(score)} is not a number in [0, 1]", STATUS_ERROR)
        return Score(float(score), bool(passed), str(text) if text is not None else reason)
    if isinstance(result, bool) or result is None:
        return Score(1.0 if result else 0.0, bool(result), reason)
    if isinstance(result, (int, float)) and 0 <= result <= 1:
        passed = result >= threshold if threshold is not None else result > 0
        return Score(float(result), passed, reason)
    return Score(0.0, False, f"{name} returned {_shown(result)}: expected a bool, a number in [0, 1], "
                 "a (pass, score, reason) tuple or a dict with those keys", STATUS_ERROR)


def score_deterministic(assertion: Assertion, row: Mapping[str, Any], expected: Any = None) -> Score:
    """One deterministic assertion on one finished row (see the module documentation)."""
    output = row.get("response") or ""
    if not isinstance(output, str):
        output = str(output)
    kind = assertion.type
    value = assertion.value if assertion.value is not None else expected
    if kind in ("contains", "icontains", "starts-with", "contains-any", "icontains-any", "contains-all",
                "icontains-all", "regex"):
        if value is None:
            return Score(0.0, False, f"{kind} has no value and the item no expected", STATUS_ERROR)
        if kind == "regex" and isinstance(value, str):
            value = re.compile(value)
        if kind.endswith(("-any", "-all")) and isinstance(value, str):
            value = [value]
        result = _text_score(kind, value, output)
    elif kind == "equals":
        result = _equals(value, output)
    elif kind == "is-json":
        result = _is_json(assertion.value, output)
    elif kind == "python":
        result = _python(assertion.value, assertion.threshold, row)
    elif kind == "latency":
        seconds = row.get("seconds")
        if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
            return Score(0.0, False, "the agent reported no time", STATUS_ERROR)
        ms = float(seconds) * 1000
        result = _verdict(ms <= assertion.threshold, f"{ms:.0f} ms <= {assertion.threshold:g} ms",
                          f"{ms:.0f} ms > {assertion.threshold:g} ms")
    elif kind in ("word-count", "token-count"):
        result = _count(kind, value, row, output)
    else:
        raise ValueError(f"score_deterministic: {kind!r} is not a deterministic assertion type")
    return result.negated() if assertion.negate else result


__all__ = ["STATUS_ERROR", "STATUS_NOT_RUN", "STATUS_SCORED", "STATUS_UNSCORED", "Score", "score_deterministic"]
