"""Checking model files: the manifest of a conversion cache, and damaged files named.

Pure file logic (no torch import). Three kinds of checks:

- **Conversion manifests.** A cached conversion (a GGUF file converted to safetensors, or the
  half-precision copy beside it) records in its ``midori-source.json`` manifest, under
  ``"files"``, the size, ``mtime_ns`` and sha256 of every file it wrote
  (:func:`record_files`). :func:`verify_conversion` compares the folder with it: see
  :mod:`midori_hf_nb.engine.convert` for when each check runs and why.
- **Structural checks** of a model folder (:func:`check_folder`): every ``*.json`` file parses,
  every ``*.safetensors`` file has a valid header whose tensors end exactly at the end of the
  file. They need no manifest, so they also explain why a user's own folder fails to load.
- **GGUF files** (:func:`check_gguf_header`, :func:`check_gguf_file`): the magic bytes, a
  minimal size, and tensor data that the file really holds, before transformers reads it.

A damaged file raises :class:`CorruptModelError`, whose message names the file, what is
wrong with it and what to do.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .errors import ModelSourceError

#: The manifest of a cached conversion, written last into the folder.
MANIFEST = "midori-source.json"

#: safetensors refuses headers above 100 MB; a larger length means the bytes are not a header.
_SAFETENSORS_MAX_HEADER = 100_000_000

_HASH_CHUNK = 1 << 22


class CorruptModelError(ModelSourceError):
    """A model file exists but is damaged (truncated, not valid JSON, not a safetensors or GGUF file).

    The message names the file, what is wrong and what to do. A subclass of
    :class:`~midori_hf_nb.ModelSourceError`, so code (and the CLI and magics) that handle an
    unusable model source handle this too.
    """


class CacheRepairWarning(UserWarning):
    """A cached conversion did not match its manifest and is being converted again."""


@dataclass(frozen=True)
class FileProblem:
    """One damaged or missing file: its path and what is wrong with it."""

    path: Path
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def describe(problems: Iterable[FileProblem], folder: str | os.PathLike | None = None) -> str:
    """The problems as one line, each naming its file (relative to ``folder`` when inside it)."""
    parts = []
    for problem in problems:
        name = problem.path
        if folder is not None and problem.path.parent == Path(folder):
            name = Path(problem.path.name)
        parts.append(f"{name}: {problem.problem}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- manifests


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's content, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _recorded_name(entry: os.DirEntry) -> bool:
    name = entry.name
    return (entry.is_file(follow_symlinks=False) and name != MANIFEST and not name.startswith(".")
            and not name.endswith(".lock"))


def record_files(folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Size, ``mtime_ns`` and sha256 of each file directly in ``folder``.

    Left out: the manifest itself, lock files, hidden files and subfolders (a half-precision
    copy inside a conversion has its own manifest).
    """
    records: dict[str, dict[str, Any]] = {}
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if not _recorded_name(entry):
                continue
            digest = sha256_file(entry.path)
            stat = os.stat(entry.path)  # after reading: the stat the next load compares with
            records[entry.name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    return records


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a cached conversion; :class:`CorruptModelError` when missing or damaged."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CorruptModelError(f"{path}: missing") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptModelError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CorruptModelError(f"{path}: not a manifest (a JSON {type(data).__name__}, not an object)")
    return data


def write_manifest(folder: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Write the manifest atomically (a hidden temporary file renamed over it)."""
    folder = Path(folder)
    tmp = folder / f".{MANIFEST}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, folder / MANIFEST)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _size_problem(size: int, recorded: int) -> str:
    if size < recorded:
        return f"truncated: {size} bytes, {recorded} when it was written"
    return f"size changed: {size} bytes, {recorded} when it was written"


def verify_conversion(folder: str | os.PathLike, full: bool = False, update: bool = True) -> list[FileProblem]:
    """Compare a cached conversion with its manifest; the files that do not match (empty: all good).

    Every recorded file must exist with its recorded size. Its sha256 is compared when its
    ``mtime_ns`` differs from the recorded one (a file written since, even at the same
    size), or for every file when ``full`` is True. A file whose hash still matches (a
    copied or touched cache) is accepted and, with ``update``, its new ``mtime_ns`` recorded.

    A manifest written before files were recorded is checked structurally
    (:func:`check_folder`) and, with ``update`` and a writable folder, upgraded: the current
    files' sizes and hashes are recorded.
    """
    folder = Path(folder)
    try:
        manifest = read_manifest(folder)
    except CorruptModelError as exc:
        return [FileProblem(folder / MANIFEST, str(exc).split(": ", 1)[1])]
    files = manifest.get("files")
    if files is None:  # written by an older version: upgrade
        problems = check_folder(folder)
        if not (folder / "config.json").is_file():
            problems.append(FileProblem(folder / "config.json", "missing"))
        if not any(folder.glob("*.safetensors")):
            problems.append(FileProblem(folder / "model.safetensors", "missing"))
        if not problems and update and os.access(folder, os.W_OK):
            manifest["files"] = record_files(folder)
            try:
                write_manifest(folder, manifest)
            except OSError:
                pass  # a read-only or full cache still loads; the next load tries again
        return problems
    if not isinstance(files, dict):
        return [FileProblem(folder / MANIFEST, "damaged: 'files' is not an object")]
    problems: list[FileProblem] = []
    refreshed = False
    for name, record in files.items():
        path = folder / name
        try:
            size, mtime_ns, sha = int(record["size"]), int(record["mtime_ns"]), str(record["sha256"])
        except (KeyError, TypeError, ValueError):
            problems.append(FileProblem(folder / MANIFEST, f"damaged: the entry of {name!r} is incomplete"))
            continue
        try:
            stat = path.stat()
        except FileNotFoundError:
            problems.append(FileProblem(path, "missing"))
            continue
        if stat.st_size != size:
            problems.append(FileProblem(path, _size_problem(stat.st_size, size)))
            continue
        if full or stat.st_mtime_ns != mtime_ns:
            if sha256_file(path) != sha:
                problems.append(FileProblem(
                    path, "content changed: same size, but its sha256 differs from the one recorded when it was written"))
                continue
            if stat.st_mtime_ns != mtime_ns:
                record["mtime_ns"] = stat.st_mtime_ns
                refreshed = True
    if refreshed and not problems and update:
        try:
            write_manifest(folder, manifest)
        except OSError:
            pass  # the hashes matched; a read-only cache is hashed again next time
    return problems


# --------------------------------------------------------------------------- structural checks


def check_json(path: str | os.PathLike) -> str | None:
    """What is wrong with a JSON file, or None when it parses."""
    data = Path(path).read_bytes()
    if not data.strip():
        return f"empty ({len(data)} bytes): not valid JSON"
    truncated = f"truncated: not valid JSON, the text ends mid-document after {len(data)} bytes"
    try:
        json.loads(data)
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data":  # cut inside a multi-byte character
            return truncated
        return f"not valid JSON: not UTF-8 text ({exc.reason} at byte {exc.start})"
    except json.JSONDecodeError as exc:
        # the parser reached the end of the text: an error there, or a string never closed
        if exc.pos >= len(exc.doc.rstrip()) or exc.msg.startswith("Unterminated string"):
            return truncated
        return f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    return None


def check_safetensors(path: str | os.PathLike) -> str | None:
    """What is wrong with a safetensors file, or None when its header and size agree.

    A safetensors file is an 8-byte little-endian header length, a JSON header giving each
    tensor's byte range, then the tensor data, which ends exactly at the end of the file.
    Content changed in place at the same size passes: only a hash catches that.
    """
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        return f"truncated: {size} bytes, too short for a safetensors header"
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length == 0 or length > _SAFETENSORS_MAX_HEADER:
            return f"not a safetensors file: its first 8 bytes give a header length of {length}"
        if 8 + length > size:
            head = fh.read(1)
            if head == b"{":
                return f"truncated: {size} bytes, its header alone needs {8 + length}"
            return "not a safetensors file: no JSON header after the first 8 bytes"
        raw = fh.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return "not a safetensors file: the header after the first 8 bytes is not valid JSON"
    if not isinstance(header, dict):
        return "not a safetensors file: the header is not a JSON object"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            return f"not a safetensors file: the header entry of {name!r} has no data_offsets"
    expected = 8 + length + end
    if size < expected:
        return f"truncated: {size} bytes, its header describes {expected}"
    if size > expected:
        return f"damaged: {size} bytes, its header describes {expected} ({size - expected} bytes too many)"
    return None


def check_folder(folder: str | os.PathLike) -> list[FileProblem]:
    """Structural problems of the model files directly in ``folder`` (JSON and safetensors)."""
    problems: list[FileProblem] = []
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if not entry.is_file() or entry.name.startswith("."):
                continue
            checker = (check_json if entry.name.endswith(".json")
                       else check_safetensors if entry.name.endswith(".safetensors") else None)
            if checker is None:
                continue
            try:
                problem = checker(entry.path)
            except OSError as exc:
                problem = f"cannot be read ({exc.strerror or exc})"
            if problem:
                problems.append(FileProblem(Path(entry.path), problem))
    return problems


def damaged_folder_error(folder: str | os.PathLike, exc: BaseException,
                         cache_of: str | None = None) -> CorruptModelError | None:
    """Explain a failed load of ``folder`` by the damaged files in it, or None when none is found.

    ``cache_of`` is the ``.gguf`` file when ``folder`` is its cached conversion (which can be
    converted again); otherwise the folder is the user's own and the message says so.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    problems = check_folder(folder)
    if not problems:
        return None
    if cache_of:
        fix = (f"The folder is a cached conversion of {cache_of} whose files kept their recorded sizes and times: "
               f"delete {folder} and load the model again to convert it again (MIDORI_HF_NB_VERIFY=full, which "
               "hashes every file on load, finds and repairs such changes on its own).")
    else:
        fix = ("This is a model folder of your own, not a cache, so it cannot be converted again: copy or download "
               "the model again, or save it again with save_pretrained.")
    return CorruptModelError(
        f"model directory {folder} is damaged: {describe(problems, folder)}. {fix} "
        f"(Loading failed with {type(exc).__name__}: {str(exc)[:300]})")


# --------------------------------------------------------------------------- GGUF files

_GGUF_MAGIC = b"GGUF"
_GGUF_HEADER_BYTES = 24  # magic, version (u32), tensor count (u64), metadata count (u64)
_GGUF_PARSED_VERSIONS = (2, 3)
#: byte sizes of the fixed-size GGUF metadata value types (the spec's numbering)
_GGUF_VALUE_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_GGUF_MAX_COUNT = 10_000_000  # more tensors or metadata entries than any model has: the header is garbage
_GGUF_FIX = "download or copy it again"


def check_gguf_header(path: str | os.PathLike) -> None:
    """Raise :class:`CorruptModelError` unless ``path`` starts like a GGUF file (cheap: 24 bytes).

    Empty files, files that do not start with the magic bytes ``GGUF`` and files shorter than
    a GGUF header are refused with a message naming the file.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise CorruptModelError(f"{path} is empty (0 bytes), not a GGUF model: {_GGUF_FIX}")
    with path.open("rb") as fh:
        head = fh.read(_GGUF_HEADER_BYTES)
    if head[:4] != _GGUF_MAGIC and not (size < 4 and _GGUF_MAGIC.startswith(head)):
        raise CorruptModelError(
            f"{path} is not a GGUF file: it does not start with the magic bytes b'GGUF' (it starts with "
            f"{head[:4]!r}). Pass a .gguf model file, a model directory or a hub id.")
    if size < _GGUF_HEADER_BYTES:
        raise CorruptModelError(
            f"{path} is truncated: {size} bytes, shorter than a GGUF header ({_GGUF_HEADER_BYTES} bytes): {_GGUF_FIX}")


_U64 = struct.Struct("<Q")


class _Truncated(Exception):
    pass


class _Cursor:
    def __init__(self, buffer: Any, pos: int = 0):
        self.buffer, self.pos, self.size = buffer, pos, len(buffer)

    def take(self, fmt: str) -> tuple:
        n = struct.calcsize(fmt)
        if self.pos + n > self.size:
            raise _Truncated
        values = struct.unpack_from(fmt, self.buffer, self.pos)
        self.pos += n
        return values

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise _Truncated
        self.pos += n

    def string(self) -> bytes:
        (n,) = self.take("<Q")
        start = self.pos
        self.skip(n)
        return bytes(self.buffer[start:self.pos])


def _skip_value(cur: _Cursor, kind: int, path: Path) -> Any:
    if kind in _GGUF_VALUE_SIZES:  # the raw bits, read as an unsigned integer
        return cur.take({1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[_GGUF_VALUE_SIZES[kind]])[0]
    if kind == _GGUF_STRING:
        cur.string()
        return None
    if kind == _GGUF_ARRAY:
        item_kind, count = cur.take("<IQ")
        if item_kind in _GGUF_VALUE_SIZES:
            cur.skip(_GGUF_VALUE_SIZES[item_kind] * count)
        elif item_kind == _GGUF_STRING:  # a vocabulary: tens of thousands of strings, skipped in a tight loop
            unpack, buffer, pos, size = _U64.unpack_from, cur.buffer, cur.pos, cur.size
            for _ in range(count):
                if pos + 8 > size:
                    raise _Truncated
                pos += 8 + unpack(buffer, pos)[0]
            if pos > size:
                raise _Truncated
            cur.pos = pos
        else:
            for _ in range(count):
                _skip_value(cur, item_kind, path)
        return None
    raise CorruptModelError(
        f"{path} is damaged: unknown metadata value type {kind} at byte {cur.pos - 4}: {_GGUF_FIX}")


def _tensor_table(path: Path) -> tuple[list[tuple[str, tuple[int, ...], int, int]], int] | None:
    """The tensor table of a GGUF file (name, dimensions, ggml type, offset) and where the tensor
    data starts; None for a layout version this parser does not read. Raises
    :class:`CorruptModelError` for a table that does not parse."""
    size = path.stat().st_size
    tensors = []
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        cur = _Cursor(mm, 4)
        try:
            (version,) = cur.take("<I")
            if version not in _GGUF_PARSED_VERSIONS:
                return None  # another layout: transformers says whether it reads it
            n_tensors, n_kv = cur.take("<QQ")
            if n_tensors > _GGUF_MAX_COUNT or n_kv > _GGUF_MAX_COUNT:
                raise CorruptModelError(
                    f"{path} is damaged: its header claims {n_tensors} tensors and {n_kv} metadata entries: {_GGUF_FIX}")
            alignment = 32
            for _ in range(n_kv):
                key = cur.string()
                (kind,) = cur.take("<I")
                value = _skip_value(cur, kind, path)
                if key == b"general.alignment" and kind in (4, 10) and value > 0:  # u32 (or u64)
                    alignment = value
            for _ in range(n_tensors):
                name = cur.string().decode("utf-8", "replace")
                (n_dims,) = cur.take("<I")
                if n_dims > 8:
                    raise CorruptModelError(f"{path} is damaged: a tensor with {n_dims} dimensions: {_GGUF_FIX}")
                dims = cur.take(f"<{n_dims}Q")
                ggml_type, offset = cur.take("<IQ")
                tensors.append((name, dims, ggml_type, offset))
        except _Truncated:
            raise CorruptModelError(
                f"{path} is truncated: {size} bytes, it ends inside its metadata: {_GGUF_FIX}") from None
        return tensors, -(-cur.pos // alignment) * alignment


def gguf_tensor_types(path: str | os.PathLike) -> dict[str, int]:
    """Each tensor's ggml type number in a GGUF file (``gguf.GGMLQuantizationType`` values), read
    from its header only; empty for a layout version this parser does not read."""
    table = _tensor_table(Path(path))
    return {} if table is None else {name: ggml_type for name, _, ggml_type, _ in table[0]}


def check_gguf_file(path: str | os.PathLike) -> None:
    """Raise :class:`CorruptModelError` unless ``path`` is a whole GGUF file.

    Beyond :func:`check_gguf_header`: the metadata and tensor table must parse, and the tensor
    data they describe must lie inside the file (a cut-short download fails here, naming how
    many bytes are missing). Reads the header only (the vocabulary included), not the tensors.
    """
    path = Path(path)
    check_gguf_header(path)
    try:
        from gguf.constants import GGML_QUANT_SIZES

        quant_sizes = {int(k): v for k, v in GGML_QUANT_SIZES.items()}
    except Exception:  # pragma: no cover - gguf is a dependency; without it only the header is checked
        quant_sizes = {}
    size = path.stat().st_size
    table = _tensor_table(path)
    if table is None:
        return
    tensors, data_start = table
    end = 0
    for _, dims, ggml_type, offset in tensors:
        if ggml_type in quant_sizes:
            block, type_size = quant_sizes[ggml_type]
            elements = 1
            for d in dims:
                elements *= d
            end = max(end, offset + elements // block * type_size)
    if end and data_start + end > size:
        raise CorruptModelError(
            f"{path} is truncated: {size} bytes, but its tensors end at byte {data_start + end} "
            f"({data_start + end - size} bytes missing): {_GGUF_FIX}")
