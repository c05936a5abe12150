"""Which models a test loaded, in its own process and in every Python process it starts.

``install(log)`` wraps ``transformers.PreTrainedModel.from_pretrained`` (at once when transformers
is imported, else when it is) so that each load appends one JSON line to the file ``log``: the
process, the source and the model's shape (``architectures``, hidden size, layers, vocabulary).
The test session installs it in its own process and puts this folder on ``PYTHONPATH`` with
the log's path in ``MIDORI_HF_NB_LOAD_AUDIT``, so the ``sitecustomize`` here installs it in each
child Python process too (a server, a kernel, a script run by a test). Only the standard library
is imported until transformers itself is.
"""

from __future__ import annotations

import functools
import importlib.abc
import json
import os
import sys
import threading

ENV = "MIDORI_HF_NB_LOAD_AUDIT"
TARGET = "transformers.modeling_utils"
_lock = threading.Lock()
_installed: set[str] = set()


def signature(config) -> list:
    """What identifies a model's shape: architectures, hidden size, layers, vocabulary size."""
    text = getattr(config, "get_text_config", lambda: config)()
    return [list(getattr(config, "architectures", None) or []), getattr(text, "hidden_size", None),
            getattr(text, "num_hidden_layers", None), getattr(text, "vocab_size", None)]


def _record(log: str, source, model, kwargs: dict) -> None:
    model = model[0] if isinstance(model, tuple) else model
    entry = {"pid": os.getpid(), "source": os.fspath(source) if source is not None else None,
             "gguf_file": kwargs.get("gguf_file"), "signature": signature(model.config)}
    with _lock, open(log, "a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")


def _wrap(module, log: str) -> None:
    cls = module.PreTrainedModel
    original = cls.__dict__["from_pretrained"].__func__
    if getattr(original, "_midori_load_audit", False):
        return

    @functools.wraps(original)
    def from_pretrained(klass, *args, **kwargs):
        model = original(klass, *args, **kwargs)
        try:
            _record(log, args[0] if args else kwargs.get("pretrained_model_name_or_path"), model, kwargs)
        except Exception:  # pragma: no cover - the audit never breaks a load
            pass
        return model

    from_pretrained._midori_load_audit = True
    cls.from_pretrained = classmethod(from_pretrained)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Wraps ``from_pretrained`` right after ``transformers.modeling_utils`` is executed."""

    def __init__(self, log: str) -> None:
        self.log = log

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader, log = spec.loader, self.log
        exec_module = loader.exec_module

        def exec_and_wrap(module):
            exec_module(module)
            _wrap(module, log)

        loader.exec_module = exec_and_wrap
        return spec


def install(log: str) -> None:
    """Record every model load of this process into ``log`` (idempotent)."""
    if log in _installed:
        return
    _installed.add(log)
    module = sys.modules.get(TARGET)
    if module is not None:
        _wrap(module, log)
    else:
        sys.meta_path.insert(0, _AfterImport(log))


def read(log: str, offset: int) -> tuple[list[dict], int]:
    """The entries written to ``log`` from byte ``offset`` on, and the offset after them."""
    try:
        with open(log, "rb") as data:
            data.seek(offset)
            chunk = data.read()
    except FileNotFoundError:
        return [], offset
    complete = chunk[: chunk.rfind(b"\n") + 1]
    entries = [json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip()]
    return entries, offset + len(complete)


def size(log: str) -> int:
    try:
        return os.path.getsize(log)
    except OSError:
        return 0
