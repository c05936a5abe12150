"""Prompt comparison: a grid of prompts x system prompts x settings x models, run in batches.

:func:`compare` returns a tidy :class:`pandas.DataFrame` with one row per (model, prompt,
system, setting, repeat). Rows that share a model and a setting are generated together,
``batch_size`` at a time, in one left-padded ``generate`` call each
(:meth:`HuggingFaceLocalAgent.generate_batch`). Models are loaded one at a time and released
when their rows are done.

Columns, in order:

``model``, ``prompt_id``, ``prompt``, ``system``, one column per setting of the grid,
``repeat``, ``response``, ``thinking``, ``tool_calls``, ``prompt_tokens``,
``completion_tokens``, ``time_to_first_token``, ``seconds``, ``tokens_per_second``,
``finish_reason``, ``seed``, ``batch``, ``batch_size``, ``status`` (``"ok"``, ``"not run"`` or
``"error"``), ``error``, then one ``"check: NAME"`` column per check and ``passed``.

``seconds`` and ``time_to_first_token`` are those of the whole batch the row ran in, so
``tokens_per_second`` is the row's share of its batch's throughput; :func:`summarize` gives
the aggregate figures per configuration.

Seeds: with ``seed=S`` the ``k``-th batch of every (model, setting) group is generated after
``torch.manual_seed(S + k)`` (the ``seed`` column). One seed drives the whole batch, so a sampled
row depends on its batch's composition and its position in it. What is guaranteed: the same
inputs (prompts, systems, grid, models, repeats, seed, batch_size) give the same table on the
same software and hardware (with ``batch_size=None`` the size is chosen from the free memory;
it is in the ``batch_size`` column, and passing it explicitly fixes the batches); and with
``batch_size=1`` every row equals
``agent.invoke(payload, seed=row.seed, **setting)``. Settings and models share random numbers
(batch ``k`` of each group uses the same seed), which makes their differences easier to see.

Batching and numerics: in float32, a greedy row's answer is the same batched or alone (the
attention mask hides the left padding and position ids follow it). In bfloat16 or float16 a
batch's matrix products round differently from a single sequence's, so a batched greedy answer
can differ from the unbatched one after the first few words; use ``torch_dtype="float32"`` or
``batch_size=1`` when that matters.

Export: :func:`to_csv`, :func:`to_jsonl`, :func:`to_markdown`; :func:`load_comparison` reads
any of the three back, restoring the settings columns with their types.
"""

from __future__ import annotations

import copy
import csv
import html
import itertools
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from .protocol import AgentPayload

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .agent import HuggingFaceLocalAgent
    from .engine import LoadedModel

__all__ = [
    "CompareEvent",
    "compare",
    "config_label",
    "load_comparison",
    "settings_columns",
    "check_columns",
    "suggest_batch_size",
    "summarize",
    "to_csv",
    "to_jsonl",
    "to_markdown",
]

STATUS_OK = "ok"
STATUS_NOT_RUN = "not run"
STATUS_ERROR = "error"

CHECK_PREFIX = "check: "
SETTING_PREFIX = "setting:"  #: settings columns carry this prefix in exported files

KEY_COLUMNS = ("model", "prompt_id", "prompt", "system")
RESULT_COLUMNS = (
    "repeat", "response", "thinking", "tool_calls", "prompt_tokens", "completion_tokens",
    "time_to_first_token", "seconds", "tokens_per_second", "finish_reason", "seed", "batch",
    "batch_size", "status", "error",
)
INT_COLUMNS = ("prompt_id", "repeat", "prompt_tokens", "completion_tokens", "seed", "batch", "batch_size")
FLOAT_COLUMNS = ("time_to_first_token", "seconds", "tokens_per_second")
TEXT_COLUMNS = ("model", "prompt", "system", "response", "thinking", "finish_reason", "status", "error")
JSON_COLUMNS = ("tool_calls",)

#: Upper bound of the default batch size: on a CPU larger batches stop paying off.
CPU_BATCH_CAP = 16
ACCELERATOR_BATCH_CAP = 64


