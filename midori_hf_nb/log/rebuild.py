"""A logged conversation rebuilt as a transcript, to read or to continue.

Every call records the conversation as it was sent (the payload's memory) with the new user
message and the answer, so the latest call of a conversation holds all of it: its memory, its
message and its answer are the transcript. A regenerated answer replaces the one before (as in
the chat panel), and after a panel's Clear the conversation starts again from there.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..protocol import MemoryEntryData
from ..stats import ResponseStats
from .reader import open_log

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

_ROLES = ("user", "assistant", "system", "tool")


class ConversationNotFound(LookupError):
    """No logged conversation has that id or name."""


@dataclass
class LoggedConversation:
    """A conversation rebuilt from the log: ``memory`` is the transcript (protocol memory, oldest
    first, answers with their statistics in ``metadata``), ready to continue
    (``ChatPanel(agent, conversation=id)`` or a payload's ``memory``)."""

    id: str
    name: str | None
    model: str | None
    memory: list[MemoryEntryData] = field(default_factory=list)
    #: the log ids of the conversation's calls, oldest first
    response_ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.memory)

    def text(self) -> str:
        """The transcript as plain text (``role: content`` blocks; not escaped)."""
        title = f"Conversation {self.name or self.id}" + (f" ({self.model})" if self.model else "")
        parts = [title]
        for entry in self.memory:
            error = (entry.metadata or {}).get("error") if isinstance(entry.metadata, dict) else None
            parts.append(f"{entry.role}: {entry.content}" + (f"\n[error: {error}]" if error else ""))
        return "\n\n".join(parts)

    def __str__(self) -> str:
        return self.text()


def _seconds(text: str | None) -> float | None:
    try:
        return dt.datetime.fromisoformat(text).timestamp() if text else None
    except ValueError:
        return None


def _loads(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _entry(item: Any) -> MemoryEntryData | None:
    if not isinstance(item, dict) or item.get("role") not in _ROLES:
        return None
    content = item.get("content")
    stamp = item.get("timestamp")
    calls = item.get("tool_calls")
    meta = item.get("metadata")
    return MemoryEntryData(role=item["role"], content=content if isinstance(content, str) else str(content or ""),
                           timestamp=float(stamp) if isinstance(stamp, (int, float)) and not isinstance(stamp, bool)
                           else None,
                           tool_calls=[c for c in calls if isinstance(c, dict)] or None if isinstance(calls, list)
                           else None,
                           metadata=dict(meta) if isinstance(meta, dict) else None)


def _answer(row: dict[str, Any]) -> MemoryEntryData:
    recorded = _loads(row["response_json"]) or {}
    metadata = recorded.get("metadata") if isinstance(recorded, dict) else None
    stats = ResponseStats.from_metadata(metadata if isinstance(metadata, dict) else {}).as_dict()
    meta = {k: v for k, v in stats.items() if v is not None and v != []}
    meta.pop("raw_text", None)
    if row["reasoning"]:
        meta["thinking"] = row["reasoning"]
    if row["error"] and row["finish_reason"] == "error":
        meta["error"] = row["error"]
    if row["finish_reason"] == "cancelled":
        meta["stopped"] = True
    started = _seconds(row["datetime_utc"])
    ended = None if started is None else started + (row["duration_ms"] or 0) / 1000
    calls = _loads(row["tool_calls_json"])
    return MemoryEntryData(role="assistant", content=row["response"] or "", timestamp=ended,
                           tool_calls=[c for c in calls if isinstance(c, dict)] or None if isinstance(calls, list)
                           else None, metadata=meta or None)


def rebuild(row: dict[str, Any]) -> list[MemoryEntryData]:
    """The transcript a call's row holds: its memory as sent, its message and its answer."""
    record = _loads(row["prompt_json"]) or {}
    memory = [e for e in (_entry(item) for item in record.get("memory") or []) if e is not None]
    memory.append(MemoryEntryData(role="user", content=row["prompt"] or "", timestamp=_seconds(row["datetime_utc"])))
    memory.append(_answer(row))
    return memory


_ROW_COLUMNS = ("id", "prompt", "prompt_json", "response", "response_json", "reasoning", "tool_calls_json", "error",
                "finish_reason", "datetime_utc", "duration_ms")


def find_conversation(id_or_name: str, path: Any = None) -> tuple[str, str | None, str | None] | None:
    """(id, name, model) of the conversation with this id, else the latest one with this name; None."""
    if not isinstance(id_or_name, str) or not id_or_name.strip():
        raise ValueError(f"conversation={id_or_name!r} is not allowed: expected a conversation id or name")
    conn = open_log(path)
    if conn is None:
        return None
    try:
        found = conn.execute("SELECT id, name, model FROM conversations WHERE id = ?", (id_or_name,)).fetchone()
        if found is None:
            found = conn.execute("SELECT id, name, model FROM conversations WHERE name = ? "
                                 "ORDER BY datetime_utc DESC LIMIT 1", (id_or_name,)).fetchone()
    finally:
        conn.close()
    return tuple(found) if found else None  # type: ignore[return-value]


def transcript(conversation: str, path: Any = None) -> LoggedConversation:
    """The logged conversation with this id (else the latest with this name), rebuilt; raises
    :class:`ConversationNotFound` when there is none."""
    found = find_conversation(conversation, path)
    if found is None:
        raise ConversationNotFound(f"no logged conversation has the id or name {conversation!r}: "
                                   "midori_hf_nb.log.conversations() lists them")
    cid, name, model = found
    conn = open_log(path)
    assert conn is not None
    try:
        ids = [r[0] for r in conn.execute("SELECT id FROM responses WHERE conversation_id = ? "
                                          "ORDER BY datetime_utc, rowid", (cid,))]
        last = conn.execute(f"SELECT {', '.join(_ROW_COLUMNS)} FROM responses WHERE conversation_id = ? "
                            "ORDER BY datetime_utc DESC, rowid DESC LIMIT 1", (cid,)).fetchone()
    finally:
        conn.close()
    memory = rebuild(dict(zip(_ROW_COLUMNS, last))) if last else []
    return LoggedConversation(id=cid, name=name, model=model, memory=memory, response_ids=ids)


def conversations(n: int | None = 20, *, path: Any = None) -> "pd.DataFrame":
    """The logged conversations, most recent last: id, name, model, first and last call, calls."""
    import pandas as pd

    columns = ["id", "name", "model", "first", "last", "responses"]
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ValueError(f"n={n!r} is not allowed: expected a whole number >= 0 (0 or None: every conversation)")
    conn = open_log(path)
    if conn is None:
        return pd.DataFrame([], columns=columns)
    try:
        rows = conn.execute(
            "SELECT c.id, c.name, c.model, min(r.datetime_utc), max(r.datetime_utc), count(r.id) FROM conversations c "
            "JOIN responses r ON r.conversation_id = c.id GROUP BY c.id ORDER BY max(r.datetime_utc) DESC LIMIT ?",
            (n or 1_000_000,)).fetchall()
    finally:
        conn.close()
    frame = pd.DataFrame(list(reversed(rows)), columns=columns)
    for column in ("first", "last"):
        frame[column] = pd.to_datetime(frame[column], utc=True, format="ISO8601")
    return frame


__all__ = ["ConversationNotFound", "LoggedConversation", "conversations", "find_conversation", "rebuild",
           "transcript"]
