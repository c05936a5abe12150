"""Prompt comparison: a grid of prompts x system prompts x settings x models, as a DataFrame.

:func:`compare` runs the grid on any Midori protocol agent (batched when the agent offers
``generate_batch``, concurrent ``invoke`` calls otherwise) and returns one row per combination;
:mod:`.api` documents the columns, the seeds and the numerics. Around it:

* :func:`summarize`: aggregate figures per configuration; :func:`settings_columns`,
  :func:`check_columns`, :func:`config_label`: the parts of a comparison frame;
* :func:`to_csv`, :func:`to_jsonl`, :func:`to_markdown`: export; :func:`load_comparison` reads
  any of the three back (bounded), restoring the settings columns with their types.

One module per concern: :mod:`.columns` (the table's schema), :mod:`.grid` (validation and the
rows of the grid), :mod:`.agents` (what an agent offers, its settings and its model's lifetime),
:mod:`.checks`, :mod:`.batched` and :mod:`.concurrent` (the two ways rows run), :mod:`.run`
(running the grid), :mod:`.frames` (DataFrames and summaries), :mod:`.export`,
:mod:`.markdown` and :mod:`.loading` (files). The batch-size memory model is the engine's
(:func:`midori_hf_nb.engine.suggest_batch_size`, also importable from here; it loads torch on
first use).

This package is callable: ``midori_hf_nb.compare(...)`` (and ``from midori_hf_nb import
compare; compare(...)``) runs :func:`compare`, while ``midori_hf_nb.compare.to_csv`` and the
other helpers are its attributes, so the one name serves both (the package's module object is
of a ``ModuleType`` subclass whose ``__call__`` is :func:`compare`;
``midori_hf_nb.compare.compare`` is the function itself).
"""

from __future__ import annotations

import inspect
import sys
import types
from typing import Any

from .agents import manages_model, offers_batching
from .api import compare
from .columns import (
    CHECK_PREFIX,
    FLOAT_COLUMNS,
    INT_COLUMNS,
    JSON_COLUMNS,
    KEY_COLUMNS,
    RESULT_COLUMNS,
    SETTING_PREFIX,
    STATUS_ERROR,
    STATUS_NOT_RUN,
    STATUS_OK,
    TEXT_COLUMNS,
)
from .export import FORMULA_TRIGGERS, MARKDOWN_COLUMNS, to_csv, to_jsonl, to_markdown
from .frames import check_columns, config_label, settings_columns, summarize
from .grid import DEFAULT_CONCURRENCY
from .loading import MAX_FILE_BYTES, MAX_JSON_DEPTH, LoadError, load_comparison
from .run import CompareEvent

#: engine names importable from here, loaded (with torch) on first use
_ENGINE_NAMES = ("suggest_batch_size", "CPU_BATCH_CAP", "ACCELERATOR_BATCH_CAP")


def __getattr__(name: str) -> Any:
    if name in _ENGINE_NAMES:
        from ..engine import batching

        return getattr(batching, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ACCELERATOR_BATCH_CAP",
    "CHECK_PREFIX",
    "CPU_BATCH_CAP",
    "CompareEvent",
    "DEFAULT_CONCURRENCY",
    "FLOAT_COLUMNS",
    "FORMULA_TRIGGERS",
    "INT_COLUMNS",
    "JSON_COLUMNS",
    "KEY_COLUMNS",
    "LoadError",
    "MARKDOWN_COLUMNS",
    "MAX_FILE_BYTES",
    "MAX_JSON_DEPTH",
    "RESULT_COLUMNS",
    "SETTING_PREFIX",
    "STATUS_ERROR",
    "STATUS_NOT_RUN",
    "STATUS_OK",
    "TEXT_COLUMNS",
    "check_columns",
    "compare",
    "config_label",
    "load_comparison",
    "manages_model",
    "offers_batching",
    "settings_columns",
    "suggest_batch_size",
    "summarize",
    "to_csv",
    "to_jsonl",
    "to_markdown",
]


class CallableModule(types.ModuleType):
    """The type of this package's module object: calling it calls :func:`compare` (see the
    module docstring)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return compare(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(compare)


sys.modules[__name__].__class__ = CallableModule
