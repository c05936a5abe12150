"""Rows of an agent that batches (``generate_batch``): the rows of one setting, a batch at a time.

Batches run in the calling thread (``generate_batch`` blocks), so an interrupt stops the
running batch within a token. The ``k``-th batch of each setting runs with ``seed + k``; a
reproducible batch gives each row a seed of its own instead (row ``j`` of a setting, counted
over its batches, gets ``seed + j``), so a row's answer does not depend on how the rows were
batched. A batch that fails is retried one row at a time, so only the failing rows get an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..config import DEFAULTS
from .agents import new_tokens_for, reproducible_for
from .rows import Outcome, Row

#: Batch size for a batching agent that exposes no loaded model to size batches from.
DEFAULT_BATCH_SIZE = 8


@dataclass
class Batch:
    """Rows that run in one ``generate_batch`` call, with the setting and seed of the call."""

    rows: list[Row]
    setting: dict[str, Any]
    seed: int | None
    #: the call's ``reproducible`` override (None: not passed)
    reproducible: bool | None = None
    #: one seed per row (reproducible batches: row ``j`` of a setting gets ``seed + j``), else None
    seeds: list[int] | None = None

    @property
    def overrides(self) -> dict[str, Any]:
        """The call's keyword arguments: the setting, the seed (or one per row) when there is one,
        ``reproducible`` when set."""
        overrides = dict(self.setting)
        if self.seeds is not None:
            overrides["seeds"] = list(self.seeds)
        elif self.seed is not None:
            overrides["seed"] = self.seed
        if self.reproducible is not None:
            overrides["reproducible"] = self.reproducible
        return overrides

    def seed_of(self, index: int) -> int | None:
        """The seed row ``index`` of the batch ran with (the ``seed`` column)."""
        return self.seeds[index] if self.seeds is not None else self.seed

    def alone(self, index: int) -> "Batch":
        """Row ``index`` as a batch of its own, with the same setting and seed."""
        seeds = None if self.seeds is None else [self.seeds[index]]
        return Batch([self.rows[index]], self.setting, self.seed, self.reproducible, seeds)


def setting_groups(rows: list[Row]) -> list[list[Row]]:
    """Rows grouped by setting, in the order the settings first appear."""
    groups: dict[int, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.setting_index, []).append(row)
    return list(groups.values())


def suggested_size(agent: Any, rows: list[Row]) -> int:
    """A batch size for ``rows`` (one setting) from the free memory: the engine's
    :func:`~midori_hf_nb.engine.suggest_batch_size` on the agent's loaded model."""
    lm = getattr(agent, "loaded_model", None)
    if lm is None:
        return DEFAULT_BATCH_SIZE
    from ..engine import estimate_prompt_tokens, suggest_batch_size

    setting = rows[0].setting
    new_tokens = new_tokens_for(agent, setting, default=DEFAULTS["max_new_tokens"])
    texts = [f"{row.payload.system_context}\n{row.payload.user_message}" for row in rows]
    return suggest_batch_size(lm, estimate_prompt_tokens(lm, texts), new_tokens)


def batches(agent: Any, rows: list[Row], batch_size: int | None, seed: int | None,
            reproducible: bool | None = None) -> Iterator[Batch]:
    """The batches of an agent's rows: each setting's rows cut into ``batch_size`` pieces
    (chosen from the free memory when None), batch ``k`` of a setting seeded ``seed + k``, each
    asking for reproducible answers as :func:`~.agents.reproducible_for` says (``reproducible``:
    the comparison's own option)."""
    for group in setting_groups(rows):
        size = batch_size if batch_size is not None else suggested_size(agent, group)
        exact = reproducible_for(agent, group[0].setting, seed, reproducible)
        for k, start in enumerate(range(0, len(group), size)):
            rows_k = group[start:start + size]
            if exact and seed is not None:  # a seed per row: a row's answer does not depend on its batch
                yield Batch(rows_k, group[0].setting, seed + start, exact, [seed + start + j for j in range(len(rows_k))])
            else:
                yield Batch(rows_k, group[0].setting, None if seed is None else seed + k, exact)


def run_batch(agent: Any, batch: Batch, tools: list[Any] | None,
              next_batch: Callable[[], int]) -> list[tuple[Row, Outcome]]:
    """Run one batch; when it fails, run its rows one by one so only the failing rows fail.

    ``next_batch`` numbers each ``generate_batch`` call (the ``batch`` column).
    """
    overrides = batch.overrides
    try:
        responses = agent.generate_batch([row.payload for row in batch.rows], tools=tools, **overrides)
    except Exception as exc:
        if len(batch.rows) == 1:
            return [(batch.rows[0], Outcome(error=exc, seed=batch.seed_of(0), batch=next_batch(), batch_size=1))]
        return [run_alone(agent, batch.alone(index), tools, next_batch()) for index in range(len(batch.rows))]
    number = next_batch()
    size = len(batch.rows)
    return [(row, Outcome(response=response, seed=batch.seed_of(index), batch=number, batch_size=size))
            for index, (row, response) in enumerate(zip(batch.rows, responses))]


def run_alone(agent: Any, batch: Batch, tools: list[Any] | None, number: int) -> tuple[Row, Outcome]:
    """The one row of ``batch`` (a row of a failed batch, see :meth:`Batch.alone`)."""
    row = batch.rows[0]
    try:
        response = agent.generate_batch([row.payload], tools=tools, **batch.overrides)[0]
    except Exception as exc:
        return row, Outcome(error=exc, seed=batch.seed_of(0), batch=number, batch_size=1)
    return row, Outcome(response=response, seed=batch.seed_of(0), batch=number, batch_size=1)


__all__ = ["Batch", "DEFAULT_BATCH_SIZE", "batches", "run_alone", "run_batch", "setting_groups", "suggested_size"]
