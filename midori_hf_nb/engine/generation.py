"""Generation: one sequence with live text callbacks, or a left-padded batch, through
``model.generate`` or the engine's own decode loop over the KV cache. Every generation can be
cancelled through a ``threading.Event`` and stops within one token.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList, TextStreamer


from .threads import ThreadGovernor, apply_threads

if TYPE_CHECKING:  # pragma: no cover
    from .loading import LoadedModel


#: ``generate()`` keyword arguments that are not ``GenerationConfig`` attributes.
CALL_KWARGS = frozenset(
    {"logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "negative_prompt_ids",
     "negative_prompt_attention_mask", "assistant_model"}
)


@dataclass
class GenerationSettings:
    """Per-call generation settings (already validated by :class:`HuggingFaceConfig`)."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: torch intra-op threads on CPU: "auto", a count, or None to leave torch's setting alone
    num_threads: int | str | None = None
    #: "auto" (the engine's decode loop when the settings allow it) or "generate" (always model.generate)
    decode_loop: str = "auto"

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0


@dataclass
class GenerationResult:
    """What one sequence's generation produced."""

    token_ids: list[int]
    text: str
    finish_reason: str  #: "stop", "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token: float | None
    seconds: float

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


class _CallbackStreamer(TextStreamer):
    """TextStreamer that hands each finalised piece of text to a callback instead of printing."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None], lock: threading.RLock) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self._on_text = on_text
        self._lock = lock

    def put(self, value: Any) -> None:
        with self._lock:
            super().put(value)

    def end(self) -> None:
        with self._lock:
            super().end()

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self._on_text(text)


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


def _generation_config(lm: LoadedModel, settings: GenerationSettings) -> tuple[Any, dict[str, Any]]:
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


def _finish_reason(tokens: list[int], eos: frozenset[int], max_new_tokens: int, cancelled: bool) -> str:
    if tokens and tokens[-1] in eos:
        return "stop"
    if cancelled:
        return "cancelled"
    return "length" if len(tokens) >= max_new_tokens else "stop"


#: ``GenerationConfig`` entries the engine's decode loop honours; any other non-default entry
#: (repetition_penalty, stop_strings, min_new_tokens, ...) sends the call to ``model.generate``.
LEAN_CONFIG_KEYS = frozenset({
    "max_new_tokens", "max_length", "do_sample", "temperature", "top_k", "top_p", "use_cache",
    "output_attentions", "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate",
    "pad_token_id", "bos_token_id", "eos_token_id", "_from_model_config", "transformers_version",
})


def lean_decode_supported(model: Any) -> bool:
    """True when the engine's own decode loop can drive ``model``.

    That is a decoder-only model that takes ``past_key_values`` and ``logits_to_keep`` (and
    places new tokens after the cached ones), works with a ``DynamicCache`` and prepares its inputs the standard way
    (models that override ``prepare_inputs_for_generation``, such as multimodal or recurrent
    ones, always go through ``model.generate``).
    """
    import inspect

    from transformers.generation.utils import GenerationMixin

    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    try:
        params = inspect.signature(model.forward).parameters
        if not {"input_ids", "past_key_values", "logits_to_keep"} <= set(params):
            return False
        if type(model).prepare_inputs_for_generation is not GenerationMixin.prepare_inputs_for_generation:
            return False
        supports = getattr(model, "_supports_default_dynamic_cache", None)
        return bool(supports()) if callable(supports) else False
    except Exception:
        return False


def _use_lean_loop(lm: LoadedModel, settings: GenerationSettings, cfg: Any, call_kwargs: dict[str, Any]) -> bool:
    if settings.decode_loop == "generate" or not lm.lean_capable or call_kwargs:
        return False
    if cfg.use_cache is False or cfg.return_dict_in_generate or cfg.output_scores or cfg.output_logits:
        return False
    if cfg.output_attentions or cfg.output_hidden_states or cfg.max_length is not None:
        return False
    if (cfg.num_beams or 1) != 1 or (cfg.num_return_sequences or 1) != 1:
        return False
    return set(cfg.to_diff_dict()) <= LEAN_CONFIG_KEYS


def _sampling_warpers(cfg: Any) -> Any:
    """The logits warpers ``model.generate`` applies for temperature/top-k/top-p sampling, in its order."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList()
    if cfg.temperature is not None and cfg.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(cfg.temperature))
    if cfg.top_k is not None and cfg.top_k != 0:
        warpers.append(TopKLogitsWarper(top_k=cfg.top_k, min_tokens_to_keep=1))
    if cfg.top_p is not None and cfg.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=cfg.top_p, min_tokens_to_keep=1))
    return warpers


