"""The chat panel's JSON transcript: writing it, and reading it back without trusting it.

A document made by :meth:`~midori_hf_nb.notebook.ChatPanel.to_json`::

    {"format": "midori-hf-nb/chat-panel", "version": 3, "model": "...", "session_id": "...",
     "settings": {"system_prompt": ..., "temperature": ..., "max_new_tokens": ..., "greedy": ...,
                  "top_p": ..., "top_k": ..., "seed": ..., "stop_on_repetition": ..., "enter_sends": ...},
     "memory": [{"role": ..., "content": ..., "timestamp": ..., "tool_calls": ..., "metadata": {...}}],
     "branches": [{"at": 2, "messages": [...], "branches": [...]}]}

Version 3 adds ``branches``: what followed a message before it was edited and sent again
(:mod:`.branches`). Version 2 keeps an answer's statistics under the names of
:class:`~midori_hf_nb.stats.ResponseStats` (``completion_tokens``, ``total_seconds``, ...; see
:mod:`.transcript`). Version 1 called two of them ``tokens`` and ``seconds``; a version 1 file
is read by giving those two their version 2 names, once, when it is read. Versions 1 and 2 have
no branches.

Reading (:func:`read_document`) trusts nothing: the text is bounded (:data:`MAX_CHARS`), numbers
must be finite and at most :data:`MAX_INT_DIGITS` digits long, nesting is bounded
(:data:`MAX_DEPTH`, with Python's own recursion limit as the last wall), the number of messages
is bounded (:data:`~.transcript.MAX_MESSAGES`), each message is checked with :func:`~.transcript.check_entry` and the settings with
:func:`~midori_hf_nb.settings.check_overrides`. Every refusal is a ``ValueError`` that names the
message and the field and says what is allowed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from ...protocol import MemoryEntryData
from ...settings import check_overrides
from ...stats import MAX_TEXT
from .branches import Branch, branches_from_json, branches_to_json
from .transcript import MAX_MESSAGES, TranscriptError, check_entry

#: The ``format`` field of a chat panel document.
JSON_FORMAT = "midori-hf-nb/chat-panel"
#: The version written; :data:`READABLE_VERSIONS` are read.
JSON_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
#: Settings keys of a document (and of :meth:`ChatPanel.settings`).
SETTINGS_KEYS = ("system_prompt", "temperature", "max_new_tokens", "greedy", "top_p", "top_k", "seed",
                 "stop_on_repetition", "enter_sends")
#: The generation settings among them (checked by :func:`~midori_hf_nb.settings.check_overrides`).
GENERATION_KEYS = ("temperature", "max_new_tokens", "greedy", "top_p", "top_k", "seed", "stop_on_repetition")
#: Bounds on what is read: characters of text, nesting of lists and objects, digits of an integer.
MAX_CHARS = 64 * 2**20
MAX_DEPTH = 64
MAX_INT_DIGITS = 20
#: Version 1 names of answer statistics -> their ResponseStats names (version 2).
V1_STATS_NAMES = {"tokens": "completion_tokens", "seconds": "total_seconds"}

_SOURCE = "ChatPanel.from_json"


@dataclass
class ChatDocument:
    """A chat panel document, read and checked (see :func:`read_document`)."""

    memory: list[MemoryEntryData]
    settings: dict[str, Any] = field(default_factory=dict)
    session_id: str | None = None
    model: str | None = None
    version: int = JSON_VERSION
    branches: list[Branch] = field(default_factory=list)


def jsonable(value: Any) -> Any:
    """``value`` reduced to JSON types (unknown objects become their ``str``)."""
    return json.loads(json.dumps(value, default=str))


def write_document(memory: list[MemoryEntryData], settings: dict[str, Any], *, model: str, session_id: str,
                   indent: int | None = 2, branches: list[Branch] | None = None) -> str:
    """The JSON text of a chat panel document (the current :data:`JSON_VERSION`)."""
    document = {
        "format": JSON_FORMAT,
        "version": JSON_VERSION,
        "model": model,
        "session_id": session_id,
        "settings": settings,
        "memory": [entry_to_json(e) for e in memory],
        "branches": branches_to_json(branches or [], entry_to_json),
    }
    return json.dumps(document, indent=indent, ensure_ascii=False, default=str)


def entry_to_json(entry: MemoryEntryData) -> dict[str, Any]:
    """A memory entry as a JSON-ready dict (the fields of :class:`~midori_hf_nb.MemoryEntryData`)."""
    return jsonable({"role": entry.role, "content": entry.content, "timestamp": entry.timestamp,
                     "tool_calls": entry.tool_calls, "metadata": entry.metadata})


# --------------------------------------------------------------------------- bounded JSON


def _refuse_constant(name: str) -> Any:
    raise TranscriptError(f"{_SOURCE}: the number {name} is not allowed: expected finite numbers")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise TranscriptError(f"{_SOURCE}: the number {text[:24]} is not allowed: expected finite numbers")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise TranscriptError(f"{_SOURCE}: the integer {text[:24]}... ({len(text)} digits) is not allowed: "
                              f"expected at most {MAX_INT_DIGITS} digits")
    return int(text)


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Refuse lists and objects nested more than ``limit`` levels deep (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise TranscriptError(f"{_SOURCE}: the document nests lists and objects more than {limit} levels "
                                  f"deep: not allowed")
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


#: Byte order marks of encodings other than UTF-8, and their names.
_OTHER_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
               (b"\xfe\xff", "UTF-16"))


def decode_utf8(data: bytes) -> str:
    """``data`` as UTF-8 text (a UTF-8 byte order mark dropped); a ``ValueError`` naming the
    encoding or the first invalid byte otherwise."""
    for bom, name in _OTHER_BOMS:
        if data.startswith(bom):
            raise TranscriptError(f"{_SOURCE}: the bytes are {name} text (they start with a {name} byte order mark): "
                                  "expected UTF-8; save the document as UTF-8")
    if len(data) >= 2 and (data[0] == 0) != (data[1] == 0):
        raise TranscriptError(f"{_SOURCE}: the bytes look like UTF-16 text (every other byte is 0): expected "
                              "UTF-8; save the document as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TranscriptError(f"{_SOURCE}: the bytes are not UTF-8 text: byte 0x{data[exc.start]:02x} at offset "
                              f"{exc.start} cannot be decoded; expected a UTF-8 JSON document") from None


def parse_json(text: Any) -> Any:
    """Parse JSON text within the bounds of this module; ``ValueError`` names what is refused."""
    if isinstance(text, (bytes, bytearray)):
        text = decode_utf8(bytes(text))
    if not isinstance(text, str):
        raise TranscriptError(f"{_SOURCE}: text={type(text).__name__} is not allowed: expected JSON text (str)")
    if len(text) > MAX_CHARS:
        raise TranscriptError(f"{_SOURCE}: {len(text)} characters are not allowed: expected at most {MAX_CHARS}")
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_int=_bounded_int,
                           parse_float=_finite_float)
    except RecursionError:  # the last wall: deeper than the interpreter's recursion limit
        raise TranscriptError(f"{_SOURCE}: the document nests lists and objects more than {MAX_DEPTH} levels "
                              "deep: not allowed") from None
    except json.JSONDecodeError as exc:
        raise TranscriptError(f"{_SOURCE}: the text is not valid JSON ({exc})") from exc
    if isinstance(value, (dict, list)):
        check_depth(value)
    return value


# --------------------------------------------------------------------------- reading


def check_settings(settings: Any, where: str) -> dict[str, Any]:
    """The settings of a document, checked: known keys only, ``system_prompt`` text, ``enter_sends``
    true or false, and temperature, max new tokens and greedy through
    :func:`~midori_hf_nb.settings.check_overrides` (the one settings path)."""
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise TranscriptError(f"{where}: settings={type(settings).__name__} is not allowed: expected an object")
    unknown = sorted(set(settings) - set(SETTINGS_KEYS))
    if unknown:
        raise TranscriptError(f"{where}: unknown setting(s) {', '.join(map(repr, unknown))}: expected "
                              f"{', '.join(SETTINGS_KEYS)}")
    prompt = settings.get("system_prompt")
    if prompt is not None and (not isinstance(prompt, str) or len(prompt) > MAX_TEXT):
        raise TranscriptError(f"{where}: settings.system_prompt is not allowed: expected text of at most "
                              f"{MAX_TEXT} characters")
    if settings.get("enter_sends") is not None and not isinstance(settings["enter_sends"], bool):
        raise TranscriptError(f"{where}: settings.enter_sends={settings['enter_sends']!r} is not allowed: "
                              "expected true or false")
    generation = {k: settings[k] for k in GENERATION_KEYS if k in settings}
    try:
        check_overrides(generation)
    except ValueError as exc:
        raise TranscriptError(f"{where}: settings: {exc}") from exc
    return {k: v for k, v in settings.items() if v is not None}


def upgrade_v1_item(item: dict[str, Any]) -> dict[str, Any]:
    """A version 1 message in version 2 form: an answer's ``tokens`` and ``seconds`` under their
    ResponseStats names (everything else is the same in both versions)."""
    metadata = item.get("metadata")
    if item.get("role") != "assistant" or not isinstance(metadata, dict):
        return item
    upgraded = {V1_STATS_NAMES.get(key, key): value for key, value in metadata.items()}
    return {**item, "metadata": upgraded}


def read_item(item: Any, where: str) -> MemoryEntryData:
    """One message of a document's ``memory`` list, checked (see :func:`~.transcript.check_entry`)."""
    if not isinstance(item, dict):
        raise TranscriptError(f"{where} is {type(item).__name__}: expected an object with 'role' and 'content'")
    unknown = sorted(set(item) - {"role", "content", "timestamp", "tool_calls", "metadata"})
    if unknown:
        raise TranscriptError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}: expected role, "
                              "content, timestamp, tool_calls, metadata")
    entry = MemoryEntryData(role=item.get("role"), content=item.get("content"), timestamp=item.get("timestamp"),
                            tool_calls=item.get("tool_calls"), metadata=item.get("metadata"))
    return check_entry(entry, where)


