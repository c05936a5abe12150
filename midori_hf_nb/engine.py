"""The one module that touches torch and transformers.

It resolves devices and dtypes, converts GGUF files once into a cached safetensors
directory, loads models (shared and reference-counted through :mod:`midori_hf_nb.registry`),
quantizes through ``BitsAndBytesConfig``, and generates: one sequence with live text
callbacks, or a left-padded batch. Every generation can be cancelled through a
``threading.Event`` and stops within one token.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    StoppingCriteria,
    StoppingCriteriaList,
    TextStreamer,
)

from .config import HuggingFaceConfig
from .registry import ModelRegistry
from .sources import ModelSource, ModelSourceError, gguf_cache_dir, hub_offline, resolve_source

try:  # POSIX advisory locks keep two processes from converting the same file at once
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}

#: ``generate()`` keyword arguments that are not ``GenerationConfig`` attributes.
CALL_KWARGS = frozenset(
    {"logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "negative_prompt_ids",
     "negative_prompt_attention_mask", "assistant_model"}
)


class DeviceError(RuntimeError):
    """The requested device is not available on this machine."""


class QuantizationError(RuntimeError):
    """Quantization was asked for but cannot be done here."""


# --------------------------------------------------------------------------- devices and dtypes


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def resolve_device(requested: str) -> str:
    """``"auto"`` picks cuda, then mps, then cpu; an unavailable device raises :class:`DeviceError`."""
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if mps_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device={requested!r} was asked for but CUDA is not available here "
                f"(torch {torch.__version__} {'has no CUDA support' if torch.version.cuda is None else 'finds no GPU'}); "
                "use device='cpu' or device='auto'"
            )
        if ":" in requested and int(requested.split(":")[1]) >= torch.cuda.device_count():
            raise DeviceError(f"device={requested!r}: only {torch.cuda.device_count()} CUDA device(s) are present")
        return requested
    if requested == "mps" and not mps_available():
        raise DeviceError("device='mps' was asked for but Apple MPS is not available here; use device='cpu' or 'auto'")
    return requested


#: CPU capabilities (``torch.backends.cpu.get_cpu_capability()``) on which bfloat16 weights
#: decode faster than float32: the vector units convert bfloat16 cheaply, and decoding a small
#: batch is limited by the bytes of weights read per token, which bfloat16 halves.
BF16_FAST_CPU_CAPABILITIES = frozenset({"AVX2", "AVX512", "AVX512_BF16", "AMX", "AVX512_AMX"})


def cpu_prefers_bfloat16() -> bool:
    """True when this CPU runs bfloat16 weights faster than float32 (x86 with AVX2 or better)."""
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - very old torch
        return False
    return str(capability).upper() in BF16_FAST_CPU_CAPABILITIES


def resolve_dtype(requested: str, device: str, quantization: str | None = None) -> str:
    """Map the dtype option to a concrete dtype name.

    ``"auto"`` is bfloat16 on a CPU with AVX2 or better (:func:`cpu_prefers_bfloat16`; about
    1.7x the decode speed of float32 there, with the same greedy answers on the factual prompts
    of ``tests/test_performance_paths.py``), float32 on other CPUs and with bitsandbytes
    quantization on CPU; bfloat16 on CUDA devices that support it, float16 elsewhere.
    ``torch_dtype="float32"`` always gives exact float32.
    """
    if requested != "auto":
        return requested
    if device == "cpu":
        if quantization in ("8bit", "4bit"):
            return "float32"
        return "bfloat16" if cpu_prefers_bfloat16() else "float32"
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float16"


# --------------------------------------------------------------------------- GGUF conversion


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
            # A GGUF-loaded model refuses to save while it still names its gguf quantizer.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
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


# --------------------------------------------------------------------------- bfloat16 on CPU

#: Matrix products with at most this many rows use torch's bfloat16 kernel directly.
BF16_DIRECT_ROWS = 2
#: Elements of the float32 scratch block a bfloat16 weight is widened into (2 MiB).
BF16_BLOCK_ELEMENTS = 1 << 19

_scratch = threading.local()


def cpu_has_native_bf16_gemm() -> bool:
    """True when oneDNN multiplies bfloat16 matrices natively here (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # pragma: no cover - builds without oneDNN
        return False


class Bf16CpuLinear(torch.nn.Linear):
    """``nn.Linear`` with bfloat16 weights on a CPU without native bfloat16 matrix products.

    Decoding one token (one or two rows) uses torch's bfloat16 kernel, which reads half the
    bytes of float32. Products with more rows (the prompt, a batch) widen the weight block by
    block (2 MiB at a time, in a per-thread scratch buffer that stays in cache) and multiply
    in float32, instead of torch's generic bfloat16 matrix product, which on AVX2 is about 5x
    slower than float32. Both compute in float32 from the same bfloat16 weights and round the
    result to bfloat16. The module keeps its weight (tied weights stay tied).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        rows = x.numel() // x.shape[-1] if x.dim() else 1
        if rows <= BF16_DIRECT_ROWS or weight.dtype != torch.bfloat16 or torch.is_grad_enabled():
            return torch.nn.functional.linear(x, weight, self.bias)
        out_features, in_features = weight.shape
        flat = x.reshape(rows, in_features).to(torch.float32)
        out = torch.empty(rows, out_features, dtype=torch.float32, device=x.device)
        block = getattr(_scratch, "block", None)
        if block is None:
            block = _scratch.block = torch.empty(BF16_BLOCK_ELEMENTS, dtype=torch.float32)
        step = max(1, BF16_BLOCK_ELEMENTS // in_features)
        for start in range(0, out_features, step):
            stop = min(out_features, start + step)
            if (stop - start) * in_features > block.numel():  # a single row longer than the block
                block = _scratch.block = torch.empty((stop - start) * in_features, dtype=torch.float32)
            widened = block[: (stop - start) * in_features].view(stop - start, in_features)
            widened.copy_(weight[start:stop])
            out[:, start:stop] = flat @ widened.t()
        if self.bias is not None:
            out += self.bias.to(torch.float32)
        return out.to(x.dtype).reshape(*x.shape[:-1], out_features)


def use_bf16_cpu_linears(model: torch.nn.Module) -> int:
    """Turn the bfloat16 ``nn.Linear`` layers of a CPU model into :class:`Bf16CpuLinear` (in place).

    Only the forward changes (the class of each module); weights, ties and the state dict stay.
    Returns how many layers changed.
    """
    changed = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.dtype == torch.bfloat16:
            module.__class__ = Bf16CpuLinear
            changed += 1
    return changed


# --------------------------------------------------------------------------- int8 / int4 weights


class Int8WeightLinear(torch.nn.Module):
    """A linear layer whose weight is stored as int8 with one scale per output channel.

    ``y = (x @ q.T) * scale (+ bias)``, computed by torch's weight-only int8 kernel
    (``aten._weight_int8pack_mm``) in the activation dtype. The scale of a row is its largest
    absolute weight divided by 127 (symmetric, round to nearest).
    """

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().to(torch.float32)
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(linear.weight.dtype))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if flat.dtype != self.scale.dtype:
            flat = flat.to(self.scale.dtype)
        out = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scale)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


class Int4WeightLinear(torch.nn.Module):
    """A linear layer whose weight is stored as 4-bit values in groups of ``group_size`` inputs.

    Each group keeps a scale and a minimum (``w = q * scale + minimum``, ``q`` in 0..15, from the
    group's own minimum and maximum), which is the layout of llama.cpp's Q4_1 blocks: a layer
    dequantized from a Q4_1 (or Q4_0) GGUF file gets its original 4-bit values back, up to the
    rounding of scales to the activation dtype. Computed by torch's int4 kernel
    (``aten._weight_int4pack_mm_for_cpu``).
    """

    def __init__(self, linear: torch.nn.Linear, group_size: int = 32) -> None:
        super().__init__()
        weight = linear.weight.detach().to(torch.float32)
        rows, cols = weight.shape
        groups = weight.view(rows, cols // group_size, group_size)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)
        scale = ((high - low) / 15).clamp(min=1e-12)
        q = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32).view(rows, cols)
        # the kernel computes (q - 8) * scale + zero
        zero = low + 8 * scale
        self.in_features, self.out_features, self.group_size = cols, rows, group_size
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        self.register_buffer("scales_and_zeros",
                             torch.stack([scale.t(), zero.t()], dim=-1).contiguous().to(linear.weight.dtype))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if flat.dtype != self.scales_and_zeros.dtype:
            flat = flat.to(self.scales_and_zeros.dtype)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, self.group_size, self.scales_and_zeros)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"int4 weights in groups of {self.group_size}")


def quantize_weights(model: torch.nn.Module, kind: str) -> int:
    """Replace the ``nn.Linear`` layers of ``model`` by :class:`Int8WeightLinear` (``"int8"``:
    every layer, the output head included) or :class:`Int4WeightLinear` (``"int4"``: every layer
    but the output head, whose inputs are a multiple of 32). Returns how many layers changed.

    An int8 head tied to the input embeddings gets its own copy; the embeddings stay in the
    model's dtype.
    """
    op = "_weight_int8pack_mm" if kind == "int8" else "_weight_int4pack_mm_for_cpu"
    if not hasattr(torch.ops.aten, op):
        raise QuantizationError(
            f"quantize_weights={kind!r} needs torch's kernel aten.{op}, which torch {torch.__version__} "
            "does not have; upgrade torch or turn quantize_weights off"
        )
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if not isinstance(child, torch.nn.Linear):
                continue
            if kind == "int8":
                setattr(module, name, Int8WeightLinear(child))
            elif child is not head and child.in_features % 32 == 0:
                setattr(module, name, Int4WeightLinear(child))
            else:
                continue
            replaced += 1
    if kind == "int8" and getattr(model.config, "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False  # the head is its own (int8) tensor now
    _trim_heap()
    return replaced


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class LoadSpec:
    """What identifies a loaded model: agents with equal specs share one copy."""

    source: ModelSource
    device: str
    dtype: str
    quantization: str | None
    trust_remote_code: bool

    @property
    def key(self) -> tuple:
        return (self.source.key, self.device, self.dtype, self.quantization, self.trust_remote_code)


@dataclass
class LoadedModel:
    """A model and tokenizer in memory, with what generation needs."""

    spec: LoadSpec
    model: Any
    tokenizer: Any
    load_seconds: float
    path: str  #: the folder or hub id actually loaded
    generation_lock: threading.Lock = field(default_factory=threading.Lock)
    #: serialises use of the (Rust) tokenizer across threads: prompt encoding and streamed decoding
    tokenizer_lock: threading.RLock = field(default_factory=threading.RLock)
    base_generation_config: Any = None
    eos_token_ids: frozenset[int] = frozenset()
    pad_token_id: int | None = None
    #: True when the engine's own decode loop can drive this model (see :func:`lean_decode_supported`)
    lean_capable: bool = False
    #: effective GenerationConfig per plain settings tuple, so repeated calls do not rebuild it
    generation_configs: dict = field(default_factory=dict)
    #: thread governors of num_threads="auto", one per batch size
    governors: dict = field(default_factory=dict)

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
            "device": str(self.input_device),
            "load_seconds": round(self.load_seconds, 3),
        }

    def close(self) -> None:
        """Drop the model and tokenizer so their memory can return."""
        self.model = None
        self.tokenizer = None
        self.base_generation_config = None


def _quantization_config(spec: LoadSpec):
    from transformers import BitsAndBytesConfig

    if spec.device == "mps":
        raise QuantizationError(
            f"load_in_{spec.quantization}=True is not supported on device='mps' by bitsandbytes; "
            "use device='cpu' or 'cuda', or turn quantization off"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise QuantizationError(
            f"load_in_{spec.quantization}=True needs bitsandbytes: pip install 'midori-hf-nb[quantization]' "
            f"(or pip install bitsandbytes); import failed with: {exc}"
        ) from exc
    warnings.filterwarnings("ignore", message=r".*inputs will be cast from.*")  # 8-bit CPU matmul chatter
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


def load(spec: LoadSpec, progress: bool = True) -> LoadedModel:
    """Load the model and tokenizer of ``spec`` (converting a GGUF file on first use)."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    bar = tqdm(total=3, desc=f"Loading {spec.source.name}", unit="step", disable=not progress, leave=False)
    try:
        bar.set_postfix_str("converting GGUF (first use only)" if spec.source.kind == "gguf" else "resolving source")
        path = str(convert_gguf(spec.source.location, progress) if spec.source.kind == "gguf" else spec.source.location)
        if spec.source.kind == "gguf" and spec.dtype in ("bfloat16", "float16") \
                and spec.quantization not in ("8bit", "4bit"):
            bar.set_postfix_str(f"saving a {spec.dtype} copy (first use only)")
            path = str(dtype_variant(path, spec.dtype, progress))
        bar.update(1)
        common = {"trust_remote_code": spec.trust_remote_code}
        bar.set_postfix_str("tokenizer")
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **common)
        except OSError as exc:
            if spec.source.kind == "hub":
                raise _hub_error(spec.source, exc) from exc
            raise
        bar.update(1)
        bar.set_postfix_str("weights")
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
            with _progress_bars(progress):
                model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except OSError as exc:
            if spec.source.kind == "hub":
                raise _hub_error(spec.source, exc) from exc
            raise
        model.eval()
        if spec.quantization in ("int8", "int4"):
            quantize_weights(model, spec.quantization)
        if spec.device == "cpu" and spec.dtype == "bfloat16" and spec.quantization not in ("8bit", "4bit") \
                and not cpu_has_native_bf16_gemm():
            use_bf16_cpu_linears(model)  # the layers left in bfloat16 (an int4 model's output head)
        bar.update(1)
    finally:
        bar.close()
    lm = LoadedModel(spec=spec, model=model, tokenizer=tokenizer, load_seconds=time.perf_counter() - started, path=path)
    lm.base_generation_config = model.generation_config
    lm.lean_capable = lean_decode_supported(model)
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    lm.eos_token_ids = frozenset(eos_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.generation_config.pad_token_id
    lm.pad_token_id = pad if pad is not None else (min(eos_ids) if eos_ids else 0)
    return lm


def _trim_heap() -> None:
    """Ask glibc to hand freed heap pages back to the OS (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _free(lm: LoadedModel) -> None:
    with lm.generation_lock:  # a running generation finishes first
        lm.close()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if mps_available():
        with contextlib.suppress(Exception):
            torch.mps.empty_cache()
    _trim_heap()


#: The process-wide registry of loaded models.
REGISTRY = ModelRegistry(on_free=_free)


def spec_for(config: HuggingFaceConfig) -> LoadSpec:
    """Resolve a configuration to a :class:`LoadSpec` (source, device, dtype)."""
    source = resolve_source(config.model)
    device = resolve_device(config.device)
    return LoadSpec(
        source=source,
        device=device,
        dtype=resolve_dtype(config.torch_dtype, device, config.quantization),
        quantization=config.quantization,
        trust_remote_code=config.trust_remote_code,
    )


def acquire(config: HuggingFaceConfig) -> LoadedModel:
    """Load (or share) the model of ``config`` and add a reference to it."""
    spec = spec_for(config)
    return REGISTRY.acquire(spec.key, lambda: load(spec, progress=config.progress))


def release(lm: LoadedModel) -> bool:
    """Drop one reference to ``lm``; True when this freed it."""
    return REGISTRY.release(lm.spec.key)


# --------------------------------------------------------------------------- generation


@dataclass
class GenerationSettings:
    """Per-call generation settings (already validated by :class:`HuggingFaceConfig`)."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: torch intra-op threads on CPU: "auto", a count, or None to leave torch's setting alone
    num_threads: int | str | None = None
    #: "auto" (the engine's decode loop when the settings allow it) or "generate" (always model.generate)
    decode_loop: str = "auto"

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0


@dataclass
class GenerationResult:
    """What one sequence's generation produced."""

    token_ids: list[int]
    text: str
    finish_reason: str  #: "stop", "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token: float | None
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def decode_tokens_per_second(self) -> float | None:
        """Tokens per second after the first token (the decode phase)."""
        if self.time_to_first_token is None or self.completion_tokens < 2:
            return None
        decode = self.seconds - self.time_to_first_token
        return (self.completion_tokens - 1) / decode if decode > 0 else None


class _StopAndTime(StoppingCriteria):
    """Stops every sequence when ``stop_event`` is set, and records when the first token came."""

    def __init__(self, stop_event: threading.Event | None, started: float, governor: Any = None) -> None:
        self.stop_event = stop_event
        self.started = started
        self.first_token_at: float | None = None
        self.governor = governor

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if self.governor is not None:
            self.governor.step()
        stop = bool(self.stop_event is not None and self.stop_event.is_set())
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class _CallbackStreamer(TextStreamer):
    """TextStreamer that hands each finalised piece of text to a callback instead of printing."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None], lock: threading.RLock) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self._on_text = on_text
        self._lock = lock

    def put(self, value: Any) -> None:
        with self._lock:
            super().put(value)

    def end(self) -> None:
        with self._lock:
            super().end()

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self._on_text(text)


def check_generation_kwargs(kwargs: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming any key that ``generate()`` would not understand."""
    reference = GenerationConfig()
    unknown = sorted(k for k in kwargs if k not in CALL_KWARGS and not hasattr(reference, k))
    if unknown:
        raise ValueError(
            f"unknown generation option(s) {', '.join(map(repr, unknown))}: expected attributes of "
            "transformers.GenerationConfig (e.g. repetition_penalty, stop_strings) or one of "
            + ", ".join(sorted(CALL_KWARGS))
        )


def _generation_config(lm: LoadedModel, settings: GenerationSettings) -> tuple[Any, dict[str, Any]]:
    """The effective ``GenerationConfig`` and the call keyword arguments of ``settings``.

    Without extra options the config is built once per settings and kept on ``lm``
    (``model.generate`` works on its own copy, so sharing it is safe).
    """
    key = None
    if not settings.extra:
        key = (settings.max_new_tokens, settings.greedy, settings.temperature, settings.top_p, settings.top_k)
        cached = lm.generation_configs.get(key)
        if cached is not None:
            return cached, {}
    config_kwargs = {k: v for k, v in settings.extra.items() if k not in CALL_KWARGS}
    call_kwargs = {k: v for k, v in settings.extra.items() if k in CALL_KWARGS}
    cfg = GenerationConfig.from_dict(lm.base_generation_config.to_dict())
    cfg.max_new_tokens = settings.max_new_tokens
    cfg.max_length = None
    cfg.pad_token_id = lm.pad_token_id
    if settings.greedy:
        cfg.do_sample, cfg.temperature, cfg.top_p, cfg.top_k = False, 1.0, 1.0, 50
    else:
        cfg.do_sample, cfg.temperature, cfg.top_p, cfg.top_k = True, settings.temperature, settings.top_p, settings.top_k
    cfg.update(**config_kwargs)
    if key is not None:
        if len(lm.generation_configs) >= 64:
            lm.generation_configs.clear()
        lm.generation_configs[key] = cfg
    return cfg, call_kwargs


def _finish_reason(tokens: list[int], eos: frozenset[int], max_new_tokens: int, cancelled: bool) -> str:
    if tokens and tokens[-1] in eos:
        return "stop"
    if cancelled:
        return "cancelled"
    return "length" if len(tokens) >= max_new_tokens else "stop"


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _others_running() -> int | None:
    """Runnable tasks on the machine right now besides the caller (from /proc/loadavg), or None."""
    try:
        with open("/proc/loadavg") as fh:
            running = int(fh.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0, running - 1)


class ThreadGovernor:
    """Chooses torch's intra-op thread count step by step, by measuring: one thread or every
    usable core, whichever decoded faster lately.

    On an idle machine several threads decode faster. When other processes compete for the
    cores, torch's threads wait for each other at every operation and one thread can be several
    times faster. Step times are kept as moving averages per thread count; every ``probe_every``
    steps the other count runs for ``probe_steps`` steps, so the choice follows the load. Before
    anything is measured, one thread is used while other tasks are runnable, else every core.
    The thread count does not change the tokens (torch parallelises these products over output
    rows); ``steps`` counts the steps run with each count.
    """

    def __init__(self, cores: int, probe_every: int = 24, probe_steps: int = 2, alpha: float = 0.3) -> None:
        self.choices = (1, cores)
        self.average: dict[int, float | None] = {1: None, cores: None}
        self.steps: dict[int, int] = {1: 0, cores: 0}
        self.probe_every, self.probe_steps, self.alpha = probe_every, probe_steps, alpha
        self.active = cores
        self._last = 0.0
        self._count = 0
        self._probing = 0

    def best(self) -> int:
        """The thread count with the lower average step time (a guess from the load before that)."""
        known = {k: v for k, v in self.average.items() if v is not None}
        if len(known) == 2:
            return min(known, key=known.__getitem__)
        if known:
            return next(iter(known))
        others = _others_running()
        return 1 if others is not None and others >= 1 else self.choices[1]

    def _set(self, count: int) -> None:
        self.active = count
        if torch.get_num_threads() != count:
            torch.set_num_threads(count)

    def start(self) -> None:
        """Call before a generation: applies the best thread count (also for the prompt)."""
        self._set(self.best())
        self._count = 0
        self._probing = 0
        self._last = time.perf_counter()

    def step(self) -> None:
        """Call after each generated token (or batch step); picks the count for the next step."""
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        self._count += 1
        if self._count > 1:  # the first step also processed the prompt
            previous = self.average[self.active]
            self.average[self.active] = seconds if previous is None else previous + self.alpha * (seconds - previous)
            self.steps[self.active] += 1
        other = self.choices[0] if self.active == self.choices[1] else self.choices[1]
        if self._probing:
            self._probing -= 1
            if self._probing:
                return
            self._set(self.best())
        elif self._count > 1 and (self.average[other] is None or self._count % self.probe_every == 0):
            self._probing = self.probe_steps
            self._set(other)
        else:
            self._set(self.best())


def resolve_threads(requested: int | str | None) -> int | str | None:
    """The thread setting for ``num_threads``: ``"auto"`` (measured per step by a
    :class:`ThreadGovernor`; 1 on a single-core machine), a fixed count, or ``None`` (leave torch alone)."""
    if requested == "auto":
        return 1 if usable_cores() < 2 else "auto"
    return None if requested is None else int(requested)


def apply_threads(lm: LoadedModel, requested: int | str | None, rows: int = 1) -> ThreadGovernor | None:
    """Set torch's (process-wide) intra-op threads for a generation on CPU.

    A fixed count is set at once; ``"auto"`` starts the model's :class:`ThreadGovernor` for
    ``rows`` sequences (one per batch size, as their step times differ) and returns it.
    """
    if lm.spec.device != "cpu":
        return None
    setting = resolve_threads(requested)
    if setting is None:
        return None
    if setting != "auto":
        if torch.get_num_threads() != setting:
            torch.set_num_threads(setting)
        return None
    governor = lm.governors.get(rows)
    if governor is None:
        governor = lm.governors[rows] = ThreadGovernor(usable_cores())
    governor.start()
    return governor


#: ``GenerationConfig`` entries the engine's decode loop honours; any other non-default entry
#: (repetition_penalty, stop_strings, min_new_tokens, ...) sends the call to ``model.generate``.
LEAN_CONFIG_KEYS = frozenset({
    "max_new_tokens", "max_length", "do_sample", "temperature", "top_k", "top_p", "use_cache",
    "output_attentions", "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate",
    "pad_token_id", "bos_token_id", "eos_token_id", "_from_model_config", "transformers_version",
})


def lean_decode_supported(model: Any) -> bool:
    """True when the engine's own decode loop can drive ``model``.

    That is a decoder-only model that takes ``past_key_values`` and ``logits_to_keep`` (and
    places new tokens after the cached ones), works with a ``DynamicCache`` and prepares its inputs the standard way
    (models that override ``prepare_inputs_for_generation``, such as multimodal or recurrent
    ones, always go through ``model.generate``).
    """
    import inspect

    from transformers.generation.utils import GenerationMixin

    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    try:
        params = inspect.signature(model.forward).parameters
        if not {"input_ids", "past_key_values", "logits_to_keep"} <= set(params):
            return False
        if type(model).prepare_inputs_for_generation is not GenerationMixin.prepare_inputs_for_generation:
            return False
        supports = getattr(model, "_supports_default_dynamic_cache", None)
        return bool(supports()) if callable(supports) else False
    except Exception:
        return False


def _use_lean_loop(lm: LoadedModel, settings: GenerationSettings, cfg: Any, call_kwargs: dict[str, Any]) -> bool:
    if settings.decode_loop == "generate" or not lm.lean_capable or call_kwargs:
        return False
    if cfg.use_cache is False or cfg.return_dict_in_generate or cfg.output_scores or cfg.output_logits:
        return False
    if cfg.output_attentions or cfg.output_hidden_states or cfg.max_length is not None:
        return False
    if (cfg.num_beams or 1) != 1 or (cfg.num_return_sequences or 1) != 1:
        return False
    return set(cfg.to_diff_dict()) <= LEAN_CONFIG_KEYS


def _sampling_warpers(cfg: Any) -> Any:
    """The logits warpers ``model.generate`` applies for temperature/top-k/top-p sampling, in its order."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList()
    if cfg.temperature is not None and cfg.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(cfg.temperature))
    if cfg.top_k is not None and cfg.top_k != 0:
        warpers.append(TopKLogitsWarper(top_k=cfg.top_k, min_tokens_to_keep=1))
    if cfg.top_p is not None and cfg.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=cfg.top_p, min_tokens_to_keep=1))
    return warpers


def _lean_generate(lm: LoadedModel, input_ids: torch.Tensor, cfg: Any, settings: GenerationSettings,
                   stop_event: threading.Event | None, streamer: Any = None,
                   governor: ThreadGovernor | None = None) -> tuple[list[int], float | None, float]:
    """Greedy or sampled decoding of one sequence over a ``DynamicCache``, one forward per token.

    The forward passes and the token choice (argmax, or ``generate``'s warpers then
    ``torch.multinomial``) are those of ``model.generate``, so the tokens are the same; what is
    left out is ``generate``'s per-token bookkeeping (input preparation, logits-processor and
    stopping-criteria lists, attention-mask growth). Returns (tokens, first-token time, start time).
    """
    from transformers import DynamicCache

    model = lm.model
    eos = lm.eos_token_ids
    warpers = _sampling_warpers(cfg) if cfg.do_sample else None
    max_new = int(cfg.max_new_tokens)
    tokens: list[int] = []
    first_token_at: float | None = None
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    started = time.perf_counter()
    if streamer is not None:
        streamer.put(input_ids.cpu())
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        out = model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        while True:
            logits = out.logits[:, -1, :].to(dtype=torch.float32)
            if warpers is None:
                next_token = torch.argmax(logits, dim=-1)
            else:
                probs = torch.nn.functional.softmax(warpers(input_ids, logits), dim=-1)
                next_token = torch.multinomial(probs, num_samples=1).squeeze(1)
            token = int(next_token[0])
            tokens.append(token)
            if first_token_at is None:
                first_token_at = time.perf_counter()
            if governor is not None:
                governor.step()
            if streamer is not None:
                streamer.put(next_token.cpu())
            if token in eos or len(tokens) >= max_new or (stop_event is not None and stop_event.is_set()):
                break
            out = model(input_ids=next_token[:, None], past_key_values=cache, use_cache=True)
    if streamer is not None:
        streamer.end()
    return tokens, first_token_at, started


def _lean_generate_batch(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, cfg: Any,
                         stop_event: threading.Event | None, governor: ThreadGovernor | None = None,
                         ) -> tuple[list[list[int]], float | None, float]:
    """Greedy decoding of a left-padded batch that drops each sequence from the batch once it ends.

    ``model.generate`` keeps computing finished sequences (as padding) until the longest one
    ends; here the rows of finished sequences leave the KV cache, the mask and the inputs, so
    each step costs what the unfinished sequences need. Positions follow the attention mask as
    in ``generate``. Returns (tokens per row, first-step time, start time).
    """
    from transformers import DynamicCache

    model = lm.model
    eos = lm.eos_token_ids
    max_new = int(cfg.max_new_tokens)
    count = input_ids.shape[0]
    tokens: list[list[int]] = [[] for _ in range(count)]
    alive = list(range(count))  # original row of each row still in the batch
    first_token_at: float | None = None
    started = time.perf_counter()
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        mask = attention_mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                    use_cache=True, logits_to_keep=1)
        next_positions = positions[:, -1:] + 1
        while True:
            next_tokens = torch.argmax(out.logits[:, -1, :].to(dtype=torch.float32), dim=-1)
            if first_token_at is None:
                first_token_at = time.perf_counter()
            if governor is not None:
                governor.step()
            keep: list[int] = []
            for index, token in enumerate(next_tokens.tolist()):
                row = tokens[alive[index]]
                row.append(token)
                if token not in eos and len(row) < max_new:
                    keep.append(index)
            if not keep or (stop_event is not None and stop_event.is_set()):
                break
            if len(keep) < len(alive):
                chosen = torch.tensor(keep, dtype=torch.long, device=input_ids.device)
                cache.batch_select_indices(chosen)
                mask, next_tokens, next_positions = mask[chosen], next_tokens[chosen], next_positions[chosen]
                alive = [alive[i] for i in keep]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            out = model(input_ids=next_tokens[:, None], attention_mask=mask, position_ids=next_positions,
                        past_key_values=cache, use_cache=True)
            next_positions = next_positions + 1
    return tokens, first_token_at, started


def _run_generate(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  settings: GenerationSettings, stop_event: threading.Event | None,
                  streamer: Any = None, prepared: tuple[Any, dict[str, Any]] | None = None,
                  governor: ThreadGovernor | None = None) -> tuple[torch.Tensor, _StopAndTime, float]:
    cfg, call_kwargs = prepared if prepared is not None else _generation_config(lm, settings)
    call_kwargs = dict(call_kwargs)
    started = time.perf_counter()
    timer = _StopAndTime(stop_event, started, governor)
    criteria = StoppingCriteriaList([timer, *call_kwargs.pop("stopping_criteria", [])])
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    with torch.inference_mode():
        output = lm.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=cfg,
            stopping_criteria=criteria,
            streamer=streamer,
            tokenizer=lm.tokenizer,
            **call_kwargs,
        )
    return output, timer, started


def generate(
    lm: LoadedModel,
    input_ids: list[int],
    settings: GenerationSettings,
    on_text: Callable[[str], None] | None = None,
    stop_event: threading.Event | None = None,
) -> GenerationResult:
    """Generate one sequence (blocking). ``on_text`` receives text pieces as they are decoded.

    Generations on one model run one at a time (``lm.generation_lock``); a request cancelled
    while it waits returns at once with ``finish_reason="cancelled"``.
    """
    with lm.generation_lock:
        if lm.model is None:
            raise RuntimeError(f"model {lm.spec.source.name!r} was unloaded")
        if stop_event is not None and stop_event.is_set():
            return GenerationResult([], "", "cancelled", len(input_ids), 0, None, 0.0)
        governor = apply_threads(lm, settings.num_threads)
        ids = torch.tensor([input_ids], dtype=torch.long, device=lm.input_device)
        streamer = _CallbackStreamer(lm.tokenizer, on_text, lm.tokenizer_lock) if on_text is not None else None
        cfg, call_kwargs = _generation_config(lm, settings)
        if _use_lean_loop(lm, settings, cfg, call_kwargs):
            tokens, first_token_at, started = _lean_generate(lm, ids, cfg, settings, stop_event, streamer, governor)
        else:
            output, timer, started = _run_generate(lm, ids, torch.ones_like(ids), settings, stop_event, streamer,
                                                   (cfg, call_kwargs), governor)
            tokens, first_token_at = output[0, ids.shape[1]:].tolist(), timer.first_token_at
        seconds = time.perf_counter() - started
        cancelled = bool(stop_event is not None and stop_event.is_set())
        finish = _finish_reason(tokens, lm.eos_token_ids, settings.max_new_tokens, cancelled)
        text_tokens = tokens[:-1] if finish == "stop" and tokens and tokens[-1] in lm.eos_token_ids else tokens
        with lm.tokenizer_lock:
            text = lm.tokenizer.decode(text_tokens, skip_special_tokens=True)
    ttft = first_token_at - started if first_token_at is not None else None
    return GenerationResult(tokens, text, finish, len(input_ids), len(tokens), ttft, seconds)


def generate_batch(
    lm: LoadedModel,
    batch: list[list[int]],
    settings: GenerationSettings,
    stop_event: threading.Event | None = None,
) -> list[GenerationResult]:
    """Generate for several prompts in one left-padded batch.

    Greedy decoding with plain settings runs in the engine's batch loop (finished sequences
    leave the batch, see :func:`_lean_generate_batch`); anything else in one ``model.generate``
    call. Each result's ``seconds`` and ``time_to_first_token`` are those of the whole batch.
    """
    if not batch:
        return []
    with lm.generation_lock:
        if lm.model is None:
            raise RuntimeError(f"model {lm.spec.source.name!r} was unloaded")
        governor = apply_threads(lm, settings.num_threads, rows=len(batch))
        width = max(len(ids) for ids in batch)
        pad = lm.pad_token_id
        rows = [[pad] * (width - len(ids)) + list(ids) for ids in batch]
        mask = [[0] * (width - len(ids)) + [1] * len(ids) for ids in batch]
        input_ids = torch.tensor(rows, dtype=torch.long, device=lm.input_device)
        attention_mask = torch.tensor(mask, dtype=torch.long, device=lm.input_device)
        cfg, call_kwargs = _generation_config(lm, settings)
        if settings.greedy and _use_lean_loop(lm, settings, cfg, call_kwargs):
            generated, first_token_at, started = _lean_generate_batch(lm, input_ids, attention_mask, cfg,
                                                                      stop_event, governor)
        else:
            output, timer, started = _run_generate(lm, input_ids, attention_mask, settings, stop_event,
                                                   prepared=(cfg, call_kwargs), governor=governor)
            generated, first_token_at = output[:, width:].tolist(), timer.first_token_at
        seconds = time.perf_counter() - started
        cancelled = bool(stop_event is not None and stop_event.is_set())
        results = []
        for prompt, row in zip(batch, generated):
            tokens = []
            for token in row:  # everything after a sequence's first eos is padding
                tokens.append(token)
                if token in lm.eos_token_ids:
                    break
            finish = _finish_reason(tokens, lm.eos_token_ids, settings.max_new_tokens, cancelled)
            text_tokens = tokens[:-1] if finish == "stop" and tokens and tokens[-1] in lm.eos_token_ids else tokens
            with lm.tokenizer_lock:
                text = lm.tokenizer.decode(text_tokens, skip_special_tokens=True)
            ttft = first_token_at - started if first_token_at is not None else None
            results.append(GenerationResult(tokens, text, finish, len(prompt), len(tokens), ttft, seconds))
    return results
