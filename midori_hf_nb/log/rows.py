"""From a finished call (:class:`~.capture.PendingCall`) to the row of the ``responses`` table,
on the writer thread. Everything that comes from outside is bounded here: text columns are cut
at :data:`MAX_TEXT_CHARS`, JSON values at :data:`MAX_DEPTH` levels and :data:`MAX_ITEMS` items
per container, and a JSON column longer than :data:`MAX_JSON_CHARS` is replaced by a note."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from typing import Any, Mapping

from .record import PendingCall, utc_text

#: the most characters of one text column (prompt, response, reasoning, ...)
MAX_TEXT_CHARS = 1_000_000
#: the most characters of one text inside a JSON column
MAX_JSON_TEXT_CHARS = 200_000
#: the most characters of one JSON column
MAX_JSON_CHARS = 4_000_000
#: the deepest nesting written into a JSON column
MAX_DEPTH = 24
#: the most items of one list or dict written into a JSON column
MAX_ITEMS = 10_000
#: metadata keys of a memory entry left out of ``prompt_json`` (the answer's raw text is in its own row)
MEMORY_METADATA_SKIPPED = ("raw_text", "thinking_blocks")

#: every column of ``responses``, in order
RESPONSE_COLUMNS = (
    "id", "model", "resolved_model", "prompt", "system", "prompt_json", "options_json", "option_sources_json",
    "response", "response_json", "reasoning", "tool_calls_json", "tool_results_json", "schema_id", "parsed_json",
    "conversation_id", "duration_ms", "datetime_utc", "input_tokens", "output_tokens", "token_details",
    "finish_reason", "error", "backend", "device", "dtype", "quantization", "base_url", "model_json",
    "session_id", "surface", "method", "group_id", "parent_id", "notebook", "cell_id", "execution_count",
    "script", "pid",
)


def cut(text: Any, limit: int = MAX_TEXT_CHARS) -> str | None:
    """``text`` as a string of at most ``limit`` characters (a note says how much was cut)."""
    if text is None:
        return None
    if not isinstance(text, str):
        try:
            text = str(text)
        except Exception as exc:  # an object whose __str__ fails is recorded by its type
            text = f"<{type(text).__name__}: str() failed: {type(exc).__name__}>"
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[log: cut at {limit} of {len(text)} characters]"


#: a dict key whose value is a credential: its value is written as ``***``
SECRET_KEY = re.compile(r"api[_-]?key|authorization|access[_-]?token|auth[_-]?token|^token$|secret|password",
                        re.IGNORECASE)
_SCALARS = (type(None), bool, int)


def _key(key: Any) -> str:
    return (key if len(key) <= 1000 else cut(key, 1000)) if type(key) is str else cut(repr(key), 1000)


def plain(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON data, bounded (see the module docstring); objects become their text, and
    the value of a key naming a credential (:data:`SECRET_KEY`) is written as ``***``."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is str:
        return value if len(value) <= MAX_JSON_TEXT_CHARS else cut(value, MAX_JSON_TEXT_CHARS)
    if kind is float:
        return value if math.isfinite(value) else str(value)
    if depth >= MAX_DEPTH:
        return f"<nested deeper than {MAX_DEPTH} levels>"
    if kind is dict or isinstance(value, Mapping):
        out = {}
        for index, (key, item) in enumerate(value.items()):
            if index >= MAX_ITEMS:
                out["<log>"] = f"{len(value) - MAX_ITEMS} more items not recorded"
                break
            name = _key(key)
            secret = item not in (None, "") and type(item) in (str, int, float) and SECRET_KEY.search(name)
            out[name] = "***" if secret else plain(item, depth + 1)
        return out
    if isinstance(value, (bool, int)):  # subclasses (numpy's bool is not one: its text below)
        return value
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return cut(str(value), MAX_JSON_TEXT_CHARS)
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
        out_list = [plain(item, depth + 1) for item in items[:MAX_ITEMS]]
        if len(items) > MAX_ITEMS:
            out_list.append(f"<{len(items) - MAX_ITEMS} more items not recorded>")
        return out_list
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain({f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}, depth + 1)
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump) and not isinstance(value, type):
        try:
            return plain(model_dump(mode="json"), depth + 1)
        except Exception:  # not a pydantic model after all: its text below
            pass
    if isinstance(value, type):
        return f"<class {value.__module__}.{value.__qualname__}>"
    try:
        return cut(repr(value), 1000)
    except Exception:  # a broken __repr__
        return f"<{type(value).__name__}>"


def to_json(value: Any) -> str | None:
    """``value`` as bounded JSON text (None stays None)."""
    if value is None:
        return None
    text = json.dumps(plain(value), ensure_ascii=False, separators=(",", ":"))
    if len(text) > MAX_JSON_CHARS:
        return json.dumps({"<log>": f"{len(text)} characters of JSON not recorded (more than {MAX_JSON_CHARS})"})
    return text


def memory_entry(entry: Any) -> dict[str, Any]:
    """One memory entry of a payload as recorded in ``prompt_json``."""
    meta = getattr(entry, "metadata", None)
    if isinstance(meta, Mapping):
        meta = {k: v for k, v in meta.items() if k not in MEMORY_METADATA_SKIPPED}
    return {"role": getattr(entry, "role", None), "content": getattr(entry, "content", None),
            "timestamp": getattr(entry, "timestamp", None), "tool_calls": getattr(entry, "tool_calls", None),
            "metadata": meta or None}


def prompt_record(payload: Any, tools: list | None, continuation: list | None) -> dict[str, Any]:
    """The messages as sent: system, memory, user; plus what else the payload carried."""
    memory = getattr(payload, "memory", None) or []
    effort = getattr(payload, "reasoning_effort", None)
    record = {
        "system": getattr(payload, "system_context", None),
        "memory": [memory_entry(e) for e in memory] if isinstance(memory, list) else None,
        "user": getattr(payload, "user_message", None),
        "thinking_blob": getattr(payload, "thinking_blob", None) or None,
        "user_profile": getattr(payload, "user_profile", None) or None,
        "metadata": getattr(payload, "metadata", None) or None,
        "reasoning_effort": effort,
        "continuation": continuation or None,
        "tools": tools or None,
    }
    return {k: v for k, v in record.items() if v is not None}


def tool_results(continuation: list | None) -> list[dict] | None:
    """The tool results a call was given: the messages of a tool loop's continuation other than
    the assistant's calls (``tool`` messages, or user messages where the template has no tool role)."""
    found = [m for m in continuation or [] if isinstance(m, Mapping) and m.get("role") != "assistant"]
    return found or None


