"""Reading token probabilities from anything that carries them: a response, its metadata, a
comparison row, a :class:`~.records.Logprobs`; the probability of one token at one step (for an
evaluation's verdict probability); the step at a character of the answer; a DataFrame.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping

from .records import Logprobs, LogprobsError, TokenLogprob, read_logprobs

#: The column of a comparison table that holds a row's token probabilities.
ROW_COLUMN = "token_logprobs"

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def logprobs_of(source: Any) -> Logprobs | None:
    """The token probabilities of ``source``, or None when it carries none.

    ``source``: a :class:`~.records.Logprobs`; a response (its ``logprobs`` attribute, else its
    ``metadata["logprobs"]``); a metadata dict (its ``"logprobs"`` entry); a comparison row (its
    ``"token_logprobs"`` column, a dict or a pandas row); a comparison
    :class:`~midori_hf_nb.compare.rows.RowResult` (its ``logprobs``); or the plain form
    itself (a dict with ``"content"``). Plain forms are read with
    :func:`~.records.read_logprobs` (bounded; a malformed one raises
    :class:`~.records.LogprobsError` naming the field).
    """
    if source is None or isinstance(source, Logprobs):
        return source
    row = source.get(ROW_COLUMN) if callable(getattr(source, "get", None)) and not isinstance(source, Logprobs) \
        else None
    if row is not None and not _missing(row):
        return read_logprobs(row, ROW_COLUMN)
    held = getattr(source, "logprobs", None)
    if isinstance(held, Logprobs):
        return held
    if held is not None and not callable(held):
        return read_logprobs(held)
    if isinstance(source, Mapping):
        if "content" in source and "logprobs" not in source:
            return read_logprobs(source)
        value = source.get("logprobs")
        return None if _missing(value) else read_logprobs(value)
    metadata = getattr(source, "metadata", None)
    if isinstance(metadata, Mapping) and metadata.get("logprobs") is not None:
        return read_logprobs(metadata["logprobs"], "metadata['logprobs']")
    return None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def token_at(source: Any, step: int) -> TokenLogprob:
    """The record of the token generated at ``step`` (0 is the first); raises ``LookupError`` when
    ``source`` has no token probabilities or the answer has no such step."""
    found = logprobs_of(source)
    if found is None or not found.content:
        raise LookupError("no token probabilities: ask with logprobs=True (or top_logprobs=k)")
    if isinstance(step, bool) or not isinstance(step, int) or not -len(found.content) <= step < len(found.content):
        raise LookupError(f"step={step!r} is not allowed: expected a whole number from 0 to {len(found.content) - 1} "
                          f"(the answer has {len(found.content)} tokens)")
    return found.content[step]


def token_probability(source: Any, step: int, token: int | str | None = None, *,
                      processed: bool = False) -> float | None:
    """The probability of ``token`` at ``step`` of an answer: the generated token when ``token`` is
    None, else the token with that id (``int``) or text (``str``, compared exactly: ``" true"``
    and ``"true"`` are different tokens) among the step's generated token and top alternatives.

    ``processed=False`` (default) gives the model's raw probability; ``True`` the probability in
    the distribution the token was drawn from (after temperature, top-k/top-p, penalties and any
    constraint). Returns None when the token is not among those recorded at that step (ask for
    more ``top_logprobs``) or its probability is unknown.

    ``source`` is anything :func:`logprobs_of` reads (a response, its metadata, a comparison row).
    Raises ``LookupError`` when there are no token probabilities or no such step.
    """
    record = token_at(source, step)
    found = record if token is None else record.alternative(token)
    if found is None:
        return None
    value = found.processed_logprob if processed else found.logprob
    if value is None:
        return 0.0 if processed and found.logprob is not None else None
    return math.exp(value)


def step_at(source: Any, offset: int) -> int | None:
    """The step whose token covers character ``offset`` of the generated text (the texts of the
    tokens one after another: the raw answer, thinking and markup included); None past its end."""
    found = logprobs_of(source)
    if found is None:
        return None
    position = 0
    for step, record in enumerate(found.content):
        position += len(record.token)
        if offset < position:
            return step
    return None


def least_confident(source: Any, count: int = 5, *, processed: bool = False) -> list[tuple[int, TokenLogprob]]:
    """The ``count`` least likely generated tokens as (step, record), lowest probability first."""
    found = logprobs_of(source)
    return [] if found is None else found.least_confident(count, processed=processed)


def prompt_perplexity(source: Any) -> float | None:
    """The prompt's perplexity (asked with ``prompt_logprobs=True``), or None."""
    found = logprobs_of(source)
    return None if found is None or found.prompt is None else found.prompt.perplexity


def logprobs_frame(source: Any) -> "pd.DataFrame":
    """One row per generated token: ``step``, ``token``, ``id``, ``logprob``, ``prob``,
    ``processed_logprob``, ``processed_prob``, ``rank``, ``entropy``, ``surprisal_bits``,
    ``allowed``, ``top_forbidden`` and ``alternatives`` (a list of ``(text, raw probability,
    processed probability)``). Empty (with these columns) when ``source`` has none."""
    import pandas as pd

    found = logprobs_of(source)
    rows = []
    for step, record in enumerate(found.content if found is not None else []):
        rows.append({
            "step": step, "token": record.token, "id": record.id, "logprob": record.logprob,
            "prob": record.prob if record.logprob is not None else None,
            "processed_logprob": record.processed_logprob, "processed_prob": record.processed_prob,
            "rank": record.rank, "entropy": record.entropy, "surprisal_bits": record.surprisal,
            "allowed": record.allowed, "top_forbidden": record.top_forbidden,
            "alternatives": [(alt.token, alt.prob, alt.processed_prob) for alt in record.top_logprobs],
        })
    columns = ["step", "token", "id", "logprob", "prob", "processed_logprob", "processed_prob", "rank", "entropy",
               "surprisal_bits", "allowed", "top_forbidden", "alternatives"]
    frame = pd.DataFrame(rows, columns=columns)
    for name in ("id", "rank", "allowed"):
        frame[name] = frame[name].astype("Int64")
    for name in ("logprob", "prob", "processed_logprob", "processed_prob", "entropy", "surprisal_bits"):
        frame[name] = frame[name].astype("float64")
    frame["top_forbidden"] = frame["top_forbidden"].astype("boolean")
    return frame


__all__ = ["LogprobsError", "least_confident", "logprobs_frame", "logprobs_of", "prompt_perplexity", "step_at",
           "token_at", "token_probability"]
