"""The chat panel's transcript as typed entries, checked at the boundary, and its exports.

The conversation is kept as protocol memory (a list of :class:`~midori_hf_nb.MemoryEntryData`,
the payload memory of the next message). Its ``metadata`` has one layout:

* an answer (``role="assistant"``): the response statistics under the names of
  :class:`~midori_hf_nb.stats.ResponseStats` (``completion_tokens``, ``total_seconds``,
  ``tokens_per_second``, ``finish_reason``, ``decode_path``, ``tool_steps``...), plus the
  panel's own fields :data:`PANEL_FIELDS`: ``thinking``, ``stopped``, ``error``,
  ``display_updates``, ``display_events`` and ``schema`` (the name of the response format the
  answer was constrained to, when it was);
* any other message: ``tokens`` (its length under the agent's tokenizer, when known).

:class:`TranscriptEntry` is the typed view of one memory entry, read once with
:meth:`TranscriptEntry.from_memory`; the rest of the panel works with it and never reads a
metadata key. Entries that come from outside (``ChatPanel(memory=...)``, a JSON file) are
checked with :func:`check_memory`: roles are one of :data:`ROLES`, every field has its type,
statistics are read with ``ResponseStats.from_metadata(..., strict=True)``, and any refusal
is a :class:`TranscriptError` naming the message and the field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ...protocol import AgentResponse, MemoryEntryData
from ...stats import MAX_ITEMS, MAX_TEXT, ResponseStats, StatsError
from ..conversation import ROLES
from ..display import escape_markdown, render_response_markdown, tool_call_rows

#: Messages a transcript may hold (``ChatPanel(memory=...)``, a JSON document). The panel shows a
#: page of them at a time, so the browser never receives the whole transcript at once.
MAX_MESSAGES = 100_000

#: The latest timestamp a message may carry, in seconds since the epoch: 2262-04-11, the last
#: second pandas' nanosecond timestamps hold (``to_frame``), well within what the clock shown in
#: the panel (``time.localtime``) reads.
MAX_TIMESTAMP = 9_223_372_036

#: How each role is labelled in the transcript (HTML and Markdown).
ROLE_LABELS = {"user": "You", "assistant": "Assistant", "system": "System", "tool": "Tool"}
#: Metadata fields of an answer that the panel owns (the rest are response statistics).
PANEL_FIELDS = ("thinking", "stopped", "error", "display_updates", "display_events", "schema")
#: Metadata field of a non-answer message: its length in tokens.
TOKENS_FIELD = "tokens"
#: The ResponseStats fields, in order (a transcript dict carries each under its own name).
STATS_FIELDS = tuple(f.name for f in dataclasses.fields(ResponseStats) if f.name != "extra")


class TranscriptError(ValueError):
    """A transcript message or one of its fields is not acceptable; the message names it."""


@dataclass
class TranscriptEntry:
    """One message of the transcript, typed.

    ``stats`` are the answer's response statistics (empty for other messages); ``tokens`` is a
    non-answer message's own length in tokens (an answer's length is ``stats.completion_tokens``).
    """

    role: str
    content: str
    timestamp: float | None = None
    tool_calls: list[dict[str, Any]] | None = None
    thinking: str = ""
    stats: ResponseStats = field(default_factory=ResponseStats)
    tokens: int | None = None
    stopped: bool = False
    error: str | None = None
    display_updates: int | None = None
    display_events: int | None = None
    #: the name of the response format (JSON schema) the answer was constrained to, if any
    schema: str | None = None

    @property
    def is_answer(self) -> bool:
        """True for the assistant's messages."""
        return self.role == "assistant"

    @property
    def length(self) -> int | None:
        """The message's length in tokens: an answer's completion tokens, else ``tokens``."""
        return self.stats.completion_tokens if self.is_answer else self.tokens

    @property
    def seconds(self) -> float | None:
        """Generation seconds of an answer (``total_seconds``, else ``wall_seconds``)."""
        stats = self.stats
        return stats.total_seconds if stats.total_seconds is not None else stats.wall_seconds

    @property
    def has_body(self) -> bool:
        """Whether an answer has anything to show besides its error."""
        return bool(self.content or self.thinking or self.tool_calls or self.stats.tool_steps
                    or not self.error)

    # ------------------------------------------------------------------ conversions

    @classmethod
    def from_memory(cls, entry: MemoryEntryData) -> "TranscriptEntry":
        """The typed view of a memory entry; values of the wrong type are left out.

        Entries from outside are checked first (:func:`check_memory`); this never raises, so a
        panel whose ``memory`` list was edited by hand still renders.
        """
        meta = entry.metadata if isinstance(entry.metadata, Mapping) else {}
        own = {key: meta.get(key) for key in (*PANEL_FIELDS, TOKENS_FIELD)}
        stats = ResponseStats.from_metadata({k: v for k, v in meta.items() if k not in own}) \
            if entry.role == "assistant" else ResponseStats()
        thinking, error, schema = own["thinking"], own["error"], own["schema"]
        return cls(
            role=entry.role if isinstance(entry.role, str) else str(entry.role),
            content=entry.content if isinstance(entry.content, str) else str(entry.content),
            timestamp=entry.timestamp if _is_number(entry.timestamp) else None,
            tool_calls=[c for c in entry.tool_calls if isinstance(c, Mapping)] or None
            if isinstance(entry.tool_calls, list) else None,
            thinking=thinking if isinstance(thinking, str) else "",
            stats=stats,
            tokens=_count_or_none(own[TOKENS_FIELD]),
            stopped=own["stopped"] is True,
            error=error if isinstance(error, str) else None,
            display_updates=_count_or_none(own["display_updates"]),
            display_events=_count_or_none(own["display_events"]),
            schema=schema if isinstance(schema, str) and schema else None,
        )

    def to_memory(self) -> MemoryEntryData:
        """This entry as protocol memory (the metadata layout of the module docstring)."""
        if self.is_answer:
            meta = {k: v for k, v in self.stats.as_dict().items() if v is not None and v != []}
            meta.update({"thinking": self.thinking or None, "stopped": self.stopped or None,
                         "error": self.error or self.stats.error,
                         "display_updates": self.display_updates, "display_events": self.display_events,
                         "schema": self.schema})
        else:
            meta = {TOKENS_FIELD: self.tokens}
        meta = {k: v for k, v in meta.items() if v is not None}
        return MemoryEntryData(role=self.role, content=self.content, timestamp=self.timestamp,
                               tool_calls=self.tool_calls, metadata=meta or None)

    def as_response(self) -> AgentResponse:
        """An answer as the protocol's :class:`~midori_hf_nb.AgentResponse` (for the response renderers)."""
        return AgentResponse(thinking=self.thinking, response=self.content, code=None,
                             tool_calls=self.tool_calls, metadata=self.stats.as_dict())

    def tool_rows(self) -> list[dict[str, Any]]:
        """Rows of the tool table: executed steps with results, then calls parsed and not executed."""
        return tool_call_rows(self.as_response()) if self.is_answer else []

    def as_dict(self) -> dict[str, Any]:
        """The entry as a flat dict: ``role``, ``content``, ``timestamp``, ``thinking``, ``tokens``
        (:attr:`length`), ``stopped``, ``error``, ``tool_calls`` (:meth:`tool_rows`), then every
        :class:`~midori_hf_nb.stats.ResponseStats` field under its own name."""
        out = {"role": self.role, "content": self.content, "timestamp": self.timestamp, "thinking": self.thinking,
               "tokens": self.length, "stopped": self.stopped, "error": self.error or self.stats.error,
               "tool_calls": self.tool_rows()}
        for name in STATS_FIELDS:
            if name in out:  # the entry's own field (``error``: the panel's, else the agent's) wins
                continue
            value = getattr(self.stats, name)
            out[name] = list(value) if isinstance(value, list) else value
        return out


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _count_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


