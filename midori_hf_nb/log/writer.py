"""The one writer thread of the process: finished calls are queued (never waited for) and
written in batches, each batch one transaction per database. The writer waits for a pause between
calls (no call in flight; at most :data:`MAX_DEFER_SECONDS`) and runs at a lower priority, so its
work does not compete with a generation.

What can go wrong never reaches the call: a log folder that cannot be created or written, a
full disk, a file locked by another writer beyond the busy timeout, the size bound reached, a
redaction hook that fails. Each is reported once per database and kind with a
:class:`LogWriteWarning` (from the writer thread), and the records are dropped; writing is tried
again on later calls (after :data:`RETRY_SECONDS` for a file that could not be opened), so a
freed disk or a deleted entry lets the log go on.

At exit, queued records are written (for at most :data:`EXIT_FLUSH_SECONDS`).
"""

from __future__ import annotations

import atexit
import os
import queue
import sqlite3
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .record import IN_FLIGHT, PendingCall
from .control import state
from .redact import RedactionError, apply_redactor, environment_secrets, scrub_row
from .rows import RESPONSE_COLUMNS, build_row
from .schema import connect

#: records waiting at most; more are dropped (with one warning) rather than held in memory
MAX_PENDING = 10_000
#: records written in one transaction at most
BATCH = 500
#: seconds before a database that could not be opened is tried again
RETRY_SECONDS = 30.0
#: attempts at a batch while the database is locked by another writer
LOCKED_ATTEMPTS = 3
#: seconds the exit handler waits for queued records
EXIT_FLUSH_SECONDS = 5.0
#: the longest the writer waits for a pause between calls before it writes anyway
MAX_DEFER_SECONDS = 3.0
#: how often it looks for that pause
DEFER_POLL_SECONDS = 0.05


