"""Token probabilities in the engine: one :class:`Recorder` per generation, which the decode loops
call with each step's raw logits, the scores the token was chosen from, and the chosen tokens.

Free when off: without ``logprobs``/``top_logprobs`` a generation gets no recorder (``None``), and
the loops only test for it once per token. With one, each step costs a few numpy passes over the
vocabulary (the log-normaliser, the entropy, the rank, a top-k; a second normaliser when something
processed the scores) and the token texts, which are cached per tokenizer: a few hundred
microseconds on a CPU, next to tens of milliseconds for the forward pass
(``benchmarks/logprobs.py`` measures both). On an accelerator the same numbers come from torch on
the device (:func:`device_values`), with one small transfer per step.

What each decoder gives the recorder:

* the engine's single-sequence loop (:func:`~.decoders.decode_one`) and the shared loop
  (:mod:`.shared_decode`): the model's logits (float32) before the logits processors, and the
  scores after them and, when sampling, after temperature, top-k and top-p (the distribution the
  token was drawn from); the record of each token is made as it is chosen, so it streams;
* the greedy batch loop (:func:`~.decoders.decode_batch`): the logits, which are also the scores;
* ``model.generate`` (:func:`~.decoders.run_generate`): its documented ``output_logits`` (raw) and
  ``output_scores`` (processed), read once the generation ends. ``generate`` keeps both for every
  step until then (twice the vocabulary in float32 per token and row), so on that path the
  records come with the final answer, not with each streamed piece.

Under a constraint, the grammar's processor logs per step how many tokens it allowed and whether
it forbade the model's own first choice (:meth:`~midori_hf_nb.structured.processor.GrammarLogitsProcessor.track_pressure`).
"""

from __future__ import annotations

import math
import weakref
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from transformers import LogitsProcessor

from ..logprobs.records import MIN_LOGPROB, PromptLogprobs, PromptToken, TokenLogprob, TopLogprob
from . import capabilities

if TYPE_CHECKING:  # pragma: no cover
    from ..logprobs.request import ProbabilityRequest
    from .loaded import LoadedModel

#: Prompt positions scored per forward pass by :func:`prompt_logprobs` (bounds the logits held at once).
PROMPT_CHUNK = 256


# --------------------------------------------------------------------------- token texts


def _byte_decoder() -> dict[str, int]:
    try:
        from transformers.convert_slow_tokenizer import bytes_to_unicode
    except ImportError:  # pragma: no cover - a transformers without it: bytes from the decoded text
        return {}
    return {char: byte for byte, char in bytes_to_unicode().items()}


class TokenTexts:
    """Each token id's text (as the tokenizer decodes it alone) and UTF-8 bytes, cached per tokenizer.

    Byte-level BPE tokens that hold part of a character decode to U+FFFD alone; their bytes come
    from the token's byte-level spelling (GPT-2's byte table), SentencePiece byte tokens
    (``<0xE2>``) from their hex, anything else from the decoded text.
    """

    _decoder: dict[str, int] | None = None

    def __init__(self, tokenizer: Any, lock: Any) -> None:
        self.tokenizer = tokenizer
        self.lock = lock
        self.cache: dict[int, tuple[str, list[int]]] = {}

    def get(self, token_id: int) -> tuple[str, list[int]]:
        found = self.cache.get(token_id)
        if found is None:
            with self.lock:
                text = self.tokenizer.decode([token_id], skip_special_tokens=False)
                piece = self.tokenizer.convert_ids_to_tokens(token_id) if "\ufffd" in text else None
            found = self.cache[token_id] = (text, self._bytes(text, piece))
        return found

    def _bytes(self, text: str, piece: Any) -> list[int]:
        if not isinstance(piece, str):
            return list(text.encode("utf-8"))
        if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            try:
                return [int(piece[3:5], 16)]
            except ValueError:
                pass
        if TokenTexts._decoder is None:
            TokenTexts._decoder = _byte_decoder()
        decoder = TokenTexts._decoder
        if piece and all(char in decoder for char in piece):
            return [decoder[char] for char in piece]
        return list(text.encode("utf-8"))


_TEXTS: "weakref.WeakKeyDictionary[Any, TokenTexts]" = weakref.WeakKeyDictionary()


def token_texts(lm: "LoadedModel") -> TokenTexts:
    """The :class:`TokenTexts` of ``lm``'s tokenizer (one per tokenizer, kept while it lives)."""
    with lm.tokenizer_lock:
        texts = _TEXTS.get(lm.tokenizer)
        if texts is None:
            texts = _TEXTS[lm.tokenizer] = TokenTexts(lm.tokenizer, lm.tokenizer_lock)
    return texts


# --------------------------------------------------------------------------- the recorder


def _as_numpy(scores: torch.Tensor) -> np.ndarray:
    """``(n, vocabulary)`` scores as float32 numpy rows (a view on the CPU when they already are)."""
    return scores.detach().to(device="cpu", dtype=torch.float32).numpy()


