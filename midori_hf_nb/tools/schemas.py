"""Tool descriptions: Python callables and dicts to JSON schemas, and instructions for templates
without tool support.

Callables are described by transformers' ``get_json_schema`` (type hints plus a Google-style
docstring). Nothing here runs a tool.
"""

from __future__ import annotations

import functools
import inspect
import json
from typing import Any, Callable

from ..engine.capabilities.docstrings import function_json_schema, parse_google_docstring


class ToolSchemaError(ValueError):
    """A tool cannot be described as a JSON schema; the message names the tool and what is missing."""


_NO_DESCRIPTION = "\x00no description\x00"


def _callable_name(fn: Any) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def _describe_callable(fn: Callable[..., Any]) -> dict[str, Any]:
    """The JSON schema of a typed callable with a docstring, through ``get_json_schema``.

    Arguments the docstring does not describe (no Google-style ``Args:`` entry) are still
    listed with their types, just without a description; a missing docstring or type hint
    is an error naming the function and what is missing.
    """
    name = _callable_name(fn)
    doc = inspect.getdoc(fn)
    if not doc or not doc.strip():
        raise ToolSchemaError(
            f"tool function {name!r} has no docstring: add one that says what the tool does "
            "(the model reads it); describe the arguments in a Google-style 'Args:' section"
        )
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as exc:
        raise ToolSchemaError(f"tool {name!r}: its signature cannot be read ({exc})") from exc
    if parameters and parameters[0].name in ("self", "cls") and parameters[0].annotation is inspect.Parameter.empty:
        parameters = parameters[1:]
    missing = [p.name for p in parameters if p.annotation is inspect.Parameter.empty]
    if missing:
        listed = ", ".join(repr(m) for m in missing)
        raise ToolSchemaError(
            f"tool function {name!r}: argument{'s' if len(missing) > 1 else ''} {listed} "
            f"{'have' if len(missing) > 1 else 'has'} no type hint; annotate every argument "
            "(e.g. 'query: str') so the model is told its type"
        )
    names = [p.name for p in parameters]
    try:
        described = parse_google_docstring(doc)[1] or {}
        if all(described.get(name) for name in names):
            return function_json_schema(fn)
        return _schema_without_argument_docs(fn, doc, names)
    except ToolSchemaError:
        raise
    except Exception as exc:  # DocstringParsingException, TypeHintParsingException (unsupported types)
        raise ToolSchemaError(f"tool function {name!r} cannot be described as a JSON schema: {exc}") from exc


def _schema_without_argument_docs(fn: Callable[..., Any], doc: str, names: list[str]) -> dict[str, Any]:
    """``get_json_schema`` for a docstring that does not describe every argument."""
    description, described, returns = parse_google_docstring(doc)
    lines = [description or "", "", "Args:"]
    lines += [f"    {arg}: {(described or {}).get(arg) or _NO_DESCRIPTION}" for arg in names]
    if returns:
        lines += ["", "Returns:", f"    {returns}"]

    @functools.wraps(fn)
    def proxy(*args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never called
        return fn(*args, **kwargs)

    proxy.__doc__ = "\n".join(lines)
    schema = function_json_schema(proxy)
    for spec in schema["function"]["parameters"].get("properties", {}).values():
        if spec.get("description") == _NO_DESCRIPTION:
            del spec["description"]
    return schema


def tool_schema(tool: Any) -> dict[str, Any]:
    """A tool as ``{"type": "function", "function": {"name", "description", "parameters"}}``.

    Accepts a typed, documented callable; a dict in the OpenAI function format (with or without
    the ``{"type": "function", "function": ...}`` wrapper); or a dict with only ``name`` and
    ``description`` (then the tool takes an object of any arguments).
    """
    if callable(tool) and not isinstance(tool, dict):
        return _describe_callable(tool)
    if not isinstance(tool, dict):
        raise ToolSchemaError(f"tool {tool!r} is neither a callable nor a dict with 'name' and 'description'")
    function = tool.get("function") if isinstance(tool.get("function"), dict) else tool
    name = function.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ToolSchemaError(f"tool dict {json.dumps(tool, default=str)[:120]} has no 'name'")
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise ToolSchemaError(f"tool {name!r}: 'parameters' must be a JSON-schema object, got {type(parameters).__name__}")
    schema = {"name": name, "description": str(function.get("description") or ""), "parameters": parameters}
    return {"type": "function", "function": schema}


def tool_schemas(tools: list[Any] | None) -> list[dict[str, Any]]:
    """Schemas of every tool; raises :class:`ToolSchemaError` for the first that cannot be described."""
    if tools is None:
        return []
    if isinstance(tools, (dict, str, bytes)) or callable(tools) or not hasattr(tools, "__iter__"):
        raise ToolSchemaError(
            f"tools must be a list of callables or dicts, got {type(tools).__name__}: wrap a single tool in a list"
        )
    schemas = [tool_schema(t) for t in tools]
    names = [s["function"]["name"] for s in schemas]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ToolSchemaError(f"tool names must be unique; offered more than once: {', '.join(duplicates)}")
    return schemas


def tool_names(schemas: list[dict[str, Any]]) -> list[str]:
    """The tool names of ``schemas``, in order."""
    return [s["function"]["name"] for s in schemas]


def callables_by_name(tools: list[Any] | None) -> dict[str, Callable[..., Any]]:
    """The executable tools among ``tools``, by schema name."""
    out = {}
    for tool in tools or []:
        if callable(tool) and not isinstance(tool, dict):
            out[tool_schema(tool)["function"]["name"]] = tool
    return out


def tool_instructions(schemas: list[dict[str, Any]]) -> str:
    """System-message text that describes the tools and the exact formats the parser accepts.

    Used for chat templates that have no ``tools`` support.
    """
    lines = ["You can call these tools:"]
    for schema in schemas:
        fn = schema["function"]
        params = fn.get("parameters", {}).get("properties", {})
        required = set(fn.get("parameters", {}).get("required", []))
        args = ", ".join(
            f"{p}: {spec.get('type', 'any')}{'' if p in required else ' (optional)'}" for p, spec in params.items()
        )
        lines.append(f"- {fn['name']}({args}): {fn.get('description', '')}".rstrip())
    lines += [
        "",
        "To call a tool, answer with only a JSON object in this exact format:",
        '{"tool_calls": [{"name": "TOOL_NAME", "arguments": {"ARG": "VALUE"}}]}',
        "or with one line per call in this format:",
        'TOOL_CALL: TOOL_NAME(ARG="VALUE", OTHER=2)',
        "When a tool result is given to you, use it to answer the user.",
    ]
    return "\n".join(lines)
