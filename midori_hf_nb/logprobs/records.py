"""Token probabilities of one answer, typed, in the OpenAI shape: :class:`Logprobs` with one
:class:`TokenLogprob` per generated token (``response.logprobs.content[i]``), each with its
:class:`TopLogprob` alternatives, and :class:`PromptLogprobs` for the prompt.

Two log-probabilities per token (natural logarithms):

* ``logprob``: from the model's raw logits (``log_softmax`` of what the model computed), the
  model's own belief; the OpenAI field of that name.
* ``processed_logprob``: from the distribution the token was actually drawn from, after the logits
  processors (repetition penalty, a structured-output constraint) and, when sampling, temperature,
  top-k and top-p. ``None`` where that distribution gives the token no chance (a token the
  constraint forbids, one outside top-k). In greedy decoding the chosen token has the highest
  ``processed_logprob`` of its step.

``rank`` is the chosen token's place among the raw logits (1: the model's own first choice);
``entropy`` the entropy of the raw distribution, in nats. Under a constraint, ``allowed`` is how
many tokens the constraint allowed at that step and ``top_forbidden`` whether it forbade the token
the model ranked first: where it is True, the schema, not the model, chose.

:meth:`Logprobs.as_dict` is the plain JSON form (the OpenAI ``logprobs`` object, its extra fields
beside the OpenAI ones), stored in a response's metadata and in saved transcripts;
:func:`read_logprobs` reads it back without trusting it (sizes, types and ranges bounded; a refusal
names the field). Nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

#: The most alternatives per token (the OpenAI bound on ``top_logprobs``).
MAX_TOP_LOGPROBS = 20
#: The most token records read from one answer's (or prompt's) probabilities.
MAX_TOKENS = 100_000
#: The most characters of one token's text, and bytes of its ``bytes``.
MAX_TOKEN_CHARS = 1_000
#: The smallest log-probability kept (smaller ones are read as this: e**-1000 is 0 in a double).
MIN_LOGPROB = -1_000.0


class LogprobsError(ValueError):
    """Token probabilities that cannot be read (from a server, a transcript); the message names the field."""


@dataclass(frozen=True)
class TopLogprob:
    """One alternative at a step: its text, raw ``logprob`` and ``processed_logprob`` (None: no chance)."""

    token: str
    logprob: float | None
    bytes: list[int] | None = None
    id: int | None = None
    processed_logprob: float | None = None

    @property
    def prob(self) -> float:
        """The raw probability (0 when unknown)."""
        return _prob(self.logprob)

    @property
    def processed_prob(self) -> float:
        """The probability in the distribution the token was drawn from (0: no chance)."""
        return _prob(self.processed_logprob)

    def as_dict(self) -> dict[str, Any]:
        out = {"token": self.token, "logprob": self.logprob, "bytes": self.bytes}
        for name in ("id", "processed_logprob"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its id, text and bytes, both log-probabilities, rank, the entropy of
    its step, the top alternatives, and (under a constraint) the grammar's pressure."""

    token: str
    logprob: float | None
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = field(default_factory=list)
    id: int | None = None
    processed_logprob: float | None = None
    rank: int | None = None
    entropy: float | None = None
    #: how many tokens the constraint allowed at this step (None: no constraint)
    allowed: int | None = None
    #: whether the constraint forbade the model's own first choice (None: no constraint)
    top_forbidden: bool | None = None

    @property
    def prob(self) -> float:
        """The raw probability of the token (0 when unknown)."""
        return _prob(self.logprob)

    @property
    def processed_prob(self) -> float:
        """The probability of the token in the distribution it was drawn from."""
        return _prob(self.processed_logprob)

    @property
    def surprisal(self) -> float | None:
        """The raw surprisal in bits (``-log2 p``); None when unknown."""
        return None if self.logprob is None else -self.logprob / math.log(2)

    def alternative(self, token: int | str) -> TopLogprob | None:
        """The alternative with this id (an ``int``) or text (a ``str``), or the token itself; None if absent."""
        if _matches(self.id, self.token, token):
            return TopLogprob(self.token, self.logprob, self.bytes, self.id, self.processed_logprob)
        return next((alt for alt in self.top_logprobs if _matches(alt.id, alt.token, token)), None)

    def as_dict(self) -> dict[str, Any]:
        out = {"token": self.token, "logprob": self.logprob, "bytes": self.bytes,
               "top_logprobs": [alt.as_dict() for alt in self.top_logprobs]}
        for name in ("id", "processed_logprob", "rank", "entropy", "allowed", "top_forbidden"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


@dataclass(frozen=True)
class PromptToken:
    """One prompt token and its log-probability given the tokens before it (None for the first)."""

    token: str
    logprob: float | None
    id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"token": self.token, "logprob": self.logprob, "id": self.id}


