"""How many sequences fit one left-padded batch: a memory model of batched generation.

:func:`suggest_batch_size` sizes a batch from the model's shape, its weight dtype, the prompt
lengths, the answer length and the free memory of the model's device;
:func:`estimate_prompt_tokens` gives the prompt lengths it needs from plain texts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from .loading import LoadedModel

#: Upper bound of a suggested batch size on a CPU: larger batches stop paying off there.
CPU_BATCH_CAP = 16
#: Upper bound of a suggested batch size on an accelerator.
ACCELERATOR_BATCH_CAP = 64
#: Tokens added to a text's own count for the chat template's markup (role headers, special tokens).
TEMPLATE_MARKUP_TOKENS = 32

_ELEMENT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def free_memory_bytes(lm: "LoadedModel") -> int:
    """Free memory of the model's device: ``torch.cuda.mem_get_info`` on CUDA, available RAM otherwise."""
    device = str(lm.input_device)
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(lm.input_device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def estimate_prompt_tokens(lm: "LoadedModel", texts: Iterable[str]) -> list[int]:
    """Token counts of ``texts`` with the model's tokenizer, plus :data:`TEMPLATE_MARKUP_TOKENS`
    each for the chat template's markup (an estimate: the template is not rendered)."""
    counts = []
    with lm.tokenizer_lock:
        for text in texts:
            counts.append(len(lm.tokenizer.encode(text, add_special_tokens=False)) + TEMPLATE_MARKUP_TOKENS)
    return counts


def _longest(prompt_lengths: int | Sequence[int]) -> int:
    if isinstance(prompt_lengths, bool):
        raise ValueError(f"prompt_lengths={prompt_lengths!r} is not allowed: expected a token count or a list of them")
    if isinstance(prompt_lengths, int):
        lengths = [prompt_lengths]
    else:
        lengths = list(prompt_lengths)
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in lengths):
        raise ValueError(f"prompt_lengths={prompt_lengths!r} is not allowed: "
                         "expected a token count >= 0 or a list of them")
    return max(lengths, default=0)


def suggest_batch_size(lm: "LoadedModel", prompt_lengths: int | Sequence[int], max_new_tokens: int,
                       available_bytes: int | None = None, fraction: float = 0.5) -> int:
    """A batch size whose working memory fits ``fraction`` of the free memory.

    Args:
        lm: the loaded model (its configuration gives layers, heads, hidden size and vocabulary).
        prompt_lengths: the prompt token counts of the batch's sequences (or the longest one);
            every sequence is padded to the longest.
        max_new_tokens: the answer's token budget.
        available_bytes: free bytes to plan with (default: the free memory of the model's
            device, see :func:`free_memory_bytes`).
        fraction: the share of the free memory a batch may use.

    Per sequence it counts the key/value cache of prompt plus answer tokens, the prefill
    attention scores of one layer, the prefill activations and the logits. The result is at
    least 1 and at most :data:`CPU_BATCH_CAP` on a CPU (:data:`ACCELERATOR_BATCH_CAP` on an
    accelerator), where larger batches stop paying off.
    """
    prompt_tokens = _longest(prompt_lengths)
    cfg = lm.model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    layers = int(getattr(text_cfg, "num_hidden_layers", 32))
    heads = int(getattr(text_cfg, "num_attention_heads", 32))
    kv_heads = int(getattr(text_cfg, "num_key_value_heads", None) or heads)
    hidden = int(getattr(text_cfg, "hidden_size", 4096))
    head_dim = int(getattr(text_cfg, "head_dim", None) or hidden // max(heads, 1))
    vocab = int(getattr(text_cfg, "vocab_size", 32000))
    element = _ELEMENT_BYTES.get(lm.spec.dtype, 4)
    tokens = max(1, prompt_tokens) + max(1, max_new_tokens)
    per_sequence = (
        2 * layers * kv_heads * head_dim * element * tokens  # key/value cache
        + heads * prompt_tokens * prompt_tokens * 4  # prefill attention scores of one layer
        + 4 * hidden * prompt_tokens * element  # prefill activations
        + 2 * vocab * 4  # logits and sampling scores
    )
    free = free_memory_bytes(lm) if available_bytes is None else available_bytes
    cap = CPU_BATCH_CAP if str(lm.input_device).startswith("cpu") else ACCELERATOR_BATCH_CAP
    return max(1, min(cap, int(free * fraction) // per_sequence))


__all__ = ["ACCELERATOR_BATCH_CAP", "CPU_BATCH_CAP", "TEMPLATE_MARKUP_TOKENS", "free_memory_bytes",
           "estimate_prompt_tokens", "suggest_batch_size"]
