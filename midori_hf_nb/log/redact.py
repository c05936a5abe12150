"""Nothing secret is written: every row passes :func:`scrub_row` and then the user's redaction
hook (:func:`apply_redactor`) before it reaches the database.

:func:`scrub_row` replaces, in every text and JSON column:

* the secrets the call carried (a served agent's API key: :class:`~midori_hf_nb.served.config.ApiKey`,
  revealed only on the writer thread to be searched for), in plain and JSON-escaped form;
* the values of the environment's credential variables (:data:`SECRET_ENV_NAMES`, and any
  variable whose name ends in ``_API_KEY``, ``_TOKEN`` or ``_SECRET``) of 8 characters or more;
* ``Bearer ...`` tokens; and the value of any key that names a credential (``api_key``,
  ``authorization``, ``token``, ``secret``, ``password``...) in the JSON columns, when the row is
  built (:func:`~.rows.plain`).

The user's hook (:func:`midori_hf_nb.log.set_redactor`) then gets the row as a dict of column
values and returns it changed, or None to record nothing. A hook that raises drops the row with
one warning: a row is never written unredacted.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Iterable, Mapping

#: what stands in for a secret in the log
MASK = "***"
#: credential variables whose values never appear in the log
SECRET_ENV_NAMES = ("OPENAI_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACEHUB_API_TOKEN",
                    "ANTHROPIC_API_KEY", "AZURE_OPENAI_API_KEY", "GITHUB_TOKEN")
_SECRET_SUFFIXES = ("_API_KEY", "_TOKEN", "_SECRET", "_PASSWORD")
#: the shortest text treated as a secret (shorter ones would mask ordinary words)
MIN_SECRET_CHARS = 8

_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")
_BEARER_WORD = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr]\s")
_JSON_COLUMNS_SUFFIX = "_json"


def environment_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values of the environment's credential variables (8 characters or more)."""
    environ = os.environ if environ is None else environ
    found = []
    for name, value in environ.items():
        if name in SECRET_ENV_NAMES or name.upper().endswith(_SECRET_SUFFIXES):
            if isinstance(value, str) and len(value.strip()) >= MIN_SECRET_CHARS:
                found.append(value.strip())
    return found


def _forms(secrets: Iterable[str]) -> list[str]:
    """Each secret as written in text and inside JSON, longest first."""
    forms = set()
    for secret in secrets:
        if isinstance(secret, str) and len(secret) >= MIN_SECRET_CHARS:
            forms.add(secret)
            forms.add(json.dumps(secret)[1:-1])
    return sorted(forms, key=len, reverse=True)


def _scrub_text(text: str, forms: list[str]) -> str:
    for form in forms:
        if form in text:
            text = text.replace(form, MASK)
    if _BEARER_WORD.search(text):
        text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    return text


def scrub_row(row: dict[str, Any], secrets: Iterable[str] = (), environment: Iterable[str] | None = None
              ) -> dict[str, Any]:
    """``row`` with secrets masked (see the module docstring; the values of credential keys in
    JSON columns are masked when the row is built, :func:`~.rows.plain`). ``environment``: the
    environment's secrets when the caller has read them already (once per batch)."""
    forms = _forms([*secrets, *(environment_secrets() if environment is None else environment)])
    return {column: _scrub_text(value, forms) if isinstance(value, str) else value for column, value in row.items()}


def text_redactor(replace: Callable[[str], str]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A redaction hook that passes every text column of a row (JSON columns as their JSON text)
    through ``replace``, e.g. ``text_redactor(lambda t: EMAIL.sub("[email]", t))``. A replacement
    that breaks a JSON column's JSON is refused (the row is then not written)."""
    def redact(row: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for column, value in row.items():
            if isinstance(value, str):
                value = replace(value)
                if column.endswith(_JSON_COLUMNS_SUFFIX):
                    json.loads(value)  # still JSON: else the hook fails and nothing is written
            out[column] = value
        return out

    return redact


class RedactionError(RuntimeError):
    """The redaction hook failed or returned something that is not a row; nothing was written."""


def apply_redactor(row: dict[str, Any], redactor: Callable[[dict[str, Any]], Any] | None) -> dict[str, Any] | None:
    """The row after the user's hook: the hook's dict (only known columns kept, values text,
    numbers or None), None to skip the row; :class:`RedactionError` when the hook fails."""
    if redactor is None:
        return row
    try:
        result = redactor(dict(row))
    except Exception as exc:
        raise RedactionError(f"the redaction hook raised {type(exc).__name__}: {exc}") from exc
    if result is None:
        return None
    if not isinstance(result, Mapping):
        raise RedactionError(f"the redaction hook returned {type(result).__name__}: expected the row (a dict) or None")
    cleaned = {}
    for column in row:
        value = result.get(column)
        if value is not None and not isinstance(value, (str, int, float)):
            raise RedactionError(f"the redaction hook set {column} to {type(value).__name__}: expected text, a "
                                 "number or None")
        cleaned[column] = value
    cleaned["id"] = row["id"]  # the id is the row's identity: the hook cannot change it
    return cleaned


__all__ = ["MASK", "RedactionError", "SECRET_ENV_NAMES", "apply_redactor", "environment_secrets", "scrub_row",
           "text_redactor"]
