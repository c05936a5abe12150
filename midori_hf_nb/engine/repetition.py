"""The repetition guard: notices a generation that loops on one pattern of tokens, so it can end
with ``finish_reason="repetition"`` instead of running on to ``max_new_tokens``.

Pure Python over token ids (no torch): the engine's own decode loops push each new token into a
:class:`LoopDetector`, ``model.generate`` gets it as a stopping criterion
(:class:`RepetitionStop`), and :func:`first_loop_end` tells afterwards, for any path, where a
sequence's loop was noticed.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import StoppingCriteria

from ..settings import RepetitionGuard


class LoopDetector:
    """Fed one token at a time; :meth:`push` returns True once the tokens so far end in one pattern
    of ``period`` tokens (1 to ``guard.max_period``) repeated ``guard.min_repeats`` times over at
    least ``guard.min_tokens`` tokens.

    For each period ``p`` it keeps how many consecutive tokens equal the token ``p`` places
    before; the repeated stretch is that count plus ``p``. Each push costs ``max_period``
    comparisons.
    """

    def __init__(self, guard: RepetitionGuard) -> None:
        self.guard = guard
        self.tokens: list[int] = []
        self._runs = [0] * (guard.max_period + 1)

    def push(self, token: int) -> bool:
        tokens, runs, guard = self.tokens, self._runs, self.guard
        tokens.append(token)
        last = len(tokens) - 1
        looping = False
        for period in range(1, min(guard.max_period, last) + 1):
            if tokens[last - period] == token:
                runs[period] += 1
                stretch = runs[period] + period
                if stretch >= guard.min_tokens and stretch >= period * guard.min_repeats:
                    looping = True
            else:
                runs[period] = 0
        return looping


def first_loop_end(tokens: list[int], guard: RepetitionGuard | None) -> int | None:
    """How many of ``tokens`` there were when the guard first noticed a loop (None: no loop)."""
    if guard is None:
        return None
    detector = LoopDetector(guard)
    for count, token in enumerate(tokens, start=1):
        if detector.push(int(token)):
            return count
    return None


class RepetitionStop(StoppingCriteria):
    """``model.generate``'s stopping criterion for the guard: one :class:`LoopDetector` per row,
    fed the newest token of each row at every step; a row that loops is finished."""

    def __init__(self, guard: RepetitionGuard, rows: int) -> None:
        self.detectors = [LoopDetector(guard) for _ in range(rows)]

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        newest = input_ids[:, -1].tolist()
        done = [detector.push(token) for detector, token in zip(self.detectors, newest)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


__all__ = ["LoopDetector", "RepetitionStop", "first_loop_end"]
