"""The IPython internals the notebook layer relies on, fenced in one place.

IPython has public APIs for registering magics and display formatters but none for removing a
registered magic; what this module does with IPython's own data structures is listed here, each
with what it relies on, and tested in ``tests/test_notebook_magics.py`` on the locked IPython.
The engine's torch / transformers internals live in :mod:`midori_hf_nb.engine.capabilities`; the
core never imports IPython, so IPython's stay on this side.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("midori_hf_nb")


def unregister_magics(shell: Any, magic_name: str, class_name: str) -> bool:
    """Remove the line and cell magic ``magic_name`` and the magics class ``class_name`` from ``shell``.

    Relies on ``shell.magics_manager.magics`` (a dict of ``"line"``/``"cell"`` to name -> callable)
    and ``shell.magics_manager.registry`` (class name -> instance), the attributes IPython's
    ``MagicsManager`` has kept from IPython 1 through 9. Returns False, and logs a warning that
    names what is missing, when this IPython lays them out otherwise (the magics then stay
    registered until the kernel restarts).
    """
    manager = getattr(shell, "magics_manager", None)
    magics = getattr(manager, "magics", None)
    registry = getattr(manager, "registry", None)
    if not isinstance(magics, dict) or not isinstance(registry, dict):
        logger.warning("this IPython's MagicsManager has no magics/registry dicts: %%%s stays registered "
                       "until the kernel restarts", magic_name)
        return False
    for kind in ("line", "cell"):
        table = magics.get(kind)
        if isinstance(table, dict):
            table.pop(magic_name, None)
    registry.pop(class_name, None)
    return True


__all__ = ["unregister_magics"]
