"""Test sets: the items of an evaluation, from a list, a DataFrame, a CSV or a JSON-lines file.

Each :class:`TestItem` is a prompt (text, or an :class:`~midori_hf_nb.AgentPayload`) or only
variables for the evaluation's prompt templates, plus an optional ``expected``, per-item
assertions, a description and a test-level ``threshold``. Prompts, system prompts and string
assertion values are templates: ``{{ name }}`` takes the item's variable ``name`` (rendered by
Jinja2's sandbox, promptfoo's Nunjucks syntax for variables; a variable the item lacks is an
error naming it).

In tables (DataFrame, CSV, JSON lines), the columns ``prompt``, ``expected``, ``id``,
``description``, ``threshold`` and ``assert`` (a list of assertions, or its JSON text) are the
item's; promptfoo's ``__expected`` (or ``__expected1``, ``__expected2``...) columns hold one
assertion each in promptfoo's short form (``contains: Paris``, ``regex: ^\\d+$``,
``llm-rubric: is polite``; other text: ``equals``); ``__description`` is the description;
every other column is a variable.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..compare.columns import bounded_repr, is_missing, plain
from ..compare.loading import MAX_FILE_BYTES, MAX_JSON_DEPTH, parse_json, read_bounded
from ..protocol import AgentPayload
from .assertions import ASSERTION_TYPES, Assertion, AssertionSpecError, assertion_from, assertions_from

#: the keys of an item's dict form (every other key of a table row is a variable)
ITEM_KEYS = ("prompt", "payload", "vars", "expected", "assert", "asserts", "id", "description", "threshold")
#: the longest text a template renders to
MAX_RENDERED_CHARS = 200_000


class TestSetError(ValueError):
    """A test set that cannot be read; the message names the item or line and what is allowed."""

    __test__ = False  # not a pytest test class


@dataclass
class TestItem:
    """One item of a test set (see the module documentation)."""

    __test__ = False  # not a pytest test class

    id: str
    prompt: str | None = None
    payload: AgentPayload | None = field(default=None, repr=False)
    vars: dict[str, Any] = field(default_factory=dict)
    expected: Any = None
    asserts: list[Assertion] = field(default_factory=list)
    description: str | None = None
    threshold: float | None = None

    @property
    def variables(self) -> dict[str, Any]:
        """The template variables: the item's ``vars`` plus ``expected`` (unless a var names it)."""
        return {"expected": self.expected, **self.vars}


def render(template: str, variables: Mapping[str, Any], where: str) -> str:
    """``template`` with ``{{ name }}`` filled from ``variables`` (Jinja2's immutable sandbox,
    undefined names refused); raises :class:`TestSetError` naming ``where``."""
    if "{{" not in template and "{%" not in template:
        return template
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
    try:
        text = environment.from_string(template).render(**variables)
    except jinja2.UndefinedError as exc:
        raise TestSetError(f"{where}: {exc.message}: the template needs a variable the item does not have "
                           f"(the item has {sorted(variables)})") from None
    except jinja2.TemplateError as exc:
        raise TestSetError(f"{where}: the template cannot be rendered: {exc}") from None
    if len(text) > MAX_RENDERED_CHARS:
        raise TestSetError(f"{where}: the rendered text is longer than {MAX_RENDERED_CHARS} characters")
    return text


def shorthand_assertion(text: str, where: str) -> Assertion:
    """promptfoo's one-line assertion (a CSV ``__expected`` cell): ``TYPE: value`` for a known
    type (``not-`` forms too), anything else ``equals`` the text."""
    kind, sep, rest = text.partition(":")
    kind = kind.strip()
    base = kind[4:] if kind.startswith("not-") else kind
    if sep and base in ASSERTION_TYPES:
        value: Any = rest.strip()
        if base in ("word-count", "token-count") and value.isdigit():
            value = int(value)
        if base == "is-json" and not value:
            value = None
        return assertion_from({"type": kind, "value": value}, where)
    return Assertion("equals", text)


def _threshold(value: Any, where: str) -> float | None:
    value = plain(value)
    if is_missing(value) or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TestSetError(f"{where}: threshold={bounded_repr(value)} is not allowed: expected a number") from None
    return number


def _asserts_cell(value: Any, where: str) -> list[Assertion]:
    value = plain(value)
    if is_missing(value) or value == "":
        return []
    if isinstance(value, str):
        value = parse_json(value, where, MAX_JSON_DEPTH)
    return assertions_from(value, where)


