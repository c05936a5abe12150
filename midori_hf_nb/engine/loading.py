"""Loading models: a :class:`LoadSpec` (source, device, dtype, quantization) to a
:class:`LoadedModel`, shared and reference-counted in :data:`REGISTRY`.
"""

from __future__ import annotations

import contextlib
import gc
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..config import HuggingFaceConfig
from ..settings import model_generation_defaults
from ..integrity import damaged_folder_error
from ..registry import ModelRegistry
from ..sources import ModelSource, ModelSourceError, hub_offline, resolve_source
from .. import third_party

from . import capabilities
from .convert import progress_bars, convert_gguf, dtype_variant
from ..load_progress import TRACKER, TerminalLoadBar
from .devices import TORCH_DTYPES, cpu_has_vector_kernels, trim_heap, mps_available, resolve_device, resolve_dtype
from .fusion import fuse_projections
from .layers import QuantizationError, check_weight_kernels, own_memory, quantize_weights, quantized_linear, use_bf16_cpu_linears
from .loaded import LoadedModel, LoadSpec
from .quantized_cache import quantized_cache_dir, read_quantized, save_quantized
from .source_precision import source_precision


def _quantization_config(spec: LoadSpec):
    from transformers import BitsAndBytesConfig

    if spec.device == "mps":
        raise QuantizationError(
            f"load_in_{spec.quantization}=True is not supported on device='mps' by bitsandbytes; "
            "use device='cpu' or 'cuda', or turn quantization off"
        )
    third_party.install()  # before bitsandbytes is imported: it logs one of its notices on import
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise QuantizationError(
            f"load_in_{spec.quantization}=True needs bitsandbytes: pip install 'midori-hf-nb[quantization]' "
            f"(or pip install bitsandbytes); import failed with: {exc}"
        ) from exc
    # older bitsandbytes warned (instead of logging) about the 8-bit cast on every matmul
    warnings.filterwarnings("ignore", message=r".*inputs will be cast from.*")
    if spec.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = TORCH_DTYPES[spec.dtype] if spec.dtype != "float16" or spec.device != "cpu" else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute)


def _hub_error(source: ModelSource, exc: BaseException) -> ModelSourceError:
    from huggingface_hub.constants import HF_HUB_CACHE

    where = f"the local hub cache ({HF_HUB_CACHE})"
    if hub_offline():
        reason = "HF_HUB_OFFLINE is set, so the hub was not contacted"
    else:
        reason = "the hub could not be reached or has no such model"
    return ModelSourceError(
        f"model {source.name!r}: not found in {where} and {reason} ({type(exc).__name__}: {exc}). "
        "Pass a local model directory or .gguf file, or use midori_hf_nb.DEFAULT_MODEL to run offline."
    )


#: Files that carry a tokenizer's vocabulary (one of them must be in a local model folder).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.tiktoken", "vocab.spm")


def _explain_tokenizer_error(spec: LoadSpec, path: str, exc: Exception) -> None:
    """Name a local model folder without tokenizer files (transformers' own message speaks of
    sentencepiece and slow tokenizers)."""
    folder = Path(path)
    if spec.source.kind == "hub" or not folder.is_dir():
        return
    if any((folder / name).is_file() for name in TOKENIZER_FILES) or any(folder.glob("*.tiktoken")):
        return
    raise ModelSourceError(
        f"model {spec.source.name!r}: the folder {path!r} has no tokenizer: expected tokenizer.json (or "
        "tokenizer.model, or vocab.json with merges.txt, or vocab.txt) beside config.json; copy the model's "
        f"tokenizer files into it ({type(exc).__name__} from transformers)") from exc


def _explain_load_error(spec: LoadSpec, path: str, exc: Exception) -> None:
    """Raise a clearer error for a failed load when there is one: a hub id that was not found,
    or the damaged file (truncated, not valid JSON, not safetensors) in a local folder."""
    if spec.source.kind == "hub":
        if isinstance(exc, OSError):
            raise _hub_error(spec.source, exc) from exc
        return
    damaged = damaged_folder_error(path, exc, cache_of=spec.source.location if spec.source.kind == "gguf" else None)
    if damaged is not None:
        raise damaged from exc


