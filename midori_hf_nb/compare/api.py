"""``compare()``: run a grid of prompts x system prompts x settings x models and tabulate it.

:func:`compare` returns a tidy :class:`pandas.DataFrame` with one row per (model, prompt,
system, setting, repeat). It takes any Midori protocol agent:

* an agent that batches (``generate_batch``, as :class:`~midori_hf_nb.HuggingFaceLocalAgent`
  does) answers the rows that share its setting together, ``batch_size`` at a time, in one
  left-padded ``generate`` call each;
* any other agent (a served model, a scripted test agent) answers each row with its own
  ``invoke`` call (``invoke_with_tools`` when tools are offered), ``concurrency`` at a time.

Agents that load a model (``load`` and ``unload_model``) are loaded one at a time and released
when their rows are done, unless the caller had loaded them.

Columns, in order:

``model``, ``prompt_id``, ``prompt``, ``system``, one column per setting of the grid,
``repeat``, ``response``, ``thinking``, ``tool_calls``, ``prompt_tokens``,
``completion_tokens``, ``time_to_first_token``, ``seconds``, ``tokens_per_second``,
``finish_reason``, ``seed``, ``batch``, ``batch_size``, ``status`` (``"ok"``, ``"not run"`` or
``"error"``), ``error``, then one ``"check: NAME"`` column per check and ``passed``.

The figures are the response's statistics (:func:`midori_hf_nb.stats.stats_of`):
``seconds`` is its ``total_seconds``. For a batched row, ``seconds`` and
``time_to_first_token`` are those of the whole batch the row ran in, so ``tokens_per_second``
is the row's share of its batch's throughput; :func:`summarize` gives the aggregate figures
per configuration. A figure the agent does not report (or reports with the wrong type) is
missing.

Seeds: with ``seed=S`` the ``k``-th batch of every (model, setting) group is generated with
seed ``S + k`` (the ``seed`` column); for an agent without batching every row is a batch of one,
so the ``k``-th row of a group gets ``S + k`` (passed as the ``seed`` override; an agent whose
``invoke`` takes no overrides, as the bare protocol has it, gets no seed and no settings).
Settings and models share random numbers (batch ``k`` of each group uses the same seed), which
makes their differences easier to see.

Reproducible answers (``reproducible``, on by default for local models whenever a setting is
greedy or seeded, see :mod:`midori_hf_nb.engine.reproducible`): every row is the answer
``agent.invoke(payload, seed=row.seed, reproducible=True, **setting)`` gives alone, whatever
batch it ran in, its company and its position in it: a greedy row is the same for every
``batch_size``, and a sampled row draws from its own generator seeded with its ``seed``. Each
row's ``reproducible`` column says whether that held (False with the reason in
``metadata["reproducible_reason"]``, e.g. on a GPU). With ``reproducible=False`` one seed drives
a whole batch through ``torch.manual_seed`` (a sampled row then depends on its batch's
composition and position), and in bfloat16 or float16 a batch's matrix products round
differently from a single sequence's, so a batched greedy answer can differ from the unbatched
one after the first few words. Either way the same inputs (prompts, systems, grid, models,
repeats, seed, batch_size) give the same table on the same software and hardware (with
``batch_size=None`` the size is chosen from the free memory; it is in the ``batch_size`` column,
and passing it explicitly fixes the batches).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ..log.context import context as log_context, current_context
from ..log.record import new_id
from ..protocol import AgentPayload
from .columns import STATUS_NOT_RUN
from .frames import frame_from_rows
from .grid import build_grid, run_options
from .run import CompareEvent, run_grid

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def compare(
    prompts: str | AgentPayload | Sequence[str | AgentPayload],
    *,
    systems: str | Sequence[str] | None = None,
    settings: Mapping[str, Any] | None = None,
    models: Any = None,
    repeats: int = 1,
    seed: int | None = 0,
    batch_size: int | None = None,
    concurrency: int | None = None,
    checks: Any = None,
    tools: list[Any] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
    on_event: Callable[[CompareEvent], None] | None = None,
    warmup: bool | None = None,
    reproducible: bool | None = None,
) -> "pd.DataFrame":
    """Run every prompt under every system prompt, setting and model, and tabulate the answers.

    Args:
        prompts: a string or :class:`AgentPayload`, or a list of them.
        systems: system prompts to try; each replaces the payload's ``system_context``. None
            keeps the payloads' own (empty for plain strings).
        settings: a grid of generation options, e.g. ``{"temperature": [0, 0.7],
            "max_new_tokens": [64]}``; every combination is run. Options are those of
            :meth:`HuggingFaceLocalAgent.invoke` (``max_new_tokens``, ``temperature``, ``top_p``,
            ``top_k``, ``do_sample``, ``greedy``, ``response_format`` (e.g. ``[None, MyModel]``:
            free against constrained generation; see :mod:`midori_hf_nb.structured`),
            ``tool_choice`` (with ``tools``), and ``generate()`` options such as
            ``repetition_penalty``), checked once with :func:`midori_hf_nb.settings.check_overrides`
            and, for agents that resolve their own settings, against each agent's configuration.
            None runs each agent's own configuration.
        models: an agent (any :class:`~midori_hf_nb.MidoriAiAgentProtocol` implementation) or a
            model source (hub id, directory, ``.gguf`` file, :data:`DEFAULT_MODEL`), a list of
            them, or a dict ``{label: agent or source}``. Default: :data:`DEFAULT_MODEL`. Sources
            become local agents built with ``model_kwargs``.
        repeats: how many times to run each combination.
        seed: base seed (see the module documentation); None leaves the random state alone.
        batch_size: rows per ``generate_batch`` call of an agent that batches; None picks one
            from the free memory (:func:`midori_hf_nb.engine.suggest_batch_size`).
        concurrency: how many ``invoke`` calls run at once for an agent without batching. None: the
            agent's own ``concurrency`` where it has one (a served agent's setting), else 4.
        checks: optional checks of each answer, shown as ``"check: NAME"`` columns and a
            ``passed`` column: a substring (str), a compiled regex (``re.compile``), a callable
            that receives the row as a dict and returns a truth value, a list of these, or a dict
            ``{name: check}``. A check that raises counts as failed and its error is recorded.
        tools: tools offered to the model (parsed into ``tool_calls``, never executed).
        model_kwargs: constructor options for agents built from model sources.
        progress: show a progress bar (tqdm; the widget flavour in a notebook).
        on_event: called with a :class:`CompareEvent` when a model is ready, after its warm-up,
            after each call (a batch, or one row of an agent without batching) and when a model
            is released.
        warmup: before a model's rows are timed, one short untimed generation pays for what a
            first call costs once (kernels, memory, the thread count), so the order of the grid
            does not change the speed columns (:mod:`midori_hf_nb.compare.warmup`). None
            (default): agents that batch (local models); True: every agent (one extra ``invoke``
            of its first prompt, answer dropped); False: none. The seconds are in
            ``df.attrs["warmup_seconds"]`` (per model label).
        reproducible: reproducible answers (see the module documentation) from the agents that
            offer them (local models): None (default) turns them on for every setting that decodes
            greedily or is seeded (with the default ``seed=0``, every setting), True or False
            for all. Other agents (a served model) run as they are.

    Every answer is recorded in the call log (:mod:`midori_hf_nb.log`) with ``surface="compare"``
    and one ``group_id`` for the whole comparison; the warm-up is not recorded.

    Returns:
        A DataFrame, one row per (model, prompt, system, setting, repeat); see the module
        documentation for the columns (``df.attrs``: ``interrupted``, ``seed``, ``warmup_seconds``). Interrupting (Ctrl-C, a kernel interrupt) keeps the
        finished rows and marks the others ``"not run"``; ``df.attrs["interrupted"]`` is then
        True. A batch that fails is retried one row at a time, and an ``invoke`` that raises
        fails its row only, so only the failing rows get ``status="error"`` and an ``error``.

    Raises:
        ValueError: an argument or grid value is not allowed (the message names it).
    """
    options = run_options(seed=seed, batch_size=batch_size, concurrency=concurrency, tools=tools, warmup=warmup,
                          reproducible=reproducible)
    grid = build_grid(prompts, systems=systems, settings=settings, models=models, repeats=repeats, checks=checks,
                      tools=tools, model_kwargs=model_kwargs, progress=progress)
    warmups: dict[str, float] = {}
    enclosing = current_context()  # a caller's own log context (a judge's, say) keeps its fields
    with log_context(surface=enclosing.surface or "compare", group_id=enclosing.group_id or new_id()):
        interrupted = run_grid(grid, options, progress=progress, on_event=on_event, warmups=warmups)
    if interrupted:
        not_run = sum(row.result.status == STATUS_NOT_RUN for row in grid.rows)
        warnings.warn(f"compare was interrupted: {not_run} of {len(grid.rows)} rows were not run",
                      RuntimeWarning, stacklevel=2)
    frame = frame_from_rows(grid.rows, grid.setting_names, grid.check_names)
    frame.attrs.update(interrupted=interrupted, seed=seed, warmup_seconds=warmups)
    return frame


__all__ = ["compare"]
