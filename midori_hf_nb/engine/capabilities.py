"""Every use of a torch or transformers internal, fenced in one place.

The engine's fast paths lean on details of torch and transformers that are not public API
and move between releases: the argument name of a model's KV cache, whether a model prepares
its inputs the standard way, the keys of ``GenerationConfig.to_diff_dict()``, the order of
``generate``'s sampling warpers, private aten / oneDNN kernels, the GGUF quantizer marker that
blocks ``save_pretrained``, the docstring helper behind ``get_json_schema``. Each probe or use
lives here, says in its docstring what it relies on and since which version, and has its own
test on the locked versions (``tests/test_capabilities.py``).

No probe swallows a failure: when a fast path cannot be used, :func:`fallback` warns once per
process (a :class:`FastPathWarning`, also logged on the ``midori_hf_nb`` logger) naming the
reason and the path taken instead, and the reason is carried to the caller (for generation, in
``response.metadata["decode_path_reason"]``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
import transformers

logger = logging.getLogger("midori_hf_nb")


class FastPathWarning(RuntimeWarning):
    """A fast path of the engine is off on this installation; the message names the fallback."""


_warned: set[str] = set()
_warned_lock = threading.Lock()


def fallback(key: str, message: str) -> None:
    """Warn once per process (per ``key``) that a fast path is off and what runs instead."""
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(message)
    warnings.warn(message, FastPathWarning, stacklevel=3)


def warned_keys() -> frozenset[str]:
    """The fallbacks announced so far in this process (for tests and diagnostics)."""
    with _warned_lock:
        return frozenset(_warned)


# --------------------------------------------------------------------------- the decode loop


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


#: ``GenerationConfig.to_diff_dict()`` keys that carry no generation setting: bookkeeping that
#: transformers adds (``_from_model_config``, ``transformers_version``) in 4.x and 5.x.
CONFIG_BOOKKEEPING_KEYS = frozenset({"_from_model_config", "transformers_version"})


def changed_generation_options(cfg: Any) -> set[str]:
    """The generation options ``cfg`` sets to other than their defaults.

    Relies on ``GenerationConfig.to_diff_dict()`` (its keys differ from a default config's),
    less the bookkeeping keys of :data:`CONFIG_BOOKKEEPING_KEYS`.
    """
    return set(cfg.to_diff_dict()) - CONFIG_BOOKKEEPING_KEYS


def sampling_warpers(cfg: Any) -> Any:
    """The logits warpers ``model.generate`` applies when sampling, in its order.

    Relies on ``generate`` applying temperature, then top-k, then top-p (the order of
    ``GenerationMixin._get_logits_processor`` through transformers 5.24), which is what makes
    the engine's sampled tokens equal ``generate``'s for the same seed; a test compares them.
    """
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList()
    if cfg.temperature is not None and cfg.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(cfg.temperature))
    if cfg.top_k is not None and cfg.top_k != 0:
        warpers.append(TopKLogitsWarper(top_k=cfg.top_k, min_tokens_to_keep=1))
    if cfg.top_p is not None and cfg.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=cfg.top_p, min_tokens_to_keep=1))
    return warpers


def callback_streamer(tokenizer: Any, on_text: Callable[[str], None], lock: threading.RLock) -> Any:
    """A ``TextStreamer`` that hands each finalised piece of text to ``on_text`` (under ``lock``).

    Relies on ``TextStreamer.put``/``end`` calling ``on_finalized_text`` with the text they
    have decoded, the documented way to subclass it (transformers 4.28 through 5.24).
    """
    from transformers import TextStreamer

    class CallbackStreamer(TextStreamer):
        def put(self, value: Any) -> None:
            with lock:
                super().put(value)

        def end(self) -> None:
            with lock:
                super().end()

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    return CallbackStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


# --------------------------------------------------------------------------- CPU kernels


def cpu_capability() -> str | None:
    """torch's CPU vector capability (``"AVX2"``, ``"AVX512"``, ...), or None where torch cannot say.

    Relies on ``torch.backends.cpu.get_cpu_capability()`` (torch >= 2.1).
    """
    probe = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    if probe is None:
        fallback("cpu_capability", (
            f"torch {torch.__version__} has no torch.backends.cpu.get_cpu_capability(): the CPU's vector "
            "capability is unknown, so torch_dtype='auto' uses float32 on CPU (bfloat16 would be faster on AVX2)"))
        return None
    return str(probe()).upper()


def cpu_has_native_bf16_gemm() -> bool:
    """True when oneDNN multiplies bfloat16 matrices natively here (AVX512-BF16 or AMX).

    Relies on the private op ``torch.ops.mkldnn._is_mkldnn_bf16_supported`` (torch 1.x through 2.13).
    """
    try:
        op = torch.ops.mkldnn._is_mkldnn_bf16_supported
    except (AttributeError, RuntimeError):
        fallback("mkldnn_bf16", (
            f"torch {torch.__version__} has no torch.ops.mkldnn._is_mkldnn_bf16_supported: bfloat16 "
            "layers on CPU use the engine's widening product (correct, possibly slower than oneDNN's native one)"))
        return False
    return bool(op())


#: The private aten kernels behind ``quantize_weights`` (torch 2.4 through 2.13).
INT8_KERNEL = "_weight_int8pack_mm"
INT4_KERNELS = ("_convert_weight_to_int4pack_for_cpu", "_weight_int4pack_mm_for_cpu")


def missing_weight_kernels(kind: str) -> list[str]:
    """The aten kernels ``quantize_weights=kind`` needs that this torch lacks (empty: all there)."""
    names = [INT8_KERNEL] if kind == "int8" else list(INT4_KERNELS)
    return [name for name in names if not hasattr(torch.ops.aten, name)]


def int8_weight_matmul(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``(x @ qweight.T) * scale`` by torch's weight-only int8 kernel (``aten._weight_int8pack_mm``)."""
    return torch.ops.aten._weight_int8pack_mm(x, qweight, scale)


def int4_pack(q: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit values (int32, 0..15) for :func:`int4_weight_matmul`
    (``aten._convert_weight_to_int4pack_for_cpu``, inner k tiles of 1)."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)


def int4_weight_matmul(x: torch.Tensor, packed: torch.Tensor, group_size: int,
                       scales_and_zeros: torch.Tensor) -> torch.Tensor:
    """``x @ W.T`` for int4 weights packed by :func:`int4_pack`, ``W = (q - 8) * scale + zero``
    per group (``aten._weight_int4pack_mm_for_cpu``)."""
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group_size, scales_and_zeros)


# --------------------------------------------------------------------------- saving GGUF conversions


def make_gguf_model_saveable(model: Any) -> None:
    """Let a model loaded from a ``.gguf`` file be saved with ``save_pretrained``.

    Relies on transformers marking GGUF-loaded models with ``model.hf_quantizer`` and
    ``config.quantization_config`` (5.x), which make ``save_pretrained`` refuse ("quantized with
    gguf and is not serializable") although the weights are already dequantized.
    """
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


# --------------------------------------------------------------------------- tokenizer features


def tokenizer_parses_responses(tokenizer: Any) -> bool:
    """True when the tokenizer ships a response template and ``parse_response`` (transformers >= 5.0).

    ``parse_response`` raises ``AttributeError`` on a tokenizer without a template, so both are checked.
    """
    return getattr(tokenizer, "response_template", None) is not None and callable(
        getattr(tokenizer, "parse_response", None))


# --------------------------------------------------------------------------- tool schemas


def parse_google_docstring(doc: str) -> tuple[str | None, dict[str, str] | None, str | None]:
    """(description, argument descriptions, returns) of a Google-style docstring.

    Relies on ``transformers.utils.chat_template_utils.parse_google_format_docstring``, the
    parser behind ``get_json_schema`` (transformers 4.42 through 5.24), so a docstring reads the
    same to both.
    """
    from transformers.utils.chat_template_utils import parse_google_format_docstring

    return parse_google_format_docstring(doc)


# --------------------------------------------------------------------------- progress bars

#: Called with (bar description, count so far, total or None) by the progress bars transformers
#: makes in this thread while :func:`observe_progress_bars` is active.
BarObserver = Callable[[str, int, "int | None"], None]

_bar_local = threading.local()
_bar_hook_lock = threading.Lock()
_bar_hook_users = 0
_bar_hook_previous: Any = None


class _ObservedBar:
    """A progress bar made by transformers that also reports its count to a :data:`BarObserver`."""

    def __init__(self, bar: Any, observer: BarObserver, label: str, total: int | None) -> None:
        self._bar, self._observer, self._label, self._total, self._n = bar, observer, label, total, 0
        observer(label, 0, total)

    def __iter__(self) -> Any:
        for item in self._bar:
            yield item
            self._n += 1
            self._observer(self._label, self._n, self._total)

    def update(self, n: float | None = 1) -> Any:
        result = self._bar.update(n)
        self._n += int(n or 0)
        self._observer(self._label, self._n, self._total)
        return result

    def __enter__(self) -> "_ObservedBar":
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._bar.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bar, name)


