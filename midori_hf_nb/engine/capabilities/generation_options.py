"""``GenerationConfig`` differences, ``generate``'s sampling warpers in its order, and the text
streamer subclass that hands decoded pieces to a callback."""

from __future__ import annotations

import threading
from typing import Any, Callable


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