def _log_total(scores: np.ndarray) -> tuple[float, float]:
    """(maximum, log of the sum of ``exp(scores - maximum)``) of one row; (-inf, 0) when nothing is finite."""
    top = float(scores.max())
    if top == -math.inf:
        return top, 0.0
    return top, math.log(float(np.exp(scores - top).sum(dtype=np.float64)))


def _row_values(raw: np.ndarray, processed: np.ndarray | None, token: int, top: int,
                ) -> tuple[tuple[float, float, int, float], list[int], list[float], list[float]]:
    """One row's numbers: (raw logprob, processed logprob, rank, entropy), the top ids, their raw and
    processed logprobs.

    Computed with numpy in the calling thread: these are a few passes over the vocabulary, and
    torch would spread each over its intra-op threads, which on a busy CPU waits far longer than
    the work takes (the same reason as the constraint's bitmask, :mod:`~midori_hf_nb.structured.processor`).
    """
    maximum = float(raw.max())
    shifted = raw - maximum
    weights = np.exp(shifted)
    total = float(weights.sum(dtype=np.float64))
    log_total = math.log(total)
    spread = float(np.dot(weights, shifted))
    if math.isnan(spread):  # -inf logits (a masked part of the vocabulary) weigh nothing
        finite = np.isfinite(shifted)
        spread = float(np.dot(weights[finite], shifted[finite]))
    entropy = log_total - spread / total
    logprob = float(shifted[token]) - log_total
    rank = int(np.count_nonzero(raw > raw[token])) + 1
    ids: list[int] = []
    if top:
        count = min(top, raw.shape[-1])
        found = np.argpartition(raw, -count)[-count:]
        ids = found[np.argsort(-raw[found], kind="stable")].tolist()
    top_values = [float(shifted[i]) - log_total for i in ids]
    if processed is None:
        return (logprob, logprob, rank, entropy), ids, top_values, top_values
    p_max, p_log = _log_total(processed)
    processed_value = (lambda i: float(processed[i]) - p_max - p_log) if p_max != -math.inf else (lambda i: -math.inf)
    return (logprob, processed_value(token), rank, entropy), ids, top_values, [processed_value(i) for i in ids]


def device_values(raw: torch.Tensor, processed: torch.Tensor, tokens: torch.Tensor, top: int) -> list[tuple]:
    """What :func:`_row_values` gives for each row, computed by torch where the scores are (an
    accelerator, where these operations are cheap and a copy of the logits to the CPU is not)."""
    with torch.inference_mode():
        raw_lp = torch.log_softmax(raw.float(), dim=-1)
        proc_lp = raw_lp if processed is raw else torch.log_softmax(processed.float(), dim=-1)
        index = tokens.reshape(-1, 1).to(raw_lp.device)
        chosen = raw_lp.gather(1, index)
        parts = [chosen, proc_lp.gather(1, index), (raw_lp > chosen).sum(dim=-1, keepdim=True).float() + 1,
                 torch.special.entr(raw_lp.exp()).sum(dim=-1, keepdim=True)]
        count = min(top, raw_lp.shape[-1])
        ids: list[list[int]] = [[] for _ in range(index.shape[0])]
        if count:
            top_values, top_ids = raw_lp.topk(count, dim=-1)
            parts += [top_values, proc_lp.gather(1, top_ids)]
            ids = top_ids.tolist()
        table = torch.cat(parts, dim=1).tolist()
    return [((row[0], row[1], int(row[2]), row[3]), ids[i], row[4:4 + count], row[4 + count:4 + 2 * count])
            for i, row in enumerate(table)]


def _value(number: float) -> float | None:
    """A log-probability as stored: None for -inf (no chance), never below ``MIN_LOGPROB``."""
    if number == -math.inf or math.isnan(number):
        return None
    return max(MIN_LOGPROB, min(0.0, number))