def _bar_hook(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    from tqdm import auto as tqdm_auto
    from tqdm import std as tqdm_std

    if factory is tqdm_auto.tqdm:  # a text bar: in a notebook a widget bar renders as an error once reopened
        factory = tqdm_std.tqdm
    bar = factory(*args, **kwargs)
    observer = getattr(_bar_local, "observer", None)
    if observer is None:
        return bar
    total = kwargs.get("total")
    if total is None and args:
        try:
            total = len(args[0])
        except TypeError:
            total = None
    return _ObservedBar(bar, observer, str(kwargs.get("desc") or ""), total if isinstance(total, int) else None)


@contextlib.contextmanager
def observe_progress_bars(observer: BarObserver):
    """While active, the progress bars transformers makes in this thread report their counts to
    ``observer``, and draw as text (``tqdm.std``) instead of notebook widgets.

    Relies on ``transformers.utils.logging.set_tqdm_hook`` (transformers 5.x), which receives the
    factory and arguments of every bar transformers makes (also when its bars are disabled: then
    the factory is a silent stand-in, and counts are still reported). Without it a
    :class:`FastPathWarning` says that load progress shows stages only.
    """
    from transformers.utils import logging as hf_logging

    global _bar_hook_users, _bar_hook_previous
    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    if set_hook is None:
        fallback("tqdm_hook", "transformers has no utils.logging.set_tqdm_hook: model load progress shows "
                              "its stages only, without weight counts")
        yield
        return
    with _bar_hook_lock:
        if _bar_hook_users == 0:
            _bar_hook_previous = set_hook(_bar_hook)
        _bar_hook_users += 1
    outer = getattr(_bar_local, "observer", None)
    _bar_local.observer = observer
    try:
        yield
    finally:
        _bar_local.observer = outer
        with _bar_hook_lock:
            _bar_hook_users -= 1
            if _bar_hook_users == 0:
                set_hook(_bar_hook_previous)
                _bar_hook_previous = None


__all__ = [
    "CACHE_ARGUMENT_NAMES", "CONFIG_BOOKKEEPING_KEYS", "cache_length", "cache_rows_support", "stack_cache_rows", "cache_prefix_reuse_support", "crop_cache", "DecodeLoopSupport", "FastPathWarning", "INT4_KERNELS",
    "INT8_KERNEL", "cache_can_drop_rows", "callback_streamer", "changed_generation_options", "cpu_capability",
    "cpu_has_native_bf16_gemm", "decode_loop_support", "fallback", "forward_cache_argument", "int4_pack",
    "int4_weight_matmul", "int8_weight_matmul", "make_gguf_model_saveable", "missing_weight_kernels",
    "new_dynamic_cache", "observe_progress_bars", "parse_google_docstring", "prepares_inputs_the_standard_way", "sampling_warpers",
    "supports_dynamic_cache", "tokenizer_parses_responses", "warned_keys",
]
