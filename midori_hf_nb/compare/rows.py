"""The rows of a comparison grid as dataclasses, and what a finished call puts into a row.

A :class:`Row` is one (model, prompt, system, setting, repeat) combination; its
:class:`RowResult` starts as ``"not run"`` and is filled from the agent's response, whose
statistics are read typed with :func:`midori_hf_nb.stats.stats_of` (never by metadata keys).
:meth:`Row.record` is where a row becomes the column -> value mapping of a table row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..logprobs import LogprobsError, logprobs_of
from ..protocol import AgentPayload
from ..stats import stats_of
from .columns import CHECK_PREFIX, LOGPROBS_COLUMN, PASSED_COLUMN, STATUS_ERROR, STATUS_NOT_RUN, STATUS_OK


@dataclass
class RowResult:
    """What a row shows after its call: the answer, its statistics, where it ran, and checks."""

    response: str | None = None
    thinking: str | None = None
    tool_calls: Any = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    time_to_first_token: float | None = None
    seconds: float | None = None
    tokens_per_second: float | None = None
    finish_reason: str | None = None
    #: the answer is reproducible (see :mod:`midori_hf_nb.engine.reproducible`); None: not said
    reproducible: bool | None = None
    seed: int | None = None
    batch: int | None = None
    batch_size: int | None = None
    status: str = STATUS_NOT_RUN
    error: str | None = None
    #: check name -> passed (only for rows whose checks ran)
    checks: dict[str, bool] = field(default_factory=dict)
    passed: bool | None = None
    #: the answer's token probabilities (the plain form of :class:`~midori_hf_nb.logprobs.Logprobs`)
    #: when the row's setting asked for them
    logprobs: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """True when the row's call returned an answer."""
        return self.status == STATUS_OK

    def add_error(self, message: str) -> None:
        """Append ``message`` to the row's error text (a check that raised, for instance)."""
        self.error = "; ".join(filter(None, [self.error, message]))


@dataclass
class Outcome:
    """One finished call of a row: the response or the exception, and the call it ran in."""

    response: Any = None
    error: BaseException | None = None
    seed: int | None = None
    batch: int | None = None
    batch_size: int | None = None


def result_of(outcome: Outcome) -> RowResult:
    """The :class:`RowResult` of a finished call; statistics come from ``stats_of(response)``."""
    if outcome.error is not None:
        return RowResult(status=STATUS_ERROR, error=f"{type(outcome.error).__name__}: {outcome.error}",
                         seed=outcome.seed, batch=outcome.batch, batch_size=outcome.batch_size)
    response = outcome.response
    stats = stats_of(response)
    return RowResult(
        response=getattr(response, "response", None),
        thinking=getattr(response, "thinking", None),
        tool_calls=getattr(response, "tool_calls", None),
        prompt_tokens=stats.prompt_tokens,
        completion_tokens=stats.completion_tokens,
        time_to_first_token=stats.time_to_first_token,
        seconds=stats.total_seconds,
        tokens_per_second=stats.tokens_per_second,
        finish_reason=stats.finish_reason,
        reproducible=stats.reproducible,
        seed=outcome.seed,
        batch=outcome.batch,
        batch_size=outcome.batch_size,
        status=STATUS_OK,
        logprobs=_plain_logprobs(response),
    )


def _plain_logprobs(response: Any) -> dict[str, Any] | None:
    try:
        found = logprobs_of(response)
    except LogprobsError:
        return None
    return found.as_dict() if found is not None else None


@dataclass
class Row:
    """One combination of the grid, in the table's order, with the payload it runs."""

    model_index: int
    model: str
    prompt_id: int
    prompt: str
    system: str
    setting_index: int
    setting: dict[str, Any]
    repeat: int
    payload: AgentPayload = field(repr=False)
    result: RowResult = field(default_factory=RowResult)

    def record(self) -> dict[str, Any]:
        """The row as a table row: column -> value (settings under their own names)."""
        result = self.result
        record: dict[str, Any] = {
            "model": self.model, "prompt_id": self.prompt_id, "prompt": self.prompt, "system": self.system,
            **self.setting,
            "repeat": self.repeat, "response": result.response, "thinking": result.thinking,
            "tool_calls": result.tool_calls, "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens, "time_to_first_token": result.time_to_first_token,
            "seconds": result.seconds, "tokens_per_second": result.tokens_per_second,
            "finish_reason": result.finish_reason, "reproducible": result.reproducible, "seed": result.seed, "batch": result.batch,
            "batch_size": result.batch_size, "status": result.status, "error": result.error,
        }
        for name, passed in result.checks.items():
            record[CHECK_PREFIX + name] = passed
        if result.passed is not None:
            record[PASSED_COLUMN] = result.passed
        if result.logprobs is not None:
            record[LOGPROBS_COLUMN] = result.logprobs
        return record


__all__ = ["Outcome", "Row", "RowResult", "result_of"]
