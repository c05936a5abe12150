"""What a tool call is: normalising parsed objects into ``{"name", "arguments", "id"}``, telling
call objects from ordinary JSON, typing ``TOOL_CALL: name(arg=value)`` arguments, and ids.

Every function here returns a reason instead of raising; values pass through
:mod:`.values` (bounded JSON / Python-literal reading and the JSON-data check).
"""

from __future__ import annotations

import ast
import re
import uuid
from typing import Any

from .limits import LimitError, WorkBudget
from .values import check_value, load_value, short, too_many_digits

#: Keys a bare call object may have (anything else makes it ordinary JSON, not a call).
CALL_KEYS = frozenset({"name", "arguments", "parameters", "id", "type", "function", "index"})

_LITERALS = {"true": True, "false": False, "null": None, "none": None}
_NUMBER_RE = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")
_ARGUMENT_NAME_RE = re.compile(r"[A-Za-z_]\w*")


def new_id() -> str:
    """A fresh call id (``call_`` and 12 hex digits)."""
    return "call_" + uuid.uuid4().hex[:12]


def unique_ids(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give every call an id, replacing missing and repeated ones (in place); returns ``calls``."""
    seen: set[str] = set()
    for call in calls:
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id or call_id in seen:
            call_id = new_id()
            call["id"] = call_id
        seen.add(call_id)
    return calls


def reason(exc: Exception) -> str:
    """The message of a JSON or limit error, without the position boilerplate."""
    return str(getattr(exc, "msg", exc))


def normalise_call(obj: Any, budget: WorkBudget | None = None, *,
                   new_ids: bool = True) -> tuple[dict[str, Any] | None, str | None]:
    """Turn one parsed object (``{"name", "arguments"|"parameters"}`` or the OpenAI ``function``
    form) into ``{"name", "arguments", "id"}`` or give a reason it is not one.

    ``arguments`` may also be a JSON string (the OpenAI wire format). The arguments must be plain
    JSON data within the bounds of :mod:`.limits`. A call without an id of its own gets a new one
    (with ``new_ids=False`` its id is ``None``, for :func:`unique_ids` to fill in later). Never
    raises (but for :class:`~.limits.WorkLimitReached` from ``budget``).
    """
    if not isinstance(obj, dict):
        return None, f"tool call is not an object: {short(obj)}"
    if isinstance(obj.get("function"), dict):  # OpenAI: {"type": "function", "function": {...}}
        inner = dict(obj["function"])
        inner.setdefault("id", obj.get("id"))
        obj = inner
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return None, f"tool call without a name: {short(obj)}"
    name = name.strip()
    args: Any = obj["arguments"] if "arguments" in obj else obj.get("parameters", {})
    if args is None:
        args = {}
    if isinstance(args, str):
        try:
            args = load_value(args, budget) if args.strip() else {}
        except LimitError as exc:
            return None, f"tool call {name!r}: arguments out of bounds ({exc}): {args[:80]!r}"
        except ValueError as exc:
            return None, f"tool call {name!r}: arguments are not valid JSON ({reason(exc)}): {args[:80]!r}"
    if not isinstance(args, dict):
        return None, f"tool call {name!r}: arguments must be an object, got {type(args).__name__}"
    try:
        args = check_value(args)
    except LimitError as exc:
        return None, f"tool call {name!r}: arguments out of bounds ({exc})"
    call_id = obj.get("id") if isinstance(obj.get("id"), str) and obj.get("id") else (new_id() if new_ids else None)
    return {"name": name, "arguments": args, "id": call_id}, None


def is_call_object(obj: Any) -> bool:
    """A bare object meant as a call: only call keys, and a ``function`` object or name plus arguments."""
    if not isinstance(obj, dict) or not obj or not set(obj) <= CALL_KEYS:
        return False
    if isinstance(obj.get("function"), dict):
        return True
    return "name" in obj and ("arguments" in obj or "parameters" in obj)


def calls_from_items(items: list[Any], budget: WorkBudget | None = None, *,
                     new_ids: bool = True) -> tuple[list[dict[str, Any]], list[str]]:
    """Normalise each item; the calls, and the reasons for the items that are not calls."""
    calls, errors = [], []
    for item in items:
        call, error = normalise_call(item, budget, new_ids=new_ids)
        if call:
            calls.append(call)
        else:
            errors.append(error or "unreadable tool call")
    return calls, errors


def calls_from_object(obj: Any, budget: WorkBudget | None = None, *,
                      new_ids: bool = True) -> tuple[list[dict[str, Any]], list[str], bool]:
    """Calls in one top-level JSON value. The flag says whether it was meant as a tool call:
    ``{"tool_calls": [...]}``, a call object, or a list of call objects."""
    if isinstance(obj, dict) and "tool_calls" in obj:
        items = obj["tool_calls"]
        if not isinstance(items, list):
            return [], [f"'tool_calls' is not a list but {type(items).__name__}"], True
        calls, errors = calls_from_items(items, budget, new_ids=new_ids)
        return calls, errors, True
    if is_call_object(obj):
        call, error = normalise_call(obj, budget, new_ids=new_ids)
        return ([call] if call else []), ([error] if error else []), True
    if isinstance(obj, list) and obj and all(is_call_object(item) for item in obj):
        calls, errors = calls_from_items(obj, budget, new_ids=new_ids)
        return calls, errors, True
    return [], [], False


# ---- TOOL_CALL: name(arg=value, ...)


def typed_value(raw: str, budget: WorkBudget | None = None) -> Any:
    """The value of one ``TOOL_CALL`` argument: a quoted string, ``true``/``false``/``null``/``none``,
    a number, a JSON (or Python literal) list or object, else the text itself.

    Raises :class:`~.limits.LimitError` for a number longer than
    :data:`~.limits.MAX_NUMBER_DIGITS` digits or a list/object out of bounds.
    """
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        body = raw[1:-1]
        if "\\" not in body:
            return body
        try:
            value = ast.literal_eval(raw)
        except Exception:  # a bad escape, a NUL byte, quotes inside: keep the text
            return body
        return value if isinstance(value, str) else body
    if raw.lower() in _LITERALS:
        return _LITERALS[raw.lower()]
    if _NUMBER_RE.fullmatch(raw):
        too_long = too_many_digits(raw)
        if too_long:
            raise LimitError(too_long)
        return float(raw) if any(c in raw for c in ".eE") else int(raw)
    if raw[:1] in "[{":
        try:
            return load_value(raw, budget)
        except LimitError:
            raise
        except ValueError:
            pass
    return raw


def tool_call_arguments(name: str, parts: list[str], budget: WorkBudget | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """The call ``name`` with arguments from ``parts`` (each ``key=value``), or the reason it is not one."""
    arguments: dict[str, Any] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not _ARGUMENT_NAME_RE.fullmatch(key):
            return None, f"TOOL_CALL {name}: argument {part.strip()[:80]!r} is not of the form name=value"
        try:
            arguments[key] = typed_value(value, budget)
        except LimitError as exc:
            return None, f"TOOL_CALL {name}: argument {key!r} out of bounds ({exc})"
    return {"name": name, "arguments": arguments}, None
