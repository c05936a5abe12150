"""Assertions: what an answer is checked against, by promptfoo's names, validated before anything runs.

An :class:`Assertion` is one check of one answer: a ``type`` from :data:`ASSERTION_TYPES`
(promptfoo's names, so configurations carry over), its ``value``, an optional ``threshold`` and
a ``weight``; ``not-`` before a type negates it (the pass flag flips and the score becomes
``1 - score``). :func:`assertion_from` accepts promptfoo's dict form
(``{"type": "contains", "value": "Paris", "weight": 2}``), a substring (``contains``), a compiled
regex (``regex``) or a callable of the row (``python``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..compare.columns import bounded_repr

#: deterministic assertion types (each also in a ``not-`` form)
DETERMINISTIC_TYPES = (
    "equals", "contains", "icontains", "contains-any", "icontains-any", "contains-all", "icontains-all",
    "regex", "starts-with", "is-json", "python", "latency", "word-count", "token-count",
)
#: the judged assertion type: a judge model grades the answer against a rubric
RUBRIC_TYPE = "llm-rubric"
#: every assertion type understood (``not-`` forms of the deterministic ones too)
ASSERTION_TYPES = (*DETERMINISTIC_TYPES, RUBRIC_TYPE)
#: the keys of an assertion's dict form that are understood
ASSERTION_KEYS = ("type", "value", "threshold", "weight", "metric", "rubricPrompt")
NEGATION = "not-"


class AssertionSpecError(ValueError):
    """An assertion that cannot be understood; the message names where it came from."""


@dataclass(frozen=True)
class Assertion:
    """One check of an answer (see the module documentation).

    ``value`` None means the item's ``expected`` (for ``equals``, ``contains`` and the others
    that compare text). ``metric``: the assertion's name in tables (default: its type and value).
    ``rubric_prompt``: a judge prompt template for this ``llm-rubric`` only (promptfoo's
    ``rubricPrompt``), with ``{{ output }}``, ``{{ rubric }}`` and the item's variables.
    """

    type: str
    value: Any = None
    threshold: float | None = None
    weight: float = 1.0
    negate: bool = False
    metric: str | None = None
    rubric_prompt: str | None = field(default=None, repr=False)

    @property
    def full_type(self) -> str:
        """The type as written, with ``not-`` when negated."""
        return (NEGATION if self.negate else "") + self.type

    @property
    def judged(self) -> bool:
        """True for ``llm-rubric``: a judge grades it."""
        return self.type == RUBRIC_TYPE

    @property
    def label(self) -> str:
        """The assertion's name in tables: its ``metric``, else its type and (bounded) value."""
        if self.metric:
            return self.metric
        if self.value is None:
            return self.full_type
        if callable(self.value):
            return f"{self.full_type} {getattr(self.value, '__name__', 'check')}"
        if isinstance(self.value, re.Pattern):
            return f"{self.full_type} {bounded_repr(self.value.pattern, 60)}"
        return f"{self.full_type} {bounded_repr(self.value, 60)}"

    def with_value(self, value: Any) -> "Assertion":
        """A copy with another value (templates rendered with an item's variables)."""
        return Assertion(self.type, value, self.threshold, self.weight, self.negate, self.metric, self.rubric_prompt)


def _number(where: str, name: str, value: Any, low: float | None = None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise AssertionSpecError(f"{where}: {name}={bounded_repr(value)} is not allowed: expected a number")
    if low is not None and value < low:
        raise AssertionSpecError(f"{where}: {name}={value!r} is not allowed: expected a number >= {low}")
    return float(value)


def _check_value(where: str, kind: str, value: Any) -> Any:
    """The value of an assertion of type ``kind``, checked; raises naming ``where``."""
    def bad(allowed: str) -> AssertionSpecError:
        return AssertionSpecError(f"{where}: value={bounded_repr(value)} is not allowed for {kind!r}: expected {allowed}")

    if kind in ("contains-any", "icontains-any", "contains-all", "icontains-all"):
        if isinstance(value, str):  # promptfoo splits a comma-separated string
            value = [part.strip() for part in value.split(",") if part.strip()]
        if value is not None and (not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value)):
            raise bad("a list of texts (or one comma-separated text)")
        return None if value is None else list(value)
    if kind == "regex":
        if isinstance(value, str):
            try:
                return re.compile(value)
            except re.error as exc:
                raise bad(f"a regular expression ({exc})") from None
        if value is not None and not isinstance(value, re.Pattern):
            raise bad("a regular expression (text or re.compile)")
        return value
    if kind == "python":
        if not callable(value):
            raise bad("a callable that receives the row as a dict and returns a bool, a number in [0, 1] or a "
                      "(pass, score, reason) tuple (Python code given as text is not run)")
        return value
    if kind == "is-json":
        if value is not None and not isinstance(value, (dict, str)):
            raise bad("None (any JSON) or a JSON schema (a dict, or its JSON text)")
        if isinstance(value, str):
            import json

            try:
                value = json.loads(value)
            except ValueError:
                raise bad("a JSON schema as JSON text") from None
        if value is not None:
            _check_schema(where, value)
        return value
    if kind == "latency":
        if value is not None:
            raise bad("no value: the limit is the threshold, in milliseconds")
        return None
    if kind in ("word-count", "token-count"):
        return _count_limits(value, bad)
    if kind in ("contains", "icontains", "starts-with") and value is not None and not isinstance(value, str):
        raise bad("a text")
    if kind == RUBRIC_TYPE and (not isinstance(value, str) or not value.strip()):
        raise bad("the rubric: a text saying what a passing answer does")
    return value


