"""Running a comparison grid: model by model, batched or concurrent, reported as rows finish.

:func:`run_grid` holds each model for its rows (loading it first when the agent manages a
model, releasing it after unless the caller had loaded it), runs the rows in batches when the
agent offers batching and through concurrent ``invoke`` calls otherwise, and hands every
finished row to a :class:`RowSink`: the row's result is recorded, its checks run, the progress
bar moves and ``on_event`` hears of it. An interrupt ends the run and keeps the finished rows.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

from .agents import ModelEntry, ModelHold, offers_batching, takes_overrides
from .batched import batches, run_batch
from .checks import Check, apply_checks
from .columns import STATUS_ERROR, setting_text
from .concurrent import ConcurrentCalls, row_calls
from .grid import DEFAULT_CONCURRENCY, Grid, RunOptions
from .rows import Outcome, Row, result_of
from .warmup import warm_up


@dataclass
class CompareEvent:
    """What :func:`~midori_hf_nb.compare.compare` reports to its ``on_event`` callback.

    ``kind`` is ``"model_loaded"`` (the model is ready and its rows are about to run; loaded
    first when the agent manages a model), ``"warmup"`` (its untimed warm-up generation ran:
    ``seconds``; see :mod:`.warmup`), ``"batch"`` (a call finished: a batch, or one row of
    an agent without batching; ``rows`` are its rows as dicts) or ``"model_released"`` (the
    model's rows are done and compare has released the model it loaded).
    """

    kind: str
    model: str
    done: int
    total: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float | None = None  #: the warm-up's seconds (``kind="warmup"``)


class RowSink:
    """Where finished rows go: their results, checks, the progress bar and ``on_event``."""

    def __init__(self, total: int, checks: list[Check], progress: bool,
                 on_event: Callable[[CompareEvent], None] | None, desc: str = "compare") -> None:
        from tqdm.auto import tqdm

        self.total = total
        self.done = 0
        self.checks = checks
        self.on_event = on_event
        self.batch_numbers = itertools.count()
        self.bar = tqdm(total=total, desc=desc, unit="row", disable=not progress)
        self.warmup_seconds: dict[str, float] = {}  #: model label -> seconds of its warm-up

    def next_batch(self) -> int:
        """The next batch number (the ``batch`` column)."""
        return next(self.batch_numbers)

    def status(self, text: str) -> None:
        """Show what runs now beside the progress bar."""
        self.bar.set_postfix_str(text)

    def emit(self, event: CompareEvent) -> None:
        """Call ``on_event``; a callback that raises is reported as a warning, the results stay."""
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception as exc:
            warnings.warn(f"compare: on_event raised {type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=2)

    def finished(self, label: str, outcomes: list[tuple[Row, Outcome]], check: bool = True) -> None:
        """Record the rows of one finished call, count them, check them (unless ``check`` is
        False) and report them."""
        for row, outcome in outcomes:
            row.result = result_of(outcome)
        self.done += len(outcomes)
        self.bar.update(len(outcomes))
        for row, _ in outcomes:
            if check:
                apply_checks(row, self.checks)
        self.emit(CompareEvent("batch", label, self.done, self.total, [row.record() for row, _ in outcomes]))

    def failed(self, rows: list[Row], error: str) -> None:
        """Rows that cannot run at all (their model failed to load)."""
        for row in rows:
            row.result.status = STATUS_ERROR
            row.result.error = error
        self.done += len(rows)
        self.bar.update(len(rows))

    def close(self) -> None:
        """Close the progress bar."""
        self.bar.close()


def run_batched(entry: ModelEntry, rows: list[Row], options: RunOptions, sink: RowSink) -> None:
    """An agent's rows, a batch at a time (the agent offers ``generate_batch``)."""
    for batch in batches(entry.agent, rows, options.batch_size, options.seed):
        sink.status(f"{entry.label} | {setting_text(batch.setting)}")
        sink.finished(entry.label, run_batch(entry.agent, batch, options.tools, sink.next_batch))


def concurrency_for(agent: Any, requested: int | None) -> int:
    """How many ``invoke`` calls run at once for ``agent``: ``requested`` when given, else the agent's
    own ``concurrency`` (a positive integer, as a served agent has), else :data:`DEFAULT_CONCURRENCY`."""
    if requested is not None:
        return requested
    own = getattr(agent, "concurrency", None)
    if isinstance(own, int) and not isinstance(own, bool) and own > 0:
        return own
    return DEFAULT_CONCURRENCY


def run_concurrently(entry: ModelEntry, rows: list[Row], options: RunOptions, sink: RowSink) -> None:
    """An agent's rows through ``invoke``, ``options.concurrency`` at a time (seeded only when
    the agent's ``invoke`` takes overrides).

    On an interrupt the calls still running are cancelled; answers that arrived meanwhile are
    kept, without running their checks.
    """
    limit = concurrency_for(entry.agent, options.concurrency)
    sink.status(f"{entry.label} | {limit} at a time")
    seed = options.seed if takes_overrides(entry.agent) else None  # invoke(payload) alone cannot take one
    worker = ConcurrentCalls(entry.agent, row_calls(rows, seed), limit, options.tools).worker()
    items = worker.items()
    try:
        for call, outcome in items:
            outcome.batch = sink.next_batch()
            sink.finished(entry.label, [(call.row, outcome)])
    except KeyboardInterrupt:
        items.close()  # cancels the running calls and waits for them
        for call, outcome in worker.leftovers():
            outcome.batch = sink.next_batch()
            sink.finished(entry.label, [(call.row, outcome)], check=False)
        raise


def run_model(entry: ModelEntry, rows: list[Row], options: RunOptions, sink: RowSink) -> None:
    """One model's rows: hold its model, run them (batched or concurrent), release it."""
    hold = ModelHold(entry.agent)
    sink.status(f"loading {entry.label}")
    try:
        hold.load()
    except Exception as exc:
        sink.failed(rows, f"loading the model failed: {type(exc).__name__}: {exc}")
        return
    try:
        sink.emit(CompareEvent("model_loaded", entry.label, sink.done, sink.total))
        sink.status(f"warming up {entry.label}")
        seconds = warm_up(entry, rows, options.warmup, options.batch_size)  # untimed: no row pays for it
        if seconds is not None:
            sink.warmup_seconds[entry.label] = seconds
            sink.emit(CompareEvent("warmup", entry.label, sink.done, sink.total, seconds=seconds))
        if offers_batching(entry.agent):
            run_batched(entry, rows, options, sink)
        else:
            run_concurrently(entry, rows, options, sink)
    finally:
        if hold.release():
            sink.emit(CompareEvent("model_released", entry.label, sink.done, sink.total))


def run_grid(grid: Grid, options: RunOptions, *, progress: bool,
             on_event: Callable[[CompareEvent], None] | None, warmups: dict[str, float] | None = None,
             desc: str = "compare") -> bool:
    """Run every row of ``grid``, model by model; returns True when interrupted (Ctrl-C, a
    kernel interrupt), with the finished rows kept and the others ``"not run"``. ``warmups``,
    when given, receives the seconds of each model's warm-up; ``desc`` labels the progress bar."""
    sink = RowSink(len(grid.rows), grid.checks, progress, on_event, desc)
    if warmups is not None:
        sink.warmup_seconds = warmups
    try:
        for index, entry in enumerate(grid.models):
            run_model(entry, grid.rows_of(index), options, sink)
    except KeyboardInterrupt:
        return True
    finally:
        sink.close()
    return False


__all__ = ["CompareEvent", "RowSink", "concurrency_for", "run_batched", "run_concurrently", "run_grid", "run_model"]
