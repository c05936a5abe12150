"""The bounds that keep tool-call parsing safe and linear on any model output.

Model text is untrusted input: a broken or hostile output must never make the parser raise,
recurse without end or take quadratic time. Each bound below turns one class of such fault
into an ordinary parse error (a string in ``ToolCallParse.errors``):

- :data:`MAX_INPUT_CHARS`: how much of one output is searched for calls;
- :data:`MAX_CALLS` and :data:`MAX_ERRORS`: how many calls and errors one output yields;
- :data:`MAX_DEPTH`: how deeply a call's JSON (or Python literal) may nest;
- :data:`MAX_NUMBER_DIGITS`: how long an integer in a call may be;
- :data:`MAX_LITERAL_CHARS`: how much of one output may be read as a Python literal;
- :data:`WORK_PER_CHAR` and :data:`WORK_FLOOR`: how much scanning and decoding one parse may do
  per input character, plus a fixed allowance.

:class:`WorkBudget` enforces the last; :class:`CallLimiter` the call and error counts (also
across the pieces of one stream).
"""

from __future__ import annotations

from typing import Any

MAX_INPUT_CHARS = 1_000_000
"""Characters of one output searched for tool calls. Text past this is kept in the answer as it
is, unsearched, and the parse records an error saying so."""

MAX_CALLS = 64
"""Tool calls returned from one output (in order of appearance). The text of further calls is
still removed from the answer; the parse records one error saying calls were dropped."""

MAX_ERRORS = 64
"""Parse errors recorded for one output; past this one more error says that later ones were
left out."""

MAX_DEPTH = 64
"""Nesting depth of brackets allowed in a call's JSON or Python literal. Deeper text is not
handed to :mod:`json` or :mod:`ast` at all (both recurse) and is an error for that call."""

MAX_NUMBER_DIGITS = 100
"""Digits allowed in a number literal of a call's arguments. A longer number makes that call an
error (it is not kept as a string): Python refuses to convert integers of more than 4300 digits,
and converting long ones costs quadratic time. The check is on the literal text (for JSON and
Python-literal text: any run of digits outside strings) and, for integers, again on the value.
A float literal within the bound but too large for a float (``1e999``) is refused like ``NaN`` and
``Infinity``: its value is not plain JSON (it could not be written back as JSON)."""

MAX_LITERAL_CHARS = 100_000
"""Characters of one output, in total, that may be read as a Python literal (single quotes,
``True``/``None``) rather than JSON, with :func:`ast.literal_eval`; past this, non-JSON call text is
a JSON error. :mod:`ast` is some fifty times slower than :mod:`json` and builds a large tree, so
this bound (not :data:`WORK_PER_CHAR`) is what keeps it cheap. Text with bare words other than
``True``/``False``/``None`` is never handed to it (it cannot be a literal)."""

WORK_PER_CHAR = 8
"""Characters the bracket scans and the JSON decoder of one parse may examine, per character of
input (plus :data:`WORK_FLOOR`). Ordinary output needs one to three; text built to make scans
overlap (many unterminated quotes and brackets) runs out, and the parse then stops looking for
further calls and records an error saying so. This bounds every parse to linear time."""

WORK_FLOOR = 100_000
"""The fixed part of a parse's work allowance (see :data:`WORK_PER_CHAR`)."""


class LimitError(ValueError):
    """A bound of this module was reached while reading one call; the message says which."""


class WorkLimitReached(Exception):
    """The work allowance of one parse is spent (see :data:`WORK_PER_CHAR`)."""


class WorkBudget:
    """The work allowance of one parse: :data:`WORK_PER_CHAR` units per input character plus
    :data:`WORK_FLOOR` (:meth:`spend` raises :class:`WorkLimitReached` once it is used up), and
    the :data:`MAX_LITERAL_CHARS` characters it may hand to :func:`ast.literal_eval`
    (:meth:`take_literal`)."""

    __slots__ = ("allowance", "spent", "literal_left")

    def __init__(self, chars: int) -> None:
        self.allowance = WORK_PER_CHAR * max(0, chars) + WORK_FLOOR
        self.spent = 0
        self.literal_left = MAX_LITERAL_CHARS

    def spend(self, units: int) -> None:
        """Count ``units`` of work; raise :class:`WorkLimitReached` past the allowance."""
        self.spent += units
        if self.spent > self.allowance:
            raise WorkLimitReached(f"spent {self.spent} of {self.allowance} work units")

    @property
    def left(self) -> int:
        """Units still available (0 when spent)."""
        return max(0, self.allowance - self.spent)

    def take_literal(self, chars: int) -> bool:
        """Whether ``chars`` more characters may be read as a Python literal (and count them if so)."""
        if chars > self.literal_left:
            return False
        self.literal_left -= chars
        return True


TOO_MANY_CALLS = f"more than {MAX_CALLS} tool calls in one output; the calls after the {MAX_CALLS}th were dropped"
TOO_MANY_ERRORS = f"more than {MAX_ERRORS} tool-call parse errors in one output; later errors are not listed"


class CallLimiter:
    """Applies :data:`MAX_CALLS` and :data:`MAX_ERRORS` to one output, also when it is parsed in
    pieces (the live splitter passes one limiter to the parse of each piece).

    The first time a limit is passed, one error naming it is added (not counted against
    :data:`MAX_ERRORS`).
    """

    __slots__ = ("calls", "errors", "calls_noted", "errors_noted")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self.calls_noted = False
        self.errors_noted = False

    def apply(self, calls: list[Any], errors: list[str]) -> tuple[list[Any], list[str], int, int]:
        """Return ``(calls kept, errors kept, calls dropped, errors dropped)`` for the next piece."""
        room = max(0, MAX_CALLS - self.calls)
        kept_calls, dropped_calls = calls[:room], max(0, len(calls) - room)
        self.calls += len(kept_calls)
        room = max(0, MAX_ERRORS - self.errors)
        kept_errors, dropped_errors = list(errors[:room]), max(0, len(errors) - room)
        self.errors += len(kept_errors)
        if dropped_errors and not self.errors_noted:
            self.errors_noted = True
            kept_errors.append(TOO_MANY_ERRORS)
        if dropped_calls and not self.calls_noted:
            self.calls_noted = True
            kept_errors.append(TOO_MANY_CALLS)
        return kept_calls, kept_errors, dropped_calls, dropped_errors
