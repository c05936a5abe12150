"""The progress bars transformers makes while loading: observed (counts reported to a callback)
and drawn as text, never as notebook widgets."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable

from .fallbacks import fallback


#: Called with (bar description, count so far, total or None) by the progress bars transformers
#: makes in this thread while :func:`observe_progress_bars` is active.
BarObserver = Callable[[str, int, "int | None"], None]

_bar_local = threading.local()
_bar_hook_lock = threading.Lock()
_bar_hook_users = 0
_bar_hook_previous: Any = None


class _ObservedBar:
    """A progress bar made by transformers that also reports its count to a :data:`BarObserver`."""

    def __init__(self, bar: Any, observer: BarObserver, label: str, total: int | None) -> None:
        self._bar, self._observer, self._label, self._total, self._n = bar, observer, label, total, 0
        observer(label, 0, total)

    def __iter__(self) -> Any:
        for item in self._bar:
            yield item
            self._n += 1
            self._observer(self._label, self._n, self._total)

    def update(self, n: float | None = 1) -> Any:
        result = self._bar.update(n)
        self._n += int(n or 0)
        self._observer(self._label, self._n, self._total)
        return result

    def __enter__(self) -> "_ObservedBar":
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._bar.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bar, name)


def _bar_hook(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    from tqdm import auto as tqdm_auto
    from tqdm import std as tqdm_std

    if factory is tqdm_auto.tqdm:  # a text bar: in a notebook a widget bar renders as an error once reopened
        factory = tqdm_std.tqdm
    bar = factory(*args, **kwargs)
    observer = getattr(_bar_local, "observer", None)
    if observer is None:
        return bar
    total = kwargs.get("total")
    if total is None and args:
        try:
            total = len(args[0])
        except TypeError:
            total = None
    return _ObservedBar(bar, observer, str(kwargs.get("desc") or ""), total if isinstance(total, int) else None)


@contextlib.contextmanager
def observe_progress_bars(observer: BarObserver):
    """While active, the progress bars transformers makes in this thread report their counts to
    ``observer``, and draw as text (``tqdm.std``) instead of notebook widgets.

    Relies on ``transformers.utils.logging.set_tqdm_hook`` (transformers 5.x), which receives the
    factory and arguments of every bar transformers makes (also when its bars are disabled: then
    the factory is a silent stand-in, and counts are still reported). Without it a
    :class:`FastPathWarning` says that load progress shows stages only.
    """
    from transformers.utils import logging as hf_logging

    global _bar_hook_users, _bar_hook_previous
    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    if set_hook is None:
        fallback("tqdm_hook", "transformers has no utils.logging.set_tqdm_hook: model load progress shows "
                              "its stages only, without weight counts")
        yield
        return
    with _bar_hook_lock:
        if _bar_hook_users == 0:
            _bar_hook_previous = set_hook(_bar_hook)
        _bar_hook_users += 1
    outer = getattr(_bar_local, "observer", None)
    _bar_local.observer = observer
    try:
        yield
    finally:
        _bar_local.observer = outer
        with _bar_hook_lock:
            _bar_hook_users -= 1
            if _bar_hook_users == 0:
                set_hook(_bar_hook_previous)
                _bar_hook_previous = None
