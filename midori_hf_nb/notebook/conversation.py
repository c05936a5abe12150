"""Conversation memory across cells: a list of turns sent with each payload.

``Conversation`` records user and assistant turns as :class:`~midori_hf_nb.MemoryEntryData`,
builds payloads that carry them as ``memory``, and turns them into a DataFrame. The agent's
prompt builder drops the oldest turns first when they do not fit the context window. It works
with any Midori protocol agent.

An answer's turn keeps the response's statistics under their own names (read typed with
:func:`~midori_hf_nb.stats.stats_of`, nothing renamed): ``completion_tokens``,
``total_seconds``, ``tokens_per_second`` and ``finish_reason`` in the turn's ``metadata``. A
turn added by hand (:meth:`Conversation.add`) carries its own ``tokens`` and ``seconds``.

Timestamps: a user turn is stamped when its message was sent, an answer when it ended, so
:meth:`Conversation.frame` (and ``%midori history``) show both moments of each exchange.
"""

from __future__ import annotations

import time
from typing import Any

from ..protocol import AgentPayload, AgentResponse, MemoryEntryData
from ..stats import ResponseStats, StatsError, stats_of

ROLES = ("user", "assistant", "system", "tool")
#: The response statistics an answer's turn keeps (under these, their own names).
TURN_STATISTICS = ("completion_tokens", "total_seconds", "tokens_per_second", "finish_reason")


class Conversation:
    """Turns of one conversation, oldest first.

    Args:
        session_id: the ``session_id`` of the payloads it builds.
        max_turns: keep at most this many turns (oldest dropped first); None keeps all.
    """

    def __init__(self, session_id: str = "notebook", max_turns: int | None = None) -> None:
        if max_turns is not None and (isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1):
            raise ValueError(f"Conversation(max_turns={max_turns!r}) is not allowed: expected a positive integer or None")
        self.session_id = session_id
        self.max_turns = max_turns
        self.entries: list[MemoryEntryData] = []

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"Conversation({len(self.entries)} turns, session_id={self.session_id!r})"

    def add(self, role: str, content: str, *, tokens: int | None = None, seconds: float | None = None,
            finish_reason: str | None = None, tool_calls: list[dict] | None = None,
            stats: ResponseStats | None = None, timestamp: float | None = None) -> MemoryEntryData:
        """Append one turn and return it.

        ``timestamp``: when the turn happened, in seconds since the epoch (default: now) — a user
        turn when its message was sent, an answer when it ended.

        ``tokens``, ``seconds`` and ``finish_reason`` describe a turn written by hand (``tokens`` of a
        user turn is its message's token count); ``stats`` are an answer's response statistics, of
        which the turn keeps :data:`TURN_STATISTICS` under their own names.
        """
        if role not in ROLES:
            raise ValueError(f"Conversation.add(role={role!r}) is not allowed: expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"Conversation.add(content=...) expects a string, got {type(content).__name__}")
        if stats is not None and not isinstance(stats, ResponseStats):
            raise ValueError(f"Conversation.add(stats={type(stats).__name__}) is not allowed: expected ResponseStats "
                             "(midori_hf_nb.stats.stats_of(response)) or None")
        if timestamp is not None and (isinstance(timestamp, bool) or not isinstance(timestamp, (int, float))
                                      or not timestamp >= 0):
            raise ValueError(f"Conversation.add(timestamp={timestamp!r}) is not allowed: expected seconds since "
                             "the epoch (a number >= 0) or None")
        meta = {k: v for k, v in (("tokens", tokens), ("seconds", seconds), ("finish_reason", finish_reason))
                if v is not None}
        if stats is not None:
            meta.update({k: getattr(stats, k) for k in TURN_STATISTICS if getattr(stats, k) is not None})
        entry = MemoryEntryData(role=role, content=content,
                                timestamp=time.time() if timestamp is None else float(timestamp), tool_calls=tool_calls,
                                metadata=meta or None)
        self.entries.append(entry)
        if self.max_turns is not None and len(self.entries) > self.max_turns:
            del self.entries[: len(self.entries) - self.max_turns]
        return entry

    def add_exchange(self, user_message: str, response: AgentResponse, *, user_tokens: int | None = None,
                     sent_at: float | None = None) -> None:
        """Record a user message and the agent's answer (a partial answer is recorded as it is).

        ``sent_at``: when the message was sent (``time.time()``; default: now). The answer's turn
        is stamped now, when it ended.

        ``response`` is any protocol response; its statistics are read with
        :func:`~midori_hf_nb.stats.stats_of` (metadata that is not a dict records none).
        """
        try:
            stats = stats_of(response)
        except StatsError:
            stats = ResponseStats()
        calls = getattr(response, "tool_calls", None)
        answer = getattr(response, "response", "")
        self.add("user", user_message, tokens=user_tokens, timestamp=sent_at)
        self.add("assistant", answer if isinstance(answer, str) else str(answer or ""), stats=stats,
                 tool_calls=calls if isinstance(calls, list) else None)

    def memory(self) -> list[MemoryEntryData]:
        """A copy of the turns, for ``AgentPayload.memory``."""
        return list(self.entries)

    def payload(self, user_message: str, system_context: str = "", **fields: Any) -> AgentPayload:
        """A payload for ``user_message`` that carries this conversation as memory."""
        from ..protocol import make_payload

        fields.setdefault("session_id", self.session_id)
        return make_payload(user_message, system_context, memory=self.memory() or None, **fields)

    def reset(self) -> int:
        """Forget every turn; returns how many there were."""
        count = len(self.entries)
        self.entries.clear()
        return count

    def frame(self, tokenizer: Any = None):
        """The turns as a DataFrame (see :func:`~midori_hf_nb.notebook.conversation_frame`)."""
        from .frames import conversation_frame

        return conversation_frame(self, tokenizer=tokenizer)

    async def ask(self, agent: Any, user_message: str, system_context: str = "", **overrides: Any) -> AgentResponse:
        """``agent.invoke`` (any protocol agent) with this conversation as memory; records the
        exchange and returns the response. ``overrides`` go to ``invoke`` as keyword arguments."""
        from .agent_calls import require_agent

        sent_at = time.time()
        response = await require_agent(agent, "Conversation.ask").invoke(self.payload(user_message, system_context),
                                                                         **overrides)
        self.add_exchange(user_message, response, user_tokens=count_tokens(agent, user_message), sent_at=sent_at)
        return response

    async def stream(self, agent: Any, user_message: str, system_context: str = "", **options: Any) -> AgentResponse:
        """Like :meth:`ask`, streamed into the current cell with :func:`~midori_hf_nb.notebook.stream_to_cell`."""
        from .streaming import stream_to_cell

        sent_at = time.time()
        response = await stream_to_cell(agent, self.payload(user_message, system_context), **options)
        self.add_exchange(user_message, response, user_tokens=count_tokens(agent, user_message), sent_at=sent_at)
        return response


def count_tokens(agent: Any, text: str) -> int | None:
    """Tokens of ``text`` under the agent's loaded tokenizer (None when no model is loaded, or for an
    agent whose model is not in this process)."""
    lm = getattr(agent, "loaded_model", None)
    tokenizer = getattr(lm, "tokenizer", None)
    if tokenizer is None:
        return None
    return len(tokenizer.encode(text, add_special_tokens=False))


__all__ = ["Conversation", "ROLES", "TURN_STATISTICS", "count_tokens"]
