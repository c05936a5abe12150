"""Deleting from the call log, and compacting the file so that deleted text is gone from it.

:func:`delete` removes calls by id, by conversation (id or name) or by time range, then
:func:`compact` rebuilds the full-text index from the remaining rows (the index's shadow tables
keep deleted words until then), rewrites the file (``VACUUM``) and empties the write-ahead log
(``wal_checkpoint(TRUNCATE)``). The database runs with ``secure_delete`` on, so freed pages are
overwritten too. Afterwards no byte of the file holds the deleted text, unless another process
holds the file open in a read transaction while it is compacted (the result says so).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .reader import log_file, open_log, parse_time
from .writer import WRITER


@dataclass
class DeleteResult:
    """What :func:`delete` did: ``deleted`` calls and ``conversations`` removed, and whether
    the file was compacted (``compacted``) with its write-ahead log emptied (``wal_emptied``)."""

    deleted: int
    conversations: int
    compacted: bool
    wal_emptied: bool
    path: Path
    size_before: int
    size_after: int


def _size(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.path.getsize(f"{path}{suffix}")
        except OSError:
            pass
    return total


def compact(path: Any = None) -> tuple[bool, bool]:
    """Rebuild the full-text index, rewrite the file and empty its write-ahead log. Returns
    (compacted, write-ahead log emptied)."""
    file = log_file(path)
    WRITER.flush()
    WRITER.close_target(file)  # the writer opens it again on the next record
    conn = open_log(file)
    if conn is None:
        return False, False
    try:
        conn.execute("INSERT INTO responses_fts (responses_fts) VALUES ('rebuild')")
        conn.execute("VACUUM")
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.close()
    return True, busy == 0 and _size(Path(f"{file}-wal")) == 0


def delete(*, ids: str | Iterable[str] | None = None, conversation: str | None = None, since: Any = None,
           until: Any = None, everything: bool = False, path: Any = None) -> DeleteResult:
    """Delete logged calls and compact the file (see the module docstring).

    Args:
        ids: a log id or a list of them.
        conversation: a conversation id or name: every call of it, and the conversation itself.
        since, until: calls in this time range (a datetime or date, an ISO text, or a time ago
            such as ``"2h"``); either end may be left open.
        everything: delete every call (needed when no other filter is given).
        path: another log file (default: the current location).

    Filters given together must all match. Raises ``ValueError`` when none is given.
    """
    where, args = [], []
    if ids is not None:
        ids = [ids] if isinstance(ids, str) else list(ids)
        if not ids or not all(isinstance(i, str) and i for i in ids):
            raise ValueError(f"delete(ids={ids!r}) is not allowed: expected a log id or a list of them")
        where.append(f"id IN ({', '.join('?' for _ in ids)})")
        args += ids
    if conversation is not None:
        if not isinstance(conversation, str) or not conversation:
            raise ValueError(f"delete(conversation={conversation!r}) is not allowed: expected a conversation id or name")
        where.append("conversation_id IN (SELECT id FROM conversations WHERE id = ? OR name = ?)")
        args += [conversation, conversation]
    if since is not None:
        where.append("datetime_utc >= ?")
        args.append(parse_time(since, "delete(since)"))
    if until is not None:
        where.append("datetime_utc <= ?")
        args.append(parse_time(until, "delete(until)"))
    if not where and everything is not True:
        raise ValueError("delete: give ids=, conversation=, since= or until= (or everything=True to delete every call)")
    file = log_file(path)
    before = _size(file)
    conn = open_log(file)
    if conn is None:
        return DeleteResult(0, 0, False, False, file, 0, 0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        deleted = conn.execute("DELETE FROM responses" + (f" WHERE {' AND '.join(where)}" if where else ""),
                               args).rowcount
        gone = conn.execute("DELETE FROM conversations WHERE id NOT IN (SELECT DISTINCT conversation_id FROM responses "
                            "WHERE conversation_id IS NOT NULL)").rowcount
        conn.execute("DELETE FROM schemas WHERE id NOT IN (SELECT DISTINCT schema_id FROM responses "
                     "WHERE schema_id IS NOT NULL)")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
    compacted, emptied = compact(file)
    return DeleteResult(deleted, gone, compacted, emptied, file, before, _size(file))


def info(path: Any = None) -> dict[str, Any]:
    """The log's location, whether it records, its size and bound, and its counts."""
    from .control import state

    current = state()
    file = log_file(path)
    result = {"path": str(file), "recording": current.enabled if path is None else None,
              "size_bytes": _size(file), "max_bytes": current.max_bytes, "responses": 0, "conversations": 0,
              "written": WRITER.written, "dropped": WRITER.dropped, "pending": WRITER.pending}
    conn = open_log(file)
    if conn is not None:
        try:
            result["responses"] = conn.execute("SELECT count(*) FROM responses").fetchone()[0]
            result["conversations"] = conn.execute("SELECT count(*) FROM conversations").fetchone()[0]
        finally:
            conn.close()
    return result


__all__ = ["DeleteResult", "compact", "delete", "info"]
