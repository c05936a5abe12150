"""Loaded models and tokenizers: saving a GGUF-loaded model, the tokenizer's response parser."""

from __future__ import annotations

from typing import Any


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


def tokenizer_parses_responses(tokenizer: Any) -> bool:
    """True when the tokenizer ships a response template and ``parse_response`` (transformers >= 5.0).

    ``parse_response`` raises ``AttributeError`` on a tokenizer without a template, so both are checked.
    """
    return getattr(tokenizer, "response_template", None) is not None and callable(
        getattr(tokenizer, "parse_response", None))
