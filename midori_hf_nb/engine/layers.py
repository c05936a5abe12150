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

#: Rows of a weight widened to float32 at a time while it is quantized to int8 (a 49k-row output
#: head would otherwise need several float32 copies of itself at once).
INT8_BLOCK_ROWS = 4096


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


#: The buffers that hold a packed layer's weight, by class name (what :mod:`.quantized_cache` saves).
PACKED_BUFFERS = {"Int8WeightLinear": ("qweight", "scale"), "Int4WeightLinear": ("packed", "scales_and_zeros")}


def _stored(stored: dict[str, torch.Tensor] | None, name: str | None, buffers: tuple[str, ...]):
    """The saved buffers of layer ``name`` (see :mod:`.quantized_cache`), or None where any is missing."""
    if stored is None or name is None:
        return None
    found = tuple(stored.get(f"{name}.{b}") for b in buffers)
    return None if any(t is None for t in found) else found


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

    def __init__(self, linear: torch.nn.Linear, stored: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.activation_dtype = linear.weight.dtype
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        if stored is not None and stored[0].shape == linear.weight.shape:  # saved earlier: no quantizing
            self.register_buffer("qweight", stored[0])
            self.register_buffer("scale", stored[1].to(linear.weight.dtype))
            return
        weight = linear.weight.detach()
        qweight = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
        scale = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
        for start in range(0, weight.shape[0], INT8_BLOCK_ROWS):  # blocks of rows: no full float32 copy
            block = weight[start:start + INT8_BLOCK_ROWS].to(torch.float32)
            rows_scale = block.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            qweight[start:start + INT8_BLOCK_ROWS] = torch.round(block / rows_scale[:, None]).clamp(-127, 127)
            scale[start:start + INT8_BLOCK_ROWS] = rows_scale
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale.to(linear.weight.dtype))

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

    def __init__(self, linear: torch.nn.Linear, group_size: int = 32,
                 stored: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        super().__init__()
        rows, cols = linear.weight.shape
        self.in_features, self.out_features, self.group_size = cols, rows, group_size
        self.activation_dtype = linear.weight.dtype
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        if stored is not None and stored[1].shape == (cols // group_size, rows, 2):  # saved earlier
            self.register_buffer("packed", stored[0])
            self.register_buffer("scales_and_zeros", stored[1].to(linear.weight.dtype))
            return
        groups = linear.weight.detach().view(rows, cols // group_size, group_size)
        low, high = groups.aminmax(dim=-1)  # exact in the weight's own dtype: widened afterwards
        low, high = low.to(torch.float32), high.to(torch.float32)
        scale = ((high - low) / 15).clamp_(min=1e-12)
        q = groups.to(torch.float32, copy=True).sub_(low[..., None]).div_(scale[..., None]).round_().clamp_(0, 15)
        q = q.to(torch.int32).view(rows, cols)
        # the kernel computes (q - 8) * scale + zero
        zero = low + 8 * scale
        self.register_buffer("packed", capabilities.int4_pack(q))
        self.register_buffer("scales_and_zeros",
                             torch.stack([scale.t(), zero.t()], dim=-1).contiguous().to(linear.weight.dtype))

    def _product(self, flat: torch.Tensor) -> torch.Tensor:
        return capabilities.int4_weight_matmul(flat, self.packed, self.group_size, self.scales_and_zeros)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"int4 weights in groups of {self.group_size}")


def check_weight_kernels(kind: str, head: str | None = None) -> None:
    """Raise :class:`QuantizationError` naming the aten kernels ``kind`` (and ``head``) need that this torch lacks."""
    kinds = {kind} | ({head} if head else set())
    missing = [name for k in sorted(kinds) for name in capabilities.missing_weight_kernels(k)]
    if missing:
        raise QuantizationError(
            f"quantize_weights={kind!r} needs torch's kernel(s) {', '.join('aten.' + m for m in missing)}, which "
            f"torch {torch.__version__} does not have; use torch 2.4-2.13 or turn quantize_weights off"
        )


def quantized_linear(linear: torch.nn.Linear, kind: str, stored: dict[str, torch.Tensor] | None = None,
                     name: str | None = None) -> torch.nn.Module:
    """``linear`` as an :class:`Int8WeightLinear` (``"int8"``) or :class:`Int4WeightLinear`
    (``"int4"``, when its inputs are a multiple of 32; else ``linear`` itself). With ``stored``
    (packed tensors saved by :mod:`.quantized_cache`) holding layer ``name``, its saved form is
    used instead of quantizing again."""
    if kind == "int8":
        return Int8WeightLinear(linear, stored=_stored(stored, name, PACKED_BUFFERS["Int8WeightLinear"]))
    if linear.in_features % 32 != 0:
        return linear
    return Int4WeightLinear(linear, stored=_stored(stored, name, PACKED_BUFFERS["Int4WeightLinear"]))


def own_memory(model: torch.nn.Module) -> None:
    """Give the parameters and buffers left in ``model`` memory of their own (after quantization).

    Weights loaded from safetensors share one memory map of the file, and every page read stays
    resident while any tensor of the file lives; once the linear layers are quantized, the rest
    (embeddings, norms) would keep the whole map, and so every weight read while quantizing,
    in the process's resident memory. Copying them lets the map go.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _PackedWeightLinear):
                continue
            for param in module.parameters(recurse=False):
                param.data = param.data.clone()
            for name, buffer in list(module.named_buffers(recurse=False)):
                if buffer is not None:
                    setattr(module, name, buffer.clone())


def quantize_weights(model: torch.nn.Module, kind: str, head: str | None = None,
                     stored: dict[str, torch.Tensor] | None = None) -> int:
    """Replace the ``nn.Linear`` layers of ``model`` by :class:`Int8WeightLinear` (``"int8"``:
    every layer, the output head included) or :class:`Int4WeightLinear` (``"int4"``: every layer
    but the output head, whose inputs are a multiple of 32). ``head="int8"`` stores the output
    head as int8 whatever ``kind`` is. Returns how many layers changed.

    An int8 head tied to the input embeddings gets its own copy; the embeddings stay in the
    model's dtype. ``stored``: packed tensors saved earlier (see :func:`quantized_linear`).
    """
    check_weight_kernels(kind, head)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    replaced = 0
    for prefix, module in list(model.named_modules()):
        for name, child in list(module.named_children()):
            if not isinstance(child, torch.nn.Linear):
                continue
            full_name = f"{prefix}.{name}" if prefix else name
            if child is output and head == "int8":
                setattr(module, name, quantized_linear(child, "int8", stored, full_name))
            elif kind == "int8" or (child is not output and child.in_features % 32 == 0):
                setattr(module, name, quantized_linear(child, kind, stored, full_name))
            else:
                continue
            replaced += 1
    if (kind == "int8" or head == "int8") and getattr(model.config, "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False  # the head is its own (int8) tensor now
    trim_heap()
    return replaced
