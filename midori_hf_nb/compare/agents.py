"""The agents of a comparison: labels, what each one offers, its settings, and its model's lifetime.

A comparison takes any Midori protocol agent (``invoke``, ``invoke_with_tools``). What it does
with one depends on what the agent offers, tested by name:

* :func:`offers_batching`: the agent answers a list of payloads in one call
  (``generate_batch``, as :class:`~midori_hf_nb.HuggingFaceLocalAgent` does); otherwise each row
  is its own ``invoke`` call, several at a time;
* :func:`manages_model`: the agent loads and frees a model (``load`` and ``unload_model``), so
  a comparison loads it before its rows and releases it after, unless the caller had loaded it;
* :func:`resolves_settings`: the agent checks a setting against its own configuration
  (``resolve_settings``), before any model loads;
* :func:`offers_reproducible`: the agent gives reproducible answers when asked (its
  configuration has a ``reproducible`` flag, as :class:`~midori_hf_nb.HuggingFaceLocalAgent`'s
  does); :func:`reproducible_for` says whether a setting's rows ask for them;
* :func:`takes_overrides`: the agent's ``invoke`` accepts per-call options (``**overrides``, as
  this project's agents do). The protocol's own ``invoke(payload)`` takes none: such an agent
  runs its rows without settings and without a seed.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any, Mapping

from ..protocol import MidoriAiAgentProtocol
from ..settings import CallSettings, check_overrides, offers_reproducible
from .columns import not_allowed, setting_text
from .concurrent import run_coroutine


@dataclass(frozen=True)
class ModelEntry:
    """One model of the grid: its label in the ``model`` column and the agent that runs it."""

    label: str
    agent: Any


def offers_batching(agent: Any) -> bool:
    """True when ``agent.generate_batch(payloads, tools=..., **overrides)`` answers several payloads at once."""
    return callable(getattr(agent, "generate_batch", None))


def manages_model(agent: Any) -> bool:
    """True when the agent loads and frees a model itself (``load`` and ``unload_model``)."""
    return callable(getattr(agent, "load", None)) and callable(getattr(agent, "unload_model", None))


def resolves_settings(agent: Any) -> bool:
    """True when the agent resolves a call's settings against its configuration (``resolve_settings``)."""
    return callable(getattr(agent, "resolve_settings", None))


def reproducible_for(agent: Any, setting: Mapping[str, Any], seed: int | None, requested: bool | None) -> bool | None:
    """The ``reproducible`` override of a setting's rows on ``agent`` (None: none is passed, the
    agent does not offer it). ``requested`` None means on when the rows are greedy or seeded."""
    if not offers_reproducible(agent):
        return None
    if requested is not None:
        return requested
    if seed is not None:
        return True
    try:
        return bool(agent.resolve_settings(dict(setting), streaming=False).greedy) if resolves_settings(agent) else False
    except ValueError:
        return False  # the rows report the setting's error themselves


def takes_overrides(agent: Any) -> bool:
    """True when ``agent.invoke`` accepts keyword overrides (a ``**overrides`` parameter)."""
    try:
        parameters = inspect.signature(agent.invoke).parameters.values()
    except (TypeError, ValueError):  # a signature that cannot be read: assume the project's convention
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def is_agent(value: Any) -> bool:
    """True for a :class:`MidoriAiAgentProtocol` instance or an object with its ``invoke`` methods."""
    if isinstance(value, MidoriAiAgentProtocol):
        return True
    return callable(getattr(value, "invoke", None)) and callable(getattr(value, "invoke_with_tools", None))


def default_label(agent: Any) -> str:
    """An agent's label when none is given: its configured model (and quantization), its
    ``model`` name, or its class name."""
    config = getattr(agent, "config", None)
    name = getattr(config, "model", None)
    if isinstance(name, str) and name:
        quantization = getattr(config, "quantization", None)
        return name + (f" ({quantization})" if quantization else "")
    name = getattr(agent, "model", None)
    return name if isinstance(name, str) and name else type(agent).__name__


