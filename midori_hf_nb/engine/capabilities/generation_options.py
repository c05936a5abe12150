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


class TextCarry:
    """The text a paused generation's streamer still held (tokens of an unfinished word and how
    much of their text was already handed on), passed to the streamer of the generation that
    continues it, so the pieces of both join as one generation's would."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.printed = 0
        #: set before stopping a generation that will be continued: its streamer keeps its text
        self.hold = False

    def rest(self, tokenizer: Any, lock: threading.RLock) -> str:
        """The held text not yet handed on (for a continued generation that will not run after all)."""
        if not self.tokens:
            return ""
        with lock:
            text = tokenizer.decode(self.tokens, skip_special_tokens=True)
        rest, self.tokens, self.printed = text[self.printed:], [], 0
        return rest


def callback_streamer(tokenizer: Any, on_text: Callable[[str], None], lock: threading.RLock,
                      on_token: Callable[[int], None] | None = None, carry: TextCarry | None = None) -> Any:
    """A ``TextStreamer`` that hands each finalised piece of text to ``on_text`` (under ``lock``).

    Relies on ``TextStreamer.put``/``end`` calling ``on_finalized_text`` with the text they
    have decoded, the documented way to subclass it (transformers 4.28 through 5.24).
    ``on_token`` is told how many tokens each ``put`` after the prompt brought. With a
    :class:`TextCarry`, the streamer starts from the text a paused generation held, and ``end``
    while ``carry.hold`` is set keeps its own held text there instead of flushing it; this relies
    on ``TextStreamer``'s ``token_cache`` and ``print_len`` attributes (transformers 4.28 through
    5.24); where they are missing the held text is flushed at the pause (a warning says so).
    """
    from transformers import TextStreamer

    class CallbackStreamer(TextStreamer):
        def put(self, value: Any) -> None:
            with lock:
                prompt = self.skip_prompt and self.next_tokens_are_prompt
                super().put(value)
                if prompt and carry is not None and carry.tokens and _carries(self):
                    self.token_cache, self.print_len = list(carry.tokens), carry.printed
                    carry.tokens, carry.printed = [], 0
            if not prompt and on_token is not None:
                on_token(int(value.numel()))

        def end(self) -> None:
            with lock:
                if carry is not None and carry.hold and _carries(self):
                    carry.tokens, carry.printed = list(self.token_cache), self.print_len
                    self.token_cache, self.print_len = [], 0
                    self.next_tokens_are_prompt = True
                    return
                super().end()

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    return CallbackStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def _carries(streamer: Any) -> bool:
    """Whether ``streamer`` has the attributes a :class:`TextCarry` moves (warns once if not)."""
    if isinstance(getattr(streamer, "token_cache", None), list) and isinstance(getattr(streamer, "print_len", None), int):
        return True
    from .fallbacks import fallback

    fallback("text-carry", "transformers' TextStreamer has no token_cache/print_len: a paused stream hands on "
             "the word it held at the pause, and its continuation decodes its own tokens from there")
    return False
