"""Reading a saved comparison back: CSV, JSON lines or Markdown, bounded and type-checked.

A saved file may come from anywhere, so reading is bounded: the file's size
(``max_bytes``) and the nesting depth of every JSON value (``max_depth``); a value that does not
fit its column's type is refused. Each error is a ``ValueError`` naming the file, the line or
column, and what is allowed.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .columns import (
    CHECK_PREFIX,
    FLOAT_COLUMNS,
    INT_COLUMNS,
    JSON_COLUMNS,
    PASSED_COLUMN,
    RESERVED_NAMES,
    SETTING_PREFIX,
    STATUS_OK,
    bounded_repr,
)
from .export import spreadsheet_text
from .frames import frame_from_records
from .markdown import read_table

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: the largest file :func:`load_comparison` reads by default (bytes)
MAX_FILE_BYTES = 64 * 2**20
#: the deepest nesting of lists and objects in a JSON value it reads by default
MAX_JSON_DEPTH = 32

#: text columns every row of a comparison has (an empty cell is an empty text, never missing)
ALWAYS_TEXT = ("model", "prompt", "system")

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
CSV_SUFFIXES = (".csv",)
MARKDOWN_SUFFIXES = (".md", ".markdown")


class LoadError(ValueError):
    """A saved comparison cannot be read; the message names the file and what is wrong."""


def json_depth(value: Any, limit: int) -> int:
    """How deeply lists and objects nest in ``value`` (0 for a scalar); stops counting past ``limit``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_json(text: str, where: str, max_depth: int) -> Any:
    """JSON text as a value, nested at most ``max_depth`` deep."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise LoadError(f"{where}: JSON nested too deeply: expected at most max_depth={max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise LoadError(f"{where}: {bounded_repr(text, 80)} is not JSON ({exc.msg})") from None
    if json_depth(value, max_depth) > max_depth:
        raise LoadError(f"{where}: JSON nested too deeply: expected at most max_depth={max_depth} levels")
    return value


def read_bounded(path: Path, max_bytes: int) -> str:
    """The text of ``path`` (UTF-8), refused when it is larger than ``max_bytes``."""
    too_big = (f"load_comparison: {str(path)!r} is larger than max_bytes={max_bytes}: pass a larger "
               "max_bytes to read it")
    if path.stat().st_size > max_bytes:
        raise LoadError(too_big)
    with path.open("rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise LoadError(too_big)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LoadError(f"load_comparison: {str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def value_of_text(col: str, value: str, status: str | None, where: str, max_depth: int) -> Any:
    """A cell read from CSV or Markdown as its Python value."""
    if col.startswith(SETTING_PREFIX) or col in JSON_COLUMNS:
        return parse_json(value, where, max_depth) if value != "" else None
    if value == "":
        if col in ALWAYS_TEXT or (col in ("response", "thinking") and status == STATUS_OK):
            return ""
        return None
    try:
        if col in INT_COLUMNS:
            return int(value)
        if col in FLOAT_COLUMNS:
            return float(value)
    except ValueError:
        expected = "a whole number" if col in INT_COLUMNS else "a number"
        raise LoadError(f"{where}: {bounded_repr(value, 80)} is not allowed: expected {expected}") from None
    if col.startswith(CHECK_PREFIX) or col == PASSED_COLUMN:
        return value == "True"
    return value


def text_records(raw: list[dict[str, str]], label: str, max_depth: int) -> list[dict[str, Any]]:
    """CSV or Markdown rows (column -> text) as rows of Python values."""
    records = []
    for number, row in enumerate(raw, start=1):
        status = row.get("status")
        records.append({col: value_of_text(col, text, status, f"{label} row {number} column {col!r}", max_depth)
                        for col, text in row.items()})
    return records


def read_csv(text: str, label: str, max_depth: int) -> tuple[list[str], list[dict[str, Any]]]:
    """The header and rows of a CSV file written by :func:`~midori_hf_nb.compare.to_csv`."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise LoadError(f"{label} line {reader.line_num}: {exc}") from None
    if not rows:
        return [], []
    header, raw = rows[0], []
    for number, cells in enumerate(rows[1:], start=1):
        if len(cells) > len(header):
            raise LoadError(f"{label} row {number}: {len(cells)} cells, but the header has {len(header)}")
        cells = [spreadsheet_text(c) for c in cells] + [""] * (len(header) - len(cells))
        raw.append(dict(zip(header, cells)))
    return header, text_records(raw, label, max_depth)


