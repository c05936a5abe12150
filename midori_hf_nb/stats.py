"""Typed statistics of one response: tokens, timings, finish reason, decode path, tool steps.

An agent builds a :class:`ResponseStats` once per response and puts :meth:`ResponseStats.as_dict`
into ``AgentResponse.metadata`` (a plain dict, as the protocol has it). The project's own layers
read it back typed with :func:`stats_of`, never by string keys, and nothing renames a key on the
way. Reading is bounded and type-checked, since metadata can come from another agent, a file or
a transcript: :meth:`ResponseStats.from_metadata` drops (or, with ``strict=True``, refuses with a
message naming the field) a value of the wrong type.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

#: finish reasons: the model ended, the token budget ended it, it was stopped, it failed, or the repetition
#: guard ended a loop (``stop_on_repetition``)
FINISH_REASONS = ("stop", "length", "cancelled", "error", "repetition")
#: the most list items / characters read from one metadata field
MAX_ITEMS = 10_000
MAX_TEXT = 10_000_000


class StatsError(ValueError):
    """A metadata field has a value of the wrong type or out of range; the message names it."""


@dataclass
class ResponseStats:
    """What one response cost and how it ended (all optional: an agent fills what it knows)."""

    model: str | None = None
    backend: str | None = None
    session_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    #: seconds from the start of generation to the first token
    time_to_first_token: float | None = None
    #: seconds of generation (first forward pass to last token)
    total_seconds: float | None = None
    #: seconds from the call to the response (prompt building, loading waits included)
    wall_seconds: float | None = None
    #: seconds from the call to the first token (prompt building and the hand-over included)
    call_to_first_token: float | None = None
    tokens_per_second: float | None = None
    decode_tokens_per_second: float | None = None
    finish_reason: str | None = None
    #: "engine" (the engine's own decode loop) or "generate" (model.generate), for local models
    decode_path: str | None = None
    decode_path_reason: str | None = None
    memory_dropped: int | None = None
    used_chat_template: bool | None = None
    device: str | None = None
    dtype: str | None = None
    quantization: str | None = None
    seed: int | None = None
    do_sample: bool | None = None
    temperature: float | None = None
    max_new_tokens: int | None = None
    thinking_blocks: list[str] = field(default_factory=list)
    raw_text: str | None = None
    parser: str | None = None
    #: the API root of a served model (agents on an OpenAI-compatible server; never with a key)
    base_url: str | None = None
    #: what went wrong when ``finish_reason`` is "error" (e.g. the server dropped the stream midway)
    error: str | None = None
    #: the finish reason as the server sent it (e.g. "tool_calls", "content_filter")
    server_finish_reason: str | None = None
    #: what the client corrected or cut in a server's answer (the API key masked, usage counts
    #: refused, bytes that were not UTF-8, the token budget reached on the client)
    notes: list[str] | None = None
    # ------------------------------------------------------------------ tools (None: no tools offered)
    tools_offered: list[str] | None = None
    tools_in_template: bool | None = None
    tool_parse_errors: list[str] | None = None
    unknown_tool_calls: list[str] | None = None
    #: executed tool calls of a tool loop (records with step, name, arguments, id, result, error, seconds)
    tool_steps: list[dict[str, Any]] | None = None
    steps: int | None = None
    max_steps_reached: bool | None = None
    # ------------------------------------------------------------------ structured output (None: not asked)
    #: the name of the ``response_format`` the answer was constrained to ("json", a model's name, ...)
    response_format: str | None = None
    #: the ``tool_choice`` of the call ("auto", "required", "none" or a tool's name)
    tool_choice: str | None = None
    #: why ``response.parsed`` is None (the budget ran out before the JSON closed, cancelled, ...)
    structured_error: str | None = None
    #: when the repetition guard ended a loop in a constrained answer (``finish_reason`` "repetition"):
    #: the tokens of the grammar's shortest completion written after it so the answer closes
    closing_tokens: int | None = None
    #: the call's id in the call log (:mod:`midori_hf_nb.log`); None when it was not recorded
    log_id: str | None = None
    #: metadata keys this class does not know (kept as they are)
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ conversion

    def as_dict(self) -> dict[str, Any]:
        """The metadata dict of the protocol's ``AgentResponse`` (tool keys only when tools were used,
        structured-output keys only when asked; ``base_url``, ``error``, ``server_finish_reason``
        and ``notes`` only when set)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name in _OMITTED_WHEN_NONE and value is None:
                continue
            out[f.name] = list(value) if isinstance(value, list) else value
        out.update(self.extra)
        return out

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None, *, strict: bool = False) -> "ResponseStats":
        """Typed statistics from a metadata dict.

        A value of the wrong type is dropped (``strict=False``) or refused with a
        :class:`StatsError` naming the field (``strict=True``); unknown keys go to ``extra``.
        """
        if metadata is None:
            return cls()
        if not isinstance(metadata, Mapping):
            raise StatsError(f"metadata={type(metadata).__name__} is not allowed: expected a dict")
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in metadata.items():
            check = _CHECKS.get(key)
            if check is None:
                if isinstance(key, str):
                    extra[key] = value
                continue
            try:
                values[key] = check(key, value)
            except StatsError:
                if strict:
                    raise
        return cls(**values, extra=extra)

    def replace(self, **changes: Any) -> "ResponseStats":
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


