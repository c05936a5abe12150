"""Tool-call arguments checked against the tool's JSON schema before the tool runs.

Validation uses ``jsonschema`` (draft 2020-12, the dialect of transformers' ``get_json_schema``).
The schema a callable's arguments are checked against is its ``parameters`` schema, made exact
for Python: ``"nullable": true`` (how ``get_json_schema`` writes ``Optional[...]``) also allows
``null``, and arguments the function does not take are refused unless it takes ``**kwargs``.
The schema shown to the model is not changed.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
from typing import Any, Callable

from .schemas import ToolSchemaError

#: At most this many problems are listed in one error message.
MAX_PROBLEMS = 6

_JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"),
               (tuple, "array"), (dict, "object"), (type(None), "null"))


def _allow_null(node: Any) -> Any:
    """``node`` with every ``"nullable": true`` turned into an allowed ``null``, recursively."""
    if isinstance(node, list):
        return [_allow_null(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _allow_null(value) if key not in ("enum", "const", "default", "examples") else value
           for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True:
        kind = out.get("type")
        if isinstance(kind, str) and kind != "null":
            out["type"] = [kind, "null"]
        elif isinstance(kind, list) and "null" not in kind:
            out["type"] = [*kind, "null"]
        if isinstance(out.get("enum"), list) and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    return out


def arguments_schema(parameters: dict[str, Any], fn: Callable[..., Any] | None = None) -> dict[str, Any]:
    """The JSON schema a call's arguments are validated against.

    ``parameters`` is the tool's ``parameters`` schema. For a callable ``fn``, ``*args`` and
    ``**kwargs`` are not arguments a call must give, and names the function does not take are
    refused (``additionalProperties: false``) unless it takes ``**kwargs``.
    """
    schema = _allow_null(copy.deepcopy(parameters))
    if fn is None:
        return schema
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return schema
    variadic = {p.name: p.kind for p in signature.parameters.values()
                if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}
    properties = schema.get("properties")
    if isinstance(properties, dict):
        for name in variadic:
            properties.pop(name, None)
    if isinstance(schema.get("required"), list):
        schema["required"] = [name for name in schema["required"] if name not in variadic]
    if inspect.Parameter.VAR_KEYWORD not in variadic.values():
        schema.setdefault("additionalProperties", False)
    return schema


class ArgumentValidator:
    """Checks the arguments of calls to one tool against its schema.

    Raises :class:`ToolSchemaError` when the schema itself is not a valid JSON schema.
    """

    def __init__(self, name: str, parameters: dict[str, Any], fn: Callable[..., Any] | None = None) -> None:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        self.name = name
        self.schema = arguments_schema(parameters, fn)
        try:
            Draft202012Validator.check_schema(self.schema)
        except SchemaError as exc:
            raise ToolSchemaError(f"tool {name!r}: its parameters are not a valid JSON schema: {exc.message}") from exc
        self._validator = Draft202012Validator(self.schema)

    def problems(self, arguments: Any) -> list[str]:
        """What is wrong with ``arguments``, one sentence each; empty when they are valid."""
        if not isinstance(arguments, dict):
            return [f"the arguments must be a JSON object of named arguments, got {_given(arguments)}"]
        errors = sorted(self._validator.iter_errors(arguments),
                        key=lambda e: ([str(p) for p in e.absolute_path], str(e.validator)))
        problems: list[str] = []
        for error in errors:
            for problem in _describe(error):
                if problem not in problems:
                    problems.append(problem)
        return problems

    def check(self, arguments: Any) -> str | None:
        """None for valid arguments, else the error the model gets (the tool is not run)."""
        problems = self.problems(arguments)
        if not problems:
            return None
        shown = problems[:MAX_PROBLEMS]
        more = len(problems) - len(shown)
        listed = "; ".join(shown) + (f"; and {more} more problem{'s' if more > 1 else ''}" if more else "")
        return f"invalid arguments for tool {self.name!r}, so it was not run: {listed}"


def _json_type(value: Any) -> str:
    for kind, name in _JSON_TYPES:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _short(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=lambda o: f"<{type(o).__name__}>")
    except (TypeError, ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _given(value: Any) -> str:
    kind = _json_type(value)
    return "null" if kind == "null" else f"{_short(value)} ({'an' if kind[0] in 'aeiou' else 'a'} {kind})"


def _where(path: list[Any]) -> str:
    if not path:
        return "the arguments"
    head, rest = str(path[0]), "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path[1:])
    return f"argument {head + rest!r}"


def _allowed_types(kind: Any) -> str:
    kinds = [kind] if isinstance(kind, str) else list(kind or [])
    return " or ".join(str(k) for k in kinds) or "any type"


def _property_names(schema: dict[str, Any]) -> list[str]:
    properties = schema.get("properties")
    return list(properties) if isinstance(properties, dict) else []


def _describe(error: Any) -> list[str]:
    """One or more sentences for a ``jsonschema`` error: the argument, what was given, what is allowed."""
    path = list(error.absolute_path)
    where = _where(path)
    keyword = error.validator
    instance = error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}
    if keyword == "required" and isinstance(instance, dict):
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        out = []
        for name in error.validator_value:
            if name not in instance:
                kind = props.get(name, {}).get("type") if isinstance(props.get(name), dict) else None
                expects = f" ({_allowed_types(kind)})" if kind else ""
                inside = f" of {where}" if path else ""
                out.append(f"required argument {name!r}{expects}{inside} is missing")
        return out
    if keyword == "additionalProperties" and isinstance(instance, dict):
        known = _property_names(schema)
        patterns = schema.get("patternProperties") or {}
        extras = [k for k in instance if k not in known and not any(re.search(p, k) for p in patterns)]
        takes = ", ".join(repr(k) for k in known) if known else "no arguments"
        inside = f" in {where}" if path else ""
        return [f"unknown argument {k!r}{inside} is {_given(instance[k])}, but the tool takes {takes}"
                for k in extras] or [error.message]
    if keyword == "type":
        return [f"{where} is {_given(instance)}, but the schema allows {_allowed_types(error.validator_value)}"]
    if keyword == "enum":
        return [f"{where} is {_given(instance)}, but the schema allows only one of {_short(error.validator_value, 200)}"]
    if keyword == "const":
        return [f"{where} is {_given(instance)}, but the schema allows only {_short(error.validator_value)}"]
    return [f"{where} is {_given(instance)}, but the schema allows {_short(schema, 200)} ({error.message})"]
