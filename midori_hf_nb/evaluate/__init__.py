"""Evaluation: score a comparison with assertions, a judge model and repeats, and say what is significant.

:func:`evaluate` answers a test set (a list, a DataFrame, a CSV or JSON-lines file, or a promptfoo
configuration) under every configuration (prompt template x system prompt x settings x model)
through the comparison machinery, scores every answer with assertions named as promptfoo names
them (:mod:`.assertions`, :mod:`.scorers`), has ``llm-rubric`` assertions graded by a
:class:`Judge` whose verdicts are constrained to a schema (:mod:`.judge`, :mod:`.verdicts`),
and returns an :class:`Evaluation` with the statistics of :mod:`.stats` (Wilson intervals, mean
scores with standard errors, pass@k and pass^k, McNemar's exact test, a paired bootstrap,
Cohen's kappa and Krippendorff's alpha). Its views live in
:mod:`midori_hf_nb.notebook.evaluate_view`.

This package is callable, as :mod:`midori_hf_nb.compare` is: ``midori_hf_nb.evaluate(...)`` (and
``from midori_hf_nb import evaluate; evaluate(...)``) runs :func:`evaluate`, while
``midori_hf_nb.evaluate.load_promptfoo`` and the other names are its attributes (the package's
module object is of a ``ModuleType`` subclass whose ``__call__`` is :func:`evaluate`;
``midori_hf_nb.evaluate.evaluate`` is the function itself).

One module per concern: :mod:`.items` (test sets and templates), :mod:`.promptfoo` (reading a
promptfoo configuration), :mod:`.assertions`, :mod:`.scorers`, :mod:`.verdicts`, :mod:`.judge`,
:mod:`.scoring` (an answer's outcome), :mod:`.run` (``evaluate``), :mod:`.result`,
:mod:`.summary` (figures per configuration, paired comparisons, agreement), :mod:`.stats` and
:mod:`.export`.
"""

from __future__ import annotations

import inspect
import sys
import types
from typing import Any

from .assertions import ASSERTION_TYPES, Assertion, AssertionSpecError, assertion_from
from .items import TestItem, TestSetError, load_items
from .judge import DEFAULT_JUDGE_SYSTEM, DEFAULT_RUBRIC_PROMPT, Judge, JudgeRequest
from .promptfoo import PromptfooSuite, load_promptfoo
from .result import SCORE_COLUMNS, Evaluation
from .run import EvaluateEvent, evaluate
from .scorers import Score, score_deterministic
from .stats import (
    cohen_kappa,
    krippendorff_alpha,
    mcnemar_exact,
    mean_interval,
    paired_bootstrap,
    pass_at_k,
    pass_hat_k,
    wilson_interval,
)
from .summary import PairedComparison, paired_comparison
from .verdicts import VERDICT_SCHEMA, Verdict, parse_verdict

__all__ = [
    "ASSERTION_TYPES",
    "Assertion",
    "AssertionSpecError",
    "DEFAULT_JUDGE_SYSTEM",
    "DEFAULT_RUBRIC_PROMPT",
    "EvaluateEvent",
    "Evaluation",
    "Judge",
    "JudgeRequest",
    "PairedComparison",
    "PromptfooSuite",
    "SCORE_COLUMNS",
    "Score",
    "TestItem",
    "TestSetError",
    "VERDICT_SCHEMA",
    "Verdict",
    "assertion_from",
    "cohen_kappa",
    "evaluate",
    "krippendorff_alpha",
    "load_items",
    "load_promptfoo",
    "mcnemar_exact",
    "mean_interval",
    "paired_bootstrap",
    "paired_comparison",
    "parse_verdict",
    "pass_at_k",
    "pass_hat_k",
    "score_deterministic",
    "wilson_interval",
]


class CallableModule(types.ModuleType):
    """The type of this package's module object: calling it calls :func:`evaluate` (see the
    module docstring)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return evaluate(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(evaluate)


sys.modules[__name__].__class__ = CallableModule
