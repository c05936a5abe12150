"""The settings of one generation: an agent's configuration plus a call's overrides, resolved in
one place.

Every layer that lets a user change a generation setting (``invoke(**overrides)``, the ``%midori``
magics, the chat panel, ``compare()`` grids) hands the overrides to :func:`resolve_call_settings`
(or, without an agent's configuration at hand, checks them with :func:`check_overrides`), so the
rules live here alone:

* ``greedy=True`` means ``do_sample=False`` (and ``greedy=False`` means sampling);
* a ``temperature`` above 0 given without ``do_sample`` or ``greedy`` turns sampling on for the
  call, and a temperature of 0 decodes greedily;
* ``seed`` is an integer torch accepts (``-2**63 <= seed < 2**64``);
* precedence of the generation settings (``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``,
  ``do_sample``): the call's overrides, then the agent's configuration where the user set the
  field, then the model's own ``generation_config.json`` (``model_defaults``, read with
  :func:`model_generation_defaults`), then the project defaults for small chat models
  (:data:`~midori_hf_nb.config.GENERATION_DEFAULTS`); :attr:`CallSettings.origins` says which
  one each value came from;
* ``stop_on_repetition`` (on by default) ends a looping answer with ``finish_reason="repetition"``
  (:class:`RepetitionGuard`);
* every configuration field is validated by :class:`~midori_hf_nb.config.HuggingFaceConfig`;
* ``response_format`` and ``tool_choice`` are validated by :mod:`midori_hf_nb.structured` (the
  schema compiled once, here) and travel as typed fields of :class:`CallSettings`;
  anything else is a ``generate()`` option (checked against ``GenerationConfig`` by the engine).

Nothing here imports torch or transformers.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from .config import MODEL_DEFAULT_FIELDS, ConfigError, HuggingFaceConfig, validate_generation_options, validate_seed
from .structured.errors import StructuredOutputError
from .structured.formats import ResponseFormat, ToolChoice, response_format_from, tool_choice_from
from .structured.tools import tool_call_constraint

#: Per-call overrides that change a configuration field.
CONFIG_OVERRIDES = ("max_new_tokens", "temperature", "top_p", "top_k", "do_sample", "stop_on_repetition")


@dataclass(frozen=True)
class RepetitionGuard:
    """When a generation counts as looping: its last tokens are one pattern of ``period`` tokens
    (1 to ``max_period``) repeated at least ``min_repeats`` times and covering at least
    ``min_tokens`` tokens. Then it ends with ``finish_reason="repetition"``.

    The defaults stop "Ada, ada, ada, ..." (a 2-token pattern) after 32 tokens and a repeated
    sentence of up to 64 tokens after its fourth copy, while text that only reuses tokens (lists,
    numbers counting up, a table rule ``|---|---|`` of a few cells, repeated code lines with
    different names) goes on. Checking costs ``max_period`` integer comparisons per token.
    """

    max_period: int = 64
    min_repeats: int = 4
    min_tokens: int = 32

    def __post_init__(self) -> None:
        for name in ("max_period", "min_repeats", "min_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "min_repeats" else 1):
                raise ConfigError(f"RepetitionGuard.{name}={value!r} is not allowed: expected an integer >= "
                                  f"{2 if name == 'min_repeats' else 1}")


#: The guard ``stop_on_repetition=True`` uses.
DEFAULT_REPETITION_GUARD = RepetitionGuard()


@dataclass
class GenerationSettings:
    """What one generation runs with (the engine's input), resolved by :func:`resolve_call_settings`."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: torch intra-op threads on CPU: "auto", a count, or None to leave torch's setting alone
    num_threads: int | str | None = None
    #: "auto" (the engine's decode loop when the settings allow it) or "generate" (always model.generate)
    decode_loop: str = "auto"
    #: ends a looping generation with finish_reason "repetition"; None lets it run to max_new_tokens
    repetition_guard: RepetitionGuard | None = None
    #: a compiled grammar (:class:`~midori_hf_nb.structured.GrammarConstraint`) the engine runs as a
    #: logits processor: from ``response_format``, or a forced tool call; None: unconstrained
    constraint: Any = None
    #: tokens at the end of the input that an earlier, paused part of this answer generated (a
    #: stream continued after nobody read it for a while): the constraint follows them as answer
    answer_so_far: int = 0

    @property
    def greedy(self) -> bool:
        """True when decoding picks the most likely token (``do_sample=False`` or temperature 0)."""
        return not self.do_sample or self.temperature == 0


@dataclass(frozen=True)
class CallSettings:
    """The configuration a call runs with (the agent's, with the call's overrides applied) and
    the :class:`GenerationSettings` derived from it."""

    config: HuggingFaceConfig
    generation: GenerationSettings
    #: the validated ``response_format`` (None: free text)
    response_format: ResponseFormat | None = None
    #: the validated ``tool_choice`` (None: "auto"); applied where tools are offered
    tool_choice: ToolChoice | None = None
    #: where each generation setting came from: "call", "agent" (set by the user), "model" (its
    #: generation_config.json) or "default" (:data:`~midori_hf_nb.config.GENERATION_DEFAULTS`)
    origins: Mapping[str, str] = field(default_factory=dict)

    @property
    def greedy(self) -> bool:
        return self.generation.greedy


def _model_value(name: str, value: Any) -> Any:
    """``value`` if it is an acceptable ``name`` for :class:`HuggingFaceConfig`, else None."""
    if name == "do_sample":
        return value if isinstance(value, bool) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if name in ("max_new_tokens", "top_k"):
        return int(value) if isinstance(value, int) and value > 0 else None
    if name == "temperature":
        return float(value) if 0.0 <= value <= 2.0 else None
    return float(value) if 0.0 < value <= 1.0 else None  # top_p


def model_generation_defaults(values: Mapping[str, Any] | None, *, source: str = "generation_config.json",
                              ) -> dict[str, Any]:
    """The generation settings a model's ``generation_config.json`` supplies (``values``: its
    non-default entries, e.g. ``GenerationConfig.to_diff_dict()``), checked like the user's own.

    Only ``max_new_tokens``, ``temperature``, ``top_p``, ``top_k`` and ``do_sample`` are taken; a
    value outside what :class:`HuggingFaceConfig` allows is left out with a warning naming the
    field and ``source`` (a model file is input from outside).
    """
    taken: dict[str, Any] = {}
    for name in MODEL_DEFAULT_FIELDS:
        if not isinstance(values, Mapping) or values.get(name) is None:
            continue
        value = _model_value(name, values[name])
        if value is None:
            warnings.warn(f"{source}: {name}={values[name]!r} is not allowed, so it is not used "
                          "(the project default applies)", stacklevel=2)
            continue
        taken[name] = value
    return taken


def split_overrides(overrides: Mapping[str, Any], *, streaming: bool = True,
                    ) -> tuple[dict[str, Any], int | None, dict[str, Any]]:
    """Overrides as (configuration fields, seed, ``generate()`` options), with the greedy and
    temperature rules of this module applied and each named field checked (``streaming``: the
    answer streams token by token, so beam search is refused)."""
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"overrides={overrides!r} is not allowed: expected keyword arguments (a mapping)")
    rest = dict(overrides)
    seed = validate_seed(rest.pop("seed", None))
    greedy = rest.pop("greedy", None)
    if greedy is not None:
        if not isinstance(greedy, bool):
            raise ConfigError(f"greedy={greedy!r} is not allowed: expected true or false")
        if "do_sample" in rest and rest["do_sample"] is not None and rest["do_sample"] == greedy:
            raise ConfigError(f"greedy={greedy!r} and do_sample={rest['do_sample']!r} contradict each other: "
                              "give one of them")
        rest["do_sample"] = not greedy
    fields = {k: rest.pop(k) for k in CONFIG_OVERRIDES if k in rest and rest[k] is not None}
    for k in CONFIG_OVERRIDES:
        rest.pop(k, None)  # an override of None means "the configuration's value"
    structured = {"response_format": response_format_from(rest.pop("response_format", None)),
                  "tool_choice": tool_choice_from(rest.pop("tool_choice", None))}
    validate_generation_options(rest, field="", streaming=streaming)
    rest.update({k: v for k, v in structured.items() if v is not None})
    temperature = fields.get("temperature")
    if "do_sample" not in fields and isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        fields["do_sample"] = temperature > 0  # a temperature above 0 asks for sampling, 0 for greedy
    return fields, seed, rest


