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
* every configuration field is validated by :class:`~midori_hf_nb.config.HuggingFaceConfig`;
* ``response_format`` and ``tool_choice`` are validated by :mod:`midori_hf_nb.structured` (the
  schema compiled once, here) and travel as typed fields of :class:`CallSettings`;
  anything else is a ``generate()`` option (checked against ``GenerationConfig`` by the engine).

Nothing here imports torch or transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .config import ConfigError, HuggingFaceConfig, validate_generation_options, validate_seed
from .structured.formats import ResponseFormat, ToolChoice, response_format_from, tool_choice_from

#: Per-call overrides that change a configuration field.
CONFIG_OVERRIDES = ("max_new_tokens", "temperature", "top_p", "top_k", "do_sample")
#: Per-call overrides of structured output (validated by :mod:`midori_hf_nb.structured`).
STRUCTURED_OVERRIDES = ("response_format", "tool_choice")


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
    #: a compiled grammar (:class:`~midori_hf_nb.structured.GrammarConstraint`) the engine runs as a
    #: logits processor: from ``response_format``, or a forced tool call; None: unconstrained
    constraint: Any = None

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

    @property
    def greedy(self) -> bool:
        return self.generation.greedy


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
                          streaming: bool = True) -> CallSettings:
    """The settings one call runs with: ``config`` with ``overrides`` applied and validated.

    Overrides: ``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``, ``do_sample``,
    ``greedy``, ``seed``, ``response_format`` and ``tool_choice`` (see
    :mod:`midori_hf_nb.structured`) and any ``generate()`` option (e.g. ``repetition_penalty``,
    ``logits_processor``). Raises :class:`~midori_hf_nb.config.ConfigError` (a ``ValueError``)
    naming the field and what is allowed. ``streaming=False`` (a batch) allows beam search.
    """
    fields, seed, extra = split_overrides(overrides or {}, streaming=streaming)
    response_format = extra.pop("response_format", None)
    tool_choice = extra.pop("tool_choice", None)
    call_config = config.replace(**fields) if fields else config
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
        constraint=response_format.constraint if response_format is not None else None,
    )
    return CallSettings(call_config, generation, response_format, tool_choice)


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


__all__ = ["CONFIG_OVERRIDES", "STRUCTURED_OVERRIDES", "CallSettings", "GenerationSettings",
           "check_overrides", "resolve_call_settings", "split_overrides"]
