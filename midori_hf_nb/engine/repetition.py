"""The repetition guard: notices a generation that loops on one pattern of tokens, so it can end
with ``finish_reason="repetition"`` instead of running on to ``max_new_tokens``.

Pure Python over token ids (no torch): the engine's own decode loops push each new token into a
:class:`LoopDetector`, ``model.generate`` gets it as a stopping criterion
(:class:`RepetitionStop`), and :func:`first_loop_end` tells afterwards, for any path, where a
sequence's loop was noticed.

Under a grammar constraint (structured output) the guard may not leave the answer open: there the
decode loops and ``generate`` do not run it themselves (:func:`loop_guard` is None); the
constraint's logits processor does, and closes a looping answer by a shortest completion of its
grammar (:mod:`midori_hf_nb.structured.closing`). :func:`closing_finish` reads what it did.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import StoppingCriteria

from ..settings import GenerationSettings, RepetitionGuard


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


def loop_guard(settings: GenerationSettings) -> RepetitionGuard | None:
    """The guard the decode loop itself runs: the settings' guard, or None under a constraint
    (whose logits processor runs it, see :func:`detector_factory`)."""
    return settings.repetition_guard if settings.constraint is None else None


def detector_factory(settings: GenerationSettings) -> Any:
    """What makes one row's :class:`LoopDetector` for a constraint's logits processor (None
    without a guard)."""
    guard = settings.repetition_guard
    return (lambda: LoopDetector(guard)) if guard is not None else None


def closing_finish(tokens: list[int], closing: Any, eos: frozenset[int]) -> tuple[list[int], int | None] | None:
    """A constrained sequence's tokens and ``closing_tokens`` after the repetition guard noticed a
    loop in it (``closing``: the processor's :class:`~midori_hf_nb.structured.closing.Closing`);
    its finish reason is then "repetition". None when the guard did not close it: no loop, or a
    closing cut short (cancelled), which finishes as usual.

    A closed sequence keeps its completion (and the end-of-sequence token after it);
    ``closing_tokens`` is the completion's length. A sequence that could not close ends where the
    loop was noticed, with ``closing_tokens`` None.
    """
    if closing is None:
        return None
    if not closing.closed:
        return tokens[:closing.at], None
    end = closing.at + len(closing.tokens)
    if len(tokens) < end:
        return None
    return tokens[:end + 1] if len(tokens) > end and tokens[end] in eos else tokens[:end], len(closing.tokens)


__all__ = ["LoopDetector", "RepetitionStop", "closing_finish", "detector_factory", "first_loop_end", "loop_guard"]
