"""Typed stream events, shared by every agent's streams and the notebook layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: the kinds of :class:`StreamEvent`
EVENT_KINDS = ("thinking", "text", "tool_call", "tool_result", "done")


@dataclass
class StreamEvent:
    """A typed piece of a stream: ``kind`` is ``"text"``, ``"thinking"``, ``"tool_call"``,
    ``"tool_result"`` (tool loops only) or ``"done"``.

    ``text`` carries the piece; ``data`` the parsed call (``tool_call``), the executed step's
    record (``tool_result``) or the final :class:`AgentResponse` (``done``).
    """

    kind: str
    text: str = ""
    data: Any = None
