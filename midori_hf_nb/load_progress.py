"""Progress of model loads in this process, readable from any thread while a load runs.

:func:`~midori_hf_nb.engine.loading.load` reports each stage (GGUF conversion on first use, a
dtype copy, the tokenizer, the weights) and the counts of transformers' own progress bars (for
example "Loading weights 120/272") to :data:`TRACKER`, keyed by the model's load key. A front end
(the notebook's live view, the chat panel's status line) reads the latest
:class:`LoadProgress` with :meth:`LoadTracker.current` while it waits, on its own clock, so
nothing of the load calls into a display.

On a terminal (the command line), :class:`TerminalLoadBar` shows the same progress as one line
on stderr that is cleared when the load ends, so what is printed next starts on a clean line.
Anywhere else (a notebook kernel, a pipe, a log file) nothing is drawn: a text bar there is
written once per update and stays behind part way (:func:`is_terminal`).
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Hashable, TextIO

#: The stages of a load, in order.
STAGES = ("resolving", "converting", "dtype copy", "tokenizer", "weights", "ready")


@dataclass(frozen=True)
class LoadProgress:
    """Where one model load stands.

    ``model``: the model's name; ``stage``: one of :data:`STAGES`; ``detail``: what runs now
    (e.g. "converting GGUF (first use only)"); ``started``: ``time.monotonic()`` when the load
    began; ``done``/``total``: the count of the progress bar that runs now (weights or tensors),
    when there is one.
    """

    model: str
    stage: str
    detail: str
    started: float
    done: int | None = None
    total: int | None = None

    def seconds(self, now: float | None = None) -> float:
        """Seconds since the load began."""
        return (time.monotonic() if now is None else now) - self.started

    def text(self, now: float | None = None) -> str:
        """One line for a status display: "loading model… 3.2 s · weights · Loading weights 120/272"."""
        parts = [f"loading model… {self.seconds(now):.1f} s", self.detail or self.stage]
        if self.total:
            parts[-1] += f" {min(self.done or 0, self.total)}/{self.total}"
        return " · ".join(parts)


class LoadTracker:
    """The latest :class:`LoadProgress` of each load that runs now (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loads: dict[Hashable, LoadProgress] = {}
        self._ended: dict[Hashable, LoadProgress] = {}  # the last progress of each ended load (stage "ready")

    def begin(self, key: Hashable, model: str) -> LoadProgress:
        """Note that the load of ``key`` began."""
        progress = LoadProgress(model=model, stage="resolving", detail="resolving the source",
                                started=time.monotonic())
        with self._lock:
            self._loads[key] = progress
            self._ended.pop(key, None)
        return progress

    def stage(self, key: Hashable, stage: str, detail: str = "") -> None:
        """Note that the load of ``key`` entered ``stage`` (one of :data:`STAGES`)."""
        if stage not in STAGES:
            raise ValueError(f"stage={stage!r} is not allowed: expected one of {', '.join(STAGES)}")
        with self._lock:
            current = self._loads.get(key)
            if current is not None:
                self._loads[key] = replace(current, stage=stage, detail=detail or stage, done=None, total=None)

    def count(self, key: Hashable, label: str, done: int, total: int | None) -> None:
        """Note a progress-bar count of the load of ``key`` (``label``: the bar's description)."""
        with self._lock:
            current = self._loads.get(key)
            if current is not None:
                detail = f"{current.stage}: {label}" if label and label != current.stage else current.stage
                self._loads[key] = replace(current, detail=detail, done=done, total=total)

    def end(self, key: Hashable) -> None:
        """Note that the load of ``key`` ended (loaded or failed); :meth:`latest` keeps it as "ready"."""
        with self._lock:
            ended = self._loads.pop(key, None)
            if ended is not None:
                self._ended[key] = replace(ended, stage="ready", detail="ready", done=None, total=None)

    def current(self, key: Hashable) -> LoadProgress | None:
        """The latest progress of the load of ``key``; None when it is not loading."""
        with self._lock:
            return self._loads.get(key)

    def latest(self, key: Hashable) -> LoadProgress | None:
        """:meth:`current`, or once the load ended its last progress at stage "ready" (None before
        any load of ``key``): what a reader polling while the load finishes should show."""
        with self._lock:
            return self._loads.get(key) or self._ended.get(key)


#: The loads of this process.
TRACKER = LoadTracker()

#: Seconds between two redraws of a :class:`TerminalLoadBar`.
BAR_REFRESH_SECONDS = 0.1


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (a notebook kernel's stderr, a pipe or a file is not)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class TerminalLoadBar:
    """One line on a terminal showing a load's :class:`LoadProgress` (stage, counts, seconds),
    redrawn at most every :data:`BAR_REFRESH_SECONDS` and cleared by :meth:`close`.

    Drawn only when ``enabled`` and ``stream`` (default: stderr) is a terminal (:func:`is_terminal`);
    otherwise every method does nothing. The line is a ``tqdm`` bar (``leave=False``).
    """

    def __init__(self, model: str, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        stream = sys.stderr if stream is None else stream
        self.shown = bool(enabled) and is_terminal(stream)
        self._last = float("-inf")
        self._bar: Any = None
        if self.shown:
            from tqdm.std import tqdm

            self._bar = tqdm(total=None, desc=f"Loading {model}", bar_format="{desc}: {postfix}", leave=False,
                             file=stream, dynamic_ncols=True)

    def show(self, progress: LoadProgress | None, *, force: bool = False) -> None:
        """Redraw the line with ``progress`` (throttled unless ``force``)."""
        if self._bar is None or progress is None:
            return
        now = time.monotonic()
        if not force and now - self._last < BAR_REFRESH_SECONDS:
            return
        self._last = now
        self._bar.set_postfix_str(progress.text(now).removeprefix("loading model… "), refresh=True)

    def close(self) -> None:
        """Clear the line (the cursor is left at its start)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


__all__ = ["BAR_REFRESH_SECONDS", "LoadProgress", "LoadTracker", "STAGES", "TRACKER", "TerminalLoadBar",
           "is_terminal"]
