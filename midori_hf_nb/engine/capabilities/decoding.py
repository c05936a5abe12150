"""What the engine's own decode loop relies on: the forward signature, ``DynamicCache`` and its
rows (stacking, cropping, dropping), probed per model and per installation."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
import transformers

from .fallbacks import fallback


@dataclass(frozen=True)
class DecodeLoopSupport:
    """Whether the engine's own decode loop can drive a model, and how to call it.

    ``cache_argument`` is the name of the forward argument that takes the KV cache
    (``"cache"`` from transformers 5.24, ``"past_key_values"`` before); ``reason`` says why
    the loop cannot be used when ``supported`` is False.
    """

    supported: bool
    cache_argument: str | None = None
    reason: str | None = None


#: Forward argument names of the KV cache, newest first (transformers 5.24 renamed
#: ``past_key_values`` to ``cache``, keeping the old name as a deprecated alias until 5.40).
CACHE_ARGUMENT_NAMES = ("cache", "past_key_values")


def forward_cache_argument(model: Any) -> str | None:
    """The name under which ``model.forward`` takes the KV cache, or None.

    Relies on the forward signature naming the cache argument: ``past_key_values`` up to
    transformers 5.23, ``cache`` from 5.24 (``@deprecate_kwarg("past_key_values", "5.40.0",
    new_name="cache")``). The current name is preferred, so the deprecated alias (and its
    per-call warning machinery) is never used.
    """
    params = inspect.signature(model.forward).parameters
    return next((name for name in CACHE_ARGUMENT_NAMES if name in params), None)


def prepares_inputs_the_standard_way(model: Any) -> bool:
    """True when the model's class keeps ``GenerationMixin.prepare_inputs_for_generation``.

    Relies on ``transformers.generation.utils.GenerationMixin.prepare_inputs_for_generation``
    (present through transformers 5.x). Models that override it (multimodal, recurrent, custom
    position handling) need ``generate``'s own input preparation.
    """
    from transformers.generation.utils import GenerationMixin

    base = getattr(GenerationMixin, "prepare_inputs_for_generation", None)
    if base is None:  # pragma: no cover - a transformers without the method
        raise AttributeError("transformers.GenerationMixin has no prepare_inputs_for_generation")
    return type(model).prepare_inputs_for_generation is base


def supports_dynamic_cache(model: Any) -> bool:
    """True when a ``DynamicCache`` fits the model's attention layers.

    Relies on the private classmethod ``GenerationMixin._supports_default_dynamic_cache``
    (transformers 4.50 through 5.24 at least), the check ``generate`` itself makes.
    """
    probe = getattr(type(model), "_supports_default_dynamic_cache", None)
    if not callable(probe):
        raise AttributeError(
            f"transformers {transformers.__version__} has no GenerationMixin._supports_default_dynamic_cache"
        )
    return bool(probe())


def decode_loop_support(model: Any) -> DecodeLoopSupport:
    """Whether the engine's decode loop can drive ``model`` (see :class:`DecodeLoopSupport`).

    That is a decoder-only model whose forward takes ``input_ids``, the KV cache (under either
    name of :data:`CACHE_ARGUMENT_NAMES`) and ``logits_to_keep``, that prepares its inputs the
    standard way and works with a ``DynamicCache``. A probe that cannot answer (an internal
    that moved) gives ``supported=False`` with the reason, never an exception.
    """
    config = getattr(model, "config", None)
    if config is None:
        return DecodeLoopSupport(False, reason="the model has no config")
    if getattr(config, "is_encoder_decoder", False):
        return DecodeLoopSupport(False, reason="encoder-decoder models decode through generate")
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError) as exc:
        return DecodeLoopSupport(False, reason=f"the forward signature cannot be read ({exc})")
    cache_argument = forward_cache_argument(model)
    if cache_argument is None:
        return DecodeLoopSupport(False, reason=(
            f"{type(model).__name__}.forward takes neither of {', '.join(CACHE_ARGUMENT_NAMES)} "
            f"(transformers {transformers.__version__})"))
    missing = [name for name in ("input_ids", "logits_to_keep") if name not in params]
    if missing:
        return DecodeLoopSupport(False, reason=f"{type(model).__name__}.forward takes no {', '.join(missing)}")
    try:
        if not prepares_inputs_the_standard_way(model):
            return DecodeLoopSupport(False, reason=(
                f"{type(model).__name__} prepares its own generation inputs"))
        if not supports_dynamic_cache(model):
            return DecodeLoopSupport(False, reason=f"{type(model).__name__} does not use a DynamicCache")
    except AttributeError as exc:
        return DecodeLoopSupport(False, reason=f"cannot tell whether the model fits the loop: {exc}")
    return DecodeLoopSupport(True, cache_argument=cache_argument)


def new_dynamic_cache(model: Any) -> Any:
    """An empty ``DynamicCache`` for ``model`` (``DynamicCache(config=...)``, transformers >= 4.56)."""
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def cache_can_drop_rows() -> bool:
    """True when a ``DynamicCache`` can keep a subset of its batch rows (``batch_select_indices``,
    a ``Cache`` method through transformers 5.24), which the batch loop uses when rows end."""
    from transformers import DynamicCache

    return callable(getattr(DynamicCache, "batch_select_indices", None))


def cache_prefix_reuse_support(model: Any) -> DecodeLoopSupport:
    """Whether a finished generation's ``DynamicCache`` can be cut back to a prefix and extended
    by the next prompt (the conversation KV cache reuse of :mod:`.prefix_cache`).

    Relies on ``Cache.crop`` with a negative count removing that many positions from every layer
    (transformers 4.38 through 5.24: before 5.x a negative ``max_length`` meant the same), on
    ``Cache.get_seq_length()``, and on ``Cache.is_sliding`` / ``Cache.is_linear`` (5.x) to refuse
    sliding-window and linear-attention layers, whose cache cannot be cut back. The reason is
    given when it cannot be used.
    """
    cache = new_dynamic_cache(model)
    for name in ("crop", "get_seq_length"):
        if not callable(getattr(cache, name, None)):
            return DecodeLoopSupport(False, reason=f"transformers {transformers.__version__}'s DynamicCache has no {name}")
    sliding = getattr(cache, "is_sliding", None)
    if sliding is None:
        return DecodeLoopSupport(False, reason=f"transformers {transformers.__version__}'s Cache has no is_sliding")
    if any(sliding) or any(getattr(cache, "is_linear", None) or []):
        return DecodeLoopSupport(False, reason="the model has sliding-window or linear-attention layers")
    return DecodeLoopSupport(True)


def cache_length(cache: Any) -> int:
    """Positions held by a KV cache (``Cache.get_seq_length()``)."""
    return int(cache.get_seq_length())


def crop_cache(cache: Any, length: int) -> None:
    """Cut ``cache`` back to its first ``length`` positions, in place (``Cache.crop`` with the
    negative count of positions to remove; see :func:`cache_prefix_reuse_support`)."""
    remove = cache_length(cache) - length
    if remove < 0:
        raise ValueError(f"length={length} is not allowed: the cache holds {cache_length(cache)} positions")
    if remove:
        cache.crop(-remove)
    if cache_length(cache) != length:
        raise RuntimeError(f"Cache.crop left {cache_length(cache)} positions, expected {length} "
                           f"(transformers {transformers.__version__})")


def _layer_states(cache: Any, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    layer = cache.layers[index]
    return layer.keys, layer.values


_rows_support: bool | None = None


def cache_rows_support() -> bool:
    """True when KV caches of separate sequences can be stacked into one batch
    (:func:`stack_cache_rows`), which lets concurrent generations share one decode loop.

    Relies on ``Cache.layers`` holding layers whose ``keys`` / ``values`` are the
    ``[batch, heads, positions, head_dim]`` tensors (``DynamicLayer``, transformers 4.56 through
    5.24) and on ``Cache.update(keys, values, layer_idx)``; probed once on a small cache. When
    it fails, :func:`fallback` names it and generations on one model run one after another.
    """
    global _rows_support
    if _rows_support is None:
        from transformers import DynamicCache

        reason = None
        try:
            cache = DynamicCache()
            keys = torch.zeros((1, 2, 3, 4))
            cache.update(keys, keys.clone(), 0)
            got_keys, got_values = _layer_states(cache, 0)
            if tuple(got_keys.shape) != (1, 2, 3, 4) or tuple(got_values.shape) != (1, 2, 3, 4):
                reason = f"its layers hold keys of shape {tuple(got_keys.shape)}, not [batch, heads, positions, dim]"
        except (AttributeError, IndexError, TypeError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        _rows_support = reason is None
        if reason is not None:
            fallback("cache_rows", (
                f"transformers {transformers.__version__}'s DynamicCache cannot be stacked ({reason}): concurrent "
                "generations on one model run one after another"))
    return _rows_support


def stack_cache_rows(model: Any, parts: list[tuple[Any, int]]) -> Any:
    """One ``DynamicCache`` holding the rows of every ``(cache, left_padding)`` in ``parts``, in
    order, each left-padded with ``left_padding`` zero positions so all have the same length
    (the padding is masked out by the caller's attention mask). See :func:`cache_rows_support`."""
    stacked = new_dynamic_cache(model)
    for index in range(len(parts[0][0].layers)):
        keys, values = [], []
        for cache, padding in parts:
            k, v = _layer_states(cache, index)
            if padding:
                k = torch.nn.functional.pad(k, (0, 0, padding, 0))
                v = torch.nn.functional.pad(v, (0, 0, padding, 0))
            keys.append(k)
            values.append(v)
        stacked.update(torch.cat(keys), torch.cat(values), index)
    return stacked
