"""Text the live splitter holds because it may be a tool call, read incrementally.

Each candidate reads every new piece of the stream once, wherever the piece boundaries fall:
the head of a ``TOOL_CALL``, a fence's language, the opening of a JSON object, then the shared
bracket scan (:class:`~.scan.Scanner`) or the search for a closing tag or fence
(:class:`Finder`) resume where they stopped. The pieces are kept in a list and joined once,
so holding a long call costs time linear in its length.
"""

from __future__ import annotations

import re

from .scan import Scanner
from .tool_calls import CALL_FENCE_LANGUAGES, MISTRAL_MARKER

#: The word that starts a ``TOOL_CALL: name(...)`` call.
TOOL_CALL_WORD = "TOOL_CALL:"
_WS_RE = re.compile(r"\s*")
_NAME_RE = re.compile(r"[\w.\-]*")
_LANG_RE = re.compile(r"[\w+.#-]*")
_TOOL_CLOSE = "</tool_call>"


class Finder:
    """Finds a fixed-length pattern in text arriving in pieces, keeping only the last few characters."""

    def __init__(self, pattern: re.Pattern[str], size: int) -> None:
        self.pattern, self.keep = pattern, size - 1
        self.tail = ""  # the last characters searched, where a match may begin

    def find(self, text: str, j: int, at: int) -> int:
        """Search ``text[j:]`` (``text[j]`` sits at candidate position ``at``) in place; the
        candidate position just past the match, or -1."""
        if self.tail:  # a match that begins in the previous piece (it cannot fit in the overlap)
            match = self.pattern.search(self.tail + text[j:j + self.keep])
            if match:
                return at - len(self.tail) + match.end()
        match = self.pattern.search(text, j)
        if match:
            return at + match.end() - j
        if len(text) - j >= self.keep:
            self.tail = text[len(text) - self.keep:]
        else:
            self.tail = (self.tail + text[j:])[-self.keep:]
        return -1


class Held:
    """Text that may be a tool call, held whole until it is known to be one or not.

    :meth:`push` reads ``text[start:]``, the next characters of the candidate, and returns
    ``None`` (hold on) or ``(outcome, length)``: ``"call"`` (the first ``length`` characters are
    call text), ``"block"`` (likewise, inside a ``<tool_call>`` tag), ``"text"`` (they are answer
    text) or ``"code"`` (answer text opening a code fence).
    """

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0

    def keep(self, text: str, start: int) -> None:
        """Hold ``text[start:]`` (after a :meth:`push` that returned ``None``)."""
        piece = text[start:] if start else text
        self.parts.append(piece)
        self.length += len(piece)

    def push(self, text: str, start: int) -> tuple[str, int] | None:  # pragma: no cover - overridden
        raise NotImplementedError


class TagBlock(Held):
    """The inside of ``<tool_call>``, up to and including ``</tool_call>``."""

    def __init__(self) -> None:
        super().__init__()
        self.finder = Finder(re.compile(re.escape(_TOOL_CLOSE), re.IGNORECASE), len(_TOOL_CLOSE))

    def push(self, text, start):
        end = self.finder.find(text, start, self.length)
        return ("block", end) if end >= 0 else None


class ToolCallLine(Held):
    """``TOOL_CALL: name(...)``: the head (spaces, a name, spaces, a parenthesis), then the
    bracket scan of the arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.stage = 0  # 0: spaces before the name, 1: the name, 2: spaces after it
        self.scan: Scanner | None = None

    def push(self, text, start):
        base, j, n = self.length - start, start, len(text)
        if self.length == 0:
            j += len(TOOL_CALL_WORD)
        while self.scan is None:
            j = (_NAME_RE if self.stage == 1 else _WS_RE).match(text, j).end()
            if j >= n:
                return None
            c = text[j]
            if c == "(":
                self.scan = Scanner(base + j, "(")
                j += 1
            elif self.stage == 0 and c.isascii() and (c.isalpha() or c == "_"):
                self.stage = 1
            elif self.stage == 1 and c.isspace():
                self.stage = 2
            else:
                return ("text", len(TOOL_CALL_WORD))
        end = self.scan.feed(text, j, n)
        return ("call", end) if end >= 0 else None


class Fence(Held):
    """A code fence: its language decides; a fence of JSON (or none) is held to its close."""

    def __init__(self) -> None:
        super().__init__()
        self.lang: list[str] = []
        self.lang_len = 0
        self.finder: Finder | None = None

    def push(self, text, start):
        base, j, n = self.length - start, start, len(text)
        if self.length == 0:
            j += 3
        if self.finder is None:
            end = _LANG_RE.match(text, j).end()
            if self.lang_len < 32:
                self.lang.append(text[j:min(end, j + 32)])
            self.lang_len += end - j
            j = end
            if j >= n:
                return None
            if self.lang_len > 32 or "".join(self.lang).lower() not in CALL_FENCE_LANGUAGES:
                return ("code", 3 + self.lang_len)
            self.finder = Finder(re.compile("```"), 3)
        end = self.finder.find(text, j, base + j)
        return ("call", end) if end >= 0 else None


class JsonCandidate(Held):
    """``{`` before a key, ``[`` before ``{``, or Mistral's ``[TOOL_CALLS]`` before either."""

    def __init__(self) -> None:
        super().__init__()
        self.stage = "look"
        self.opener = ""  # "{" or "["
        self.matched = 1  # characters of the Mistral marker seen
        self.scan: Scanner | None = None

    def _start_scan(self, origin: int, opener: str, first: int) -> None:
        self.scan = Scanner(origin, opener, first=first)  # only whitespace lies between
        self.stage = "scan"

    def push(self, text, start):
        base, j, n = self.length - start, start, len(text)
        if self.length == 0:
            self.opener = text[start]
            j += 1
        if self.stage == "look":
            if j >= n:
                return None
            if self.opener == "[" and text[j] == "T" and base + j == 1:
                self.stage = "marker"
            else:
                j = _WS_RE.match(text, j).end()
                if j >= n:
                    return None
                if text[j] not in ("\"'" if self.opener == "{" else "{"):
                    return ("text", 1)
                self._start_scan(0, self.opener, base + j)
        if self.stage == "marker":
            while j < n and self.matched < len(MISTRAL_MARKER):
                if text[j] != MISTRAL_MARKER[self.matched]:
                    return ("text", 1)
                j += 1
                self.matched += 1
            if self.matched < len(MISTRAL_MARKER):
                return None
            self.stage = "after marker"
        if self.stage == "after marker":
            j = _WS_RE.match(text, j).end()
            if j >= n:
                return None
            if text[j] not in "[{":
                return ("text", len(MISTRAL_MARKER))
            self._start_scan(base + j, text[j], base + j + 1)
            j += 1
        assert self.scan is not None
        end = self.scan.feed(text, j, n)
        return ("call", end) if end >= 0 else None


CANDIDATES = {"word": ToolCallLine, "fence": Fence, "json": JsonCandidate, "tool": TagBlock}