def entry_from_json(item: Any, index: int) -> MemoryEntryData:
    """Message ``index`` of a current-version document, checked (:func:`read_item`)."""
    return read_item(item, f"{_SOURCE}: transcript message {index}")


def read_document(text: Any) -> ChatDocument:
    """Read a document written by :func:`write_document` (version 2) or by version 1, checking every field.

    Raises ``ValueError`` (:class:`~.transcript.TranscriptError`) naming the message and field.
    """
    document = parse_json(text)
    if not isinstance(document, dict) or document.get("format") != JSON_FORMAT:
        raise TranscriptError(f"{_SOURCE}: expected a document with format {JSON_FORMAT!r} (made by ChatPanel.to_json)")
    version = document.get("version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise TranscriptError(f"{_SOURCE}: version {version!r} is not supported: expected one of "
                              f"{', '.join(map(str, READABLE_VERSIONS))}")
    items = document.get("memory")
    if version < 3 and "branches" in document:
        raise TranscriptError(f"{_SOURCE}: 'branches' is not allowed in a version {version} document")
    if not isinstance(items, list):
        raise TranscriptError(f"{_SOURCE}: 'memory' must be a list of messages")
    if len(items) > MAX_MESSAGES:
        raise TranscriptError(f"{_SOURCE}: {len(items)} messages are not allowed: expected at most {MAX_MESSAGES}")
    if version == 1:
        items = [upgrade_v1_item(item) if isinstance(item, dict) else item for item in items]
    memory = [read_item(item, f"{_SOURCE}: transcript message {i}") for i, item in enumerate(items)]
    session_id, model = document.get("session_id"), document.get("model")
    for name, value in (("session_id", session_id), ("model", model)):
        if value is not None and (not isinstance(value, str) or len(value) > 10_000):
            raise TranscriptError(f"{_SOURCE}: {name}={value!r:.80} is not allowed: expected text or null")
    branches = branches_from_json(document.get("branches"), read_item, length=len(memory), where=_SOURCE,
                                  budget=MAX_MESSAGES)
    return ChatDocument(memory=memory, settings=check_settings(document.get("settings"), _SOURCE),
                        session_id=session_id, model=model, version=version, branches=branches)


__all__ = [
    "JSON_FORMAT",
    "JSON_VERSION",
    "MAX_CHARS",
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "READABLE_VERSIONS",
    "GENERATION_KEYS",
    "SETTINGS_KEYS",
    "V1_STATS_NAMES",
    "ChatDocument",
    "check_depth",
    "check_settings",
    "decode_utf8",
    "entry_from_json",
    "entry_to_json",
    "jsonable",
    "parse_json",
    "read_document",
    "read_item",
    "upgrade_v1_item",
    "write_document",
]
