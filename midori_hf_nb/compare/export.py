"""Writing a comparison frame: CSV, JSON lines and Markdown.

Settings columns are written as ``setting:NAME`` with JSON values (``tool_calls`` as JSON too),
so :func:`~midori_hf_nb.compare.load_comparison` restores their names and types. A setting
whose value is not JSON (a logits processor, say) is written as its repr, cut to
:data:`~midori_hf_nb.compare.columns.REPR_LIMIT` characters, and comes back as that text.

CSV only: a cell a spreadsheet would run as a formula (one starting with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return, plain numbers such as ``-3`` excepted) is written with a
leading single quote, as OWASP recommends against CSV injection; a cell that itself starts with
a quote gets one more. :func:`~midori_hf_nb.compare.load_comparison` removes that one quote,
so the round trip is exact. JSON lines are written exactly as the values are.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .columns import JSON_COLUMNS, PASSED_COLUMN, SETTING_PREFIX, bounded_repr, is_missing, not_allowed, plain
from .frames import check_columns, settings_columns
from .markdown import escape_cell, format_value, table_line

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: first characters that make a spreadsheet read a cell as a formula
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
#: what a guarded CSV cell starts with
SPREADSHEET_GUARD = "'"
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")

#: the columns of :func:`to_markdown`'s default table, around the settings and checks
MARKDOWN_COLUMNS = ("model", "prompt", "system", "repeat", "response", "status", "completion_tokens",
                    "tokens_per_second")


def spreadsheet_safe(text: str) -> str:
    """A CSV cell that no spreadsheet runs as a formula (see the module documentation)."""
    if text.startswith(SPREADSHEET_GUARD):
        return SPREADSHEET_GUARD + text
    if text.startswith(FORMULA_TRIGGERS) and not _PLAIN_NUMBER.fullmatch(text):
        return SPREADSHEET_GUARD + text
    return text


def spreadsheet_text(cell: str) -> str:
    """The text of a CSV cell written through :func:`spreadsheet_safe`."""
    return cell[len(SPREADSHEET_GUARD):] if cell.startswith(SPREADSHEET_GUARD) else cell


def json_text(value: Any) -> str:
    """``value`` as JSON text; objects that are not JSON by their bounded repr."""
    return json.dumps(value, default=bounded_repr)


def export_records(df: "pd.DataFrame", encode_json: bool) -> tuple[list[str], list[dict[str, Any]]]:
    """The header (settings columns as ``setting:NAME``) and the rows as plain Python values;
    settings and JSON columns as JSON text when ``encode_json``."""
    names = set(settings_columns(df))
    header = [SETTING_PREFIX + c if c in names else c for c in df.columns]
    records = []
    for row in df.to_dict("records"):
        out: dict[str, Any] = {}
        for col, key in zip(df.columns, header):
            value = plain(row[col])
            if col in JSON_COLUMNS and is_missing(value):
                value = None
            if col in names or col in JSON_COLUMNS:
                out[key] = json_text(value) if encode_json else value
            else:
                out[key] = None if is_missing(value) else value
        records.append(out)
    return header, records


def to_csv(df: "pd.DataFrame", path: str | os.PathLike) -> Path:
    """Write a comparison frame to CSV and return the path.

    Settings columns are written as ``setting:NAME`` with JSON values (and ``tool_calls`` as
    JSON), so :func:`load_comparison` restores their types. Cells a spreadsheet would run as a
    formula start with a single quote (removed again by :func:`load_comparison`); see the
    module documentation.
    """
    header, records = export_records(df, encode_json=True)
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for record in records:
            writer.writerow([spreadsheet_safe("" if record[k] is None else str(record[k])) for k in header])
    return path


def to_jsonl(df: "pd.DataFrame", path: str | os.PathLike) -> Path:
    """Write a comparison frame as JSON lines, one object per row (settings keys ``setting:NAME``),
    values exactly as they are (objects that are not JSON by their bounded repr). Returns the path."""
    header, records = export_records(df, encode_json=False)
    path = Path(path)
    with path.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps({k: record[k] for k in header}, ensure_ascii=False, default=bounded_repr) + "\n")
    return path


def markdown_columns(df: "pd.DataFrame", columns: Sequence[str] | str | None) -> list[str]:
    """The columns :func:`to_markdown` writes for its ``columns`` argument."""
    if columns is None:
        return [*MARKDOWN_COLUMNS[:3], *settings_columns(df), *MARKDOWN_COLUMNS[3:], *check_columns(df),
                *([PASSED_COLUMN] if PASSED_COLUMN in df.columns else [])]
    if isinstance(columns, str):
        if columns == "all":
            return list(df.columns)
        raise not_allowed("columns", columns, "expected None, 'all' or a list of column names", where="to_markdown")
    wanted = list(columns)
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise not_allowed("columns", missing, "expected names of columns of the frame", where="to_markdown")
    return wanted


def to_markdown(df: "pd.DataFrame", path: str | os.PathLike | None = None,
                columns: Sequence[str] | str | None = None) -> str:
    """A Markdown (pipe) table of a comparison frame; written to ``path`` when given.

    ``columns``: None for a readable set (model, prompt, system, the settings, repeat,
    response, status, tokens, tokens/s and the checks), ``"all"`` for every column, or a list.
    Text is HTML-escaped (model output is untrusted) and Markdown-escaped; newlines become
    ``<br>``. Settings cells hold JSON values so :func:`load_comparison` restores them;
    other floats are rounded to 4 significant digits.
    """
    header, records = export_records(df[markdown_columns(df, columns)], encode_json=True)
    lines = [table_line([escape_cell(h) for h in header]), "|" + "|".join("---" for _ in header) + "|"]
    for record in records:
        lines.append(table_line([escape_cell(format_value(record[h])) for h in header]))
    text = "\n".join(lines) + "\n"
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


__all__ = ["FORMULA_TRIGGERS", "MARKDOWN_COLUMNS", "SPREADSHEET_GUARD", "export_records", "json_text",
           "markdown_columns", "spreadsheet_safe", "spreadsheet_text", "to_csv", "to_jsonl", "to_markdown"]