def model_entries(models: Any, model_kwargs: Mapping[str, Any] | None, progress: bool) -> list[ModelEntry]:
    """``models`` as labelled agents: an agent or model source, a list of them, or ``{label: ...}``.

    Sources (hub ids, directories, ``.gguf`` files) become local agents built with
    ``model_kwargs``. Repeated labels get `` [2]``, `` [3]``...
    """
    if isinstance(models, Mapping):
        items = list(models.items())
    else:
        items = [(None, m) for m in (models if isinstance(models, (list, tuple)) else [models])]
    if not items:
        raise not_allowed("models", models, "expected at least one agent or model source")
    if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
        raise not_allowed("model_kwargs", model_kwargs, "expected None or a dict of agent options")
    pairs: list[tuple[str, Any]] = []
    for i, (label, item) in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            from ..agent import HuggingFaceLocalAgent

            agent = HuggingFaceLocalAgent(model=os.fspath(item), **{"progress": progress, **dict(model_kwargs or {})})
        elif is_agent(item):
            agent = item
        else:
            raise not_allowed(f"models[{i}]", item, "expected an agent implementing MidoriAiAgentProtocol "
                              "(invoke, invoke_with_tools), a model source string or a path")
        pairs.append((str(label) if label is not None else default_label(agent), agent))
    seen: dict[str, int] = {}
    entries = []
    for base, agent in pairs:
        seen[base] = seen.get(base, 0) + 1
        entries.append(ModelEntry(base if seen[base] == 1 else f"{base} [{seen[base]}]", agent))
    return entries


def check_setting_for(entry: ModelEntry, setting: dict[str, Any]) -> None:
    """Check one setting against an agent's own configuration, when the agent resolves settings.

    (Every setting has already passed :func:`midori_hf_nb.settings.check_overrides`.) The local
    agent's ``generate()`` options are checked by the engine too, so a misspelt option fails
    here rather than in every row.
    """
    if not resolves_settings(entry.agent):
        return
    try:
        call = entry.agent.resolve_settings(dict(setting))
        if isinstance(call, CallSettings) and call.generation.extra:
            from ..engine import check_generation_kwargs

            check_generation_kwargs(call.generation.extra)
    except ValueError as exc:
        raise ValueError(f"compare: settings {setting_text(setting)} for model {entry.label!r}: {exc}") from exc


def check_settings(settings: list[dict[str, Any]], entries: list[ModelEntry]) -> None:
    """Validate every setting of the grid once (:func:`check_overrides`), then per agent that
    resolves its own; raises ``ValueError`` naming the setting, the model and the field."""
    for setting in settings:
        try:
            check_overrides(setting)
        except ValueError as exc:
            raise ValueError(f"compare: settings {setting_text(setting)}: {exc}") from exc
    for entry in entries:
        if any(settings) and not offers_batching(entry.agent) and not takes_overrides(entry.agent):
            raise not_allowed("settings", [setting_text(s) for s in settings],
                              f"model {entry.label!r} takes no per-call options (its invoke has no **overrides): "
                              "run it with settings=None")
        for setting in settings:
            check_setting_for(entry, setting)


def new_tokens_for(agent: Any, setting: dict[str, Any], default: int) -> int:
    """The ``max_new_tokens`` a row with ``setting`` runs with on ``agent`` (the agent's own
    resolution when it offers one, else the setting's value, else ``default``)."""
    if resolves_settings(agent):
        call = agent.resolve_settings(dict(setting))
        if isinstance(call, CallSettings):
            return call.generation.max_new_tokens
    value = setting.get("max_new_tokens")
    return value if isinstance(value, int) and not isinstance(value, bool) else default


class ModelHold:
    """Holds an agent's model for the agent's rows: loads it first (agents that manage a model)
    and releases it after, unless the caller had loaded it."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.was_loaded = getattr(agent, "is_loaded", False) is True
        self.loaded = False

    def load(self) -> None:
        """Load the model (blocking); nothing for agents that do not manage one."""
        if not manages_model(self.agent):
            return
        load_sync = getattr(self.agent, "load_sync", None)
        if callable(load_sync):
            load_sync()
        else:
            run_coroutine(self.agent.load)
        self.loaded = True

    def release(self) -> bool:
        """Release a model this hold loaded; True when it did."""
        if not self.loaded or self.was_loaded:
            return False
        unload_sync = getattr(self.agent, "unload_model_sync", None)
        if callable(unload_sync):
            unload_sync()
        else:
            run_coroutine(self.agent.unload_model)
        self.loaded = False
        return True


__all__ = ["ModelEntry", "ModelHold", "check_setting_for", "check_settings", "default_label", "is_agent", "manages_model",
           "model_entries", "new_tokens_for", "offers_batching", "resolves_settings", "takes_overrides"]
