"""Generation: one sequence with live text callbacks, or a left-padded batch, on the decoder
:mod:`.decode_path` chooses (:mod:`.decoders`). Every generation can be cancelled through a
``threading.Event`` and stops within one token.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Hashable

import torch

from . import capabilities, reproducible
from .decode_path import ENGINE, choose_decode_path, closing_of, generation_config, with_constraint
from .decoders import decode_batch, decode_one, run_generate
from .logprobs import new_recorder, prompt_logprobs
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
    on_record: Callable[[Any], None] | None = None,
) -> GenerationResult:
    """Generate one sequence (blocking). ``on_text`` receives text pieces as they are decoded,
    ``on_token`` the number of tokens each step brought (both from the generating thread).

    ``carry`` (a :class:`~.capabilities.TextCarry`) joins the text of a generation that continues
    a paused one: the streamer starts from the text the paused one held, and keeps its own held
    text there when it is stopped with ``carry.hold`` set.

    With ``settings.probabilities`` (``logprobs``, ``top_logprobs``, ``prompt_logprobs``) the result
    carries a record per token (:mod:`.logprobs`; on the engine's loops ``on_record`` receives each
    as it is made, before its text) and the prompt's log-probabilities (not for a continuation:
    ``settings.answer_so_far`` tokens of its input are answer).

    Generations on one model run one at a time (``lm.generation_lock``); a request cancelled
    while it waits returns at once with ``finish_reason="cancelled"``.

    With a ``reuse_key`` (an agent and session, see :mod:`.prefix_cache`) a generation on the
    engine's loop starts from the KV cache that key's previous generation left, cut back to the
    prefix the two prompts share, and leaves its own cache for the next one; the tokens are
    those of a full prefill. ``result.reused_prompt_tokens`` says how many were not prefilled.

    On the engine's loop, generations that overlap in time share one decode loop
    (:mod:`.shared_decode`): a request that arrives while another runs joins it at the next
    step instead of waiting for the whole answer (``lm.share_decoding=False`` turns this off).

    With ``settings.reproducible`` the answer is the same alone, batched, concurrently or from a
    kept cache (:mod:`.reproducible`); ``result.reproducible`` says whether that holds, and
    ``result.reproducible_reason`` why not.
    """
    if lm.share_decoding and lm.model is not None:
        cfg, call_kwargs = generation_config(lm, settings)
        call_kwargs = with_constraint(lm, settings, call_kwargs, 1)
        path = choose_decode_path(lm, settings, cfg, call_kwargs)
        if path is ENGINE and capabilities.cache_rows_support():
            prompt = _prompt_logprobs(lm, settings, input_ids, locked=False)
            return _generate_shared(lm, input_ids, settings, cfg, call_kwargs, on_text, stop_event, reuse_key,
                                    on_token, carry, on_record, prompt)
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
        prompt = _prompt_logprobs(lm, settings, input_ids, locked=True)
        recorder = new_recorder(lm, settings.probabilities, call_kwargs, 1, on_record)
        reused = 0
        unreproducible = reproducible.call_reason(lm, settings, engine_path=path is ENGINE)
        if path is ENGINE:
            exact = reproducible.support(lm) if settings.reproducible else None
            exact = exact if exact is not None and exact.supported else None
            keep = reuse_key is not None and lm.prefix_support.supported
            tile = reproducible.PREFILL_TILE if exact is not None else None
            found = (lm.prefix_caches.take(reuse_key, input_ids, tile, continuation=settings.answer_so_far > 0)
                     if keep else NO_REUSE)
            reused = found.reused
            first = (reproducible.first_forward(exact, settings, len(input_ids), reused, found.exact)
                     if exact is not None else None)
            tokens, first_token_at, started, cache, inexact = decode_one(
                lm, ids, cfg, settings, stop_event, streamer, governor, call_kwargs.get("logits_processor"),
                found.cache, reused, exact, first, recorder)
            unreproducible = unreproducible or (first.reason if first is not None else None) or inexact
            if keep and tokens:
                held = list(input_ids) + tokens[:-1]
                if capabilities.cache_length(cache) == len(held):
                    lm.prefix_caches.put(reuse_key, held, cache, kv_bytes_per_token(lm.model),
                                         first.exact if first is not None else 0, unreproducible is None)
        else:
            output, timer, started = run_generate(lm, ids, torch.ones_like(ids), settings, stop_event, streamer,
                                                  (cfg, call_kwargs), governor, recorder)
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
                            first_token_at, reused, closing_tokens=closed,
                            logprobs=recorder.row(0, len(tokens)) if recorder is not None else None,
                            prompt_logprobs=prompt, reproducible=unreproducible is None,
                            reproducible_reason=unreproducible)


def _prompt_logprobs(lm: LoadedModel, settings: GenerationSettings, input_ids: list[int], *, locked: bool) -> Any:
    """The prompt's log-probabilities when ``prompt_logprobs`` was asked for (else None); takes
    the model's lock unless the caller holds it."""
    request = settings.probabilities
    if request is None or not request.prompt or settings.answer_so_far:
        return None
    if locked:
        return prompt_logprobs(lm, input_ids)
    with lm.generation_lock:
        if lm.model is None:
            raise RuntimeError(f"model {lm.spec.source.name!r} was unloaded")
        return prompt_logprobs(lm, input_ids)


