"""Which part of the transcript the chat panel shows, and the conversation Clear removed (for Undo).

The panel shows the last :data:`PAGE_SIZE` messages and a "Show earlier" button for more, so the
HTML sent to the browser stays bounded however long the conversation grows (the whole
conversation stays in :attr:`~.panel.ChatPanel.memory` and in every export).
"""

from __future__ import annotations

from typing import Any

from ...protocol import MemoryEntryData
from .render import render_transcript_html

#: Messages the transcript shows at first; "Show earlier" shows this many more each time.
PAGE_SIZE = 100


class TranscriptPages:
    """The number of latest messages shown, and the messages the last Clear removed."""

    def __init__(self, page_size: int = PAGE_SIZE) -> None:
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size={page_size!r} is not allowed: expected a positive integer")
        self.page_size = page_size
        self.shown = page_size
        self.cleared: list[MemoryEntryData] | None = None
        #: show answers that carry token probabilities as their tokens (the panel's Probabilities toggle)
        self.probs = False

    def html(self, memory: list[MemoryEntryData], **view: Any) -> str:
        """The HTML of the shown messages (with a line counting the hidden ones; answers as their
        tokens while :attr:`probs` is on); ``view``: answers shown as text and versions (see
        :func:`~.render.render_transcript_html`)."""
        return render_transcript_html(memory, limit=self.shown, actions=True, probs=self.probs, **view)

    def hidden(self, memory: list[MemoryEntryData]) -> int:
        """How many earlier messages are not shown."""
        return max(0, len(memory) - self.shown)

    def show_more(self, memory: list[MemoryEntryData]) -> int:
        """Show :attr:`page_size` more earlier messages; returns how many are shown now."""
        if len(memory) > self.shown:
            self.shown = min(len(memory), self.shown + self.page_size)
        return min(self.shown, len(memory))

    def keep_cleared(self, memory: list[MemoryEntryData]) -> None:
        """Remember the messages Clear removes (an empty conversation keeps the earlier ones), and
        go back to the first page."""
        if memory:
            self.cleared = list(memory)
        self.shown = self.page_size

    def take_cleared(self) -> list[MemoryEntryData]:
        """The messages the last Clear removed, forgotten here; ``ValueError`` when there are none."""
        if self.cleared is None:
            raise ValueError("ChatPanel.undo_clear: there is no cleared conversation to bring back "
                             "(nothing was cleared, or a message was sent since)")
        restored, self.cleared = self.cleared, None
        return restored


__all__ = ["PAGE_SIZE", "TranscriptPages"]
