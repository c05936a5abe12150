"""Writing the chat panel's conversation to files next to the notebook (the Export button).

Each file is written whole or not at all: its text is encoded first (a lone surrogate, which no
UTF-8 file can hold, fails before any file exists), written to a temporary file in the same
folder, flushed to disk, and only then given its name, by a hard link that never replaces an
existing file (or, on a file system without hard links, a rename after checking the name is
free). When anything fails (a full disk, a quota, a name taken meanwhile) the temporary files
and any file this export already named are removed: no partial or empty file is left.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import tempfile
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


def _encoded(documents: dict[str, str]) -> dict[str, bytes]:
    out = {}
    for suffix, text in documents.items():
        try:
            out[suffix] = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"ChatPanel.export: the {suffix} document holds a lone surrogate (U+"
                             f"{ord(text[exc.start]):04X} at character {exc.start}), which a UTF-8 file cannot hold; "
                             "nothing was written") from None
    return out


def _write_temporary(folder: Path, data: bytes) -> Path:
    handle, name = tempfile.mkstemp(dir=folder, prefix=".midori-export-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    return Path(name)


def _name(temporary: Path, path: Path) -> None:
    """Give ``temporary`` the name ``path`` without replacing a file; FileExistsError when taken."""
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here: a rename, once the name is free
        if path.exists():
            raise FileExistsError(str(path)) from None
        os.rename(temporary, path)
        return
    os.unlink(temporary)


def write_export(folder: Path, stem: str | None, documents: dict[str, str], *, messages: int) -> ChatExport:
    """Write ``documents`` (``{".json": text, ".md": text}``) into ``folder`` as ``<stem><suffix>``.

    ``stem`` defaults to ``chat-YYYYMMDD-HHMMSS``; files are never overwritten (``-2``, ``-3``... is
    added instead). Each file appears whole or not at all (see the module docstring). Raises
    ``ValueError`` for a folder that does not exist, a stem that is not a plain file name or text
    that is not valid Unicode, and ``OSError`` when the files cannot be written (nothing is left).
    """
    if not folder.is_dir():
        raise ValueError(f"ChatPanel.export(folder={str(folder)!r}) is not allowed: expected an existing folder")
    stem = time.strftime("chat-%Y%m%d-%H%M%S") if stem is None else stem
    if not isinstance(stem, str) or not EXPORT_STEM.fullmatch(stem):
        raise ValueError(f"ChatPanel.export(stem={stem!r}) is not allowed: expected a file name of letters, "
                         "digits, '.', '_' or '-' (at most 100 characters, no folders)")
    data = _encoded(documents)
    temporaries: dict[str, Path] = {}
    try:
        for suffix, content in data.items():
            temporaries[suffix] = _write_temporary(folder, content)
        for number in itertools.count(1):
            base = stem if number == 1 else f"{stem}-{number}"
            paths = {suffix: folder / f"{base}{suffix}" for suffix in data}
            if any(path.exists() for path in paths.values()):
                continue
            named: list[Path] = []
            try:
                for suffix, path in paths.items():
                    _name(temporaries[suffix], path)
                    named.append(path)
                    del temporaries[suffix]  # the file now has its name
            except BaseException as exc:
                for path in named:  # this export's own files, never another's
                    with contextlib.suppress(OSError):
                        path.unlink()
                if isinstance(exc, FileExistsError):  # taken meanwhile: the next name
                    for suffix in data:
                        if suffix not in temporaries:
                            temporaries[suffix] = _write_temporary(folder, data[suffix])
                    continue
                raise
            return ChatExport(json_path=paths[".json"].resolve(), markdown_path=paths[".md"].resolve(),
                              messages=messages)
    finally:
        for temporary in temporaries.values():
            with contextlib.suppress(OSError):
                temporary.unlink()
    raise AssertionError("itertools.count does not end")  # pragma: no cover


__all__ = ["ChatExport", "EXPORT_STEM", "write_export"]
