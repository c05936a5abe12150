"""From a generation's settings to what ``generate()`` is given (``GenerationConfig`` and call
options), and the choice of decoder: the engine's own loop or ``model.generate``, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transformers import GenerationConfig

from . import capabilities
from .repetition import detector_factory

if TYPE_CHECKING:  # pragma: no cover
    from ..settings import GenerationSettings
    from .loaded import LoadedModel


#: ``generate()`` keyword arguments that are not ``GenerationConfig`` attributes.
CALL_KWARGS = frozenset(
    {"logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "negative_prompt_ids",
     "negative_prompt_attention_mask", "assistant_model"}
)


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
    from ..structured.processor import GrammarLogitsProcessor

    processor = GrammarLogitsProcessor.for_model(settings.constraint, lm, rows, detector_factory(settings),
                                                 settings.max_new_tokens + settings.answer_so_far,
                                                 resumed=settings.answer_so_far)
    return {**call_kwargs, "logits_processor": [*(call_kwargs.get("logits_processor") or []), processor]}


def closing_of(settings: GenerationSettings, call_kwargs: dict[str, Any], row: int) -> Any:
    """What the constraint's processor (added last by :func:`with_constraint`) did for ``row`` when
    the repetition guard noticed a loop in it (None without a constraint, or without a loop)."""
    if settings.constraint is None:
        return None
    return call_kwargs["logits_processor"][-1].closing(row)