def lower_priority() -> None:
    """Lower the calling thread's scheduling priority where the system allows it per thread (Linux):
    the writer then yields the processor to generation threads."""
    if sys.platform.startswith("linux") and hasattr(os, "setpriority"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except OSError:  # not allowed here: the writer runs at normal priority
            pass

_INSERT = (f"INSERT OR REPLACE INTO responses ({', '.join(RESPONSE_COLUMNS)}) "
           f"VALUES ({', '.join('?' for _ in RESPONSE_COLUMNS)})")
_CONVERSATION = ("INSERT INTO conversations (id, name, model, datetime_utc) VALUES (?, ?, ?, ?) "
                 "ON CONFLICT(id) DO UPDATE SET name = coalesce(excluded.name, conversations.name), "
                 "model = coalesce(excluded.model, conversations.model)")


def size_text(size: int) -> str:
    """A size in bytes as KiB, MiB or GiB."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size / 1024:.0f} KiB"


class LogWriteWarning(RuntimeWarning):
    """The call log could not record something; the calls themselves went on."""


@dataclass
class _Flush:
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Target:
    """One database the writer writes to."""

    path: Path
    conn: sqlite3.Connection | None = None
    retry_at: float = 0.0


class LogWriter:
    """The process's writer thread (:data:`WRITER`); started on the first record."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0
        self._thread: threading.Thread | None = None
        self._targets: dict[Path, _Target] = {}
        self._warned: set[tuple[str, str]] = set()
        #: records written, and dropped, since the process started (all databases)
        self.written = 0
        self.dropped = 0

    # ------------------------------------------------------------------ the caller's side

    def submit(self, pending: PendingCall) -> None:
        """Queue a finished call (never blocks; drops it with one warning past :data:`MAX_PENDING`)."""
        with self._lock:
            if self._pending >= MAX_PENDING:
                self.dropped += 1
                full = True
            else:
                self._pending += 1
                full = False
            self._ensure_thread()
        if full:
            self.warn("queue", "", f"more than {MAX_PENDING} calls are waiting to be written to the call log; "
                                   "further calls are not recorded until the writer catches up")
            return
        self._queue.put(pending)

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every call queued so far is written (or dropped); False on timeout."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                return self._pending == 0
        marker = _Flush()
        self._queue.put(marker)
        return marker.done.wait(timeout)

    @property
    def pending(self) -> int:
        """Calls queued and not yet written."""
        return self._pending

    def close_target(self, path: Path) -> None:
        """Close the writer's connection to ``path`` (the next record opens it again); call
        after :meth:`flush`, e.g. before a file is moved or deleted."""
        marker = _Flush()
        self._queue.put(("close", path, marker))
        with self._lock:
            self._ensure_thread()
        marker.done.wait(10.0)

    def reset_after_fork(self) -> None:
        """In a forked child: the parent's thread, queue and connections are not this process's."""
        self._queue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0
        self._thread = None
        self._targets = {}

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="midori-log-writer", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ the writer thread

    def _collect(self) -> list:
        """The next batch: what is queued, once no call is in flight (or :data:`MAX_DEFER_SECONDS`
        passed, or a flush asks for it, or :data:`BATCH` records wait)."""
        batch = [self._queue.get()]
        deadline = time.monotonic() + MAX_DEFER_SECONDS
        while True:
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if (not len(IN_FLIGHT) or len(batch) >= BATCH or time.monotonic() >= deadline
                    or any(not isinstance(item, PendingCall) for item in batch)):
                return batch
            time.sleep(DEFER_POLL_SECONDS)

    def _run(self) -> None:
        lower_priority()
        while True:
            batch = self._collect()
            records = [item for item in batch if isinstance(item, PendingCall)]
            try:
                if records:
                    self._write(records)
            except Exception as exc:  # never let the thread die: report and go on
                self.dropped += len(records)
                self.warn("internal", "", f"the call log writer failed: {type(exc).__name__}: {exc}")
            finally:
                with self._lock:
                    self._pending -= len(records)
            for item in batch:
                if isinstance(item, _Flush):
                    item.done.set()
                elif isinstance(item, tuple) and item[0] == "close":
                    self._close(item[1])
                    item[2].done.set()

    def _close(self, path: Path) -> None:
        target = self._targets.pop(path, None)
        if target is not None and target.conn is not None:
            target.conn.close()

    def _write(self, records: list[PendingCall]) -> None:
        groups: dict[Path, list[tuple[dict, dict]]] = {}
        redactor = state().redactor
        environment = environment_secrets()
        for pending in records:
            try:
                row, extras = build_row(pending)
                row = scrub_row(row, pending.ticket.secrets, environment)
                row = apply_redactor(row, redactor)
            except RedactionError as exc:
                self.dropped += 1
                self.warn("redaction", str(pending.ticket.target), f"{exc}; the call was not recorded")
                continue
            if row is not None:
                groups.setdefault(pending.ticket.target, []).append((row, extras))
        for path, rows in groups.items():
            self._write_rows(path, rows)

    def _open(self, path: Path) -> sqlite3.Connection | None:
        target = self._targets.setdefault(path, _Target(path))
        if target.conn is not None:
            return target.conn
        if time.monotonic() < target.retry_at:
            return None
        try:
            target.conn = connect(path)
            return target.conn
        except (OSError, sqlite3.Error) as exc:
            target.retry_at = time.monotonic() + RETRY_SECONDS
            self.warn("open", str(path), f"cannot open the call log at {path} ({type(exc).__name__}: {exc}); "
                                         "calls go on without being recorded. Point MIDORI_HF_NB_LOG at a writable "
                                         "file, or set it to 'off'")
            return None

    def _over_bound(self, path: Path, conn: sqlite3.Connection) -> bool:
        bound = state().max_bytes
        pages, size = conn.execute("PRAGMA page_count").fetchone()[0], conn.execute("PRAGMA page_size").fetchone()[0]
        used = pages * size
        try:
            used += os.path.getsize(f"{path}-wal")
        except OSError:
            pass
        if used < bound:
            return False
        self.warn("size", str(path), f"the call log at {path} has reached its size bound of {size_text(bound)} "
                                     f"({size_text(used)} used): calls are not recorded there until entries are "
                                     "deleted (midori_hf_nb.log.delete(...), which compacts the file) or the bound "
                                     "is raised (MIDORI_HF_NB_LOG_MAX_MB, midori_hf_nb.log.set_max_bytes)")
        return True

    def _write_rows(self, path: Path, rows: list[tuple[dict, dict]]) -> None:
        conn = self._open(path)
        if conn is None:
            self.dropped += len(rows)
            return
        for attempt in range(LOCKED_ATTEMPTS):
            try:
                if self._over_bound(path, conn):
                    self.dropped += len(rows)
                    return
                self._insert(conn, rows)
                self.written += len(rows)
                self._warned = {w for w in self._warned if w[1] != str(path) or w[0] == "size"}
                return
            except sqlite3.OperationalError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                text = str(exc).lower()
                if ("locked" in text or "busy" in text) and attempt + 1 < LOCKED_ATTEMPTS:
                    time.sleep(0.2 * (attempt + 1))
                    continue
                kind = "full" if "full" in text else "locked" if ("locked" in text or "busy" in text) else "write"
                self._fail(path, rows, kind, exc)
                return
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._fail(path, rows, "write", exc)
                return

    def _fail(self, path: Path, rows: list, kind: str, exc: Exception) -> None:
        self.dropped += len(rows)
        what = {"full": "the disk (or the file's folder) is full",
                "locked": "another process kept the file locked"}.get(kind, "the file cannot be written")
        self.warn(kind, str(path), f"the call log at {path} did not record {len(rows)} call(s): {what} "
                                   f"({type(exc).__name__}: {exc}); calls go on without being recorded")
        if kind == "write":
            self._close(path)
            self._targets[path] = _Target(path, retry_at=time.monotonic() + RETRY_SECONDS)

    @staticmethod
    def _insert(conn: sqlite3.Connection, rows: list[tuple[dict, dict]]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        for row, extras in rows:
            if extras.get("schema") and row.get("schema_id"):
                conn.execute("INSERT OR IGNORE INTO schemas (id, content) VALUES (?, ?)",
                             (row["schema_id"], extras["schema"]))
            if row.get("conversation_id"):
                conn.execute(_CONVERSATION, (row["conversation_id"], extras.get("conversation_name"),
                                             row.get("model"), row.get("datetime_utc")))
            conn.execute(_INSERT, [row.get(column) for column in RESPONSE_COLUMNS])
        conn.execute("COMMIT")

    def warn(self, kind: str, where: str, message: str) -> None:
        """One :class:`LogWriteWarning` per (kind, database) until a write there succeeds again."""
        key = (kind, where)
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        warnings.warn(message, LogWriteWarning, stacklevel=2)


WRITER = LogWriter()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=WRITER.reset_after_fork)


@atexit.register
def _flush_at_exit() -> None:
    WRITER.flush(EXIT_FLUSH_SECONDS)


__all__ = ["LogWriteWarning", "LogWriter", "MAX_PENDING", "WRITER"]
