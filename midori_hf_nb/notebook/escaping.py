"""Escaping of untrusted text for the notebook's HTML and Markdown surfaces, in one place.

Model output is untrusted input, and so is anything an agent returns: the answer, the
reasoning, tool names, arguments and results, statistics values, the model's name. Every
surface of the notebook layer that writes markup goes through these helpers:

* :func:`escape_html` for element content and quoted attribute values: any value (not only
  strings: numbers, dicts, objects with a hostile ``__str__``) becomes its text with ``&``,
  ``<``, ``>``, ``"`` and ``'`` escaped, so ``<script>``, ``<img onerror=...>`` and attribute
  break-outs show as text;
* :func:`escape_markdown` for one line of Markdown text that still reads as plain text: only the
  characters that could start markup where they stand get a backslash (``<b>`` is written
  ``\\<b>``, so Markdown renderers that pass raw HTML through show it as text; ``5.19 s`` stays
  as it is), and every line break (``\\r\\n``, ``\\r``, ``\\n`` and the other Unicode line
  boundaries) becomes a space, so nothing can start a new block; :func:`markdown_lines` splits a
  text into such lines first;
* :func:`markdown_code_block` for literal text in Markdown: an indented code block in which
  *every* line is indented (line breaks of every kind normalised first), so no line escapes
  the block;
* :func:`css_value` and :func:`css_percent` for values put into a ``style`` attribute: plain
  numbers and a small safe set of CSS tokens, never ``url(...)``, ``expression(...)``,
  ``javascript:``, quotes, semicolons or backslashes.

Nothing is ever put into an ``href``/``src`` attribute, so ``javascript:`` URLs in model text
stay text. The helpers import nothing beyond the standard library, so any view (the chat
panel, the comparison views) can adopt them.
"""

from __future__ import annotations

import html
import math
import re
from typing import Any

