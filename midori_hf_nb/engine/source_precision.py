"""The precision a model's source keeps: ``quantize_weights="auto"`` stores the layers of a
quantized GGUF file the way the file stores them, instead of widening them to 16 or 32 bits.

A GGUF file's layers are dequantized into a safetensors conversion on first use
(:mod:`.convert`); what the file held is read from its header (:func:`~midori_hf_nb.integrity.gguf_tensor_types`,
the tensor table only). Q4_0 and Q4_1 blocks are 32 weights with a scale (and a minimum), which
is what :class:`~.layers.Int4WeightLinear` stores, so those layers go back to 4 bits; Q8_0 blocks
are 8-bit values with a scale, kept as 8 bits (:class:`~.layers.Int8WeightLinear`, one scale per
output row). The output head is chosen on its own (in the offline default model, Q4_1 layers and
a Q8_0 embedding table that is also the head). Any other tensor type (16/32-bit floats, the
k-quants) keeps full weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..integrity import gguf_tensor_types

#: ggml type numbers (``gguf.GGMLQuantizationType``): Q4_0, Q4_1 and Q8_0
Q4_TYPES = frozenset({2, 3})
Q8_TYPES = frozenset({8})
#: the projections of a transformer block in GGUF's tensor names
BLOCK_LAYERS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@dataclass(frozen=True)
class SourcePrecision:
    """The weight quantization that keeps a source's precision: ``layers`` for the blocks' linear
    layers and ``head`` for the output head (each ``"int4"``, ``"int8"`` or None for full weights),
    and why."""

    layers: str | None
    head: str | None
    reason: str


FULL = SourcePrecision(None, None, "not a quantized GGUF file")


@lru_cache(maxsize=16)
def _gguf_precision(path: str, size: int, mtime_ns: int) -> SourcePrecision:
    types = gguf_tensor_types(path)
    layers = {t for name, t in types.items()
              if name.startswith("blk.") and name.endswith(".weight") and name.split(".")[-2] in BLOCK_LAYERS}
    head_type = types.get("output.weight", types.get("token_embd.weight"))
    if not layers:
        return SourcePrecision(None, None, "no transformer block layers found in the GGUF file")
    if layers <= Q4_TYPES:
        kind = "int4"
    elif layers <= Q4_TYPES | Q8_TYPES:
        kind = "int8"
    else:
        return SourcePrecision(None, None, f"its block layers are of ggml types {sorted(layers)}, not Q4_0/Q4_1/Q8_0")
    head = "int8" if head_type in Q4_TYPES | Q8_TYPES else None
    return SourcePrecision(kind, head, f"the GGUF file stores its block layers as "
                                       f"{'Q4_0/Q4_1' if kind == 'int4' else 'Q8_0'}"
                                       + (" and its head as 8 bits or fewer" if head else ""))


def source_precision(kind: str, location: str) -> SourcePrecision:
    """The precision of a source (``ModelSource.kind`` and ``location``): for a ``"gguf"`` file,
    read from its header (once per file and version); :data:`FULL` for anything else."""
    if kind != "gguf":
        return FULL
    import os

    stat = os.stat(location)
    return _gguf_precision(str(location), stat.st_size, stat.st_mtime_ns)
