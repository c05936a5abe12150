"""Quantized weights kept on disk, so that a model quantized at load is quantized once.

Quantizing the offline default model's layers to int4 (and its head to int8) takes about ten
seconds of a two-core CPU, every time a process loads it: three times the rest of a cold start.
The packed tensors of every quantized layer are saved once, beside the model's cached
conversion, and the next load builds its layers from them instead of quantizing again.

The folder's name holds everything the packed form depends on: the quantization of the layers
and of the head, whether projections are fused, torch's version and its CPU capability (the
int4 packing belongs to torch's kernel). It is written like the conversion itself (under a file
lock, into a temporary folder renamed into place, with a manifest of the files) and checked
against its manifest at every load: a damaged one is quantized and written again (with a
:class:`~midori_hf_nb.integrity.CacheRepairWarning`); a cache that cannot be written is used
without (a fast-path warning says so). Only sources whose conversion lives in the cache (GGUF
files) get one: a folder the user gave is never written to.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from . import capabilities
from .convert import cached_problems, write_cached
from .layers import PACKED_BUFFERS

#: The file of packed tensors in a quantized-weights folder.
QUANTIZED_FILE = "quantized.safetensors"


def quantized_cache_dir(path: str | Path, kind: str, head: str | None, fused: bool) -> Path:
    """The folder, beside the converted model in ``path``, for its weights quantized this way."""
    tag = (f"quantized-{kind}-head-{head or 'same'}-{'fused' if fused else 'unfused'}"
           f"-torch{torch.__version__}-{capabilities.cpu_capability() or 'unknown'}")
    path = Path(path)
    return path.parent / f"{path.name}.{re.sub(r'[^A-Za-z0-9.+_-]', '_', tag)}"


def read_quantized(folder: Path | None) -> dict[str, torch.Tensor] | None:
    """The packed tensors saved in ``folder`` (by layer name), or None when there is no whole copy."""
    if folder is None or cached_problems(folder, full=False) != []:
        return None
    from safetensors.torch import load_file

    try:
        return load_file(str(folder / QUANTIZED_FILE))
    except Exception:  # unreadable despite its manifest: quantize again (the save repairs it)
        return None


def packed_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every quantized layer's packed weight and scales, by ``<layer name>.<buffer>``."""
    tensors = {}
    for name, module in model.named_modules():
        for buffer in PACKED_BUFFERS.get(type(module).__name__, ()):
            tensors[f"{name}.{buffer}"] = getattr(module, buffer).contiguous()
    return tensors


def save_quantized(folder: Path, model: torch.nn.Module, source: str) -> bool:
    """Save ``model``'s packed tensors in ``folder`` once; False (with a warning naming what is
    lost) when the cache cannot be written."""
    from safetensors.torch import save_file

    tensors = packed_tensors(model)

    def write(partial: Path) -> dict:
        save_file(tensors, str(partial / QUANTIZED_FILE))
        return {"quantized_from": source, "torch": torch.__version__, "layers": len(tensors)}

    try:
        write_cached(folder, folder.parent / f"{folder.name}.lock", False, f"quantizing {source} again", write)
    except OSError as exc:
        capabilities.fallback(f"quantized_cache:{folder.parent}", (
            f"the quantized weights of {source} cannot be kept in {folder.parent} ({exc}); every load "
            "quantizes them again (set MIDORI_HF_NB_CACHE to a writable folder)"))
        return False
    return True