def prepare_cpu_weights(model: Any, spec: LoadSpec, path: str) -> tuple[int, bool]:
    """After ``from_pretrained``: fuse the projections, quantize the weights (from the quantized-weights
    cache of ``path`` where it holds them, saving them there otherwise) and widen the bfloat16 layers
    left where this CPU has no native bfloat16 product, as ``spec`` asks. Returns the number of fused
    groups and whether the quantized weights came from the cache."""
    fused = 0
    quantized = spec.quantization in ("int8", "int4")
    stored = store = None
    from_cache = False
    if quantized:
        check_weight_kernels(spec.quantization, spec.head_quantization)
        store = quantized_store(spec, path)
        stored = read_quantized(store)
    fusing = spec.fuse_projections and spec.device == "cpu" and spec.quantization not in ("8bit", "4bit")
    if fusing:
        convert = (lambda linear, name: quantized_linear(linear, spec.quantization, stored, name)) \
            if quantized else None
        fused = fuse_projections(model, repr(spec.source.name), convert)
    if quantized:
        quantize_weights(model, spec.quantization, head=spec.head_quantization, stored=stored)
        own_memory(model)  # the weights file's memory map can go
        if store is not None and stored is None:
            save_quantized(store, model, spec.source.name)
        from_cache = stored is not None
        del stored
        trim_heap()
    if spec.device == "cpu" and spec.dtype == "bfloat16" and spec.quantization not in ("8bit", "4bit") \
            and not capabilities.cpu_has_native_bf16_gemm():
        use_bf16_cpu_linears(model)  # the layers left in bfloat16 (an int4 model's output head)
    return fused, from_cache


