"""What the call log records about a local call: the model (what was asked for, what was loaded,
device, dtype, quantization) and every resolved setting with where it came from.

:func:`local_details` is handed to the log as a function and runs on the log's writer thread,
so none of this costs the call any time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..config import HuggingFaceConfig
    from ..engine import LoadedModel
    from ..settings import CallSettings

#: configuration fields recorded under ``options`` besides the generation settings
CONFIG_OPTIONS = ("context_window", "stop_on_repetition", "num_threads", "decode_loop", "quantize_weights",
                  "fuse_projections",
                  "load_in_8bit", "load_in_4bit", "trust_remote_code", "torch_dtype", "device")


def local_details(config: "HuggingFaceConfig", lm: "LoadedModel | None", call: "CallSettings | None") -> dict[str, Any]:
    """The model and settings fields of a local call's log row."""
    details: dict[str, Any] = {"model": str(config.model), "backend": "huggingface"}
    options: dict[str, Any] = {name: getattr(config, name, None) for name in CONFIG_OPTIONS}
    if lm is not None:
        spec = lm.spec
        details.update(resolved_model=lm.path, device=spec.device, dtype=spec.dtype, quantization=spec.quantization,
                       model_details={"source_kind": spec.source.kind, "source": spec.source.location,
                                      "loaded_from": lm.path, "device": spec.device, "dtype": spec.dtype,
                                      "quantization": spec.quantization,
                                      "trust_remote_code": spec.trust_remote_code})
    if call is not None:
        generation = call.generation
        options.update(max_new_tokens=generation.max_new_tokens, do_sample=generation.do_sample,
                       temperature=generation.temperature, top_p=generation.top_p, top_k=generation.top_k,
                       seed=generation.seed, generate_options=dict(generation.extra) or None,
                       repetition_guard=generation.repetition_guard)
        if call.response_format is not None:
            options["response_format"] = call.response_format.name
            details["response_format_schema"] = call.response_format.schema
        if call.tool_choice is not None:
            options["tool_choice"] = call.tool_choice.describe()
        if generation.probabilities is not None:  # logprobs, top_logprobs, prompt_logprobs
            options.update(generation.probabilities.options())
        details["option_sources"] = dict(call.origins)
    else:
        options.update(generate_options=dict(config.generation_kwargs) or None)
    details["options"] = options
    return details


__all__ = ["CONFIG_OPTIONS", "local_details"]
