"""``tool_choice``: a forced tool call generated under the grammar of the offered tools' schemas.

The call is written as the bare JSON object every tool-call parser of the project reads,
``{"name": <tool>, "arguments": {...}}``, with ``name`` fixed to one of the allowed tools and
``arguments`` matching that tool's parameter schema, so it always parses and validates.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from . import backend
from .errors import StructuredOutputError
from .formats import GrammarConstraint, ToolChoice

if TYPE_CHECKING:  # pragma: no cover
    from ..settings import CallSettings

#: Parameters of a tool without a parameter schema: any JSON object.
ANY_ARGUMENTS = {"type": "object"}


def call_schema(schemas: list[dict[str, Any]], choice: ToolChoice) -> dict[str, Any]:
    """The JSON schema of one call to one of ``schemas`` (to the named tool only, for a name)."""
    names = [s["function"]["name"] for s in schemas]
    if choice.mode == "named" and choice.name not in names:
        raise StructuredOutputError(f"tool_choice={{'name': {choice.name!r}}} is not allowed: expected the name "
                                    f"of an offered tool ({', '.join(map(repr, names)) or 'none offered'})")
    options = []
    for schema in schemas:
        function = schema["function"]
        if choice.mode == "named" and function["name"] != choice.name:
            continue
        parameters = function.get("parameters") or ANY_ARGUMENTS
        options.append({
            "type": "object",
            "properties": {"name": {"const": function["name"]}, "arguments": parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        })
    return options[0] if len(options) == 1 else {"anyOf": options}


def tool_call_constraint(schemas: list[dict[str, Any]], choice: ToolChoice) -> GrammarConstraint:
    """The compiled constraint of a forced call (``choice`` must force one)."""
    grammar = backend.schema_grammar(call_schema(schemas, choice), "tool_choice")
    return GrammarConstraint(grammar, f"tool call ({choice.describe()})")


def apply_tool_choice(call: "CallSettings", schemas: list[dict[str, Any]] | None,
                      ) -> tuple["CallSettings", list[dict[str, Any]] | None]:
    """The settings and the offered schemas of a call with tools, after its ``tool_choice``.

    ``"none"`` offers no tools (none in the prompt, no call parsed); ``"required"`` or a name
    constrains the answer to one call; ``"auto"`` (or no choice) changes nothing. A
    ``response_format`` together with tools is refused unless ``tool_choice="none"``.
    """
    choice = call.tool_choice
    if schemas is None:
        if choice is not None and choice.mode != "none":
            raise StructuredOutputError(f"tool_choice={choice.describe()!r} needs tools: use invoke_with_tools, "
                                        "stream_with_tools or run_tools")
        return call, schemas
    if choice is not None and choice.mode == "none":
        return call, None
    if call.response_format is not None:
        raise StructuredOutputError("response_format cannot be combined with tools: give tool_choice='none' "
                                    "(answer in the format, no tools) or leave response_format unset")
    if choice is None or not choice.forces_call:
        return call, schemas
    if not schemas:
        raise StructuredOutputError(f"tool_choice={choice.describe()!r} needs at least one tool")
    constraint = tool_call_constraint(schemas, choice)
    return replace(call, generation=replace(call.generation, constraint=constraint)), schemas


__all__ = ["apply_tool_choice", "call_schema", "tool_call_constraint"]
