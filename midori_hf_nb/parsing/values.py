"""Reading call text as JSON (or, failing that, a Python literal) within the bounds of
:mod:`.limits`, and checking that what comes out is plain JSON data.

Text is measured with the shared scanner *before* it reaches :mod:`json` or :mod:`ast` (both
recurse, and Python refuses long integers), and the value that comes back is walked without
recursion: objects with string keys, arrays (Python tuples become lists), strings, numbers,
booleans and ``None`` (no NaN or Infinity, which JSON does not have), nested at most :data:`~.limits.MAX_DEPTH` deep, integers of at most
:data:`~.limits.MAX_NUMBER_DIGITS` digits. Anything else (a set, bytes, a complex number, a
non-string key) is a :class:`~.limits.LimitError`.
"""

from __future__ import annotations

import ast
import json
import math
import reprlib
from typing import Any

from .limits import (
    MAX_DEPTH,
    MAX_INPUT_CHARS,
    MAX_NUMBER_DIGITS,
    LimitError,
    WorkBudget,
)
from .scan import measure

_INT_BOUND = 10**MAX_NUMBER_DIGITS
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 60, 60
_SHORT.maxdict = _SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxset = 4


def short(obj: Any, limit: int = 80) -> str:
    """A short ``repr`` of ``obj`` for error messages, at a cost bounded whatever its size."""
    try:
        return _SHORT.repr(obj)[:limit]
    except Exception:  # an object whose repr fails, or an int too long to print
        return f"<{type(obj).__name__}>"


def too_many_digits(literal: str) -> str | None:
    """Why the number ``literal`` is too long (``None`` when it is within the bound)."""
    if len(literal) <= MAX_NUMBER_DIGITS:
        return None
    digits = sum(1 for c in literal if c.isdigit())
    if digits > MAX_NUMBER_DIGITS:
        return f"a number has {digits} digits (limit {MAX_NUMBER_DIGITS})"
    return None


def _bounded_int(literal: str) -> int:
    reason = too_many_digits(literal)
    if reason:
        raise LimitError(reason)
    return int(literal)


def _refuse_constant(name: str) -> Any:
    raise LimitError(f"{name} is not plain JSON")


_DECODER = json.JSONDecoder(parse_int=_bounded_int, parse_constant=_refuse_constant)


def load_value(raw: str, budget: WorkBudget | None = None, depth: int | None = None) -> Any:
    """Read ``raw`` as JSON, or else as a Python literal (single quotes, ``True``/``None``).

    ``depth``, when the caller's scan already knows how deeply ``raw`` nests, spares measuring it
    again before :mod:`json` reads it; the Python-literal path always measures it strictly.
    Raises :class:`json.JSONDecodeError` (the JSON reason) when neither reads it, and
    :class:`~.limits.LimitError` when a bound is passed; never anything else but
    :class:`~.limits.WorkLimitReached` (from ``budget``).
    """
    if budget is None:
        budget = WorkBudget(len(raw))
    scan = None
    if depth is None:
        scan = measure(raw, budget=budget)
        depth = scan.max_depth
    if depth > MAX_DEPTH:
        raise LimitError(f"nested {depth} levels deep (limit {MAX_DEPTH})")
    try:
        value = _DECODER.decode(raw)
    except LimitError:
        raise
    except json.JSONDecodeError as exc:
        budget.spend(exc.pos)
        if scan is None:
            scan = measure(raw, budget=budget)
        if scan.bare_word:  # names other than True/False/None: not a literal either
            raise
        if scan.max_depth > MAX_DEPTH:
            raise LimitError(f"nested {scan.max_depth} levels deep (limit {MAX_DEPTH})") from None
        if scan.longest_number > MAX_NUMBER_DIGITS:
            raise LimitError(f"a number has {scan.longest_number} digits (limit {MAX_NUMBER_DIGITS})") from None
        if not budget.take_literal(len(raw)):
            raise
        try:
            value = ast.literal_eval(raw)
        except Exception:  # SyntaxError, ValueError, TypeError, MemoryError, RecursionError, ...
            raise exc from None
    except (RecursionError, MemoryError):
        raise LimitError("nested too deeply to read") from None
    except ValueError as exc:
        raise LimitError(str(exc)) from None
    else:
        budget.spend(len(raw))
    return check_value(value)


def check_value(value: Any) -> Any:
    """Return ``value`` as plain JSON data (tuples become lists, in place where nested) or raise
    :class:`~.limits.LimitError` naming what is not. Walks without recursion."""
    root = [value]
    stack: list[tuple[Any, Any, int]] = [(root, 0, 0)]
    visits = 0
    while stack:
        holder, key, depth = stack.pop()
        item = holder[key]
        visits += 1
        if visits > MAX_INPUT_CHARS:
            raise LimitError("too many values")
        if isinstance(item, tuple):
            item = holder[key] = list(item)
        if isinstance(item, dict):
            if depth >= MAX_DEPTH:
                raise LimitError(f"nested more than {MAX_DEPTH} levels deep")
            for k in item:
                if not isinstance(k, str):
                    raise LimitError(f"an object key is {type(k).__name__}, not a string: {short(k, 40)}")
                stack.append((item, k, depth + 1))
        elif isinstance(item, list):
            if depth >= MAX_DEPTH:
                raise LimitError(f"nested more than {MAX_DEPTH} levels deep")
            stack.extend((item, index, depth + 1) for index in range(len(item)))
        elif item is None or isinstance(item, (bool, str)):
            continue
        elif isinstance(item, float):
            if not math.isfinite(item):  # NaN, or a number too large for a float: JSON has no such value
                raise LimitError(f"{item} is not plain JSON (a number too large, NaN or Infinity)")
        elif isinstance(item, int):
            if abs(item) >= _INT_BOUND:
                raise LimitError(f"a number has more than {MAX_NUMBER_DIGITS} digits")
        else:
            raise LimitError(f"{type(item).__name__} is not a JSON value: {short(item, 40)}")
    return root[0]
