"""Progress of long operations of the core (a comparison grid's rows, an evaluation's answers and
verdicts), shown where the user looks.

:func:`progress_display` gives a tqdm-like object (``update(n)``, ``set_postfix_str(text)``,
``close()``): a text bar on a terminal's stderr (``tqdm``), or, where a front end registered its
own display with :func:`register_front_end`, that display. Importing :mod:`midori_hf_nb.notebook`
registers one line of HTML in the cell that is updated in place and ends as one finished line,
so a saved notebook shows the finished count, never a bar stopped part way. Anywhere else (a
pipe, a log file, a kernel without the notebook layer) nothing is drawn.

The core never imports a front end: the notebook layer hands its display in.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Protocol

from .load_progress import is_terminal


class ProgressDisplay(Protocol):
    """What the core calls on a progress display (a subset of ``tqdm``'s interface)."""

    def update(self, n: int = 1) -> Any: ...

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> Any: ...

    def close(self) -> Any: ...


#: ``factory(total=..., desc=..., unit=...)`` -> a :class:`ProgressDisplay`, or None where it cannot show one.
FrontEnd = Callable[..., "ProgressDisplay | None"]

_front_end: FrontEnd | None = None


class SilentProgress:
    """A progress display that shows nothing."""

    def update(self, n: int = 1) -> None:
        """Nothing to show."""

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Nothing to show."""

    def close(self) -> None:
        """Nothing to close."""


def register_front_end(factory: FrontEnd | None) -> FrontEnd | None:
    """Show progress with ``factory`` from now on (None: the terminal bar again); returns the previous one."""
    global _front_end
    previous, _front_end = _front_end, factory
    return previous


def progress_display(*, total: int, desc: str, unit: str, enabled: bool = True) -> ProgressDisplay:
    """A progress display for ``total`` ``unit``\\ s of work named ``desc``: the registered front end's,
    else a text bar when stderr is a terminal, else a silent one (also when not ``enabled``)."""
    if not enabled:
        return SilentProgress()
    if _front_end is not None:
        shown = _front_end(total=total, desc=desc, unit=unit)
        if shown is not None:
            return shown
    if not is_terminal(sys.stderr):
        return SilentProgress()
    from tqdm.std import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False)


__all__ = ["FrontEnd", "ProgressDisplay", "SilentProgress", "progress_display", "register_front_end"]
