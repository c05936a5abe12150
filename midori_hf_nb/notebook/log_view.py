"""Views of the call log (:mod:`midori_hf_nb.log`) in a notebook, every value escaped.

* :func:`log_view`: a DataFrame of logged calls as a styled table (each cell through the
  notebook layer's one escaping helper, long text wrapped);
* :func:`conversation_view`: a logged conversation rebuilt (:func:`midori_hf_nb.log.transcript`)
  as the chat panel shows a transcript, with how to continue it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .compare_view import cell_html, css_length
from .display import STYLE_FOOTER, escape

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from pandas.io.formats.style import Styler

#: columns shown wrapped at the view's width
TEXT_COLUMNS = ("prompt", "response", "system", "reasoning", "error", "notebook")


def log_view(frame: "pd.DataFrame", *, width: str = "28em") -> "Styler":
    """A frame of :func:`midori_hf_nb.log.logs` as a styled table: every cell and header escaped
    (:func:`~.compare_view.cell_html`), text columns wrapped at ``width`` (a CSS length)."""
    width = css_length("log_view", "width", width)
    styler = frame.style.format(formatter=cell_html).format_index(formatter=cell_html, axis=1) \
        .hide(axis="index").set_table_styles([
            {"selector": "td", "props": "vertical-align: top; text-align: left; padding: 3px 8px;"},
            {"selector": "th", "props": "vertical-align: bottom; text-align: left; padding: 3px 8px;"},
        ])
    text = [c for c in frame.columns if c in TEXT_COLUMNS]
    if text:
        styler = styler.set_properties(subset=text, **{"white-space": "pre-wrap", "word-break": "break-word",
                                                       "max-width": width, "min-width": "8em"})
    return styler


def conversation_html(conversation: Any) -> str:
    """A :class:`~midori_hf_nb.log.LoggedConversation` as HTML (escaped): a heading, the
    transcript as the chat panel renders it, and how to continue it."""
    from .chat.render import render_transcript_html

    title = conversation.name or conversation.id
    head = (f'<div style="{STYLE_FOOTER}">Conversation {escape(title)}'
            + (f" · {escape(conversation.model)}" if conversation.model else "")
            + f" · {len(conversation.response_ids)} logged call(s) · id {escape(conversation.id)}</div>")
    hint = (f'<div style="{STYLE_FOOTER}">Continue it: <code>ChatPanel(agent, conversation='
            f'&quot;{escape(conversation.id)}&quot;)</code></div>')
    return f'<div class="midori-log-conversation">{head}{render_transcript_html(conversation.memory)}{hint}</div>'


class ConversationView:
    """Displays a logged conversation (rich HTML in a notebook, plain text elsewhere)."""

    def __init__(self, conversation: Any) -> None:
        self.conversation = conversation

    def _repr_html_(self) -> str:
        return conversation_html(self.conversation)

    def __repr__(self) -> str:
        return self.conversation.text()


def conversation_view(conversation: Any, *, path: Any = None) -> ConversationView:
    """A view of a logged conversation: a :class:`~midori_hf_nb.log.LoggedConversation`, or its id or name."""
    if isinstance(conversation, str):
        from ..log import transcript

        conversation = transcript(conversation, path=path)
    return ConversationView(conversation)


__all__ = ["ConversationView", "TEXT_COLUMNS", "conversation_html", "conversation_view", "log_view"]
