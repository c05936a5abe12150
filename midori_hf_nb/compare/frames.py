"""Comparison tables as DataFrames: building them with their column types, reading their parts,
and the figures per configuration (:func:`summarize`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from .columns import (
    BOOL_COLUMNS,
    CHECK_PREFIX,
    FLOAT_COLUMNS,
    INT_COLUMNS,
    JSON_COLUMNS,
    LOGPROBS_COLUMN,
    PASSED_COLUMN,
    STATUS_ERROR,
    STATUS_NOT_RUN,
    STATUS_OK,
    TEXT_COLUMNS,
    bounded_repr,
    is_missing,
    plain,
    table_columns,
)
from .rows import Row

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def _converted(column: str, values: list[Any], convert: Callable[[Any], Any], expected: str) -> list[Any]:
    out = []
    for value in values:
        if is_missing(value):
            out.append(None)
            continue
        try:
            out.append(convert(value))
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"column {column!r}: {bounded_repr(value)} is not allowed: expected {expected}") from None
    return out


def column_series(column: str, values: list[Any], check_columns: Sequence[str]) -> "pd.Series | Any":
    """One column's values with the column's type (nullable integers, floats, booleans, text)."""
    import pandas as pd

    values = [plain(v) for v in values]
    if column in INT_COLUMNS:
        return pd.array(_converted(column, values, int, "a whole number"), dtype="Int64")
    if column in FLOAT_COLUMNS:
        floats = _converted(column, values, float, "a number")
        return pd.array([math.nan if v is None else v for v in floats], dtype="float64")
    if column in check_columns or column == PASSED_COLUMN or column in BOOL_COLUMNS:
        return pd.array([None if is_missing(v) else bool(v) for v in values], dtype="boolean")
    if column in JSON_COLUMNS:
        return pd.Series([None if is_missing(v) else v for v in values], dtype=object)
    if column in TEXT_COLUMNS:
        return pd.Series([None if is_missing(v) else str(v) for v in values])
    return pd.Series(values)  # a setting: pandas infers the type from the Python values


def frame_from_records(records: Sequence[Mapping[str, Any]], setting_names: Sequence[str],
                       check_names: Sequence[str]) -> "pd.DataFrame":
    """A comparison frame from table rows (column -> value); raises ``ValueError`` naming a
    column whose value does not fit its type."""
    import pandas as pd

    columns = table_columns(setting_names, check_names)
    if any(not is_missing(record.get(LOGPROBS_COLUMN)) for record in records):
        columns.append(LOGPROBS_COLUMN)
    checks = [CHECK_PREFIX + name for name in check_names]
    data = {col: column_series(col, [record.get(col) for record in records], checks) for col in columns}
    frame = pd.DataFrame(data, columns=columns, index=pd.RangeIndex(len(records)))
    frame.attrs["settings_columns"] = list(setting_names)
    frame.attrs["check_columns"] = checks
    return frame


def frame_from_rows(rows: Sequence[Row], setting_names: Sequence[str], check_names: Sequence[str]) -> "pd.DataFrame":
    """The comparison frame of a grid's rows."""
    return frame_from_records([row.record() for row in rows], setting_names, check_names)


def settings_columns(df: "pd.DataFrame") -> list[str]:
    """The names of the settings columns of a comparison frame."""
    names = df.attrs.get("settings_columns")
    if names is not None:
        return [n for n in names if n in df.columns]
    cols = list(df.columns)
    return cols[cols.index("system") + 1:cols.index("repeat")]


def check_columns(df: "pd.DataFrame") -> list[str]:
    """The ``"check: NAME"`` columns of a comparison frame."""
    return [c for c in df.columns if isinstance(c, str) and c.startswith(CHECK_PREFIX)]


def config_label(row: Mapping[str, Any], setting_names: Sequence[str], include_model: bool = True) -> str:
    """``"model | temperature=0.7, max_new_tokens=64"`` for a row (or parts of it); objects
    appear by their repr, cut to a bounded length."""
    setting = ", ".join(f"{n}={bounded_repr(plain(row[n]))}" for n in setting_names)
    parts = ([str(row["model"])] if include_model else []) + ([setting] if setting else [])
    return " | ".join(parts) or "defaults"


def _summary_record(model: Any, config: str, group: "pd.DataFrame") -> dict[str, Any]:
    ok = group[group["status"] == STATUS_OK]
    batches = ok.drop_duplicates("batch")
    seconds = float(batches["seconds"].sum())
    tokens = int(ok["completion_tokens"].sum()) if len(ok) else 0
    record = {
        "model": model,
        "config": config,
        "rows": len(group),
        "ok": len(ok),
        "errors": int((group["status"] == STATUS_ERROR).sum()),
        "not_run": int((group["status"] == STATUS_NOT_RUN).sum()),
        "batches": len(batches),
        "completion_tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds if seconds > 0 else math.nan,
        "latency": float(batches["seconds"].mean()) if len(batches) else math.nan,
        "time_to_first_token": float(batches["time_to_first_token"].mean()) if len(batches) else math.nan,
    }
    if PASSED_COLUMN in group.columns:
        passed = ok[PASSED_COLUMN].dropna()
        record["pass_rate"] = float(passed.mean()) if len(passed) else math.nan
    return record


def summarize(df: "pd.DataFrame") -> "pd.DataFrame":
    """Aggregate figures per configuration (model and setting), from the rows that ran.

    Columns: ``model``, ``config`` (the settings as text), ``rows``, ``ok``, ``errors``,
    ``not_run``, ``batches``, ``completion_tokens``, ``seconds`` (generation time: the sum of
    the configuration's call times), ``tokens_per_second`` (completion tokens over that time),
    ``latency`` (mean seconds per call), ``time_to_first_token`` (mean per call) and
    ``pass_rate`` when the frame has checks. A call is a batch for an agent that batches and
    one row otherwise; rows that ran concurrently count their calls' times one after another,
    so ``tokens_per_second`` is then the throughput of one call, not of the overlapped run.
    """
    import pandas as pd

    names = settings_columns(df)
    labels = [config_label(row, names, include_model=False) for row in df.to_dict("records")]
    work = df.assign(config=labels)
    records = [_summary_record(model, config, group)
               for (model, config), group in work.groupby(["model", "config"], sort=False)]
    return pd.DataFrame.from_records(records)


__all__ = ["check_columns", "column_series", "config_label", "frame_from_records", "frame_from_rows",
           "settings_columns", "summarize"]