def load(spec: LoadSpec, progress: bool = True) -> LoadedModel:
    """Load the model and tokenizer of ``spec`` (converting a GGUF file on first use).

    The stages that run and the counts of transformers' progress bars are reported to
    :data:`~midori_hf_nb.load_progress.TRACKER` under ``spec.key`` while the load runs; a stage
    that is not needed (a conversion whose cache is usable) is not reported. With ``progress``
    and a terminal on stderr, one line shows them (:class:`~midori_hf_nb.load_progress.TerminalLoadBar`,
    cleared when the load ends); transformers' own bars are never drawn. ``LoadedModel.stages``
    lists the stages that ran.
    """
    started = time.perf_counter()
    key = spec.key
    TRACKER.begin(key, spec.source.name)
    bar = TerminalLoadBar(spec.source.name, enabled=progress)
    stages: list[str] = []

    def stage(name: str, detail: str) -> None:
        stages.append(name)
        TRACKER.stage(key, name, detail)
        bar.show(TRACKER.current(key), force=True)

    def count(label: str, done: int, total: int | None) -> None:
        TRACKER.count(key, label, done, total)
        bar.show(TRACKER.current(key))

    try:
        with capabilities.observe_progress_bars(count):
            path = str(spec.source.location)
            if spec.source.kind == "gguf":
                path = str(convert_gguf(path, False, on_write=lambda: stage(
                    "converting", "converting GGUF (first use only)")))
            if spec.source.kind == "gguf" and spec.dtype in ("bfloat16", "float16") \
                    and spec.quantization not in ("8bit", "4bit"):
                path = str(dtype_variant(path, spec.dtype, False, on_write=lambda: stage(
                    "dtype copy", f"saving a {spec.dtype} copy (first use only)")))
            common = {"trust_remote_code": spec.trust_remote_code}
            stage("tokenizer", "tokenizer")
            try:
                tokenizer = AutoTokenizer.from_pretrained(path, **common)
            except Exception as exc:
                _explain_tokenizer_error(spec, path, exc)
                _explain_load_error(spec, path, exc)
                raise
            stage("weights", "weights")
            kwargs: dict[str, Any] = {"dtype": TORCH_DTYPES[spec.dtype], **common}
            if spec.quantization in ("int8", "int4") and spec.device != "cpu":
                raise QuantizationError(
                    f"quantize_weights={spec.quantization!r} is supported on device='cpu' only (got "
                    f"device={spec.device!r}); use device='cpu', or bitsandbytes (load_in_8bit/load_in_4bit) on a GPU"
                )
            if spec.quantization in ("8bit", "4bit"):
                kwargs["quantization_config"] = _quantization_config(spec)
                kwargs["device_map"] = {"": spec.device if spec.device != "cuda" else 0}
            elif spec.device == "cuda":
                kwargs["device_map"] = "auto"  # accelerate spreads a large model over the GPUs (and CPU)
            elif spec.device != "cpu":
                kwargs["device_map"] = {"": spec.device}
            try:
                with progress_bars(False):  # counted through the hook, shown by the one line above
                    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
            except Exception as exc:
                _explain_load_error(spec, path, exc)
                raise
            model.eval()
            fused, from_cache = prepare_cpu_weights(model, spec, path)
    finally:
        bar.close()
        TRACKER.end(key)
    lm = LoadedModel(spec=spec, model=model, tokenizer=tokenizer, load_seconds=time.perf_counter() - started, path=path,
                     stages=tuple(stages), fused_projections=fused, quantized_from_cache=from_cache)
    lm.base_generation_config = model.generation_config
    lm.generation_defaults = model_generation_defaults(model.generation_config.to_diff_dict(),
                                                       source=f"{spec.source.name}: generation_config.json")
    lm.decode_support = capabilities.decode_loop_support(model)
    if not lm.decode_support.supported:
        capabilities.fallback(f"decode_loop:{type(model).__name__}", (
            f"the engine's decode loop cannot drive {spec.source.name!r} ({type(model).__name__}): "
            f"{lm.decode_support.reason}; its generations use model.generate (slower on CPU)"))
    else:
        lm.prefix_support = capabilities.cache_prefix_reuse_support(model)
        if not lm.prefix_support.supported:
            capabilities.fallback(f"prefix_reuse:{type(model).__name__}", (
                f"KV caches of {spec.source.name!r} are not kept between turns: {lm.prefix_support.reason}; "
                "every turn prefills its whole prompt"))
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    lm.eos_token_ids = frozenset(eos_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.generation_config.pad_token_id
    lm.pad_token_id = pad if pad is not None else (min(eos_ids) if eos_ids else 0)
    return lm


def quantized_store(spec: LoadSpec, path: str) -> Path | None:
    """Where the quantized weights of ``spec`` are kept between processes (see
    :mod:`.quantized_cache`): beside a GGUF source's cached conversion; None for other sources."""
    if spec.source.kind != "gguf":
        return None
    fused = spec.fuse_projections and spec.device == "cpu"
    return quantized_cache_dir(path, spec.quantization, spec.head_quantization, fused)


def _free(lm: LoadedModel) -> None:
    with lm.generation_lock:  # a running generation finishes first
        lm.close()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if mps_available():
        with contextlib.suppress(Exception):
            torch.mps.empty_cache()
    trim_heap()


#: The process-wide registry of loaded models.
REGISTRY = ModelRegistry(on_free=_free)


def spec_for(config: HuggingFaceConfig) -> LoadSpec:
    """Resolve a configuration to a :class:`LoadSpec` (source, device, dtype, quantization)."""
    source = resolve_source(config.model)
    device = resolve_device(config.device)
    quantization, head = config.quantization, None
    if config.quantize_weights == "auto" and device == "cpu" and config.torch_dtype == "auto" \
            and quantization is None:
        precision = source_precision(source.kind, source.location)
        if precision.layers is not None and not cpu_has_vector_kernels():
            capabilities.fallback("source_precision:cpu", (
                f"{source.name!r} keeps full weights instead of its file's {precision.layers} layers: torch's "
                f"int4/int8 weight kernels are not vectorised for this CPU (capability {capabilities.cpu_capability()})"))
        else:
            quantization, head = precision.layers, precision.head
    return LoadSpec(
        source=source,
        device=device,
        dtype=resolve_dtype(config.torch_dtype, device, quantization),
        quantization=quantization,
        trust_remote_code=config.trust_remote_code,
        fuse_projections=config.fuse_projections,
        head_quantization=head,
    )


def acquire(config: HuggingFaceConfig) -> LoadedModel:
    """Load (or share) the model of ``config`` and add a reference to it."""
    spec = spec_for(config)
    return REGISTRY.acquire(spec.key, lambda: load(spec, progress=config.progress))


def release(lm: LoadedModel) -> bool:
    """Drop one reference to ``lm``; True when this freed it."""
    return REGISTRY.release(lm.spec.key)
