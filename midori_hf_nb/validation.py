"""Checks at the boundary: a payload, its memory and its reasoning effort, and per-call options.

Everything a caller hands to the agent is checked here before a model is touched, so a bad
value fails at once with an error that names the field, the value and its type, and what is
allowed, instead of a Jinja, tokenizer or torch error from deep inside a generation.

Errors:
    :class:`PayloadError` (a ``ValueError``) for the payload and its fields. A wrong type raises
    it too, not ``TypeError``, like :class:`~midori_hf_nb.ConfigError` does for settings, so a
    caller catches every refused input with ``except ValueError``.
    :class:`~midori_hf_nb.ConfigError` (a ``ValueError``) for per-call generation options
    (:func:`validate_call_options`, :func:`validate_seed`).

Rules for :func:`validate_payload` (the returned payload is a normalised copy; the caller's
object is not changed):

========================  ==========================================================================
field                     allowed
========================  ==========================================================================
the payload itself        an :class:`AgentPayload` (not None, a dict or a string: use ``make_payload``)
``user_message``          a ``str`` (may be empty); bytes must be decoded by the caller
``system_context``        a ``str``; ``None`` counts as ``""``
``thinking_blob``         a ``str``; ``None`` counts as ``""``
``user_profile``          a ``dict`` with ``str`` keys (values are written with ``str()``); ``None`` counts as ``{}``
``tools_available``       a ``list`` (or tuple) of ``str``; ``None`` counts as ``[]``
``session_id``            a ``str`` or ``None``
``metadata``              a ``dict`` or ``None``
``reasoning_effort``      ``None``, a :class:`ReasoningEffort`, a level name (``"high"``) or a dict
                          ``{"effort": ..., "generate_summary": ..., "summary": ...}``; becomes a
                          :class:`ReasoningEffort`
``memory``                ``None`` or a ``list`` (or tuple) of entries; an entry is a
                          :class:`MemoryEntryData` or a dict with its field names (``role`` and
                          ``content`` required), which becomes one
memory entry ``role``     a name of letters, digits, ``_`` and ``-`` starting with a letter, at most
                          32 characters (``user``, ``assistant``, ``system``, ``tool``, ...): no
                          markup such as ``<|im_start|>``, no spaces or newlines
memory entry ``content``  a ``str``; ``None`` only for an entry with ``tool_calls`` (counts as ``""``)
memory ``tool_calls``     ``None`` or a list of dicts, each with a non-empty ``str`` ``name`` and
                          ``arguments`` that is a dict, a JSON string or absent/``None``
memory ``timestamp``      a number or ``None``; ``metadata`` a dict or ``None``
tool entry ``metadata``   ``name`` and ``tool_call_id``, when present, a ``str`` of 1 to 200 characters
========================  ==========================================================================

Text that reaches the tokenizer (message, system context, thinking blob, profile, memory) must be
encodable as UTF-8: a lone surrogate such as ``"\\ud800"`` (from a broken JSON escape, or a
command-line argument decoded with ``surrogateescape``) is refused with its position, rather than
replaced silently; :func:`replace_lone_surrogates` turns such text into valid text with U+FFFD
where the caller wants that.

Sizes are not bounded here: a long message or a long memory is the context window's business
(:func:`midori_hf_nb.prompting.build_prompt` drops the oldest memory and says when the message
alone does not fit).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, get_args

from .config import ConfigError, HuggingFaceConfig, refusal_message, validate_generation_options, validate_seed
from .protocol import AgentPayload, EffortLevel, MemoryEntryData, ReasoningEffort, SummaryMode

#: Reasoning effort levels and summary modes, as in the protocol.
EFFORT_LEVELS: tuple[str, ...] = get_args(EffortLevel)
SUMMARY_MODES: tuple[str, ...] = get_args(SummaryMode)

_ROLE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
_MEMORY_FIELDS = tuple(f.name for f in dataclasses.fields(MemoryEntryData)) if dataclasses.is_dataclass(
    MemoryEntryData) else ("role", "content", "timestamp", "tool_calls", "metadata")
_REASONING_FIELDS = ("effort", "generate_summary", "summary")


class PayloadError(ValueError):
    """A payload or one of its fields is not acceptable.

    The message reads ``FIELD=VALUE is not allowed: WHAT IS ALLOWED (got TYPE)``. The attributes
    ``field`` (e.g. ``"AgentPayload.memory[3].role"``) and ``value`` say the same for code.
    """

    field: str | None = None
    value: Any = None


def _refuse(field: str, value: Any, allowed: str, error: type[ValueError] = PayloadError) -> None:
    exc = error(refusal_message(field, value, allowed))
    if isinstance(exc, PayloadError):
        exc.field, exc.value = field, value
    raise exc


def replace_lone_surrogates(text: str) -> str:
    """``text`` with every lone surrogate (``"\\ud800"`` ...) replaced by U+FFFD; valid pairs are joined."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _check_text(field: str, value: Any, allowed: str = "expected a str") -> str:
    """``value`` if it is a str encodable as UTF-8, else a :class:`PayloadError` naming ``field``."""
    if not isinstance(value, str):
        if isinstance(value, (bytes, bytearray)):
            allowed += " (decode bytes first, e.g. value.decode('utf-8'))"
        _refuse(field, value, allowed)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            _refuse(field, value,
                    f"text must be valid Unicode, but it holds a lone surrogate U+{ord(value[exc.start]):04X} at "
                    f"index {exc.start} (a broken escape or surrogateescape-decoded bytes); fix the text or pass "
                    "midori_hf_nb.validation.replace_lone_surrogates(text) to turn such characters into U+FFFD")
    return value


