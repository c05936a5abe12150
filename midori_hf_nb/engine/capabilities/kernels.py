"""CPU kernels: torch's vector capability, oneDNN's native bfloat16 products and the private aten
kernels of weight-only int8/int4 quantization."""

from __future__ import annotations

import torch

from .fallbacks import fallback


def cpu_capability() -> str | None:
    """torch's CPU vector capability (``"AVX2"``, ``"AVX512"``, ...), or None where torch cannot say.

    Relies on ``torch.backends.cpu.get_cpu_capability()`` (torch >= 2.1).
    """
    probe = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    if probe is None:
        fallback("cpu_capability", (
            f"torch {torch.__version__} has no torch.backends.cpu.get_cpu_capability(): the CPU's vector "
            "capability is unknown, so torch_dtype='auto' uses float32 on CPU (bfloat16 would be faster on AVX2)"))
        return None
    return str(probe()).upper()


def cpu_has_native_bf16_gemm() -> bool:
    """True when oneDNN multiplies bfloat16 matrices natively here (AVX512-BF16 or AMX).

    Relies on the private op ``torch.ops.mkldnn._is_mkldnn_bf16_supported`` (torch 1.x through 2.13).
    """
    try:
        op = torch.ops.mkldnn._is_mkldnn_bf16_supported
    except (AttributeError, RuntimeError):
        fallback("mkldnn_bf16", (
            f"torch {torch.__version__} has no torch.ops.mkldnn._is_mkldnn_bf16_supported: bfloat16 "
            "layers on CPU use the engine's widening product (correct, possibly slower than oneDNN's native one)"))
        return False
    return bool(op())


#: The private aten kernels behind ``quantize_weights`` (torch 2.4 through 2.13).
INT8_KERNEL = "_weight_int8pack_mm"
INT4_KERNELS = ("_convert_weight_to_int4pack_for_cpu", "_weight_int4pack_mm_for_cpu")


def missing_weight_kernels(kind: str) -> list[str]:
    """The aten kernels ``quantize_weights=kind`` needs that this torch lacks (empty: all there)."""
    names = [INT8_KERNEL] if kind == "int8" else list(INT4_KERNELS)
    return [name for name in names if not hasattr(torch.ops.aten, name)]


def int8_weight_matmul(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``(x @ qweight.T) * scale`` by torch's weight-only int8 kernel (``aten._weight_int8pack_mm``)."""
    return torch.ops.aten._weight_int8pack_mm(x, qweight, scale)


def int4_pack(q: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit values (int32, 0..15) for :func:`int4_weight_matmul`
    (``aten._convert_weight_to_int4pack_for_cpu``, inner k tiles of 1)."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)


def int4_weight_matmul(x: torch.Tensor, packed: torch.Tensor, group_size: int,
                       scales_and_zeros: torch.Tensor) -> torch.Tensor:
    """``x @ W.T`` for int4 weights packed by :func:`int4_pack`, ``W = (q - 8) * scale + zero``
    per group (``aten._weight_int4pack_mm_for_cpu``)."""
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group_size, scales_and_zeros)
