"""The chat panel's "Response format" setting: free text, ``json`` or a JSON schema, checked as you type.

A multi-line box: empty means free text; ``json`` asks for any JSON object; text starting with
``{`` is read as a JSON schema. Under the box one line says, on every change, what the next answer
will be constrained to ("JSON schema 'Person': answers must match it") or what is wrong with the
text (the JSON error with its line and column, or why the schema is refused), so a schema is right
before it is sent. A ``response_format`` given to the panel itself (a pydantic model, a Python
type) is shown by its name and used while the box still shows that name. Answers given under a
format carry a "schema" badge in the transcript (:mod:`.render`).
"""

from __future__ import annotations

import json
from typing import Any

import ipywidgets as widgets

from ...structured import ResponseFormat, response_format_from
from ..display import STYLE_FOOTER
from ..escaping import escape_html

#: The longest schema text read from the field.
MAX_SCHEMA_CHARS = 100_000

STYLE_VALID = STYLE_FOOTER + ";color:#2e7d32;opacity:0.9"
STYLE_INVALID = STYLE_FOOTER + ";color:#b00020;opacity:1"


class ResponseFormatField:
    """The setting's widgets (:attr:`widget`: the box and its check line) and its value as a
    ``response_format`` override."""

    def __init__(self, initial: ResponseFormat | None = None) -> None:
        self.initial = initial
        self.box = widgets.Textarea(value=initial.name if initial is not None else "", description="Response format",
                                    placeholder='empty: free text\n"json": any JSON object\n'
                                                'or a JSON schema: {"type": "object", "properties": {...}}',
                                    rows=4, continuous_update=True, style={"description_width": "9em"},
                                    layout=widgets.Layout(width="95%"))
        self.check_html = widgets.HTML()
        self.widget = widgets.VBox([self.box, self.check_html], layout=widgets.Layout(width="100%"))
        self.box.observe(lambda _: self.check(), names="value")
        self.check()

    @property
    def text(self) -> str:
        """What the box holds."""
        return self.box.value

    def value(self) -> ResponseFormat | None:
        """The ``response_format`` the field asks for (None: free text); raises ``ValueError``
        naming the setting and what is allowed."""
        text = self.box.value.strip()
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
                raise ValueError(f"Response format: the schema is not JSON: {exc.msg} (line {exc.lineno}, "
                                 f"column {exc.colno})") from exc
            return response_format_from(schema, "Response format")
        raise ValueError(f"Response format={text[:60]!r} is not allowed: expected empty (free text), json, or a "
                         f"JSON schema of at most {MAX_SCHEMA_CHARS} characters starting with '{{'")

    def check(self) -> str:
        """Check the box now and say so under it; returns the line shown (plain text)."""
        try:
            chosen = self.value()
        except ValueError as exc:
            line, style = f"✗ {exc}", STYLE_INVALID
        else:
            if chosen is None:
                line = "Free text: answers are not constrained."
            elif chosen.kind == "json":
                line = "✓ Any JSON object: answers are constrained to JSON."
            else:
                line = f"✓ JSON schema {chosen.name!r}: answers must match it (they show a schema badge)."
            style = STYLE_VALID if chosen is not None else STYLE_FOOTER
        self.check_html.value = f'<div class="midori-format-check" style="{style}">{escape_html(line)}</div>'
        return line


def attach(settings_box: Any, field: ResponseFormatField) -> ResponseFormatField:
    """Add the field to the panel's settings box (at the end of its first page); returns the field."""
    page = settings_box.children[0]
    page.children = (*page.children, field.widget)
    return field


__all__ = ["MAX_SCHEMA_CHARS", "ResponseFormatField", "attach"]