def item_from(entry: Any, index: int) -> TestItem:
    """One item from a string (a prompt), an :class:`AgentPayload` or a dict (see the module
    documentation)."""
    where = f"items[{index}]"
    if isinstance(entry, TestItem):
        return entry
    if isinstance(entry, str):
        return TestItem(id=str(index), prompt=entry)
    if isinstance(entry, AgentPayload):
        return TestItem(id=str(index), payload=entry, prompt=entry.user_message)
    if not isinstance(entry, Mapping):
        raise TestSetError(f"{where}={bounded_repr(entry)} is not allowed: expected a prompt (text), an "
                           "AgentPayload or a dict with 'prompt' or 'vars' (and 'expected', 'assert', ...)")
    variables: dict[str, Any] = {}
    asserts: list[Assertion] = []
    for key, value in entry.items():
        key = str(key)
        if key in ITEM_KEYS:
            continue
        if key == "__description":
            continue
        if key.startswith("__expected"):
            if not is_missing(plain(value)) and str(value).strip():
                asserts.append(shorthand_assertion(str(value), f"{where}.{key}"))
            continue
        variables[key] = plain(value)
    given_vars = entry.get("vars")
    if given_vars is not None:
        if not isinstance(given_vars, Mapping):
            raise TestSetError(f"{where}.vars={bounded_repr(given_vars)} is not allowed: expected a dict")
        variables.update({str(k): v for k, v in given_vars.items()})
    payload = entry.get("payload")
    if payload is not None and not isinstance(payload, AgentPayload):
        raise TestSetError(f"{where}.payload={bounded_repr(payload)} is not allowed: expected an AgentPayload")
    prompt = entry.get("prompt")
    if is_missing(plain(prompt)) or prompt == "":
        prompt = payload.user_message if payload is not None else None
    elif not isinstance(prompt, str):
        raise TestSetError(f"{where}.prompt={bounded_repr(prompt)} is not allowed: expected a text")
    try:
        asserts = _asserts_cell(entry.get("assert", entry.get("asserts")), f"{where}.assert") + asserts
    except AssertionSpecError as exc:
        raise TestSetError(str(exc)) from None
    expected = plain(entry.get("expected"))
    description = entry.get("description", entry.get("__description"))
    item_id = entry.get("id")
    return TestItem(id=str(index) if is_missing(plain(item_id)) or item_id == "" else str(item_id), prompt=prompt,
                    payload=payload, vars=variables, expected=None if is_missing(expected) else expected,
                    asserts=asserts, description=None if is_missing(plain(description)) else str(description),
                    threshold=_threshold(entry.get("threshold"), f"{where}.threshold"))


def _unique_ids(items: list[TestItem]) -> list[TestItem]:
    seen: dict[str, int] = {}
    for item in items:
        seen[item.id] = seen.get(item.id, 0) + 1
    duplicated = [name for name, count in seen.items() if count > 1]
    if duplicated:
        raise TestSetError(f"items: the ids {duplicated[:5]!r} are used more than once: expected one id per item")
    return items


def read_rows(path: Path, max_bytes: int) -> list[dict[str, Any]]:
    """The rows of a CSV or JSON-lines file (bounded like :func:`~midori_hf_nb.compare.load_comparison`)."""
    text = read_bounded(path, max_bytes)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return [dict(row) for row in csv.DictReader(io.StringIO(text))]
    if suffix in (".jsonl", ".ndjson", ".json"):
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            value = parse_json(line, f"{path.name} line {number}", MAX_JSON_DEPTH)
            if not isinstance(value, dict):
                raise TestSetError(f"{path.name} line {number}: expected a JSON object per line")
            rows.append(value)
        return rows
    raise TestSetError(f"{str(path)!r}: the suffix {suffix!r} is not allowed: expected .csv, .jsonl, .ndjson or .json")


def load_items(items: Any, *, max_bytes: int = MAX_FILE_BYTES) -> list[TestItem]:
    """The items of a test set: a list (of prompts, payloads, dicts or :class:`TestItem`), a
    pandas DataFrame (one row per item), or the path of a CSV or JSON-lines file. Raises
    :class:`TestSetError` naming the item, the field and what is allowed."""
    import pandas as pd

    if isinstance(items, (str, os.PathLike)) and Path(items).suffix.lower() in (".csv", ".jsonl", ".ndjson", ".json"):
        path = Path(items)
        try:
            rows = read_rows(path, max_bytes)
        except ValueError as exc:  # the bounded reader's words name the file and the limit
            raise TestSetError(str(exc).replace("load_comparison: ", "load_items: ", 1)) from None
        entries: list[Any] = rows
    elif isinstance(items, pd.DataFrame):
        entries = items.to_dict("records")
    elif isinstance(items, (str, AgentPayload, Mapping, TestItem)):
        entries = [items]
    elif isinstance(items, (list, tuple)):
        entries = list(items)
    else:
        raise TestSetError(f"items={bounded_repr(items)} is not allowed: expected a list of prompts, payloads or "
                           "dicts, a DataFrame, or a .csv / .jsonl file")
    if not entries:
        raise TestSetError("items: the test set is empty: expected at least one item")
    return _unique_ids([item_from(entry, i) for i, entry in enumerate(entries)])


def json_vars(item: TestItem) -> str:
    """An item's variables as JSON text (objects that are not JSON by their bounded repr)."""
    return json.dumps(item.vars, ensure_ascii=False, default=bounded_repr)


__all__ = ["ITEM_KEYS", "MAX_RENDERED_CHARS", "TestItem", "TestSetError", "item_from", "json_vars", "load_items",
           "read_rows", "render", "shorthand_assertion"]
