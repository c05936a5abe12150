"""The chat panel's conversation written out and read back: DataFrame, JSON document (branches
included), Markdown (the other versions after the conversation shown) and the files of Export."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...protocol import MemoryEntryData
from .branches import Branch, flatten
from .document import read_document, write_document
from .export import ChatExport, write_export
from .generation import agent_model
from .transcript import render_transcript_markdown, transcript_frame


class PanelSaving:
    """Exports and import of :class:`~.panel.ChatPanel` (a mixin: it uses ``memory``, ``branches``,
    ``agent``, ``session_id`` and the panel's settings)."""

    memory: list[MemoryEntryData]
    branches: list[Branch]
    agent: Any
    session_id: str

    def to_frame(self):
        """The conversation shown as a DataFrame (see :func:`~.transcript.transcript_frame`)."""
        return transcript_frame(self.memory)

    def to_json(self, indent: int | None = 2) -> str:
        """The conversation, its branches and the settings as JSON text (see :mod:`.document`);
        :meth:`from_json` loads it."""
        return write_document(self.memory, self.settings(), model=agent_model(self.agent),  # type: ignore[attr-defined]
                              session_id=self.session_id, indent=indent, branches=self.branches)

    @classmethod
    def from_json(cls, agent: Any, text: str, **options: Any) -> Any:
        """A new panel on ``agent`` continuing the conversation saved by :meth:`to_json` (its branches too).

        Checks every message and setting (:func:`~.document.read_document`, the current format and
        versions 1 and 2). The saved settings and session id apply unless given in ``options``.
        """
        document = read_document(text)
        for key, value in document.settings.items():
            options.setdefault(key, value)
        if document.session_id is not None:
            options.setdefault("session_id", document.session_id)
        panel = cls(agent, memory=document.memory, **options)
        panel.branches[:] = document.branches
        panel.refresh()
        return panel

    def to_markdown(self, title: str | None = "Chat") -> str:
        """The conversation as Markdown (everything from the transcript escaped), then each other
        version of it under "Branch from message N"."""
        text = render_transcript_markdown(self.memory, title=title)
        for branch in flatten(self.branches):
            text += "\n" + render_transcript_markdown(
                branch.messages, title=f"Branch from message {branch.at + 1} (before an edit)", level=2)
        return text

    def export_clicked(self) -> None:
        """The Export button: write the files and say where (or why not)."""
        try:
            self.show_exported(self.export())  # type: ignore[attr-defined]
        except (OSError, ValueError) as exc:
            self.show_notice(f"Export failed: {exc}")  # type: ignore[attr-defined]

    def export(self, folder: str | os.PathLike[str] | None = None, *, stem: str | None = None) -> ChatExport:
        """Write :meth:`to_json` and :meth:`to_markdown` into ``folder`` (default: the working
        directory, the notebook's folder in Jupyter) as ``<stem>.json`` and ``<stem>.md``, never
        overwriting a file (see :func:`~.export.write_export`)."""
        return write_export(Path.cwd() if folder is None else Path(folder), stem,
                            {".json": self.to_json(), ".md": self.to_markdown()}, messages=len(self.memory))


__all__ = ["PanelSaving"]
