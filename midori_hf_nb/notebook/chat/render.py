"""HTML of the chat panel: messages, the transcript, the title, notices and the status line.

Everything shown comes from the model, the user, a transcript file or an exception, so every
piece of text is HTML-escaped here; an answer's body goes through
:func:`~midori_hf_nb.notebook.render_response_html`, which renders it as safe Markdown
(:mod:`~midori_hf_nb.notebook.markdown`: raw HTML off, safe links only, sanitised). Statistics are read
typed (:class:`~.transcript.TranscriptEntry`), never by metadata keys.

Each message carries its position (``data-midori-index``) and small buttons the input's browser
code acts on (``data-midori-action``): **Copy** (the message's own text: a user's message as typed,
an answer's Markdown source, kept in a hidden ``midori-chat-source`` element), **As text** / **As
Markdown** on answers, **Edit** on the user's messages, and ‹ › with "2/3" where an edit forked the
conversation. Every code block of an answer gets a **Copy** button of its own. The buttons are made
here, never from model text.
"""

from __future__ import annotations

import re
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

STYLE_SCHEMA = STYLE_BADGE + ";background:rgba(46,155,71,0.18);color:inherit"
STYLE_AS_TEXT = "white-space:pre-wrap;word-break:break-word;font-family:var(--jp-code-font-family,monospace);" \
                "font-size:0.92em"
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


def action_button(action: str, label: str, tooltip: str = "", **data: int) -> str:
    """A small button of a message (``data-midori-action`` and further ``data-midori-*`` numbers),
    styled by the input's stylesheet (:mod:`.composer`): many of them are sent with each page."""
    extra = "".join(f' data-midori-{name}="{int(value)}"' for name, value in data.items())
    title = f' title="{escape(tooltip)}"' if tooltip else ""
    return f'<button class="midori-chat-action" data-midori-action="{escape(action)}"{extra}{title}>{escape(label)}</button>'


#: The Copy button of a code block (its browser code copies the block's text).
CODE_COPY_BUTTON = '<button class="midori-chat-action midori-copy-code" data-midori-action="copy-code">Copy</button>'
_PRE_OPEN = re.compile(r"<pre\b")


def with_code_copy_buttons(html: str) -> str:
    """``html`` (an answer rendered by this package: sanitised, so every ``<pre`` in it is a code
    block it made) with a Copy button on each code block."""
    html = _PRE_OPEN.sub(f'<div class="midori-codeblock">{CODE_COPY_BUTTON}<pre', html)
    return html.replace("</pre>", "</pre></div>")


def branch_nav_html(index: int, version: tuple[int, int] | None) -> str:
    """‹ 2/3 › at a message where the conversation forked ('' where it did not)."""
    if version is None:
        return ""
    number, count = version
    return (action_button("branch", "‹", "The previous version of the conversation from here", index=index, step=-1)
            + f'<span class="midori-chat-version" style="margin-left:0.35em">{number}/{count}</span>'
            + action_button("branch", "›", "The next version of the conversation from here", index=index, step=1))


def render_typed_entry_html(entry: TranscriptEntry, *, index: int | None = None, as_text: bool = False,
                            version: tuple[int, int] | None = None, probs: bool = False) -> str:
    """One typed message as HTML; all text is escaped. The role line shows when a message was
    sent (an answer: when it ended); with ``index`` (its position) it carries the message's buttons
    (Copy; As text on answers, Edit on the user's messages; ‹ › and ``version`` = (n, of) where the
    conversation forked). ``as_text`` shows an answer's own text instead of its rendered Markdown.
    With ``probs``, an answer that carries token probabilities is shown as its tokens, alternatives
    as buttons (a click on one names the answer by ``index``)."""
    what = "answer ended" if entry.is_answer else "sent"
    label = escape(role_label(entry.role)) + render_time_html(entry.timestamp, what)
    position = f' data-midori-index="{index}"' if index is not None else ""
    actions = ""
    if index is not None:
        actions = branch_nav_html(index, version)
        if entry.role == "user":
            actions += action_button("edit", "Edit", index=index)
        if entry.is_answer:
            actions += action_button("as-text", "As Markdown" if as_text else "As text", index=index)
        actions += action_button("copy", "Copy", index=index)
        actions = f'<span class="midori-chat-actions">{actions}</span>'
    if not entry.is_answer:
        style = STYLE_USER if entry.role == "user" else STYLE_ASSISTANT
        return (f'<div class="{_role_class(entry.role)}"{position} style="{style}">'
                f'<div style="{STYLE_ROLE}">{actions}{label}</div>'
                f'<div class="midori-chat-text" style="{STYLE_TEXT}">{escape(entry.content)}</div></div>')
    badges = ""
    if entry.schema:
        badges += (f'<span class="midori-chat-schema" title="{escape("Constrained to the response format: " + entry.schema)}"'
                   f' style="{STYLE_SCHEMA}">schema</span>')
    if entry.stopped:
        badges += f'<span class="midori-chat-stopped" style="{STYLE_STOPPED}">stopped</span>'
    if entry.error:
        badges += f'<span class="midori-chat-failed" style="{STYLE_FAILED}">failed</span>'
    body = ""
    response = entry.as_response() if entry.has_body else None
    tokens = probs and response is not None and has_logprobs(response)
    if tokens:
        body = render_response_html(response, probs=True, branchable=index is not None)
    elif response is not None:
        body = render_response_html(response, markdown=not as_text)
        if as_text:
            body = f'<div class="midori-as-text" style="{STYLE_AS_TEXT}">{body}</div>'
        elif index is not None:  # the panel's transcript: each code block gets its Copy button
            body = with_code_copy_buttons(body)
    error = ""
    if entry.error:
        error = f'<div class="midori-chat-error" style="{STYLE_ERROR}">{escape(entry.error)}\n{RETRY_HINT}</div>'
    source = f'<pre class="midori-chat-source" hidden>{escape(entry.content)}</pre>' if index is not None else ""
    answer = f' data-answer="{int(index)}"' if index is not None and tokens else ""
    return (f'<div class="midori-chat-assistant"{position}{answer} style="{STYLE_ASSISTANT}">'
            f'<div style="{STYLE_ROLE}">{actions}{label}{badges}</div>{body}{error}{source}</div>')