def _lean_generate(lm: LoadedModel, input_ids: torch.Tensor, cfg: Any, settings: GenerationSettings,
                   stop_event: threading.Event | None, streamer: Any = None,
                   governor: ThreadGovernor | None = None) -> tuple[list[int], float | None, float]:
    """Greedy or sampled decoding of one sequence over a ``DynamicCache``, one forward per token.

    The forward passes and the token choice (argmax, or ``generate``'s warpers then
    ``torch.multinomial``) are those of ``model.generate``, so the tokens are the same; what is
    left out is ``generate``'s per-token bookkeeping (input preparation, logits-processor and
    stopping-criteria lists, attention-mask growth). Returns (tokens, first-token time, start time).
    """
    from transformers import DynamicCache

    model = lm.model
    eos = lm.eos_token_ids
    warpers = _sampling_warpers(cfg) if cfg.do_sample else None
    max_new = int(cfg.max_new_tokens)
    tokens: list[int] = []
    first_token_at: float | None = None
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    started = time.perf_counter()
    if streamer is not None:
        streamer.put(input_ids.cpu())
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        out = model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        while True:
            logits = out.logits[:, -1, :].to(dtype=torch.float32)
            if warpers is None:
                next_token = torch.argmax(logits, dim=-1)
            else:
                probs = torch.nn.functional.softmax(warpers(input_ids, logits), dim=-1)
                next_token = torch.multinomial(probs, num_samples=1).squeeze(1)
            token = int(next_token[0])
            tokens.append(token)
            if first_token_at is None:
                first_token_at = time.perf_counter()
            if governor is not None:
                governor.step()
            if streamer is not None:
                streamer.put(next_token.cpu())
            if token in eos or len(tokens) >= max_new or (stop_event is not None and stop_event.is_set()):
                break
            out = model(input_ids=next_token[:, None], past_key_values=cache, use_cache=True)
    if streamer is not None:
        streamer.end()
    return tokens, first_token_at, started


def _lean_generate_batch(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, cfg: Any,
                         stop_event: threading.Event | None, governor: ThreadGovernor | None = None,
                         ) -> tuple[list[list[int]], float | None, float]:
    """Greedy decoding of a left-padded batch that drops each sequence from the batch once it ends.

    ``model.generate`` keeps computing finished sequences (as padding) until the longest one
    ends; here the rows of finished sequences leave the KV cache, the mask and the inputs, so
    each step costs what the unfinished sequences need. Positions follow the attention mask as
    in ``generate``. Returns (tokens per row, first-step time, start time).
    """
    from transformers import DynamicCache

    model = lm.model
    eos = lm.eos_token_ids
    max_new = int(cfg.max_new_tokens)
    count = input_ids.shape[0]
    tokens: list[list[int]] = [[] for _ in range(count)]
    alive = list(range(count))  # original row of each row still in the batch
    first_token_at: float | None = None
    started = time.perf_counter()
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        mask = attention_mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                    use_cache=True, logits_to_keep=1)
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
                if token not in eos and len(row) < max_new:
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
                        past_key_values=cache, use_cache=True)
            next_positions = next_positions + 1
    return tokens, first_token_at, started


