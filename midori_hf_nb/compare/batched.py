"""Rows of an agent that batches (``generate_batch``): the rows of one setting, a batch at a time.

Batches run in the calling thread (``generate_batch`` blocks), so an interrupt stops the
running batch within a token. The ``k``-th batch of each setting runs with ``seed + k``. A batch
that fails is retried one row at a time, so only the failing rows get an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..config import DEFAULTS
from .agents import new_tokens_for
from .rows import Outcome, Row

#: Batch size for a batching agent that exposes no loaded model to size batches from.
DEFAULT_BATCH_SIZE = 8


@dataclass
class Batch:
    """Rows that run in one ``generate_batch`` call, with the setting and seed of the call."""

    rows: list[Row]
    setting: dict[str, Any]
    seed: int | None

    @property
    def overrides(self) -> dict[str, Any]:
        """The call's overrides: the setting, and the seed when there is one."""
        return dict(self.setting) if self.seed is None else {**self.setting, "seed": self.seed}


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


def batches(agent: Any, rows: list[Row], batch_size: int | None, seed: int | None) -> Iterator[Batch]:
    """The batches of an agent's rows: each setting's rows cut into ``batch_size`` pieces
    (chosen from the free memory when None), batch ``k`` of a setting seeded ``seed + k``."""
    for group in setting_groups(rows):
        size = batch_size if batch_size is not None else suggested_size(agent, group)
        for k, start in enumerate(range(0, len(group), size)):
            yield Batch(group[start:start + size], group[0].setting, None if seed is None else seed + k)


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
            return [(batch.rows[0], Outcome(error=exc, seed=batch.seed, batch=next_batch(), batch_size=1))]
        return [run_alone(agent, row, batch, tools, next_batch()) for row in batch.rows]
    number = next_batch()
    size = len(batch.rows)
    return [(row, Outcome(response=response, seed=batch.seed, batch=number, batch_size=size))
            for row, response in zip(batch.rows, responses)]


def run_alone(agent: Any, row: Row, batch: Batch, tools: list[Any] | None, number: int) -> tuple[Row, Outcome]:
    """One row of a failed batch, in a batch of its own (same setting and seed)."""
    try:
        response = agent.generate_batch([row.payload], tools=tools, **batch.overrides)[0]
    except Exception as exc:
        return row, Outcome(error=exc, seed=batch.seed, batch=number, batch_size=1)
    return row, Outcome(response=response, seed=batch.seed, batch=number, batch_size=1)


__all__ = ["Batch", "DEFAULT_BATCH_SIZE", "batches", "run_alone", "run_batch", "setting_groups", "suggested_size"]
