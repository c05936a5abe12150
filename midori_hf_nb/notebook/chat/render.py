"""HTML of the chat panel: messages, the transcript, the title, notices and the status line.

Everything shown comes from the model, the user, a transcript file or an exception, so every
piece of text is HTML-escaped here; an answer's body goes through
:func:`~midori_hf_nb.notebook.render_response_html`, which renders it as safe Markdown
(:mod:`~midori_hf_nb.notebook.markdown`: raw HTML off, safe links only, sanitised). Statistics are read
typed (:class:`~.transcript.TranscriptEntry`), never by metadata keys.
"""

from __future__ import annotations

import time

from ...protocol import MemoryEntryData
from ..display import STYLE_BOX, STYLE_FOOTER, escape, format_footer, render_response_html
from ..probs_view import has_logprobs
from .transcript import ROLES, TranscriptEntry, role_label

STYLE_MESSAGE = "margin:0.35em 0;padding:0.35em 0.6em;border-radius:6px;line-height:1.45"
STYLE_USER = STYLE_MESSAGE + ";background:rgba(70,130,180,0.12)"
STYLE_ASSISTANT = STYLE_MESSAGE + ";background:rgba(128,128,128,0.08)"
STYLE_ROLE = "font-size:0.8em;font-weight:600;opacity:0.7;margin-bottom:0.15em"
STYLE_TEXT = "white-space:pre-wrap;word-break:break-word"
STYLE_ERROR = ("white-space:pre-wrap;word-break:break-word;color:#b00020;background:rgba(176,0,32,0.07);"
               "border-left:3px solid #b00020;padding:0.2em 0.5em;margin-top:0.3em")
STYLE_BADGE = "font-size:0.75em;font-weight:600;padding:0 0.4em;border-radius:3px;margin-left:0.5em"
STYLE_STOPPED = STYLE_BADGE + ";background:rgba(230,140,0,0.2);color:#8a5200"
STYLE_FAILED = STYLE_BADGE + ";background:rgba(176,0,32,0.15);color:#b00020"

STYLE_TIME = "font-weight:400;margin-left:0.5em;opacity:0.85"
STYLE_INFO = "white-space:pre-wrap;word-break:break-word;font-size:0.85em;padding:0.2em 0.5em;opacity:0.85"

#: Shown under a failed answer.
RETRY_HINT = "The transcript is kept; fix the cause and press Regenerate to retry."


def _role_class(role: str) -> str:
    return f"midori-chat-{role if role in ROLES else 'other'}"


def render_time_html(timestamp: float | None, what: str) -> str:
    """A message's time ("14:03:12", the date and ``what`` in its tooltip); '' without one."""
    if timestamp is None:
        return ""
    local = time.localtime(timestamp)
    full = f"{what} {time.strftime('%Y-%m-%d %H:%M:%S', local)}"
    return (f'<span class="midori-chat-time" title="{escape(full)}" style="{STYLE_TIME}">'
            f"{time.strftime('%H:%M:%S', local)}</span>")


def render_typed_entry_html(entry: TranscriptEntry, *, probs: bool = False, index: int | None = None) -> str:
    """One typed message as HTML; all text is escaped. The role line shows when a message was
    sent (an answer: when it ended). With ``probs``, an answer that carries token probabilities
    is shown as its tokens, alternatives as buttons (``index``: its place in the conversation,
    which a click on one names)."""
    what = "answer ended" if entry.is_answer else "sent"
    label = escape(role_label(entry.role)) + render_time_html(entry.timestamp, what)
    if not entry.is_answer:
        style = STYLE_USER if entry.role == "user" else STYLE_ASSISTANT
        return (f'<div class="{_role_class(entry.role)}" style="{style}">'
                f'<div style="{STYLE_ROLE}">{label}</div>'
                f'<div class="midori-chat-text" style="{STYLE_TEXT}">{escape(entry.content)}</div></div>')
    badges = ""
    if entry.stopped:
        badges += f'<span class="midori-chat-stopped" style="{STYLE_STOPPED}">stopped</span>'
    if entry.error:
        badges += f'<span class="midori-chat-failed" style="{STYLE_FAILED}">failed</span>'
    response = entry.as_response()
    tokens = probs and has_logprobs(response)
    body = render_response_html(response, probs=tokens, branchable=tokens) if entry.has_body else ""
    error = ""
    if entry.error:
        error = f'<div class="midori-chat-error" style="{STYLE_ERROR}">{escape(entry.error)}\n{RETRY_HINT}</div>'
    answer = f' data-answer="{int(index)}"' if index is not None and tokens else ""
    return (f'<div class="midori-chat-assistant"{answer} style="{STYLE_ASSISTANT}">'
            f'<div style="{STYLE_ROLE}">{label}{badges}</div>{body}{error}</div>')


