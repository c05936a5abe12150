"""A process-wide, reference-counted cache of loaded models.

Agents that ask for the same key (source, device, dtype, quantization, remote-code flag)
share one loaded model. Loading happens once under a per-key lock; the model is freed when
the last reference is released. The registry knows nothing of torch: the loader and the
``free`` hook come from the engine.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable


@dataclass
class _Entry:
    value: Any = None
    refs: int = 0
    loads: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class ModelRegistry:
    """Reference-counted shared values keyed by a hashable key."""

    def __init__(self, on_free: Callable[[Any], None] | None = None) -> None:
        self._entries: dict[Hashable, _Entry] = {}
        self._guard = threading.Lock()
        self._on_free = on_free
        self.load_count = 0  #: total loads performed by this registry (for tests and readouts)

    def acquire(self, key: Hashable, loader: Callable[[], Any]) -> Any:
        """Return the value for ``key``, loading it with ``loader`` if needed, and add a reference.

        Concurrent callers for one key wait for a single load. A failed load leaves no entry.
        """
        with self._guard:
            entry = self._entries.setdefault(key, _Entry())
            entry.refs += 1  # reserve, so a concurrent release cannot drop the entry mid-load
        try:
            with entry.lock:
                if entry.value is None:
                    entry.value = loader()
                    entry.loads += 1
                    with self._guard:
                        self.load_count += 1
                return entry.value
        except BaseException:
            self._drop_ref(key, entry)
            raise

    def release(self, key: Hashable) -> bool:
        """Drop one reference; free the value when none remain. True when it was freed."""
        with self._guard:
            entry = self._entries.get(key)
        if entry is None:
            return False
        return self._drop_ref(key, entry)

    def _drop_ref(self, key: Hashable, entry: _Entry) -> bool:
        with self._guard:
            entry.refs -= 1
            if entry.refs > 0:
                return False
            if self._entries.get(key) is entry:
                del self._entries[key]
            value, entry.value = entry.value, None
        if value is not None and self._on_free is not None:
            self._on_free(value)
        return value is not None

    def refcount(self, key: Hashable) -> int:
        """How many references ``key`` holds (0 when it is not loaded)."""
        with self._guard:
            entry = self._entries.get(key)
            return entry.refs if entry is not None else 0

    def loaded(self) -> list[Any]:
        """The values currently loaded."""
        with self._guard:
            return [e.value for e in self._entries.values() if e.value is not None]

    def keys(self) -> list[Hashable]:
        """The keys currently held."""
        with self._guard:
            return [k for k, e in self._entries.items() if e.value is not None]
