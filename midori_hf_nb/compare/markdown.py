"""Markdown pipe tables of comparison cells: escaping for writing, and splitting and unescaping
for reading them back.

Cells are HTML-escaped (model output is untrusted) and Markdown-escaped; newlines become
``<br>`` and spaces at a cell's ends character references, so the reader gets the text back.
"""

from __future__ import annotations

import html
import re
from typing import Any

_MD_SPECIAL = re.compile(r"([\\|*_`\[\]])")
_EDGE_SPACE = re.compile(r"^[ \t]+|[ \t]+$")
_ESCAPED_CHAR = re.compile(r"\\(.)")


def escape_cell(text: str) -> str:
    """``text`` as the content of one Markdown table cell."""
    text = html.escape(text, quote=False).replace("\r", "&#13;")
    text = _MD_SPECIAL.sub(r"\\\1", text).replace("\n", "<br>")
    # spaces at the ends of a cell would be trimmed by Markdown: keep them as character references
    return _EDGE_SPACE.sub(lambda m: "".join(f"&#{ord(c)};" for c in m.group()), text)


def unescape_cell(text: str) -> str:
    """The text of a cell written by :func:`escape_cell`."""
    text = text.replace("<br>", "\n")
    text = _ESCAPED_CHAR.sub(r"\1", text)
    return html.unescape(text)


def format_value(value: Any) -> str:
    """A cell's value as text: empty for None, 4 significant digits for floats."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table_line(cells: list[str]) -> str:
    """One line of a pipe table from already escaped cells."""
    return "| " + " | ".join(cells) + " |"


def split_row(line: str) -> list[str]:
    """The (still escaped) cells of one table line; ``\\|`` stays inside its cell."""
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    cells, current, i = [], [], 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line):
            current.append(line[i:i + 2])
            i += 2
            continue
        if ch == "|":
            cells.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        i += 1
    if "".join(current).strip():
        cells.append("".join(current).strip())
    return cells


def read_table(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """The header and the rows (column -> unescaped text) of the first pipe table in ``text``;
    raises ``ValueError`` when there is none."""
    lines = [ln for ln in text.splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        raise ValueError("no Markdown table (a header line, a separator line, then rows starting with '|')")
    header = [unescape_cell(c) for c in split_row(lines[0])]
    records = []
    for number, line in enumerate(lines[2:], start=3):
        cells = [unescape_cell(c) for c in split_row(line)]
        if len(cells) > len(header):
            raise ValueError(f"table line {number} has {len(cells)} cells, the header {len(header)}")
        cells += [""] * (len(header) - len(cells))
        records.append(dict(zip(header, cells)))
    return header, records


__all__ = ["escape_cell", "format_value", "read_table", "split_row", "table_line", "unescape_cell"]
