"""Checks of ``generate()`` options and seeds that need nothing but the values: names, types and
ranges, before any model is loaded (:mod:`midori_hf_nb.config` re-exports them)."""

from __future__ import annotations

from typing import Any

from .errors import ConfigError, refusal_message
from .logprobs.request import PROBABILITY_OPTIONS

#: The range ``torch.manual_seed`` accepts: [-2**63, 2**64).
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


def validate_seed(value: Any, field: str = "seed") -> int | None:
    """``value`` if it is ``None`` or an integer ``torch.manual_seed`` accepts, from -2**63 to 2**64 - 1.

    Raises:
        ConfigError: naming ``field``, the value and its type, and the allowed range.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not SEED_MIN <= value <= SEED_MAX:
        raise ConfigError(refusal_message(
            field, value, "expected None or an integer from -2**63 to 2**64 - 1 (the range torch.manual_seed takes)"))
    return value


def _is_text_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, str) and v for v in value)


def _check_option_types(options: dict[str, Any], name_of: Any) -> None:
    """The types of the ``generate()`` options whose wrong type would fail deep inside a generation."""
    if "generation_kwargs" in options:
        raise ConfigError(refusal_message(
            name_of("generation_kwargs"), options["generation_kwargs"],
            "generation_kwargs is an agent setting (HuggingFaceLocalAgent(..., generation_kwargs={...})); per call, "
            "pass generate() options as keyword arguments (e.g. repetition_penalty=1.1)"))
    stops = options.get("stop_strings")
    if stops is not None and not ((isinstance(stops, str) and stops) or _is_text_list(stops)):
        raise ConfigError(refusal_message(name_of("stop_strings"), stops,
                                          "expected a non-empty string or a list of non-empty strings"))
    for key in ("logits_processor", "stopping_criteria"):
        value = options.get(key)
        if value is not None and not (isinstance(value, (list, tuple)) and all(callable(v) for v in value)):
            kind = "LogitsProcessor" if key == "logits_processor" else "StoppingCriteria"
            raise ConfigError(refusal_message(name_of(key), value,
                                              f"expected a list of {kind} objects (callables)"))
    function = options.get("prefix_allowed_tokens_fn")
    if function is not None and not callable(function):
        raise ConfigError(refusal_message(name_of("prefix_allowed_tokens_fn"), function,
                                          "expected a function (batch_id, input_ids) -> allowed token ids"))


def validate_generation_options(options: Any, field: str = "HuggingFaceConfig.generation_kwargs", *,
                                streaming: bool = True) -> dict[str, Any]:
    """Check ``generate()`` options before any model is loaded; return them.

    Unknown option names are checked against ``transformers.GenerationConfig`` when a generation
    starts (that needs transformers); here are the checks that need nothing:

    - option names are strings;
    - ``seed`` is not a ``generate()`` option: it is a per-call option of ``invoke``/``stream``;
    - ``num_beams`` is a positive integer, and 1 when ``streaming``: ``invoke`` and ``stream``
      stream the answer token by token through a streamer, which cannot follow several beams
      (``generate_batch`` does not stream, so beam search works there);
    - ``num_return_sequences`` is 1: every call returns one answer per payload.

    ``field`` names the options in errors (``""`` for per-call options, named by themselves).

    Raises:
        ConfigError: naming the option, its value and type, and what is allowed.
    """

    def name_of(key: str) -> str:
        return f"{field}[{key!r}]" if field else key

    if not isinstance(options, dict):
        raise ConfigError(refusal_message(field or "options", options, "expected a dict of generate() keyword arguments"))
    for key, value in options.items():
        if not isinstance(key, str):
            raise ConfigError(refusal_message(f"{field or 'options'} key {key!r}", key, "expected option names (str)"))
    _check_option_types(options, name_of)
    for key in PROBABILITY_OPTIONS:
        if key in options:
            raise ConfigError(refusal_message(
                name_of(key), options[key],
                f"{key} is a per-call option, not a generate() option: pass {key}=... to invoke(), stream(), "
                "generate_batch() or a compare() setting"))
    if "seed" in options:
        raise ConfigError(refusal_message(
            name_of("seed"), options["seed"],
            "seed is a per-call option, not a generate() option: pass seed=... to invoke(), stream() or "
            "generate_batch()"))
    beams = options.get("num_beams")
    if beams is not None:
        if isinstance(beams, bool) or not isinstance(beams, int) or beams < 1:
            raise ConfigError(refusal_message(name_of("num_beams"), beams, "expected a positive integer"))
        if beams > 1 and streaming:
            raise ConfigError(refusal_message(
                name_of("num_beams"), beams,
                "beam search is not supported with streaming (invoke() and stream() stream the answer token by "
                "token, and a streamer cannot follow several beams); use num_beams=1, or pass num_beams to "
                "generate_batch(), which does not stream"))
    sequences = options.get("num_return_sequences")
    if sequences is not None and (isinstance(sequences, bool) or sequences != 1):
        raise ConfigError(refusal_message(
            name_of("num_return_sequences"), sequences,
            "expected 1: every call returns one answer per payload (call again, with another seed, for more)"))
    return options


__all__ = ["SEED_MAX", "SEED_MIN", "validate_generation_options", "validate_seed"]
