"""Attention that follows the thread's :mod:`~midori_hf_nb.engine.forward_mode`, for reproducible
generation: registered with transformers' attention interface and computed by its SDPA function.

Relies on (transformers 5.x, checked on 5.24):

* ``transformers.AttentionInterface.register(name, function)`` and
  ``transformers.masking_utils.AttentionMaskInterface.register(name, mask_function)`` (public,
  documented as "Attention interface"), and ``PreTrainedModel.set_attn_implementation(name)``;
* ``transformers.integrations.sdpa_attention.sdpa_attention_forward(module, query, key, value,
  attention_mask, **kwargs)`` with query ``[batch, heads, queries, dim]`` and key/value
  ``[batch, kv_heads, keys, dim]``, returning ``([batch, queries, heads, dim], None)``, and
  ``masking_utils.sdpa_mask``, whose masks are boolean ``[batch, 1, queries, keys]`` (True: attend)
  or None (plain causal attention, or nothing masked).

Outside a reproducible forward the function is ``sdpa_attention_forward`` itself, called with the
same arguments (the model's answers do not change). Inside one:

* ``"decode"``: each row attends alone over its own keys, the contiguous run its mask allows (a
  stacked batch's left padding cut off), with no mask, exactly as that row decoding alone does;
  SDPA's kernels cut the keys into blocks from the first one, so padding in front of a row would
  change the order of its sums;
* ``"prefill"`` (one sequence): the queries in tiles of ``tile`` positions, each tile over the
  keys up to its last position with its rows of the causal mask, so a tile's attention is the
  same whether the keys before it were prefilled in this forward or came from a kept cache.

A mask that does not allow one contiguous run of keys ending at the row's own position (none of
the models the engine's loop drives has one) is used as it is, and the forward mode records why
its rows may depend on the batch.
"""

from __future__ import annotations

from typing import Any

import torch

from ..forward_mode import current, tile_bounds
from .decoding import DecodeLoopSupport

#: The name the attention function is registered under.
ATTENTION_NAME = "midori_exact_sdpa"

_registered = False


def _sdpa() -> Any:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward


def _decode_rows(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, kwargs: dict[str, Any]) -> tuple[torch.Tensor, None]:
    sdpa = _sdpa()
    keys = key.shape[2]
    outputs = []
    for row in range(query.shape[0]):
        start = 0
        mask = None
        if attention_mask is not None:
            allowed = attention_mask[row if attention_mask.shape[0] > 1 else 0, 0, -1]
            allowed = allowed if allowed.dtype == torch.bool else allowed == 0
            count = int(allowed.sum())
            start = keys - count
            if count == 0 or not bool(allowed[start:].all()):
                mode = current()
                if mode is not None:
                    mode.inexact.append("an attention mask that is not one run of keys ending at the row's position")
                start, mask = 0, attention_mask[row:row + 1] if attention_mask.shape[0] > 1 else attention_mask
        out, _ = sdpa(module, query[row:row + 1], key[row:row + 1, :, start:], value[row:row + 1, :, start:],
                      mask, **kwargs)
        outputs.append(out)
    return torch.cat(outputs), None


def _prefill_tiles(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, tile: int, kwargs: dict[str, Any]) -> tuple[torch.Tensor, None]:
    sdpa = _sdpa()
    queries, keys = query.shape[2], key.shape[2]
    first = keys - queries  # the absolute position of the first query
    if attention_mask is None:
        positions = torch.arange(first, keys, device=query.device)
        allowed = torch.arange(keys, device=query.device)[None, :] <= positions[:, None]
    else:
        allowed = attention_mask[0, 0]
        allowed = allowed if allowed.dtype == torch.bool else allowed == 0
    outputs = []
    for a, b in tile_bounds(queries, tile):
        end = first + b
        out, _ = sdpa(module, query[:, :, a:b], key[:, :, :end], value[:, :, :end], allowed[None, None, a:b, :end],
                      **{**kwargs, "is_causal": False})
        outputs.append(out)
    return torch.cat(outputs, dim=1), None


def exact_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """SDPA attention, cut as the thread's forward mode says (see the module docstring)."""
    mode = current()
    if mode is None or (mode.kind == "decode" and query.shape[2] != 1) or (mode.kind == "prefill" and query.shape[0] != 1):
        if mode is not None:
            mode.inexact.append(f"a {mode.kind} forward of shape {tuple(query.shape)}")
        return _sdpa()(module, query, key, value, attention_mask, **kwargs)
    if mode.kind == "decode":
        return _decode_rows(module, query, key, value, attention_mask, kwargs)
    return _prefill_tiles(module, query, key, value, attention_mask, mode.tile, kwargs)


def exact_attention_support(model: Any) -> DecodeLoopSupport:
    """Whether :func:`use_exact_attention` can give ``model`` this attention: it must use
    transformers' SDPA attention (``config._attn_implementation == "sdpa"``), and this
    transformers must have the attention and mask interfaces and ``set_attn_implementation``."""
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if implementation == ATTENTION_NAME:
        return DecodeLoopSupport(True)
    if implementation != "sdpa":
        return DecodeLoopSupport(False, reason=f"the model's attention is {implementation!r}, not 'sdpa'")
    if not callable(getattr(model, "set_attn_implementation", None)):
        return DecodeLoopSupport(False, reason="this transformers' models have no set_attn_implementation")
    try:
        import transformers.masking_utils as masking
        from transformers import AttentionInterface  # noqa: F401
        from transformers.integrations import sdpa_attention  # noqa: F401

        masking.AttentionMaskInterface, masking.sdpa_mask  # noqa: B018
    except (ImportError, AttributeError) as exc:
        return DecodeLoopSupport(False, reason=f"this transformers has no attention interface to register with ({exc})")
    return DecodeLoopSupport(True)


def use_exact_attention(model: Any) -> None:
    """Register :func:`exact_attention` (once per process) and make ``model`` use it (see
    :func:`exact_attention_support` first)."""
    global _registered
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if not _registered:
        AttentionInterface.register(ATTENTION_NAME, exact_attention)
        AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
        _registered = True
    if model.config._attn_implementation != ATTENTION_NAME:
        model.set_attn_implementation(ATTENTION_NAME)


__all__ = ["ATTENTION_NAME", "exact_attention", "exact_attention_support", "use_exact_attention"]
