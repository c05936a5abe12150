"""Tools: descriptions for the model, and the opt-in execution of the calls it makes.

:mod:`.schemas` turns Python callables and dicts into JSON schemas (through transformers'
``get_json_schema``) and writes instructions for chat templates without tool support;
:mod:`.validation` checks a call's arguments against its tool's schema (with ``jsonschema``);
:mod:`.execution` runs checked calls under a timeout; :mod:`.results` writes their results as
bounded text. Nothing runs a
tool unless the opt-in loop of :meth:`HuggingFaceLocalAgent.run_tools` (or ``stream_tools``)
is used.
"""

from .execution import DEFAULT_TOOL_TIMEOUT, ToolRunner, check_tool_options, execute_call
from .results import (
    DEFAULT_MAX_RESULT_CHARS,
    STATUSES,
    ResultRoom,
    ResultTextError,
    ToolStep,
    exception_text,
    result_to_text,
    truncate_text,
)
from .schemas import (
    ToolSchemaError,
    callables_by_name,
    tool_instructions,
    tool_names,
    tool_schema,
    tool_schemas,
)
from .validation import ArgumentValidator, arguments_schema

__all__ = [
    "DEFAULT_MAX_RESULT_CHARS",
    "DEFAULT_TOOL_TIMEOUT",
    "STATUSES",
    "ArgumentValidator",
    "ResultRoom",
    "ResultTextError",
    "ToolRunner",
    "ToolSchemaError",
    "ToolStep",
    "arguments_schema",
    "callables_by_name",
    "check_tool_options",
    "exception_text",
    "execute_call",
    "result_to_text",
    "tool_instructions",
    "tool_names",
    "tool_schema",
    "tool_schemas",
    "truncate_text",
]
