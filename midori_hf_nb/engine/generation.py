"""Generation: one sequence with live text callbacks, or a left-padded batch, through
``model.generate`` or the engine's own decode loop over the KV cache. Every generation can be
cancelled through a ``threading.Event`` and stops within one token.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Hashable

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from ..settings import GenerationSettings
from . import capabilities
from .prefix_cache import NO_REUSE, kv_bytes_per_token
from .repetition import LoopDetector, RepetitionStop, closing_finish, detector_factory, first_loop_end, loop_guard
from .shared_decode import SharedRequest
from .threads import ThreadGovernor, apply_threads

if TYPE_CHECKING:  # pragma: no cover
    from .loading import LoadedModel


#: ``generate()`` keyword arguments that are not ``GenerationConfig`` attributes.
CALL_KWARGS = frozenset(
    {"logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "negative_prompt_ids",
     "negative_prompt_attention_mask", "assistant_model"}
)


@dataclass
class GenerationResult:
    """What one sequence's generation produced."""

    token_ids: list[int]
    text: str
    finish_reason: str  #: "stop", "length", "cancelled" or "repetition" (the repetition guard ended a loop)
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token: float | None
    seconds: float
    #: "engine" (the engine's own decode loop) or "generate" (``model.generate``)
    decode_path: str = "generate"
    #: why ``model.generate`` ran instead of the engine's loop (None on the engine's path)
    decode_path_reason: str | None = None
    #: when the first token came (``time.perf_counter()``), to time it from an earlier moment
    first_token_at: float | None = None
    #: prompt tokens taken from a kept KV cache of the same owner's previous turn (not prefilled)
    reused_prompt_tokens: int = 0
    #: the most sequences that decoded together with this one (1: it ran alone)
    shared_rows: int = 1
    #: under a constraint, when the repetition guard ended a loop: the tokens of the grammar's shortest
    #: completion written after it, so the answer is complete (None: the guard closed nothing)
    closing_tokens: int | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def decode_tokens_per_second(self) -> float | None:
        """Tokens per second after the first token (the decode phase)."""
        if self.time_to_first_token is None or self.completion_tokens < 2:
            return None
        decode = self.seconds - self.time_to_first_token
        return (self.completion_tokens - 1) / decode if decode > 0 else None


