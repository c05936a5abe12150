"""Generation: one sequence with live text callbacks, or a left-padded batch, on the decoder
:mod:`.decode_path` chooses (:mod:`.decoders`). Every generation can be cancelled through a
``threading.Event`` and stops within one token.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Hashable

import torch

from . import capabilities
from .decode_path import ENGINE, choose_decode_path, closing_of, generation_config, with_constraint
from .decoders import decode_batch, decode_one, run_generate
from .prefix_cache import NO_REUSE, kv_bytes_per_token
from .repetition import closing_finish, loop_guard
from .results import GenerationResult, finish_reason, finish_tokens
from .shared_decode import SharedRequest, decoder_for
from .threads import apply_threads

if TYPE_CHECKING:  # pragma: no cover
    from ..settings import GenerationSettings
    from .loaded import LoadedModel


def generate(
    lm: LoadedModel,
    input_ids: list[int],
    settings: GenerationSettings,
    on_text: Callable[[str], None] | None = None,
    stop_event: threading.Event | None = None,
    reuse_key: Hashable | None = None,
    on_token: Callable[[int], None] | None = None,
    carry: Any = None,
) -> GenerationResult:
    """Generate one sequence (blocking). ``on_text`` receives text pieces as they are decoded,
    ``on_token`` the number of tokens each step brought (both from the generating thread).

    ``carry`` (a :class:`~.capabilities.TextCarry`) joins the text of a generation that continues
    a paused one: the streamer starts from the text the paused one held, and keeps its own held
    text there when it is stopped with ``carry.hold`` set.

    Generations on one model run one at a time (``lm.generation_lock``); a request cancelled
    while it waits returns at once with ``finish_reason="cancelled"``.

    With a ``reuse_key`` (an agent and session, see :mod:`.prefix_cache`) a generation on the
    engine's loop starts from the KV cache that key's previous generation left, cut back to the
    prefix the two prompts share, and leaves its own cache for the next one; the tokens are
    those of a full prefill. ``result.reused_prompt_tokens`` says how many were not prefilled.

    On the engine's loop, generations that overlap in time share one decode loop
    (:mod:`.shared_decode`): a request that arrives while another runs joins it at the next
    step instead of waiting for the whole answer (``lm.share_decoding=False`` turns this off).
    """
    if lm.share_decoding and lm.model is not None:
        cfg, call_kwargs = generation_config(lm, settings)
        call_kwargs = with_constraint(lm, settings, call_kwargs, 1)
        path = choose_decode_path(lm, settings, cfg, call_kwargs)
        if path is ENGINE and capabilities.cache_rows_support():
            return _generate_shared(lm, input_ids, settings, cfg, call_kwargs, on_text, stop_event, reuse_key,
                                    on_token, carry)
    with lm.generation_lock:
        if lm.model is None:
            raise RuntimeError(f"model {lm.spec.source.name!r} was unloaded")
        if stop_event is not None and stop_event.is_set():
            return GenerationResult([], "", "cancelled", len(input_ids), 0, None, 0.0)
        governor = apply_threads(lm, settings.num_threads)
        ids = torch.tensor([input_ids], dtype=torch.long, device=lm.input_device)
        streamer = (capabilities.callback_streamer(lm.tokenizer, on_text, lm.tokenizer_lock, on_token, carry)
                    if on_text is not None else None)
        cfg, call_kwargs = generation_config(lm, settings)
        call_kwargs = with_constraint(lm, settings, call_kwargs, 1)
        path = choose_decode_path(lm, settings, cfg, call_kwargs)
        reused = 0
        if path is ENGINE:
            keep = reuse_key is not None and lm.prefix_support.supported
            found = lm.prefix_caches.take(reuse_key, input_ids) if keep else NO_REUSE
            reused = found.reused
            tokens, first_token_at, started, cache = decode_one(
                lm, ids, cfg, settings, stop_event, streamer, governor, call_kwargs.get("logits_processor"),
                found.cache, reused)
            if keep and tokens:
                held = list(input_ids) + tokens[:-1]
                if capabilities.cache_length(cache) == len(held):
                    lm.prefix_caches.put(reuse_key, held, cache, kv_bytes_per_token(lm.model))
        else:
            output, timer, started = run_generate(lm, ids, torch.ones_like(ids), settings, stop_event, streamer,
                                                  (cfg, call_kwargs), governor)
            tokens, first_token_at = output[0, ids.shape[1]:].tolist(), timer.first_token_at
        seconds = time.perf_counter() - started
        cancelled = bool(stop_event is not None and stop_event.is_set())
        tokens, finish, closed = finish_tokens(tokens, lm.eos_token_ids, settings, cancelled,
                                               closing_of(settings, call_kwargs, 0))
        text_tokens = tokens[:-1] if tokens and tokens[-1] in lm.eos_token_ids else tokens
        with lm.tokenizer_lock:
            text = lm.tokenizer.decode(text_tokens, skip_special_tokens=True)
    ttft = first_token_at - started if first_token_at is not None else None
    return GenerationResult(tokens, text, finish, len(input_ids), len(tokens), ttft, seconds, path.name, path.reason,
                            first_token_at, reused, closing_tokens=closed)


def _generate_shared(lm: LoadedModel, input_ids: list[int], settings: GenerationSettings, cfg: Any,
                     call_kwargs: dict[str, Any], on_text: Callable[[str], None] | None,
                     stop_event: threading.Event | None, reuse_key: Hashable | None,
                     on_token: Callable[[int], None] | None = None, carry: Any = None) -> GenerationResult:
    """:func:`generate` through the model's shared decode loop."""
    if stop_event is not None and stop_event.is_set():
        return GenerationResult([], "", "cancelled", len(input_ids), 0, None, 0.0)
    streamer = (capabilities.callback_streamer(lm.tokenizer, on_text, lm.tokenizer_lock, on_token, carry)
                if on_text is not None else None)
    processors = call_kwargs.get("logits_processor")
    if processors:
        from transformers import LogitsProcessorList

        processors = LogitsProcessorList(processors)
    request = decoder_for(lm).run(SharedRequest(list(input_ids), settings, cfg, processors or None, streamer,
                                                  stop_event, reuse_key))
    if request.error is not None:
        raise request.error
    tokens = request.tokens
    started = request.started if request.started is not None else time.perf_counter()
    seconds = time.perf_counter() - started
    cancelled = bool(stop_event is not None and stop_event.is_set())
    finish = finish_reason(tokens, lm.eos_token_ids, settings.max_new_tokens, cancelled, request.repeated)
    closed = closing_finish(tokens, closing_of(settings, call_kwargs, 0), lm.eos_token_ids)
    if closed is not None:  # the text was decoded from these tokens, less a final end-of-sequence token
        tokens, finish = closed[0], "repetition"
    text = request.text
    first = request.first_token_at
    ttft = first - started if first is not None else None
    return GenerationResult(tokens, text, finish, len(input_ids), len(tokens), ttft, seconds, ENGINE.name, None, first,
                            request.reused, request.peak_rows, closed[1] if closed is not None else None)


