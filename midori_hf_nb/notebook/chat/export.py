"""Writing the chat panel's conversation to files next to the notebook (the Export button)."""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass
from pathlib import Path

#: A file name stem that :func:`write_export` accepts.
EXPORT_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class ChatExport:
    """The files an export wrote: the JSON document, the Markdown transcript, and how many messages."""

    json_path: Path
    markdown_path: Path
    messages: int


def write_export(folder: Path, stem: str | None, documents: dict[str, str], *, messages: int) -> ChatExport:
    """Write ``documents`` (``{".json": text, ".md": text}``) into ``folder`` as ``<stem><suffix>``.

    ``stem`` defaults to ``chat-YYYYMMDD-HHMMSS``; files are never overwritten (``-2``, ``-3``... is
    added instead). Raises ``ValueError`` for a folder that does not exist or a stem that is not a
    plain file name, and ``OSError`` when the files cannot be written.
    """
    if not folder.is_dir():
        raise ValueError(f"ChatPanel.export(folder={str(folder)!r}) is not allowed: expected an existing folder")
    stem = time.strftime("chat-%Y%m%d-%H%M%S") if stem is None else stem
    if not isinstance(stem, str) or not EXPORT_STEM.fullmatch(stem):
        raise ValueError(f"ChatPanel.export(stem={stem!r}) is not allowed: expected a file name of letters, "
                         "digits, '.', '_' or '-' (at most 100 characters, no folders)")
    for number in itertools.count(1):
        base = stem if number == 1 else f"{stem}-{number}"
        paths = {suffix: folder / f"{base}{suffix}" for suffix in documents}
        if any(path.exists() for path in paths.values()):
            continue
        written: list[Path] = []
        try:
            for suffix, text in documents.items():
                with open(paths[suffix], "x", encoding="utf-8") as handle:  # "x": never replaces a file
                    written.append(paths[suffix])
                    handle.write(text)
        except FileExistsError:  # created meanwhile: take the next name
            for path in written:
                path.unlink(missing_ok=True)
            continue
        return ChatExport(json_path=paths[".json"].resolve(), markdown_path=paths[".md"].resolve(), messages=messages)
    raise AssertionError("itertools.count does not end")  # pragma: no cover


__all__ = ["ChatExport", "EXPORT_STEM", "write_export"]