_TOOL_FIELDS = frozenset({"tools_offered", "tools_in_template", "tool_parse_errors", "unknown_tool_calls",
                          "tool_steps", "steps", "max_steps_reached"})
_STRUCTURED_FIELDS = frozenset({"response_format", "tool_choice", "structured_error", "closing_tokens"})
#: fields left out of :meth:`ResponseStats.as_dict` while None (tools not offered, structured output
#: not asked, and what only served agents know)
_OMITTED_WHEN_NONE = _TOOL_FIELDS | _STRUCTURED_FIELDS | {"base_url", "error", "server_finish_reason", "notes"}


def _bad(name: str, value: Any, allowed: str) -> StatsError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return StatsError(f"metadata field {name!r}={shown} is not allowed: expected {allowed}")


def _opt(check):
    def wrapped(name: str, value: Any) -> Any:
        return None if value is None else check(name, value)
    return wrapped


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _bad(name, value, "text")
    if len(value) > MAX_TEXT:
        raise _bad(name, value, f"text of at most {MAX_TEXT} characters")
    return value


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad(name, value, "a whole number >= 0")
    return value


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, value, "a whole number")
    return value


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise _bad(name, value, "a number of seconds >= 0")
    return float(value)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(name, value, "a finite number")
    return float(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad(name, value, "true or false")
    return value


def _finish(name: str, value: Any) -> str:
    if value not in FINISH_REASONS:
        raise _bad(name, value, "one of " + ", ".join(FINISH_REASONS))
    return value


def _texts(name: str, value: Any) -> list[str]:
    if not isinstance(value, (list, tuple)) or len(value) > MAX_ITEMS:
        raise _bad(name, value, f"a list of at most {MAX_ITEMS} texts")
    return [_text(name, item) for item in value]


def _records(name: str, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, (list, tuple)) or len(value) > MAX_ITEMS \
            or not all(isinstance(item, Mapping) for item in value):
        raise _bad(name, value, f"a list of at most {MAX_ITEMS} records (dicts)")
    return [dict(item) for item in value]


_CHECKS = {
    "model": _opt(_text), "backend": _opt(_text), "session_id": _opt(_text), "log_id": _opt(_text),
    "prompt_tokens": _opt(_count), "completion_tokens": _opt(_count),
    "time_to_first_token": _opt(_seconds), "total_seconds": _opt(_seconds), "wall_seconds": _opt(_seconds), "call_to_first_token": _opt(_seconds),
    "tokens_per_second": _opt(_seconds), "decode_tokens_per_second": _opt(_seconds),
    "finish_reason": _opt(_finish), "decode_path": _opt(_text), "decode_path_reason": _opt(_text),
    "memory_dropped": _opt(_count), "used_chat_template": _opt(_flag), "device": _opt(_text),
    "dtype": _opt(_text), "quantization": _opt(_text), "seed": _opt(_integer), "do_sample": _opt(_flag),
    "temperature": _opt(_number), "max_new_tokens": _opt(_count), "thinking_blocks": _texts,
    "raw_text": _opt(_text), "parser": _opt(_text), "base_url": _opt(_text), "error": _opt(_text),
    "server_finish_reason": _opt(_text), "notes": _opt(_texts), "tools_offered": _opt(_texts),
    "tools_in_template": _opt(_flag), "tool_parse_errors": _opt(_texts), "unknown_tool_calls": _opt(_texts),
    "tool_steps": _opt(_records), "steps": _opt(_count), "max_steps_reached": _opt(_flag),
    "response_format": _opt(_text), "tool_choice": _opt(_text), "structured_error": _opt(_text),
    "closing_tokens": _opt(_count),
}


def stats_of(response: Any) -> ResponseStats:
    """The typed statistics of any protocol response (its ``metadata`` read with
    :meth:`ResponseStats.from_metadata`; empty statistics for a response without metadata)."""
    return ResponseStats.from_metadata(getattr(response, "metadata", None))


__all__ = ["FINISH_REASONS", "ResponseStats", "StatsError", "stats_of"]
