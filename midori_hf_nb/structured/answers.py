"""Checking an answer against its JSON schema, in time linear in the answer.

``jsonschema`` checks every keyword, but matches ``pattern``, ``patternProperties`` (and the
keys ``additionalProperties`` leaves to them) with Python's backtracking ``re``, which takes
exponential time on some patterns (``(a|a)*b`` against 26 ``a``\\ s: seconds; 30: minutes). The
validator made here replaces those three keywords by the same checks through
:func:`~.backend.pattern_search` (llguidance's regex engine, linear in the text). ``format`` is
not asserted (no format checker), so no format check runs a regular expression on model output
either; the constraint enforces the formats it knows while generating.

Answers of pydantic models and Python types are checked by pydantic, whose patterns run on
Rust's ``regex`` crate (linear time; it refuses look-around and back-references, as llguidance
does).
"""

from __future__ import annotations

import functools
from typing import Any, Iterator

from . import backend


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    from jsonschema import ValidationError

    if validator.is_type(instance, "string") and not backend.pattern_search(pattern, instance):
        yield ValidationError(f"{instance[:80]!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if backend.pattern_search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional(instance: dict, schema: dict) -> list[str]:
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    return [key for key in instance if key not in properties
            and not any(backend.pattern_search(pattern, key) for pattern in patterns)]


def _additional_properties(validator: Any, allowed: Any, instance: Any, schema: Any) -> Iterator[Any]:
    from jsonschema import ValidationError

    if not validator.is_type(instance, "object"):
        return
    extras = _additional(instance, schema)
    if validator.is_type(allowed, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], allowed, path=extra)
    elif not allowed and extras:
        shown = ", ".join(repr(key[:80]) for key in sorted(extras)[:10])
        yield ValidationError(f"Additional properties are not allowed ({shown} unexpected)")


@functools.lru_cache(maxsize=16)
def _linear(base: type) -> type:
    from jsonschema import validators

    replaced = {"pattern": _pattern, "patternProperties": _pattern_properties,
                "additionalProperties": _additional_properties}
    return validators.extend(base, {k: v for k, v in replaced.items() if k in base.VALIDATORS})


def answer_validator(schema: dict[str, Any]) -> Any:
    """A ``jsonschema`` validator of ``schema`` (its draft, from ``$schema``) whose pattern keywords
    run in linear time (see the module docstring), without a format checker."""
    from jsonschema import validators

    return _linear(validators.validator_for(schema))(schema, format_checker=None)


__all__ = ["answer_validator"]
