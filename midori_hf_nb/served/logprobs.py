"""Token probabilities from an OpenAI-compatible server: the request's ``logprobs`` and
``top_logprobs`` parameters, and each streamed chunk's ``choices[0].logprobs.content`` read into
:class:`~midori_hf_nb.logprobs.TokenLogprob` records.

A server gives the raw ``logprob`` of each token and its alternatives (what it computes: vLLM's
default, llama.cpp's server, OpenAI); the processed log-probability, rank and entropy are the local
agent's own, so they are None here. Servers differ:

* one that returns token probabilities: the response's ``logprobs`` holds them, streamed with
  each piece as they arrive;
* one that ignores the parameters (``transformers serve`` does, with a warning in its log): the
  answer comes as usual and ``response.logprobs`` is empty with a ``note`` saying the server
  returned none;
* one that refuses them (HTTP 400 or 422): the call is made once more without them, and the note
  says the server refused them and why;
* ``prompt_logprobs`` is not part of the OpenAI API: the note says so.

What a server sends is bounded like any input: at most the call's ``max_new_tokens`` records (and a
few more), 20 alternatives each, every field type-checked; records that cannot be read end the
reading with a note, never the answer.
"""

from __future__ import annotations

from typing import Any

from ..logprobs.records import MAX_TOKENS, Logprobs, LogprobsError, TokenLogprob, read_token
from ..logprobs.request import ProbabilityRequest

#: Request fields of the token-probability parameters.
LOGPROBS_FIELDS = ("logprobs", "top_logprobs")


def request_fields(request: ProbabilityRequest | None) -> dict[str, Any]:
    """The request fields that ask the server for token probabilities (none when not asked)."""
    if request is None or not request.tokens:
        return {}
    fields: dict[str, Any] = {"logprobs": True}
    if request.top:
        fields["top_logprobs"] = request.top
    return fields


def without_logprobs(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` without the token-probability parameters (to ask a server that refused them again)."""
    return {key: value for key, value in body.items() if key not in LOGPROBS_FIELDS}


def _plain(value: Any) -> Any:
    """An ``openai`` SDK object as plain data (its ``model_dump``), a dict as it is."""
    dump = getattr(value, "model_dump", None)
    return dump() if callable(dump) else value


class ServedLogprobs:
    """Collects the token records of one streamed answer (see the module docstring)."""

    def __init__(self, request: ProbabilityRequest | None, budget: int | None = None) -> None:
        self.request = request
        #: the most records read: the call's ``max_new_tokens`` (and some slack for a final token)
        self.limit = MAX_TOKENS if budget is None else min(MAX_TOKENS, int(budget) + 16)
        self.content: list[TokenLogprob] = []
        self.problem: str | None = None
        self.refused: str | None = None

    @property
    def active(self) -> bool:
        return self.request is not None and self.request.tokens and self.problem is None

    def absorb(self, choice: Any) -> list[TokenLogprob]:
        """The records in one chunk's choice (none when the server sent none or they cannot be read)."""
        if not self.active:
            return []
        found = choice.get("logprobs") if isinstance(choice, dict) else getattr(choice, "logprobs", None)
        if found is None:
            return []
        items = _plain(found).get("content") if isinstance(_plain(found), dict) else None
        if not isinstance(items, list):
            return []
        records = []
        for item in items:
            if len(self.content) >= self.limit:
                self.problem = f"the server sent more than {self.limit} token records; the rest were not read"
                break
            try:
                record = read_token(_plain(item), f"logprobs.content[{len(self.content)}]", cut_top=True)
            except LogprobsError as exc:
                self.problem = f"the server's token probabilities could not be read: {exc}"
                break
            self.content.append(record)
            records.append(record)
        return records

    def result(self, base_url: str) -> Logprobs | None:
        """The answer's :class:`~midori_hf_nb.logprobs.Logprobs` (None when none were asked for)."""
        request = self.request
        if request is None:
            return None
        notes = []
        if self.refused is not None:
            notes.append(f"the server at {base_url} refused the logprobs parameters ({self.refused}); the answer "
                         "was asked for again without them")
        elif request.tokens and not self.content and self.problem is None:
            notes.append(f"the server at {base_url} returned no token probabilities (it ignores or does not "
                         "support the logprobs and top_logprobs parameters)")
        if self.problem is not None:
            notes.append(self.problem)
        if request.prompt:
            notes.append("prompt_logprobs is not part of the OpenAI API: a served model gives no prompt probabilities")
        return Logprobs(content=list(self.content), source="server", top=request.top,
                        note="; ".join(notes) if notes else None)


__all__ = ["LOGPROBS_FIELDS", "ServedLogprobs", "request_fields", "without_logprobs"]
