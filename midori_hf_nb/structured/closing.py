"""The closing rule: a constrained answer that loops still ends as a complete document.

When the repetition guard notices a loop inside a constrained answer (a string that says
"very very very ...", an array that repeats one item), stopping there would leave the JSON open
and ``parsed`` None. Instead the answer ends by a shortest completion its grammar allows: close
the open string, write each property the schema still requires with its smallest value, close
each open object and array. The processor (:mod:`.processor`) then forces those tokens one by
one, on every decode path, and the result says how many it wrote (``closing_tokens``).

The completion is found by a breadth-first search over one-byte steps, with the
:class:`~.backend.Matcher` (the grammar and its literal bounds) as the judge of each step, so it
holds for any schema the library compiles; nothing here knows the schema. Two rules keep the
search small, both read from the JSON text so far (:class:`Scan`): where the innermost open
string, object or array may close now, closing it is the only step taken (continuing it can only
make the completion longer); and states with the same allowed tokens and the same place in the
JSON text (open containers with their item counts, the open literal with its length), met at one
depth, are visited once; and once one way through a string reaches a point where it may close,
longer ways through that string are not followed. Where the literal's own rules forbid closing it yet (``minLength``, a ``pattern``, a
``format``, an ``enum``), every allowed byte is tried, shortest first. The bytes found are then
written as the vocabulary's own tokens where the grammar takes them, else one token per byte.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .backend import Matcher

#: The most child states one search looks at before it gives up (a few seconds of work at most; the
#: completions of ordinary schemas take tens to a few thousand).
MAX_EXPANSIONS = 20_000
#: The longest completion, in bytes, a search looks for.
MAX_CLOSING_BYTES = 4096
#: One-byte steps tried first (the order breaks ties between completions of one length).
PREFERRED = b'"}],0'

_CLOSERS = {ord("{"): ord("}"), ord("["): ord("]")}


@dataclass(frozen=True)
class Scan:
    """Where a JSON text stands: its open containers (opening byte, items so far), whether a
    string is open (and an escape in it), and the length of the open literal."""

    stack: tuple[tuple[int, int], ...] = ()
    in_string: bool = False
    escaped: bool = False
    literal: int = 0

    def step(self, byte: int) -> "Scan":
        """The scan after one more byte."""
        if self.in_string:
            if self.escaped:
                return Scan(self.stack, True, False, self.literal + 1)
            if byte == ord("\\"):
                return Scan(self.stack, True, True, self.literal + 1)
            if byte == ord('"'):
                return Scan(self.stack, False, False, 0)
            return Scan(self.stack, True, False, self.literal + 1)
        if byte == ord('"'):
            return Scan(self.stack, True, False, 0)
        if byte in _CLOSERS:
            return Scan((*self.stack, (byte, 0)), False, False, 0)
        if byte in (ord("}"), ord("]")):
            return Scan(self.stack[:-1], False, False, 0)
        if byte == ord(",") and self.stack:
            opener, items = self.stack[-1]
            return Scan((*self.stack[:-1], (opener, items + 1)), False, False, 0)
        if byte in b" \t\r\n:,":
            return Scan(self.stack, False, False, 0)
        return Scan(self.stack, False, False, self.literal + 1)

    def read(self, data: bytes) -> "Scan":
        """The scan after ``data``."""
        scan = self
        for byte in data:
            scan = scan.step(byte)
        return scan

    def closer(self) -> int | None:
        """The byte that closes the innermost open string or container (None at the top level)."""
        if self.in_string:
            return None if self.escaped else ord('"')
        if self.stack:
            return _CLOSERS[self.stack[-1][0]]
        return None


@dataclass
class Closing:
    """What the closing rule did for one sequence: when the guard noticed the loop, the tokens of
    the completion, and whether it fits (when it does not, the sequence ends where the loop was
    noticed)."""

    #: tokens generated when the guard noticed the loop
    at: int
    #: the completion's tokens (empty when the answer was already complete)
    tokens: list[int] = field(default_factory=list)
    #: False when no completion was found within the token budget
    closed: bool = True
    #: completion tokens taken so far
    written: int = 0

    @property
    def pending(self) -> int | None:
        """The next token the completion forces (None once it is written, or when it does not fit)."""
        if self.closed and self.written < len(self.tokens):
            return self.tokens[self.written]
        return None


def _orders(byte_tokens: dict[int, int]) -> tuple[list[int], list[int]]:
    """The printable one-byte steps in the order tried outside strings (closers and the shortest
    values first) and inside them (letters first, which reads better than punctuation)."""
    printable = [b for b in range(0x20, 0x7F) if b in byte_tokens]
    outside = [b for b in PREFERRED if b in byte_tokens] + [b for b in printable if b not in PREFERRED]
    letters = [b for b in printable if chr(b).islower()] + [b for b in printable if chr(b).isupper()]
    inside = letters + [b for b in printable if b not in letters]
    return outside, inside


def shortest_completion(matcher: "Matcher", text: bytes, max_tokens: int) -> list[int] | None:
    """The tokens of a shortest completion of ``text`` (the answer so far, which ``matcher`` has
    taken) that its grammar accepts, in at most ``max_tokens`` tokens; ``[]`` when the answer is
    already complete; None when none was found (see the module docstring for the search).

    ``matcher`` itself is not changed.
    """
    if matcher.accepting:
        return []
    if max_tokens <= 0:
        return None
    byte_tokens = matcher.byte_tokens()
    found = _search(matcher, Scan().read(text), byte_tokens)
    if found is None:
        return None
    tokens = matcher.tokenize(found)
    trial = matcher.copy()
    if not (tokens and all(trial.allows(t) and trial.consume(t) for t in tokens) and trial.accepting):
        tokens = [byte_tokens[b] for b in found]
    return tokens if len(tokens) <= max_tokens else None


def _search(matcher: "Matcher", scan: Scan, byte_tokens: dict[int, int]) -> bytes | None:
    outside, inside = _orders(byte_tokens)
    high = [b for b in sorted(byte_tokens) if b >= 0x80]  # parts of non-ASCII characters, tried last
    queue: deque[tuple["Matcher", Scan, bytes]] = deque([(matcher.copy(), scan, b"")])
    # states met at one depth with the same allowed tokens and the same scan are taken as one (never
    # across depths: a state is then never merged into one it descends from, so no progress is lost)
    seen: set[tuple[int, int, Scan]] = set()
    closable: set[tuple] = set()  # open strings some state already closes
    expansions = 0
    while queue:
        state, scan, path = queue.popleft()
        if len(path) >= MAX_CLOSING_BYTES:
            continue
        key = (len(path), hash(state.signature()), scan)
        if key in seen:
            continue
        seen.add(key)
        closer = scan.closer()
        literal = (scan.stack, len(path) - scan.literal)  # the open string, by where it began
        if closer is not None and closer in byte_tokens and state.allows(byte_tokens[closer]):
            steps = [closer]
            if scan.in_string:
                closable.add(literal)
        elif scan.in_string and literal in closable:
            continue  # a shorter way through this string already closes it
        else:
            steps = [b for b in (inside if scan.in_string else outside) if state.allows(byte_tokens[b])]
            if not steps:
                steps = [b for b in high if state.allows(byte_tokens[b])]
        for byte in steps:
            expansions += 1
            child = state.copy() if len(steps) > 1 else state
            child.consume(byte_tokens[byte])
            if child.accepting:
                return path + bytes([byte])
            queue.append((child, scan.step(byte), path + bytes([byte])))
        if expansions >= MAX_EXPANSIONS:
            return None
    return None


__all__ = ["Closing", "MAX_CLOSING_BYTES", "MAX_EXPANSIONS", "Scan", "shortest_completion"]
