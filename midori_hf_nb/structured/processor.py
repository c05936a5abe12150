"""The constraint as a transformers ``LogitsProcessor``: the engine's own decode loop and
``model.generate`` (batched included) run it alike.

Each call follows every row's tokens since the last call through its :class:`~.backend.Matcher`,
asks it for the allowed next tokens and sets every other logit to ``-inf``. A row whose grammar
is complete allows only its end-of-sequence tokens; a finished row (``generate`` pads it) allows
them too and is not followed further.

Under a constraint the repetition guard runs here, not in the decode loop (the loops leave it to
the processor, see :func:`~midori_hf_nb.engine.repetition.loop_guard`): when a row's tokens loop,
the row ends by a shortest completion of its grammar (:mod:`.closing`), forced one token per step,
then an end-of-sequence token, so the answer still parses. When no completion fits in the row's
remaining ``max_new_tokens``, the row ends at once (an end-of-sequence token that the grammar does
not follow). :meth:`GrammarLogitsProcessor.closing` tells what happened to each row.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from transformers import LogitsProcessor

from . import backend
from .closing import Closing, shortest_completion
from .errors import StructuredOutputError
from .formats import GrammarConstraint


def logits_width(lm: Any) -> int:
    """The width of the model's logits (at least the tokenizer's length)."""
    width = len(lm.tokenizer)
    config = getattr(lm.model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    vocab = getattr(config, "vocab_size", None)
    return max(width, int(vocab)) if isinstance(vocab, int) else width


def allowed_tokens(bitmask: np.ndarray, width: int) -> np.ndarray:
    """A (rows, width) boolean array of the tokens a bitmask allows (bit ``i % 32`` of 32-bit word
    ``i // 32``); tokens beyond the bitmask are not allowed.

    Unpacked by numpy in the calling thread: torch would spread these small operations over its
    intra-op threads, which on a busy CPU costs far more than the work itself.
    """
    words = np.ascontiguousarray(bitmask, dtype="<i4")  # little-endian words: byte k holds bits 8k..8k+7
    bits = np.unpackbits(words.view(np.uint8), axis=1, bitorder="little").view(bool)
    if bits.shape[1] >= width:
        return bits[:, :width]
    return np.concatenate([bits, np.zeros((bits.shape[0], width - bits.shape[1]), dtype=bool)], axis=1)


def masked(scores: torch.Tensor, allowed: np.ndarray) -> torch.Tensor:
    """``scores`` with every token ``allowed`` does not allow set to ``-inf`` (a new tensor).

    float32 scores on the CPU (the engine's loop) are masked in numpy; any other dtype or device
    through torch.
    """
    if scores.device.type == "cpu" and scores.dtype == torch.float32:
        values = scores.detach().numpy().copy()
        values[~allowed] = -np.inf
        return torch.from_numpy(values)
    return scores.masked_fill(~torch.from_numpy(allowed).to(scores.device), float("-inf"))


class GrammarLogitsProcessor(LogitsProcessor):
    """Constrains each of ``rows`` sequences to a grammar (one :class:`~.backend.Matcher` per row,
    with the literal bounds unless the constraint turns them off).

    ``new_detector`` makes one repetition-guard detector per row (an object whose ``push(token)``
    returns True once the tokens loop); with it, a looping row is closed (see the module
    docstring) within ``max_new_tokens`` generated tokens.

    Made fresh for every generation by the engine
    (:func:`~midori_hf_nb.engine.decode_path.with_constraint`); it keeps the state of that
    generation's rows and must not be reused.
    """

    def __init__(self, constraint: GrammarConstraint, lltokenizer: Any, rows: int, width: int,
                 eos_ids: tuple[int, ...], new_detector: Callable[[], Any] | None = None,
                 max_new_tokens: int | None = None, resumed: int = 0) -> None:
        self.constraint = constraint
        self.width = int(width)
        self.eos_ids = tuple(eos_ids)
        bounds = backend.literal_bounds_grammar() if constraint.literal_bounds else None
        self.matchers = [backend.Matcher(lltokenizer, constraint.grammar, bounds) for _ in range(rows)]
        self.bitmask = np.zeros((rows, backend.bitmask_words(self.width)), dtype=np.int32)
        self.prompt_length: int | None = None
        self.seen = 0  # tokens after the prompt followed so far
        self.detectors = [new_detector() for _ in range(rows)] if new_detector is not None else None
        self.max_new_tokens = max_new_tokens
        self.generated: list[list[int]] = [[] for _ in range(rows)]  # each row's tokens followed
        self.closings: list[Closing | None] = [None] * rows
        self.ended = [False] * rows  # rows whose end was forced without the grammar following it
        #: tokens at the end of the first input that are answer already (a continued generation):
        #: followed first, as if this processor had seen them generated
        self.resumed = max(0, int(resumed))

    @classmethod
    def for_model(cls, constraint: GrammarConstraint, lm: Any, rows: int,
                  new_detector: Callable[[], Any] | None = None,
                  max_new_tokens: int | None = None, resumed: int = 0) -> "GrammarLogitsProcessor":
        """A processor for a loaded model (:class:`~midori_hf_nb.engine.LoadedModel`); ``resumed``:
        how many tokens at the end of the first input are answer already (``max_new_tokens``
        then counts them too)."""
        width = logits_width(lm)
        eos_ids = tuple(sorted(lm.eos_token_ids))
        lltokenizer = backend.tokenizer_for(lm.tokenizer, width, eos_ids, getattr(lm, "tokenizer_lock", None))
        return cls(constraint, lltokenizer, rows, width, eos_ids, new_detector, max_new_tokens, resumed)

    def closing(self, row: int) -> Closing | None:
        """What the closing rule did for ``row``: None when the guard never noticed a loop in it."""
        return self.closings[row]

    def _close(self, row: int) -> Closing:
        matcher, generated = self.matchers[row], self.generated[row]
        budget = (self.max_new_tokens - len(generated)) if self.max_new_tokens is not None else 1 << 30
        tokens = shortest_completion(matcher, matcher.decode(generated), budget)
        at = max(0, len(generated) - self.resumed)  # counted in this generation's own tokens
        if tokens is None:
            return Closing(at=at, closed=False)
        return Closing(at=at, tokens=tokens)

    def _follow(self, input_ids: torch.Tensor) -> None:
        if self.prompt_length is None:
            self.prompt_length = int(input_ids.shape[1]) - min(self.resumed, int(input_ids.shape[1]))
            if not self.resumed:
                return
        new = input_ids[:, self.prompt_length + self.seen:].tolist()
        for row, (matcher, tokens) in enumerate(zip(self.matchers, new)):
            for token in tokens:
                closing = self.closings[row]
                if self.ended[row] or matcher.stopped:
                    break
                if closing is not None and closing.pending is None and not matcher.accepting:
                    self.ended[row] = True  # the forced end of a row that could not close
                    break
                if not matcher.consume(token):
                    raise StructuredOutputError(
                        f"the constraint ({self.constraint.label}) refused token {token}: {matcher.error}")
                self.generated[row].append(token)
                if closing is not None:
                    if closing.pending is not None:
                        closing.written += 1
                elif self.detectors is not None and self.detectors[row].push(token):
                    self.closings[row] = self._close(row)
        self.seen = int(input_ids.shape[1]) - self.prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != len(self.matchers):
            raise StructuredOutputError(f"the constraint was made for {len(self.matchers)} sequences, "
                                        f"got {input_ids.shape[0]}")
        self._follow(input_ids)
        self.bitmask.fill(0)
        words = self.bitmask.view(np.uint32)
        forced: list[tuple[int, list[int]]] = []
        for row, matcher in enumerate(self.matchers):
            closing = self.closings[row]
            pending = closing.pending if closing is not None else None
            if pending is not None:  # closing: the completion's next token
                forced.append((row, [pending]))
            elif closing is not None or self.ended[row] or matcher.stopped:
                # closed, could not close, or finished (or padded by generate): only an end token
                forced.append((row, list(self.eos_ids)))
            else:
                matcher.fill(self.bitmask, row)
        for row, tokens in forced:
            for token in tokens:
                words[row, token // 32] |= np.uint32(1 << (token % 32))
        out = masked(scores, allowed_tokens(self.bitmask, scores.shape[-1]))
        for row, tokens in forced:  # a forced token stays choosable whatever earlier processors did to it
            for token in tokens:
                if token < out.shape[-1] and not torch.isfinite(out[row, token]):
                    out[row, token] = 0.0
        return out


__all__ = ["GrammarLogitsProcessor", "allowed_tokens", "logits_width", "masked"]
