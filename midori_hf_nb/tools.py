"""Tools: Python callables and dicts to JSON schemas, instructions for templates without
tool support, and the execution of one parsed call.

Callables are described by transformers' ``get_json_schema`` (type hints plus a Google-style
docstring). Nothing here runs a tool unless :func:`execute_call` is called, which only the
opt-in loop of :meth:`HuggingFaceLocalAgent.run_tools` does.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable


class ToolSchemaError(ValueError):
    """A tool cannot be described as a JSON schema; the message names the tool and what is missing."""


def _describe_callable(fn: Callable[..., Any]) -> dict[str, Any]:
    from transformers.utils import get_json_schema  # pure utility; loads no model

    name = getattr(fn, "__name__", repr(fn))
    try:
        return get_json_schema(fn)
    except Exception as exc:  # DocstringParsingException, TypeHintParsingException
        raise ToolSchemaError(
            f"tool function {name!r} cannot be described as a JSON schema: {exc}. "
            "Give every argument a type hint and the function a docstring with a description "
            "and an 'Args:' section naming each argument."
        ) from exc


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
    schemas = [tool_schema(t) for t in tools or []]
    names = [s["function"]["name"] for s in schemas]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ToolSchemaError(f"tool names must be unique; offered more than once: {', '.join(duplicates)}")
    return schemas


def tool_names(schemas: list[dict[str, Any]]) -> list[str]:
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


@dataclass
class ToolStep:
    """One executed (or refused) tool call."""

    step: int
    name: str
    arguments: dict[str, Any]
    call_id: str
    result: Any = None
    error: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "name": self.name,
            "arguments": self.arguments,
            "id": self.call_id,
            "result": self.result,
            "error": self.error,
            "seconds": self.seconds,
        }


async def execute_call(step: int, call: dict[str, Any], functions: dict[str, Callable[..., Any]]) -> ToolStep:
    """Run one parsed call of an allowed tool (sync in a worker thread, async awaited).

    A tool that raises, or a call to a name that is not allowed, gives a :class:`ToolStep` with
    ``error`` set instead of raising.
    """
    record = ToolStep(step=step, name=call["name"], arguments=dict(call.get("arguments") or {}), call_id=call.get("id", ""))
    fn = functions.get(call["name"])
    if fn is None:
        record.error = f"unknown tool {call['name']!r}; available: {', '.join(sorted(functions)) or 'none'}"
        return record
    started = time.perf_counter()
    try:
        if inspect.iscoroutinefunction(fn):
            result = await fn(**record.arguments)
        else:
            result = await asyncio.to_thread(fn, **record.arguments)
            if inspect.isawaitable(result):
                result = await result
        record.result = result
    except Exception as exc:  # the model gets the error as the result and may recover
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" (at {frames[-1].name}:{frames[-1].lineno})" if frames else ""
        record.error = f"{type(exc).__name__}: {exc}{where}"
    record.seconds = time.perf_counter() - started
    return record