def _optional_text(field: str, value: Any) -> str:
    return "" if value is None else _check_text(field, value, "expected a str (or None for none)")


def validate_reasoning_effort(value: Any, field: str = "reasoning_effort", *,
                              error: type[ValueError] = PayloadError) -> ReasoningEffort | None:
    """``value`` as a :class:`ReasoningEffort` (or ``None``).

    Accepts ``None``, a :class:`ReasoningEffort`, a level name (``"none"``, ``"minimal"``,
    ``"low"``, ``"medium"``, ``"high"``) or a dict with the keys ``effort``, ``generate_summary``
    and ``summary``. Summaries are ``None``, ``"auto"``, ``"concise"`` or ``"detailed"``.

    Raises:
        PayloadError (or ``error``): naming ``field``, the value and its type, and what is allowed.
    """
    levels = ", ".join(map(repr, EFFORT_LEVELS))
    modes = "None or one of " + ", ".join(map(repr, SUMMARY_MODES))
    if value is None:
        return None
    if isinstance(value, str):
        if value not in EFFORT_LEVELS:
            _refuse(field, value, f"expected a level name, one of {levels}", error)
        return ReasoningEffort(effort=value)  # type: ignore[arg-type]
    if isinstance(value, ReasoningEffort):
        items = {name: getattr(value, name) for name in _REASONING_FIELDS}
        result = value
    elif isinstance(value, Mapping):
        unknown = [k for k in value if k not in _REASONING_FIELDS]
        if unknown:
            _refuse(f"{field}[{unknown[0]!r}]", value[unknown[0]],
                    "unknown key; expected the keys " + ", ".join(map(repr, _REASONING_FIELDS)), error)
        items = {"effort": "low", "generate_summary": None, "summary": None, **value}
        result = None
    else:
        _refuse(field, value, f"expected None, a ReasoningEffort, a level name ({levels}) or a dict "
                              "with 'effort', 'generate_summary' and 'summary'", error)
    if items["effort"] not in EFFORT_LEVELS or not isinstance(items["effort"], str):
        _refuse(f"{field}.effort", items["effort"], f"expected one of {levels}", error)
    for name in ("generate_summary", "summary"):
        if items[name] is not None and (not isinstance(items[name], str) or items[name] not in SUMMARY_MODES):
            _refuse(f"{field}.{name}", items[name], f"expected {modes}", error)
    return result if result is not None else ReasoningEffort(**items)


def _check_tool_calls(field: str, calls: Any) -> None:
    if calls is None:
        return
    if not isinstance(calls, (list, tuple)):
        _refuse(field, calls, "expected None or a list of tool-call dicts with 'name' and 'arguments'")
    for i, call in enumerate(calls):
        where = f"{field}[{i}]"
        if not isinstance(call, Mapping):
            _refuse(where, call, "expected a dict with 'name' (a str) and 'arguments' (a dict)")
        name = call.get("name")
        if not isinstance(name, str) or not name.strip():
            _refuse(f"{where}['name']", name, "expected the tool's name, a non-empty str")
        arguments = call.get("arguments")
        if arguments is not None and not isinstance(arguments, (Mapping, str)):
            _refuse(f"{where}['arguments']", arguments, "expected a dict of arguments, a JSON string or None")


