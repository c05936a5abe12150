"""Rich display of :class:`~midori_hf_nb.AgentResponse`: answer, collapsible thinking, tool calls.

The views take any object with ``.response``, ``.thinking``, ``.tool_calls`` and ``.metadata``
(the response of any Midori protocol agent, or a stand-in with those attributes) and read the
statistics typed, through :func:`~midori_hf_nb.stats.stats_of` (:func:`response_stats`).

Model output is untrusted input. The answer is rendered as Markdown by :mod:`.markdown` (raw HTML
off, safe link schemes only, highlighted code, sanitised by an allow-list); every other value
(thinking, code, tool names, arguments and results, statistics) goes through :mod:`.escaping`
before it is put into markup, so a response containing ``<script>`` or ``<img onerror=...>``
shows those characters as text. The Markdown form keeps the answer's own Markdown
(:func:`~.markdown.markdown_for_export`) and backslash-escapes everything else line by line,
after normalising every kind of line break.

``ResponseView(response)`` is a thin wrapper with ``_repr_html_`` / ``_repr_markdown_``;
``%load_ext midori_hf_nb`` also registers the HTML form for every ``AgentResponse`` shown
as a cell result (:func:`register_formatters`).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from ..stats import ResponseStats, StatsError, stats_of
from .escaping import NO_MATH_CLASS, escape_html, escape_markdown, markdown_lines, to_text
from .markdown import fenced_code, markdown_for_export, render_markdown_html
from .probs_view import SHADES, token_view_html

#: Inline styles (Jupyter front ends keep inline styles; no <style> blocks needed).
STYLE_BOX = "font-family:inherit;line-height:1.45;max-width:100%"
STYLE_ANSWER = "white-space:pre-wrap;word-break:break-word"
STYLE_THINKING = ("white-space:pre-wrap;word-break:break-word;opacity:0.65;font-size:0.92em;"
                  "border-left:3px solid rgba(128,128,128,0.45);padding-left:0.6em;margin:0.2em 0 0.4em 0")
STYLE_SUMMARY = "cursor:pointer;opacity:0.7;font-size:0.92em"
STYLE_FOOTER = "opacity:0.6;font-size:0.85em;margin-top:0.35em"
STYLE_TABLE = "border-collapse:collapse;font-size:0.9em;margin-top:0.4em"
STYLE_CELL = "border:1px solid rgba(128,128,128,0.35);padding:2px 6px;text-align:left;vertical-align:top"

#: ``escape(value)``: the notebook layer's one HTML escaping (:func:`.escaping.escape_html`), for any value.
escape = escape_html


def response_stats(source: Any) -> ResponseStats:
    """The typed statistics behind a view: ``source`` is a response (read with
    :func:`~midori_hf_nb.stats.stats_of`), its metadata dict, a :class:`~midori_hf_nb.stats.ResponseStats`
    or None. Values of the wrong type are dropped; metadata that is not a dict gives empty statistics,
    so a view of another agent's response never fails on its metadata."""
    if isinstance(source, ResponseStats):
        return source
    try:
        if source is None or isinstance(source, Mapping):
            return ResponseStats.from_metadata(source)
        return stats_of(source)
    except StatsError:
        return ResponseStats()


