"""pandas DataFrames of tool calls, thinking blocks and conversation turns.

Every function accepts one item or a list (responses of any Midori protocol agent), and
returns a frame with fixed columns and dtypes; empty input gives an empty frame with the same
columns and dtypes. Statistics are read typed (:func:`~midori_hf_nb.stats.stats_of`). A value
of the wrong type for its column (another agent's metadata can hold anything) becomes ``<NA>``
in a number or flag column and its text in a string column, so a frame never fails on it.
pandas escapes every cell, of any type, when it shows a frame as HTML.

Tool calls (:func:`tool_calls_frame`), one row per call, executed steps first:

=============  =============  ==========================================================
column         dtype          meaning
=============  =============  ==========================================================
response       Int64          position of the response in the input list
step           Int64          generation step of the tool loop (1 for invoke_with_tools)
name           string         tool name
arguments      object         dict of arguments
id             string         call id (may be empty)
result         object         the tool's return value (None when not executed)
error          string         error text, or <NA>
seconds        Float64        seconds the tool ran, or <NA> when not executed
executed       boolean        True for calls run by ``run_tools``
=============  =============  ==========================================================

Thinking blocks (:func:`thinking_frame`), one row per block:

=============  =============  ==========================================================
response       Int64          position of the response in the input list
block          Int64          position of the block within the response (from 0)
text           string         the reasoning text
chars          Int64          its length in characters
=============  =============  ==========================================================

Conversation turns (:func:`conversation_frame`), one row per turn:

=============  ===================  ====================================================
turn           Int64                position in the conversation (from 0)
role           string               user, assistant, system or tool
content        string               the text of the turn
tokens         Int64                tokens of the turn (``completion_tokens`` for answers,
                                    the message's token count for user turns), or <NA>
seconds        Float64              generation seconds of an answer (``total_seconds``), or <NA>
finish_reason  string               stop, length or cancelled for answers, else <NA>
timestamp      datetime64[ns, UTC]  a user turn: when it was sent; an answer: when it ended; or NaT
=============  ===================  ====================================================
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .display import response_stats
from .escaping import to_text

TOOL_CALL_COLUMNS: dict[str, str] = {
    "response": "Int64",
    "step": "Int64",
    "name": "string",
    "arguments": "object",
    "id": "string",
    "result": "object",
    "error": "string",
    "seconds": "Float64",
    "executed": "boolean",
}

THINKING_COLUMNS: dict[str, str] = {
    "response": "Int64",
    "block": "Int64",
    "text": "string",
    "chars": "Int64",
}

TURN_COLUMNS: dict[str, str] = {
    "turn": "Int64",
    "role": "string",
    "content": "string",
    "tokens": "Int64",
    "seconds": "Float64",
    "finish_reason": "string",
    "timestamp": "datetime64[ns, UTC]",
}


#: Timestamps beyond this many seconds from 1970 (2262-04-11, the last second pandas'
#: nanosecond timestamps hold) are not shown (``NaT``).
MAX_TIMESTAMP = 9_223_372_036


def _cell(value: Any, dtype: str) -> Any:
    """``value`` as a cell of a column of ``dtype``: <NA> when it does not fit (see the module docstring)."""
    if dtype == "object":
        return value
    if value is None or value is pd.NA:
        return pd.NA
    if dtype == "string":
        return to_text(value)
    if dtype == "boolean":
        return bool(value) if isinstance(value, (bool, np.bool_)) else pd.NA
    if dtype == "Int64":
        return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)) else pd.NA
    if dtype == "Float64":
        return float(value) if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) else pd.NA
    return value


def _frame(rows: list[dict[str, Any]], columns: dict[str, str]) -> pd.DataFrame:
    data = {}
    for name, dtype in columns.items():
        values = [row.get(name) for row in rows]
        if dtype == "object":
            series = pd.Series(values, dtype="object")
        elif dtype.startswith("datetime64"):
            seconds = [float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool)
                       and math.isfinite(v) and abs(v) <= MAX_TIMESTAMP else None for v in values]
            series = pd.to_datetime(pd.Series(seconds, dtype="float64"), unit="s", utc=True).astype(dtype)
        else:
            series = pd.Series([_cell(v, dtype) for v in values], dtype="object").astype(dtype)
        data[name] = series
    return pd.DataFrame(data, columns=list(columns))


def _as_list(items: Any) -> list[Any]:
    if items is None:
        return []
    if isinstance(items, (list, tuple)):
        return list(items)
    if hasattr(items, "response") and hasattr(items, "thinking"):  # one response
        return [items]
    return list(items)


def _responses(items: Any, function: str) -> list[Any]:
    """``items`` (one response or a list) as a list of responses; anything else is refused naming its position."""
    try:
        responses = _as_list(items)
    except TypeError:
        raise ValueError(f"{function}(responses={items!r:.80}) is not allowed: expected an AgentResponse or a "
                         "list of them") from None
    for index, response in enumerate(responses):
        if not all(hasattr(response, name) for name in ("response", "tool_calls", "metadata")):
            raise ValueError(f"{function}(responses[{index}]={response!r:.80}) is not allowed: expected an "
                             "AgentResponse (an object with .response, .tool_calls and .metadata)")
    return responses


def tool_calls_frame(responses: Any) -> pd.DataFrame:
    """One row per tool call of one response or a list of responses (columns: :data:`TOOL_CALL_COLUMNS`).

    Calls executed by ``run_tools`` (the ``tool_steps`` statistic) come first with their results;
    calls parsed but not executed (``invoke_with_tools``, or the last step of a loop that hit
    ``max_steps``) follow with ``executed=False``.
    """
    from .display import tool_call_rows

    rows = []
    for index, response in enumerate(_responses(responses, "tool_calls_frame")):
        for row in tool_call_rows(response):
            row["response"] = index
            row["id"] = to_text(row.get("id"))
            rows.append(row)
    return _frame(rows, TOOL_CALL_COLUMNS)


def thinking_blocks(response: Any) -> list[str]:
    """The reasoning blocks of a response (the ``thinking_blocks`` statistic, else its ``thinking``)."""
    blocks = response_stats(response).thinking_blocks
    if not blocks:
        thinking = to_text(getattr(response, "thinking", ""))
        blocks = [thinking] if thinking.strip() else []
    return list(blocks)


def thinking_frame(responses: Any) -> pd.DataFrame:
    """One row per thinking block of one response or a list of responses (columns: :data:`THINKING_COLUMNS`)."""
    rows = []
    for index, response in enumerate(_responses(responses, "thinking_frame")):
        for block_index, text in enumerate(thinking_blocks(response)):
            rows.append({"response": index, "block": block_index, "text": text, "chars": len(text)})
    return _frame(rows, THINKING_COLUMNS)


def _turn_fields(entry: Any) -> dict[str, Any]:
    """A turn's row: an answer's statistics read typed (``completion_tokens``, ``total_seconds``,
    ``finish_reason``), else the turn's own ``tokens`` and ``seconds`` (turns added by hand)."""
    if isinstance(entry, Mapping):
        get = entry.get
    else:
        def get(key: str, default: Any = None) -> Any:
            return getattr(entry, key, default)
    meta = get("metadata")
    stats = response_stats(meta if isinstance(meta, Mapping) else None)
    tokens = stats.completion_tokens if stats.completion_tokens is not None else stats.extra.get("tokens")
    seconds = stats.total_seconds if stats.total_seconds is not None else stats.extra.get("seconds")
    return {
        "role": get("role"),
        "content": get("content", "") or "",
        "tokens": tokens,
        "seconds": seconds,
        "finish_reason": stats.finish_reason,
        "timestamp": get("timestamp"),
    }