@dataclass(frozen=True)
class PromptLogprobs:
    """The prompt's tokens with their log-probabilities, and the prompt's perplexity."""

    tokens: list[PromptToken] = field(default_factory=list)

    @property
    def perplexity(self) -> float | None:
        """``exp`` of the mean negative log-probability over the prompt tokens that have one."""
        return perplexity(t.logprob for t in self.tokens)

    def as_dict(self) -> dict[str, Any]:
        return {"tokens": [t.as_dict() for t in self.tokens], "perplexity": self.perplexity}


@dataclass(frozen=True)
class Logprobs:
    """The token probabilities of one answer (``response.logprobs``): ``content`` as in OpenAI's
    ``logprobs.content``, ``prompt`` when ``prompt_logprobs=True`` was asked, ``note`` when
    there are none (a server that returns none says so there), ``source`` ``"engine"`` (computed
    by the local agent) or ``"server"``, and ``branch`` when the answer was branched from another
    (``{"step", "token", "forced"}``)."""

    content: list[TokenLogprob] = field(default_factory=list)
    prompt: PromptLogprobs | None = None
    note: str | None = None
    source: str = "engine"
    top: int = 0
    branch: dict[str, int] | None = None

    @property
    def tokens(self) -> list[str]:
        """The texts of the answer's tokens."""
        return [t.token for t in self.content]

    @property
    def perplexity(self) -> float | None:
        """The answer's perplexity under the raw distribution (None without token records)."""
        return perplexity(t.logprob for t in self.content)

    def least_confident(self, count: int = 5, *, processed: bool = False) -> list[tuple[int, TokenLogprob]]:
        """The ``count`` tokens with the lowest probability (raw, or ``processed``), as (step, token), lowest first."""
        key = (lambda item: _sort_key(item[1].processed_logprob)) if processed else \
            (lambda item: _sort_key(item[1].logprob))
        return sorted(enumerate(self.content), key=key)[:max(0, int(count))]

    def with_content(self, content: Iterable[TokenLogprob]) -> "Logprobs":
        """A copy holding ``content``."""
        return replace(self, content=list(content))

    def as_dict(self) -> dict[str, Any]:
        """The plain JSON form: the OpenAI ``logprobs`` object plus this project's fields."""
        out: dict[str, Any] = {"content": [t.as_dict() for t in self.content], "source": self.source,
                               "top": self.top}
        if self.prompt is not None:
            out["prompt"] = self.prompt.as_dict()
        if self.note is not None:
            out["note"] = self.note
        if self.branch is not None:
            out["branch"] = dict(self.branch)
        return out


def perplexity(logprobs: Iterable[float | None]) -> float | None:
    """``exp(-mean)`` of the log-probabilities that are known; None when none is."""
    known = [value for value in logprobs if value is not None]
    if not known:
        return None
    return math.exp(min(700.0, -sum(known) / len(known)))


def _prob(logprob: float | None) -> float:
    return 0.0 if logprob is None else math.exp(logprob)


def _sort_key(logprob: float | None) -> float:
    return -math.inf if logprob is None else logprob


def _matches(token_id: int | None, text: str, wanted: int | str) -> bool:
    if isinstance(wanted, bool):
        return False
    return token_id == wanted if isinstance(wanted, int) else text == wanted


# --------------------------------------------------------------------------- reading (untrusted)


def _refuse(where: str, value: Any, allowed: str) -> LogprobsError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return LogprobsError(f"{where}={shown} is not allowed: expected {allowed}")


def _logprob(where: str, value: Any, *, optional: bool = True) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _refuse(where, value, "a log-probability (a number <= 0)" + (" or null" if optional else ""))
    value = float(value)
    if math.isnan(value) or value > 1e-3:
        raise _refuse(where, value, "a log-probability (a number <= 0)")
    if value == -math.inf:
        return None if optional else MIN_LOGPROB
    return max(MIN_LOGPROB, min(0.0, value))


def _text(where: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_TOKEN_CHARS:
        raise _refuse(where, value, f"text of at most {MAX_TOKEN_CHARS} characters")
    return value


def _bytes(where: str, value: Any) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) > MAX_TOKEN_CHARS * 4 \
            or not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in value):
        raise _refuse(where, value, f"a list of at most {MAX_TOKEN_CHARS * 4} byte values (0-255) or null")
    return list(value)


def _count(where: str, value: Any, low: int = 0) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _refuse(where, value, f"a whole number >= {low} or null")
    return value


