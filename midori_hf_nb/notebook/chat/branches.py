"""Forks of a chat panel's conversation: editing an earlier message keeps what followed it as a branch.

The panel's :attr:`~.panel.ChatPanel.memory` is always the conversation shown (and sent to the
model). When the user edits message ``at`` and sends it again, the messages from ``at`` on are kept
as a :class:`Branch` and the conversation goes on from the edited message. A branch keeps the
forks made inside it (``branches``), so switching back restores them too: the panel's top-level
branches are always forks of the conversation shown, at positions within it.

At a position where the conversation forked, the versions (the one shown and the branches there)
are numbered by when their first message was sent; :func:`versions_at` gives "n of m", and
:func:`switch` shows another version, keeping the one shown as a branch. All of it is plain data:
:func:`branches_to_json` / :func:`branches_from_json` write and read it in the panel's JSON
document (bounded and checked like the conversation itself).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ...protocol import MemoryEntryData
from .transcript import TranscriptError


@dataclass
class Branch:
    """The messages a conversation had from position ``at`` on before it forked there, with the
    forks made inside them (positions count from the start of the conversation)."""

    at: int
    messages: list[MemoryEntryData]
    branches: list["Branch"] = field(default_factory=list)

    def message_count(self) -> int:
        """Messages in this branch and in the forks inside it."""
        return len(self.messages) + sum(b.message_count() for b in self.branches)


def fork(memory: list[MemoryEntryData], branches: list[Branch], at: int) -> tuple[list[MemoryEntryData], list[Branch]]:
    """Keep ``memory[at:]`` (with the forks inside it) as a branch; returns the conversation up to
    ``at`` and the branches. ``ValueError`` when ``at`` is not a position of the conversation."""
    if not 0 <= at < len(memory):
        raise ValueError(f"fork at message {at} is not allowed: expected 0 to {len(memory) - 1}")
    kept = Branch(at, memory[at:], [b for b in branches if b.at > at])
    return memory[:at], [b for b in branches if b.at <= at] + [kept]


def _sent(messages: list[MemoryEntryData]) -> float:
    stamp = messages[0].timestamp if messages else None
    return stamp if isinstance(stamp, (int, float)) else float("inf")


def versions_at(memory: list[MemoryEntryData], branches: list[Branch], at: int) -> list[Branch | None]:
    """The versions of the conversation from position ``at`` in the order they were sent: a
    :class:`Branch`, or None for the version shown. A single ``[None]`` where it did not fork."""
    here: list[tuple[float, int, Branch | None]] = [(_sent(memory[at:]), -1, None)]
    here += [(_sent(b.messages), n, b) for n, b in enumerate(branches) if b.at == at]
    return [version for _, _, version in sorted(here, key=lambda item: (item[0], item[1]))]


def version_numbers(memory: list[MemoryEntryData], branches: list[Branch]) -> dict[int, tuple[int, int]]:
    """Position -> (number of the version shown, versions) for each position where the conversation forked."""
    out: dict[int, tuple[int, int]] = {}
    for at in sorted({b.at for b in branches}):
        versions = versions_at(memory, branches, at)
        out[at] = (versions.index(None) + 1, len(versions))
    return out


def switch(memory: list[MemoryEntryData], branches: list[Branch], at: int,
           step: int) -> tuple[list[MemoryEntryData], list[Branch]]:
    """Show the version ``step`` places after the one shown at position ``at`` (-1: the one before;
    wrapping around); the version shown becomes a branch. ``ValueError`` where it did not fork."""
    versions = versions_at(memory, branches, at)
    if len(versions) < 2:
        raise ValueError(f"the conversation did not fork at message {at}: there is no other version to show")
    target = versions[(versions.index(None) + step) % len(versions)]
    assert target is not None
    current = Branch(at, memory[at:], [b for b in branches if b.at > at])
    rest = [b for b in branches if b.at <= at and b is not target]
    return memory[:at] + target.messages, rest + [current] + target.branches


def flatten(branches: list[Branch]) -> list[Branch]:
    """Every branch, depth first (a branch before the forks inside it)."""
    out: list[Branch] = []
    stack = list(reversed(branches))
    while stack:
        branch = stack.pop()
        out.append(branch)
        stack.extend(reversed(branch.branches))
    return out


# --------------------------------------------------------------------------- JSON

#: Forks the JSON document may hold, at most (each one a branch object).
MAX_BRANCHES = 1_000


def branches_to_json(branches: list[Branch], entry_to_json: Callable[[MemoryEntryData], dict]) -> list[dict]:
    """The branches as JSON-ready dicts: ``{"at", "messages", "branches"}``."""
    return [{"at": b.at, "messages": [entry_to_json(m) for m in b.messages],
             "branches": branches_to_json(b.branches, entry_to_json)} for b in branches]


def branches_from_json(items: Any, read_item: Callable[[Any, str], MemoryEntryData], *, length: int,
                       where: str, budget: int) -> list[Branch]:
    """Branches read from a document and checked: each an object with ``at`` (a position of the
    conversation it forks, ``length`` messages long), ``messages`` (each checked by ``read_item``)
    and ``branches`` (forks inside it, after its own ``at``); at most :data:`MAX_BRANCHES` branches and
    ``budget`` messages in all. ``TranscriptError`` names the branch and the field."""
    if items is None:
        return []
    count = [0, 0]  # branches, messages

    def read(values: Any, lowest: int, highest: int, path: str) -> list[Branch]:
        if not isinstance(values, list):
            raise TranscriptError(f"{where}: {path} must be a list of branches")
        out = []
        for n, item in enumerate(values):
            name = f"{path}[{n}]"
            if not isinstance(item, dict) or set(item) - {"at", "messages", "branches"}:
                raise TranscriptError(f"{where}: {name} is not allowed: expected an object with at, messages, branches")
            at = item.get("at")
            if isinstance(at, bool) or not isinstance(at, int) or not lowest <= at <= highest:
                raise TranscriptError(f"{where}: {name}.at={at!r} is not allowed: expected a message position "
                                      f"from {lowest} to {highest}")
            messages = item.get("messages")
            if not isinstance(messages, list) or not messages:
                raise TranscriptError(f"{where}: {name}.messages must be a non-empty list of messages")
            count[0] += 1
            count[1] += len(messages)
            if count[0] > MAX_BRANCHES or count[1] > budget:
                raise TranscriptError(f"{where}: more than {MAX_BRANCHES} branches or {budget} messages in branches "
                                      "are not allowed")
            read_messages = [read_item(m, f"{where}: {name}.messages[{i}]") for i, m in enumerate(messages)]
            inner = read(item.get("branches", []), at + 1, at + len(messages) - 1, f"{name}.branches")
            out.append(Branch(at, read_messages, inner))
        return out

    return read(items, 0, max(0, length - 1), "branches")


__all__ = ["Branch", "MAX_BRANCHES", "branches_from_json", "branches_to_json", "flatten", "fork", "switch",
           "version_numbers", "versions_at"]