def _shared_request(lm: LoadedModel, input_ids: list[int], settings: GenerationSettings, cfg: Any,
                    call_kwargs: dict[str, Any], on_text: Callable[[str], None] | None,
                    stop_event: threading.Event | None, reuse_key: Hashable | None,
                    on_token: Callable[[int], None] | None = None, carry: Any = None,
                    on_record: Callable[[Any], None] | None = None) -> SharedRequest:
    """The shared decode loop's request for one :func:`generate` call (with its token-probability
    recorder when probabilities were asked for)."""
    streamer = (capabilities.callback_streamer(lm.tokenizer, on_text, lm.tokenizer_lock, on_token, carry)
                if on_text is not None else None)
    processors = call_kwargs.get("logits_processor")
    if processors:
        from transformers import LogitsProcessorList

        processors = LogitsProcessorList(processors)
    recorder = new_recorder(lm, settings.probabilities, call_kwargs, 1, on_record)
    return SharedRequest(list(input_ids), settings, cfg, processors or None, streamer, stop_event, reuse_key,
                         recorder=recorder)


def _generate_shared(lm: LoadedModel, input_ids: list[int], settings: GenerationSettings, cfg: Any,
                     call_kwargs: dict[str, Any], on_text: Callable[[str], None] | None,
                     stop_event: threading.Event | None, reuse_key: Hashable | None,
                     on_token: Callable[[int], None] | None = None, carry: Any = None,
                     on_record: Callable[[Any], None] | None = None, prompt: Any = None) -> GenerationResult:
    """:func:`generate` through the model's shared decode loop."""
    if stop_event is not None and stop_event.is_set():
        return GenerationResult([], "", "cancelled", len(input_ids), 0, None, 0.0)
    request = decoder_for(lm).run(_shared_request(lm, input_ids, settings, cfg, call_kwargs, on_text, stop_event,
                                                  reuse_key, on_token, carry, on_record))
    return _shared_result(lm, request, settings, call_kwargs, stop_event, prompt)


def _shared_result(lm: LoadedModel, request: SharedRequest, settings: GenerationSettings,
                   call_kwargs: dict[str, Any], stop_event: threading.Event | None,
                   prompt: Any = None) -> GenerationResult:
    """The :class:`GenerationResult` of a finished shared request (raises its error); ``prompt``:
    the prompt's log-probabilities when they were asked for."""
    input_ids = request.input_ids
    if request.error is not None:
        raise request.error
    tokens = request.tokens
    started = request.started if request.started is not None else time.perf_counter()
    seconds = (request.ended_at or time.perf_counter()) - started
    cancelled = bool(stop_event is not None and stop_event.is_set())
    finish = finish_reason(tokens, lm.eos_token_ids, settings.max_new_tokens, cancelled, request.repeated)
    closed = closing_finish(tokens, closing_of(settings, call_kwargs, 0), lm.eos_token_ids)
    if closed is not None:  # the text was decoded from these tokens, less a final end-of-sequence token
        tokens, finish = closed[0], "repetition"
    text = request.text
    first = request.first_token_at
    ttft = first - started if first is not None else None
    return GenerationResult(tokens, text, finish, len(input_ids), len(tokens), ttft, seconds, ENGINE.name, None, first,
                            request.reused, request.peak_rows, closed[1] if closed is not None else None,
                            request.recorder.row(0, len(tokens)) if request.recorder is not None else None, prompt,
                            request.unreproducible is None, request.unreproducible)