def resolve_call_settings(config: HuggingFaceConfig, overrides: Mapping[str, Any] | None = None, *,
                          streaming: bool = True, model_defaults: Mapping[str, Any] | None = None) -> CallSettings:
    """The settings one call runs with: ``config`` with ``overrides`` applied and validated.

    Overrides: ``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``, ``do_sample``,
    ``greedy``, ``seed``, ``stop_on_repetition``, ``response_format`` and ``tool_choice`` (see
    :mod:`midori_hf_nb.structured`) and any ``generate()`` option (e.g. ``repetition_penalty``,
    ``logits_processor``). ``model_defaults``: what the model's ``generation_config.json``
    supplies (:func:`model_generation_defaults`), used for the fields neither the call nor the
    user's configuration sets (``config.unset_fields``). Raises
    :class:`~midori_hf_nb.config.ConfigError` (a ``ValueError``) naming the field and what is
    allowed. ``streaming=False`` (a batch) allows beam search.
    """
    fields, seed, extra = split_overrides(overrides or {}, streaming=streaming)
    response_format = extra.pop("response_format", None)
    tool_choice = extra.pop("tool_choice", None)
    from_model = {name: value for name, value in (model_defaults or {}).items()
                  if name in config.unset_fields and name not in fields and name in MODEL_DEFAULT_FIELDS}
    origins = {name: "call" if name in fields else "model" if name in from_model
               else "default" if name in config.unset_fields else "agent" for name in MODEL_DEFAULT_FIELDS}
    changes = {**from_model, **fields}
    call_config = config.replace(**changes) if changes else config
    generation = GenerationSettings(
        max_new_tokens=call_config.max_new_tokens,
        do_sample=call_config.do_sample,
        temperature=call_config.temperature,
        top_p=call_config.top_p,
        top_k=call_config.top_k,
        seed=seed,
        extra={**call_config.generation_kwargs, **extra},
        num_threads=call_config.num_threads,
        decode_loop=call_config.decode_loop,
        repetition_guard=DEFAULT_REPETITION_GUARD if call_config.stop_on_repetition else None,
        constraint=response_format.constraint if response_format is not None else None,
    )
    return CallSettings(call_config, generation, response_format, tool_choice, origins)


