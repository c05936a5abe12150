"""Packages whose public names load with their module on first use (PEP 562).

``midori_hf_nb.engine`` uses it so that importing one of its torch-free modules (the docstring
reader that describes tools, say) does not import torch with the rest of the engine.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(namespace: dict[str, Any], exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for the package whose globals are ``namespace``.

    ``exports`` maps each public name to the module (relative, ``".loading"``) that defines it;
    the module is imported when the name is first looked up, and the value kept in ``namespace``.
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