@dataclass
class CompareEvent:
    """What :func:`compare` reports to its ``on_event`` callback.

    ``kind`` is ``"model_loaded"`` (a model is in memory and its rows are about to run),
    ``"batch"`` (a batch finished; ``rows`` are its rows as dicts) or ``"model_released"``
    (the model's rows are done and compare's reference to it has been released).
    """

    kind: str
    model: str
    done: int
    total: int
    rows: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- input checking


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"compare: {name}={value!r} is not allowed: {allowed}")


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _payloads(prompts: Any) -> list[AgentPayload]:
    from .protocol import make_payload

    items = _as_list(prompts)
    if not items:
        _fail("prompts", prompts, "expected at least one prompt (a string or an AgentPayload)")
    payloads = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            payloads.append(make_payload(item))
        elif isinstance(item, AgentPayload):
            payloads.append(item)
        else:
            _fail(f"prompts[{i}]", item, "expected a string or an AgentPayload")
    return payloads


def _with_system(payload: AgentPayload, system: str) -> AgentPayload:
    """A copy of ``payload`` with another system prompt (dataclass or model class alike)."""
    copied = copy.copy(payload)
    copied.system_context = system
    return copied


def _systems(systems: Any) -> list[str] | None:
    if systems is None:
        return None
    items = _as_list(systems)
    if not items:
        _fail("systems", systems, "expected None, a string or a non-empty list of strings")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            _fail(f"systems[{i}]", item, "expected a string")
    return items


def _grid(settings: Mapping[str, Any] | None) -> tuple[list[str], list[dict[str, Any]]]:
    """The names of the grid and every combination of its values, in order."""
    if settings is None:
        return [], [{}]
    if not isinstance(settings, Mapping):
        _fail("settings", settings, 'expected a dict of option -> list of values, e.g. {"temperature": [0, 0.7]}')
    names = list(settings)
    reserved = set(KEY_COLUMNS) | set(RESULT_COLUMNS) | {"passed"}
    values = []
    for name in names:
        if not isinstance(name, str) or not name.isidentifier():
            _fail("settings", name, "expected option names such as 'temperature' or 'max_new_tokens'")
        if name == "seed":
            _fail("settings['seed']", settings[name], "pass seed=... to compare (each batch is seeded from it)")
        if name in reserved:
            _fail(f"settings[{name!r}]", settings[name], f"{name!r} is a result column, not a generation option")
        options = _as_list(settings[name])
        if not options:
            _fail(f"settings[{name!r}]", settings[name], "expected at least one value")
        values.append(options)
    return names, [dict(zip(names, combo)) for combo in itertools.product(*values)]


def _positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        _fail(name, value, "expected a positive integer" + (" or None" if allow_none else ""))


def _models(models: Any, model_kwargs: Mapping[str, Any] | None, progress: bool
            ) -> list[tuple[str, "HuggingFaceLocalAgent"]]:
    """``(label, agent)`` pairs; strings and paths become new agents."""
    from .agent import HuggingFaceLocalAgent

    if isinstance(models, Mapping):
        items = list(models.items())
    else:
        items = [(None, m) for m in _as_list(models)]
    if not items:
        _fail("models", models, "expected at least one agent or model source")
    pairs: list[tuple[str, HuggingFaceLocalAgent]] = []
    for i, (label, item) in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            kwargs = {"progress": progress, **dict(model_kwargs or {})}
            agent = HuggingFaceLocalAgent(model=os.fspath(item), **kwargs)
        elif isinstance(item, HuggingFaceLocalAgent):
            agent = item
        else:
            _fail(f"models[{i}]", item, "expected a HuggingFaceLocalAgent, a model source string or a path")
        base = str(label) if label is not None else agent.config.model
        if label is None and agent.config.quantization:
            base += f" ({agent.config.quantization})"
        pairs.append((base, agent))
    seen: dict[str, int] = {}
    labelled = []
    for base, agent in pairs:
        seen[base] = seen.get(base, 0) + 1
        labelled.append((base if seen[base] == 1 else f"{base} [{seen[base]}]", agent))
    return labelled


@dataclass
class _Check:
    name: str
    func: Callable[[dict[str, Any]], Any]


def _check_name(check: Any, index: int) -> str:
    if isinstance(check, str):
        return f"contains {check!r}"
    if isinstance(check, re.Pattern):
        return f"matches {check.pattern!r}"
    name = getattr(check, "__name__", "")
    return name if name and name != "<lambda>" else f"check {index + 1}"


