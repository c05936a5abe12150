"""The schema of a comparison table: its columns, their types, row statuses, and cell values.

A comparison frame has, in order: :data:`KEY_COLUMNS`, one column per setting of the grid,
:data:`RESULT_COLUMNS`, then one ``"check: NAME"`` column per check and ``passed``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

STATUS_OK = "ok"
STATUS_NOT_RUN = "not run"
STATUS_ERROR = "error"
#: every value of the ``status`` column
STATUSES = (STATUS_OK, STATUS_NOT_RUN, STATUS_ERROR)

CHECK_PREFIX = "check: "
SETTING_PREFIX = "setting:"  #: settings columns carry this prefix in exported files
PASSED_COLUMN = "passed"

KEY_COLUMNS = ("model", "prompt_id", "prompt", "system")
RESULT_COLUMNS = (
    "repeat", "response", "thinking", "tool_calls", "prompt_tokens", "completion_tokens",
    "time_to_first_token", "seconds", "tokens_per_second", "finish_reason", "reproducible", "seed", "batch",
    "batch_size", "status", "error",
)
INT_COLUMNS = ("prompt_id", "repeat", "prompt_tokens", "completion_tokens", "seed", "batch", "batch_size")
FLOAT_COLUMNS = ("time_to_first_token", "seconds", "tokens_per_second")
TEXT_COLUMNS = ("model", "prompt", "system", "response", "thinking", "finish_reason", "status", "error")
#: the token probabilities of a row (:meth:`~midori_hf_nb.logprobs.Logprobs.as_dict`), a column only when a
#: setting asked for them (``logprobs``/``top_logprobs``)
LOGPROBS_COLUMN = "token_logprobs"
JSON_COLUMNS = ("tool_calls", LOGPROBS_COLUMN)
BOOL_COLUMNS = ("reproducible",)
#: names a setting of the grid cannot have (they are columns of the table)
RESERVED_NAMES = frozenset({*KEY_COLUMNS, *RESULT_COLUMNS, PASSED_COLUMN})

#: the most characters of an object's repr shown in a label or an exported cell
REPR_LIMIT = 200


def table_columns(setting_names: Sequence[str], check_names: Sequence[str]) -> list[str]:
    """The columns of a comparison frame with these settings and checks, in order."""
    checks = [CHECK_PREFIX + name for name in check_names]
    return [*KEY_COLUMNS, *setting_names, *RESULT_COLUMNS, *checks, *([PASSED_COLUMN] if check_names else [])]


def plain(value: Any) -> Any:
    """numpy scalars as Python values (for JSON and for stable pandas inference); others unchanged."""
    item = getattr(value, "item", None)
    if item is not None and type(value).__module__ == "numpy":
        return item()
    return value


def is_missing(value: Any) -> bool:
    """True for None, NaN, ``pd.NA`` and ``NaT``; containers are never missing."""
    if value is None:
        return True
    if isinstance(value, (list, dict, tuple, set)):
        return False
    if isinstance(value, float):
        return math.isnan(value)
    try:
        import pandas as pd

        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def bounded_repr(value: Any, limit: int = REPR_LIMIT) -> str:
    """``repr(value)``, cut to ``limit`` characters (with ``...``); a failing repr names the type."""
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not break a table
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def not_allowed(name: str, value: Any, allowed: str, where: str = "compare") -> ValueError:
    """The error for an argument that is not allowed: names it, shows it (bounded) and says what is."""
    return ValueError(f"{where}: {name}={bounded_repr(value)} is not allowed: {allowed}")


def setting_text(setting: dict[str, Any]) -> str:
    """``"temperature=0.7, max_new_tokens=64"`` (objects by their bounded repr), or ``"defaults"``."""
    return ", ".join(f"{name}={bounded_repr(plain(value))}" for name, value in setting.items()) or "defaults"


__all__ = [
    "CHECK_PREFIX", "FLOAT_COLUMNS", "INT_COLUMNS", "JSON_COLUMNS", "KEY_COLUMNS", "LOGPROBS_COLUMN", "PASSED_COLUMN",
    "REPR_LIMIT", "RESERVED_NAMES", "RESULT_COLUMNS", "SETTING_PREFIX", "STATUSES", "STATUS_ERROR",
    "STATUS_NOT_RUN", "STATUS_OK", "TEXT_COLUMNS", "bounded_repr", "is_missing", "not_allowed", "plain", "setting_text",
    "table_columns",
]