def _count_limits(value: Any, bad: Callable[[str], AssertionSpecError]) -> Any:
    allowed = "a whole number (exactly that many) or {'min': N, 'max': M} (either may be left out)"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, Mapping) and value and set(value) <= {"min", "max"}:
        for bound in value.values():
            if isinstance(bound, bool) or not isinstance(bound, int) or bound < 0:
                raise bad(allowed)
        return dict(value)
    raise bad(allowed)


def _check_schema(where: str, schema: Any) -> None:
    import jsonschema

    if not isinstance(schema, dict):
        raise AssertionSpecError(f"{where}: the is-json schema must be a JSON object (a dict)")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise AssertionSpecError(f"{where}: not a valid JSON schema: {exc.message}") from None


def assertion_from(spec: Any, where: str = "assert") -> Assertion:
    """An :class:`Assertion` from promptfoo's dict form, an :class:`Assertion`, a substring, a
    compiled regex or a callable of the row. Raises :class:`ValueError` naming ``where``, the
    field and what is allowed; unknown keys of a dict are refused (so nothing is silently ignored).
    """
    if isinstance(spec, Assertion):
        return spec
    if isinstance(spec, str):
        return Assertion("contains", spec)
    if isinstance(spec, re.Pattern):
        return Assertion("regex", spec)
    if callable(spec):
        return Assertion("python", spec)
    if not isinstance(spec, Mapping):
        raise AssertionSpecError(f"{where}={bounded_repr(spec)} is not allowed: expected a dict with 'type' (and "
                              "'value', 'threshold', 'weight'), a substring, a compiled regex or a callable(row)")
    unknown = [k for k in spec if k not in ASSERTION_KEYS]
    if unknown:
        raise AssertionSpecError(f"{where}: keys {unknown!r} are not understood: expected {', '.join(ASSERTION_KEYS)}")
    kind = spec.get("type")
    if not isinstance(kind, str):
        raise AssertionSpecError(f"{where}: type={bounded_repr(kind)} is not allowed: expected one of "
                              + ", ".join(ASSERTION_TYPES) + " (deterministic types also as 'not-TYPE')")
    negate = kind.startswith(NEGATION)
    base = kind[len(NEGATION):] if negate else kind
    if base not in ASSERTION_TYPES or (negate and base == RUBRIC_TYPE):
        raise AssertionSpecError(f"{where}: type={kind!r} is not understood: expected one of "
                              + ", ".join(ASSERTION_TYPES) + " (deterministic types also as 'not-TYPE')")
    value = _check_value(f"{where} ({kind})", base, spec.get("value"))
    threshold = _number(where, "threshold", spec.get("threshold"), low=0)
    if base == "latency" and threshold is None:
        raise AssertionSpecError(f"{where}: latency needs a threshold: the most milliseconds an answer may take")
    weight = _number(where, "weight", spec.get("weight", 1.0), low=0)
    metric = spec.get("metric")
    if metric is not None and not isinstance(metric, str):
        raise AssertionSpecError(f"{where}: metric={bounded_repr(metric)} is not allowed: expected a text")
    rubric_prompt = spec.get("rubricPrompt")
    if rubric_prompt is not None and (base != RUBRIC_TYPE or not isinstance(rubric_prompt, str)):
        raise AssertionSpecError(f"{where}: rubricPrompt is allowed only on llm-rubric, as a text template")
    return Assertion(base, value, threshold, 1.0 if weight is None else weight, negate, metric, rubric_prompt)


def assertions_from(specs: Any, where: str = "asserts") -> list[Assertion]:
    """A list of assertions from None, one assertion spec or a list of them."""
    if specs is None:
        return []
    items = list(specs) if isinstance(specs, (list, tuple)) else [specs]
    return [assertion_from(spec, f"{where}[{i}]") for i, spec in enumerate(items)]


__all__ = ["ASSERTION_KEYS", "ASSERTION_TYPES", "Assertion", "AssertionSpecError", "DETERMINISTIC_TYPES", "NEGATION", "RUBRIC_TYPE",
           "assertion_from", "assertions_from"]
