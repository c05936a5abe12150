"""Where a call is made, inside a kernel: the notebook's path, the cell's id and its execution
count, for the call log (:mod:`midori_hf_nb.log`). The core cannot ask IPython; this module
installs :func:`notebook_origin` as its origin provider when the notebook layer is imported.

* notebook: ``__session__`` (ipykernel sets it from Jupyter's ``JPY_SESSION_NAME``), VS Code's
  ``__vsc_ipynb_file__``, else ``JPY_SESSION_NAME`` itself;
* cell id: the ``cellId`` JupyterLab and Notebook 7 send with each execute request (absent for a
  widget's button click, which is no cell's execution: a chat panel records the cell it was
  created in, :func:`cell_origin`);
* execution count: the running cell's number.
"""

from __future__ import annotations

import os
from typing import Any

from ..log.context import set_origin_provider


def _shell() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency of the notebook layer
        return None
    return get_ipython()


def notebook_origin() -> dict[str, Any] | None:
    """The notebook, cell id and execution count of the running cell (None outside IPython)."""
    shell = _shell()
    if shell is None:
        return None
    namespace = getattr(shell, "user_ns", {}) or {}
    notebook = namespace.get("__session__") or namespace.get("__vsc_ipynb_file__") or os.environ.get("JPY_SESSION_NAME")
    origin: dict[str, Any] = {"notebook": notebook if isinstance(notebook, str) and notebook else None}
    kernel = getattr(shell, "kernel", None)
    parent: dict = {}
    if kernel is not None and callable(getattr(kernel, "get_parent", None)):
        try:
            parent = kernel.get_parent("shell") or {}
        except Exception:  # an older kernel without per-channel parents: no cell id
            parent = {}
    header = parent.get("header") or {}
    count = getattr(shell, "execution_count", None)
    if header.get("msg_type") == "execute_request":
        cell_id = (parent.get("metadata") or {}).get("cellId")
        origin["cell_id"] = cell_id if isinstance(cell_id, str) else None
        content = parent.get("content") or {}
        counted = content.get("store_history", True) and not content.get("silent", False)
        # IPython moves the counter on as a counted cell starts: the running cell's number is one less
        origin["execution_count"] = count - 1 if isinstance(count, int) and counted else count
    elif kernel is None and isinstance(count, int):  # a terminal IPython: the running prompt's number
        origin["execution_count"] = count - 1
    if origin["notebook"] is None and kernel is None:
        origin["script"] = "ipython"
    return origin


def cell_origin() -> dict[str, Any] | None:
    """The origin of the running cell, to keep for calls made later from a widget's callbacks."""
    return notebook_origin()


def install() -> None:
    """Make :func:`notebook_origin` the call log's origin provider."""
    set_origin_provider(notebook_origin)


__all__ = ["cell_origin", "install", "notebook_origin"]
