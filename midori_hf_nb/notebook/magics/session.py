"""The state behind the magics (agent, conversation, defaults) and the checking of their settings.

Every setting given to a magic goes through :func:`midori_hf_nb.settings.check_overrides`, the
one settings path (the greedy and temperature rules live there alone); ``%midori load`` also
has the engine check the names of ``generate()`` options before anything loads, and a trial
token with the new options before the new model replaces the session's. A setting that is not
allowed is refused at once with a ``UsageError`` naming it and what is allowed, and is never
kept in the session.
"""

from __future__ import annotations

import argparse
from typing import Any

from IPython.core.error import UsageError

from ...config import ConfigError, HuggingFaceConfig
from ...log.record import new_id
from ...settings import CONFIG_OVERRIDES, check_overrides
from ..agent_calls import is_local_agent, require_agent
from ..conversation import Conversation
from ..streaming import DEFAULT_THROTTLE, DisplayStats
from .parsers import parse_set

#: Configuration fields ``--set`` may change besides the decoding settings (which go through
#: :func:`~midori_hf_nb.settings.check_overrides`); any other key is a ``generate()`` option.
SET_CONFIG_FIELDS = tuple(name for name in HuggingFaceConfig.field_names()
                          if name not in ("model", "generation_kwargs", *CONFIG_OVERRIDES))


def _refuse(where: str, exc: BaseException) -> UsageError:
    return UsageError(f"{where}: {exc}")


def schema_variable(name: str | None, namespace: dict[str, Any] | None) -> Any:
    """The ``response_format`` of ``--schema NAME``: the notebook variable ``NAME`` (or ``"json"``
    for the word json when no variable has that name); None without ``--schema``."""
    if name is None:
        return None
    if namespace is not None and name in namespace:
        return namespace[name]
    if name == "json":
        return "json"
    raise UsageError(f"%%midori: --schema {name!r} names no variable in the notebook: expected a variable holding "
                     "a pydantic model class, a JSON schema dict or a Python type (or --schema json)")


def message_overrides(args: argparse.Namespace, defaults: dict[str, Any],
                      namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    """The per-call settings of one message: the session's ``defaults``, then the cell's options
    (``-n``, ``-t``/``-g``, ``--seed``, ``--schema`` read from ``namespace``) checked through
    :func:`~midori_hf_nb.settings.check_overrides`."""
    given = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
             "greedy": True if args.greedy else None, "seed": args.seed,
             "top_logprobs": 5 if getattr(args, "probs", None) else None}
    schema = schema_variable(getattr(args, "schema", None), namespace)
    try:
        checked = check_overrides(given)
        if schema is not None:
            checked.update(check_overrides({"response_format": schema}))
    except ConfigError as exc:
        where = f"%%midori --schema {args.schema}" if schema is not None and "response_format" in str(exc) \
            else "%%midori"
        raise _refuse(where, exc) from None
    return {**defaults, **checked}


def _check_generate_options(options: dict[str, Any]) -> None:
    """Have the engine refuse ``generate()`` options it does not know (before anything loads)."""
    from ...engine.decode_path import check_generation_kwargs

    try:
        check_generation_kwargs(options)
    except ValueError as exc:
        given = ", ".join(f"{k}={v!r}" for k, v in options.items())
        raise UsageError(f"%midori load: --set {given} is not allowed: {exc}; configuration fields: "
                         f"{', '.join(SET_CONFIG_FIELDS)}") from None