class Recorder:
    """The token records of one generation of ``rows`` sequences (see the module docstring).

    ``pressure``: the constraint's processor (its per-step log of allowed tokens), or None;
    ``on_record``: called with each record of row 0 as it is made (streaming).
    """

    def __init__(self, request: "ProbabilityRequest", lm: "LoadedModel", rows: int = 1, pressure: Any = None,
                 on_record: Callable[[TokenLogprob], None] | None = None) -> None:
        self.top = int(request.top)
        self.texts = token_texts(lm)
        self.records: list[list[TokenLogprob]] = [[] for _ in range(rows)]
        self.pressure = pressure
        self.on_record = on_record

    def step(self, raw: torch.Tensor, processed: torch.Tensor, tokens: torch.Tensor,
             rows: list[int] | None = None) -> None:
        """Record one step: ``raw`` logits and ``processed`` scores (``(n, vocabulary)``; the same
        tensor when nothing processed them) and the chosen ``tokens`` (``(n,)``) of the rows
        ``rows`` (default ``0..n-1``)."""
        chosen = tokens.reshape(-1).tolist()
        if raw.device.type == "cpu":
            raw_rows = _as_numpy(raw)
            processed_rows = raw_rows if processed is raw else _as_numpy(processed)
            values = [_row_values(raw_rows[i], None if processed is raw else processed_rows[i], int(token), self.top)
                      for i, token in enumerate(chosen)]
        else:  # on an accelerator: the same numbers by torch on the device, one transfer per step
            values = device_values(raw, processed, tokens, self.top)
        for index, row in enumerate(rows if rows is not None else range(len(chosen))):
            self._add(row, int(chosen[index]), *values[index])

    def _add(self, row: int, token: int, values: tuple[float, float, int, float], top_ids: list[int],
             top_values: list[float], top_processed: list[float]) -> None:
        texts = self.texts
        text, data = texts.get(token)
        alternatives = []
        for alternative, value, processed in zip(top_ids, top_values, top_processed):
            alt_text, alt_bytes = texts.get(alternative)
            alternatives.append(TopLogprob(alt_text, _value(value), alt_bytes, alternative, _value(processed)))
        step = len(self.records[row])
        allowed = forbidden = None
        if self.pressure is not None:
            found = self.pressure.pressure_at(step, row)
            if found is not None:
                allowed, forbidden = found
        logprob, processed_logprob, rank, entropy = values
        record = TokenLogprob(text, _value(logprob), data, alternatives, token, _value(processed_logprob), rank,
                              max(0.0, entropy) if math.isfinite(entropy) else None, allowed, forbidden)
        self.records[row].append(record)
        if self.on_record is not None and row == 0:
            self.on_record(record)

    def from_generate(self, logits: tuple[torch.Tensor, ...], scores: tuple[torch.Tensor, ...],
                      generated: torch.Tensor) -> None:
        """Record every step of a ``model.generate`` output: its ``logits`` (raw), ``scores``
        (processed) and ``generated`` tokens (``(rows, steps)``, the prompt left out)."""
        for step, (raw, processed) in enumerate(zip(logits, scores)):
            self.step(raw, processed, generated[:, step])

    def row(self, row: int, length: int) -> list[TokenLogprob]:
        """The first ``length`` records of ``row`` (a sequence cut by the repetition guard, or padded)."""
        return self.records[row][:length]


def new_recorder(lm: "LoadedModel", request: "ProbabilityRequest | None", call_kwargs: dict[str, Any], rows: int = 1,
                 on_record: Callable[[TokenLogprob], None] | None = None) -> Recorder | None:
    """The recorder of a generation, or None when no token probabilities were asked for (the
    decode loops then do no extra work). Under a constraint (its processor is the last of
    ``call_kwargs["logits_processor"]``), the processor starts logging the grammar's pressure."""
    if request is None or not request.tokens:
        return None
    pressure = None
    for processor in call_kwargs.get("logits_processor") or []:
        if hasattr(processor, "track_pressure"):
            processor.track_pressure()
            pressure = processor
    return Recorder(request, lm, rows, pressure, on_record)


# --------------------------------------------------------------------------- the prompt


def prompt_logprobs(lm: "LoadedModel", input_ids: list[int]) -> PromptLogprobs:
    """The log-probability of each prompt token given the tokens before it (None for the first),
    from forward passes over the prompt in chunks of :data:`PROMPT_CHUNK` positions (a KV cache
    carries the context from chunk to chunk where the engine's loop can drive the model)."""
    model = lm.model
    ids = torch.tensor([list(input_ids)], dtype=torch.long, device=lm.input_device)
    length = ids.shape[1]
    values: list[float | None] = [None]
    support = lm.decode_support
    with torch.inference_mode():
        if support.supported:
            cache = capabilities.new_dynamic_cache(model)
            spans = [(start, min(length, start + PROMPT_CHUNK)) for start in range(0, length, PROMPT_CHUNK)]
        else:
            cache, spans = None, [(0, length)]
        for start, end in spans:
            extra = {support.cache_argument: cache, "use_cache": True} if cache is not None else {}
            logits = model(input_ids=ids[:, start:end], **extra).logits[0]
            targets = ids[0, start + 1:end + 1]
            scored = torch.log_softmax(logits[:targets.shape[0]].float(), dim=-1).gather(1, targets[:, None])
            values.extend(_value(v) for v in scored[:, 0].tolist())
    texts = token_texts(lm)
    return PromptLogprobs([PromptToken(texts.get(token)[0], value, token)
                           for token, value in zip(input_ids, values[:length])])


# --------------------------------------------------------------------------- branching


class ForcedTokens(LogitsProcessor):
    """Forces the first ``len(tokens)`` generated tokens, then leaves the scores alone: how an
    answer is continued from a token (:meth:`~midori_hf_nb.logprobs.LogprobsResponse.branch`).
    Made fresh for each generation; every row gets the same tokens."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = [int(t) for t in tokens]
        self.prompt_length: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prompt_length is None:
            self.prompt_length = int(input_ids.shape[1])
        step = int(input_ids.shape[1]) - self.prompt_length
        if step >= len(self.tokens):
            return scores
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.tokens[step]] = 0.0
        return forced


__all__ = ["PROMPT_CHUNK", "ForcedTokens", "Recorder", "TokenTexts", "new_recorder", "prompt_logprobs",
           "token_texts"]
