"""Chat panels that outlive their kernel: a conversation in the call log, and a saved copy of it
in the notebook.

**The conversation.** Each panel belongs to one conversation of the call log
(:mod:`midori_hf_nb.log`): its answers are recorded with the conversation's id (and name), the
``chat_panel`` surface, and the notebook, cell and execution count where the panel was created.
``ChatPanel(agent, conversation=ID_or_name)`` continues a logged conversation, after a kernel
restart or in another notebook: the transcript is rebuilt from the log
(:func:`midori_hf_nb.log.transcript`). A name the log does not know starts a new conversation with
that name; an id it does not know is an error.

**The saved copy.** A widget lives in the kernel: once the kernel has stopped, a reopened notebook
can only say "Error displaying widget". So when a panel is displayed, a second output follows the
widget: the conversation as static, escaped HTML (the transcript as the panel renders it) with a
note on how to continue it. It is updated after every answer, Clear and Undo clear, and saved
with the notebook. While the panel runs, a small rule hides the copy (the output area holds the
live panel); without it, the copy shows and the widget's placeholder line ("Loading widget...",
"Error displaying widget") is hidden. The rule
is a ``<style>`` element inside the copy, with selectors scoped to that one output area; a
front end that strips it (an untrusted notebook) shows the copy under the error line instead.
"""

from __future__ import annotations

import contextvars
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from ...log.context import current_context, set_context
from ...log.control import check_log_option, resolve_target, state
from ...log.record import new_id
from ...protocol import MemoryEntryData
from ..display import STYLE_FOOTER, escape
from ..log_origin import cell_origin
from .render import render_transcript_html

#: what a log id looks like (a ULID): such a conversation is never created by name
ID_PATTERN = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
#: the most messages the saved copy holds (the latest ones; the call log keeps them all)
STATIC_MESSAGES = 100


@dataclass
class PanelConversation:
    """The conversation of a panel in the call log.

    ``id``: the conversation id; ``name``: its name (None: unnamed); ``origin``: the cell the
    panel was created in; ``log``: the panel's ``log=`` option; ``resumed``: the messages taken
    from the log when the panel was created.
    """

    id: str
    name: str | None = None
    origin: dict[str, Any] | None = None
    log: Any = None
    resumed: int = 0
    #: display handles of the saved copies (one per time the panel was displayed)
    handles: list[Any] = field(default_factory=list)


def open_conversation(agent: Any, conversation: str | None, memory: list[MemoryEntryData] | None,
                      log: Any) -> tuple[PanelConversation, list[MemoryEntryData] | None]:
    """The panel's conversation, and the memory to start from (the logged transcript when
    ``conversation`` names a logged one). Raises ``ValueError`` for options that are not allowed
    and :class:`~midori_hf_nb.log.ConversationNotFound` for an id the log does not know."""
    log = check_log_option(log, "ChatPanel(log=...)")
    origin = cell_origin()
    if conversation is None:
        return PanelConversation(id=new_id(), origin=origin, log=log), memory
    if not isinstance(conversation, str) or not conversation.strip() or len(conversation) > 1000:
        raise ValueError(f"ChatPanel(conversation={conversation!r:.80}) is not allowed: expected the id or name of "
                         "a conversation (text of at most 1000 characters)")
    if memory is not None:
        raise ValueError("ChatPanel: give memory= or conversation=, not both (conversation= takes the memory "
                         "from the call log)")
    from ...log.rebuild import ConversationNotFound, transcript

    path = resolve_target(log, current_context().log, getattr(agent, "log", None)) or state().path
    try:
        found = transcript(conversation, path=path)
    except ConversationNotFound:
        if ID_PATTERN.fullmatch(conversation):
            raise ConversationNotFound(f"ChatPanel(conversation={conversation!r}): the call log at {path} has no "
                                       "conversation with this id; midori_hf_nb.log.conversations() lists them") \
                from None
        return PanelConversation(id=new_id(), name=conversation, origin=origin, log=log), None
    return PanelConversation(id=found.id, name=found.name, origin=origin, log=log,
                             resumed=len(found.memory)), found.memory


def conversation_context(conversation: PanelConversation) -> contextvars.Context:
    """A copy of the current context with the log context of a panel's calls (its answers run as
    tasks in it)."""
    context = contextvars.copy_context()
    context.run(set_context, surface="chat_panel", conversation_id=conversation.id,
                conversation_name=conversation.name, origin=conversation.origin, log=conversation.log)
    return context


def css_token(conversation_id: str) -> str:
    """A class-name token for a conversation id (any text): letters and digits only."""
    return "c" + hashlib.sha256(conversation_id.encode("utf-8", "replace")).hexdigest()[:20]


