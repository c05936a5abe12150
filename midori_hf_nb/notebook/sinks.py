"""Where a live view's updates go: one IPython display handle in a kernel, or a recording of the
bundles anywhere else (for tests and benchmarks)."""

from __future__ import annotations

from typing import Any


class RecordingSink:
    """A display sink that records what it is given instead of showing it.

    ``bundles`` holds every mime bundle (the first is the initial display) when
    ``keep=True``, else only the last; ``updates`` counts calls to :meth:`update`.
    """

    def __init__(self, keep: bool = False) -> None:
        self.keep = keep
        self.bundles: list[dict[str, str]] = []
        self.updates = 0

    def display(self, bundle: dict[str, str]) -> None:
        self.bundles = [bundle]

    def update(self, bundle: dict[str, str]) -> None:
        self.updates += 1
        if self.keep:
            self.bundles.append(bundle)
        else:
            self.bundles = [bundle]

    @property
    def last(self) -> dict[str, str] | None:
        return self.bundles[-1] if self.bundles else None


class IPythonSink:
    """Shows bundles in the current cell through one IPython display handle."""

    def __init__(self) -> None:
        self.handle: Any = None

    def display(self, bundle: dict[str, str]) -> None:
        from IPython.display import display

        self.handle = display(bundle, raw=True, display_id=True)

    def update(self, bundle: dict[str, str]) -> None:
        self.handle.update(bundle, raw=True)


def in_ipython() -> bool:
    """True when an IPython shell is active in this process."""
    try:
        from IPython.core.interactiveshell import InteractiveShell
    except ImportError:  # pragma: no cover - IPython is a dependency
        return False
    return InteractiveShell.initialized()


def default_sink() -> Any:
    """An :class:`IPythonSink` inside IPython, else a :class:`RecordingSink`."""
    return IPythonSink() if in_ipython() else RecordingSink()
