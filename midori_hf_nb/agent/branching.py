"""Branching an answer from a token: the same prompt and settings, the answer's first ``step``
tokens and a chosen token forced (:class:`~midori_hf_nb.engine.logprobs.ForcedTokens`), and the
model free from there. The original response is left as it is.

The forced tokens run as a logits processor, so a single answer stays on the engine's own decode
loop; their records carry the model's raw log-probability and a processed log-probability of 0
(they had no competitor). Under a constraint, a token the constraint forbids cannot be forced.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ..logprobs import BranchError, LogprobsResponse, attach_brancher, logprobs_of
from ..protocol import AgentPayload

if TYPE_CHECKING:  # pragma: no cover
    from .host import GenerationHost


def check_branch(response: Any, step: int, token: int | str) -> tuple[list[int], int]:
    """The token ids before ``step`` of an answer (``response``: anything
    :func:`~midori_hf_nb.logprobs.logprobs_of` reads) and the id to force at ``step``; raises
    :class:`~midori_hf_nb.logprobs.BranchError` naming what is not there."""
    found = logprobs_of(response)
    if found is None or not found.content:
        raise BranchError("this answer has no token records: ask with logprobs=True (or top_logprobs=k) to branch it")
    content = found.content
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < len(content):
        raise BranchError(f"step={step!r} is not allowed: expected a whole number from 0 to {len(content) - 1} "
                          f"(the answer has {len(content)} tokens)")
    before = [record.id for record in content[:step]]
    if any(token_id is None for token_id in before):
        raise BranchError("the answer's token records carry no token ids (a served model's): it cannot be branched")
    record = content[step]
    if isinstance(token, bool) or not isinstance(token, (int, str)):
        raise BranchError(f"token={token!r} is not allowed: expected a token id (int) or the text of one of the "
                          f"alternatives at step {step}")
    alternative = record.alternative(token)
    if isinstance(token, str):
        if alternative is None or alternative.id is None:
            shown = ", ".join(repr(alt.token) for alt in record.top_logprobs) or "none recorded"
            raise BranchError(f"token={token!r} is not among the alternatives at step {step} ({shown}): pass one of "
                              "them, or a token id")
        token = alternative.id
    if token < 0:
        raise BranchError(f"token={token!r} is not allowed: expected a token id >= 0")
    if alternative is not None and record.allowed is not None and alternative.processed_logprob is None:
        raise BranchError(f"the constraint forbids token {alternative.token!r} at step {step}: choose an alternative "
                          "it allows (one with a processed probability)")
    return [int(t) for t in before], int(token)


def _forced(base: dict[str, Any], forced: list[int]) -> dict[str, Any]:
    """``base`` overrides with :class:`~midori_hf_nb.engine.logprobs.ForcedTokens` for ``forced`` added."""
    from ..engine.logprobs import ForcedTokens

    return {**base, "logits_processor": [*(base.get("logits_processor") or []), ForcedTokens(forced)]}


def _marked(branched: Any, step: int, chosen: int, forced: int, brancher: Any) -> Any:
    """The branched response with ``logprobs.branch`` set and ``brancher`` attached."""
    if isinstance(branched, LogprobsResponse) and branched.logprobs is not None:
        branched.logprobs = dataclasses.replace(branched.logprobs, branch={"step": step, "token": chosen,
                                                                           "forced": forced})
        branched.metadata = {**(branched.metadata or {}), "logprobs": branched.logprobs.as_dict()}
    return attach_brancher(branched, brancher)


def make_brancher(stream_class: Any, host: "GenerationHost", payload: AgentPayload, overrides: dict[str, Any],
                  schemas: list[dict] | None, continuation: list[dict] | None) -> Any:
    """What :meth:`LogprobsResponse.branch` calls for an answer of ``host`` to ``payload`` with
    ``overrides`` (and the tools ``schemas`` and tool-loop ``continuation`` it was generated with);
    ``stream_class`` is :class:`~.stream.AgentStream`, which runs the branch."""
    base = dict(overrides)

    async def branch(response: Any, step: int, token: int | str) -> LogprobsResponse:
        before, chosen = check_branch(response, step, token)
        stream = stream_class(host, payload, events=True, overrides=_forced(base, [*before, chosen]),
                              schemas=schemas, continuation=continuation)
        return _marked(await stream.collect(), step, chosen, step + 1, branch)

    return branch


async def branch_answer(agent: Any, payload: AgentPayload, source: Any, step: int, token: int | str,
                        **overrides: Any) -> LogprobsResponse:
    """Branch an answer known only by its token probabilities (``source``: a response, its
    metadata, a transcript entry's) and the ``payload`` it answered: ``agent.invoke(payload,
    **overrides)`` with the answer's first ``step`` tokens and ``token`` forced (see the module
    docstring). ``agent`` must be a local agent, which can force tokens; raises
    :class:`~midori_hf_nb.logprobs.BranchError` otherwise, or for a step or token not there."""
    if not callable(getattr(agent, "ensure_loaded", None)) or not callable(getattr(agent, "invoke", None)):
        raise BranchError(f"{type(agent).__name__} cannot continue an answer from a token: only a local agent "
                          "(HuggingFaceLocalAgent) can force tokens")
    before, chosen = check_branch(source, step, token)
    branched = await agent.invoke(payload, **_forced(overrides, [*before, chosen]))

    async def again(response: Any, at: int, other: int | str) -> LogprobsResponse:
        return await branch_answer(agent, payload, response, at, other, **overrides)

    return _marked(branched, step, chosen, step + 1, again)


__all__ = ["branch_answer", "check_branch", "make_brancher"]
