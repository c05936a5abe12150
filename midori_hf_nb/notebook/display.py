"""Rich display of :class:`~midori_hf_nb.AgentResponse`: answer, collapsible thinking, tool calls.

Model output is untrusted input. Every piece of model text (answer, thinking, code, tool
names, arguments and results) is HTML-escaped before it is put into markup, so a response
containing ``<script>`` or ``<img onerror=...>`` shows those characters as text. The
Markdown form escapes the same way and also backslash-escapes Markdown punctuation, since
Markdown renderers pass raw HTML through.

``ResponseView(response)`` is a thin wrapper with ``_repr_html_`` / ``_repr_markdown_``;
``%load_ext midori_hf_nb`` also registers the HTML form for every ``AgentResponse`` shown
as a cell result (:func:`register_formatters`).
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

#: Inline styles (Jupyter front ends keep inline styles; no <style> blocks needed).
STYLE_BOX = "font-family:inherit;line-height:1.45;max-width:100%"
STYLE_ANSWER = "white-space:pre-wrap;word-break:break-word"
STYLE_THINKING = ("white-space:pre-wrap;word-break:break-word;opacity:0.65;font-size:0.92em;"
                  "border-left:3px solid rgba(128,128,128,0.45);padding-left:0.6em;margin:0.2em 0 0.4em 0")
STYLE_SUMMARY = "cursor:pointer;opacity:0.7;font-size:0.92em"
STYLE_FOOTER = "opacity:0.6;font-size:0.85em;margin-top:0.35em"
STYLE_TABLE = "border-collapse:collapse;font-size:0.9em;margin-top:0.4em"
STYLE_CELL = "border:1px solid rgba(128,128,128,0.35);padding:2px 6px;text-align:left;vertical-align:top"

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")


def escape(text: Any) -> str:
    """HTML-escape any value (``None`` becomes an empty string); quotes are escaped too."""
    if text is None:
        return ""
    return html.escape(text if isinstance(text, str) else str(text), quote=True)


def escape_markdown(text: Any) -> str:
    """Escape text for Markdown: HTML-escape ``<``, ``>`` and ``&`` (quotes need nothing outside
    attributes), then backslash-escape Markdown punctuation."""
    if text is None:
        return ""
    plain = html.escape(text if isinstance(text, str) else str(text), quote=False)
    return _MD_SPECIAL.sub(r"\\\1", plain)


def compact_json(value: Any, limit: int = 400) -> str:
    """A short JSON (or ``str``) rendering of a value, cut at ``limit`` characters."""
    if value is None:
        return ""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_footer(metadata: dict | None, *, interrupted: bool = False) -> str:
    """One line: tokens, seconds, tokens/s and finish reason (plain text, not escaped)."""
    meta = metadata or {}
    parts = []
    tokens = meta.get("completion_tokens")
    if tokens is not None:
        parts.append(f"{tokens} tokens")
    seconds = meta.get("total_seconds")
    if seconds is not None:
        parts.append(f"{seconds:.2f} s")
    rate = meta.get("tokens_per_second")
    if rate is not None:
        parts.append(f"{rate:.1f} tokens/s")
    finish = meta.get("finish_reason")
    if finish:
        parts.append(f"finish: {finish}" + (" (interrupted)" if interrupted else ""))
    decode = decode_label(meta)
    if decode:
        parts.append(decode)
    return " · ".join(parts)


def decode_label(metadata: dict | None) -> str:
    """Which decoder ran (``metadata["decode_path"]``): "decode: engine", or "decode: generate
    (reason)"; '' when the metadata does not say (plain text, not escaped)."""
    meta = metadata or {}
    path = meta.get("decode_path")
    if not path:
        return ""
    reason = meta.get("decode_path_reason")
    return f"decode: {path}" + (f" ({reason})" if reason else "")


def thinking_html(thinking: str, *, open_: bool = False, live: bool = False) -> str:
    """A collapsible, dimmed ``<details>`` block for reasoning text ('' when there is none)."""
    if not thinking:
        return ""
    label = "Thinking…" if live else f"Thinking ({len(thinking)} characters)"
    return (f'<details class="midori-thinking"{" open" if open_ else ""}>'
            f'<summary style="{STYLE_SUMMARY}">{escape(label)}</summary>'
            f'<div style="{STYLE_THINKING}">{escape(thinking)}</div></details>')


def tool_call_rows(response: Any) -> list[dict[str, Any]]:
    """Tool calls of a response as dicts (executed steps first, then parsed calls not executed)."""
    meta = getattr(response, "metadata", None) or {}
    rows: list[dict[str, Any]] = []
    for step in meta.get("tool_steps") or []:
        rows.append({"step": step.get("step"), "name": step.get("name"), "arguments": step.get("arguments"),
                     "id": step.get("id"), "result": step.get("result"), "error": step.get("error"),
                     "seconds": step.get("seconds"), "executed": True})
    pending_step = meta.get("steps") or 1
    for call in getattr(response, "tool_calls", None) or []:
        rows.append({"step": pending_step, "name": call.get("name"), "arguments": call.get("arguments"),
                     "id": call.get("id"), "result": None,
                     "error": "unknown tool" if call.get("unknown") else None,
                     "seconds": None, "executed": False})
    return rows


