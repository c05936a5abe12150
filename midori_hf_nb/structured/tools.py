"""``tool_choice``: a forced tool call generated under the grammar of the offered tools' schemas.

The call is written as the bare JSON object every tool-call parser of the project reads,
``{"name": <tool>, "arguments": {...}}``, with ``name`` fixed to one of the allowed tools and
``arguments`` matching that tool's parameter schema, so it always parses and validates.
"""

from __future__ import annotations

from typing import Any

from . import backend
from .errors import StructuredOutputError
from .formats import GrammarConstraint, ToolChoice

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


__all__ = ["call_schema", "tool_call_constraint"]