def validate_memory_entry(entry: Any, field: str = "memory[0]") -> MemoryEntryData:
    """One memory entry as a checked :class:`MemoryEntryData` (a dict with its field names is converted).

    Raises:
        PayloadError: naming the entry's field (e.g. ``memory[3].role``), its value and type, and
        what is allowed (see the table in this module's docstring).
    """
    if isinstance(entry, Mapping):
        unknown = [k for k in entry if k not in _MEMORY_FIELDS]
        if unknown:
            _refuse(f"{field}[{unknown[0]!r}]", entry[unknown[0]],
                    "unknown key of a memory entry; expected the keys " + ", ".join(map(repr, _MEMORY_FIELDS))
                    + " (put anything else under 'metadata')")
        for required in ("role", "content"):
            if required not in entry:
                _refuse(field, entry, f"a memory entry dict needs {required!r}; expected a MemoryEntryData or a "
                                      "dict with 'role' and 'content'")
        values = dict(entry)
    elif isinstance(entry, MemoryEntryData):
        values = {name: getattr(entry, name, None) for name in _MEMORY_FIELDS}
    else:
        _refuse(field, entry, "expected a MemoryEntryData or a dict with 'role' and 'content'")
    role = values["role"]
    if not isinstance(role, str) or not _ROLE.fullmatch(role):
        _refuse(f"{field}.role", role,
                "expected a role name such as 'user', 'assistant', 'system' or 'tool' (letters, digits, '_' "
                "and '-', starting with a letter, at most 32 characters; no markup, spaces or newlines)")
    _check_tool_calls(f"{field}.tool_calls", values.get("tool_calls"))
    content = values["content"]
    if content is None and values.get("tool_calls"):
        content = ""
    else:
        _check_text(f"{field}.content", content,
                    "expected a str (None only for an entry that carries tool_calls)")
    timestamp = values.get("timestamp")
    if timestamp is not None and (isinstance(timestamp, bool) or not isinstance(timestamp, (int, float))):
        _refuse(f"{field}.timestamp", timestamp, "expected seconds since the epoch (a number) or None")
    metadata = values.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        _refuse(f"{field}.metadata", metadata, "expected a dict or None")
    if metadata and role in ("tool", "function"):
        for key in ("name", "tool_call_id"):
            value = metadata.get(key)
            if value is not None and (not isinstance(value, str) or not value or len(value) > 200):
                _refuse(f"{field}.metadata[{key!r}]", value,
                        "expected the tool's name (a str of 1 to 200 characters) or None" if key == "name"
                        else "expected the call's id (a str of 1 to 200 characters) or None")
    if isinstance(entry, MemoryEntryData) and content is entry.content:
        return entry
    return MemoryEntryData(role=role, content=content, timestamp=timestamp, tool_calls=values.get("tool_calls"),
                           metadata=metadata)


def validate_memory(memory: Any, field: str = "AgentPayload.memory") -> list[MemoryEntryData] | None:
    """``memory`` as a list of checked :class:`MemoryEntryData` (``None`` stays ``None``).

    Raises:
        PayloadError: when ``memory`` is not a list or tuple, or an entry is refused by
        :func:`validate_memory_entry` (the message names the entry's index).
    """
    if memory is None:
        return None
    if not isinstance(memory, (list, tuple)):
        _refuse(field, memory, "expected None or a list of MemoryEntryData (or dicts with 'role' and 'content')")
    return [validate_memory_entry(entry, f"{field}[{i}]") for i, entry in enumerate(memory)]


