"""Structured output: answers and tool calls that match a JSON schema by construction.

``response_format`` (on ``invoke``, ``stream``, ``generate_batch``, ``compare()`` settings, the chat
panel and ``%%midori --schema``) and ``tool_choice`` (on the tool calls) are validated here
(:func:`response_format_from`, :func:`tool_choice_from`) and compiled by llguidance (the
``structured`` extra, imported on first use through :mod:`.backend`, the only module that touches
it) into a :class:`GrammarConstraint`, which the engine runs as a logits processor in its own decode
loop and in ``model.generate``, batches included.
"""

from .errors import StructuredOutputError
from .formats import (
    ANY_JSON,
    TOOL_CHOICES,
    GrammarConstraint,
    ResponseFormat,
    ToolChoice,
    response_format_from,
    tool_choice_from,
)

__all__ = ["ANY_JSON", "GrammarConstraint", "ResponseFormat", "StructuredOutputError", "TOOL_CHOICES",
           "ToolChoice", "response_format_from", "tool_choice_from"]
