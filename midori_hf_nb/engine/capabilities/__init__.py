"""Every use of a torch or transformers internal, fenced in one place.

The engine's fast paths lean on details of torch and transformers that are not public API
and move between releases: the argument name of a model's KV cache, whether a model prepares
its inputs the standard way, the keys of ``GenerationConfig.to_diff_dict()``, the order of
``generate``'s sampling warpers, private aten / oneDNN kernels, the GGUF quantizer marker that
blocks ``save_pretrained``, the docstring helper behind ``get_json_schema``, the hook of
transformers' progress bars. Each probe or use lives in a module of this package, says in its
docstring what it relies on and since which version, and has its own test on the locked versions
(``tests/test_capabilities.py``):

- :mod:`.fallbacks`: :func:`fallback` and :class:`FastPathWarning` (no torch);
- :mod:`.decoding`: the decode loop's needs, KV caches and their rows;
- :mod:`.generation_options`: ``GenerationConfig`` differences, sampling warpers, the text streamer;
- :mod:`.kernels`: CPU capability, native bfloat16 products, int8/int4 weight kernels;
- :mod:`.models`: saving GGUF-loaded models, the tokenizer's response parser;
- :mod:`.docstrings`: tool descriptions (``transformers.utils`` only, no torch);
- :mod:`.progress`: transformers' progress bars, observed and drawn as text.

No probe swallows a failure: when a fast path cannot be used, :func:`fallback` warns once per
process (a :class:`FastPathWarning`, also logged on the ``midori_hf_nb`` logger) naming the
reason and the path taken instead, and the reason is carried to the caller (for generation, in
``response.metadata["decode_path_reason"]``). Names load with their module on first use, so the
torch-free modules can be used without importing torch.
"""

from ...lazy import lazy_exports

_EXPORTS = {
    "CACHE_ARGUMENT_NAMES": ".decoding",
    "CONFIG_BOOKKEEPING_KEYS": ".generation_options",
    "DecodeLoopSupport": ".decoding",
    "FastPathWarning": ".fallbacks",
    "INT4_KERNELS": ".kernels",
    "INT8_KERNEL": ".kernels",
    "cache_can_drop_rows": ".decoding",
    "cache_length": ".decoding",
    "cache_prefix_reuse_support": ".decoding",
    "cache_rows_support": ".decoding",
    "callback_streamer": ".generation_options",
    "changed_generation_options": ".generation_options",
    "cpu_capability": ".kernels",
    "cpu_has_native_bf16_gemm": ".kernels",
    "crop_cache": ".decoding",
    "decode_loop_support": ".decoding",
    "fallback": ".fallbacks",
    "forward_cache_argument": ".decoding",
    "function_json_schema": ".docstrings",
    "int4_pack": ".kernels",
    "int4_weight_matmul": ".kernels",
    "int8_weight_matmul": ".kernels",
    "make_gguf_model_saveable": ".models",
    "missing_weight_kernels": ".kernels",
    "new_dynamic_cache": ".decoding",
    "observe_progress_bars": ".progress",
    "parse_google_docstring": ".docstrings",
    "prepares_inputs_the_standard_way": ".decoding",
    "sampling_warpers": ".generation_options",
    "stack_cache_rows": ".decoding",
    "supports_dynamic_cache": ".decoding",
    "TextCarry": ".generation_options",
    "tokenizer_parses_responses": ".models",
    "warned_keys": ".fallbacks",
}

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
__all__ = sorted(_EXPORTS)