def read_jsonl(text: str, label: str, max_depth: int) -> tuple[list[str], list[dict[str, Any]]]:
    """The keys (of the first line) and rows of a JSON lines file."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        record = parse_json(line, f"{label} line {number}", max_depth)
        if not isinstance(record, dict):
            raise LoadError(f"{label} line {number}: expected a JSON object (one row), got {type(record).__name__}")
        records.append(record)
    return (list(records[0]) if records else []), records


def read_markdown(text: str, label: str, max_depth: int) -> tuple[list[str], list[dict[str, Any]]]:
    """The header and rows of a Markdown table written by :func:`~midori_hf_nb.compare.to_markdown`."""
    try:
        header, raw = read_table(text)
    except ValueError as exc:
        raise LoadError(f"{label}: {exc}") from None
    return header, text_records(raw, label, max_depth)


def unprefixed(name: str) -> str:
    """A column name without the ``setting:`` prefix of exported files."""
    return name[len(SETTING_PREFIX):] if name.startswith(SETTING_PREFIX) else name


def setting_names(header: list[str], label: str) -> list[str]:
    """The settings columns of a file's header (``setting:NAME``), each a valid setting name."""
    names = []
    for column in header:
        if not column.startswith(SETTING_PREFIX):
            continue
        name = unprefixed(column)
        if not name.isidentifier() or name in RESERVED_NAMES or name in names:
            raise LoadError(f"{label}: column {bounded_repr(column, 80)} is not allowed: expected 'setting:NAME' "
                            "with NAME an option name that is not another column's")
        names.append(name)
    return names


def check_limit(name: str, value: Any) -> None:
    """Raise naming ``name`` unless ``value`` is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LoadError(f"load_comparison: {name}={bounded_repr(value, 80)} is not allowed: expected a positive integer")


def load_comparison(path: str | os.PathLike, *, max_bytes: int = MAX_FILE_BYTES,
                    max_depth: int = MAX_JSON_DEPTH) -> "pd.DataFrame":
    """Read a comparison written by :func:`to_csv`, :func:`to_jsonl` or :func:`to_markdown`.

    The format follows the suffix (``.csv``, ``.jsonl``/``.json``/``.ndjson``, ``.md``). Settings
    columns get back their names and types, and the other columns their dtypes; a Markdown
    table has only the columns it was written with.

    Args:
        path: the file.
        max_bytes: the largest file read (default 64 MiB).
        max_depth: the deepest nesting of lists and objects in any JSON value (default 32).

    Raises:
        LoadError (a ``ValueError``): the file is too large, not UTF-8, not in the format of its
            suffix, nested too deeply, or a value does not fit its column; the message says where.
    """
    check_limit("max_bytes", max_bytes)
    check_limit("max_depth", max_depth)
    path = Path(path)
    label = f"load_comparison: {str(path)!r}"
    suffix = path.suffix.lower()
    readers = {**dict.fromkeys(JSONL_SUFFIXES, read_jsonl), **dict.fromkeys(CSV_SUFFIXES, read_csv),
               **dict.fromkeys(MARKDOWN_SUFFIXES, read_markdown)}
    if suffix not in readers:
        raise LoadError(f"{label}: expected a .csv, .jsonl or .md file")
    header, records = readers[suffix](read_bounded(path, max_bytes), label, max_depth)
    names = setting_names(header, label)
    checks = [h[len(CHECK_PREFIX):] for h in header if h.startswith(CHECK_PREFIX)]
    rows = [{unprefixed(k): v for k, v in record.items()} for record in records]
    try:
        frame = frame_from_records(rows, names, checks)
    except ValueError as exc:
        raise LoadError(f"{label}: {exc}") from None
    if suffix in MARKDOWN_SUFFIXES:
        present = {unprefixed(h) for h in header}
        frame = frame[[c for c in frame.columns if c in present]]
        frame.attrs["settings_columns"] = names
        frame.attrs["check_columns"] = [CHECK_PREFIX + c for c in checks]
    return frame


__all__ = ["LoadError", "MAX_FILE_BYTES", "MAX_JSON_DEPTH", "json_depth", "load_comparison", "parse_json",
           "read_bounded", "read_csv", "read_jsonl", "read_markdown"]