class _StopAndTime(StoppingCriteria):
    """Stops every sequence when ``stop_event`` is set, and records when the first token came."""

    def __init__(self, stop_event: threading.Event | None, started: float, governor: Any = None) -> None:
        self.stop_event = stop_event
        self.started = started
        self.first_token_at: float | None = None
        self.governor = governor

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if self.governor is not None:
            self.governor.step()
        stop = bool(self.stop_event is not None and self.stop_event.is_set())
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def check_generation_kwargs(kwargs: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming any key that ``generate()`` would not understand."""
    reference = GenerationConfig()
    unknown = sorted(k for k in kwargs if k not in CALL_KWARGS and not hasattr(reference, k))
    if unknown:
        raise ValueError(
            f"unknown generation option(s) {', '.join(map(repr, unknown))}: expected attributes of "
            "transformers.GenerationConfig (e.g. repetition_penalty, stop_strings) or one of "
            + ", ".join(sorted(CALL_KWARGS))
        )


def generation_config(lm: LoadedModel, settings: GenerationSettings) -> tuple[Any, dict[str, Any]]:
    """The effective ``GenerationConfig`` and the call keyword arguments of ``settings``.

    Without extra options the config is built once per settings and kept on ``lm``
    (``model.generate`` works on its own copy, so sharing it is safe).
    """
    key = None
    if not settings.extra:
        key = (settings.max_new_tokens, settings.greedy, settings.temperature, settings.top_p, settings.top_k)
        cached = lm.generation_configs.get(key)
        if cached is not None:
            return cached, {}
    config_kwargs = {k: v for k, v in settings.extra.items() if k not in CALL_KWARGS}
    call_kwargs = {k: v for k, v in settings.extra.items() if k in CALL_KWARGS}
    cfg = GenerationConfig.from_dict(lm.base_generation_config.to_dict())
    cfg.max_new_tokens = settings.max_new_tokens
    cfg.max_length = None
    cfg.pad_token_id = lm.pad_token_id
    if settings.greedy:
        cfg.do_sample, cfg.temperature, cfg.top_p, cfg.top_k = False, 1.0, 1.0, 50
    else:
        cfg.do_sample, cfg.temperature, cfg.top_p, cfg.top_k = True, settings.temperature, settings.top_p, settings.top_k
    cfg.update(**config_kwargs)
    if key is not None:
        if len(lm.generation_configs) >= 64:
            lm.generation_configs.clear()
        lm.generation_configs[key] = cfg
    return cfg, call_kwargs


def _finish_reason(tokens: list[int], eos: frozenset[int], max_new_tokens: int, cancelled: bool,
                   repeated: bool = False) -> str:
    if tokens and tokens[-1] in eos:
        return "stop"
    if repeated:
        return "repetition"
    if cancelled:
        return "cancelled"
    return "length" if len(tokens) >= max_new_tokens else "stop"


def _finish(tokens: list[int], eos: frozenset[int], settings: GenerationSettings, cancelled: bool,
            closing: Any = None) -> tuple[list[int], str, int | None]:
    """A sequence's tokens (cut where the repetition guard noticed a loop, which drops the padding
    ``generate`` adds after a row it stopped), its finish reason and its ``closing_tokens`` (under
    a constraint the guard ran in the constraint's processor, whose ``closing`` is given)."""
    closed = closing_finish(tokens, closing, eos)
    if closed is not None:
        return closed[0], "repetition", closed[1]
    loop_end = first_loop_end(tokens, loop_guard(settings))
    if loop_end is not None:
        return tokens[:loop_end], "repetition", None
    return tokens, _finish_reason(tokens, eos, settings.max_new_tokens, cancelled), None


#: ``GenerationConfig`` entries the engine's decode loop honours; any other non-default entry
#: (repetition_penalty, stop_strings, min_new_tokens, ...) sends the call to ``model.generate``.
LEAN_CONFIG_KEYS = frozenset({
    "max_new_tokens", "max_length", "do_sample", "temperature", "top_k", "top_p", "use_cache",
    "output_attentions", "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate",
    "pad_token_id", "bos_token_id", "eos_token_id", "_from_model_config", "transformers_version",
})


@dataclass(frozen=True)
class DecodePath:
    """Which decoder runs a generation: ``"engine"`` (the engine's own loop over the KV cache)
    or ``"generate"`` (``model.generate``), with the reason when it is ``"generate"``."""

    name: str
    reason: str | None = None


ENGINE = DecodePath("engine")


#: ``generate()`` call options the engine's single-sequence loop runs as ``generate`` does.
LEAN_CALL_KWARGS = frozenset({"logits_processor"})


def lean_decode_supported(model: Any) -> bool:
    """True when the engine's own decode loop can drive ``model`` (see
    :func:`~midori_hf_nb.engine.capabilities.decode_loop_support` for what is checked and why)."""
    return capabilities.decode_loop_support(model).supported


def choose_decode_path(lm: LoadedModel, settings: GenerationSettings, cfg: Any, call_kwargs: dict[str, Any],
                       rows: int = 1) -> DecodePath:
    """The decoder for a generation of ``rows`` sequences with these settings, and why.

    The engine's loop runs plain greedy or sampled decoding (temperature, top-k, top-p, seed) of
    one sequence and greedy decoding of a batch; every other case is documented here and takes
    ``model.generate``: ``decode_loop="generate"``, a model the loop cannot drive, ``generate()``
    call options other than ``logits_processor`` (stopping criteria, ...), generation options the
    loop does not honour (repetition_penalty, min_new_tokens, beams, ...), sampled batches and
    batches with logits processors. Logits processors of one sequence run in the engine's loop.
    """
    if settings.decode_loop == "generate":
        return DecodePath("generate", "decode_loop='generate' was set")
    support = lm.decode_support
    if not support.supported:
        return DecodePath("generate", f"the model does not fit the engine's loop: {support.reason}")
    unsupported = sorted(set(call_kwargs) - LEAN_CALL_KWARGS)
    if unsupported:
        return DecodePath("generate", "generate() options the engine's loop does not run: " + ", ".join(unsupported))
    if rows > 1 and call_kwargs:
        return DecodePath("generate", "logits processors in a batch decode through generate")
    unhonoured = sorted(capabilities.changed_generation_options(cfg) - LEAN_CONFIG_KEYS)
    flags = [name for name in ("return_dict_in_generate", "output_scores", "output_logits", "output_attentions",
                               "output_hidden_states") if getattr(cfg, name, False)]
    if cfg.use_cache is False:
        flags.append("use_cache=False")
    if cfg.max_length is not None:
        flags.append("max_length")
    if (cfg.num_beams or 1) != 1 or (cfg.num_return_sequences or 1) != 1:
        flags.append("num_beams/num_return_sequences")
    unhonoured = sorted(set(unhonoured) | set(flags))
    if unhonoured:
        return DecodePath("generate", "generation options the engine's loop does not honour: " + ", ".join(unhonoured))
    if rows > 1 and not settings.greedy:
        return DecodePath("generate", "sampled batches decode through generate")
    if rows > 1 and not capabilities.cache_can_drop_rows():
        reason = "this transformers' DynamicCache has no batch_select_indices"
        capabilities.fallback("batch_select_indices", f"the engine's batch loop is off: {reason}; "
                              "batches decode through model.generate")
        return DecodePath("generate", reason)
    return ENGINE


def with_constraint(lm: LoadedModel, settings: GenerationSettings, call_kwargs: dict[str, Any],
                    rows: int) -> dict[str, Any]:
    """``call_kwargs`` with the settings' constraint (structured output) added as one more logits
    processor, made fresh for this generation of ``rows`` sequences; unchanged without one.

    The engine's single-sequence loop runs it like any logits processor (the decode path stays
    ``"engine"``); a batch with it decodes through ``model.generate``, which runs it per step.
    The processor runs the repetition guard of constrained rows (see :mod:`.repetition`).
    """
    if settings.constraint is None:
        return call_kwargs
    processor = settings.constraint.logits_processor(lm, rows, detector_factory(settings), settings.max_new_tokens)
    return {**call_kwargs, "logits_processor": [*(call_kwargs.get("logits_processor") or []), processor]}


def _closing(settings: GenerationSettings, call_kwargs: dict[str, Any], row: int) -> Any:
    """What the constraint's processor (added last by :func:`with_constraint`) did for ``row``."""
    if settings.constraint is None:
        return None
    return call_kwargs["logits_processor"][-1].closing(row)


def _lean_generate(lm: LoadedModel, input_ids: torch.Tensor, cfg: Any, settings: GenerationSettings,
                   stop_event: threading.Event | None, streamer: Any = None,
                   governor: ThreadGovernor | None = None,
                   processors: Any = None, cache: Any = None,
                   reused: int = 0) -> tuple[list[int], float | None, float, Any]:
    """Greedy or sampled decoding of one sequence over a ``DynamicCache``, one forward per token.

    The forward passes and the token choice (the caller's logits processors, then argmax, or
    ``generate``'s warpers then ``torch.multinomial``) are those of ``model.generate``, so the
    tokens are the same; what is left out is ``generate``'s per-token bookkeeping (input
    preparation, stopping-criteria lists, attention-mask growth). Logits processors see the
    prompt and the tokens so far, as in ``generate``. ``cache`` (holding the first ``reused``
    prompt positions, see :mod:`.prefix_cache`) is extended instead of a new one, so only the
    rest of the prompt is prefilled. Returns (tokens, first-token time, start time, the cache,
    which then holds the prompt and every token but the last).
    """
    from transformers import LogitsProcessorList

    model = lm.model
    processors = LogitsProcessorList(processors) if processors else None
    cache_argument = lm.decode_support.cache_argument
    eos = lm.eos_token_ids
    warpers = capabilities.sampling_warpers(cfg) if cfg.do_sample else None
    max_new = int(cfg.max_new_tokens)
    guard = loop_guard(settings)
    loops = LoopDetector(guard) if guard is not None else None
    tokens: list[int] = []
    first_token_at: float | None = None
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    started = time.perf_counter()
    if streamer is not None:
        streamer.put(input_ids.cpu())
    length = input_ids.shape[1]
    sequence = None  # prompt and tokens so far, for logits processors (one buffer, filled step by step)
    if processors is not None:
        sequence = torch.empty((1, length + max_new), dtype=torch.long, device=input_ids.device)
        sequence[:, :length] = input_ids
    with torch.inference_mode():
        if cache is None:
            cache, reused = capabilities.new_dynamic_cache(model), 0
        out = model(input_ids=input_ids[:, reused:], use_cache=True, logits_to_keep=1, **{cache_argument: cache})
        while True:
            logits = out.logits[:, -1, :].to(dtype=torch.float32)
            if sequence is not None:
                logits = processors(sequence[:, :length], logits)
            if warpers is None:
                next_token = torch.argmax(logits, dim=-1)
            else:
                probs = torch.nn.functional.softmax(warpers(input_ids, logits), dim=-1)
                next_token = torch.multinomial(probs, num_samples=1).squeeze(1)
            token = int(next_token[0])
            tokens.append(token)
            if sequence is not None:
                sequence[0, length] = token
                length += 1
            if first_token_at is None:
                first_token_at = time.perf_counter()
            if governor is not None:
                governor.step()
            if streamer is not None:
                streamer.put(next_token.cpu())
            if token in eos or len(tokens) >= max_new or (stop_event is not None and stop_event.is_set()):
                break
            if loops is not None and loops.push(token):
                break
            out = model(input_ids=next_token[:, None], use_cache=True, **{cache_argument: cache})
    if streamer is not None:
        streamer.end()
    return tokens, first_token_at, started, cache


def _lean_generate_batch(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, cfg: Any,
                         stop_event: threading.Event | None, governor: ThreadGovernor | None = None,
                         guard: Any = None) -> tuple[list[list[int]], float | None, float]:
    """Greedy decoding of a left-padded batch that drops each sequence from the batch once it ends.

    ``model.generate`` keeps computing finished sequences (as padding) until the longest one
    ends; here the rows of finished sequences leave the KV cache, the mask and the inputs, so
    each step costs what the unfinished sequences need. Positions follow the attention mask as
    in ``generate``. Returns (tokens per row, first-step time, start time).
    """
    model = lm.model
    cache_argument = lm.decode_support.cache_argument
    eos = lm.eos_token_ids
    max_new = int(cfg.max_new_tokens)
    count = input_ids.shape[0]
    tokens: list[list[int]] = [[] for _ in range(count)]
    loops = [LoopDetector(guard) for _ in range(count)] if guard is not None else None
    alive = list(range(count))  # original row of each row still in the batch
    first_token_at: float | None = None
    started = time.perf_counter()
    with torch.inference_mode():
        cache = capabilities.new_dynamic_cache(model)
        mask = attention_mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    logits_to_keep=1, **{cache_argument: cache})
        next_positions = positions[:, -1:] + 1
        while True:
            next_tokens = torch.argmax(out.logits[:, -1, :].to(dtype=torch.float32), dim=-1)
            if first_token_at is None:
                first_token_at = time.perf_counter()
            if governor is not None:
                governor.step()
            keep: list[int] = []
            for index, token in enumerate(next_tokens.tolist()):
                row = tokens[alive[index]]
                row.append(token)
                if token not in eos and len(row) < max_new and not (loops and loops[alive[index]].push(token)):
                    keep.append(index)
            if not keep or (stop_event is not None and stop_event.is_set()):
                break
            if len(keep) < len(alive):
                chosen = torch.tensor(keep, dtype=torch.long, device=input_ids.device)
                cache.batch_select_indices(chosen)
                mask, next_tokens, next_positions = mask[chosen], next_tokens[chosen], next_positions[chosen]
                alive = [alive[i] for i in keep]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            out = model(input_ids=next_tokens[:, None], attention_mask=mask, position_ids=next_positions,
                        use_cache=True, **{cache_argument: cache})
            next_positions = next_positions + 1
    return tokens, first_token_at, started


