"""The engine: the one part of the package that touches torch and transformers.

One module per concern:

- :mod:`.capabilities`: every use of a torch or transformers internal, probed and fenced;
- :mod:`.batching`: how many sequences fit in one batch (memory model);
- :mod:`.devices`: devices and weight dtypes;
- :mod:`.convert`: GGUF files converted once into a cached safetensors directory;
- :mod:`.layers`: linear layers for fast CPU decoding (bfloat16 storage, int8/int4 weights);
- :mod:`.loaded`: a loaded model and what identifies it;
- :mod:`.loading`: loading models, shared and reference-counted in :data:`REGISTRY`;
- :mod:`.threads`: torch's thread count while generating on CPU;
- :mod:`.decode_path`: settings to ``GenerationConfig``, and the choice of decoder;
- :mod:`.decoders`: the engine's own decode loops and ``model.generate``;
- :mod:`.results`: what a generation produced, and how it ended;
- :mod:`.generation`: generating one sequence (with live text) or a left-padded batch, cancellable;
- :mod:`.prefix_cache`: conversation KV caches kept between turns (per agent and session, LRU);
- :mod:`.shared_decode`: concurrent generations on one model joining one decode loop.

Everything the rest of the package uses is importable from here. Names load with their module on
first use: importing a torch-free module of the engine (``capabilities.docstrings``) does not
import torch.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["estimate_prompt_tokens", "free_memory_bytes", "suggest_batch_size"], ".batching"),
    **dict.fromkeys(["DecodeLoopSupport", "FastPathWarning", "TextCarry", "cpu_has_native_bf16_gemm"],
                    ".capabilities"),
    **dict.fromkeys(["convert_gguf", "dtype_variant"], ".convert"),
    **dict.fromkeys(["TORCH_DTYPES", "DeviceError", "cpu_prefers_bfloat16", "mps_available", "resolve_device",
                     "resolve_dtype"], ".devices"),
    **dict.fromkeys(["CALL_KWARGS", "DecodePath", "check_generation_kwargs", "choose_decode_path",
                     "generation_config", "lean_decode_supported"], ".decode_path"),
    **dict.fromkeys(["generate", "generate_batch"], ".generation"),
    **dict.fromkeys(["GenerationResult", "join_results"], ".results"),
    **dict.fromkeys(["Bf16CpuLinear", "Int4WeightLinear", "Int8WeightLinear", "QuantizationError",
                     "quantize_weights", "use_bf16_cpu_linears"], ".layers"),
    **dict.fromkeys(["LoadedModel", "LoadSpec"], ".loaded"),
    **dict.fromkeys(["REGISTRY", "acquire", "load", "release", "spec_for"], ".loading"),
    **dict.fromkeys(["PrefixCacheStore"], ".prefix_cache"),
    **dict.fromkeys(["SharedDecoder"], ".shared_decode"),
    **dict.fromkeys(["ThreadGovernor", "apply_threads", "resolve_threads", "usable_cores"], ".threads"),
    **dict.fromkeys(["GenerationSettings"], "..settings"),
    **dict.fromkeys(["resolve_source"], "..sources"),
}

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
__all__ = sorted([*_EXPORTS, "capabilities"])