def schema_of(details: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(schema id, schema JSON) of a call with a ``response_format`` that has a JSON schema."""
    schema = details.get("response_format_schema")
    if schema is None:
        return None, None
    text = to_json(schema)
    return hashlib.sha256(text.encode()).hexdigest(), text


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def build_row(pending: PendingCall) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the ``responses`` row, extras: ``schema`` JSON and the conversation's name and model)."""
    ticket, response = pending.ticket, pending.response
    details: dict[str, Any] = {}
    if ticket.details is not None:
        try:
            details = dict(ticket.details() or {})
        except Exception as exc:  # the record keeps what it has; the call is not affected
            details = {"details_error": f"{type(exc).__name__}: {exc}"}
    options = details.get("options") or {}
    metadata = getattr(response, "metadata", None)
    metadata = metadata if isinstance(metadata, Mapping) else {}
    payload, ctx, origin = ticket.payload, ticket.context, ticket.origin
    schema_id, schema_json = schema_of(details)
    parsed = getattr(response, "parsed", None)
    token_details = {k: metadata.get(k) for k in ("reused_prompt_tokens", "shared_rows") if metadata.get(k)}
    row = {
        "id": ticket.id,
        "model": cut(details.get("model") or metadata.get("model"), 10_000),
        "resolved_model": cut(details.get("resolved_model"), 10_000),
        "prompt": cut(getattr(payload, "user_message", None)),
        "system": cut(getattr(payload, "system_context", None)),
        "prompt_json": to_json(prompt_record(payload, ticket.tools, ticket.continuation)) if payload is not None else None,
        "options_json": to_json(options),
        "option_sources_json": to_json(details.get("option_sources") or None),
        "response": cut(getattr(response, "response", None)),
        "response_json": to_json({"metadata": metadata, "code": getattr(response, "code", None)})
        if response is not None else None,
        "reasoning": cut(getattr(response, "thinking", None) or None),
        "tool_calls_json": to_json(getattr(response, "tool_calls", None) or None),
        "tool_results_json": to_json(tool_results(ticket.continuation)),
        "schema_id": schema_id,
        "parsed_json": to_json(parsed) if parsed is not None else None,
        "conversation_id": ctx.conversation_id,
        "duration_ms": pending.duration_ms,
        "datetime_utc": utc_text(ticket.started),
        "input_tokens": _count(metadata.get("prompt_tokens")),
        "output_tokens": _count(metadata.get("completion_tokens")),
        "token_details": to_json(token_details or None),
        "finish_reason": cut(metadata.get("finish_reason") or ("error" if pending.error else None), 100),
        "error": cut(pending.error or metadata.get("error") or metadata.get("structured_error")),
        "backend": cut(details.get("backend") or metadata.get("backend"), 100),
        "device": cut(details.get("device") or metadata.get("device"), 100),
        "dtype": cut(details.get("dtype") or metadata.get("dtype"), 100),
        "quantization": cut(details.get("quantization") or metadata.get("quantization"), 100),
        "base_url": cut(details.get("base_url") or metadata.get("base_url"), 10_000),
        "model_json": to_json(details.get("model_details") or None),
        "session_id": cut(getattr(payload, "session_id", None), 10_000),
        "surface": ctx.surface or "api",
        "method": ticket.method,
        "group_id": ctx.group_id,
        "parent_id": ctx.parent_id,
        "notebook": cut(origin.get("notebook"), 10_000),
        "cell_id": cut(origin.get("cell_id"), 1000),
        "execution_count": _count(origin.get("execution_count")),
        "script": cut(origin.get("script"), 10_000),
        "pid": os.getpid(),
    }
    extras = {"schema": schema_json, "conversation_name": ctx.conversation_name, "model": row["model"]}
    return row, extras


__all__ = ["MAX_DEPTH", "MAX_ITEMS", "MAX_JSON_CHARS", "MAX_TEXT_CHARS", "RESPONSE_COLUMNS", "build_row", "cut",
           "plain", "prompt_record", "to_json"]
