"""The Midori AI agent protocol: data models and the abstract agent interface.

When the real ``midori_ai_agent_base`` package is importable its classes are used,
so ``isinstance`` checks hold across backends; otherwise the same classes are
defined here, field for field.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Literal

EffortLevel = Literal["none", "minimal", "low", "medium", "high"]
SummaryMode = Literal["auto", "concise", "detailed"]

try:  # pragma: no cover - exercised only where the base package is installed
    from midori_ai_agent_base.models import (  # type: ignore[import-not-found]
        AgentPayload,
        AgentResponse,
        MemoryEntryData,
        ReasoningEffort,
    )
    from midori_ai_agent_base.protocol import MidoriAiAgentProtocol  # type: ignore[import-not-found]

    USING_MIDORI_AI_AGENT_BASE = True
except ImportError:
    USING_MIDORI_AI_AGENT_BASE = False

    @dataclass
    class MemoryEntryData:
        """One turn of conversation memory.

        ``tool_calls`` items are dicts with ``name`` and ``arguments`` and may carry a ``result``.
        """

        role: str
        content: str
        timestamp: float | None = None
        tool_calls: list[dict] | None = None
        metadata: dict | None = None

    @dataclass
    class ReasoningEffort:
        """How much a reasoning model should think, and whether to summarise it."""

        effort: EffortLevel = "low"
        generate_summary: SummaryMode | None = None
        summary: SummaryMode | None = None

    @dataclass
    class AgentPayload:
        """Everything an agent needs for one request."""

        user_message: str
        thinking_blob: str
        system_context: str
        user_profile: dict
        tools_available: list[str]
        session_id: str
        metadata: dict | None = None
        reasoning_effort: ReasoningEffort | None = None
        memory: list[MemoryEntryData] | None = None

    @dataclass
    class AgentResponse:
        """What an agent returns: the answer, its reasoning, code and tool calls."""

        thinking: str
        response: str
        code: str | None = None
        tool_calls: list[dict] | None = None
        metadata: dict | None = None

    class MidoriAiAgentProtocol(abc.ABC):
        """The interface every Midori AI agent backend implements."""

        @abc.abstractmethod
        async def invoke(self, payload: AgentPayload) -> AgentResponse:
            """Answer one payload."""

        @abc.abstractmethod
        async def invoke_with_tools(self, payload: AgentPayload, tools: list[Any]) -> AgentResponse:
            """Answer one payload with tools offered to the model (calls are parsed, not executed)."""

        @abc.abstractmethod
        async def get_context_window(self) -> int:
            """The maximum number of tokens of prompt plus answer."""

        @abc.abstractmethod
        async def supports_streaming(self) -> bool:
            """Whether :meth:`stream` is available."""


def make_payload(user_message: str, system_context: str = "", *, memory: list | None = None,
                 session_id: str = "default", **fields: Any) -> AgentPayload:
    """An :class:`AgentPayload` with sensible defaults for the fields a quick call does not need."""
    return AgentPayload(
        user_message=user_message,
        thinking_blob=fields.pop("thinking_blob", ""),
        system_context=system_context,
        user_profile=fields.pop("user_profile", {}),
        tools_available=fields.pop("tools_available", []),
        session_id=session_id,
        memory=memory,
        **fields,
    )


__all__ = [
    "AgentPayload",
    "AgentResponse",
    "MemoryEntryData",
    "MidoriAiAgentProtocol",
    "ReasoningEffort",
    "USING_MIDORI_AI_AGENT_BASE",
    "make_payload",
]
