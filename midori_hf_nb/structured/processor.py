"""The constraint as a transformers ``LogitsProcessor``: the engine's own decode loop and
``model.generate`` (batched included) run it alike.

Each call follows every row's tokens since the last call through its :class:`~.backend.Matcher`,
asks it for the allowed next tokens and sets every other logit to ``-inf``. A row whose grammar
is complete allows only its end-of-sequence tokens; a finished row (``generate`` pads it) allows
them too and is not followed further.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor

from . import backend
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
    """Constrains each of ``rows`` sequences to a grammar (one :class:`~.backend.Matcher` per row).

    Made fresh for every generation by the engine (:func:`~midori_hf_nb.engine.decode_path.with_constraint`); it keeps the
    state of that generation's rows and must not be reused.
    """

    def __init__(self, constraint: GrammarConstraint, lltokenizer: Any, rows: int, width: int,
                 eos_ids: tuple[int, ...], resumed: int = 0) -> None:
        self.constraint = constraint
        self.width = int(width)
        self.eos_ids = tuple(eos_ids)
        self.matchers = [backend.Matcher(lltokenizer, constraint.grammar) for _ in range(rows)]
        self.bitmask = np.zeros((rows, backend.bitmask_words(self.width)), dtype=np.int32)
        self.prompt_length: int | None = None
        self.seen = 0  # tokens after the prompt followed so far
        #: tokens at the end of the first input that belong to the answer (a continued generation)
        self.resumed = max(0, int(resumed))

    @classmethod
    def for_model(cls, constraint: GrammarConstraint, lm: Any, rows: int, resumed: int = 0) -> "GrammarLogitsProcessor":
        """A processor for a loaded model (:class:`~midori_hf_nb.engine.LoadedModel`); ``resumed``:
        how many tokens at the end of the first input are answer already (followed first)."""
        width = logits_width(lm)
        eos_ids = tuple(sorted(lm.eos_token_ids))
        lltokenizer = backend.tokenizer_for(lm.tokenizer, width, eos_ids, getattr(lm, "tokenizer_lock", None))
        return cls(constraint, lltokenizer, rows, width, eos_ids, resumed)

    def _follow(self, input_ids: torch.Tensor) -> None:
        if self.prompt_length is None:
            self.prompt_length = int(input_ids.shape[1]) - min(self.resumed, int(input_ids.shape[1]))
            if not self.resumed:
                return
        new = input_ids[:, self.prompt_length + self.seen:].tolist()
        for matcher, tokens in zip(self.matchers, new):
            for token in tokens:
                if matcher.stopped:
                    break
                if not matcher.consume(token):
                    raise StructuredOutputError(
                        f"the constraint ({self.constraint.label}) refused token {token}: {matcher.error}")
        self.seen = int(input_ids.shape[1]) - self.prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != len(self.matchers):
            raise StructuredOutputError(f"the constraint was made for {len(self.matchers)} sequences, "
                                        f"got {input_ids.shape[0]}")
        self._follow(input_ids)
        self.bitmask.fill(0)
        for row, matcher in enumerate(self.matchers):
            if matcher.stopped:  # finished (or padded by generate): only an end token
                words = self.bitmask.view(np.uint32)
                for eos in self.eos_ids:
                    words[row, eos // 32] |= np.uint32(1 << (eos % 32))
            else:
                matcher.fill(self.bitmask, row)
        return masked(scores, allowed_tokens(self.bitmask, scores.shape[-1]))


__all__ = ["GrammarLogitsProcessor", "allowed_tokens", "logits_width", "masked"]