def _rules(cid: str) -> str:
    area = f".jp-OutputArea:has(.midori-chat-static-{cid})"
    return (f".jp-OutputArea:has(.midori-chat-panel-{cid}) .midori-chat-static-{cid},"
            f".output_area:has(.midori-chat-panel-{cid}) ~ .output_area .midori-chat-static-{cid}"
            "{display:none}"
            f"{area} .jp-OutputArea-output:not(:has(*))"  # a widget's text-only placeholder (:has cannot nest)
            "{display:none}")


def static_copy_html(conversation: PanelConversation, memory: list[MemoryEntryData], *, model: str,
                     recording: bool = True) -> str:
    """The saved copy of a panel's conversation (escaped; see the module docstring)."""
    cid, token = conversation.id, css_token(conversation.id)
    shown = memory[-STATIC_MESSAGES:]
    earlier = len(memory) - len(shown)
    label = f"{conversation.name} · " if conversation.name else ""
    how = (f'Continue it in a running kernel: <code>ChatPanel(agent, conversation="{escape(cid)}")</code>'
           if recording else "The call log was off for this panel: this copy is all that is kept.")
    head = (f'<div style="{STYLE_FOOTER}">Saved copy of a chat panel (read-only; the panel shows here while its '
            f"kernel runs) · {escape(label)}conversation {escape(cid)} · {escape(model)} · {len(memory)} messages"
            + (f" ({earlier} earlier ones in the call log)" if earlier else "") + f"<br>{how}</div>")
    return (f'<div class="midori-chat-static midori-chat-static-{token}" data-conversation="{escape(cid)}">'
            f"<style>{_rules(token)}</style>{head}{render_transcript_html(shown)}</div>")


def static_copy_text(conversation: PanelConversation, memory: list[MemoryEntryData]) -> str:
    """The saved copy as plain text (the ``text/plain`` of its output)."""
    lines = [f"Chat panel, conversation {conversation.id} ({len(memory)} messages)"]
    lines += [f"{entry.role}: {entry.content}" for entry in memory[-STATIC_MESSAGES:]]
    return "\n".join(lines)


class PersistentPanel:
    """What :class:`~.panel.ChatPanel` adds for panels that outlive their kernel (see the module);
    it uses the panel's ``agent``, ``memory`` and ``widget``."""

    conversation: PanelConversation
    memory: list[MemoryEntryData]
    agent: Any
    widget: Any

    def open_conversation(self, agent: Any, conversation: str | None, memory: list[MemoryEntryData] | None,
                          log: Any) -> list[MemoryEntryData] | None:
        """Set :attr:`conversation` (:func:`open_conversation`) and return the memory to start from."""
        self.conversation, memory = open_conversation(agent, conversation, memory, log)
        return memory

    def ready_text(self) -> str:
        """The status line of a new panel: "ready", or where a continued conversation came from."""
        found = self.conversation
        if not found.resumed:
            return "ready"
        return f"continuing conversation {found.name or found.id}: {found.resumed} messages from the call log"

    def log_context(self) -> contextvars.Context:
        """The context the panel's answers run in (the call log's fields of its calls)."""
        return conversation_context(self.conversation)

    def static_model(self) -> str:
        """The model named in the saved copy."""
        from .generation import agent_model

        return agent_model(self.agent)

    def show_history(self, html: str, *, hidden: int) -> None:
        """Show the transcript (:class:`~.layout.ChatLayout`), and bring the saved copies up to date."""
        super().show_history(html, hidden=hidden)  # type: ignore[misc]
        self.refresh_static_copy()

    def static_bundle(self) -> dict[str, str]:
        """The saved copy's mime bundle (``text/html`` and ``text/plain``)."""
        recording = resolve_target(self.conversation.log, current_context().log,
                                   getattr(getattr(self, "agent", None), "log", None)) is not None
        return {"text/html": static_copy_html(self.conversation, self.memory, model=self.static_model(),
                                              recording=recording),
                "text/plain": static_copy_text(self.conversation, self.memory)}

    def _ipython_display_(self) -> None:
        """Show the panel, then its saved copy (hidden while the panel runs)."""
        from IPython.display import display

        self.widget.add_class(f"midori-chat-panel-{css_token(self.conversation.id)}")
        display(self.widget._repr_mimebundle_(), raw=True)
        self.conversation.handles.append(display(self.static_bundle(), raw=True, display_id=True))

    def refresh_static_copy(self) -> None:
        """Bring every displayed saved copy up to date with the conversation."""
        if not self.conversation.handles:
            return
        bundle = self.static_bundle()
        for handle in self.conversation.handles:
            handle.update(bundle, raw=True)


__all__ = ["ID_PATTERN", "css_token", "PanelConversation", "PersistentPanel", "STATIC_MESSAGES", "conversation_context",
           "open_conversation", "static_copy_html", "static_copy_text"]
