"""Token probabilities: what the model thought of each token of an answer.

Ask per call with ``logprobs=True``, ``top_logprobs=k`` (0-20) and ``prompt_logprobs=True``
(:mod:`.request`); the answer is then a :class:`LogprobsResponse` whose ``logprobs`` is a
:class:`Logprobs` in the OpenAI shape (``response.logprobs.content[i].logprob``,
``.top_logprobs``), with the processed log-probability, rank, entropy and grammar pressure
beside (:mod:`.records`). :func:`token_probability` gives the probability of one token at one
step (the verdict probability of a judge), :func:`logprobs_frame` a DataFrame, and
:meth:`LogprobsResponse.branch` continues an answer from another token. The notebook view is
:func:`midori_hf_nb.notebook.token_view`.
"""

from .api import (
    least_confident,
    logprobs_frame,
    logprobs_of,
    prompt_perplexity,
    step_at,
    token_at,
    token_probability,
)
from .records import (
    MAX_TOP_LOGPROBS,
    Logprobs,
    LogprobsError,
    PromptLogprobs,
    PromptToken,
    TokenLogprob,
    TopLogprob,
    perplexity,
    read_logprobs,
)
from .request import PROBABILITY_OPTIONS, ProbabilityRequest, probability_request
from .response import BranchError, LogprobsResponse, attach_brancher

__all__ = [
    "MAX_TOP_LOGPROBS",
    "PROBABILITY_OPTIONS",
    "BranchError",
    "Logprobs",
    "LogprobsError",
    "LogprobsResponse",
    "ProbabilityRequest",
    "PromptLogprobs",
    "PromptToken",
    "TokenLogprob",
    "TopLogprob",
    "attach_brancher",
    "least_confident",
    "logprobs_frame",
    "logprobs_of",
    "perplexity",
    "probability_request",
    "prompt_perplexity",
    "read_logprobs",
    "step_at",
    "token_at",
    "token_probability",
]
