"""What a JSON schema must pass before it is compiled or used to validate an answer.

A schema comes from outside (a user's dict, a pydantic model, a tool's parameters), so two
things are checked first, without recursion, and refused with a
:class:`~.errors.StructuredOutputError` that names the schema path (a JSON pointer such as
``#/properties/a/items``):

* **Depth**: a schema document may nest dicts and lists at most :data:`MAX_SCHEMA_DEPTH` levels
  deep (an inline object with ``properties`` takes two levels per object: ``properties`` and the
  property's schema; an array's ``items`` one). Deeper schemas would exhaust Python's recursion
  (``jsonschema``) or the constraint library's JSON reader (which stops at 128 levels); models
  written as pydantic classes keep their nesting in ``$defs`` and stay shallow.
* **Left recursion**: a ``$ref`` cycle that comes back to a schema without descending into the
  value (only through ``anyOf``/``oneOf``/``allOf``/``not``/``if``/``then``/``else`` and
  ``$ref``), such as ``{"$defs": {"A": {"anyOf": [{"$ref": "#/$defs/A"}, ...]}}}``. Such a schema
  describes nothing a validator can finish checking: every check of the value checks the same
  value again. Recursive schemas that descend (a tree whose ``children`` items refer back to the
  node) are fine.
"""

from __future__ import annotations

from typing import Any, Iterator
from urllib.parse import unquote

from .errors import StructuredOutputError

#: The most levels of dicts and lists a schema document may nest (see the module docstring).
MAX_SCHEMA_DEPTH = 64

#: Keywords whose subschemas apply to the same value as the schema holding them.
_SAME_VALUE_LISTS = ("anyOf", "oneOf", "allOf")
_SAME_VALUE_ONE = ("not", "if", "then", "else")
#: Keywords whose value is data (not schemas) or a map of names to schemas (not itself a schema).
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})
_MAP_KEYWORDS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})

Path = tuple[str, ...]


def schema_path(path: Path, limit: int = 160) -> str:
    """``path`` as a JSON pointer (``#/properties/a``), shortened in the middle past ``limit`` characters."""
    text = "#" + "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in path)
    if len(text) <= limit:
        return text
    return f"{text[:limit // 2]}...{text[-limit // 2:]} ({len(path)} levels)"


def _nodes(schema: Any, field: str) -> dict[Path, dict]:
    """Every dict of the schema that is a subschema, by path; refuses nesting past the bound."""
    nodes: dict[Path, dict] = {}
    stack: list[tuple[Any, Path, str]] = [(schema, (), "schema")]  # kind: "schema", "map" or "data"
    while stack:
        value, path, kind = stack.pop()
        if len(path) >= MAX_SCHEMA_DEPTH:
            raise StructuredOutputError(
                f"{field}: the schema nests more than {MAX_SCHEMA_DEPTH} levels of objects and lists (at "
                f"{schema_path(path)}): not allowed; flatten it or move repeated parts into $defs and refer to "
                "them with $ref")
        if isinstance(value, dict):
            if kind == "schema":
                nodes[path] = value
            for key, child in value.items():
                if not isinstance(child, (dict, list)):
                    continue
                key = str(key)
                if kind == "schema":
                    child_kind = "data" if key in _DATA_KEYWORDS else "map" if key in _MAP_KEYWORDS else "schema"
                else:
                    child_kind = "schema" if kind == "map" else "data"
                stack.append((child, path + (key,), child_kind))
        elif isinstance(value, list):
            for index, child in enumerate(value):
                if isinstance(child, (dict, list)):
                    stack.append((child, path + (str(index),), kind))
    return nodes


def _resolve(ref: str) -> Path | None:
    """The path a local ``$ref`` (``#`` or ``#/a/b``) points to; None for any other reference."""
    if ref == "#":
        return ()
    if not ref.startswith("#/"):
        return None
    return tuple(unquote(part).replace("~1", "/").replace("~0", "~") for part in ref[2:].split("/"))


def _same_value_children(path: Path, node: dict, nodes: dict[Path, dict]) -> Iterator[Path]:
    for key in _SAME_VALUE_LISTS:
        items = node.get(key)
        if isinstance(items, list):
            for index, item in enumerate(items):
                if isinstance(item, dict):
                    yield path + (key, str(index))
    for key in _SAME_VALUE_ONE:
        if isinstance(node.get(key), dict):
            yield path + (key,)
    ref = node.get("$ref")
    if isinstance(ref, str):
        target = _resolve(ref)
        if target is not None and target in nodes:
            yield target


def _left_recursion(nodes: dict[Path, dict]) -> list[Path] | None:
    """A cycle of same-value steps (see the module docstring), or None (iterative depth-first search)."""
    state: dict[Path, int] = {}  # 1: on the current path, 2: done
    for start in nodes:
        if start in state:
            continue
        trail: list[Path] = [start]
        iterators = [_same_value_children(start, nodes[start], nodes)]
        state[start] = 1
        while iterators:
            step = next(iterators[-1], None)
            if step is None:
                state[trail.pop()] = 2
                iterators.pop()
                continue
            if step not in nodes:
                continue
            seen = state.get(step)
            if seen == 1:
                return trail[trail.index(step):] + [step]
            if seen is None:
                state[step] = 1
                trail.append(step)
                iterators.append(_same_value_children(step, nodes[step], nodes))
    return None


def check_schema_structure(schema: Any, field: str = "response_format") -> None:
    """Refuse a schema nested deeper than :data:`MAX_SCHEMA_DEPTH` or left-recursive (see the
    module docstring), with a :class:`~.errors.StructuredOutputError` naming ``field`` and the path."""
    nodes = _nodes(schema, field)
    cycle = _left_recursion(nodes)
    if cycle is not None:
        steps = " -> ".join(schema_path(p, 80) for p in cycle[:6]) + (" -> ..." if len(cycle) > 6 else "")
        raise StructuredOutputError(
            f"{field}: the schema at {schema_path(cycle[0])} refers back to itself without descending into the "
            f"value ({steps}): a left-recursive schema, which no answer can be checked against; make each $ref "
            "cycle pass through properties or items")


__all__ = ["MAX_SCHEMA_DEPTH", "check_schema_structure", "schema_path"]
