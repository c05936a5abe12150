"""String-aware bracket scanning: the one scanner behind the tool-call parser, the live splitter
and the nesting bound on call text.

Quotes: inside brackets a quote opens a string only where a literal can start, after one of
``( [ { , = :`` (or at the start), and a double quote anywhere inside ``{}``/``[]`` (JSON), so an
apostrophe in prose ("don't") does not open one. In *strict* mode (text about to be read as JSON
or a Python literal, see :func:`measure`) every quote outside a string opens one. Inside a
string a backslash escapes the next character.

Scanning jumps between the characters that matter with regular expressions, keeps no look-back
beyond a run of whitespace, and can be fed text in pieces (the splitter's stream). Within one
parse, :class:`BracketIndex` shares the ends of all brackets met, so no bracket is scanned twice
from the same context, and charges every character examined to the parse's
:class:`~.limits.WorkBudget`.
"""

from __future__ import annotations

import re

from .limits import WorkBudget

#: Opening brackets and their closers.
PAIRS = {"{": "}", "[": "]", "(": ")"}
_CLOSERS = frozenset(PAIRS.values())
#: Characters after which (past whitespace) a quote starts a string literal.
_STRING_AFTER = frozenset("([{,=:")
_SPACE = " \t\r\n"

_OUTSIDE_RE = re.compile(r"[\"'()\[\]{},]")
# strict mode also stops at number tokens (digits, then letters as in 1e5, 0x1F, 1j) and words
_STRICT_OUTSIDE_RE = re.compile(r"[\"'()\[\]{},]|[0-9][0-9A-Za-z_]*|[A-Za-z_]\w*")
_LITERAL_WORDS = frozenset({"True", "False", "None"})
_STRING_PREFIXES = frozenset({"r", "u", "b", "rb", "br"})
_INSIDE_RE = {'"': re.compile(r'[\\"]'), "'": re.compile(r"[\\']")}


def opens_string(quote: str, prev: str, in_json: bool) -> bool:
    """Whether ``quote``, met outside a string, starts one: ``prev`` is the last character before
    it other than spaces, tabs and line breaks ("" at the start); ``in_json`` whether the
    innermost open bracket is ``{`` or ``[``."""
    return (quote == '"' and in_json) or prev == "" or prev in _STRING_AFTER


class Scanner:
    """String-aware bracket matching over text fed in order, from an opening bracket (the
    *origin*) or, with ``origin=None``, over free text (for :func:`measure`).

    Positions are absolute: the first character fed sits at ``origin + 1`` (or 0), or at
    ``first`` when only whitespace, already read, lies between. Attributes:
    :attr:`end` (just past the origin's closer; -1 until found), :attr:`max_depth` (deepest
    nesting met, the origin counting 1), :attr:`longest_number` (most digits in one number token
    outside strings) and :attr:`bare_word` (a word other than ``True``/``False``/``None`` outside
    strings), both in strict mode only, and :attr:`commas` (positions of commas directly inside the
    origin, when asked for). With ``ends`` (a dict shared by the scans of one text), the end and
    depth of every bracket closed on the way are recorded there, and brackets already recorded
    are jumped over.
    """

    __slots__ = ("stack", "quote", "escaped", "prev", "pos", "strict", "ends", "commas", "budget",
                 "max_depth", "longest_number", "bare_word", "end", "never_closes", "_bracket_mode")

    def __init__(self, origin: int | None = None, opener: str = "", *, strict: bool = False,
                 ends: dict[int, tuple[int, int]] | None = None, commas: bool = False,
                 budget: WorkBudget | None = None, first: int | None = None) -> None:
        self.stack: list[list] = []  # [closer, position, deepest nesting inside it]
        self.quote: str | None = None
        self.escaped = False
        self.strict = strict
        self.ends = ends
        self.commas: list[int] | None = [] if commas else None
        self.budget = budget
        self.longest_number = 0
        self.bare_word = False
        self.end = -1
        self.never_closes = False  # a bracket inside is known never to close
        self._bracket_mode = origin is not None
        if origin is None:
            self.pos, self.prev, self.max_depth = 0, "", 0
        else:
            self.stack.append([PAIRS[opener], origin, 0])
            self.pos, self.prev, self.max_depth = origin + 1 if first is None else first, opener, 1

    def _prev_before(self, text: str, j: int, start: int) -> str:
        k = j - 1
        while k >= start and text[k] in _SPACE:
            k -= 1
        return text[k] if k >= start else self.prev

    def feed(self, text: str, start: int = 0, stop: int | None = None) -> int:
        """Scan ``text[start:stop]``, the characters that follow those scanned so far.

        Returns :attr:`end` once the origin's bracket has closed, else -1 (also when it is known
        never to close: see :attr:`never_closes`). Raises
        :class:`~.limits.WorkLimitReached` when the budget runs out.
        """
        if self.end >= 0 or self.never_closes:
            return self.end
        stop = len(text) if stop is None else stop
        base = self.pos - start
        stack, ends, commas, strict = self.stack, self.ends, self.commas, self.strict
        outside_re = _STRICT_OUTSIDE_RE if strict else _OUTSIDE_RE
        quote, escaped = self.quote, self.escaped
        left = self.budget.left if self.budget is not None else -1
        spent = 0
        i = start
        while i < stop:
            if quote:
                if escaped:
                    escaped, i, spent = False, i + 1, spent + 1
                    continue
                m = _INSIDE_RE[quote].search(text, i, stop)
                if m is None:
                    spent += stop - i
                    i = stop
                    break
                j = m.start()
                spent += j + 1 - i
                i = j + 1
                if text[j] == "\\":
                    escaped = True
                else:
                    quote = None
            else:
                m = outside_re.search(text, i, stop)
                if m is None:
                    spent += stop - i
                    i = stop
                    break
                j = m.start()
                ch = text[j]
                spent += m.end() - i
                i = m.end()
                if ch in PAIRS:
                    known = ends.get(base + j) if ends is not None else None
                    if known is None:
                        stack.append([PAIRS[ch], base + j, 0])
                        if len(stack) > self.max_depth:
                            self.max_depth = len(stack)
                    elif known[0] < 0:  # never closes, so neither does anything around it
                        self.never_closes = True
                        self.mark_open()
                        break
                    else:  # closed before: jump past it
                        if stack and known[1] > stack[-1][2]:
                            stack[-1][2] = known[1]
                        self.max_depth = max(self.max_depth, len(stack) + known[1])
                        i = known[0] - base
                elif ch in _CLOSERS:
                    if stack and stack[-1][0] == ch:
                        frame = stack.pop()
                        depth = frame[2] + 1
                        if stack and depth > stack[-1][2]:
                            stack[-1][2] = depth
                        if ends is not None:
                            ends[frame[1]] = (base + i, depth)
                        if not stack and self._bracket_mode:
                            self.end = base + i
                            break
                elif ch == ",":
                    if commas is not None and len(stack) == 1:
                        commas.append(base + j)
                elif ch == '"' or ch == "'":
                    if strict or (ch == '"' and stack and stack[-1][0] != ")"):
                        quote = ch
                    else:
                        k = j - 1
                        while k >= start and text[k] in _SPACE:
                            k -= 1
                        spent += j - 1 - k
                        if opens_string(ch, text[k] if k >= start else self.prev, False):
                            quote = ch
                elif ch <= "9":  # a number token (strict mode)
                    if i - j > self.longest_number:
                        digits = sum(1 for c in text[j:i] if "0" <= c <= "9")
                        self.longest_number = max(self.longest_number, digits)
                elif text[j:i] not in _LITERAL_WORDS and not (  # a word (strict mode), not a string prefix
                        i < stop and text[i] in "\"'" and text[j:i].lower() in _STRING_PREFIXES):
                    self.bare_word = True
            if left >= 0 and spent > left:
                self.budget.spend(spent)  # raises
        if self.budget is not None:
            self.budget.spend(spent)
        if i > start:
            self.prev = self._prev_before(text, i, start)
        self.pos = base + i
        self.quote, self.escaped = quote, escaped
        return self.end

    def mark_open(self) -> None:
        """Record the brackets still open as never closing (the text has ended)."""
        if self.ends is not None:
            for frame in self.stack:
                self.ends.setdefault(frame[1], (-1, 0))


