"""Devices and dtypes: which device and weight precision a model is loaded in.
"""

from __future__ import annotations

import contextlib
import ctypes

import torch


TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}


class DeviceError(RuntimeError):
    """The requested device is not available on this machine."""


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
    return cpu_has_vector_kernels()


def cpu_has_vector_kernels() -> bool:
    """True when torch runs its own CPU kernels (bfloat16 products, the int4/int8 weight kernels)
    vectorised here: x86 with AVX2 or better. With ``ATEN_CPU_CAPABILITY=default`` (or on a CPU
    torch has no vector kernels for) they run scalar, several times slower than MKL's float32."""
    from .capabilities import cpu_capability

    return cpu_capability() in BF16_FAST_CPU_CAPABILITIES


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


def trim_heap() -> None:
    """Ask glibc to hand freed heap pages back to the OS (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