def generate_batch(
    lm: LoadedModel,
    batch: list[list[int]],
    settings: GenerationSettings,
    stop_event: threading.Event | None = None,
    seeds: list[int] | None = None,
) -> list[GenerationResult]:
    """Generate for several prompts in one left-padded batch.

    Greedy decoding with plain settings runs in the engine's batch loop (finished sequences
    leave the batch, see :func:`~.decoders.decode_batch`); anything else in one ``model.generate``
    call. Each result's ``seconds`` and ``time_to_first_token`` are those of the whole batch.

    With ``settings.reproducible`` each prompt gets the answer it gets alone: the prompts are
    prefilled one by one and decode together in the shared decode loop (each its own timing), or,
    on ``model.generate``'s path or with logits processors of the caller's, run one after another;
    ``seeds`` (reproducible only) gives each prompt its own seed.
    """
    if not batch:
        return []
    if seeds is not None and (not settings.reproducible or len(seeds) != len(batch)):
        raise ValueError("seeds: one seed per prompt, in a reproducible generation only")
    if settings.reproducible:
        rows = [settings] * len(batch) if seeds is None else [replace(settings, seed=seed) for seed in seeds]
        return _reproducible_batch(lm, batch, rows, stop_event)
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
        prompts = [_prompt_logprobs(lm, settings, ids, locked=True) for ids in batch]
        recorder = new_recorder(lm, settings.probabilities, call_kwargs, len(batch))
        if path is ENGINE:
            generated, first_token_at, started = decode_batch(lm, input_ids, attention_mask, cfg,
                                                              stop_event, governor, loop_guard(settings), recorder)
        else:
            output, timer, started = run_generate(lm, input_ids, attention_mask, settings, stop_event,
                                                  prepared=(cfg, call_kwargs), governor=governor, recorder=recorder)
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
                                            path.name, path.reason, first_token_at, closing_tokens=closed,
                                            logprobs=recorder.row(index, len(tokens)) if recorder is not None else None,
                                            prompt_logprobs=prompts[index]))
    return results


def _reproducible_batch(lm: LoadedModel, batch: list[list[int]], rows: list[GenerationSettings],
                        stop_event: threading.Event | None) -> list[GenerationResult]:
    """:func:`generate_batch` in reproducible mode (``rows``: each prompt's settings): every
    prompt as :func:`generate` answers it alone, decoding together in the shared loop where the
    engine's loop runs them. With logits processors of the caller's own (which may keep state
    across the steps of one generation) the prompts run one after another."""
    own_processors = any(settings.extra.get("logits_processor") for settings in rows)
    if lm.share_decoding and lm.model is not None and capabilities.cache_rows_support() and not own_processors:
        prepared = []
        for ids, settings in zip(batch, rows):
            cfg, call_kwargs = generation_config(lm, settings)
            call_kwargs = with_constraint(lm, settings, call_kwargs, 1)
            prepared.append((ids, settings, cfg, call_kwargs))
        if all(choose_decode_path(lm, settings, cfg, kwargs) is ENGINE for _, settings, cfg, kwargs in prepared):
            if stop_event is not None and stop_event.is_set():
                return [GenerationResult([], "", "cancelled", len(ids), 0, None, 0.0) for ids in batch]
            prompts = [_prompt_logprobs(lm, settings, ids, locked=False) for ids, settings, _, _ in prepared]
            requests = [_shared_request(lm, ids, settings, cfg, kwargs, None, stop_event, None)
                        for ids, settings, cfg, kwargs in prepared]
            decoder_for(lm).run_all(requests)
            return [_shared_result(lm, request, settings, kwargs, stop_event, prompt)
                    for request, (_, settings, _, kwargs), prompt in zip(requests, prepared, prompts)]
    return [generate(lm, list(ids), settings, stop_event=stop_event) for ids, settings in zip(batch, rows)]