def validate_payload(payload: Any) -> AgentPayload:
    """Check ``payload`` at the boundary and return it normalised (see the table in this module's docstring).

    Returns the payload itself when nothing needed normalising, otherwise a copy with ``None``
    text fields as ``""``, memory dicts as :class:`MemoryEntryData` and ``reasoning_effort`` as a
    :class:`ReasoningEffort`. Runs in time linear in the size of the payload.

    Raises:
        PayloadError: naming the field (``AgentPayload.user_message``, ``AgentPayload.memory[3].role``,
        ...), the value and its type, and what is allowed.
    """
    if not isinstance(payload, AgentPayload):
        hint = ("; build one with midori_hf_nb.make_payload(message, system_context, ...)"
                if isinstance(payload, (str, Mapping)) or payload is None else "")
        _refuse("payload", payload, "expected an AgentPayload" + hint)
    changes: dict[str, Any] = {}
    _check_text("AgentPayload.user_message", payload.user_message,
                "expected the user's message as a str")
    for name in ("system_context", "thinking_blob"):
        value = getattr(payload, name)
        if _optional_text(f"AgentPayload.{name}", value) is not value:
            changes[name] = ""
    profile = payload.user_profile
    if profile is None:
        changes["user_profile"] = {}
    elif not isinstance(profile, Mapping):
        _refuse("AgentPayload.user_profile", profile,
                "expected a dict of profile facts, e.g. {'name': 'Ada'} (or None or {} for none)")
    else:
        for key, value in profile.items():
            _check_text("AgentPayload.user_profile key", key, "expected the profile's keys to be str")
            if isinstance(value, str):
                _check_text(f"AgentPayload.user_profile[{key!r}]", value)
    tools = payload.tools_available
    if tools is None:
        changes["tools_available"] = []
    elif not isinstance(tools, (list, tuple)):
        _refuse("AgentPayload.tools_available", tools, "expected a list of tool names (str), e.g. ['search']")
    else:
        for i, name in enumerate(tools):
            if not isinstance(name, str):
                _refuse(f"AgentPayload.tools_available[{i}]", name, "expected a tool name (str)")
    if payload.session_id is not None and not isinstance(payload.session_id, str):
        _refuse("AgentPayload.session_id", payload.session_id, "expected a str (or None)")
    if payload.metadata is not None and not isinstance(payload.metadata, Mapping):
        _refuse("AgentPayload.metadata", payload.metadata, "expected a dict or None")
    effort = validate_reasoning_effort(payload.reasoning_effort, "AgentPayload.reasoning_effort")
    if effort is not payload.reasoning_effort:
        changes["reasoning_effort"] = effort
    memory = validate_memory(payload.memory)
    if memory is not None and (not isinstance(payload.memory, list)
                               or any(a is not b for a, b in zip(memory, payload.memory))):
        changes["memory"] = memory
    if not changes:
        return payload
    if dataclasses.is_dataclass(payload):
        return dataclasses.replace(payload, **changes)
    copy = type(payload).__new__(type(payload))  # pragma: no cover - a non-dataclass base package
    copy.__dict__.update(vars(payload), **changes)
    return copy


def validate_payloads(payloads: Any, field: str = "payloads") -> list[AgentPayload]:
    """Each of ``payloads`` through :func:`validate_payload`; an error names the payload's index.

    Raises:
        PayloadError: ``payloads`` is not a list or tuple, or ``payloads[i]`` is refused (the message
        starts with ``payloads[i]:`` and then names the field as :func:`validate_payload` does).
    """
    if not isinstance(payloads, (list, tuple)):
        _refuse(field, payloads, "expected a list of AgentPayload")
    checked = []
    for i, payload in enumerate(payloads):
        try:
            checked.append(validate_payload(payload))
        except PayloadError as exc:
            error = PayloadError(f"{field}[{i}]: {exc}")
            inner = "" if exc.field == "payload" else f".{exc.field}"
            error.field, error.value = f"{field}[{i}]{inner}", exc.value
            raise error from None
    return checked


def validate_call_options(options: Mapping[str, Any], *, streaming: bool) -> dict[str, Any]:
    """Check the per-call options of ``invoke`` / ``stream`` / ``generate_batch`` (``**overrides``).

    Checks ``seed`` (:func:`validate_seed`), ``greedy`` (true or false) and the ``generate()``
    options among them (:func:`midori_hf_nb.config.validate_generation_options`: with
    ``streaming=True`` beam search is refused, since the answer streams token by token). The
    configuration fields among them (``max_new_tokens``, ``temperature``, ...) are checked by
    :meth:`HuggingFaceConfig.replace` where the agent applies them. Returns a copy of ``options``.

    Raises:
        ConfigError: naming the option, its value and type, and what is allowed.
    """
    if not isinstance(options, Mapping):
        _refuse("options", options, "expected a dict of per-call options", ConfigError)
    options = dict(options)
    validate_seed(options.get("seed"), "seed")
    greedy = options.get("greedy")
    if greedy is not None and not isinstance(greedy, bool):
        _refuse("greedy", greedy, "expected true or false", ConfigError)
    fields = set(HuggingFaceConfig.field_names()) | {"seed", "greedy"}
    validate_generation_options({k: v for k, v in options.items() if k not in fields}, field="",
                                streaming=streaming)
    return options


__all__ = [
    "EFFORT_LEVELS",
    "SUMMARY_MODES",
    "ConfigError",
    "PayloadError",
    "replace_lone_surrogates",
    "validate_call_options",
    "validate_generation_options",
    "validate_memory",
    "validate_memory_entry",
    "validate_payload",
    "validate_payloads",
    "validate_reasoning_effort",
    "validate_seed",
]
