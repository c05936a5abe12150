"""The grid of a comparison: its arguments checked, and its rows in table order.

:func:`build_grid` validates everything :func:`~midori_hf_nb.compare.compare` is given before
any model loads (each error names the argument and what is allowed) and lays out one
:class:`~midori_hf_nb.compare.rows.Row` per (model, prompt, system, setting, repeat).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..protocol import AgentPayload, make_payload
from ..settings import check_overrides
from .agents import ModelEntry, check_settings, model_entries
from .checks import Check, build_checks
from .columns import RESERVED_NAMES, not_allowed
from .rows import Row

#: How many rows of an agent without batching run at once, by default.
DEFAULT_CONCURRENCY = 4


def as_list(value: Any) -> list[Any]:
    """A list or tuple as a list; anything else as a list of one."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def payloads_of(prompts: Any) -> list[AgentPayload]:
    """Prompts (strings or payloads, one or a list) as payloads."""
    items = as_list(prompts)
    if not items:
        raise not_allowed("prompts", prompts, "expected at least one prompt (a string or an AgentPayload)")
    payloads = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            payloads.append(make_payload(item))
        elif isinstance(item, AgentPayload):
            payloads.append(item)
        else:
            raise not_allowed(f"prompts[{i}]", item, "expected a string or an AgentPayload")
    return payloads


def systems_of(systems: Any) -> list[str] | None:
    """System prompts to try (None keeps each payload's own)."""
    if systems is None:
        return None
    items = as_list(systems)
    if not items:
        raise not_allowed("systems", systems, "expected None, a string or a non-empty list of strings")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise not_allowed(f"systems[{i}]", item, "expected a string")
    return items


def settings_grid(settings: Mapping[str, Any] | None) -> tuple[list[str], list[dict[str, Any]]]:
    """The option names of a grid and every combination of their values, in order."""
    if settings is None:
        return [], [{}]
    if not isinstance(settings, Mapping):
        raise not_allowed("settings", settings,
                          'expected a dict of option -> list of values, e.g. {"temperature": [0, 0.7]}')
    names = list(settings)
    values = []
    for name in names:
        if not isinstance(name, str) or not name.isidentifier():
            raise not_allowed("settings", name, "expected option names such as 'temperature' or 'max_new_tokens'")
        if name == "seed":
            raise not_allowed("settings['seed']", settings[name],
                              "pass seed=... to compare (each batch is seeded from it)")
        if name in RESERVED_NAMES:
            raise not_allowed(f"settings[{name!r}]", settings[name],
                              f"{name!r} is a result column, not a generation option")
        options = as_list(settings[name])
        if not options:
            raise not_allowed(f"settings[{name!r}]", settings[name], "expected at least one value")
        values.append(options)
    return names, [dict(zip(names, combo)) for combo in itertools.product(*values)]


def positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    """Raise naming ``name`` unless ``value`` is an integer >= 1 (or None when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise not_allowed(name, value, "expected a positive integer" + (" or None" if allow_none else ""))


def check_seed(seed: Any) -> None:
    """Raise naming ``seed`` unless it is None or an integer torch accepts (the settings' rule)."""
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise not_allowed("seed", seed, "expected an integer or None")
    try:
        check_overrides({"seed": seed})
    except ValueError as exc:
        raise ValueError(f"compare: {exc}") from exc


def with_system(payload: AgentPayload, system: str) -> AgentPayload:
    """A copy of ``payload`` with another system prompt."""
    copied = copy.copy(payload)
    copied.system_context = system
    return copied


@dataclass
class RunOptions:
    """How the rows run: seeding, batching, concurrency and the tools offered."""

    seed: int | None = 0
    batch_size: int | None = None
    #: None: each agent's own ``concurrency`` (see :func:`~.agents.concurrency_for`)
    concurrency: int | None = None
    tools: list[Any] | None = None
    #: warm-up before timing: None (agents that batch), True (every agent) or False (none)
    warmup: bool | None = None
    #: reproducible answers from agents that offer them: None (when greedy or seeded), True, False
    reproducible: bool | None = None


@dataclass
class Grid:
    """A validated comparison: its models, settings, checks and rows (in table order)."""

    models: list[ModelEntry]
    setting_names: list[str]
    settings: list[dict[str, Any]]
    checks: list[Check]
    rows: list[Row] = field(default_factory=list)

    @property
    def check_names(self) -> list[str]:
        """The checks' column names (without the ``"check: "`` prefix)."""
        return [check.name for check in self.checks]

    def rows_of(self, model_index: int) -> list[Row]:
        """The rows of one model, in table order."""
        return [row for row in self.rows if row.model_index == model_index]


def lay_out(grid: Grid, payloads: list[AgentPayload], systems: list[str] | None, repeats: int) -> None:
    """Fill ``grid.rows`` in (model, prompt, system, setting, repeat) order."""
    for m, entry in enumerate(grid.models):
        for p, payload in enumerate(payloads):
            for system in (systems if systems is not None else [payload.system_context]):
                row_payload = payload if system == payload.system_context else with_system(payload, system)
                for s, setting in enumerate(grid.settings):
                    for r in range(repeats):
                        grid.rows.append(Row(model_index=m, model=entry.label, prompt_id=p,
                                             prompt=payload.user_message, system=system, setting_index=s,
                                             setting=dict(setting), repeat=r, payload=row_payload))


def build_grid(prompts: Any, *, systems: Any, settings: Any, models: Any, repeats: Any, checks: Any,
               tools: Any, model_kwargs: Any, progress: bool) -> Grid:
    """Validate the grid's arguments (before any model loads) and lay out its rows."""
    payloads = payloads_of(prompts)
    system_list = systems_of(systems)
    names, combos = settings_grid(settings)
    positive_int("repeats", repeats)
    check_list = build_checks(checks)
    if models is None:
        from ..sources import DEFAULT_MODEL

        models = DEFAULT_MODEL
    entries = model_entries(models, model_kwargs, progress)
    check_settings(combos, entries)
    if tools:
        from ..tools import tool_schemas

        tool_schemas(tools)  # raises ToolSchemaError naming the bad tool
    grid = Grid(entries, names, combos, check_list)
    lay_out(grid, payloads, system_list, repeats)
    return grid


def run_options(*, seed: Any, batch_size: Any, concurrency: Any, tools: Any, warmup: Any = None,
                reproducible: Any = None) -> RunOptions:
    """Validated :class:`RunOptions`."""
    if reproducible is not None and not isinstance(reproducible, bool):
        raise not_allowed("reproducible", reproducible, "expected None (on when greedy or seeded), True or False")
    if warmup is not None and not isinstance(warmup, bool):
        raise not_allowed("warmup", warmup, "expected None (warm up agents that batch), True (every agent) or False")
    check_seed(seed)
    positive_int("batch_size", batch_size, allow_none=True)
    positive_int("concurrency", concurrency, allow_none=True)
    if tools is not None and not isinstance(tools, (list, tuple)):
        raise not_allowed("tools", tools, "expected None or a list of tools")
    return RunOptions(seed=seed, batch_size=batch_size, concurrency=concurrency,
                      tools=list(tools) if tools is not None else None, warmup=warmup, reproducible=reproducible)


__all__ = ["DEFAULT_CONCURRENCY", "Grid", "RunOptions", "as_list", "build_grid", "check_seed", "lay_out",
           "payloads_of", "positive_int", "run_options", "settings_grid", "systems_of", "with_system"]