def compact_json(value: Any, limit: int = 400) -> str:
    """A short JSON (or ``str``) rendering of a value, cut at ``limit`` characters."""
    if value is None:
        return ""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=to_text)
        except (TypeError, ValueError):
            text = to_text(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_footer(metadata: Any, *, interrupted: bool = False, seconds: float | None = None,
                  model: bool = False) -> str:
    """One line: tokens, seconds, tokens/s, finish reason and decoder (plain text: escape it to show
    it). Every surface that sums up an answer (the stream footer, the chat panel's status line)
    writes its numbers with this one function.

    ``metadata``: a response's metadata dict, a :class:`~midori_hf_nb.stats.ResponseStats` or None;
    it is read typed (:func:`response_stats`). ``seconds`` replaces the statistics' total seconds
    (the panel times the whole answer, loading included); ``model`` adds the model's name.
    """
    stats = response_stats(metadata)
    parts = []
    if stats.completion_tokens is not None:
        parts.append(f"{stats.completion_tokens} tokens")
    total = seconds if seconds is not None else stats.total_seconds
    if total is not None:
        parts.append(f"{total:.2f} s")
    if stats.tokens_per_second is not None:
        parts.append(f"{stats.tokens_per_second:.1f} tokens/s")
    if stats.finish_reason:
        parts.append(f"finish: {stats.finish_reason}" + (" (interrupted)" if interrupted else ""))
    if model and stats.model:
        parts.append(f"model: {stats.model}")
    decode = decode_label(stats)
    if decode:
        parts.append(decode)
    return " · ".join(parts)


def decode_label(metadata: Any) -> str:
    """Which decoder ran (the ``decode_path`` statistic): "decode: engine", or "decode: generate
    (reason)"; '' when the statistics do not say (plain text, not escaped). ``metadata``: as for
    :func:`format_footer`."""
    stats = response_stats(metadata)
    if not stats.decode_path:
        return ""
    reason = stats.decode_path_reason
    return f"decode: {stats.decode_path}" + (f" ({reason})" if reason else "")


def thinking_html(thinking: str, *, open_: bool = False, live: bool = False) -> str:
    """A collapsible, dimmed ``<details>`` block for reasoning text ('' when there is none); escaped."""
    thinking = to_text(thinking)
    if not thinking:
        return ""
    label = "Thinking…" if live else f"Thinking ({len(thinking)} characters)"
    return (f'<details class="midori-thinking"{" open" if open_ else ""}>'
            f'<summary style="{STYLE_SUMMARY}">{escape(label)}</summary>'
            f'<div style="{STYLE_THINKING}">{escape(thinking)}</div></details>')


def tool_call_rows(response: Any) -> list[dict[str, Any]]:
    """Tool calls of a response as dicts (executed steps first, then parsed calls not executed).

    Executed steps are the ``tool_steps`` statistic (:func:`response_stats`); parsed calls are
    ``response.tool_calls``. A call that is not a dict is shown by its text.
    """
    stats = response_stats(response)
    rows: list[dict[str, Any]] = []
    for step in stats.tool_steps or []:
        rows.append({"step": step.get("step"), "name": step.get("name"), "arguments": step.get("arguments"),
                     "id": step.get("id"), "result": step.get("result"), "error": step.get("error"),
                     "seconds": step.get("seconds"), "executed": True})
    pending_step = stats.steps or 1
    calls = getattr(response, "tool_calls", None)
    for call in calls if isinstance(calls, (list, tuple)) else []:
        if not isinstance(call, Mapping):
            call = {"name": to_text(call)}
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


def answer_html(answer: Any, *, markdown: bool = True) -> str:
    """The answer's ``<div class="midori-answer">``: rendered Markdown (:func:`~.markdown.render_markdown_html`)
    or, with ``markdown=False``, the escaped plain text."""
    if markdown:
        return f'<div class="midori-answer">{render_markdown_html(answer)}</div>'
    return f'<div class="midori-answer" style="{STYLE_ANSWER}">{escape(answer)}</div>'


def probs_shade(probs: Any, where: str = "probs") -> str | None:
    """The shading of a ``probs`` toggle: None (off), ``"probability"`` (True) or a mode of
    :data:`~.probs_view.SHADES`; ``ValueError`` naming ``where`` otherwise."""
    if probs is None or probs is False:
        return None
    if probs is True:
        return "probability"
    if probs in SHADES:
        return probs
    raise ValueError(f"{where}={probs!r} is not allowed: expected True, False or one of {', '.join(map(repr, SHADES))}")


def render_response_html(response: Any, *, title: str | None = None, show_thinking: bool = True,
                         markdown: bool = True, probs: Any = False, branchable: bool = False) -> str:
    """The HTML of a response: title, collapsible thinking, answer, code, tool-call table, footer.

    ``response``: any object with ``.response``, ``.thinking``, ``.tool_calls`` and ``.metadata``
    (``.code`` optional). The answer is rendered as safe Markdown (``markdown=False``: plain
    escaped text); every other value is escaped. ``probs`` (True, ``"probability"`` or
    ``"surprisal"``) shows the answer's tokens shaded by probability with their alternatives
    (:func:`~.probs_view.token_view`; ``branchable``: alternatives as buttons, for the chat panel).
    """
    shade = probs_shade(probs)
    parts = [f'<div class="midori-response {NO_MATH_CLASS}" style="{STYLE_BOX}">']
    if title:
        parts.append(f'<div style="{STYLE_SUMMARY}">{escape(title)}</div>')
    if show_thinking:
        parts.append(thinking_html(to_text(getattr(response, "thinking", ""))))
    if shade is not None:
        parts.append(token_view_html(response, shade=shade, branchable=branchable))
    else:
        parts.append(answer_html(getattr(response, "response", ""), markdown=markdown))
    code = getattr(response, "code", None)
    if code:
        parts.append(f'<pre class="midori-code">{escape(code)}</pre>')
    parts.append(tool_calls_html(tool_call_rows(response)))
    footer = format_footer(response_stats(response))
    if footer:
        parts.append(f'<div class="midori-footer" style="{STYLE_FOOTER}">{escape(footer)}</div>')
    parts.append("</div>")
    return "".join(parts)


def render_response_markdown(response: Any, *, show_thinking: bool = True) -> str:
    """The Markdown of a response (the same fields as :func:`render_response_html`).

    The answer keeps its own Markdown (code fences, indentation, lists; raw HTML, unsafe links and
    ``$`` neutralised, an open fence closed: :func:`~.markdown.markdown_for_export`). Other model
    text is HTML-escaped and Markdown-escaped line by line after every kind of line break
    (``\\r\\n``, a lone ``\\r``, ...) is normalised, and code is a fenced block longer than any
    backtick run in it (:func:`~.markdown.fenced_code`), so no line of model text can start raw HTML or markup.
    """
    lines: list[str] = []
    thinking = to_text(getattr(response, "thinking", ""))
    if show_thinking and thinking:
        lines += ["*Thinking*", "", "\n".join("> " + line for line in markdown_lines(thinking)), ""]
    answer = to_text(getattr(response, "response", ""))
    lines += [markdown_for_export(answer), ""] if answer else [""]
    code = getattr(response, "code", None)
    if code:
        lines += ["", fenced_code(code)]  # a fenced block at column 0 shows its text literally
    rows = tool_call_rows(response)
    if rows:
        lines += ["", "| step | tool | arguments | result | error |", "|---|---|---|---|---|"]
        for row in rows:
            result = compact_json(row.get("result")) if row.get("executed") else "(not executed)"
            cells = (row.get("step"), row.get("name"), compact_json(row.get("arguments")), result, row.get("error") or "")
            lines.append("| " + " | ".join(escape_markdown(c) for c in cells) + " |")
    footer = format_footer(response_stats(response))
    if footer:
        lines += ["", "*" + escape_markdown(footer) + "*"]
    return "\n".join(lines).rstrip("\n")


def render_response_text(response: Any) -> str:
    """Plain text: the answer, then the footer line."""
    footer = format_footer(response_stats(response))
    answer = to_text(getattr(response, "response", ""))
    return f"{answer}\n[{footer}]" if footer else answer


class ResponseView:
    """A thin display wrapper around an :class:`~midori_hf_nb.AgentResponse`.

    In a notebook, ``ResponseView(response)`` as a cell's last expression shows the answer,
    the thinking in a collapsed block and a table of tool calls. The wrapped response is
    ``.response``; attribute access falls through to it. ``probs=True`` (or ``"surprisal"``)
    shows the answer's tokens shaded by probability, with their alternatives on hover
    (:func:`~.probs_view.token_view`; the response must carry token probabilities).
    """

    def __init__(self, response: Any, *, title: str | None = None, show_thinking: bool = True,
                 markdown: bool = True, probs: Any = False) -> None:
        self.response = response
        self.title = title
        self.show_thinking = show_thinking
        self.markdown = markdown
        probs_shade(probs)
        self.probs = probs

    def __getattr__(self, name: str) -> Any:
        return getattr(self.response, name)

    def _repr_html_(self) -> str:
        return render_response_html(self.response, title=self.title, show_thinking=self.show_thinking,
                                    markdown=self.markdown, probs=self.probs)

    def _repr_markdown_(self) -> str:
        return render_response_markdown(self.response, show_thinking=self.show_thinking)

    def __repr__(self) -> str:
        return render_response_text(self.response)


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
    "answer_html",
    "compact_json",
    "decode_label",
    "escape",
    "escape_markdown",
    "format_footer",
    "probs_shade",
    "register_formatters",
    "render_response_html",
    "render_response_markdown",
    "render_response_text",
    "response_stats",
    "thinking_html",
    "tool_call_rows",
    "tool_calls_html",
    "unregister_formatters",
]