def measure(text: str, start: int = 0, stop: int | None = None, budget: WorkBudget | None = None) -> Scanner:
    """Scan ``text[start:stop]`` strictly (every quote opens a string), as :mod:`json` and
    :mod:`ast` read it; the scanner's :attr:`~Scanner.max_depth`, :attr:`~Scanner.longest_number`
    and :attr:`~Scanner.bare_word` describe it."""
    scan = Scanner(strict=True, budget=budget)
    scan.feed(text, start, stop)
    return scan


class BracketIndex:
    """Bracket matching for one text within one parse: every bracket's end is computed once and
    shared, and all scanning is charged to ``budget``. Only ``text[:stop]`` is scanned."""

    def __init__(self, text: str, stop: int, budget: WorkBudget) -> None:
        self.text, self.stop, self.budget = text, stop, budget
        self.ends: dict[int, tuple[int, int]] = {}

    def end(self, start: int) -> int:
        """Index just past the bracket closing the one at ``start``; -1 if it never closes."""
        known = self.ends.get(start)
        if known is not None:
            return known[0]
        return self._scan(start, commas=False).end

    def depth(self, start: int) -> int:
        """Nesting depth of the (closed) bracket at ``start`` and all inside it (0 if not scanned)."""
        known = self.ends.get(start)
        return known[1] if known is not None else 0

    def arguments(self, start: int) -> tuple[int, list[tuple[int, int]]]:
        """The end of the bracket at ``start`` and the spans of its comma-separated parts
        (top-level commas only; a blank last part is left out). ``(-1, [])`` if it never closes."""
        known = self.ends.get(start)
        if known is not None and known[0] < 0:
            return -1, []
        scan = self._scan(start, commas=True)
        if scan.end < 0:
            return -1, []
        bounds = [start, *(c for c in scan.commas or ()), scan.end - 1]
        parts = [(bounds[k] + 1, bounds[k + 1]) for k in range(len(bounds) - 1)]
        if parts and not self.text[parts[-1][0]:parts[-1][1]].strip():
            parts.pop()
        return scan.end, parts

    def _scan(self, start: int, commas: bool) -> Scanner:
        scan = Scanner(start, self.text[start], ends=self.ends, commas=commas, budget=self.budget)
        if scan.feed(self.text, start + 1, self.stop) < 0:
            scan.mark_open()
        return scan
