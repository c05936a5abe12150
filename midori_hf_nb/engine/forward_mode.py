"""How the model forward running on this thread cuts its products and its attention, for
reproducible generation (:mod:`.reproducible`).

A forward outside :func:`forward_mode` runs as it always does. Inside it, the linear layers of
:mod:`.layers` and the attention of :mod:`.capabilities.attention` compute each row so that its
result does not depend on what else the forward computes:

* ``"prefill"``: one sequence's prompt positions in tiles of ``tile`` rows, from the first row of
  the forward (which sits at a multiple of ``tile``): every product and the attention of a tile
  have the same shapes whether the positions before it were prefilled in this forward or came
  from a kept KV cache;
* ``"decode"``: one new token per row; each row's attention runs alone over its own keys (no
  padding of a stacked batch), and products run with ``tile`` rows at a time (rows padded to a
  whole tile), or, with ``tile=0``, each layer's own product for any row count (chosen where
  that product is checked to give every row the same result alone or with other rows).

The state is per thread (generations of other models in other threads are not affected).
Nothing here imports torch.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

_state = threading.local()


@dataclass
class ForwardMode:
    """The mode of the forward running on this thread (see the module docstring)."""

    kind: str  #: "prefill" or "decode"
    tile: int  #: rows per tile (decode: 0 runs each layer's own product for any row count)
    #: why a layer could not keep a row's result independent of the others (empty: it could)
    inexact: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in ("prefill", "decode"):
            raise ValueError(f"kind={self.kind!r} is not allowed: expected 'prefill' or 'decode'")
        if isinstance(self.tile, bool) or not isinstance(self.tile, int) or self.tile < (1 if self.kind == "prefill" else 0):
            raise ValueError(f"tile={self.tile!r} is not allowed: expected an integer >= 1 (>= 0 to decode)")


def current() -> ForwardMode | None:
    """The mode of the forward running on this thread (None: the ordinary forward)."""
    return getattr(_state, "mode", None)


@contextmanager
def forward_mode(mode: ForwardMode | None) -> Iterator[ForwardMode | None]:
    """Run the forwards of the ``with`` block on this thread in ``mode`` (None: unchanged)."""
    previous = getattr(_state, "mode", None)
    _state.mode = mode
    try:
        yield mode
    finally:
        _state.mode = previous


def tile_bounds(rows: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of consecutive tiles of ``size`` rows covering ``rows`` rows (the last one
    shorter when ``size`` does not divide ``rows``)."""
    return [(start, min(rows, start + size)) for start in range(0, rows, size)]


__all__ = ["ForwardMode", "current", "forward_mode", "tile_bounds"]