def load_config(base: HuggingFaceConfig, args: argparse.Namespace) -> tuple[HuggingFaceConfig, dict[str, Any]]:
    """The configuration ``%midori load`` asks for (``base`` with the options applied, validated)
    and the ``generate()`` options its ``--set`` added (empty when none).

    Raises ``UsageError`` naming a setting that is not allowed, before anything loads.
    """
    fields: dict[str, Any] = {}
    for name, value in (("model", args.model), ("device", args.device), ("torch_dtype", args.dtype),
                        ("context_window", args.context_window)):
        if value is not None:
            fields[name] = value
    if args.load_in_8bit or args.load_in_4bit or args.no_quantization:
        fields["load_in_8bit"], fields["load_in_4bit"] = bool(args.load_in_8bit), bool(args.load_in_4bit)
        if args.no_quantization:
            fields["quantize_weights"] = None
    if args.trust_remote_code:
        fields["trust_remote_code"] = True
    if args.no_progress:
        fields["progress"] = False
    options = parse_set(args.set)
    fields.update({key: options.pop(key) for key in list(options) if key in SET_CONFIG_FIELDS})
    decoding = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                "greedy": True if args.greedy else None, "top_p": args.top_p, "top_k": args.top_k, **options}
    try:
        checked = check_overrides(decoding)
    except ConfigError as exc:
        raise _refuse("%midori load", exc) from None
    if "seed" in checked:
        raise UsageError("%midori load: seed is not a setting of the model: give it per message "
                         "(%%midori --seed N)")
    fields.update({key: checked.pop(key) for key in CONFIG_OVERRIDES if key in checked})
    if checked:
        _check_generate_options(checked)
    try:
        config = base.replace(**fields, generation_kwargs={**base.generation_kwargs, **checked})
    except ConfigError as exc:
        raise _refuse("%midori load", exc) from None
    return config, checked


class MidoriSession:
    """The state behind the magics: the agent, the conversation and the defaults.

    Attributes:
        agent: the session's agent (any Midori protocol agent), or None before first use.
            Assigning one (or ``%midori use VAR``) makes it the session's without handing it
            over: the session unloads only agents it created itself.
        conversation: the :class:`~midori_hf_nb.notebook.Conversation` sent as memory.
        system: the default system prompt ('' lets the model's template decide).
        overrides: extra per-call generation overrides for every message (e.g.
            ``{"logits_processor": [...]}``); options given in a cell win.
        throttle: default seconds between display updates.
        last_response: the most recent response.
        last_display: the :class:`~midori_hf_nb.notebook.streaming.DisplayStats` of the most
            recent streamed message (None before one, or after ``--no-stream``).
        conversation_id: the id of the conversation in the call log (:mod:`midori_hf_nb.log`);
            ``%midori reset`` starts a new one.
    """

    def __init__(self) -> None:
        self._agent: Any = None
        self.owns_agent = False
        self.conversation = Conversation(session_id="notebook")
        self.system = ""
        self.overrides: dict[str, Any] = {}
        self.throttle = DEFAULT_THROTTLE
        self.last_response: Any = None
        self.last_display: DisplayStats | None = None
        self.conversation_id = new_id()

    @property
    def agent(self) -> Any:
        """The session's agent (None before first use)."""
        return self._agent

    @agent.setter
    def agent(self, agent: Any) -> None:
        self.set_agent(agent, owned=False)

    def set_agent(self, agent: Any, *, owned: bool) -> None:
        """Make ``agent`` the session's; ``owned``: the session created it (and unloads it)."""
        if agent is not None:
            require_agent(agent, "MidoriSession.agent")
        self._agent = agent
        self.owns_agent = owned and agent is not None

    def base_config(self) -> HuggingFaceConfig:
        """The local agent's configuration, or the one ``%midori load`` starts from (the offline default)."""
        from ...sources import DEFAULT_MODEL

        return self._agent.config if is_local_agent(self._agent) else HuggingFaceConfig(model=DEFAULT_MODEL)

    def ensure_agent(self) -> Any:
        """The session's agent, creating one on the offline default model on first use."""
        if self._agent is None:
            from ...agent import HuggingFaceLocalAgent
            from ...sources import DEFAULT_MODEL

            self.set_agent(HuggingFaceLocalAgent(model=DEFAULT_MODEL), owned=True)
            print(f"Using the offline default model ({DEFAULT_MODEL}); `%midori load --model ...` picks another.")
        return self._agent

    def release(self) -> None:
        """Unload the agent's model if the session created the agent and it is loaded."""
        from ..aio import run

        agent = self._agent
        if self.owns_agent and is_local_agent(agent) and agent.is_loaded:
            run(agent.unload_model())


__all__ = ["MidoriSession", "SET_CONFIG_FIELDS", "load_config", "message_overrides"]