def render_entry_html(entry: MemoryEntryData, *, probs: bool = False, index: int | None = None) -> str:
    """One message of the transcript as HTML; all text is escaped (``probs``, ``index``: see
    :func:`render_typed_entry_html`)."""
    return render_typed_entry_html(TranscriptEntry.from_memory(entry), probs=probs, index=index)


def render_transcript_html(entries: list[MemoryEntryData], *, limit: int | None = None, probs: bool = False) -> str:
    """The transcript as HTML, or only its last ``limit`` messages with a line saying how many
    earlier ones are not shown (a placeholder line when it is empty); ``probs`` shows answers as
    their tokens (see :func:`render_typed_entry_html`)."""
    if not entries:
        return (f'<div class="midori-chat-empty" style="{STYLE_BOX};{STYLE_FOOTER}">'
                "No messages yet: type below and press Send.</div>")
    hidden = max(0, len(entries) - limit) if limit is not None else 0
    note = ""
    if hidden:
        note = (f'<div class="midori-chat-hidden" style="{STYLE_FOOTER}">{hidden} earlier message'
                f'{"s" if hidden != 1 else ""} not shown (Show earlier; Export writes them all)</div>')
    return (f'<div class="midori-chat-transcript" style="{STYLE_BOX}">{note}'
            + "".join(render_entry_html(e, probs=probs, index=hidden + i) for i, e in enumerate(entries[hidden:]))
            + "</div>")


def render_live_html(body: str) -> str:
    """The answer being generated (``body``: the live view's HTML) under the "Assistant" label."""
    if not body:
        return ""
    return (f'<div class="midori-chat-live" style="{STYLE_ASSISTANT}">'
            f'<div style="{STYLE_ROLE}">{escape(role_label("assistant"))}</div>{body}</div>')


def render_title_html(model: str) -> str:
    """The panel's heading: "Chat · <model>" (escaped)."""
    return f'<div style="{STYLE_ROLE}">Chat · {escape(model)}</div>'


def render_notice_html(text: str) -> str:
    """A notice above the input (refused sends, invalid settings); '' for no notice."""
    return f'<div style="{STYLE_ERROR}">{escape(text)}</div>' if text else ""


def render_info_html(text: str) -> str:
    """A note above the input that is not an error (where an export was written); '' for none."""
    return f'<div class="midori-chat-info" style="{STYLE_INFO}">{escape(text)}</div>' if text else ""


def render_status_html(text: str) -> str:
    """The status line under the buttons."""
    return f'<div class="midori-chat-status" style="{STYLE_FOOTER}">{escape(text)}</div>'


# --------------------------------------------------------------------------- status text (plain)


def live_status_text(tokens: int | None, elapsed: float) -> str:
    """The status while an answer streams: tokens and tokens/s (when countable) and seconds."""
    parts = ["generating…"]
    if tokens is not None:
        parts.append(f"{tokens} tokens")
        if elapsed > 0:
            parts.append(f"{tokens / elapsed:.1f} tokens/s")
    parts.append(f"{elapsed:.1f} s")
    return " · ".join(parts)


def final_status_text(entry: TranscriptEntry, *, ignored: tuple[str, ...] = ()) -> str:
    """The status after an answer: outcome, tokens, tokens/s, seconds, finish reason, model,
    decode path, and the settings the agent did not take (``ignored``)."""
    if entry.error:
        return f"error: {entry.error}"
    parts = ["stopped" if entry.stopped else "done"]
    summary = format_footer(entry.stats, seconds=entry.seconds, model=True)
    if summary:
        parts.append(summary)
    if ignored:
        parts.append(f"not taken by the agent: {', '.join(ignored)}")
    return " · ".join(parts)


__all__ = [
    "RETRY_HINT",
    "final_status_text",
    "live_status_text",
    "render_entry_html",
    "render_info_html",
    "render_live_html",
    "render_notice_html",
    "render_status_html",
    "render_time_html",
    "render_title_html",
    "render_transcript_html",
    "render_typed_entry_html",
]