def _run_generate(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  settings: GenerationSettings, stop_event: threading.Event | None,
                  streamer: Any = None, prepared: tuple[Any, dict[str, Any]] | None = None,
                  governor: ThreadGovernor | None = None) -> tuple[torch.Tensor, _StopAndTime, float]:
    cfg, call_kwargs = prepared if prepared is not None else _generation_config(lm, settings)
    call_kwargs = dict(call_kwargs)
    started = time.perf_counter()
    timer = _StopAndTime(stop_event, started, governor)
    criteria = StoppingCriteriaList([timer, *call_kwargs.pop("stopping_criteria", [])])
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
) -> GenerationResult:
    """Generate one sequence (blocking). ``on_text`` receives text pieces as they are decoded.

    Generations on one model run one at a time (``lm.generation_lock``); a request cancelled
    while it waits returns at once with ``finish_reason="cancelled"``.
    """
    with lm.generation_lock:
        if lm.model is None:
            raise RuntimeError(f"model {lm.spec.source.name!r} was unloaded")
        if stop_event is not None and stop_event.is_set():
            return GenerationResult([], "", "cancelled", len(input_ids), 0, None, 0.0)
        governor = apply_threads(lm, settings.num_threads)
        ids = torch.tensor([input_ids], dtype=torch.long, device=lm.input_device)
        streamer = _CallbackStreamer(lm.tokenizer, on_text, lm.tokenizer_lock) if on_text is not None else None
        cfg, call_kwargs = _generation_config(lm, settings)
        if _use_lean_loop(lm, settings, cfg, call_kwargs):
            tokens, first_token_at, started = _lean_generate(lm, ids, cfg, settings, stop_event, streamer, governor)
        else:
            output, timer, started = _run_generate(lm, ids, torch.ones_like(ids), settings, stop_event, streamer,
                                                   (cfg, call_kwargs), governor)
            tokens, first_token_at = output[0, ids.shape[1]:].tolist(), timer.first_token_at
        seconds = time.perf_counter() - started
        cancelled = bool(stop_event is not None and stop_event.is_set())
        finish = _finish_reason(tokens, lm.eos_token_ids, settings.max_new_tokens, cancelled)
        text_tokens = tokens[:-1] if finish == "stop" and tokens and tokens[-1] in lm.eos_token_ids else tokens
        with lm.tokenizer_lock:
            text = lm.tokenizer.decode(text_tokens, skip_special_tokens=True)
    ttft = first_token_at - started if first_token_at is not None else None
    return GenerationResult(tokens, text, finish, len(input_ids), len(tokens), ttft, seconds)


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
        cfg, call_kwargs = _generation_config(lm, settings)
        if settings.greedy and _use_lean_loop(lm, settings, cfg, call_kwargs):
            generated, first_token_at, started = _lean_generate_batch(lm, input_ids, attention_mask, cfg,
                                                                      stop_event, governor)
        else:
            output, timer, started = _run_generate(lm, input_ids, attention_mask, settings, stop_event,
                                                   prepared=(cfg, call_kwargs), governor=governor)
            generated, first_token_at = output[:, width:].tolist(), timer.first_token_at
        seconds = time.perf_counter() - started
        cancelled = bool(stop_event is not None and stop_event.is_set())
        results = []
        for prompt, row in zip(batch, generated):
            tokens = []
            for token in row:  # everything after a sequence's first eos is padding
                tokens.append(token)
                if token in lm.eos_token_ids:
                    break
            finish = _finish_reason(tokens, lm.eos_token_ids, settings.max_new_tokens, cancelled)
            text_tokens = tokens[:-1] if finish == "stop" and tokens and tokens[-1] in lm.eos_token_ids else tokens
            with lm.tokenizer_lock:
                text = lm.tokenizer.decode(text_tokens, skip_special_tokens=True)
            ttft = first_token_at - started if first_token_at is not None else None
            results.append(GenerationResult(tokens, text, finish, len(prompt), len(tokens), ttft, seconds))
    return results
