"""The log database: its tables, and opening it (WAL, a busy timeout, secure delete).

The layout follows simonw/llm's log database where a column means the same (``responses``
with ``prompt``, ``system``, ``prompt_json``, ``options_json``, ``response``, ``response_json``,
``conversation_id``, ``duration_ms``, ``datetime_utc``, ``input_tokens``, ``output_tokens``,
``token_details``, ``schema_id``, ``resolved_model``; ``conversations`` with ``id``, ``name``,
``model``; ``schemas`` with ``id`` and ``content``; the full-text index ``responses_fts`` over
``prompt`` and ``response``), so Datasette and sqlite-utils read it as they read llm's. The
README documents every column.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

#: the schema version, kept in ``PRAGMA user_version``
SCHEMA_VERSION = 1
#: seconds a connection waits for another writer before giving up
BUSY_TIMEOUT_SECONDS = 10.0

_TEXT_COLUMNS = (
    "model", "resolved_model", "prompt", "system", "prompt_json", "options_json", "option_sources_json", "response",
    "response_json", "reasoning", "tool_calls_json", "tool_results_json",
)
_TABLES = f"""
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    name TEXT,
    model TEXT,
    datetime_utc TEXT
);
CREATE TABLE IF NOT EXISTS schemas (
    id TEXT PRIMARY KEY,
    content TEXT
);
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    {", ".join(f"{name} TEXT" for name in _TEXT_COLUMNS)},
    schema_id TEXT REFERENCES schemas(id),
    parsed_json TEXT,
    conversation_id TEXT REFERENCES conversations(id),
    duration_ms INTEGER,
    datetime_utc TEXT,
    input_tokens INTEGER,
    output_tokens INTEGER,
    token_details TEXT,
    finish_reason TEXT,
    error TEXT,
    backend TEXT,
    device TEXT,
    dtype TEXT,
    quantization TEXT,
    base_url TEXT,
    model_json TEXT,
    session_id TEXT,
    surface TEXT,
    method TEXT,
    group_id TEXT,
    parent_id TEXT,
    notebook TEXT,
    cell_id TEXT,
    execution_count INTEGER,
    script TEXT,
    pid INTEGER
);
CREATE INDEX IF NOT EXISTS responses_conversation_id ON responses(conversation_id);
CREATE INDEX IF NOT EXISTS responses_datetime_utc ON responses(datetime_utc);
CREATE INDEX IF NOT EXISTS conversations_name ON conversations(name);
CREATE VIRTUAL TABLE IF NOT EXISTS responses_fts USING fts5(prompt, response, content='responses', content_rowid='rowid');
CREATE TRIGGER IF NOT EXISTS responses_ai AFTER INSERT ON responses BEGIN
    INSERT INTO responses_fts (rowid, prompt, response) VALUES (new.rowid, new.prompt, new.response);
END;
CREATE TRIGGER IF NOT EXISTS responses_ad AFTER DELETE ON responses BEGIN
    INSERT INTO responses_fts (responses_fts, rowid, prompt, response) VALUES ('delete', old.rowid, old.prompt, old.response);
END;
CREATE TRIGGER IF NOT EXISTS responses_au AFTER UPDATE ON responses BEGIN
    INSERT INTO responses_fts (responses_fts, rowid, prompt, response) VALUES ('delete', old.rowid, old.prompt, old.response);
    INSERT INTO responses_fts (rowid, prompt, response) VALUES (new.rowid, new.prompt, new.response);
END;
"""


class LogSchemaError(RuntimeError):
    """The file is a log of a newer version of this package, or not a log at all."""


def _configure(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
    conn.execute("PRAGMA secure_delete = ON")  # deleted text is overwritten, not left in free pages
    conn.execute("PRAGMA foreign_keys = OFF")


def statements(script: str) -> list[str]:
    """The complete SQL statements of ``script`` (triggers included), one by one: run inside a
    transaction, unlike ``executescript``, which commits first."""
    found, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            found.append(buffer.strip())
            buffer = ""
    return found


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the tables (once; safe when several processes open a new file at once)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise LogSchemaError(f"the log was written by a newer midori-hf-nb (schema {version}, this one knows "
                             f"{SCHEMA_VERSION}): upgrade, or point MIDORI_HF_NB_LOG at another file")
    if version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            for statement in statements(_TABLES):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def connect(path: Path, *, create: bool = True) -> sqlite3.Connection:
    """A connection to the log at ``path`` in WAL mode with a busy timeout (autocommit: callers
    open their own transactions). ``create=False`` opens only an existing file."""
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.exists():
        raise FileNotFoundError(f"no log database at {path}")
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False)
    try:
        _configure(conn)
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        create_schema(conn)
    except BaseException:
        conn.close()
        raise
    return conn


__all__ = ["BUSY_TIMEOUT_SECONDS", "LogSchemaError", "SCHEMA_VERSION", "connect", "create_schema"]
