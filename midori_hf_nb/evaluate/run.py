"""``evaluate()``: answer a test set under every configuration, score each answer, and judge it.

The answers come from the comparison machinery (:mod:`midori_hf_nb.compare`): the test set's
prompts (each item's own, or the templates of ``prompts=`` filled with its variables) run under
every system prompt, setting and model, ``repeats`` times, batched as :func:`~midori_hf_nb.compare`
batches them, with the progress bar "answers". Every finished answer is then scored by its
assertions; the ``llm-rubric`` ones go to the judges, whose calls run batched too, under the
progress bar "verdicts" (:class:`~.judge.Judge`). An interrupt keeps what finished: answers
that ran, and verdicts that came back; the rest are "not run".

The result is an :class:`~.result.Evaluation`: the answers table (compare's columns plus
``item``, ``description``, ``template``, ``config``, ``score``, ``passed``, ``unscored``,
``outcome``) and the scores table (one row per answer, assertion and grader, with each judge's
rendered prompt, raw text, parsed verdict, seed, settings and statistics).
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..compare.agents import ModelHold, manages_model
from ..compare.columns import STATUS_NOT_RUN, STATUS_OK, not_allowed, setting_text
from ..compare.frames import frame_from_rows
from ..compare.grid import build_grid, run_options
from ..compare.run import CompareEvent, run_grid
from ..protocol import AgentPayload, make_payload
from .assertions import Assertion, assertions_from
from .items import TestItem, load_items, render
from .judge import Judge, JudgeRequest
from .promptfoo import PromptfooSuite, load_promptfoo
from .result import Evaluation
from .scorers import score_deterministic
from .scoring import AssertionResult, combine, result_record, rubric_score
from .verdicts import VERDICT_NOT_RUN, Verdict


@dataclass
class EvaluateEvent:
    """What :func:`evaluate` reports to ``on_event``: the phase (``"answers"`` or ``"verdicts"``)
    and the comparison machinery's :class:`~midori_hf_nb.compare.CompareEvent` of that phase."""

    phase: str
    event: CompareEvent


