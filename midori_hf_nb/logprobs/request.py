"""What a call asks for: ``logprobs``, ``top_logprobs`` and ``prompt_logprobs``, checked in one place.

* ``logprobs=True``: a record per generated token (see :mod:`.records`);
* ``top_logprobs=k`` (0 to 20): with each token its ``k`` most likely alternatives; a ``k`` above 0
  turns ``logprobs`` on (as OpenAI's API needs both, a served agent sends both);
* ``prompt_logprobs=True``: the log-probability of each prompt token given the ones before it, and
  the prompt's perplexity (one more forward pass over the prompt).

All three are off by default, and a generation that asks for none of them does no extra work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import ConfigError, refusal_message
from .records import MAX_TOP_LOGPROBS

#: The per-call options of this module.
PROBABILITY_OPTIONS = ("logprobs", "top_logprobs", "prompt_logprobs")


@dataclass(frozen=True)
class ProbabilityRequest:
    """Token probabilities asked for by a call: per generated token (``tokens``) with ``top``
    alternatives each, and per prompt token (``prompt``)."""

    tokens: bool = False
    top: int = 0
    prompt: bool = False

    def options(self) -> dict[str, Any]:
        """The call options that ask for this (for a later call, e.g. a branch)."""
        out: dict[str, Any] = {}
        if self.tokens:
            out["logprobs"] = True
        if self.top:
            out["top_logprobs"] = self.top
        if self.prompt:
            out["prompt_logprobs"] = True
        return out


def _flag(name: str, value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConfigError(refusal_message(name, value, "expected true or false"))
    return value


def probability_request(options: Mapping[str, Any]) -> ProbabilityRequest | None:
    """The :class:`ProbabilityRequest` of a call's ``options`` (the keys of
    :data:`PROBABILITY_OPTIONS`; others are ignored), or None when nothing is asked.

    Raises :class:`~midori_hf_nb.config.ConfigError` naming the option and what is allowed.
    """
    tokens = _flag("logprobs", options.get("logprobs"))
    top = options.get("top_logprobs")
    if top is None:
        top = 0
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
        raise ConfigError(refusal_message("top_logprobs", top,
                                          f"expected a whole number from 0 to {MAX_TOP_LOGPROBS}"))
    prompt = _flag("prompt_logprobs", options.get("prompt_logprobs"))
    if not (tokens or top or prompt):
        return None
    return ProbabilityRequest(tokens=tokens or top > 0, top=top, prompt=prompt)


__all__ = ["PROBABILITY_OPTIONS", "ProbabilityRequest", "probability_request"]
