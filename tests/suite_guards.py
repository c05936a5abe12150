"""Checks the test session runs around every test (wired in ``conftest.py``).

- :func:`models_left_loaded`: after a test and its function-scoped fixtures, any model the test
  left in the engine's registry is unloaded and the test fails, so one failure never spreads to
  the tests after it. References held by session- or module-scoped fixtures do not count.
- :class:`DefaultModelLoads`: a test that loads the offline default model (in its own process or
  in any Python process it starts: a server, a kernel, a script) fails unless it is marked
  ``slow``, so ``make test-fast`` is what the README says it is.
- :class:`CpuPaths`: tests whose behaviour depends on the CPU's features say which path ran;
  the lines are kept as ``record_property`` entries and shown in a "CPU paths" summary.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Hashable

import pytest

AUDIT_DIR = Path(__file__).resolve().parent / "load_audit"
if str(AUDIT_DIR) not in sys.path:
    sys.path.insert(0, str(AUDIT_DIR))
import midori_load_audit  # noqa: E402  (the same module the child processes' sitecustomize imports)

#: Set by the test session for the processes it starts: where each line of "which CPU path ran"
#: is also appended (a nested run of the CPU-dependent tests reports to the outer run this way).
CPU_PATHS_FILE_ENV = "MIDORI_HF_NB_CPU_PATHS_FILE"


# --------------------------------------------------------------------------- models left loaded


def _registry() -> Any:
    """The engine's registry of loaded models, or None while no model was ever loaded (its module
    is looked up, never imported here, so a test that imports no torch still imports none)."""
    loading = sys.modules.get("midori_hf_nb.engine.loading")
    return getattr(loading, "REGISTRY", None)


def registry_counts() -> Counter:
    """References per loaded model key."""
    registry = _registry()
    if registry is None:
        return Counter()
    return Counter({key: registry.refcount(key) for key in registry.keys()})


def _agents_in(value: Any, depth: int = 0) -> list[Any]:
    """Local agents and loaded models in a fixture's value (itself, a container, or an attribute ``agent``)."""
    if depth > 2 or value is None or isinstance(value, (str, bytes, int, float, Path)):
        return []
    if hasattr(value, "unload_model_sync") and hasattr(value, "loaded_model"):
        return [value]
    if hasattr(value, "spec") and hasattr(getattr(value, "spec"), "key") and hasattr(value, "tokenizer"):
        return [value]  # a LoadedModel acquired straight from the engine
    if isinstance(value, dict):
        items = list(value.values())
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
    else:
        items = [getattr(value, "agent", None)] if hasattr(value, "agent") else []
    return [agent for item in items for agent in _agents_in(item, depth + 1)]


def _key_of(holder: Any) -> Hashable | None:
    if hasattr(holder, "unload_model_sync"):
        lm = holder.loaded_model
        return lm.spec.key if lm is not None else None
    return holder.spec.key if getattr(holder, "model", None) is not None else None


def held_by_wider_fixtures(item: pytest.Item) -> tuple[Counter, set[int]]:
    """References held by the session-, package-, module- and class-scoped fixtures of ``item``
    (by key), and the ids of the agents and models that hold them."""
    held, ids = Counter(), set()
    info = getattr(item, "_fixtureinfo", None)
    values = getattr(item, "funcargs", {})
    for name, value in values.items():
        defs = info.name2fixturedefs.get(name) if info is not None else None
        if not defs or defs[-1].scope == "function":
            continue
        for holder in _agents_in(value):
            ids.add(id(holder))
            key = _key_of(holder)
            if key is not None:
                held[key] += 1
    return held, ids


def models_left_loaded(item: pytest.Item, before: Counter, held_before: Counter) -> list[str]:
    """Unload what ``item`` left loaded (beyond ``before`` and what wider fixtures took on since);
    a description of each model unloaded."""
    registry = _registry()
    if registry is None:
        return []
    held_now, fixture_ids = held_by_wider_fixtures(item)
    excess = {}
    for key, count in registry_counts().items():
        allowed = before.get(key, 0) + max(0, held_now.get(key, 0) - held_before.get(key, 0))
        if count > allowed:
            excess[key] = count - allowed
    if not excess:
        return []
    described = [f"{key!r} ({count} reference{'s' * (count != 1)})" for key, count in excess.items()]
    from midori_hf_nb import HuggingFaceLocalAgent

    for obj in gc.get_objects():  # the test's own agents: unloaded, so none is left thinking it holds a model
        if HuggingFaceLocalAgent in type(obj).__mro__ and id(obj) not in fixture_ids:
            key = obj._key if obj.is_loaded else None
            if excess.get(key, 0) > 0:
                obj.unload_model_sync()
                excess[key] -= 1
    for key, count in excess.items():  # references taken with engine.acquire and never released
        for _ in range(count):
            registry.release(key)
    return described


