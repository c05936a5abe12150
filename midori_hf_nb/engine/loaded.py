"""A loaded model: :class:`LoadSpec` (what identifies it) and :class:`LoadedModel` (the model,
its tokenizer and what generation needs beside them). Loading itself is :mod:`.loading`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from ..sources import ModelSource
from .capabilities import DecodeLoopSupport
from .fair_lock import FairLock
from .prefix_cache import PrefixCacheStore


@dataclass(frozen=True)
class LoadSpec:
    """What identifies a loaded model: agents with equal specs share one copy."""

    source: ModelSource
    device: str
    dtype: str
    quantization: str | None
    trust_remote_code: bool
    #: fuse the query/key/value and gate/up projections at load (see :mod:`.fusion`)
    fuse_projections: bool = True
    #: the output head's own quantization (``"int8"`` or None: as the other layers' dtype)
    head_quantization: str | None = None

    @property
    def key(self) -> tuple:
        return (self.source.key, self.device, self.dtype, self.quantization, self.trust_remote_code,
                self.fuse_projections, self.head_quantization)


@dataclass
class LoadedModel:
    """A model and tokenizer in memory, with what generation needs."""

    spec: LoadSpec
    model: Any
    tokenizer: Any
    load_seconds: float
    path: str  #: the folder or hub id actually loaded
    #: the load stages that ran, in order (``converting`` and ``dtype copy`` only when a cache was written)
    stages: tuple[str, ...] = ()
    #: held by each generation (the shared decode loop while it has rows); granted first come,
    #: first served (see :mod:`.fair_lock`)
    generation_lock: FairLock = field(default_factory=FairLock)
    #: serialises use of the (Rust) tokenizer across threads: prompt encoding and streamed decoding
    tokenizer_lock: threading.RLock = field(default_factory=threading.RLock)
    base_generation_config: Any = None
    #: the generation settings the model's generation_config.json supplies (checked; see
    #: :func:`midori_hf_nb.settings.model_generation_defaults`)
    generation_defaults: dict = field(default_factory=dict)
    eos_token_ids: frozenset[int] = frozenset()
    pad_token_id: int | None = None
    #: whether (and how) the engine's own decode loop can drive this model
    #: (see :func:`~midori_hf_nb.engine.capabilities.decode_loop_support`)
    decode_support: DecodeLoopSupport = DecodeLoopSupport(False, reason="not probed")
    #: effective GenerationConfig per plain settings tuple, so repeated calls do not rebuild it
    generation_configs: dict = field(default_factory=dict)
    #: thread governors of num_threads="auto", one per batch size
    governors: dict = field(default_factory=dict)
    #: whether a finished generation's KV cache can be kept for the next turn
    #: (see :func:`~midori_hf_nb.engine.capabilities.cache_prefix_reuse_support`)
    prefix_support: DecodeLoopSupport = DecodeLoopSupport(False, reason="not probed")
    #: conversation KV caches kept between turns (see :mod:`~midori_hf_nb.engine.prefix_cache`)
    prefix_caches: PrefixCacheStore = field(default_factory=PrefixCacheStore)
    #: concurrent single-sequence generations join one decode loop (see :mod:`.shared_decode`);
    #: False runs them one after another
    share_decoding: bool = True
    #: whether reproducible generation holds for this model here (see
    #: :func:`~midori_hf_nb.engine.reproducible.support`; None: not checked yet)
    reproducible: Any = None
    #: the model's shared decode loop, created on first use by
    #: :func:`~midori_hf_nb.engine.shared_decode.decoder_for`
    decoder: Any = field(default=None, repr=False)
    #: how many projection groups were fused at load (see :mod:`.fusion`; 0: none)
    fused_projections: int = 0
    #: whether the quantized layers were built from weights quantized by an earlier load
    #: (see :mod:`.quantized_cache`) instead of being quantized now
    quantized_from_cache: bool = False

    @property
    def input_device(self) -> torch.device:
        return self.model.device

    @property
    def max_position_embeddings(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    def footprint(self) -> dict[str, Any]:
        """Parameters, bytes, dtype, quantization and device of the loaded weights."""
        if self.model is None:
            return {"model": self.spec.source.name, "loaded": False}
        params = sum(p.numel() for p in self.model.parameters())
        weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        weight_bytes += sum(b.numel() * b.element_size() for b in self.model.buffers())
        return {
            "model": self.spec.source.name,
            "loaded": True,
            "parameters": int(params),
            "bytes": int(weight_bytes),
            "dtype": self.spec.dtype,
            "quantization": self.spec.quantization or "none",
            "head_quantization": self.spec.head_quantization or "none",
            "device": str(self.input_device),
            "load_seconds": round(self.load_seconds, 3),
        }

    def close(self) -> None:
        """Drop the model, the tokenizer and the kept KV caches so their memory can return."""
        self.prefix_caches.clear()
        self.model = None
        self.tokenizer = None
        self.base_generation_config = None
