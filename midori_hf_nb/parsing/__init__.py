"""Reasoning and tool-call extraction from raw model text. Pure Python, usable without a model.

One concern per module:

- :mod:`.reasoning`: ``<think>`` and friends (:func:`extract_reasoning`);
- :mod:`.tool_calls`: the tool-call parser, four formats (:func:`parse_tool_calls`,
  :func:`parse_tool_calls_detailed`, :class:`ToolCallParse`);
- :mod:`.calls`: what a call is (:func:`normalise_call`, :func:`unique_ids`, ``TOOL_CALL`` arguments);
- :mod:`.values`: bounded JSON / Python-literal reading and the JSON-data check;
- :mod:`.scan`: the one string-aware bracket scanner, shared by the parser and the splitter;
- :mod:`.stream`: live splitting of a stream (:class:`StreamSplitter`, :class:`StreamPiece`,
  :func:`prompt_opens_thinking`), with :mod:`.held` reading the text it holds back incrementally;
- :mod:`.limits`: the bounds that keep parsing safe and linear on hostile output:
  :data:`MAX_INPUT_CHARS` (1,000,000 characters searched per output), :data:`MAX_CALLS` (64 calls
  per output), :data:`MAX_ERRORS` (64 errors per output), :data:`MAX_DEPTH` (64 levels of nesting
  in a call), :data:`MAX_NUMBER_DIGITS` (100 digits in a number), :data:`MAX_LITERAL_CHARS`
  (100,000 characters read as Python literals per output) and :data:`WORK_PER_CHAR` (8 characters
  examined per input character, plus :data:`WORK_FLOOR`). Each bound reached is one more error in
  :attr:`ToolCallParse.errors`; the parser never raises.
"""

from __future__ import annotations

from .calls import CALL_KEYS, is_call_object, new_id, normalise_call, unique_ids
from .limits import (
    MAX_CALLS,
    MAX_DEPTH,
    MAX_ERRORS,
    MAX_INPUT_CHARS,
    MAX_LITERAL_CHARS,
    MAX_NUMBER_DIGITS,
    WORK_FLOOR,
    WORK_PER_CHAR,
    CallLimiter,
    LimitError,
)
from .reasoning import REASONING_TAGS, extract_reasoning, extract_reasoning_blocks
from .stream import StreamPiece, StreamSplitter, prompt_opens_thinking
from .tool_calls import (
    CALL_FENCE_LANGUAGES,
    MISTRAL_MARKER,
    ToolCallParse,
    parse_tool_calls,
    parse_tool_calls_detailed,
)

__all__ = [
    "CALL_FENCE_LANGUAGES",
    "CALL_KEYS",
    "MAX_CALLS",
    "MAX_DEPTH",
    "MAX_ERRORS",
    "MAX_INPUT_CHARS",
    "MAX_LITERAL_CHARS",
    "MAX_NUMBER_DIGITS",
    "MISTRAL_MARKER",
    "REASONING_TAGS",
    "WORK_FLOOR",
    "WORK_PER_CHAR",
    "CallLimiter",
    "LimitError",
    "StreamPiece",
    "StreamSplitter",
    "ToolCallParse",
    "extract_reasoning",
    "extract_reasoning_blocks",
    "is_call_object",
    "new_id",
    "normalise_call",
    "parse_tool_calls",
    "parse_tool_calls_detailed",
    "prompt_opens_thinking",
    "unique_ids",
]
