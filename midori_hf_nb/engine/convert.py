"""GGUF conversion: a ``.gguf`` file converted once into a cached safetensors directory
(and a half-precision copy beside it), written atomically under a file lock, checked on
every load against what was written, and converted again when it no longer matches.

**What is recorded.** Each conversion folder (and each half-precision copy made by
:func:`dtype_variant`) gets a ``midori-source.json`` manifest, written last, holding under
``"files"`` the size, ``mtime_ns`` and sha256 of every file written
(:func:`midori_hf_nb.integrity.record_files`). The sha256 is computed once, at write time,
where it costs about 0.5 s next to a 25-40 s conversion.

**What is checked on each load** (:func:`midori_hf_nb.integrity.verify_conversion`): every
recorded file exists with its recorded size and ``mtime_ns`` (a few ``stat`` calls: about
0.2 ms for the default model's conversion and its bfloat16 copy together). A file whose
``mtime_ns`` changed is hashed: a matching hash (a copied or touched cache) is accepted and
the new ``mtime_ns`` recorded; a different one means the content changed. Why not hash on
every load: on a 2-core x86 machine with SHA instructions, sha256 of the default model's
538 MB float32 conversion takes about 0.5 s and of its bfloat16 copy 0.25 s, while a whole
load from the cache takes about 0.3 s; the standard library has nothing much cheaper
(sha1 0.57 s, crc32 0.3 s for the 538 MB), so hashing would triple every load. Any write
to a file, even one that keeps its size (random bytes written in place), changes its
``mtime_ns``, so the stat check catches edits, truncation and deleted files; what it cannot
catch is damage that leaves ``mtime_ns`` alone (bit rot, a restored timestamp).
``verify="full"`` (or ``MIDORI_HF_NB_VERIFY=full`` in the environment) hashes every file on
load for that. A file that passes the check but still fails to load is named by the
structural checks (``_explain_load_error`` in :mod:`midori_hf_nb.engine.loading`).

**Repair.** A folder that does not match is converted again from its source, the GGUF file
being the source of truth (a half-precision copy is saved again from the float32
conversion, which is first checked in full, and itself converted again from the GGUF when
damaged), with a :class:`~midori_hf_nb.integrity.CacheRepairWarning` (also logged on the
``midori_hf_nb`` logger) naming the folder and each file that did not match. The damaged
folder is renamed aside and deleted before the new conversion is written, atomically as
any conversion. A damaged cache in a folder that is not writable raises
:class:`~midori_hf_nb.integrity.CorruptModelError` saying so.

**Older caches.** A manifest from before files were recorded is accepted when the folder
passes the structural checks (every JSON file parses, every safetensors file's header
matches its size) and is upgraded in place with the current files' sizes and hashes
(one hashing pass on the first load, no reconversion); a folder that fails them is
converted again. Converting every older cache again would cost each user a 25-40 s
conversion (many minutes for a large model) for no gain in the common case; the price is
that content changed in place before the upgrade goes unnoticed.

A ``.gguf`` file is checked before conversion (:func:`midori_hf_nb.integrity.check_gguf_file`:
magic bytes, a minimal size, tensor data inside the file), and an error while transformers
reads it is re-raised naming the file.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..integrity import (
    MANIFEST,
    CacheRepairWarning,
    CorruptModelError,
    FileProblem,
    check_gguf_file,
    describe,
    read_manifest,
    record_files,
    verify_conversion,
    write_manifest,
)
from ..sources import ModelSourceError, gguf_cache_dir

from .capabilities import make_gguf_model_saveable
from .devices import TORCH_DTYPES, trim_heap

try:  # POSIX advisory locks keep two processes from converting the same file at once
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


logger = logging.getLogger("midori_hf_nb")

#: ``verify=`` values: ``"quick"`` (sizes and mtimes, hashing only files whose mtime changed)
#: or ``"full"`` (every file hashed)
VERIFY_MODES = ("quick", "full")


def _full_verify(verify: str | None) -> bool:
    mode = verify if verify is not None else (os.environ.get("MIDORI_HF_NB_VERIFY") or "quick").strip().lower()
    if mode not in VERIFY_MODES:
        where = "verify" if verify is not None else "MIDORI_HF_NB_VERIFY"
        raise ValueError(f"{where}={mode!r}: must be one of {', '.join(map(repr, VERIFY_MODES))}")
    return mode == "full"


def cached_problems(target: Path, full: bool) -> list[FileProblem] | None:
    """None when there is no cached conversion in ``target``, else what does not match (empty: usable)."""
    if not (target / MANIFEST).is_file():
        return None  # nothing there, or an interrupted conversion of an older version: convert silently
    return verify_conversion(target, full=full)


def _refuse_read_only(target: Path, problems: list[FileProblem], source: str) -> None:
    if not os.access(target.parent, os.W_OK):
        raise CorruptModelError(
            f"the cached conversion {target} is damaged ({describe(problems, target)}) and {target.parent} is not "
            f"writable, so it cannot be converted again from {source}: make that folder writable, or set "
            "MIDORI_HF_NB_CACHE to a writable folder")


def _warn_repair(target: Path, problems: list[FileProblem], action: str) -> None:
    message = (f"midori-hf-nb: the cached conversion {target} does not match what was written there: "
               f"{describe(problems, target)}; {action}")
    logger.warning(message)
    warnings.warn(message, CacheRepairWarning, stacklevel=5)


def _clear(target: Path) -> None:
    """Remove ``target`` and leftovers of interrupted writes beside it (the caller holds the lock)."""
    if target.exists():  # damaged, or a stale incomplete folder: renamed aside first, so it vanishes at once
        aside = Path(tempfile.mkdtemp(prefix=f"{target.name}.damaged-", dir=target.parent))
        os.replace(target, aside / target.name)
    for stale in [*target.parent.glob(f"{target.name}.partial-*"), *target.parent.glob(f"{target.name}.damaged-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def write_cached(target: Path, lock_path: Path, full: bool, repair: str,
                 write: Callable[[Path], dict], on_write: Callable[[], None] | None = None) -> Path:
    """Write a cached folder once, under a file lock: check ``target`` again once the lock is held
    (another process may have written it meanwhile), warn that a damaged one is written again
    (``repair`` says how), clear it, let ``write`` fill a temporary folder beside it (returning the
    manifest's fields), record the files in the manifest and rename the folder into place. An
    interrupted write leaves no half cache. ``on_write`` is called just before the write starts
    (never when the cached folder is usable)."""
    with open(lock_path, "w") as lock_file:
        if fcntl is not None:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        problems = cached_problems(target, full)
        if problems == []:
            return target
        if problems:
            _warn_repair(target, problems, repair)
        _clear(target)
        if on_write is not None:
            on_write()
        partial = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=target.parent))
        partial.chmod(0o755)
        try:
            fields = write(partial)
            write_manifest(partial, {**fields, "files": record_files(partial)})
            os.replace(partial, target)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return target


def convert_gguf(gguf_path: str | os.PathLike, progress: bool = True, verify: str | None = None,
                 on_write: Callable[[], None] | None = None) -> Path:
    """Convert a ``.gguf`` file once into a safetensors directory in the user cache.

    The conversion is written to a temporary folder beside the target and renamed into place,
    so an interrupted conversion never leaves a half cache; a file lock keeps two processes
    from converting the same file at once. A cached conversion is checked against its
    manifest on every call (``verify``: ``"quick"`` or ``"full"``; default
    ``$MIDORI_HF_NB_VERIFY``, else ``"quick"``; see the module docstring) and converted again,
    with a :class:`~midori_hf_nb.integrity.CacheRepairWarning`, when it does not match.
    ``on_write`` is called when a conversion actually starts (not when the cache is used), so a
    caller reports the "converting" stage only when it runs. Returns the cached directory.

    Raises :class:`~midori_hf_nb.integrity.CorruptModelError` when the file is not a whole
    GGUF file, and :class:`~midori_hf_nb.ModelSourceError` naming it when transformers cannot
    read it.
    """
    full = _full_verify(verify)
    gguf_path = Path(gguf_path).resolve()
    target = gguf_cache_dir(gguf_path)
    problems = cached_problems(target, full)
    if problems == []:
        return target
    check_gguf_file(gguf_path)
    if problems:
        _refuse_read_only(target, problems, str(gguf_path))
    target.parent.mkdir(parents=True, exist_ok=True)

    def write(partial: Path) -> dict:
        started = time.perf_counter()
        try:
            with progress_bars(progress):
                tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
                model = AutoModelForCausalLM.from_pretrained(
                    gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
                )
        except (OSError, MemoryError):
            raise
        except Exception as exc:
            raise ModelSourceError(
                f"{gguf_path}: transformers {transformers.__version__} could not read it as a GGUF model "
                f"({type(exc).__name__}: {exc}). If the file is damaged or incomplete, download it again; "
                "if its architecture is not supported, use the model's safetensors release instead"
            ) from exc
        make_gguf_model_saveable(model)
        with progress_bars(progress):
            model.save_pretrained(partial)
            tokenizer.save_pretrained(partial)
        stat = gguf_path.stat()
        return {"gguf_file": str(gguf_path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                "transformers": transformers.__version__, "convert_seconds": round(time.perf_counter() - started, 3)}

    return write_cached(target, target.parent / f"{target.name}.lock", full, f"converting {gguf_path} again", write,
                         on_write)


def _checked_source(folder: Path, progress: bool) -> Path:
    """``folder``, checked in full before a copy is derived from it; converted again from its GGUF when damaged."""
    if not (folder / MANIFEST).is_file():
        return folder  # not a conversion of ours: nothing recorded to check against
    problems = verify_conversion(folder, full=True)
    if not problems:
        return folder
    try:
        gguf = read_manifest(folder).get("gguf_file")
    except CorruptModelError:
        gguf = None
    if isinstance(gguf, str) and Path(gguf).is_file() and gguf_cache_dir(gguf).resolve() == folder.resolve():
        return convert_gguf(gguf, progress, verify="full")
    raise CorruptModelError(
        f"the cached conversion {folder} is damaged ({describe(problems, folder)}) and its GGUF file "
        f"({gguf or 'not recorded'}) is not there to convert it again: delete {folder} and load the .gguf file again")


def dtype_variant(folder: str | os.PathLike, dtype: str, progress: bool = True, verify: str | None = None,
                  on_write: Callable[[], None] | None = None) -> Path:
    """A copy of the converted model in ``folder`` saved in ``dtype``, made once, in ``folder/dtype``.

    Loading half-precision weights from a file in that precision maps them straight from disk:
    it reads half the bytes of the float32 conversion and never holds both copies in memory.
    Written atomically like :func:`convert_gguf`, checked like it on every call (``verify``),
    and saved again when it does not match; ``folder`` is checked in full (every file hashed)
    before a copy is made from it. ``on_write`` is called when the copy is actually written.
    """
    full = _full_verify(verify)
    folder = Path(folder)
    target = folder / dtype
    problems = cached_problems(target, full)
    if problems == []:
        return target
    folder = _checked_source(folder, progress)
    target = folder / dtype
    if problems:
        _refuse_read_only(target, problems, str(folder))

    def write(partial: Path) -> dict:
        started = time.perf_counter()
        with progress_bars(progress):
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=TORCH_DTYPES[dtype])
            model.save_pretrained(partial)
            tokenizer.save_pretrained(partial)
        return {"converted_from": str(folder), "dtype": dtype, "transformers": transformers.__version__,
                "convert_seconds": round(time.perf_counter() - started, 3)}

    target = write_cached(target, folder / f"{dtype}.lock", full, f"saving the {dtype} copy again from {folder}", write,
                           on_write)
    gc.collect()
    trim_heap()
    return target


@contextlib.contextmanager
def progress_bars(enabled: bool):
    """Show or hide transformers' own progress bars for the duration."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar)()