def _entropy(where: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < -1e-3:
        raise _refuse(where, value, "an entropy (a finite number >= 0) or null")
    return max(0.0, float(value))


def _items(where: str, value: Any, limit: int) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or len(value) > limit:
        raise _refuse(where, value, f"a list of at most {limit} items")
    return list(value)


def _mapping(where: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _refuse(where, value, "an object")
    return value


def read_alternative(data: Any, where: str) -> TopLogprob:
    """One alternative (a ``top_logprobs`` item), checked."""
    data = _mapping(where, data)
    return TopLogprob(token=_text(f"{where}.token", data.get("token")),
                      logprob=_logprob(f"{where}.logprob", data.get("logprob")),
                      bytes=_bytes(f"{where}.bytes", data.get("bytes")),
                      id=_count(f"{where}.id", data.get("id")),
                      processed_logprob=_logprob(f"{where}.processed_logprob", data.get("processed_logprob")))


def read_token(data: Any, where: str, *, cut_top: bool = False) -> TokenLogprob:
    """One token record (a ``content`` item), checked; ``cut_top`` keeps the first
    :data:`MAX_TOP_LOGPROBS` alternatives of a longer list instead of refusing it."""
    data = _mapping(where, data)
    top = data.get("top_logprobs")
    if cut_top and isinstance(top, (list, tuple)):
        top = list(top)[:MAX_TOP_LOGPROBS]
    alternatives = [read_alternative(item, f"{where}.top_logprobs[{i}]")
                    for i, item in enumerate(_items(f"{where}.top_logprobs", top, MAX_TOP_LOGPROBS))]
    forbidden = data.get("top_forbidden")
    if forbidden is not None and not isinstance(forbidden, bool):
        raise _refuse(f"{where}.top_forbidden", forbidden, "true, false or null")
    return TokenLogprob(token=_text(f"{where}.token", data.get("token")),
                        logprob=_logprob(f"{where}.logprob", data.get("logprob")),
                        bytes=_bytes(f"{where}.bytes", data.get("bytes")), top_logprobs=alternatives,
                        id=_count(f"{where}.id", data.get("id")),
                        processed_logprob=_logprob(f"{where}.processed_logprob", data.get("processed_logprob")),
                        rank=_count(f"{where}.rank", data.get("rank"), 1),
                        entropy=_entropy(f"{where}.entropy", data.get("entropy")),
                        allowed=_count(f"{where}.allowed", data.get("allowed")), top_forbidden=forbidden)


def _read_prompt(data: Any, where: str) -> PromptLogprobs | None:
    if data is None:
        return None
    data = _mapping(where, data)
    tokens = []
    for index, item in enumerate(_items(f"{where}.tokens", data.get("tokens"), MAX_TOKENS)):
        item = _mapping(f"{where}.tokens[{index}]", item)
        tokens.append(PromptToken(token=_text(f"{where}.tokens[{index}].token", item.get("token")),
                                  logprob=_logprob(f"{where}.tokens[{index}].logprob", item.get("logprob")),
                                  id=_count(f"{where}.tokens[{index}].id", item.get("id"))))
    return PromptLogprobs(tokens)


def _read_branch(data: Any, where: str) -> dict[str, int] | None:
    if data is None:
        return None
    data = _mapping(where, data)
    out = {}
    for key in ("step", "token", "forced"):
        value = _count(f"{where}.{key}", data.get(key))
        if value is None:
            raise _refuse(f"{where}.{key}", data.get(key), "a whole number >= 0")
        out[key] = value
    return out


def read_logprobs(data: Any, where: str = "logprobs") -> Logprobs:
    """A :class:`Logprobs` from its plain form (:meth:`Logprobs.as_dict`, or an OpenAI ``logprobs``
    object), every field checked and bounded; raises :class:`LogprobsError` naming the field."""
    if isinstance(data, Logprobs):
        return data
    data = _mapping(where, data)
    content = [read_token(item, f"{where}.content[{i}]")
               for i, item in enumerate(_items(f"{where}.content", data.get("content"), MAX_TOKENS))]
    note = data.get("note")
    if note is not None:
        note = _text(f"{where}.note", note)
    source = data.get("source", "engine")
    if source not in ("engine", "server"):
        raise _refuse(f"{where}.source", source, "'engine' or 'server'")
    top = _count(f"{where}.top", data.get("top", 0)) or 0
    if top > MAX_TOP_LOGPROBS:
        raise _refuse(f"{where}.top", top, f"a whole number from 0 to {MAX_TOP_LOGPROBS}")
    return Logprobs(content=content, prompt=_read_prompt(data.get("prompt"), f"{where}.prompt"), note=note,
                    source=source, top=top, branch=_read_branch(data.get("branch"), f"{where}.branch"))


__all__ = ["MAX_TOKENS", "MAX_TOKEN_CHARS", "MAX_TOP_LOGPROBS", "Logprobs", "LogprobsError", "PromptLogprobs",
           "PromptToken", "TokenLogprob", "TopLogprob", "perplexity", "read_alternative", "read_logprobs",
           "read_token"]
