"""Tool results as text for the model: the step record, safe conversion, bounds.

A result is written as text (strings as they are, else JSON, else ``str()``) without letting
a broken ``__str__`` or JSON encoding escape; the text is cut to ``max_result_chars``
characters and, in a tool loop, to the room left in the context window, with a note the model
sees: ``[truncated: N of M characters]``.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass, field
from typing import Any

#: Default longest result text given to the model, in characters (``max_result_chars``).
DEFAULT_MAX_RESULT_CHARS: int = 4000
#: Tokens kept free, per message, for the chat template's text around tool calls and results.
MESSAGE_RESERVE_TOKENS = 32

#: ``ToolStep.status`` values.
STATUSES = ("ok", "error", "invalid_arguments", "timeout", "bad_result", "unknown_tool", "not_runnable")

@dataclass
class ToolStep:
    """One executed (or refused) tool call.

    ``status`` is one of :data:`STATUSES`: ``"ok"`` (``result`` holds what the tool returned),
    ``"error"`` (the tool raised), ``"invalid_arguments"`` (the call did not match the tool's
    schema and was not run), ``"timeout"``, ``"bad_result"`` (the result could not be written as
    text), ``"unknown_tool"`` or ``"not_runnable"`` (offered only as a description). ``error``
    is the message the model was given; ``note`` says what else happened (a truncated result,
    a timed-out thread still running). ``content`` is the exact text given to the model.
    """

    step: int
    name: str
    arguments: dict[str, Any]
    call_id: str
    result: Any = None
    error: str | None = None
    seconds: float = 0.0
    status: str = "ok"
    note: str | None = None
    content: str = field(default="", repr=False)
    result_chars: int = field(default=0, repr=False)  # length of the full text
    shown_chars: int = field(default=0, repr=False)  # characters of it in ``content``

    def as_dict(self) -> dict[str, Any]:
        """The record as a plain dict (a row of ``metadata["tool_steps"]``)."""
        return {
            "step": self.step,
            "name": self.name,
            "arguments": self.arguments,
            "id": self.call_id,
            "result": self.result,
            "error": self.error,
            "seconds": self.seconds,
            "status": self.status,
            "note": self.note,
        }

    def add_note(self, text: str) -> None:
        self.note = f"{self.note}; {text}" if self.note else text


def _a(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


class ResultTextError(Exception):
    """A tool result that cannot be written as text."""


def result_to_text(result: Any) -> str:
    """The text the model gets for a tool result: strings as they are, else JSON, else ``str()``.

    Raises :class:`ResultTextError` when neither JSON encoding nor ``str()`` works.
    """
    if isinstance(result, str):
        return str.__str__(result)
    try:
        return json.dumps(result, default=str)
    except Exception:  # unencodable, a default=str that raises, too deep, circular
        pass
    try:
        return str(result)
    except Exception as exc:
        raise ResultTextError(f"the result ({_a(type(result).__name__)}) cannot be written as text: "
                              f"{exception_text(exc, where=False)}") from exc


def exception_text(exc: BaseException, where: bool = True) -> str:
    """``"Type: message (at function:line)"`` for ``exc``, also when its message cannot be read."""
    name = type(exc).__name__
    try:
        message = str(exc)
    except Exception as inner:
        message = f"<its message cannot be read: {type(inner).__name__}>"
    location = ""
    if where:
        frames = traceback.extract_tb(exc.__traceback__)
        location = f" (at {frames[-1].name}:{frames[-1].lineno})" if frames else ""
    return f"{name}: {message}{location}" if message else f"{name}{location}"


def truncate_text(text: str, shown: int, total: int) -> str:
    """The first ``shown`` characters of ``text`` and the note ``[truncated: shown of total characters]``."""
    return f"{text[:shown]}\n[truncated: {shown} of {total} characters]"


def text_outcome(result: Any) -> tuple[bool, str]:
    """``(True, text)``, or ``(False, why not)`` when the result cannot be written as text."""
    try:
        return True, result_to_text(result)
    except ResultTextError as exc:
        return False, str(exc)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # e.g. a __str__ that raises SystemExit
        return False, (f"the result ({_a(type(result).__name__)}) cannot be written as text: "
                       f"{exception_text(exc, where=False)}")


class ResultRoom:
    """The tokens left in the context window for the results of one step's calls.

    Each result gets an equal share of what the earlier results of the step left; a longer
    one is cut (at a character boundary, with the ``[truncated: ...]`` note) so that the next
    prompt still fits. ``tokens`` should already exclude what the chat template adds.
    """

    def __init__(self, tokenizer: Any, tokens: int, calls: int, lock: Any = None) -> None:
        self.tokenizer = tokenizer
        self.tokens = tokens
        self.calls_left = max(1, calls)
        self.lock = lock

    @classmethod
    def after_generation(cls, tokenizer: Any, context_window: int, metadata: dict[str, Any], calls: int,
                         lock: Any = None) -> "ResultRoom":
        """The room for ``calls`` results after a generation whose response metadata is ``metadata``."""
        used = sum(int(metadata.get(key) or 0) for key in ("max_new_tokens", "prompt_tokens", "completion_tokens"))
        return cls(tokenizer, context_window - used - MESSAGE_RESERVE_TOKENS * (calls + 1), calls, lock)

    def count(self, text: str) -> int:
        """Tokens of ``text``."""
        if self.lock is None:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        with self.lock:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def fit(self, record: ToolStep) -> None:
        """Cut ``record.content`` to its share of the room, and take what it uses from the room."""
        share = max(0, self.tokens // self.calls_left)
        self.calls_left = max(1, self.calls_left - 1)
        used = self.count(record.content)
        if used > share:
            kept, total = record.content[: record.shown_chars], record.result_chars
            low, high = 0, min(record.shown_chars, share * 64 + 1)
            while low < high:  # the most characters whose truncated text fits the share
                middle = (low + high + 1) // 2
                if self.count(truncate_text(kept, middle, total)) <= share:
                    low = middle
                else:
                    high = middle - 1
            record.content = truncate_text(kept, low, total)
            record.shown_chars = low
            record.add_note(f"text for the model cut to {low} of {total} characters to fit the context window "
                             f"({max(share, 0)} tokens were left for it)")
            used = self.count(record.content)
        self.tokens -= used
