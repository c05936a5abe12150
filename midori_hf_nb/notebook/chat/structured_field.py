"""The chat panel's "Response format" setting: free text, ``json`` or a JSON schema.

Empty means free text; ``json`` asks for any JSON object; text starting with ``{`` is read as a
JSON schema. A ``response_format`` given to the panel itself (a pydantic model, a Python type)
is shown by its name and used while the field still shows that name.
"""

from __future__ import annotations

import json
from typing import Any

import ipywidgets as widgets

from ...structured import ResponseFormat, response_format_from

#: The longest schema text read from the field.
MAX_SCHEMA_CHARS = 100_000


class ResponseFormatField:
    """The setting's widget and its value as a ``response_format`` override."""

    def __init__(self, initial: ResponseFormat | None = None) -> None:
        self.initial = initial
        self.widget = widgets.Text(value=initial.name if initial is not None else "",
                                   description="Response format",
                                   placeholder='free text; "json"; or a JSON schema {...}',
                                   style={"description_width": "initial"})

    def value(self) -> ResponseFormat | None:
        """The ``response_format`` the field asks for (None: free text); raises ``ValueError``
        naming the setting and what is allowed."""
        text = self.widget.value.strip()
        if not text:
            return None
        if self.initial is not None and text == self.initial.name:
            return self.initial
        if text == "json":
            return response_format_from("json", "Response format")
        if text.startswith("{") and len(text) <= MAX_SCHEMA_CHARS:
            try:
                schema = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"Response format: the schema is not JSON ({exc})") from exc
            return response_format_from(schema, "Response format")
        raise ValueError(f"Response format={text[:60]!r} is not allowed: expected empty (free text), json, or a "
                         f"JSON schema of at most {MAX_SCHEMA_CHARS} characters starting with '{{'")


def attach(settings_box: Any, field: ResponseFormatField) -> ResponseFormatField:
    """Add the field to the panel's settings box (at the end of its first page); returns the field."""
    page = settings_box.children[0]
    page.children = (*page.children, field.widget)
    return field


__all__ = ["ResponseFormatField", "attach"]