def tool_calls_html(rows: list[dict[str, Any]]) -> str:
    """An escaped HTML table of tool-call rows ('' when there are none)."""
    if not rows:
        return ""
    head = "".join(f'<th style="{STYLE_CELL}">{h}</th>'
                   for h in ("step", "tool", "arguments", "result", "error", "seconds"))
    body = []
    for row in rows:
        result = compact_json(row.get("result")) if row.get("executed") else "(not executed)"
        seconds = row.get("seconds")
        cells = (row.get("step"), row.get("name"), compact_json(row.get("arguments")), result,
                 row.get("error") or "", f"{seconds:.3f}" if isinstance(seconds, (int, float)) else "")
        body.append("<tr>" + "".join(f'<td style="{STYLE_CELL}">{escape(c)}</td>' for c in cells) + "</tr>")
    return (f'<table class="midori-tool-calls" style="{STYLE_TABLE}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def render_response_html(response: Any, *, title: str | None = None, show_thinking: bool = True) -> str:
    """The HTML of a response: title, collapsible thinking, answer, code, tool-call table, footer.

    All model text is escaped.
    """
    meta = getattr(response, "metadata", None) or {}
    parts = [f'<div class="midori-response" style="{STYLE_BOX}">']
    if title:
        parts.append(f'<div style="{STYLE_SUMMARY}">{escape(title)}</div>')
    if show_thinking:
        parts.append(thinking_html(getattr(response, "thinking", "") or ""))
    parts.append(f'<div class="midori-answer" style="{STYLE_ANSWER}">{escape(getattr(response, "response", ""))}</div>')
    code = getattr(response, "code", None)
    if code:
        parts.append(f'<pre class="midori-code">{escape(code)}</pre>')
    parts.append(tool_calls_html(tool_call_rows(response)))
    footer = format_footer(meta)
    if footer:
        parts.append(f'<div class="midori-footer" style="{STYLE_FOOTER}">{escape(footer)}</div>')
    parts.append("</div>")
    return "".join(parts)


def render_response_markdown(response: Any, *, show_thinking: bool = True) -> str:
    """The Markdown of a response; model text is HTML-escaped and Markdown-escaped."""
    meta = getattr(response, "metadata", None) or {}
    lines: list[str] = []
    thinking = getattr(response, "thinking", "") or ""
    if show_thinking and thinking:
        quoted = "\n".join("> " + escape_markdown(line) for line in thinking.splitlines())
        lines += ["*Thinking*", "", quoted, ""]
    answer = getattr(response, "response", "") or ""
    lines += [escape_markdown(line) + "  " for line in answer.splitlines()] or [""]
    code = getattr(response, "code", None)
    if code:
        lines += ["", "    " + code.replace("\n", "\n    ")]  # code blocks show their text literally
    rows = tool_call_rows(response)
    if rows:
        lines += ["", "| step | tool | arguments | result | error |", "|---|---|---|---|---|"]
        for row in rows:
            result = compact_json(row.get("result")) if row.get("executed") else "(not executed)"
            cells = (row.get("step"), row.get("name"), compact_json(row.get("arguments")), result, row.get("error") or "")
            lines.append("| " + " | ".join(escape_markdown(c).replace("\n", " ") for c in cells) + " |")
    footer = format_footer(meta)
    if footer:
        lines += ["", "*" + escape_markdown(footer) + "*"]
    return "\n".join(lines)


def render_response_text(response: Any) -> str:
    """Plain text: the answer, then the footer line."""
    footer = format_footer(getattr(response, "metadata", None))
    answer = getattr(response, "response", "") or ""
    return f"{answer}\n[{footer}]" if footer else answer


class ResponseView:
    """A thin display wrapper around an :class:`~midori_hf_nb.AgentResponse`.

    In a notebook, ``ResponseView(response)`` as a cell's last expression shows the answer,
    the thinking in a collapsed block and a table of tool calls. The wrapped response is
    ``.response``; attribute access falls through to it.
    """

    def __init__(self, response: Any, *, title: str | None = None, show_thinking: bool = True) -> None:
        self.response = response
        self.title = title
        self.show_thinking = show_thinking

    def __getattr__(self, name: str) -> Any:
        return getattr(self.response, name)

    def _repr_html_(self) -> str:
        return render_response_html(self.response, title=self.title, show_thinking=self.show_thinking)

    def _repr_markdown_(self) -> str:
        return render_response_markdown(self.response, show_thinking=self.show_thinking)

    def __repr__(self) -> str:
        return render_response_text(self.response)


def show_response(response: Any, **options: Any) -> None:
    """Display a response richly in the current cell (``IPython.display.display(ResponseView(...))``)."""
    from IPython.display import display

    display(ResponseView(response, **options))


def register_formatters(shell: Any) -> None:
    """Show every ``AgentResponse`` that is a cell's result with :func:`render_response_html`."""
    from ..protocol import AgentResponse

    formatter = shell.display_formatter.formatters["text/html"]
    formatter.for_type(AgentResponse, lambda r: render_response_html(r))


def unregister_formatters(shell: Any) -> None:
    """Undo :func:`register_formatters`."""
    from ..protocol import AgentResponse

    formatter = shell.display_formatter.formatters["text/html"]
    try:
        formatter.pop(AgentResponse)
    except KeyError:
        pass


__all__ = [
    "ResponseView",
    "escape",
    "escape_markdown",
    "format_footer",
    "register_formatters",
    "render_response_html",
    "render_response_markdown",
    "render_response_text",
    "show_response",
    "tool_call_rows",
    "unregister_formatters",
]