def generate_batch(
    lm: LoadedModel,
    batch: list[list[int]],
    settings: GenerationSettings,
    stop_event: threading.Event | None = None,
) -> list[GenerationResult]:
    """Generate for several prompts in one left-padded batch.

    Greedy decoding with plain settings runs in the engine's batch loop (finished sequences
    leave the batch, see :func:`~.decoders.decode_batch`); anything else in one ``model.generate``
    call. Each result's ``seconds`` and ``time_to_first_token`` are those of the whole batch.
    """
    if not batch:
        return []
    with lm.generation_lock:
        if lm.model is None:
            raise RuntimeError(f"model {lm.spec.source.name!r} was unloaded")
        governor = apply_threads(lm, settings.num_threads, rows=len(batch))
        width = max(len(ids) for ids in batch)
        pad = lm.pad_token_id
        rows = [[pad] * (width - len(ids)) + list(ids) for ids in batch]
        mask = [[0] * (width - len(ids)) + [1] * len(ids) for ids in batch]
        input_ids = torch.tensor(rows, dtype=torch.long, device=lm.input_device)
        attention_mask = torch.tensor(mask, dtype=torch.long, device=lm.input_device)
        cfg, call_kwargs = generation_config(lm, settings)
        call_kwargs = with_constraint(lm, settings, call_kwargs, len(batch))
        path = choose_decode_path(lm, settings, cfg, call_kwargs, rows=len(batch))
        if path is ENGINE:
            generated, first_token_at, started = decode_batch(lm, input_ids, attention_mask, cfg,
                                                              stop_event, governor, loop_guard(settings))
        else:
            output, timer, started = run_generate(lm, input_ids, attention_mask, settings, stop_event,
                                                  prepared=(cfg, call_kwargs), governor=governor)
            generated, first_token_at = output[:, width:].tolist(), timer.first_token_at
        seconds = time.perf_counter() - started
        cancelled = bool(stop_event is not None and stop_event.is_set())
        results = []
        for index, (prompt, row) in enumerate(zip(batch, generated)):
            tokens = []
            for token in row:  # everything after a sequence's first eos is padding
                tokens.append(token)
                if token in lm.eos_token_ids:
                    break
            tokens, finish, closed = finish_tokens(tokens, lm.eos_token_ids, settings, cancelled,
                                                   closing_of(settings, call_kwargs, index))
            text_tokens = tokens[:-1] if tokens and tokens[-1] in lm.eos_token_ids else tokens
            with lm.tokenizer_lock:
                text = lm.tokenizer.decode(text_tokens, skip_special_tokens=True)
            ttft = first_token_at - started if first_token_at is not None else None
            results.append(GenerationResult(tokens, text, finish, len(prompt), len(tokens), ttft, seconds,
                                            path.name, path.reason, first_token_at, closing_tokens=closed))
    return results
