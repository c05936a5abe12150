"""Live splitting of streamed model text into answer, thinking and tool-call pieces.

:class:`StreamSplitter` agrees with :func:`~.reasoning.extract_reasoning` and
:func:`~.tool_calls.parse_tool_calls_detailed` on the whole text, whatever the chunking, and
works in time linear in the stream: every character is examined a bounded number of times.
Text that may be a tool call is *held* by a candidate that reads each new piece once
(the bracket scan, the search for a closing tag or fence resume where they stopped) and keeps
the pieces in a list until the call is complete; held text is joined once. Call and error
counts are bounded over the whole stream (:class:`~.limits.CallLimiter`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .held import CANDIDATES, TOOL_CALL_WORD, Held, TagBlock
from .limits import CallLimiter
from .reasoning import CLOSE_TAG_RE, OPEN_TAG_RE, REASONING_TAGS, close_tag_re, tag_of
from .tool_calls import MISTRAL_MARKER, ToolCallParse, parse_tool_calls_detailed


def _prefix_re(tags: list[str]) -> re.Pattern[str]:
    """Matches, at a ``<``, any start of one of ``tags`` running to the end of the text."""
    prefixes = sorted({re.escape(tag[:k]) for tag in tags for k in range(1, len(tag) + 1)}, key=len, reverse=True)
    return re.compile(rf"(?:{'|'.join(prefixes)})\Z", re.IGNORECASE)


_OPEN_TAGS = [f"<{tag}>" for tag in REASONING_TAGS]
_OPEN_PREFIX = {False: _prefix_re(_OPEN_TAGS), True: _prefix_re(_OPEN_TAGS + ["<tool_call>"])}
#: (closing-tag pattern, pattern of a partial closing tag at the end) per open reasoning block.
_CLOSES = {tag: (close_tag_re(tag), _prefix_re([f"</{tag}>"])) for tag in REASONING_TAGS}
_ANY_CLOSE = (CLOSE_TAG_RE, _prefix_re([f"</{tag}>" for tag in REASONING_TAGS]))

_MARKER_PREFIXES = "|".join(re.escape(MISTRAL_MARKER[1:i]) + r"\Z" for i in range(2, len(MISTRAL_MARKER)))
_THINK = rf"(?P<think>(?i:{OPEN_TAG_RE.pattern}))"
_MARKERS = {
    False: re.compile(_THINK, re.IGNORECASE),
    True: re.compile(
        rf"{_THINK}|(?P<tool>(?i:<tool_call>))|(?P<word>{TOOL_CALL_WORD})|(?P<fence>```)|(?P<json>\{{(?=\s*[\"']|\s*\Z)"
        rf"|\[(?=\s*\{{|\s*\Z|{re.escape(MISTRAL_MARKER[1:])}|{_MARKER_PREFIXES}))"
    ),
}
_THINK_ONLY = re.compile(OPEN_TAG_RE.pattern, re.IGNORECASE)


@dataclass
class StreamPiece:
    """A piece of streamed text with its kind: ``"text"``, ``"thinking"`` or ``"tool"`` (tool-call text).

    A ``"tool"`` piece carries its :class:`~.tool_calls.ToolCallParse` in ``parse``.
    """

    kind: str
    text: str
    parse: ToolCallParse | None = None


class StreamSplitter:
    """Splits streamed text into answer, thinking and tool-call pieces as it arrives.

    Tags split across pieces are handled by holding back a possible tag prefix. Answer text
    is emitted without leading whitespace and with trailing whitespace held until more text
    follows, so the concatenated answer pieces equal the stripped answer of
    :func:`~.reasoning.extract_reasoning`.

    With ``tools=True`` (tools were offered), tool-call text is withheld until it is complete
    and then emitted whole as one ``"tool"`` piece with its parse: ``<tool_call>`` blocks,
    ``TOOL_CALL: name(...)`` calls, JSON objects that start with a key (and lists of objects),
    and fences of JSON (or no language). Held text that turns out not to be a call is
    emitted as text. Fences of a programming language stream through as text. At most
    :data:`~.limits.MAX_CALLS` calls and :data:`~.limits.MAX_ERRORS` errors come out over the
    whole stream. Feeding takes time linear in the text, whatever the sizes of the pieces.
    """

    def __init__(self, start_in_thinking: bool = False, tools: bool = False) -> None:
        self._mode = "thinking" if start_in_thinking else "text"
        self._close = _ANY_CLOSE if start_in_thinking else None  # the open reasoning block's closing tag
        self._tools = tools
        self._markers = _MARKERS[tools]
        self._open_prefix = _OPEN_PREFIX[tools]
        self._rest = ""  # unconsumed text: a possible start of a tag or marker
        self._held: Held | None = None
        self._answer_started = False
        self._held_space: list[str] = []
        self._in_code = False  # inside a code fence: no tool-call detection until it closes
        self._prev = ""  # the last character passed on as answer (word boundary of TOOL_CALL)
        self._after_tool = False  # a tool piece went out since the last answer text
        self._limiter = CallLimiter()

    def _emit_text(self, text: str, out: list[StreamPiece]) -> None:
        if text:
            self._prev = text[-1]
        if self._after_tool and self._held_space and text[:1] in (" ", "\t"):
            text = text.lstrip(" \t")  # no doubled space where a call was taken out
        if text.strip():
            self._after_tool = False
        if not self._answer_started:
            text = text.lstrip()
            if not text:
                return
            self._answer_started = True
        body = text.rstrip()
        if body:
            out.append(StreamPiece("text", "".join(self._held_space) + body))
            self._held_space = [text[len(body):]] if len(body) < len(text) else []
        elif text:
            self._held_space.append(text)

    def _emit(self, kind: str, text: str, out: list[StreamPiece]) -> None:
        if kind == "text":
            self._emit_text(text, out)
        elif text:
            out.append(StreamPiece(kind, text))

    def _emit_candidate(self, text: str, out: list[StreamPiece]) -> None:
        """Emit held text as a tool piece when it holds a call (or a malformed one), else as text."""
        parse = parse_tool_calls_detailed(text, self._limiter)
        if parse.found_call_text:
            out.append(StreamPiece("tool", text, parse))
            self._prev = text[-1:]
            self._after_tool = True
            if parse.text:  # e.g. the rest of the line after an unclosed TOOL_CALL
                self._emit_text(parse.text, out)
        else:
            self._emit_text(text, out)

    def _boundary(self, text: str, index: int, run_start: int) -> bool:
        """Whether ``TOOL_CALL`` at ``index`` stands alone (answer text before it is not a word)."""
        before = text[index - 1] if index > run_start else self._prev
        return not before or not (before.isalnum() or before in "_\"'")

    def _next_marker(self, text: str, i: int, run_start: int) -> tuple[int, str, int] | None:
        """The earliest complete marker at or after ``i``: ``(index, kind, length)``."""
        while True:
            match = self._markers.search(text, i)
            if match is None:
                return None
            kind = match.lastgroup or "think"
            if kind == "word" and not self._boundary(text, match.start(), run_start):
                i = match.start() + 1
                continue
            return match.start(), kind, match.end() - match.start()

    def _safe_cut(self, text: str, i: int, run_start: int) -> int:
        """How much of ``text[i:]`` (with no complete marker) can go out now."""
        n = cut = len(text)
        lt = text.rfind("<", i)
        if lt >= 0 and self._open_prefix.match(text, lt):
            cut = lt
        if self._tools:
            ticks = 0
            while ticks < 3 and n - ticks > i and text[n - ticks - 1] == "`":
                ticks += 1
            if 0 < ticks < 3:
                cut = min(cut, n - ticks)
            for size in range(min(n - i, len(TOOL_CALL_WORD) - 1), 0, -1):
                index = n - size
                if TOOL_CALL_WORD.startswith(text[index:]) and self._boundary(text, index, run_start):
                    cut = min(cut, index)
                    break
        return cut

    def _resolve(self, outcome: tuple[str, int], text: str, start: int, out: list[StreamPiece]) -> int:
        """Emit a decided candidate whose text starts at ``text[start]``; where the rest begins."""
        kind, length = outcome
        piece = text[start:start + length]
        if kind == "call":
            self._emit_candidate(piece, out)
        elif kind == "block":
            self._emit_candidate("<tool_call>" + piece, out)
        else:
            self._emit_text(piece, out)
            self._in_code = kind == "code"
        return start + length

    def _process(self, text: str, out: list[StreamPiece]) -> None:
        """Split ``text`` (nothing held), leaving a possible partial tag or marker in ``_rest``."""
        i = run_start = 0
        n = len(text)
        while i < n:
            if self._mode == "thinking":
                assert self._close is not None
                close = self._close[0].search(text, i)
                if close:
                    self._emit("thinking", text[i:close.start()], out)
                    self._mode, self._close = "text", None
                    i = run_start = close.end()
                    continue
                lt = text.rfind("<", i)
                cut = lt if lt >= 0 and self._close[1].match(text, lt) else n
                self._emit("thinking", text[i:cut], out)
                self._rest = text[cut:]
                return
            if self._in_code:
                close_at = text.find("```", i)
                if close_at < 0:
                    ticks = 0
                    while ticks < 2 and n - ticks > i and text[n - ticks - 1] == "`":
                        ticks += 1
                    self._emit_text(text[i:n - ticks], out)
                    self._rest = text[n - ticks:]
                    return
                self._emit_text(text[i:close_at + 3], out)
                i = run_start = close_at + 3
                self._in_code = False
                continue
            marker = self._next_marker(text, i, run_start)
            if marker is None:
                cut = self._safe_cut(text, i, run_start)
                self._emit_text(text[i:cut], out)
                self._rest = text[cut:]
                return
            index, kind, length = marker
            self._emit_text(text[i:index], out)
            if kind == "think":
                match = _THINK_ONLY.match(text, index)
                assert match is not None
                self._mode, self._close = "thinking", _CLOSES[tag_of(match)]
                i = index + length
                continue
            held = CANDIDATES[kind]()
            start = index + length if kind == "tool" else index
            outcome = held.push(text, start)
            if outcome is None:
                held.keep(text, start)
                self._held, self._rest = held, ""
                return
            i = run_start = self._resolve(outcome, text, start, out)
        self._rest = ""

    def feed(self, piece: str) -> list[StreamPiece]:
        """Add streamed text; return the pieces that are now certain."""
        out: list[StreamPiece] = []
        if not piece:
            return out
        held = self._held
        if held is None:
            self._process(self._rest + piece, out)
            return out
        outcome = held.push(piece, 0)
        if outcome is None:
            held.keep(piece, 0)
            return out
        self._held = None
        text = "".join(held.parts) + piece
        rest = self._resolve(outcome, text, 0, out)
        self._process(text[rest:], out)
        return out

    def finish(self) -> list[StreamPiece]:
        """Flush what is left at the end of the stream (trailing answer whitespace is dropped)."""
        out: list[StreamPiece] = []
        if self._held is not None:
            text = "".join(self._held.parts)
            self._emit_candidate(("<tool_call>" + text) if isinstance(self._held, TagBlock) else text, out)
        elif self._rest and self._mode == "text" and self._tools and not self._in_code:
            self._emit_candidate(self._rest, out)
        elif self._rest:
            self._emit(self._mode, self._rest, out)
        self._held, self._rest = None, ""
        self._held_space = []
        return out


def prompt_opens_thinking(prompt_text: str) -> bool:
    """True when the rendered prompt ends inside an open reasoning block (e.g. ``...<think>\\n``)."""
    tail = prompt_text[-200:]
    opened = list(OPEN_TAG_RE.finditer(tail))
    if not opened:
        return False
    return CLOSE_TAG_RE.search(tail, opened[-1].end()) is None
