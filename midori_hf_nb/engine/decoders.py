"""The decoders: the engine's own decode loop over the KV cache (one sequence, or a greedy batch
whose finished rows leave it) and ``model.generate``. Each stops within a token when its
``threading.Event`` is set.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from typing import TYPE_CHECKING, Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from . import capabilities, reproducible
from .decode_path import generation_config
from .forward_mode import ForwardMode, forward_mode
from .repetition import LoopDetector, RepetitionStop, loop_guard
from .threads import ThreadGovernor

if TYPE_CHECKING:  # pragma: no cover
    from ..settings import GenerationSettings
    from .loaded import LoadedModel


class StopAndTime(StoppingCriteria):
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


def decode_one(lm: LoadedModel, input_ids: torch.Tensor, cfg: Any, settings: GenerationSettings,
               stop_event: threading.Event | None, streamer: Any = None,
               governor: ThreadGovernor | None = None,
               processors: Any = None, cache: Any = None,
               reused: int = 0, exact: reproducible.ReproducibleSupport | None = None,
               first: reproducible.FirstForward | None = None, recorder: Any = None,
               ) -> tuple[list[int], float | None, float, Any, str | None]:
    """Greedy or sampled decoding of one sequence over a ``DynamicCache``, one forward per token.

    The forward passes and the token choice (the caller's logits processors, then argmax, or
    ``generate``'s warpers then ``torch.multinomial``) are those of ``model.generate``, so the
    tokens are the same; what is left out is ``generate``'s per-token bookkeeping (input
    preparation, stopping-criteria lists, attention-mask growth). Logits processors see the
    prompt and the tokens so far, as in ``generate``. ``cache`` (holding the first ``reused``
    prompt positions, see :mod:`.prefix_cache`) is extended instead of a new one, so only the
    rest of the prompt is prefilled. A seeded sample draws from a generator of its own. A
    ``recorder`` (:class:`~.logprobs.Recorder`, None when no token probabilities were asked for)
    gets each step's logits, the scores the token was chosen from and the token.

    With ``exact`` (reproducible generation, :mod:`.reproducible`) the first forward runs as
    ``first`` says (the prefill in aligned tiles, or the decode step a paused generation's
    continuation resumes with) and each step in the decode mode of ``exact``. Returns (tokens, first-token time, start
    time, the cache, which then holds the prompt and every token but the last, and why the
    forward could not keep to the reproducible mode, None when it could).
    """
    from transformers import LogitsProcessorList

    model = lm.model
    processors = LogitsProcessorList(processors) if processors else None
    cache_argument = lm.decode_support.cache_argument
    eos = lm.eos_token_ids
    warpers = capabilities.sampling_warpers(cfg) if cfg.do_sample else None
    max_new = int(cfg.max_new_tokens)
    guard = loop_guard(settings)  # under a constraint its logits processor runs the guard
    loops = LoopDetector(guard) if guard is not None else None
    tokens: list[int] = []
    first_token_at: float | None = None
    generator: torch.Generator | None = None  # a seeded sample's own, made at the first draw
    if exact is not None and first is None:
        first = reproducible.first_forward(exact, settings, input_ids.shape[1], reused, 0)
    prefill = first.mode if first is not None else None
    step: ForwardMode | None = reproducible.decode_mode(exact) if exact is not None else None
    prefill_threads = first.threads if first is not None else None
    step_threads = exact.decode_threads if exact is not None else None
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
        with forward_mode(prefill), reproducible.threads(prefill_threads):
            out = model(input_ids=input_ids[:, reused:], use_cache=True, logits_to_keep=1, **{cache_argument: cache})
        while True:
            logits = raw = out.logits[:, -1, :].to(dtype=torch.float32)
            if sequence is not None:
                if recorder is not None:
                    raw = logits.clone()
                logits = processors(sequence[:, :length], logits)
            if warpers is None:
                next_token = torch.argmax(logits, dim=-1)
            else:
                logits = warpers(input_ids, logits)
                probs = torch.nn.functional.softmax(logits, dim=-1)
                if generator is None and not tokens:
                    generator = reproducible.request_generator(settings, input_ids.device, probs.shape[-1])
                next_token = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
            if recorder is not None:
                recorder.step(raw, logits, next_token)
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
            with forward_mode(step), reproducible.threads(step_threads):
                out = model(input_ids=next_token[:, None], use_cache=True, **{cache_argument: cache})
    if streamer is not None:
        streamer.end()
    inexact = [*(prefill.inexact if prefill is not None else []), *(step.inexact if step is not None else [])]
    return tokens, first_token_at, started, cache, inexact[0] if inexact else None


def decode_batch(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, cfg: Any,
                 stop_event: threading.Event | None, governor: ThreadGovernor | None = None,
                 guard: Any = None, recorder: Any = None) -> tuple[list[list[int]], float | None, float]:
    """Greedy decoding of a left-padded batch that drops each sequence from the batch once it ends.

    ``model.generate`` keeps computing finished sequences (as padding) until the longest one
    ends; here the rows of finished sequences leave the KV cache, the mask and the inputs, so
    each step costs what the unfinished sequences need. Positions follow the attention mask as
    in ``generate``. A ``recorder`` gets each step's logits and tokens of the rows still in the
    batch. Returns (tokens per row, first-step time, start time).
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
            logits = out.logits[:, -1, :].to(dtype=torch.float32)
            next_tokens = torch.argmax(logits, dim=-1)
            if recorder is not None:
                recorder.step(logits, logits, next_tokens, alive)
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


def run_generate(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 settings: GenerationSettings, stop_event: threading.Event | None,
                 streamer: Any = None, prepared: tuple[Any, dict[str, Any]] | None = None,
                 governor: ThreadGovernor | None = None,
                 recorder: Any = None) -> tuple[torch.Tensor, StopAndTime, float]:
    """One ``model.generate`` call over a left-padded batch with the settings' stopping criteria
    (cancellation and first-token time, the repetition guard). With a ``recorder``, ``generate``
    returns its raw logits and processed scores (``output_logits``, ``output_scores``), which the
    recorder reads when it ends. Returns (output, timer, start time)."""
    cfg, call_kwargs = prepared if prepared is not None else generation_config(lm, settings)
    call_kwargs = dict(call_kwargs)
    started = time.perf_counter()
    timer = StopAndTime(stop_event, started, governor)
    criteria = StoppingCriteriaList([timer, *call_kwargs.pop("stopping_criteria", [])])
    if loop_guard(settings) is not None:  # under a constraint its logits processor runs the guard
        criteria.append(RepetitionStop(settings.repetition_guard, input_ids.shape[0]))
    if recorder is not None:  # a copy: the settings' config is shared
        cfg = copy.deepcopy(cfg)
        cfg.update(output_logits=True, output_scores=True, return_dict_in_generate=True)
    seeded = settings.seed is not None and not settings.greedy
    with reproducible.GLOBAL_RNG_LOCK if seeded else _NO_LOCK, torch.inference_mode():
        if settings.seed is not None:
            torch.manual_seed(settings.seed)  # generate() draws from torch's global generator
            if seeded:  # a paused generation's continuation: past the draws of the answer so far
                reproducible.skip_draws(None, settings.answer_so_far, reproducible.logits_width(lm), input_ids.device)
        output = lm.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=cfg,
            stopping_criteria=criteria,
            streamer=streamer,
            tokenizer=lm.tokenizer,
            **call_kwargs,
        )
    if recorder is not None:
        recorder.from_generate(output.logits, output.scores, output.sequences[:, input_ids.shape[1]:])
        output = output.sequences
    return output, timer, started


_NO_LOCK = contextlib.nullcontext()
