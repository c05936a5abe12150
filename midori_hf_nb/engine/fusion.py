"""Fused projections: the query/key/value projections of each attention layer, and the gate/up
projections of each MLP, made into one linear layer each at load.

Decoding one token on a CPU runs about two hundred small matrix-vector products per token (seven per
layer), and each one costs a fixed dispatch on top of reading its weights. Fusing the projections
that read the same input makes three products one and two products one (211 to 151 for the
offline default model), with larger, better-vectorised products.

The model's own forward code is left as it is: each original projection is replaced by a
:class:`ProjectionPart`, which asks its :class:`FusedProjection` for its slice of the fused output.
The first part called with an input runs the fused product once; the other parts called with the
same input tensor take their slice of it. A part called with another input (or after its group
was consumed) runs the fused product again: the result is always that part's own projection, and
only the saving depends on the architecture calling the group's projections on one input, one
after another, which is what the modelling code of the architectures in
:data:`FUSABLE_ARCHITECTURES` does (checked per architecture by the tests, on the locked versions).
For other architectures nothing is fused, and :func:`~.capabilities.fallback` says so once.

Fusion happens before weight quantization and the bfloat16 CPU layers, so the fused layer is
quantized (or gets the bfloat16 product) like any other linear layer.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from . import capabilities
from .devices import trim_heap

#: model_type -> groups of projections read from one input: (parent attribute, projection names).
#: Every architecture here calls each group's projections on the same tensor, one after another.
FUSABLE_ARCHITECTURES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    name: (("self_attn", ("q_proj", "k_proj", "v_proj")), ("mlp", ("gate_proj", "up_proj")))
    for name in ("llama", "mistral", "qwen2", "qwen3")
}


class FusedProjection(torch.nn.Module):
    """One linear layer standing for several projections of the same input (their weights
    concatenated by output rows); :class:`ProjectionPart` modules hand out the slices."""

    def __init__(self, linear: torch.nn.Module, sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.linear = linear
        self.sizes = sizes
        self._input: torch.Tensor | None = None
        self._slices: tuple[torch.Tensor, ...] | None = None
        self._taken = 0

    def slice_for(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Output slice ``index`` of the fused product of ``x`` (computed once per input)."""
        if self._input is not x or self._slices is None:
            self._slices = self.linear(x).split(self.sizes, dim=-1)
            self._input, self._taken = x, 0
        result = self._slices[index]
        self._taken += 1
        if self._taken >= len(self.sizes):  # every part has its slice: hold no tensors between steps
            self._input = self._slices = None
        return result

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The whole fused product (every part's output, concatenated)."""
        return self.linear(x)


class ProjectionPart(torch.nn.Module):
    """Stands where one projection was: its output is its slice of the group's fused product."""

    def __init__(self, group: FusedProjection, index: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.index, self.in_features, self.out_features = index, in_features, out_features
        object.__setattr__(self, "group", group)  # not a submodule: the parent holds it once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.slice_for(self.index, x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, part {self.index} of a fused layer"


def _fusable(parts: list[Any]) -> bool:
    first = parts[0]
    if not all(type(p) is torch.nn.Linear for p in parts):  # bitsandbytes layers subclass nn.Linear
        return False
    weights = [p.weight for p in parts]
    if any(w.device.type == "meta" or w.device != first.weight.device or w.dtype != first.weight.dtype
           or w.shape[1] != first.in_features for w in weights):
        return False
    return all((p.bias is None) == (first.bias is None) for p in parts)


def fuse_projections(model: torch.nn.Module, name: str = "model",
                     convert: Callable[[torch.nn.Linear, str], torch.nn.Module] | None = None) -> int:
    """Fuse the query/key/value and gate/up projections of ``model`` in place (see the module
    docstring). ``convert`` turns each fused layer (and its name in the model) into its final form
    (a quantized layer) as soon as it is made, so that only one group's unquantized copy exists at
    a time. Returns how many
    groups were fused; 0 with a :func:`~.capabilities.fallback` warning when the architecture is
    not in :data:`FUSABLE_ARCHITECTURES` or its layers do not have the expected projections."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    groups = FUSABLE_ARCHITECTURES.get(model_type)
    if groups is None:
        capabilities.fallback(f"fused_projections:{model_type}", (
            f"{name} ({type(model).__name__}, model_type {model_type!r}): its query/key/value and gate/up "
            "projections are not fused (the engine knows how to fuse them for "
            f"{', '.join(sorted(FUSABLE_ARCHITECTURES))}); each runs as its own product"))
        return 0
    fused = 0
    with torch.no_grad():
        for module_name, module in list(model.named_modules()):
            for parent_name, names in groups:
                parent = getattr(module, parent_name, None)
                if parent is None or not isinstance(parent, torch.nn.Module):
                    continue
                parts = [getattr(parent, n, None) for n in names]
                if any(p is None for p in parts) or not _fusable(parts):
                    continue
                first = parts[0]
                sizes = tuple(p.out_features for p in parts)
                linear = torch.nn.Linear(first.in_features, sum(sizes), bias=first.bias is not None,
                                         device="meta")
                linear.weight = torch.nn.Parameter(torch.cat([p.weight for p in parts]), requires_grad=False)
                if first.bias is not None:
                    linear.bias = torch.nn.Parameter(torch.cat([p.bias for p in parts]), requires_grad=False)
                where = f"{module_name}.{parent_name}" if module_name else parent_name
                group = FusedProjection(convert(linear, f"{where}.fused_projection.linear")
                                        if convert is not None else linear, sizes)
                parent.fused_projection = group  # registered once, on the parent
                for index, (n, p) in enumerate(zip(names, parts)):
                    setattr(parent, n, ProjectionPart(group, index, p.in_features, p.out_features))
                fused += 1
                if convert is not None and fused % 8 == 0:
                    trim_heap()  # the freed unquantized copies go back to the system, not only to the heap
    if fused == 0:
        capabilities.fallback(f"fused_projections:{model_type}:layout", (
            f"{name} ({type(model).__name__}): no layer has the projections "
            f"{', '.join('/'.join(n) for _, n in groups)} as plain linear layers; each runs as its own product"))
    trim_heap()
    return fused