def conversation_frame(turns: Any, tokenizer: Any = None) -> pd.DataFrame:
    """One row per conversation turn (columns: :data:`TURN_COLUMNS`).

    ``turns``: a :class:`~midori_hf_nb.notebook.Conversation`, or a list of
    :class:`~midori_hf_nb.MemoryEntryData` or dicts with ``role``, ``content``, optional
    ``timestamp`` and ``metadata`` (an answer's statistics, ``completion_tokens``,
    ``total_seconds``, ``finish_reason``; or a turn's own ``tokens`` and ``seconds``). With a
    ``tokenizer``, turns without a token count are counted with it.
    """
    entries = turns.entries if hasattr(turns, "entries") else _as_list(turns)
    rows = []
    for index, entry in enumerate(entries):
        row = _turn_fields(entry)
        if row["role"] is None:
            raise ValueError(f"conversation_frame: turn {index} has no 'role': expected MemoryEntryData or a dict "
                             "with 'role' and 'content'")
        if row["tokens"] is None and tokenizer is not None:
            row["tokens"] = len(tokenizer.encode(to_text(row["content"]), add_special_tokens=False))
        row["turn"] = index
        rows.append(row)
    return _frame(rows, TURN_COLUMNS)


__all__ = [
    "THINKING_COLUMNS",
    "TOOL_CALL_COLUMNS",
    "TURN_COLUMNS",
    "conversation_frame",
    "thinking_blocks",
    "thinking_frame",
    "tool_calls_frame",
]
