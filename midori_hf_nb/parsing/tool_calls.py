"""Tool calls in raw model text. Pure Python, usable without a model.

All of these formats, in order of appearance:

- JSON ``{"tool_calls": [{"name": ..., "arguments": {...}}]}``, in prose or in a fenced block;
- ``TOOL_CALL: name(arg=value, other="text, with comma")``;
- Hermes/Qwen ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` (several allowed);
- a bare ``{"name": ..., "arguments"|"parameters": ...}`` object (or a list of them, after
  Mistral's ``[TOOL_CALLS]`` too).

Malformed input never raises: the call is skipped and the reason recorded. The parse is bounded
by :mod:`.limits` (input length, calls, errors, nesting, number length, work per character),
each bound reached being one more recorded error, so it takes linear time on any input.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import Any

from .calls import calls_from_object, normalise_call, reason, tool_call_arguments, unique_ids
from .limits import MAX_INPUT_CHARS, WORK_PER_CHAR, CallLimiter, LimitError, WorkBudget, WorkLimitReached
from .reasoning import reasoning_spans
from .scan import BracketIndex
from .values import load_value, short

_TOOL_TAG_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.IGNORECASE | re.DOTALL)
#: ``TOOL_CALL: name(`` not glued to a word or a quote (so ``print("TOOL_CALL: ...")`` is code, not a call).
_TOOL_CALL_LINE_RE = re.compile(r"(?<![\w\"'])TOOL_CALL:\s*([A-Za-z_][\w.\-]*)\s*\(")
_FENCE_BLOCK_RE = re.compile(r"```([\w+.#-]*)(.*?)(?:```|\Z)", re.DOTALL)
_JSON_START_RE = re.compile(r"\{|\[(?=\s*\{)")
_BLANK_LINES_RE = re.compile(r"\n{3,}")
#: Mistral's marker before a list of calls.
MISTRAL_MARKER = "[TOOL_CALLS]"

#: Fence languages whose content may be a tool call; other fences (python, js, ...) are code.
CALL_FENCE_LANGUAGES = frozenset({"", "json", "json5", "jsonc", "tool_call", "tool_calls", "tool", "tools"})

_HINT_START_RE = re.compile(
    r"""\[?\s*\{\s*["'](?:tool_calls|name|function|type|id|arguments|parameters)["']\s*:"""
)
_HINT_RES = {
    "tool_calls": re.compile(r"""["']tool_calls["']\s*:"""),
    "name": re.compile(r"""["']name["']\s*:"""),
    "arguments": re.compile(r"""["'](?:arguments|parameters)["']\s*:"""),
    "function": re.compile(r"""["']function["']\s*:\s*\{"""),
}


@dataclass
class ToolCallParse:
    """The detailed outcome of :func:`parse_tool_calls_detailed`."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    text: str = ""  #: the input with recognised (and malformed) tool-call text removed
    prose_before_calls: str = ""  #: cleaned text before the first call (reasoning ahead of the calls)
    answer: str = ""  #: cleaned text from the first call on (all of ``text`` when there is no call)
    dropped_calls: int = 0  #: calls found past :data:`~.limits.MAX_CALLS` and left out
    dropped_errors: int = 0  #: errors past :data:`~.limits.MAX_ERRORS` and left out

    @property
    def found_call_text(self) -> bool:
        """Whether any call text (good, malformed or over the limits) was found."""
        return bool(self.calls or self.errors or self.dropped_calls or self.dropped_errors)


class SpanIndex:
    """Spans ``(start, end)`` merged and sorted, with membership in logarithmic time."""

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        merged: list[tuple[int, int]] = []
        for a, b in sorted(spans):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        self.spans = merged
        self.starts = [a for a, _ in merged]

    def end_of(self, pos: int) -> int:
        """The end of the span holding ``pos``; -1 when none does."""
        k = bisect_right(self.starts, pos) - 1
        return self.spans[k][1] if k >= 0 and pos < self.spans[k][1] else -1

    def contains(self, pos: int) -> bool:
        """Whether a span holds ``pos``."""
        return self.end_of(pos) >= 0

    def keep(self, text: str, lo: int, hi: int) -> str:
        """``text[lo:hi]`` without the spans, tidied: no doubled spaces where a span was taken
        out, at most one blank line in a row, stripped."""
        parts: list[str] = []
        last_char, last = "", lo
        k = max(0, bisect_right(self.starts, lo) - 1)

        def add(piece: str) -> None:
            nonlocal last_char
            if last_char in (" ", "\t") and piece[:1] in (" ", "\t"):
                piece = piece.lstrip(" \t")
            if piece:
                parts.append(piece)
                last_char = piece[-1]

        for a, b in self.spans[k:]:
            if a >= hi:
                break
            if b <= lo:
                continue
            add(text[last:max(a, lo)])
            last = min(b, hi)
        add(text[last:hi])
        kept = "".join(parts)
        return (_BLANK_LINES_RE.sub("\n\n", kept) if "\n\n\n" in kept else kept).strip()


class _Hints:
    """Where the keys of a call object appear in the text, to tell unparseable call text from
    other unparseable JSON without re-searching it (each query is logarithmic)."""

    def __init__(self, text: str) -> None:
        self._found = {}
        for kind, pattern in _HINT_RES.items():
            spans = [m.span() for m in pattern.finditer(text)]
            self._found[kind] = ([a for a, _ in spans], [b for _, b in spans])

    def _within(self, kind: str, lo: int, hi: int) -> bool:
        starts, ends = self._found[kind]
        k = bisect_left(starts, lo)
        return k < len(starts) and ends[k] <= hi

    def looks_like_call(self, text: str, lo: int, hi: int) -> bool:
        """Whether ``text[lo:hi]``, unparseable, was meant as a call (so its failure is worth
        reporting): it opens like a call object (a call key first) and carries call keys."""
        return bool(_HINT_START_RE.match(text, lo, hi)) and (
            self._within("tool_calls", lo, hi)
            or self._within("function", lo, hi)
            or (self._within("name", lo, hi) and self._within("arguments", lo, hi))
        )


class _Parse:
    """The state of one parse of ``text[:limit]``."""

    def __init__(self, text: str, limit: int) -> None:
        self.head = text if limit == len(text) else text[:limit]
        self.limit = limit
        self.budget = WorkBudget(limit)
        self.brackets = BracketIndex(self.head, limit, self.budget)
        self.found: list[tuple[int, dict[str, Any]]] = []
        self.errors: list[str] = []
        self.remove: list[tuple[int, int]] = []

    def add_calls(self, obj: Any, position: int, inside_tag: bool = False) -> bool:
        """Record the calls in a parsed value; whether it was meant as a call."""
        calls, errors, meant = calls_from_object(obj, self.budget, new_ids=False)  # ids: unique_ids, kept calls only
        if inside_tag and not meant and not errors:  # inside the tag it can only be a call: say what is wrong
            call, error = normalise_call(obj, self.budget, new_ids=False)
            calls, errors, meant = ([call] if call else []), ([error] if error else []), True
        self.errors.extend(errors)
        self.found.extend((position, call) for call in calls)
        return meant

    def tag_blocks(self, thinking: SpanIndex) -> None:
        """``<tool_call>...</tool_call>`` blocks (an unclosed last block runs to the end)."""
        for match in _TOOL_TAG_RE.finditer(self.head):
            if thinking.contains(match.start()):
                continue
            inner = match.group(1).strip()
            self.remove.append(match.span())
            if not inner:
                self.errors.append("empty <tool_call> block")
                continue
            try:
                obj = load_value(inner, self.budget)
            except LimitError as exc:
                self.errors.append(f"<tool_call> block out of bounds ({exc}): {inner[:80]!r}")
                continue
            except ValueError as exc:
                self.errors.append(f"<tool_call> block is not valid JSON ({reason(exc)}): {inner[:80]!r}")
                continue
            self.add_calls(obj, match.start(), inside_tag=True)

    def tool_call_lines(self, blocked: SpanIndex) -> None:
        """``TOOL_CALL: name(...)`` calls."""
        head, frontier = self.head, -1
        for match in _TOOL_CALL_LINE_RE.finditer(head):
            start = match.start()
            if start < frontier or blocked.contains(start):
                continue
            name, open_paren = match.group(1), match.end() - 1
            end, parts = self.brackets.arguments(open_paren)
            if end < 0:
                line_end = head.find("\n", start)
                line_end = self.limit if line_end < 0 else line_end
                self.errors.append(f"TOOL_CALL {name}: unclosed parenthesis: {head[start:min(line_end, start + 80)]!r}")
                self.remove.append((start, line_end))
                frontier = max(frontier, line_end)
                continue
            call, error = tool_call_arguments(name, [head[a:b] for a, b in parts], self.budget)
            self.remove.append((start, end))
            frontier = max(frontier, end)
            if call:
                self.found.append((start, call))
            else:
                self.errors.append(error or "unreadable TOOL_CALL")

    def json_calls(self, blocked: SpanIndex) -> None:
        """JSON in prose or fences: ``{"tool_calls": [...]}``, a bare call object, or a list of them."""
        head, i = self.head, 0
        hints: _Hints | None = None
        while True:
            match = _JSON_START_RE.search(head, i)
            if match is None:
                break
            start = match.start()
            skip_to = blocked.end_of(start)
            if skip_to >= 0:
                i = skip_to
                continue
            end = self.brackets.end(start)
            if end < 0:
                hints = hints or _Hints(head)
                if hints.looks_like_call(head, start, self.limit):
                    self.errors.append(f"malformed tool-call JSON (brackets never balance): {head[start:start + 80]!r}")
                    self.remove.append((start, self.limit))
                    break
                i = start + 1
                continue
            raw = head[start:end]
            try:
                obj = load_value(raw, self.budget, depth=self.brackets.depth(start))
            except LimitError as exc:  # too deep or too long to read: not searched inside either
                hints = hints or _Hints(head)
                if hints.looks_like_call(head, start, end):
                    self.errors.append(f"tool-call JSON out of bounds ({exc}): {raw[:80]!r}")
                    self.remove.append((start, end))
                i = end
                continue
            except ValueError as exc:
                hints = hints or _Hints(head)
                if hints.looks_like_call(head, start, end):
                    self.errors.append(f"malformed tool-call JSON ({reason(exc)}): {raw[:80]!r}")
                    self.remove.append((start, end))
                    i = end
                else:
                    i = start + 1  # maybe a stray brace before a real object
                continue
            at = start
            while at > 0 and head[at - 1].isspace():
                at -= 1
            at = at - len(MISTRAL_MARKER) if head[max(0, at - len(MISTRAL_MARKER)):at] == MISTRAL_MARKER else start
            if self.add_calls(obj, at):
                self.remove.append((at, end))
            i = end  # ordinary JSON: its nested objects are data, not calls


def _parse(text: str, limiter: CallLimiter) -> ToolCallParse:
    limit = min(len(text), MAX_INPUT_CHARS)
    state = _Parse(text, limit)
    head = state.head
    if limit < len(text):
        state.errors.append(f"the output is {len(text)} characters long; tool calls were looked for "
                            f"in the first {MAX_INPUT_CHARS} only")
    fences = [(m.start(), m.end(), m.group(1).lower(), m.start(2), m.end(2)) for m in _FENCE_BLOCK_RE.finditer(head)]
    thinking = reasoning_spans(head)
    code = [(a, b) for a, b, lang, _, _ in fences if lang not in CALL_FENCE_LANGUAGES] + thinking
    try:
        state.tag_blocks(SpanIndex(thinking))
        state.tool_call_lines(SpanIndex(state.remove + code))
        state.json_calls(SpanIndex(state.remove + code))
    except WorkLimitReached:
        state.errors.append(f"stopped looking for tool calls: this text needs more scanning than the bound of "
                            f"{WORK_PER_CHAR} characters examined per character allows")

    # Fences that held nothing but calls go with them.
    removed = SpanIndex(state.remove)
    starts = sorted(a for a, _ in state.remove)
    for a, b, lang, inner_a, inner_b in fences:
        k = bisect_left(starts, inner_a)
        holds_call_text = k < len(starts) and starts[k] < inner_b
        if lang in CALL_FENCE_LANGUAGES and holds_call_text and not removed.keep(head, inner_a, inner_b):
            state.remove.append((a, b))

    found = sorted(state.found, key=lambda item: item[0])
    calls, errors, dropped_calls, dropped_errors = limiter.apply([c for _, c in found], state.errors)
    calls = unique_ids(calls)
    index = SpanIndex(state.remove)
    cleaned = index.keep(text, 0, len(text))
    result = ToolCallParse(calls=calls, errors=errors, text=cleaned, answer=cleaned,
                           dropped_calls=dropped_calls, dropped_errors=dropped_errors)
    if found:
        first = index.spans[bisect_right(index.starts, found[0][0]) - 1][0]
        result.prose_before_calls = index.keep(text, 0, first)
        result.answer = index.keep(text, first, len(text))
    return result


def parse_tool_calls_detailed(text: str, limiter: CallLimiter | None = None) -> ToolCallParse:
    """Parse every tool call in ``text``; never raises.

    Returns the calls in order of appearance (ids unique), the reasons for skipped calls,
    ``text`` with the tool-call text removed (also that of malformed calls; empty fences that
    held calls go too), and that text split at the first call into the prose before it and
    the rest. JSON and ``TOOL_CALL`` text inside code fences of a programming language
    (```` ```python ````) is code, not a call; calls inside reasoning blocks (``<think>``...)
    are drafts, not calls (the blocks stay in the text: see :func:`~.reasoning.extract_reasoning`).

    The bounds of :mod:`.limits` apply; each one reached adds an error. ``limiter`` carries the
    call and error counts over from earlier parses of the same output (the live splitter parses
    it in pieces); by default this text is one whole output.
    """
    try:
        if not isinstance(text, str):
            text = "" if text is None else str(text)
        return _parse(text, limiter if limiter is not None else CallLimiter())
    except Exception as exc:  # the last wall: a fault here must not reach the caller
        kept = text.strip() if isinstance(text, str) else ""
        return ToolCallParse(errors=[f"tool-call parser failed ({type(exc).__name__}: {short(str(exc), 120)}); "
                                     "the text was left as it is"], text=kept, answer=kept)


def parse_tool_calls(text: str) -> list[dict[str, Any]]:
    """Parse tool calls from raw model text.

    Returns a list of ``{"name": str, "arguments": dict, "id": str}`` in order of appearance.
    Malformed calls are skipped (see :func:`parse_tool_calls_detailed` for the reasons).

    >>> parse_tool_calls('TOOL_CALL: add(a=1, b=2)')[0]["arguments"]
    {'a': 1, 'b': 2}
    """
    return parse_tool_calls_detailed(text).calls