def _labelled(value: Any, name: str, prefix: str) -> dict[str, str] | None:
    """Templates or system prompts as ``{label: text}`` (a text, a list or a dict); None stays None."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        pairs = [(str(k), v) for k, v in value.items()]
    else:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        pairs = [(f"{prefix} {i + 1}" if len(items) > 1 else prefix, v) for i, v in enumerate(items)]
    if not pairs:
        raise not_allowed(name, value, "expected a text, a non-empty list of texts or a dict {label: text}",
                          where="evaluate")
    for label, text in pairs:
        if not isinstance(text, str):
            raise not_allowed(f"{name}[{label!r}]", text, "expected a text", where="evaluate")
    return dict(pairs)


def _judges(judge: Any) -> list[Judge]:
    if judge is None:
        return []
    items = list(judge) if isinstance(judge, (list, tuple)) else [judge]
    judges = [j if isinstance(j, Judge) else Judge(j) for j in items]
    labels = [j.label for j in judges]
    for i, j in enumerate(judges):  # several judges on one model: label them apart
        if labels.count(j.label) > 1:
            j.label = f"{j.label} [{i + 1}]"
    return judges


def _payload(item: TestItem, text: str) -> AgentPayload:
    if item.payload is None:
        return make_payload(text)
    payload = copy.copy(item.payload)
    payload.user_message = text
    return payload


def _prompts(items: list[TestItem], templates: dict[str, str] | None) -> list[AgentPayload]:
    """The payloads in grid order: template by template, item by item."""
    payloads = []
    for label, template in (templates or {None: None}).items():
        for item in items:
            where = f"item {item.id!r}" + (f", prompt {label!r}" if label else "")
            if template is not None:
                payloads.append(_payload(item, render(template, item.variables, where)))
            elif item.prompt is None:
                raise ValueError(f"evaluate: {where} has no prompt: give the item a 'prompt', or pass prompts= "
                                 "templates filled with its variables")
            else:
                payloads.append(_payload(item, render(item.prompt, item.variables, where)))
    return payloads


def _rendered(assertion: Assertion, item: TestItem) -> Assertion:
    if isinstance(assertion.value, str):
        return assertion.with_value(render(assertion.value, item.variables, f"item {item.id!r}: {assertion.type}"))
    return assertion


def _config_labels(rows: list[Any], templates: dict[str, str] | None, systems: dict[str, str] | None,
                   n_items: int) -> list[str]:
    template_labels = list(templates or {None: None})
    system_labels = {text: label for label, text in (systems or {}).items()}
    models = {row.model for row in rows}
    settings = {setting_text(row.setting) for row in rows}
    labels = []
    for row in rows:
        parts = []
        if len(models) > 1:
            parts.append(row.model)
        if len(template_labels) > 1:
            parts.append(str(template_labels[row.prompt_id // n_items]))
        if systems is not None and len(systems) > 1:
            parts.append(system_labels.get(row.system, row.system))
        if len(settings) > 1:
            parts.append(setting_text(row.setting))
        labels.append(" | ".join(parts) or row.model)
    return labels


def _suite(items: Any, prompts: Any) -> tuple[Any, Any, list[str], str | None]:
    if isinstance(items, (str, os.PathLike)) and Path(items).suffix.lower() in (".yaml", ".yml"):
        items = load_promptfoo(items)
    if isinstance(items, PromptfooSuite):
        return items.items, prompts if prompts is not None else (items.prompts or None), \
            list(items.not_understood), items.rubric_prompt
    return items, prompts, [], None


def _score_rows(grid_rows: list[Any], items: list[TestItem], extra: list[Assertion], judges: list[Judge],
                rubric_prompt: str | None) -> tuple[list[AssertionResult], list[tuple[int, int, Assertion, JudgeRequest]]]:
    """Deterministic results now; the judge requests of the ``llm-rubric`` assertions for later."""
    results: list[AssertionResult] = []
    pending: list[tuple[int, int, Assertion, JudgeRequest]] = []
    for number, row in enumerate(grid_rows):
        if row.result.status != STATUS_OK:
            continue
        item = items[row.prompt_id % len(items)]
        record = row.record()
        for index, assertion in enumerate([*item.asserts, *extra]):
            assertion = _rendered(assertion, item)
            if not assertion.judged:
                results.append(AssertionResult(number, index, assertion,
                                               score_deterministic(assertion, record, item.expected)))
                continue
            template = assertion.rubric_prompt or rubric_prompt
            for judge in judges:
                request = judge.request(record.get("response"), assertion.value, item.variables, template,
                                        f"item {item.id!r}: llm-rubric")
                pending.append((number, index, assertion, request))
    return results, pending


def _judge_all(judges: list[Judge], pending: list[tuple[int, int, Assertion, JudgeRequest]], interrupted: bool,
               progress: bool, emit: Callable[[str], Callable[[CompareEvent], None]]) -> tuple[list[AssertionResult], bool]:
    """Every judge's verdicts of the pending requests (``len(judges)`` consecutive entries per
    assertion, one per judge); after an interrupt none are asked."""
    results: list[AssertionResult] = []
    for j, judge in enumerate(judges):
        mine = pending[j::len(judges)]
        requests = [request for _, _, _, request in mine]
        if interrupted:
            verdicts = [Verdict(status=VERDICT_NOT_RUN, judge=judge.label, prompt=r.prompt, system=r.system)
                        for r in requests]
        else:
            verdicts, interrupted = judge.run(requests, progress=progress, on_event=emit("verdicts"))
        for (number, index, assertion, _), verdict in zip(mine, verdicts):
            results.append(AssertionResult(number, index, assertion, rubric_score(assertion, verdict),
                                           judge.label, verdict))
    return results, interrupted


def evaluate(items: Any, *, prompts: str | Sequence[str] | Mapping[str, str] | None = None,
             systems: str | Sequence[str] | Mapping[str, str] | None = None, settings: Mapping[str, Any] | None = None,
             models: Any = None, repeats: int = 1, seed: int | None = 0, asserts: Any = None, judge: Any = None,
             threshold: float | None = None, batch_size: int | None = None, concurrency: int | None = None,
             model_kwargs: Mapping[str, Any] | None = None, progress: bool = True,
             on_event: Callable[[EvaluateEvent], None] | None = None, warmup: bool | None = None) -> Evaluation:
    """Answer a test set under every configuration and score every answer (see the module documentation).

    Args:
        items: the test set: a list of prompts, payloads or dicts (``prompt``, ``vars``,
            ``expected``, ``assert``, ``description``, ``id``, ``threshold``), a DataFrame, a
            ``.csv`` / ``.jsonl`` file (:func:`~.items.load_items`), a promptfoo configuration
            (``.yaml``, or a :class:`~.promptfoo.PromptfooSuite`; its prompts are used unless
            ``prompts`` is given, its ``providers`` are replaced by ``models``).
        prompts: prompt templates (``{{ var }}`` from each item's variables): a text, a list or
            ``{label: template}``. None: each item's own prompt.
        systems: system prompts to compare: a text, a list or ``{label: text}``.
        settings, models, repeats, seed, batch_size, concurrency, model_kwargs, warmup: as in
            :func:`~midori_hf_nb.compare` (any ``invoke`` override passes through ``settings``).
        asserts: assertions applied to every item besides its own (promptfoo's
            ``defaultTest.assert``): dicts ``{"type", "value", "threshold", "weight"}``,
            substrings, compiled regexes or callables of the row (:mod:`.assertions`).
        judge: a :class:`~.judge.Judge`, an agent (judged with the defaults) or a list of them
            (several judges: their agreement is in :meth:`Evaluation.agreement`). Needed by
            ``llm-rubric`` assertions.
        threshold: a score every answer must reach to pass (instead of "no assertion fails");
            an item's own ``threshold`` takes precedence.
        on_event: called with an :class:`EvaluateEvent` as answers and verdicts finish.

    Returns:
        An :class:`~.result.Evaluation` (answers, scores, statistics, exports).

    Raises:
        ValueError: an argument, item, template or assertion is not allowed (the message names it).
    """
    items, prompts, not_understood, rubric_prompt = _suite(items, prompts)
    test_items = load_items(items)
    templates = _labelled(prompts, "prompts", "prompt")
    system_map = _labelled(systems, "systems", "system")
    extra = assertions_from(asserts, "asserts")
    judges = _judges(judge)
    if any(a.judged for item in test_items for a in item.asserts) or any(a.judged for a in extra):
        if not judges:
            raise not_allowed("judge", judge, "llm-rubric assertions need a judge: pass judge=agent or Judge(agent)",
                              where="evaluate")
    options = run_options(seed=seed, batch_size=batch_size, concurrency=concurrency, tools=None, warmup=warmup)
    grid = build_grid(_prompts(test_items, templates), systems=None if system_map is None else list(system_map.values()),
                      settings=settings, models=models, repeats=repeats, checks=None, tools=None,
                      model_kwargs=model_kwargs, progress=progress)

    def emit(phase: str) -> Callable[[CompareEvent], None] | None:
        return None if on_event is None else (lambda event: on_event(EvaluateEvent(phase, event)))

    answer_agents = [entry.agent for entry in grid.models]
    holds = [ModelHold(j.agent) for j in judges
             if manages_model(j.agent) and any(j.agent is agent for agent in answer_agents)]
    warmups: dict[str, float] = {}
    try:
        for hold in holds:  # a judge that also answers stays loaded between the two phases
            hold.load()
        interrupted = run_grid(grid, options, progress=progress, on_event=emit("answers"), warmups=warmups,
                               desc="answers")
        results, pending = _score_rows(grid.rows, test_items, extra, judges, rubric_prompt)
        judged, interrupted = _judge_all(judges, pending, interrupted, progress, emit)
    finally:
        for hold in holds:
            hold.release()
    results.extend(judged)
    if interrupted:
        not_run = sum(row.result.status == STATUS_NOT_RUN for row in grid.rows)
        warnings.warn(f"evaluate was interrupted: {not_run} of {len(grid.rows)} answers were not run; verdicts "
                      "not yet given are 'not run'", RuntimeWarning, stacklevel=2)
    answers = frame_from_rows(grid.rows, grid.setting_names, [])
    n_items = len(test_items)
    item_of = [test_items[row.prompt_id % n_items] for row in grid.rows]
    template_labels = list(templates or {None: None})
    by_answer: dict[int, list[AssertionResult]] = {}
    for r in results:
        by_answer.setdefault(r.answer, []).append(r)
    outcomes = [combine(by_answer.get(i, []), item.threshold if item.threshold is not None else threshold)
                if row.result.status == STATUS_OK else None for i, (row, item) in enumerate(zip(grid.rows, item_of))]
    answers = answers.assign(
        item=[item.id for item in item_of], description=[item.description for item in item_of],
        template=[template_labels[row.prompt_id // n_items] for row in grid.rows],
        config=_config_labels(grid.rows, templates, system_map, n_items),
        score=[o.score if o else None for o in outcomes], passed=[o.passed if o else None for o in outcomes],
        unscored=[o.unscored if o else None for o in outcomes], outcome=[o.reason if o else None for o in outcomes])
    answers["passed"] = answers["passed"].astype("boolean")
    answers["score"] = answers["score"].astype("float64")
    answers["unscored"] = answers["unscored"].astype("Int64")
    answers.attrs.update(interrupted=interrupted, seed=seed, warmup_seconds=warmups,
                         settings_columns=list(grid.setting_names))
    order = {j.label: i for i, j in enumerate(judges)}
    scores = [result_record(r) for r in sorted(results, key=lambda r: (r.answer, r.index, order.get(r.judge, -1)))]
    return Evaluation(answers=answers, score_records=scores, items=test_items, judges=[j.label for j in judges],
                      repeats=repeats, interrupted=interrupted, not_understood=not_understood)


__all__ = ["EvaluateEvent", "evaluate"]