def _check_func(name: str, check: Any) -> Callable[[dict[str, Any]], Any]:
    if isinstance(check, str):
        return lambda row: check in (row["response"] or "")
    if isinstance(check, re.Pattern):
        return lambda row: check.search(row["response"] or "") is not None
    if callable(check):
        return check
    _fail(f"checks[{name!r}]", check, "expected a substring (str), a compiled regex (re.compile) or a callable(row)")
    raise AssertionError  # unreachable


def _checks(checks: Any) -> list[_Check]:
    if checks is None:
        return []
    if isinstance(checks, Mapping):
        named = [(str(k), v) for k, v in checks.items()]
    else:
        named = [(_check_name(c, i), c) for i, c in enumerate(_as_list(checks))]
    result: list[_Check] = []
    used: set[str] = set()
    for name, check in named:
        unique, n = name, 1
        while unique in used:
            n += 1
            unique = f"{name} [{n}]"
        used.add(unique)
        result.append(_Check(unique, _check_func(unique, check)))
    return result


# --------------------------------------------------------------------------- batch size


def _available_bytes(lm: "LoadedModel") -> int:
    device = str(lm.input_device)
    if device.startswith("cuda"):
        import torch  # already imported by the engine

        free, _total = torch.cuda.mem_get_info(lm.input_device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def suggest_batch_size(lm: "LoadedModel", prompt_tokens: int, max_new_tokens: int,
                       available_bytes: int | None = None, fraction: float = 0.5) -> int:
    """A batch size whose working memory fits ``fraction`` of the free memory.

    Per sequence it counts the key/value cache of ``prompt_tokens + max_new_tokens`` tokens, the
    prefill attention scores and the logits. ``available_bytes`` defaults to the free memory of
    the model's device (``torch.cuda.mem_get_info`` on CUDA, available RAM otherwise). The
    result is at least 1 and at most 16 on a CPU (64 on an accelerator), where larger batches
    stop paying off.
    """
    cfg = lm.model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    layers = int(getattr(text_cfg, "num_hidden_layers", 32))
    heads = int(getattr(text_cfg, "num_attention_heads", 32))
    kv_heads = int(getattr(text_cfg, "num_key_value_heads", None) or heads)
    hidden = int(getattr(text_cfg, "hidden_size", 4096))
    head_dim = int(getattr(text_cfg, "head_dim", None) or hidden // max(heads, 1))
    vocab = int(getattr(text_cfg, "vocab_size", 32000))
    element = {"float32": 4, "float16": 2, "bfloat16": 2}.get(lm.spec.dtype, 4)
    tokens = max(1, prompt_tokens) + max(1, max_new_tokens)
    per_sequence = (
        2 * layers * kv_heads * head_dim * element * tokens  # key/value cache
        + heads * prompt_tokens * prompt_tokens * 4  # prefill attention scores of one layer
        + 4 * hidden * prompt_tokens * element  # prefill activations
        + 2 * vocab * 4  # logits and sampling scores
    )
    free = _available_bytes(lm) if available_bytes is None else available_bytes
    cap = CPU_BATCH_CAP if str(lm.input_device).startswith("cpu") else ACCELERATOR_BATCH_CAP
    return max(1, min(cap, int(free * fraction) // per_sequence))


# --------------------------------------------------------------------------- running


def _setting_text(setting: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in setting.items()) or "defaults"


def _estimate_prompt_tokens(lm: "LoadedModel", payloads: Iterable[AgentPayload]) -> int:
    tokenizer = lm.tokenizer
    longest = 0
    for p in payloads:
        text = f"{p.system_context}\n{p.user_message}"
        longest = max(longest, len(tokenizer.encode(text, add_special_tokens=False)))
    return longest + 32  # chat-template markup


def _row_from_response(response: Any) -> dict[str, Any]:
    meta = response.metadata or {}
    return {
        "response": response.response,
        "thinking": response.thinking,
        "tool_calls": response.tool_calls,
        "prompt_tokens": meta.get("prompt_tokens"),
        "completion_tokens": meta.get("completion_tokens"),
        "time_to_first_token": meta.get("time_to_first_token"),
        "seconds": meta.get("total_seconds"),
        "tokens_per_second": meta.get("tokens_per_second"),
        "finish_reason": meta.get("finish_reason"),
        "status": STATUS_OK,
        "error": None,
    }


def _run_checks(row: dict[str, Any], checks: list[_Check]) -> None:
    if not checks:
        return
    errors = []
    for check in checks:
        try:
            row[CHECK_PREFIX + check.name] = bool(check.func(dict(row)))
        except Exception as exc:  # a broken check fails its row; the results stay
            row[CHECK_PREFIX + check.name] = False
            errors.append(f"check {check.name!r} raised {type(exc).__name__}: {exc}")
    row["passed"] = all(row[CHECK_PREFIX + c.name] for c in checks)
    if errors:
        row["error"] = "; ".join(filter(None, [row.get("error"), *errors]))


def _emit(on_event: Callable[[CompareEvent], None] | None, event: CompareEvent) -> None:
    if on_event is None:
        return
    try:
        on_event(event)
    except Exception as exc:  # a broken callback must not lose the results
        warnings.warn(f"compare: on_event raised {type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=3)


def compare(
    prompts: str | AgentPayload | Sequence[str | AgentPayload],
    *,
    systems: str | Sequence[str] | None = None,
    settings: Mapping[str, Any] | None = None,
    models: Any = None,
    repeats: int = 1,
    seed: int | None = 0,
    batch_size: int | None = None,
    checks: Any = None,
    tools: list[Any] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
    on_event: Callable[[CompareEvent], None] | None = None,
) -> "pd.DataFrame":
    """Run every prompt under every system prompt, setting and model, and tabulate the answers.

    Args:
        prompts: a string or :class:`AgentPayload`, or a list of them.
        systems: system prompts to try; each replaces the payload's ``system_context``. None
            keeps the payloads' own (empty for plain strings).
        settings: a grid of generation options, e.g. ``{"temperature": [0, 0.7],
            "max_new_tokens": [64]}``; every combination is run. Options are those of
            :meth:`HuggingFaceLocalAgent.invoke` (``max_new_tokens``, ``temperature``, ``top_p``,
            ``top_k``, ``do_sample``, ``greedy``, and ``generate()`` options such as
            ``repetition_penalty``). None runs each agent's own configuration.
        models: an agent or model source (hub id, directory, ``.gguf`` file,
            :data:`DEFAULT_MODEL`), a list of them, or a dict ``{label: agent or source}``.
            Default: :data:`DEFAULT_MODEL`. Sources become agents built with ``model_kwargs``.
        repeats: how many times to run each combination.
        seed: base seed (see the module documentation); None leaves the random state alone.
        batch_size: rows per ``generate`` call; None picks one from the free memory
            (:func:`suggest_batch_size`).
        checks: optional checks of each answer, shown as ``"check: NAME"`` columns and a
            ``passed`` column: a substring (str), a compiled regex (``re.compile``), a callable
            that receives the row as a dict and returns a truth value, a list of these, or a dict
            ``{name: check}``. A check that raises counts as failed and its error is recorded.
        tools: tools offered to the model (parsed into ``tool_calls``, never executed).
        model_kwargs: constructor options for agents built from model sources.
        progress: show a progress bar (tqdm; the widget flavour in a notebook).
        on_event: called with a :class:`CompareEvent` when a model is loaded, after each batch
            and when a model is released.

    Returns:
        A DataFrame, one row per (model, prompt, system, setting, repeat); see the module
        documentation for the columns. Interrupting (Ctrl-C, a kernel interrupt) keeps the
        finished rows and marks the others ``"not run"``; ``df.attrs["interrupted"]`` is then
        True. A batch that fails is retried one row at a time, so only the failing rows get
        ``status="error"`` and an ``error`` message.

    Raises:
        ValueError: an argument or grid value is not allowed (the message names it).
    """
    from tqdm.auto import tqdm

    from .sources import DEFAULT_MODEL

    payloads = _payloads(prompts)
    system_list = _systems(systems)
    names, grid = _grid(settings)
    _positive_int("repeats", repeats)
    _positive_int("batch_size", batch_size, allow_none=True)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        _fail("seed", seed, "expected an integer or None")
    check_list = _checks(checks)
    agents = _models(DEFAULT_MODEL if models is None else models, model_kwargs, progress)
    from . import engine

    for label, agent in agents:  # validate every setting before any model loads
        for setting in grid:
            try:
                gen = agent.resolve_settings(dict(setting)).generation
                engine.check_generation_kwargs(gen.extra)
            except ValueError as exc:
                raise ValueError(f"compare: settings {_setting_text(setting)} for model {label!r}: {exc}") from exc
    if tools:
        from .tools import tool_schemas

        tool_schemas(tools)  # raises ToolSchemaError naming the bad tool

    # the table, in (model, prompt, system, setting, repeat) order
    rows: list[dict[str, Any]] = []
    jobs: list[tuple[int, int, int, AgentPayload]] = []  # (row index, model index, setting index, payload)
    for m, (label, _agent) in enumerate(agents):
        for p, payload in enumerate(payloads):
            for system in (system_list if system_list is not None else [payload.system_context]):
                row_payload = payload if system == payload.system_context else _with_system(payload, system)
                for s, setting in enumerate(grid):
                    for r in range(repeats):
                        row = {"model": label, "prompt_id": p, "prompt": payload.user_message, "system": system,
                               **setting, "repeat": r}
                        row.update({c: None for c in RESULT_COLUMNS if c != "repeat"})
                        row["status"] = STATUS_NOT_RUN
                        rows.append(row)
                        jobs.append((len(rows) - 1, m, s, row_payload))

    total = len(rows)
    done = 0
    batch_counter = itertools.count()
    interrupted = False
    bar = tqdm(total=total, desc="compare", unit="row", disable=not progress)

    def record(job: tuple, response: Any, exc: BaseException | None, size: int, number: int,
               batch_seed: int | None) -> dict[str, Any]:
        row = rows[job[0]]
        if exc is None:
            row.update(_row_from_response(response))
        else:
            row.update(status=STATUS_ERROR, error=f"{type(exc).__name__}: {exc}")
        row.update(seed=batch_seed, batch=number, batch_size=size)
        return row

    def run_batch(agent: "HuggingFaceLocalAgent", batch: list[tuple[int, int, int, AgentPayload]],
                  setting: dict[str, Any], batch_seed: int | None) -> list[dict[str, Any]]:
        overrides = dict(setting)
        if batch_seed is not None:
            overrides["seed"] = batch_seed
        try:
            responses = agent.generate_batch([job[3] for job in batch], tools=tools, **overrides)
        except Exception as exc:
            if len(batch) == 1:
                return [record(batch[0], None, exc, 1, next(batch_counter), batch_seed)]
            finished = []
            for job in batch:  # isolate the failing rows; each finished row is kept at once
                try:
                    response, error = agent.generate_batch([job[3]], tools=tools, **overrides)[0], None
                except Exception as single_exc:
                    response, error = None, single_exc
                finished.append(record(job, response, error, 1, next(batch_counter), batch_seed))
            return finished
        number = next(batch_counter)
        return [record(job, response, None, len(batch), number, batch_seed) for job, response in zip(batch, responses)]

    try:
        for m, (label, agent) in enumerate(agents):
            model_jobs = [job for job in jobs if job[1] == m]
            was_loaded = agent.is_loaded
            bar.set_postfix_str(f"loading {label}")
            try:
                agent.load_sync()
            except Exception as exc:
                for job in model_jobs:
                    rows[job[0]].update(status=STATUS_ERROR,
                                        error=f"loading the model failed: {type(exc).__name__}: {exc}")
                done += len(model_jobs)
                bar.update(len(model_jobs))
                continue
            try:
                lm = agent.loaded_model
                _emit(on_event, CompareEvent("model_loaded", label, done, total))
                for s, setting in enumerate(grid):
                    group = [job for job in model_jobs if job[2] == s]
                    size = batch_size
                    if size is None:
                        new_tokens = setting.get("max_new_tokens", agent.config.max_new_tokens)
                        size = suggest_batch_size(lm, _estimate_prompt_tokens(lm, (j[3] for j in group)), new_tokens)
                    bar.set_postfix_str(f"{label} | {_setting_text(setting)}")
                    for k in range(0, len(group), size):
                        batch_seed = None if seed is None else seed + k // size
                        finished = run_batch(agent, group[k:k + size], setting, batch_seed)
                        done += len(finished)
                        bar.update(len(finished))
                        for row in finished:
                            if row["status"] == STATUS_OK:
                                _run_checks(row, check_list)
                        _emit(on_event, CompareEvent("batch", label, done, total, [dict(r) for r in finished]))
            finally:
                if not was_loaded:  # a model the caller had loaded stays loaded
                    agent.unload_model_sync()
                    _emit(on_event, CompareEvent("model_released", label, done, total))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    if interrupted:
        not_run = sum(row["status"] == STATUS_NOT_RUN for row in rows)
        warnings.warn(f"compare was interrupted: {not_run} of {total} rows were not run",
                      RuntimeWarning, stacklevel=2)
    frame = _frame(rows, names, [c.name for c in check_list])
    frame.attrs.update(interrupted=interrupted, seed=seed)
    return frame


# --------------------------------------------------------------------------- the frame


def _plain(value: Any) -> Any:
    """numpy scalars to Python values (for JSON and for stable pandas inference)."""
    item = getattr(value, "item", None)
    if item is not None and type(value).__module__ == "numpy":
        return item()
    return value


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        import pandas as pd

        return bool(pd.isna(value)) if not isinstance(value, (list, dict, tuple)) else False
    except (TypeError, ValueError):
        return False


def _frame(rows: list[dict[str, Any]], setting_names: list[str], check_names: list[str]) -> "pd.DataFrame":
    import pandas as pd

    check_cols = [CHECK_PREFIX + n for n in check_names]
    columns = [*KEY_COLUMNS, *setting_names, *RESULT_COLUMNS, *check_cols, *(["passed"] if check_names else [])]
    data: dict[str, Any] = {}
    for col in columns:
        values = [_plain(row.get(col)) for row in rows]
        if col in INT_COLUMNS:
            data[col] = pd.array([None if _is_missing(v) else int(v) for v in values], dtype="Int64")
        elif col in FLOAT_COLUMNS:
            data[col] = pd.array([math.nan if _is_missing(v) else float(v) for v in values], dtype="float64")
        elif col in check_cols or col == "passed":
            data[col] = pd.array([None if _is_missing(v) else bool(v) for v in values], dtype="boolean")
        elif col in JSON_COLUMNS:
            data[col] = pd.Series([None if _is_missing(v) else v for v in values], dtype=object)
        elif col in TEXT_COLUMNS:
            data[col] = pd.Series([None if _is_missing(v) else str(v) for v in values])
        else:  # a setting: let pandas infer from the Python values
            data[col] = pd.Series(values)
    frame = pd.DataFrame(data, columns=columns, index=pd.RangeIndex(len(rows)))
    frame.attrs["settings_columns"] = list(setting_names)
    frame.attrs["check_columns"] = list(check_cols)
    return frame


def settings_columns(df: "pd.DataFrame") -> list[str]:
    """The names of the settings columns of a comparison frame."""
    names = df.attrs.get("settings_columns")
    if names is not None:
        return [n for n in names if n in df.columns]
    cols = list(df.columns)
    return cols[cols.index("system") + 1:cols.index("repeat")]


def check_columns(df: "pd.DataFrame") -> list[str]:
    """The ``"check: NAME"`` columns of a comparison frame."""
    return [c for c in df.columns if isinstance(c, str) and c.startswith(CHECK_PREFIX)]


def config_label(row: Mapping[str, Any], setting_names: Sequence[str], include_model: bool = True) -> str:
    """``"model | temperature=0.7, max_new_tokens=64"`` for a row (or parts of it)."""
    setting = ", ".join(f"{n}={_plain(row[n])!r}" for n in setting_names)
    parts = ([str(row["model"])] if include_model else []) + ([setting] if setting else [])
    return " | ".join(parts) or "defaults"


def summarize(df: "pd.DataFrame") -> "pd.DataFrame":
    """Aggregate figures per configuration (model and setting), from the rows that ran.

    Columns: ``model``, ``config`` (the settings as text), ``rows``, ``ok``, ``errors``,
    ``not_run``, ``batches``, ``completion_tokens``, ``seconds`` (generation time: the sum of
    the configuration's batch times), ``tokens_per_second`` (completion tokens over that
    time), ``latency`` (mean seconds per ``generate`` call), ``time_to_first_token`` (mean per
    call) and ``pass_rate`` when the frame has checks.
    """
    import pandas as pd

    names = settings_columns(df)
    labels = [config_label(row, names, include_model=False) for row in df.to_dict("records")]
    work = df.assign(config=labels)
    records = []
    for (model, config), group in work.groupby(["model", "config"], sort=False):
        ok = group[group["status"] == STATUS_OK]
        batches = ok.drop_duplicates("batch")
        seconds = float(batches["seconds"].sum())
        tokens = int(ok["completion_tokens"].sum()) if len(ok) else 0
        record = {
            "model": model,
            "config": config,
            "rows": len(group),
            "ok": len(ok),
            "errors": int((group["status"] == STATUS_ERROR).sum()),
            "not_run": int((group["status"] == STATUS_NOT_RUN).sum()),
            "batches": len(batches),
            "completion_tokens": tokens,
            "seconds": seconds,
            "tokens_per_second": tokens / seconds if seconds > 0 else math.nan,
            "latency": float(batches["seconds"].mean()) if len(batches) else math.nan,
            "time_to_first_token": float(batches["time_to_first_token"].mean()) if len(batches) else math.nan,
        }
        if "passed" in group.columns:
            passed = ok["passed"].dropna()
            record["pass_rate"] = float(passed.mean()) if len(passed) else math.nan
        records.append(record)
    return pd.DataFrame.from_records(records)


# --------------------------------------------------------------------------- export and load


def _export_records(df: "pd.DataFrame", encode_json: bool) -> tuple[list[str], list[dict[str, Any]]]:
    """Rows with settings columns renamed ``setting:NAME``; values as plain Python objects."""
    names = set(settings_columns(df))
    header = [SETTING_PREFIX + c if c in names else c for c in df.columns]
    records = []
    for row in df.to_dict("records"):
        out: dict[str, Any] = {}
        for col, key in zip(df.columns, header):
            value = _plain(row[col])
            if col in names or col in JSON_COLUMNS:
                value = None if (col in JSON_COLUMNS and _is_missing(value)) else value
                out[key] = json.dumps(value) if encode_json else value
            else:
                out[key] = None if _is_missing(value) else value
        records.append(out)
    return header, records


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def to_csv(df: "pd.DataFrame", path: str | os.PathLike) -> Path:
    """Write a comparison frame to CSV. Settings columns are written as ``setting:NAME`` with
    JSON values (and ``tool_calls`` as JSON), so :func:`load_comparison` restores their types."""
    header, records = _export_records(df, encode_json=True)
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for record in records:
            writer.writerow([_cell(record[k]) for k in header])
    return path


def to_jsonl(df: "pd.DataFrame", path: str | os.PathLike) -> Path:
    """Write a comparison frame as JSON lines, one object per row (settings keys ``setting:NAME``)."""
    header, records = _export_records(df, encode_json=False)
    path = Path(path)
    with path.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps({k: record[k] for k in header}, ensure_ascii=False, default=str) + "\n")
    return path


_MD_ESCAPE = re.compile(r"([\\|*_`\[\]])")
MARKDOWN_COLUMNS = ("model", "prompt", "system", "repeat", "response", "status", "completion_tokens",
                    "tokens_per_second")


def _md_escape(text: str) -> str:
    text = html.escape(text, quote=False).replace("\r", "&#13;")
    text = _MD_ESCAPE.sub(r"\\\1", text).replace("\n", "<br>")
    # spaces at the ends of a cell would be trimmed by Markdown: keep them as character references
    return re.sub(r"^[ \t]+|[ \t]+$", lambda m: "".join(f"&#{ord(c)};" for c in m.group()), text)


def _md_unescape(text: str) -> str:
    text = text.replace("<br>", "\n")
    text = re.sub(r"\\(.)", r"\1", text)
    return html.unescape(text)


def _md_format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def to_markdown(df: "pd.DataFrame", path: str | os.PathLike | None = None,
                columns: Sequence[str] | str | None = None) -> str:
    """A Markdown (pipe) table of a comparison frame; written to ``path`` when given.

    ``columns``: None for a readable set (model, prompt, system, the settings, repeat,
    response, status, tokens, tokens/s and the checks), ``"all"`` for every column, or a list.
    Text is HTML-escaped (model output is untrusted) and Markdown-escaped; newlines become
    ``<br>``. Settings cells hold JSON values so :func:`load_comparison` restores them;
    other floats are rounded to 4 significant digits.
    """
    names = settings_columns(df)
    if columns is None:
        wanted = [c for c in MARKDOWN_COLUMNS[:3]] + names + list(MARKDOWN_COLUMNS[3:]) + check_columns(df) \
            + (["passed"] if "passed" in df.columns else [])
    elif columns == "all":
        wanted = list(df.columns)
    else:
        wanted = list(columns)
        missing = [c for c in wanted if c not in df.columns]
        if missing:
            _fail("columns", missing, "expected names of columns of the frame")
    header, records = _export_records(df[wanted], encode_json=True)
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    for record in records:
        lines.append("| " + " | ".join(_md_escape(_md_format(record[h])) for h in header) + " |")
    text = "\n".join(lines) + "\n"
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


def _split_md_row(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    cells, current, i = [], [], 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line):
            current.append(line[i:i + 2])
            i += 2
            continue
        if ch == "|":
            cells.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        i += 1
    if "".join(current).strip():
        cells.append("".join(current).strip())
    return cells


def _read_markdown(path: Path) -> list[dict[str, str]]:
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        raise ValueError(f"load_comparison: {str(path)!r} has no Markdown table")
    header = [_md_unescape(c) for c in _split_md_row(lines[0])]
    records = []
    for line in lines[2:]:
        cells = [_md_unescape(c) for c in _split_md_row(line)]
        cells += [""] * (len(header) - len(cells))
        records.append(dict(zip(header, cells)))
    return records


def _from_text(col: str, value: str, status: str | None) -> Any:
    """A cell read from CSV or Markdown back to its Python value."""
    if col.startswith(SETTING_PREFIX) or col in JSON_COLUMNS:
        return json.loads(value) if value != "" else None
    if value == "":
        if col in ("response", "thinking") and status == STATUS_OK:
            return ""
        return None
    if col in INT_COLUMNS:
        return int(value)
    if col in FLOAT_COLUMNS:
        return float(value)
    if col.startswith(CHECK_PREFIX) or col == "passed":
        return value == "True"
    return value


def load_comparison(path: str | os.PathLike) -> "pd.DataFrame":
    """Read a comparison written by :func:`to_csv`, :func:`to_jsonl` or :func:`to_markdown`.

    The format follows the suffix (``.csv``, ``.jsonl``/``.json``, ``.md``). Settings columns
    get back their names and types, and the other columns their dtypes; a Markdown table has
    only the columns it was written with.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        with path.open(encoding="utf-8") as fh:
            records = [json.loads(line) for line in fh if line.strip()]
        header = list(records[0]) if records else []
    elif suffix in (".csv", ".md", ".markdown"):
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                raw = list(reader)
                header = list(reader.fieldnames or [])
        else:
            raw = _read_markdown(path)
            header = list(raw[0]) if raw else []
        records = [{k: _from_text(k, v, rec.get("status")) for k, v in rec.items()} for rec in raw]
    else:
        raise ValueError(f"load_comparison: {str(path)!r}: expected a .csv, .jsonl or .md file")
    names = [h[len(SETTING_PREFIX):] for h in header if h.startswith(SETTING_PREFIX)]
    checks = [h[len(CHECK_PREFIX):] for h in header if h.startswith(CHECK_PREFIX)]
    rows = [{(k[len(SETTING_PREFIX):] if k.startswith(SETTING_PREFIX) else k): v for k, v in rec.items()}
            for rec in records]
    frame = _frame(rows, names, checks)
    present = {h[len(SETTING_PREFIX):] if h.startswith(SETTING_PREFIX) else h for h in header}
    if suffix in (".md", ".markdown"):
        frame = frame[[c for c in frame.columns if c in present]]
        frame.attrs["settings_columns"] = names
        frame.attrs["check_columns"] = [CHECK_PREFIX + c for c in checks]
    return frame