# --------------------------------------------------------------------------- the boundary


def _refuse(where: str, name: str, value: Any, allowed: str) -> TranscriptError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return TranscriptError(f"{where}: {name}={shown} is not allowed: expected {allowed}")


def _check_text(where: str, name: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise _refuse(where, name, value, f"text of at most {MAX_TEXT} characters" + (" or null" if optional else ""))


def _check_unicode(where: str, name: str, value: Any) -> None:
    """Refuse a lone surrogate (a ``\\ud800`` JSON escape without its pair) anywhere in ``value``:
    it is not text, and no file can hold it as UTF-8."""
    stack, seen = [(value, name)], set()
    while stack:
        item, label = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise TranscriptError(
                    f"{where}: {label} holds a lone surrogate (U+{ord(item[exc.start]):04X} at character "
                    f"{exc.start}), which is not text: not allowed; expected valid Unicode text (a JSON "
                    "\\ud800-\\udfff escape only in a pair)") from None
        elif isinstance(item, (Mapping, list, tuple)) and id(item) not in seen:
            seen.add(id(item))
            pairs = item.items() if isinstance(item, Mapping) else enumerate(item)
            for key, child in pairs:
                stack.append((key, f"{label} key"))
                stack.append((child, f"{label}[{str(key)[:40]!r}]" if isinstance(item, Mapping) else f"{label}[{key}]"))


def _check_tool_calls(where: str, calls: Any) -> None:
    if calls is None:
        return
    if not isinstance(calls, list) or len(calls) > MAX_ITEMS:
        raise _refuse(where, "tool_calls", calls, f"a list of at most {MAX_ITEMS} calls or null")
    for index, call in enumerate(calls):
        if not isinstance(call, Mapping) or not isinstance(call.get("name"), str):
            raise _refuse(where, f"tool_calls[{index}]", call, "an object with a 'name' (text) and 'arguments'")
        _check_text(where, f"tool_calls[{index}].id", call.get("id"), optional=True)


def _check_tool_steps(where: str, steps: list[dict[str, Any]] | None) -> None:
    for index, step in enumerate(steps or []):
        name = f"metadata field 'tool_steps'[{index}]"
        if not isinstance(step.get("name"), str):
            raise _refuse(where, f"{name}.name", step.get("name"), "the tool's name (text)")
        _check_text(where, f"{name}.error", step.get("error"), optional=True)
        for key in ("step", "seconds"):
            value = step.get(key)
            if value is not None and not (_is_number(value) and value >= 0):
                raise _refuse(where, f"{name}.{key}", value, "a number >= 0 or null")


def _check_metadata(where: str, role: str, metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise _refuse(where, "metadata", metadata, "an object with text keys or null")
    flags = {"stopped": "true or false", "display_updates": "a whole number >= 0",
             "display_events": "a whole number >= 0", TOKENS_FIELD: "a whole number >= 0"}
    for key, allowed in flags.items():
        value = metadata.get(key)
        valid = isinstance(value, bool) if key == "stopped" else _count_or_none(value) is not None
        if value is not None and not valid:
            raise _refuse(where, f"metadata field {key!r}", value, allowed)
    for key in ("thinking", "error", "schema"):
        _check_text(where, f"metadata field {key!r}", metadata.get(key), optional=True)
    if role == "tool":
        for key in ("name", "tool_call_id"):
            value = metadata.get(key)
            if value is not None and (not isinstance(value, str) or not value or len(value) > 200):
                raise _refuse(where, f"metadata field {key!r}", value,
                              "the tool's name (text of 1 to 200 characters) or null" if key == "name"
                              else "the call's id (text of 1 to 200 characters) or null")
    if role != "assistant":
        return
    rest = {k: v for k, v in metadata.items() if k not in PANEL_FIELDS and k != TOKENS_FIELD}
    try:
        stats = ResponseStats.from_metadata(rest, strict=True)
    except StatsError as exc:
        raise TranscriptError(f"{where}: {exc}") from exc
    _check_tool_steps(where, stats.tool_steps)


def check_entry(entry: Any, where: str) -> MemoryEntryData:
    """``entry`` (a :class:`~midori_hf_nb.MemoryEntryData`) checked field by field; returns a copy.

    Raises :class:`TranscriptError` beginning with ``where`` and naming the field and what is allowed.
    """
    if not isinstance(entry, MemoryEntryData):
        raise TranscriptError(f"{where} is {type(entry).__name__}: expected MemoryEntryData(role=..., content=...)")
    if entry.role not in ROLES:
        raise _refuse(where, "role", entry.role, "one of " + ", ".join(ROLES))
    _check_text(where, "content", entry.content)
    if entry.timestamp is not None and not (_is_number(entry.timestamp) and 0 <= entry.timestamp <= MAX_TIMESTAMP):
        raise _refuse(where, "timestamp", entry.timestamp,
                      f"seconds since the epoch from 0 to {MAX_TIMESTAMP:,} (2262-04-11) or null")
    _check_tool_calls(where, entry.tool_calls)
    _check_metadata(where, entry.role, entry.metadata)
    for name in ("content", "tool_calls", "metadata"):
        _check_unicode(where, name, getattr(entry, name))
    return MemoryEntryData(role=entry.role, content=entry.content, timestamp=entry.timestamp,
                           tool_calls=list(entry.tool_calls) if entry.tool_calls is not None else None,
                           metadata=dict(entry.metadata) if entry.metadata is not None else None)


def check_memory(entries: Iterable[Any] | None, source: str) -> list[MemoryEntryData]:
    """Every entry of ``entries`` checked with :func:`check_entry` (at most :data:`MAX_MESSAGES`);
    errors name ``source`` and the message's position (from 0)."""
    if entries is None:
        return []
    if isinstance(entries, (str, bytes, Mapping)) or not isinstance(entries, Iterable):
        raise TranscriptError(f"{source}: expected a list of MemoryEntryData, got {type(entries).__name__}")
    items = list(entries)
    if len(items) > MAX_MESSAGES:
        raise TranscriptError(f"{source}: {len(items)} messages are not allowed: expected at most {MAX_MESSAGES}")
    return [check_entry(item, f"{source}: transcript message {index}") for index, item in enumerate(items)]


# --------------------------------------------------------------------------- exports


def entry_to_dict(entry: MemoryEntryData) -> dict[str, Any]:
    """A memory entry as a flat transcript dict (see :meth:`TranscriptEntry.as_dict`)."""
    return TranscriptEntry.from_memory(entry).as_dict()


def payload_memory(entries: list[MemoryEntryData]) -> list[MemoryEntryData]:
    """The entries sent to the model: everything except failed exchanges.

    A failed exchange is an answer with an ``error`` and the user message it answered.
    """
    kept: list[MemoryEntryData] = []
    for entry in entries:
        if entry.role == "assistant" and TranscriptEntry.from_memory(entry).error:
            if kept and kept[-1].role == "user":
                kept.pop()
            continue
        kept.append(entry)
    return kept


def role_label(role: str) -> str:
    """The label of a role (the role itself, unescaped, for a role the transcript does not know)."""
    return ROLE_LABELS.get(role, role)


def render_transcript_markdown(entries: list[MemoryEntryData], title: str | None = None, *, level: int = 1) -> str:
    """The transcript as Markdown: answers keep their own Markdown (made inert:
    :func:`~midori_hf_nb.notebook.markdown.markdown_for_export`); everything else written from the
    transcript (title, roles, user messages, errors) is Markdown-escaped (only what would start
    markup: :func:`~midori_hf_nb.notebook.escaping.escape_markdown`). ``level``: the title's heading level."""
    lines: list[str] = []
    if title:
        lines += [f"{'#' * max(1, min(6, level))} {escape_markdown(title)}", ""]
    for entry in map(TranscriptEntry.from_memory, entries):
        heading = f"**{escape_markdown(role_label(entry.role))}**"
        if entry.stopped:
            heading += " *(stopped)*"
        if entry.error:
            heading += " *(failed)*"
        lines += [heading, ""]
        if entry.is_answer:
            lines.append(render_response_markdown(entry.as_response()))
            if entry.error:
                lines += ["", "> " + escape_markdown("Error: " + entry.error).replace("\n", "\n> ")]
        else:
            lines.append("\n".join(escape_markdown(line) + "  " for line in entry.content.splitlines()))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def transcript_frame(entries: list[MemoryEntryData]):
    """The transcript as a DataFrame: the columns of :func:`~midori_hf_nb.notebook.conversation_frame`
    (``tokens`` is each message's :attr:`~TranscriptEntry.length`, ``seconds`` an answer's
    :attr:`~TranscriptEntry.seconds`) plus ``thinking``, ``stopped`` and ``error``."""
    import pandas as pd

    from ..frames import conversation_frame

    typed = [TranscriptEntry.from_memory(e) for e in entries]
    frame = conversation_frame([{"role": e.role, "content": e.content, "timestamp": e.timestamp,
                                 "metadata": {"finish_reason": e.stats.finish_reason}} for e in typed])

    def column(values: list[Any], dtype: str) -> Any:
        return pd.Series([pd.NA if v is None else v for v in values], dtype="object", index=frame.index).astype(dtype)

    frame["tokens"] = column([e.length for e in typed], "Int64")
    frame["seconds"] = column([e.seconds for e in typed], "Float64")
    frame["thinking"] = column([e.thinking for e in typed], "string")
    frame["stopped"] = column([e.stopped for e in typed], "boolean")
    frame["error"] = column([e.error for e in typed], "string")
    return frame


__all__ = [
    "MAX_MESSAGES",
    "MAX_TIMESTAMP",
    "PANEL_FIELDS",
    "ROLES",
    "ROLE_LABELS",
    "STATS_FIELDS",
    "TranscriptEntry",
    "TranscriptError",
    "check_entry",
    "check_memory",
    "entry_to_dict",
    "payload_memory",
    "render_transcript_markdown",
    "role_label",
    "transcript_frame",
]
