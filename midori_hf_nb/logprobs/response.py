""":class:`LogprobsResponse`: an :class:`~midori_hf_nb.AgentResponse` that carries its token
probabilities (``response.logprobs``, the OpenAI shape) and can be branched from a token.

An agent returns one when the call asked for ``logprobs``, ``top_logprobs`` or
``prompt_logprobs``; otherwise responses stay plain. The same probabilities are in
``response.metadata["logprobs"]`` as plain JSON (:meth:`~.records.Logprobs.as_dict`), which is what
transcripts and exports keep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from ..protocol import AgentResponse
from .records import Logprobs

#: What an agent leaves on a response it can branch: ``(response, step, token) -> awaitable response``.
Brancher = Callable[[Any, int, "int | str"], Awaitable[Any]]


class BranchError(ValueError):
    """A branch that cannot be made (no token records, a step or token that is not there, an agent
    that cannot force tokens); the message says which and what is allowed."""


@dataclass
class LogprobsResponse(AgentResponse):
    """An answer with its token probabilities: ``logprobs`` is a
    :class:`~midori_hf_nb.logprobs.Logprobs` (``logprobs.content[i].logprob``,
    ``.top_logprobs``, ... as in OpenAI's API, plus the processed log-probability, rank, entropy
    and grammar pressure), or None when the agent could not give any."""

    logprobs: Logprobs | None = None

    #: set by the agent that made the response when it can continue from a token (not a field)
    _brancher = None

    async def branch(self, step: int, token: int | str) -> "LogprobsResponse":
        """Continue the same prompt with this answer's first ``step`` tokens and ``token`` (an id,
        or the text of one of the alternatives shown at that step) forced at position ``step``;
        the model writes the rest. Returns the new response (this one is kept as it is); its
        ``logprobs.branch`` says where it left this one. The same settings apply.

        Raises :class:`BranchError` when the answer has no token records, ``step`` is outside the
        answer, the text is not one of the step's alternatives, the constraint forbids the token,
        or the agent cannot force tokens (a served model).
        """
        brancher: Brancher | None = self._brancher
        if brancher is None:
            raise BranchError("this response cannot be branched: only answers of a local agent "
                              "(HuggingFaceLocalAgent) asked with logprobs=True can be continued from a token")
        return await brancher(self, step, token)


def attach_brancher(response: Any, brancher: Brancher | None) -> Any:
    """Let ``response`` (a :class:`LogprobsResponse`) be branched through ``brancher``; returns it."""
    if isinstance(response, LogprobsResponse):
        response._brancher = brancher
    return response


__all__ = ["BranchError", "Brancher", "LogprobsResponse", "attach_brancher"]