def _run_generate(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  settings: GenerationSettings, stop_event: threading.Event | None,
                  streamer: Any = None, prepared: tuple[Any, dict[str, Any]] | None = None,
                  governor: ThreadGovernor | None = None) -> tuple[torch.Tensor, _StopAndTime, float]:
    cfg, call_kwargs = prepared if prepared is not None else generation_config(lm, settings)
    call_kwargs = dict(call_kwargs)
    started = time.perf_counter()
    timer = _StopAndTime(stop_event, started, governor)
    criteria = StoppingCriteriaList([timer, *call_kwargs.pop("stopping_criteria", [])])
    if loop_guard(settings) is not None:
        criteria.append(RepetitionStop(settings.repetition_guard, input_ids.shape[0]))
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    with torch.inference_mode():
        output = lm.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=cfg,
            stopping_criteria=criteria,
            streamer=streamer,
            tokenizer=lm.tokenizer,
            **call_kwargs,
        )
    return output, timer, started


def generate(
    lm: LoadedModel,
    input_ids: list[int],
    settings: GenerationSettings,
    on_text: Callable[[str], None] | None = None,
    stop_event: threading.Event | None = None,
    reuse_key: Hashable | None = None,
) -> GenerationResult:
    """Generate one sequence (blocking). ``on_text`` receives text pieces as they are decoded.

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
            return _generate_shared(lm, input_ids, settings, cfg, call_kwargs, on_text, stop_event, reuse_key)
    with lm.generation_lock:
        if lm.model is None:
            raise RuntimeError(f"model {lm.spec.source.name!r} was unloaded")
        if stop_event is not None and stop_event.is_set():
            return GenerationResult([], "", "cancelled", len(input_ids), 0, None, 0.0)
        governor = apply_threads(lm, settings.num_threads)
        ids = torch.tensor([input_ids], dtype=torch.long, device=lm.input_device)
        streamer = (capabilities.callback_streamer(lm.tokenizer, on_text, lm.tokenizer_lock)
                    if on_text is not None else None)
        cfg, call_kwargs = generation_config(lm, settings)
        call_kwargs = with_constraint(lm, settings, call_kwargs, 1)
        path = choose_decode_path(lm, settings, cfg, call_kwargs)
        reused = 0
        if path is ENGINE:
            keep = reuse_key is not None and lm.prefix_support.supported
            found = lm.prefix_caches.take(reuse_key, input_ids) if keep else NO_REUSE
            reused = found.reused
            tokens, first_token_at, started, cache = _lean_generate(
                lm, ids, cfg, settings, stop_event, streamer, governor, call_kwargs.get("logits_processor"),
                found.cache, reused)
            if keep and tokens:
                held = list(input_ids) + tokens[:-1]
                if capabilities.cache_length(cache) == len(held):
                    lm.prefix_caches.put(reuse_key, held, cache, kv_bytes_per_token(lm.model))
        else:
            output, timer, started = _run_generate(lm, ids, torch.ones_like(ids), settings, stop_event, streamer,
                                                   (cfg, call_kwargs), governor)
            tokens, first_token_at = output[0, ids.shape[1]:].tolist(), timer.first_token_at
        seconds = time.perf_counter() - started
        cancelled = bool(stop_event is not None and stop_event.is_set())
        tokens, finish, closed = _finish(tokens, lm.eos_token_ids, settings, cancelled,
                                         _closing(settings, call_kwargs, 0))
        text_tokens = tokens[:-1] if tokens and tokens[-1] in lm.eos_token_ids else tokens
        with lm.tokenizer_lock:
            text = lm.tokenizer.decode(text_tokens, skip_special_tokens=True)
    ttft = first_token_at - started if first_token_at is not None else None
    return GenerationResult(tokens, text, finish, len(input_ids), len(tokens), ttft, seconds, path.name, path.reason,
                            first_token_at, reused, closing_tokens=closed)


def _generate_shared(lm: LoadedModel, input_ids: list[int], settings: GenerationSettings, cfg: Any,
                     call_kwargs: dict[str, Any], on_text: Callable[[str], None] | None,
                     stop_event: threading.Event | None, reuse_key: Hashable | None) -> GenerationResult:
    """:func:`generate` through the model's shared decode loop."""
    if stop_event is not None and stop_event.is_set():
        return GenerationResult([], "", "cancelled", len(input_ids), 0, None, 0.0)
    streamer = (capabilities.callback_streamer(lm.tokenizer, on_text, lm.tokenizer_lock)
                if on_text is not None else None)
    processors = call_kwargs.get("logits_processor")
    if processors:
        from transformers import LogitsProcessorList

        processors = LogitsProcessorList(processors)
    request = lm.shared_decoder.run(SharedRequest(list(input_ids), settings, cfg, processors or None, streamer,
                                                  stop_event, reuse_key))
    if request.error is not None:
        raise request.error
    tokens = request.tokens
    started = request.started if request.started is not None else time.perf_counter()
    seconds = time.perf_counter() - started
    cancelled = bool(stop_event is not None and stop_event.is_set())
    finish = _finish_reason(tokens, lm.eos_token_ids, settings.max_new_tokens, cancelled, request.repeated)
    closed = closing_finish(tokens, _closing(settings, call_kwargs, 0), lm.eos_token_ids)
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
    leave the batch, see :func:`_lean_generate_batch`); anything else in one ``model.generate``
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
            generated, first_token_at, started = _lean_generate_batch(lm, input_ids, attention_mask, cfg,
                                                                      stop_event, governor, loop_guard(settings))
        else:
            output, timer, started = _run_generate(lm, input_ids, attention_mask, settings, stop_event,
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
            tokens, finish, closed = _finish(tokens, lm.eos_token_ids, settings, cancelled,
                                             _closing(settings, call_kwargs, index))
            text_tokens = tokens[:-1] if tokens and tokens[-1] in lm.eos_token_ids else tokens
            with lm.tokenizer_lock:
                text = lm.tokenizer.decode(text_tokens, skip_special_tokens=True)
            ttft = first_token_at - started if first_token_at is not None else None
            results.append(GenerationResult(tokens, text, finish, len(prompt), len(tokens), ttft, seconds,
                                            path.name, path.reason, first_token_at, closing_tokens=closed))
    return results