def with_model_defaults(call: CallSettings, resolved: CallSettings) -> CallSettings:
    """``call`` with the configuration, generation values and origins of ``resolved`` (the same
    overrides resolved again once the model, and so its own generation defaults, is loaded),
    keeping ``call``'s grammar constraint (set by a ``tool_choice`` that forces a call)."""
    generation = dataclasses.replace(resolved.generation, constraint=call.generation.constraint)
    return dataclasses.replace(call, config=resolved.config, generation=generation, origins=resolved.origins)


def check_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Validate overrides without an agent (for a form or a magic before it calls one).

    Returns the overrides as an agent resolves them (``greedy`` and a temperature turned into
    ``do_sample``, ``None`` values dropped, ``response_format`` and ``tool_choice`` as their
    validated :class:`~midori_hf_nb.structured.ResponseFormat` and
    :class:`~midori_hf_nb.structured.ToolChoice`); raises :class:`~midori_hf_nb.config.ConfigError`
    naming the field and what is allowed.
    """
    fields, seed, extra = split_overrides(overrides)
    HuggingFaceConfig(model="check", **fields)  # validates each field with the configuration's own rules
    checked = dict(fields)
    if seed is not None:
        checked["seed"] = seed
    checked.update(extra)
    return checked


__all__ = ["apply_tool_choice", "CONFIG_OVERRIDES", "DEFAULT_REPETITION_GUARD", "CallSettings", "GenerationSettings",
           "RepetitionGuard", "check_overrides", "model_generation_defaults", "resolve_call_settings",
           "split_overrides", "with_model_defaults"]


def apply_tool_choice(call: CallSettings, schemas: list[dict[str, Any]] | None,
                      ) -> tuple[CallSettings, list[dict[str, Any]] | None]:
    """The settings and the offered schemas of a call with tools, after its ``tool_choice``.

    ``"none"`` offers no tools (none in the prompt, no call parsed); ``"required"`` or a name
    constrains the answer to one call; ``"auto"`` (or no choice) changes nothing. A
    ``response_format`` together with tools is refused unless ``tool_choice="none"``.
    """
    choice = call.tool_choice
    if schemas is None:
        if choice is not None and choice.mode != "none":
            raise StructuredOutputError(f"tool_choice={choice.describe()!r} needs tools: use invoke_with_tools, "
                                        "stream_with_tools or run_tools")
        return call, schemas
    if choice is not None and choice.mode == "none":
        return call, None
    if call.response_format is not None:
        raise StructuredOutputError("response_format cannot be combined with tools: give tool_choice='none' "
                                    "(answer in the format, no tools) or leave response_format unset")
    if choice is None or not choice.forces_call:
        return call, schemas
    if not schemas:
        raise StructuredOutputError(f"tool_choice={choice.describe()!r} needs at least one tool")
    constraint = tool_call_constraint(schemas, choice)
    return replace(call, generation=replace(call.generation, constraint=constraint)), schemas
