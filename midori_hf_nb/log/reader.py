"""Reading the call log: filters like ``llm logs`` (last N, full-text search over prompts and
answers, model, conversation, notebook, since/until), as rows or a pandas DataFrame.

Reading first waits for this process's queued records (:meth:`~.writer.LogWriter.flush`), so a
call made just before is there. Every value is returned as stored: display it escaped (the
notebook layer's views do; pandas escapes every cell of a frame it shows as HTML).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from .control import as_log_path, state
from .rows import RESPONSE_COLUMNS
from .schema import connect
from .writer import WRITER

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: the columns :func:`logs` returns unless ``columns`` or ``full`` say otherwise
DEFAULT_COLUMNS = ("id", "datetime_utc", "model", "prompt", "response", "conversation_id", "finish_reason",
                   "duration_ms", "input_tokens", "output_tokens", "surface", "notebook", "cell_id",
                   "execution_count", "error")
#: the most rows one read returns
MAX_ROWS = 100_000

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr|d|day|days|w|week|weeks)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400, "day": 86400,
                 "days": 86400, "w": 604800, "week": 604800, "weeks": 604800}
TIME_ALLOWED = ("a datetime or date, an ISO 8601 text ('2026-12-01', '2026-12-01T09:30'), or a time ago such as "
                "'30m', '2h', '7d', '1w' (naive times are local time)")


def log_file(path: Any = None) -> Path:
    """The log file to read: ``path`` (a file, or a folder holding ``logs.db``), else the current location."""
    return state().path if path is None else as_log_path(path, "path")


def parse_time(value: Any, where: str) -> str:
    """``value`` as the ``datetime_utc`` text it is compared with; ``ValueError`` naming ``where``."""
    if isinstance(value, str):
        match = _RELATIVE.match(value)
        if match:
            seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
            return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)).isoformat()
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"{where}={value!r} is not allowed: expected {TIME_ALLOWED}") from None
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if not isinstance(value, dt.datetime):
        raise ValueError(f"{where}={value!r} is not allowed: expected {TIME_ALLOWED}")
    if value.tzinfo is None:
        value = value.astimezone()  # naive: local time
    return value.astimezone(dt.timezone.utc).isoformat()


def fts_query(text: str) -> str:
    """A search text as an FTS5 query matching every word (quoted, so no word is an operator)."""
    words = [w.replace('"', "") for w in text.split()]
    return " ".join(f'"{w}"' for w in words if w)


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _conditions(query: str | None, model: str | None, conversation: str | None, notebook: str | None,
                since: Any, until: Any, surface: str | None, ids: Iterable[str] | None) -> tuple[list[str], list[Any]]:
    where, args = [], []
    if query is not None:
        if not isinstance(query, str) or not fts_query(query):
            raise ValueError(f"query={query!r} is not allowed: expected words to search for")
        where.append("responses.rowid IN (SELECT rowid FROM responses_fts WHERE responses_fts MATCH ?)")
        args.append(fts_query(query))
    for name, value in (("model", model), ("conversation", conversation), ("notebook", notebook),
                        ("surface", surface)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{name}={value!r} is not allowed: expected a text")
    if model is not None:
        where.append("(model = ? OR model LIKE ? ESCAPE '\\' OR resolved_model LIKE ? ESCAPE '\\')")
        args += [model, _like(model), _like(model)]
    if conversation is not None:
        where.append("(conversation_id = ? OR conversation_id IN (SELECT id FROM conversations WHERE name = ?))")
        args += [conversation, conversation]
    if notebook is not None:
        where.append("notebook LIKE ? ESCAPE '\\'")
        args.append(_like(notebook))
    if surface is not None:
        where.append("surface = ?")
        args.append(surface)
    if since is not None:
        where.append("datetime_utc >= ?")
        args.append(parse_time(since, "since"))
    if until is not None:
        where.append("datetime_utc <= ?")
        args.append(parse_time(until, "until"))
    if ids is not None:
        ids = [ids] if isinstance(ids, str) else list(ids)
        if not ids or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"ids={ids!r} is not allowed: expected a log id or a list of them")
        where.append(f"id IN ({', '.join('?' for _ in ids)})")
        args += ids
    return where, args


def open_log(path: Any = None) -> sqlite3.Connection | None:
    """A connection to the log for reading (this process's queued records written first), or
    None when there is no log file yet."""
    file = log_file(path)
    WRITER.flush()
    if not file.exists():
        return None
    return connect(file, create=False)


def select_rows(n: int | None = 20, *, query: str | None = None, model: str | None = None,
                conversation: str | None = None, notebook: str | None = None, since: Any = None, until: Any = None,
                surface: str | None = None, ids: Iterable[str] | None = None, columns: Iterable[str] | None = None,
                path: Any = None) -> list[dict[str, Any]]:
    """The matching rows as dicts, oldest first: the last ``n`` (None or 0: all, at most
    :data:`MAX_ROWS`). Arguments as for :func:`logs`."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ValueError(f"n={n!r} is not allowed: expected a whole number >= 0 (0 or None: every row)")
    columns = list(RESPONSE_COLUMNS if columns is None else columns)
    unknown = [c for c in columns if c not in RESPONSE_COLUMNS]
    if unknown:
        raise ValueError(f"columns {unknown!r} are not allowed: expected columns of the log ({', '.join(RESPONSE_COLUMNS)})")
    where, args = _conditions(query, model, conversation, notebook, since, until, surface, ids)
    conn = open_log(path)
    if conn is None:
        return []
    sql = (f"SELECT {', '.join(columns)} FROM responses" + (f" WHERE {' AND '.join(where)}" if where else "")
           + " ORDER BY datetime_utc DESC, rowid DESC LIMIT ?")
    try:
        found = conn.execute(sql, [*args, min(n or MAX_ROWS, MAX_ROWS)]).fetchall()
    finally:
        conn.close()
    return [dict(zip(columns, row)) for row in reversed(found)]


def logs(n: int | None = 20, *, query: str | None = None, model: str | None = None, conversation: str | None = None,
         notebook: str | None = None, since: Any = None, until: Any = None, surface: str | None = None,
         ids: Iterable[str] | None = None, columns: Iterable[str] | None = None, full: bool = False,
         path: Any = None) -> "pd.DataFrame":
    """The logged calls as a DataFrame, oldest first (like ``llm logs``).

    Args:
        n: the last ``n`` matching calls (None or 0: all).
        query: full-text search over prompts and answers (every word must occur).
        model: a model name, or part of it (also matches the resolved source).
        conversation: a conversation id or name.
        notebook: part of the notebook's path.
        since, until: a datetime or date, an ISO text, or a time ago (``"30m"``, ``"2h"``, ``"7d"``).
        surface: ``api``, ``chat_panel``, ``magic``, ``stream_to_cell``, ``compare``, ``judge``...
        ids: a log id or a list of them.
        columns: the columns to return (default :data:`DEFAULT_COLUMNS`; ``full=True``: all).
        path: another log file (default: the current location).
    """
    import pandas as pd

    chosen = list(RESPONSE_COLUMNS if full else (columns or DEFAULT_COLUMNS))
    rows = select_rows(n, query=query, model=model, conversation=conversation, notebook=notebook, since=since,
                       until=until, surface=surface, ids=ids, columns=chosen, path=path)
    frame = pd.DataFrame(rows, columns=chosen)
    if "datetime_utc" in frame.columns:
        frame["datetime_utc"] = pd.to_datetime(frame["datetime_utc"], utc=True, format="ISO8601")
    return frame


def rows_json(rows: list[dict[str, Any]], indent: int | None = 2) -> str:
    """Rows as JSON text (JSON columns decoded), as ``llm logs --json`` prints them."""
    decoded = []
    for row in rows:
        item = dict(row)
        for key, value in row.items():
            if key.endswith("_json") and isinstance(value, str):
                try:
                    item[key] = json.loads(value)
                except ValueError:
                    pass
        decoded.append(item)
    return json.dumps(decoded, indent=indent, ensure_ascii=False)


__all__ = ["DEFAULT_COLUMNS", "MAX_ROWS", "fts_query", "log_file", "logs", "open_log", "parse_time", "rows_json",
           "select_rows"]
