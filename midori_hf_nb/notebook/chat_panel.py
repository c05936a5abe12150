"""The chat panel, by its former module name: everything lives in :mod:`midori_hf_nb.notebook.chat`.

``from midori_hf_nb.notebook.chat_panel import ChatPanel`` keeps working; new code imports from
:mod:`midori_hf_nb.notebook` or :mod:`midori_hf_nb.notebook.chat`.
"""

from __future__ import annotations

from .chat import ChatPanel
from .chat.document import JSON_FORMAT, JSON_VERSION, SETTINGS_KEYS, entry_from_json, entry_to_json
from .chat.render import render_entry_html, render_transcript_html
from .chat.transcript import ROLE_LABELS, entry_to_dict, payload_memory, render_transcript_markdown

__all__ = [
    "ChatPanel",
    "JSON_FORMAT",
    "JSON_VERSION",
    "ROLE_LABELS",
    "SETTINGS_KEYS",
    "entry_from_json",
    "entry_to_dict",
    "entry_to_json",
    "payload_memory",
    "render_entry_html",
    "render_transcript_html",
    "render_transcript_markdown",
]