#: Characters that can start inline markup where they stand (see :func:`escape_markdown`).
_MD_INLINE = re.compile(r"\\(?=[!-/:-@\[-`{-~])|[`\[|$*_~]|<(?=[A-Za-z/!?])|&(?=#?\w+;)")
#: Markup a line can start with: a heading, a quote, a bullet, a thematic break or setext underline.
_MD_LINE_START = re.compile(r"^( {0,3})([#>]|[-+=*](?=\s|$|[-=]+\s*$))")
#: A numbered-list marker at the start of a line ("1." or "1)" then a space): its dot or bracket is escaped.
_MD_NUMBERED = re.compile(r"^( {0,3}\d{1,9})(?=[.)](?:\s|$))")
#: Every line boundary Python knows (a superset of CommonMark's \n, \r and \r\n).
_LINE_BREAKS = re.compile(r"\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
#: CSS values allowed as they are: numbers with units, colours, keywords, rgba(...)/calc-free lists.
_CSS_SAFE = re.compile(r"^[#a-zA-Z0-9.%\-\s,()]*$")
_CSS_FORBIDDEN = re.compile(r"url|expression|javascript|import|image|element|attr|var", re.IGNORECASE)

#: Classes for the root element of every view: MathJax 2 and 3 leave their content alone, so
#: ``$...$`` in model text is never typeset (MathJax commands such as ``\\href`` make links).
NO_MATH_CLASS = "tex2jax_ignore mathjax_ignore"


def to_text(value: Any) -> str:
    """The text of any value: ``None`` is ``''``, a string is itself, anything else its ``str()``
    (or, when ``str()`` fails, its type name in angle brackets)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        text = str(value)
    except Exception:  # a hostile or broken __str__ must not break a view
        return f"<{type(value).__name__}>"
    return text if isinstance(text, str) else f"<{type(value).__name__}>"


def escape_html(value: Any) -> str:
    """HTML-escape any value for element content or a quoted attribute (``None`` becomes ``''``)."""
    return html.escape(to_text(value), quote=True)


def normalise_newlines(text: Any) -> str:
    """``text`` with every line boundary (``\\r\\n``, ``\\r``, ``\\n``, ``\\v``, ``\\f``, U+2028, ...) as ``\\n``."""
    return _LINE_BREAKS.sub("\n", to_text(text))


def _escape_inline(match: re.Match) -> str:
    char, text, at = match.group(0), match.string, match.start()
    before = text[at - 1] if at else " "
    after = text[at + 1] if at + 1 < len(text) else " "
    if char == "*" and before.isspace() and after.isspace():  # "2 * 3": no emphasis can start or end here
        return char
    if char == "_" and before.isalnum() and after.isalnum():  # snake_case: never emphasis
        return char
    if char == "~" and (after.isspace() or after.isdigit()):  # "~5 s": no strikethrough starts here
        return char
    return "\\" + char


def escape_markdown(value: Any) -> str:
    """Escape any value as one line of Markdown text that reads as it is and renders as text.

    Line breaks of every kind become spaces. Only characters that could start markup where they
    stand get a backslash: ``<`` before a letter, ``/``, ``!`` or ``?`` (a tag, comment or autolink:
    raw HTML never passes), ``&`` of an entity, a backslash before punctuation, `````, ``[``, ``|``,
    ``$`` (math in Jupyter), ``*``/``_``/``~`` where they could open or close emphasis, and at the
    start of the line ``#``, ``>``, a list marker or a numbered-list dot. So ``5.19 s``, ``Paris.``
    and ``a < b`` stay as they are, and ``<b>`` is written ``\\<b>``.
    """
    text = _MD_INLINE.sub(_escape_inline, _LINE_BREAKS.sub(" ", to_text(value)))
    numbered = _MD_NUMBERED.match(text)
    if numbered:
        return f"{numbered.group(1)}\\{text[numbered.end(1):]}"
    return _MD_LINE_START.sub(r"\1\\\2", text, count=1)


def markdown_lines(value: Any) -> list[str]:
    """The lines of ``value`` (every kind of line break), each escaped with :func:`escape_markdown`."""
    return [escape_markdown(line) for line in normalise_newlines(value).split("\n")]


def markdown_code_block(value: Any, indent: str = "    ") -> str:
    """``value`` as an indented Markdown code block: line breaks normalised, every line indented.

    Markdown shows a code block's text literally (no HTML, no markup), and since every line,
    including the ones after a lone ``\\r``, carries the indent, none of them can leave the block.
    """
    return "\n".join(indent + line for line in normalise_newlines(value).split("\n"))


def css_value(value: Any, *, name: str = "value") -> str:
    """A value safe inside a ``style`` attribute: a finite number, or text made only of letters,
    digits, ``#.%-,()`` and spaces with no ``url``/``expression``/``javascript``/``var``... in it.

    Raises ``ValueError`` naming ``name`` and what is allowed otherwise.
    """
    if isinstance(value, bool):
        raise ValueError(f"CSS {name}={value!r} is not allowed: expected a finite number or a plain CSS token")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"CSS {name}={value!r} is not allowed: expected a finite number")
        return repr(value) if isinstance(value, int) else f"{value:g}"
    text = to_text(value)
    if not _CSS_SAFE.match(text) or _CSS_FORBIDDEN.search(text):
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise ValueError(f"CSS {name}={shown!r} is not allowed: expected a number, a colour or a keyword "
                         "(letters, digits, # . % - , ( ) and spaces; no url(), expression(), var())")
    return text


def css_percent(share: Any) -> str:
    """A share (0 to 1) as a CSS percentage, clamped to ``0%``-``100%``; anything not a finite
    number (``NaN``, text, ``None``) is ``0%``."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not math.isfinite(share):
        return "0%"
    return f"{max(0.0, min(1.0, float(share))) * 100:.1f}%"


__all__ = [
    "NO_MATH_CLASS",
    "css_percent",
    "css_value",
    "escape_html",
    "escape_markdown",
    "markdown_code_block",
    "markdown_lines",
    "normalise_newlines",
    "to_text",
]
