"""The notebook's display of a long operation's progress: one line of HTML in the cell, updated in
place (at most every :data:`REFRESH_SECONDS`), that ends as one finished line.

Registered with :func:`midori_hf_nb.progress_display.register_front_end` when
:mod:`midori_hf_nb.notebook` is imported, so ``compare(...)`` in a notebook shows "compare: 3/6 rows ·
2.1 s · <what runs now>" and, when done, "compare: 6/6 rows in 12.3 s". Being a display update
(not a widget and not stderr text), the finished line is what a saved notebook keeps.
"""

from __future__ import annotations

import time
from typing import Any

from .display import STYLE_FOOTER
from .escaping import escape_html
from .sinks import IPythonSink, in_ipython

#: Seconds between two updates of the line.
REFRESH_SECONDS = 0.25


class ProgressLine:
    """One line of progress (``desc``: ``done``/``total`` ``unit``\\ s, seconds, what runs now) shown
    through ``sink`` (an IPython display handle by default); tqdm-like: :meth:`update`,
    :meth:`set_postfix_str`, :meth:`close`."""

    def __init__(self, *, total: int, desc: str, unit: str, sink: Any = None) -> None:
        self.total, self.desc, self.unit = int(total), desc, unit
        self.done = 0
        self.postfix = ""
        self.started = time.perf_counter()
        self.closed = False
        self._last = float("-inf")
        self.sink = sink if sink is not None else IPythonSink()
        self.sink.display(self.bundle())

    def text(self) -> str:
        """The line as plain text."""
        seconds = time.perf_counter() - self.started
        if self.closed:
            return f"{self.desc}: {self.done}/{self.total} {self.unit}s in {seconds:.1f} s"
        parts = [f"{self.desc}: {self.done}/{self.total} {self.unit}s", f"{seconds:.1f} s"]
        if self.postfix:
            parts.append(self.postfix)
        return " · ".join(parts)

    def bundle(self) -> dict[str, str]:
        """The line as a mime bundle (escaped HTML and plain text)."""
        text = self.text()
        return {"text/html": f'<div class="midori-progress" style="{STYLE_FOOTER}">{escape_html(text)}</div>',
                "text/plain": text}

    def _refresh(self, force: bool = False) -> None:
        now = time.perf_counter()
        if force or now - self._last >= REFRESH_SECONDS:
            self._last = now
            self.sink.update(self.bundle())

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        self.done += int(n)
        self._refresh()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Say what runs now."""
        self.postfix = str(s)
        if refresh:
            self._refresh()

    def close(self) -> None:
        """End as one finished line."""
        if not self.closed:
            self.closed = True
            self._refresh(force=True)


def notebook_progress(*, total: int, desc: str, unit: str) -> ProgressLine | None:
    """The front end for :func:`~midori_hf_nb.progress_display.progress_display`: a :class:`ProgressLine`
    inside IPython, None elsewhere (the terminal bar then)."""
    return ProgressLine(total=total, desc=desc, unit=unit) if in_ipython() else None


__all__ = ["ProgressLine", "REFRESH_SECONDS", "notebook_progress"]