# --------------------------------------------------------------------------- the default model needs `slow`


class DefaultModelLoads:
    """Model loads of each test, from the load audit of this process and its children."""

    def __init__(self) -> None:
        inherited = os.environ.get(midori_load_audit.ENV)
        self._owned = None
        if inherited:
            self.log = inherited
        else:
            self._owned = tempfile.mkdtemp(prefix="midori-load-audit-")
            self.log = os.path.join(self._owned, "loads.jsonl")
            os.environ[midori_load_audit.ENV] = self.log
            paths = [str(AUDIT_DIR), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
            os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        midori_load_audit.install(self.log)
        self._signature: list | None = None
        self._signature_known = False
        self.acquired: list[Hashable] = []  # keys acquired from the engine's registry, in order
        self._watch_registry()

    def _watch_registry(self) -> None:
        """Record every key acquired from a model registry: a test that uses the default model
        while another test's agent already holds it loads nothing itself, but still needs it."""
        from midori_hf_nb.registry import ModelRegistry

        original = ModelRegistry.acquire
        if getattr(original, "_midori_watched", False):
            return
        acquired = self.acquired

        def acquire(registry, key, loader):
            acquired.append(key)
            return original(registry, key, loader)

        acquire._midori_watched = True
        ModelRegistry.acquire = acquire

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self._owned, ignore_errors=True)

    def offset(self) -> int:
        return midori_load_audit.size(self.log)

    def default_signature(self) -> list | None:
        """The shape of the offline default model (from its converted config), None when unknown."""
        if not self._signature_known:
            try:
                from midori_hf_nb.sources import default_model_path, gguf_cache_dir

                config = json.loads((gguf_cache_dir(default_model_path()) / "config.json").read_text())
            except Exception:  # no default model here, or its cache is not prepared
                config = None
            if config is not None:
                text = config.get("text_config") or config
                self._signature = [list(config.get("architectures") or []), text.get("hidden_size"),
                                   text.get("num_hidden_layers"), text.get("vocab_size")]
                self._signature_known = True
        return self._signature

    def mark(self) -> tuple[int, int]:
        """Where the records stand now (pass to :meth:`default_uses`)."""
        return self.offset(), len(self.acquired)

    def default_uses(self, mark: tuple[int, int]) -> list[str]:
        """Loads of the default model since ``mark`` (here or in a child process), and its
        acquisitions from the registry. GGUF conversions, which prepare the cache every tiny
        model's tokenizer comes from, are not counted."""
        from midori_hf_nb.sources import DEFAULT_MODEL_FILE

        offset, count = mark
        entries, _ = midori_load_audit.read(self.log, offset)
        signature = self.default_signature()
        uses = [f"loaded from {e.get('source')} (process {e.get('pid')})" for e in entries
                if signature is not None and e.get("signature") == signature and not e.get("gguf_file")]
        for key in self.acquired[count:]:
            source = str(key[0]) if isinstance(key, tuple) and key else str(key)
            if source.startswith("gguf:") and source.endswith(DEFAULT_MODEL_FILE):
                uses.append(f"acquired from the registry as {key!r}")
        return list(dict.fromkeys(uses))


# --------------------------------------------------------------------------- which CPU path ran


class CpuPaths:
    """Lines saying which CPU-dependent path each test ran."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, str]] = []

    def add(self, nodeid: str, what: str, path: str) -> None:
        self.lines.append((nodeid, what, path))
        target = os.environ.get(CPU_PATHS_FILE_ENV)
        if target:
            with open(target, "a", encoding="utf-8") as out:
                out.write(json.dumps({"nodeid": nodeid, "what": what, "path": path}) + "\n")

    def summary(self, terminalreporter: Any) -> None:
        if not self.lines:
            return
        terminalreporter.section("CPU paths")
        for nodeid, what, path in self.lines:
            terminalreporter.write_line(f"{nodeid}: {what}: {path}")


def cpu_description() -> str:
    """This process's torch CPU capability and whether oneDNN multiplies bfloat16 natively."""
    import torch

    from midori_hf_nb.engine import cpu_has_native_bf16_gemm

    return (f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}, native bfloat16 GEMM "
            f"{'yes' if cpu_has_native_bf16_gemm() else 'no'}")
