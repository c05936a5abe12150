"""Warming a model up before its rows are timed, so the order of the grid does not change the
speed columns.

A model's first generation pays once for what later ones reuse: kernels chosen and compiled for
the shapes, memory pools grown, the thread count measured (``num_threads="auto"``), a server's
caches filled. Timed as a row, that cost makes whichever configuration runs first look slow
(notebook 04 showed 1.5 tokens/s for the first setting against 13.5 for the second; swapping the
settings swapped the figures). :func:`warm_up` runs one short, untimed generation per model before
its rows:

* an agent that batches (``generate_batch``, the local agent): the prompts of its first batch,
  greedy, :data:`WARMUP_TOKENS` new tokens, without the grid's settings (so a logits processor of
  the grid never sees it) -- the same forward passes and batch shape the rows start with (and in
  reproducible mode when the first batch asks for it, which also runs the model's one-time
  reproducibility probe, see :func:`midori_hf_nb.engine.reproducible.support`);
* any other agent, only with ``warmup=True``: one ``invoke`` of its first row's payload (with
  ``max_new_tokens=WARMUP_TOKENS`` when its ``invoke`` takes overrides), whose answer is dropped.
  This is an extra call to a server or a scripted agent, so it is not made by default.

The warm-up's seconds are reported apart (a ``"warmup"`` :class:`~.run.CompareEvent` and
``df.attrs["warmup_seconds"]``), never in a row.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

from ..log.context import context as log_context
from .agents import ModelEntry, offers_batching, takes_overrides
from .batched import batches
from .concurrent import run_coroutine
from .grid import RunOptions
from .rows import Row

#: New tokens of a warm-up generation.
WARMUP_TOKENS = 8


def warm_up(entry: ModelEntry, rows: list[Row], mode: bool | None, batch_size: int | None,
            options: RunOptions | None = None) -> float | None:
    """Run the warm-up of ``entry``'s model for ``rows`` (see the module); returns its seconds, or
    None when none ran. A warm-up that fails is reported as a warning; the rows run and meet (and
    report) the error themselves. ``options``: the comparison's seed and ``reproducible`` option,
    which decide whether the first batch is reproducible."""
    if mode is False or not rows:
        return None
    agent = entry.agent
    started = time.perf_counter()
    try:
        with log_context(log=False):  # an untimed warm-up is not a call of the comparison: not logged
            return _warm_up(agent, rows, mode, batch_size, started, options)
    except Exception as exc:  # the rows run anyway and report their own errors, row by row
        warnings.warn(f"compare: the warm-up of model {entry.label!r} failed ({type(exc).__name__}: {exc}); "
                      "its rows run without it, so its first call's timing includes the first-call costs",
                      RuntimeWarning, stacklevel=2)
        return None


def _warm_up(agent: Any, rows: list[Row], mode: bool | None, batch_size: int | None, started: float,
             options: RunOptions | None) -> float | None:
    if offers_batching(agent):
        seed, asked = (options.seed, options.reproducible) if options is not None else (None, None)
        first = next(batches(agent, rows, batch_size, seed, asked))
        exact = {} if first.reproducible is None else {"reproducible": first.reproducible}
        agent.generate_batch([row.payload for row in first.rows], max_new_tokens=WARMUP_TOKENS, greedy=True, **exact)
    elif mode is True:
        overrides = {"max_new_tokens": WARMUP_TOKENS} if takes_overrides(agent) else {}
        run_coroutine(lambda: agent.invoke(rows[0].payload, **overrides))
    else:
        return None
    return time.perf_counter() - started


__all__ = ["WARMUP_TOKENS", "warm_up"]
