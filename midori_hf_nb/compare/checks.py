"""Checks of each answer: a substring, a compiled regex or a callable of the row.

Each check becomes a ``"check: NAME"`` column and all of them together the ``passed`` column.
A check that raises counts as failed and its error is added to the row's ``error``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .columns import not_allowed
from .rows import Row


@dataclass(frozen=True)
class Check:
    """A named check: ``test`` receives the row as a dict (column -> value) and returns a truth value."""

    name: str
    test: Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class ContainsCheck:
    """True when the answer contains ``text``."""

    text: str

    def __call__(self, row: Mapping[str, Any]) -> bool:
        return self.text in (row.get("response") or "")


@dataclass(frozen=True)
class RegexCheck:
    """True when ``pattern`` matches somewhere in the answer."""

    pattern: re.Pattern

    def __call__(self, row: Mapping[str, Any]) -> bool:
        return self.pattern.search(row.get("response") or "") is not None


def default_name(check: Any, index: int) -> str:
    """A check's column name when none is given: ``contains 'x'``, ``matches 'x'``, its function name."""
    if isinstance(check, str):
        return f"contains {check!r}"
    if isinstance(check, re.Pattern):
        return f"matches {check.pattern!r}"
    name = getattr(check, "__name__", "")
    return name if name and name != "<lambda>" else f"check {index + 1}"


def as_test(name: str, check: Any) -> Callable[[dict[str, Any]], Any]:
    """The callable of a check given as a substring, a compiled regex or a callable."""
    if isinstance(check, str):
        return ContainsCheck(check)
    if isinstance(check, re.Pattern):
        return RegexCheck(check)
    if callable(check):
        return check
    raise not_allowed(f"checks[{name!r}]", check,
                      "expected a substring (str), a compiled regex (re.compile) or a callable(row)")


def build_checks(checks: Any) -> list[Check]:
    """Checks from None, one check, a list of them or a dict ``{name: check}``; names made unique."""
    if checks is None:
        return []
    if isinstance(checks, Mapping):
        named = [(str(k), v) for k, v in checks.items()]
    else:
        items = list(checks) if isinstance(checks, (list, tuple)) else [checks]
        named = [(default_name(c, i), c) for i, c in enumerate(items)]
    result: list[Check] = []
    used: set[str] = set()
    for name, check in named:
        unique, n = name, 1
        while unique in used:
            n += 1
            unique = f"{name} [{n}]"
        used.add(unique)
        result.append(Check(unique, as_test(unique, check)))
    return result


def apply_checks(row: Row, checks: list[Check]) -> None:
    """Run ``checks`` on a finished row (only rows whose call returned an answer)."""
    if not checks or not row.result.ok:
        return
    record = row.record()
    for check in checks:
        try:
            row.result.checks[check.name] = bool(check.test(dict(record)))
        except Exception as exc:  # a broken check fails its row; the results stay
            row.result.checks[check.name] = False
            row.result.add_error(f"check {check.name!r} raised {type(exc).__name__}: {exc}")
    row.result.passed = all(row.result.checks.values())


__all__ = ["Check", "ContainsCheck", "RegexCheck", "apply_checks", "as_test", "build_checks", "default_name"]
