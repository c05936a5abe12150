"""Torch's intra-op thread count during generation on CPU: fixed, or chosen step by step by
measurement (:class:`ThreadGovernor`).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import torch


if TYPE_CHECKING:  # pragma: no cover
    from .loaded import LoadedModel


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _others_running() -> int | None:
    """Runnable tasks on the machine right now besides the caller (from /proc/loadavg), or None."""
    try:
        with open("/proc/loadavg") as fh:
            running = int(fh.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0, running - 1)


class ThreadGovernor:
    """Chooses torch's intra-op thread count step by step, by measuring: one thread or every
    usable core, whichever decoded faster lately.

    On an idle machine several threads decode faster. When other processes compete for the
    cores, torch's threads wait for each other at every operation and one thread can be several
    times faster. Step times are kept as moving averages per thread count; every ``probe_every``
    steps the other count runs for ``probe_steps`` steps, so the choice follows the load. Before
    anything is measured, one thread is used while other tasks are runnable, else every core.
    The thread count does not change the tokens (torch parallelises these products over output
    rows); ``steps`` counts the steps run with each count.

    A probe's first step replaces the probed count's average (it may be long out of date). A
    probe step that takes more than ``slow_factor`` times the best average ends its probe at
    once and doubles the wait before the next probe of that count (up to ``max_backoff`` times
    ``probe_every``); a probe that comes out competitive resets the wait. On a loaded machine a
    step of a batch on every core can take 10x one thread's (the many small parallel regions wait
    for the busy core), so repeated probes would otherwise cost more than the batch saves.
    """

    def __init__(self, cores: int, probe_every: int = 24, probe_steps: int = 2, alpha: float = 0.3,
                 slow_factor: float = 3.0, max_backoff: int = 16) -> None:
        self.choices = (1, cores)
        self.slow_factor, self.max_backoff = slow_factor, max_backoff
        #: steps between probes of each count (grows while a count's probes are far slower)
        self.interval: dict[int, int] = {1: probe_every, cores: probe_every}
        self._since_probe = 0
        self._fresh_probe = False
        self.average: dict[int, float | None] = {1: None, cores: None}
        self.steps: dict[int, int] = {1: 0, cores: 0}
        self.probe_every, self.probe_steps, self.alpha = probe_every, probe_steps, alpha
        self.active = cores
        self._last = 0.0
        self._count = 0
        self._probing = 0

    def best(self) -> int:
        """The thread count with the lower average step time (a guess from the load before that)."""
        known = {k: v for k, v in self.average.items() if v is not None}
        if len(known) == 2:
            return min(known, key=known.__getitem__)
        if known:
            return next(iter(known))
        others = _others_running()
        return 1 if others is not None and others >= 1 else self.choices[1]

    def _set(self, count: int) -> None:
        self.active = count
        if torch.get_num_threads() != count:
            torch.set_num_threads(count)

    def resume(self) -> None:
        """Apply the best count again (after something else changed torch's threads), without
        starting a new measurement."""
        self._set(self.best())
        self._last = time.perf_counter()

    def start(self) -> None:
        """Call before a generation: applies the best thread count (also for the prompt)."""
        self._set(self.best())
        self._count = 0
        self._probing = 0
        self._last = time.perf_counter()

    def _best_average(self, excluding: int) -> float | None:
        values = [v for k, v in self.average.items() if k != excluding and v is not None]
        return min(values) if values else None

    def step(self) -> None:
        """Call after each generated token (or batch step); picks the count for the next step."""
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        self._count += 1
        self._since_probe += 1
        if self._count > 1:  # the first step also processed the prompt
            previous = self.average[self.active]
            if previous is None or self._fresh_probe:  # a probe's first step replaces a stale average
                self.average[self.active] = seconds
            else:
                self.average[self.active] = previous + self.alpha * (seconds - previous)
            self.steps[self.active] += 1
        self._fresh_probe = False
        other = self.choices[0] if self.active == self.choices[1] else self.choices[1]
        if self._probing:
            self._probing -= 1
            reference = self._best_average(excluding=self.active)
            far_slower = reference is not None and self._count > 1 and seconds > self.slow_factor * reference
            if far_slower:  # stop this probe now and wait longer before the next one
                self._probing = 0
                self.interval[self.active] = min(self.interval[self.active] * 2, self.probe_every * self.max_backoff)
            elif not self._probing and reference is not None and self.average[self.active] is not None \
                    and self.average[self.active] <= 1.5 * reference:
                self.interval[self.active] = self.probe_every
            if self._probing:
                return
            self._set(self.best())
        elif self._count > 1 and (self.average[other] is None or self._since_probe >= self.interval[other]):
            self._probing = self.probe_steps
            self._fresh_probe = True
            self._since_probe = 0
            self._set(other)
        else:
            self._set(self.best())


def resolve_threads(requested: int | str | None) -> int | str | None:
    """The thread setting for ``num_threads``: ``"auto"`` (measured per step by a
    :class:`ThreadGovernor`; 1 on a single-core machine), a fixed count, or ``None`` (leave torch alone)."""
    if requested == "auto":
        return 1 if usable_cores() < 2 else "auto"
    return None if requested is None else int(requested)


def apply_threads(lm: LoadedModel, requested: int | str | None, rows: int = 1) -> ThreadGovernor | None:
    """Set torch's (process-wide) intra-op threads for a generation on CPU.

    A fixed count is set at once; ``"auto"`` starts the model's :class:`ThreadGovernor` for
    ``rows`` sequences (one per batch size, as their step times differ) and returns it.
    """
    if lm.spec.device != "cpu":
        return None
    setting = resolve_threads(requested)
    if setting is None:
        return None
    if setting != "auto":
        if torch.get_num_threads() != setting:
            torch.set_num_threads(setting)
        return None
    governor = lm.governors.get(rows)
    if governor is None:
        governor = lm.governors[rows] = ThreadGovernor(usable_cores())
    governor.start()
    return governor
