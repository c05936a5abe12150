"""GGUF conversion: a ``.gguf`` file converted once into a cached safetensors directory
(and a half-precision copy beside it), written atomically under a file lock.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..sources import gguf_cache_dir

from .capabilities import make_gguf_model_saveable
from .devices import TORCH_DTYPES, _trim_heap

try:  # POSIX advisory locks keep two processes from converting the same file at once
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def _gguf_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "midori-source.json").is_file()


def convert_gguf(gguf_path: str | os.PathLike, progress: bool = True) -> Path:
    """Convert a ``.gguf`` file once into a safetensors directory in the user cache.

    The conversion is written to a temporary folder beside the target and renamed into place,
    so an interrupted conversion never leaves a half cache; a file lock keeps two processes
    from converting the same file at once. Returns the cached directory.
    """
    gguf_path = Path(gguf_path).resolve()
    target = gguf_cache_dir(gguf_path)
    if _gguf_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock_file:
        if fcntl is not None:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        if _gguf_complete(target):
            return target
        if target.exists():  # a stale incomplete folder from an older version
            shutil.rmtree(target, ignore_errors=True)
        for stale in target.parent.glob(f"{target.name}.partial-*"):  # left by an interrupted conversion
            shutil.rmtree(stale, ignore_errors=True)
        partial = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=target.parent))
        partial.chmod(0o755)
        try:
            started = time.perf_counter()
            with _progress_bars(progress):
                tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
                model = AutoModelForCausalLM.from_pretrained(
                    gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
                )
            make_gguf_model_saveable(model)
            with _progress_bars(progress):
                model.save_pretrained(partial)
                tokenizer.save_pretrained(partial)
            stat = gguf_path.stat()
            (partial / "midori-source.json").write_text(
                json.dumps(
                    {"gguf_file": str(gguf_path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                     "transformers": transformers.__version__,
                     "convert_seconds": round(time.perf_counter() - started, 3)},
                    indent=2,
                )
            )
            del model, tokenizer
            os.replace(partial, target)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return target


def dtype_variant(folder: str | os.PathLike, dtype: str, progress: bool = True) -> Path:
    """A copy of the converted model in ``folder`` saved in ``dtype``, made once, in ``folder/dtype``.

    Loading half-precision weights from a file in that precision maps them straight from disk:
    it reads half the bytes of the float32 conversion and never holds both copies in memory.
    Written atomically like :func:`convert_gguf`.
    """
    folder = Path(folder)
    target = folder / dtype
    if _gguf_complete(target):
        return target
    with open(folder / f"{dtype}.lock", "w") as lock_file:
        if fcntl is not None:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        if _gguf_complete(target):
            return target
        shutil.rmtree(target, ignore_errors=True)
        for stale in folder.glob(f"{dtype}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        partial = Path(tempfile.mkdtemp(prefix=f"{dtype}.partial-", dir=folder))
        partial.chmod(0o755)
        try:
            started = time.perf_counter()
            with _progress_bars(progress):
                tokenizer = AutoTokenizer.from_pretrained(folder)
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=TORCH_DTYPES[dtype])
                model.save_pretrained(partial)
                tokenizer.save_pretrained(partial)
            (partial / "midori-source.json").write_text(json.dumps(
                {"converted_from": str(folder), "dtype": dtype, "transformers": transformers.__version__,
                 "convert_seconds": round(time.perf_counter() - started, 3)}, indent=2))
            del model, tokenizer
            os.replace(partial, target)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    gc.collect()
    _trim_heap()
    return target


@contextlib.contextmanager
def _progress_bars(enabled: bool):
    """Show or hide transformers' own progress bars for the duration."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar)()
