"""Linear layers for fast CPU decoding: bfloat16 weights with float32 products for many rows,
and int8 / int4 weight-only quantization. Every layer here (and plain ``nn.Linear`` layers turned
into :class:`TiledLinear`) follows the thread's :mod:`.forward_mode` in reproducible generation.
"""

from __future__ import annotations

import threading

import torch


from . import capabilities
from .devices import trim_heap
from .forward_mode import ForwardMode, current, tile_bounds


class QuantizationError(RuntimeError):
    """Quantization was asked for but cannot be done here."""


#: Matrix products with at most this many rows use torch's bfloat16 kernel directly.
BF16_DIRECT_ROWS = 2
#: Elements of the float32 scratch block a bfloat16 weight is widened into (2 MiB).
BF16_BLOCK_ELEMENTS = 1 << 19

_scratch = threading.local()


def exact_rows(x: torch.Tensor, mode: ForwardMode, direct, tile_product) -> torch.Tensor:
    """``x @ W.T`` (``x``: ``[..., in]``) cut as the thread's forward ``mode`` says (see
    :mod:`.forward_mode`): ``direct(rows)`` is the layer's own product for any row count (decode
    with ``tile=0``), ``tile_product(rows, spans)`` computes the rows of each ``(start, stop)``
    span as one product of exactly those rows. Decode tiles are padded with zero rows to a whole
    tile, so every product has the tile's shape."""
    rows = x.numel() // x.shape[-1] if x.dim() else 1
    flat = x.reshape(rows, x.shape[-1])
    if mode.kind == "decode" and mode.tile == 0:
        out = direct(flat)
    else:
        size = mode.tile
        if mode.kind == "decode" and rows % size:
            flat = torch.cat([flat, flat.new_zeros((size - rows % size, flat.shape[1]))])
        out = tile_product(flat, tile_bounds(flat.shape[0], size))[:rows]
    return out.reshape(*x.shape[:-1], out.shape[-1])


class Bf16CpuLinear(torch.nn.Linear):
    """``nn.Linear`` with bfloat16 weights on a CPU without native bfloat16 matrix products.

    Decoding one token (one or two rows) uses torch's bfloat16 kernel, which reads half the
    bytes of float32. Products with more rows (the prompt, a batch) widen the weight block by
    block (2 MiB at a time, in a per-thread scratch buffer that stays in cache) and multiply
    in float32, instead of torch's generic bfloat16 matrix product, which on AVX2 is about 5x
    slower than float32. Both compute in float32 from the same bfloat16 weights and round the
    result to bfloat16. The module keeps its weight (tied weights stay tied).

    In a reproducible forward (:mod:`.forward_mode`) a prefill's tiles are widened products of
    their own rows (each weight block widened once for all tiles), and decoding with ``tile=0``
    uses torch's bfloat16 kernel for any row count (it computes each output as its own dot
    product, so a row's result does not depend on the other rows).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if weight.dtype != torch.bfloat16 or torch.is_grad_enabled():
            return torch.nn.functional.linear(x, weight, self.bias)
        mode = current()
        if mode is not None:
            direct = lambda flat: torch.nn.functional.linear(flat, weight, self.bias)  # noqa: E731
            return exact_rows(x, mode, direct, self._spans_product)
        rows = x.numel() // x.shape[-1] if x.dim() else 1
        if rows <= BF16_DIRECT_ROWS:
            return torch.nn.functional.linear(x, weight, self.bias)
        flat = x.reshape(rows, x.shape[-1])
        return self._widened(flat, [(0, rows)]).reshape(*x.shape[:-1], weight.shape[0])

    def _spans_product(self, flat: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
        """Each span's rows as the product this layer runs for that many rows."""
        small = [(a, b) for a, b in spans if b - a <= BF16_DIRECT_ROWS]
        large = [(a, b) for a, b in spans if b - a > BF16_DIRECT_ROWS]
        if not small:
            return self._widened(flat, large)
        out = self._widened(flat, large) if large else flat.new_empty((flat.shape[0], self.weight.shape[0]))
        for a, b in small:
            out[a:b] = torch.nn.functional.linear(flat[a:b], self.weight, self.bias)
        return out

    def _widened(self, flat: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
        """The float32 product of each span's rows with the weight, widened one block at a time
        (each block once for every span), rounded to ``flat``'s dtype."""
        weight = self.weight
        out_features, in_features = weight.shape
        wide = flat.to(torch.float32)
        out = torch.empty(flat.shape[0], out_features, dtype=torch.float32, device=flat.device)
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
            for a, b in spans:
                out[a:b, start:stop] = wide[a:b] @ widened.t()
        if self.bias is not None:
            out += self.bias.to(torch.float32)
        return out.to(flat.dtype)


class TiledLinear(torch.nn.Linear):
    """A plain ``nn.Linear`` that follows the thread's :mod:`.forward_mode` (a prefill's tiles and
    decode tiles as products of their own rows); outside it, exactly ``nn.Linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = current()
        if mode is None or torch.is_grad_enabled():
            return torch.nn.functional.linear(x, self.weight, self.bias)
        direct = lambda flat: torch.nn.functional.linear(flat, self.weight, self.bias)  # noqa: E731
        return exact_rows(x, mode, direct, lambda flat, spans: torch.cat([direct(flat[a:b]) for a, b in spans]))


def use_tiled_linears(model: torch.nn.Module) -> int:
    """Turn the plain ``nn.Linear`` layers of ``model`` into :class:`TiledLinear` (in place, only
    the class changes); how many changed."""
    changed = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = TiledLinear
            changed += 1
    return changed


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


class _PackedWeightLinear(torch.nn.Module):
    """A linear layer whose weight lives in a packed low-bit form: subclasses give the product."""

    def _product(self, flat: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _rows(self, flat: torch.Tensor) -> torch.Tensor:
        out = self._product(flat)
        return out + self.bias if self.bias is not None else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if flat.dtype != self.activation_dtype:
            flat = flat.to(self.activation_dtype)
        mode = current()
        if mode is not None:
            return exact_rows(flat, mode, self._rows,
                              lambda rows, spans: torch.cat([self._rows(rows[a:b]) for a, b in spans]),
                              ).reshape(*shape[:-1], self.out_features)
        return self._rows(flat).reshape(*shape[:-1], self.out_features)


class Int8WeightLinear(_PackedWeightLinear):
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
        self.activation_dtype = linear.weight.dtype
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def _product(self, flat: torch.Tensor) -> torch.Tensor:
        return capabilities.int8_weight_matmul(flat, self.qweight, self.scale)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


class Int4WeightLinear(_PackedWeightLinear):
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
        self.register_buffer("packed", capabilities.int4_pack(q))
        self.register_buffer("scales_and_zeros",
                             torch.stack([scale.t(), zero.t()], dim=-1).contiguous().to(linear.weight.dtype))
        self.activation_dtype = linear.weight.dtype
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def _product(self, flat: torch.Tensor) -> torch.Tensor:
        return capabilities.int4_weight_matmul(flat, self.packed, self.group_size, self.scales_and_zeros)

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
    missing = capabilities.missing_weight_kernels(kind)
    if missing:
        raise QuantizationError(
            f"quantize_weights={kind!r} needs torch's kernel(s) {', '.join('aten.' + m for m in missing)}, which "
            f"torch {torch.__version__} does not have; use torch 2.4-2.13 or turn quantize_weights off"
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
    trim_heap()
    return replaced
