"""Installed by the test session (``PYTHONPATH``): records model loads of this process (see
``midori_load_audit``), then runs the ``sitecustomize`` this one shadows, if there is one."""

import importlib.machinery
import importlib.util
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if os.environ.get("MIDORI_HF_NB_LOAD_AUDIT"):
    sys.path.insert(0, _here)
    try:
        import midori_load_audit

        midori_load_audit.install(os.environ["MIDORI_HF_NB_LOAD_AUDIT"])
    finally:
        sys.path.remove(_here)

_others = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
_spec = importlib.machinery.PathFinder.find_spec("sitecustomize", _others)
if _spec is not None and _spec.loader is not None:
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