def render_entry_html(entry: MemoryEntryData, **view: object) -> str:
    """One message of the transcript as HTML; all text is escaped (``view``: see :func:`render_typed_entry_html`)."""
    return render_typed_entry_html(TranscriptEntry.from_memory(entry), **view)  # type: ignore[arg-type]


def render_transcript_html(entries: list[MemoryEntryData], *, limit: int | None = None,
                           as_text: frozenset[int] = frozenset(),
                           versions: dict[int, tuple[int, int]] | None = None, actions: bool = False,
                           probs: bool = False) -> str:
    """The transcript as HTML, or only its last ``limit`` messages with a line saying how many
    earlier ones are not shown (a placeholder line when it is empty). With ``actions`` (the live
    panel) messages carry their buttons; without (a static copy) they do not. ``as_text`` holds the
    positions of answers shown as text, ``versions`` the "n of m" of positions where the
    conversation forked; ``probs`` shows answers as their tokens (see :func:`render_typed_entry_html`)."""
    if not entries:
        return (f'<div class="midori-chat-empty" style="{STYLE_BOX};{STYLE_FOOTER}">'
                "No messages yet: type below and press Send.</div>")
    hidden = max(0, len(entries) - limit) if limit is not None else 0
    note = ""
    if hidden:
        note = (f'<div class="midori-chat-hidden" style="{STYLE_FOOTER}">{hidden} earlier message'
                f'{"s" if hidden != 1 else ""} not shown (Show earlier; Export writes them all)</div>')
    versions = versions or {}
    rows = [render_entry_html(e, index=i, as_text=i in as_text, version=versions.get(i), probs=probs) if actions
            else render_entry_html(e, probs=probs) for i, e in enumerate(entries) if i >= hidden]
    return f'<div class="midori-chat-transcript" style="{STYLE_BOX}">{note}' + "".join(rows) + "</div>"


def render_queue_html(queued: list[str]) -> str:
    """The messages sent while an answer runs, each with a button that takes it back into the box; '' for none."""
    if not queued:
        return ""
    rows = "".join(
        f'<div class="midori-chat-queued" style="{STYLE_INFO}"><b>Queued {n + 1}:</b> {escape(text)}'
        + action_button("unqueue", "Back to the box", "Take this message out of the queue and back into the box",
                        position=n) + "</div>"
        for n, text in enumerate(queued))
    return (f'<div class="midori-chat-queue" style="{STYLE_FOOTER}">Sent in order when the answer ends '
            f'(Esc stops the answer; the queue goes on):</div>{rows}')


def render_live_html(body: str) -> str:
    """The answer being generated (``body``: the live view's HTML) under the "Assistant" label."""
    if not body:
        return ""
    return (f'<div class="midori-chat-live" style="{STYLE_ASSISTANT}">'
            f'<div style="{STYLE_ROLE}">{escape(role_label("assistant"))}</div>{body}</div>')


def render_title_html(model: str, tooltip: str = "") -> str:
    """The panel's heading: "Chat · <model>" (escaped), ``tooltip`` (e.g. the model's full id) on hover."""
    title = f' title="{escape(tooltip)}"' if tooltip else ""
    return f'<div class="midori-chat-title" style="{STYLE_ROLE}"{title}>Chat · {escape(model)}</div>'


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


def final_status_text(entry: TranscriptEntry, *, ignored: tuple[str, ...] = (), model: str | None = None) -> str:
    """The status after an answer: outcome, tokens, tokens/s, seconds, finish reason, model (``model``:
    its short name, else the one the statistics report), decode path, and the settings the agent
    did not take (``ignored``)."""
    if entry.error:
        return f"error: {entry.error}"
    parts = ["stopped" if entry.stopped else "done"]
    stats = entry.stats.replace(model=model) if model else entry.stats
    summary = format_footer(stats, seconds=entry.seconds, model=True)
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
    "render_queue_html",
    "with_code_copy_buttons",
    "action_button",
    "render_status_html",
    "render_time_html",
    "render_title_html",
    "render_transcript_html",
    "render_typed_entry_html",
]
