"""The engine: the one part of the package that touches torch and transformers.

One module per concern:

- :mod:`.capabilities`: every use of a torch or transformers internal, probed and fenced;
- :mod:`.batching`: how many sequences fit in one batch (memory model);
- :mod:`.devices`: devices and weight dtypes;
- :mod:`.convert`: GGUF files converted once into a cached safetensors directory;
- :mod:`.layers`: linear layers for fast CPU decoding (bfloat16 storage, int8/int4 weights);
- :mod:`.loading`: loading models, shared and reference-counted in :data:`REGISTRY`;
- :mod:`.threads`: torch's thread count while generating on CPU;
- :mod:`.generation`: generating one sequence (with live text) or a left-padded batch, cancellable;
- :mod:`.prefix_cache`: conversation KV caches kept between turns (per agent and session, LRU);
- :mod:`.shared_decode`: concurrent generations on one model joining one decode loop.

Everything the rest of the package uses is importable from here.
"""

from ..sources import resolve_source
from . import capabilities
from .batching import estimate_prompt_tokens, free_memory_bytes, suggest_batch_size
from .capabilities import DecodeLoopSupport, FastPathWarning, cpu_has_native_bf16_gemm
from .convert import convert_gguf, dtype_variant
from .devices import (
    TORCH_DTYPES,
    DeviceError,
    cpu_prefers_bfloat16,
    mps_available,
    resolve_device,
    resolve_dtype,
)
from .generation import (
    CALL_KWARGS,
    DecodePath,
    GenerationResult,
    GenerationSettings,
    check_generation_kwargs,
    choose_decode_path,
    generate,
    generate_batch,
    generation_config,
    lean_decode_supported,
)
from .layers import (
    Bf16CpuLinear,
    Int4WeightLinear,
    Int8WeightLinear,
    QuantizationError,
    quantize_weights,
    use_bf16_cpu_linears,
)
from .loading import REGISTRY, LoadedModel, LoadSpec, acquire, load, release, spec_for
from .prefix_cache import PrefixCacheStore
from .shared_decode import SharedDecoder
from .threads import ThreadGovernor, apply_threads, resolve_threads, usable_cores

__all__ = [
    "CALL_KWARGS", "REGISTRY", "TORCH_DTYPES", "Bf16CpuLinear", "DecodeLoopSupport", "DecodePath", "DeviceError",
    "FastPathWarning", "GenerationResult", "capabilities", "choose_decode_path", "generation_config",
    "GenerationSettings", "Int4WeightLinear", "Int8WeightLinear", "LoadSpec", "LoadedModel", "QuantizationError",
    "ThreadGovernor", "acquire", "apply_threads", "check_generation_kwargs", "convert_gguf",
    "cpu_has_native_bf16_gemm", "cpu_prefers_bfloat16", "dtype_variant", "generate", "generate_batch",
    "lean_decode_supported", "load", "mps_available", "quantize_weights", "release", "resolve_device",
    "resolve_dtype", "resolve_source", "resolve_threads", "spec_for", "usable_cores", "use_bf16_cpu_linears",
    "estimate_prompt_tokens", "free_memory_bytes", "suggest_batch_size", "PrefixCacheStore", "SharedDecoder",
]
