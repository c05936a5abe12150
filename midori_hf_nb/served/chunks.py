"""From the chunks of a server's stream (JSON objects read by :mod:`.sse`) to events and what
arrived: each field is type-checked (a server is outside input), the key is masked as text
arrives (:mod:`.redaction`), the client counts the token budget and the answer's size
(:mod:`.limits`), and tool-call deltas are assembled, with or without their ``index``.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from ..events import StreamEvent, piece_events
from ..parsing import StreamSplitter, normalise_call
from ..tools import tool_names
from .limits import MAX_ANSWER_CHARS, MAX_PROMPT_TOKENS
from .redaction import KeyMasker, scrub_value
from .sse import MalformedStreamError, StreamLimitError

#: the most tool calls read from the ``tool_calls`` of one answer, and characters of one call's arguments
MAX_SERVER_CALLS = 64
MAX_ARGUMENT_CHARS = 1_000_000
#: the most characters of a server's own words (an error event, a finish reason) kept
MAX_SERVER_TEXT = 400
_SURROGATE = re.compile("[\ud800-\udfff]")


class BudgetReached(Exception):
    """The server sent more pieces than the token budget allows (the stream is closed)."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not plain JSON")


def read_chunk(data: str, secret: str | None = None) -> dict[str, Any]:
    """One event's data as a chunk object, or :class:`MalformedStreamError` saying why not (with
    the start of the data, the key masked)."""
    try:
        value = json.loads(data, parse_constant=_refuse_constant)
    except RecursionError:
        raise MalformedStreamError("an event is nested too deeply to read") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity
        shown = scrub_value(data[:80 + len(secret or "")], secret)[0]
        shown = shown[:80] + ("..." if len(shown) > 80 else "")
        raise MalformedStreamError(f"an event is not JSON ({getattr(exc, 'msg', exc)}): {shown!r}") from None
    if not isinstance(value, dict):
        raise MalformedStreamError(f"an event is JSON but not an object: {type(value).__name__}")
    return value


def server_words(value: Any, secret: str | None) -> str:
    """A server's own text (an error message, a finish reason), key masked and shortened."""
    text = " ".join(str(value).split())
    text = scrub_value(text, secret)[0]
    return text if len(text) <= MAX_SERVER_TEXT else text[:MAX_SERVER_TEXT - 3] + "..."


def _text(value: Any) -> str:
    """A text field of a chunk ('' for anything but a non-empty string); lone surrogates (which
    cannot be written as UTF-8) become U+FFFD."""
    if not isinstance(value, str) or not value:
        return ""
    return _SURROGATE.sub("\ufffd", value) if _SURROGATE.search(value) else value


class ServerCalls:
    """Tool calls assembled from ``tool_calls`` deltas: by ``index`` when the server sends it,
    else by ``id`` (a new id starts a new call), else in order (a piece with neither continues
    the last call; one that brings a name after the last call's arguments began starts a new one)."""

    def __init__(self, secret: str | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.secret = secret
        self.masked = 0
        self._by_index: dict[int, dict[str, Any]] = {}
        self._by_id: dict[str, dict[str, Any]] = {}

    def _new(self) -> dict[str, Any] | None:
        if len(self.calls) >= MAX_SERVER_CALLS:
            if not self.errors:
                self.errors.append(f"more than {MAX_SERVER_CALLS} tool calls: the rest were not read")
            return None
        call = {"id": None, "name": "", "arguments": [], "size": 0}
        self.calls.append(call)
        return call

    def _call_for(self, index: Any, call_id: str, name: str) -> dict[str, Any] | None:
        if isinstance(index, int) and not isinstance(index, bool):
            call = self._by_index.get(index)
            if call is None:
                call = self._by_index[index] = self._new()
        elif call_id:
            call = self._by_id.get(call_id)
            if call is None:
                call = self._new()
        else:
            call = self.calls[-1] if self.calls else None
            if call is None or (name and call["name"] and call["arguments"]):
                call = self._new()
        if call is not None and call_id and call["id"] is None:
            call["id"] = call_id
            self._by_id[call_id] = call
        return call

    def feed(self, deltas: Any) -> int:
        """Read one chunk's ``tool_calls``; the characters of text they brought."""
        brought = 0
        for delta in deltas if isinstance(deltas, list) else []:
            if not isinstance(delta, dict):
                continue
            function = delta.get("function") if isinstance(delta.get("function"), dict) else {}
            call_id, name, arguments = _text(delta.get("id")), _text(function.get("name")), _text(function.get("arguments"))
            call = self._call_for(delta.get("index"), call_id, name)
            if call is None:
                continue
            call["name"] += name
            if arguments and call["size"] <= MAX_ARGUMENT_CHARS:
                call["arguments"].append(arguments)
                call["size"] += len(arguments)
            brought += len(name) + len(arguments)
        return brought

    def parsed(self) -> tuple[list[dict[str, Any]], list[str]]:
        """The calls as ``{"name", "arguments", "id"}`` (the key masked) and the errors of those
        that cannot be read."""
        calls, errors = [], list(self.errors)
        for raw in self.calls:
            if raw["size"] > MAX_ARGUMENT_CHARS:
                errors.append(f"tool call {raw['name']!r}: arguments longer than {MAX_ARGUMENT_CHARS} characters")
                continue
            found, error = normalise_call({"id": raw["id"], "function": {"name": raw["name"],
                                                                         "arguments": "".join(raw["arguments"])}})
            if found:
                found, masked = scrub_value(found, self.secret)
                self.masked += masked
                calls.append(found)
            else:
                errors.append(scrub_value(error or "unreadable tool call", self.secret)[0])
        return calls, errors


@dataclass
class Reading:
    """What has arrived so far."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    #: chunks that brought text: the client's token count
    pieces: int = 0
    chars: int = 0
    first_at: float | None = None
    finish: str | None = None
    usage: Any = None
    error: str | None = None
    cancelled: bool = False
    #: the budget ran out on the client (the server sent more than max_new_tokens pieces)
    cut: bool = False
    notes: list[str] = field(default_factory=list)


def checked_usage(usage: Any, budget: int) -> tuple[int | None, int | None, str | None]:
    """(completion_tokens, prompt_tokens, note) from a server's ``usage``: each count is used
    only when it can be right (see :mod:`.limits`), else None, and the note says what was refused."""
    if not isinstance(usage, dict):
        return None, None, None
    completion, prompt = usage.get("completion_tokens"), usage.get("prompt_tokens")
    refused = []

    def count(name: str, value: Any, high: int) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
            refused.append(f"{name}={str(value)[:40]}")
            return None
        return value

    completion = count("completion_tokens", completion, budget)
    prompt = count("prompt_tokens", prompt, MAX_PROMPT_TOKENS)
    note = None
    if refused:
        note = (f"the server reported usage that cannot be right ({', '.join(refused)}): the pieces counted "
                "on the client are used instead")
    return completion, prompt, note


class Collector:
    """Turns the chunks of one stream into events, keeping what arrived (:class:`Reading`)."""

    def __init__(self, schemas: list[dict] | None, budget: int, secret: str | None) -> None:
        self.reading = Reading()
        self.budget = budget
        self.server_calls = ServerCalls(secret)
        self.splitter = StreamSplitter(start_in_thinking=False, tools=schemas is not None)
        self.offered = set(tool_names(schemas or []))
        self.live_calls: list[dict] = []  # tool calls written as text, announced while streaming
        self.text_mask, self.thought_mask = KeyMasker(secret), KeyMasker(secret)
        self.secret = secret

    def _text_events(self, text: str) -> list[StreamEvent]:
        if not text:
            return []
        self.reading.content.append(text)
        return [event for piece in self.splitter.feed(text) for event in piece_events(piece, self.offered, self.live_calls)]

    def _thought_events(self, thought: str) -> list[StreamEvent]:
        if not thought:
            return []
        self.reading.reasoning.append(thought)
        return [StreamEvent("thinking", thought)]

    def absorb(self, chunk: dict[str, Any]) -> list[StreamEvent]:
        """The events of one chunk; raises :class:`BudgetReached` when it would pass the token
        budget and :class:`StreamLimitError` when it would pass the answer's size bound."""
        reading = self.reading
        if chunk.get("usage") is not None:
            reading.usage = chunk["usage"]
        events: list[StreamEvent] = []
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict) or choice.get("index", 0) not in (0, None):
                continue
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            thought = _text(delta.get("reasoning_content")) or _text(delta.get("reasoning"))
            text = _text(delta.get("content"))
            deltas = delta.get("tool_calls")
            brings = bool(thought or text or (isinstance(deltas, list) and deltas))
            if brings:
                if reading.pieces >= self.budget:
                    reading.cut = True
                    raise BudgetReached
                size = len(thought) + len(text)
                if reading.chars + size > MAX_ANSWER_CHARS:
                    raise StreamLimitError(f"the answer passed {MAX_ANSWER_CHARS:,} characters")
                reading.chars += size
            events += self._thought_events(self.thought_mask.feed(thought))
            events += self._text_events(self.text_mask.feed(text))
            if deltas:
                reading.chars += self.server_calls.feed(deltas)
                if reading.chars > MAX_ANSWER_CHARS:
                    raise StreamLimitError(f"the answer passed {MAX_ANSWER_CHARS:,} characters")
            if brings:
                reading.pieces += 1
                if reading.first_at is None:
                    reading.first_at = time.perf_counter()
            finish = choice.get("finish_reason")
            if finish:
                reading.finish = server_words(finish, self.secret)[:40]
        return events

    def finish(self) -> list[StreamEvent]:
        """The events of the text still held (by the key masks and the splitter)."""
        events = self._thought_events(self.thought_mask.finish())
        events += self._text_events(self.text_mask.finish())
        events += [event for piece in self.splitter.finish() for event in piece_events(piece, self.offered,
                                                                                          self.live_calls)]
        return events

    @property
    def key_found(self) -> int:
        """Occurrences of the key masked in the answer so far."""
        return self.text_mask.found + self.thought_mask.found + self.server_calls.masked


__all__ = ["BudgetReached", "Collector", "MAX_ARGUMENT_CHARS", "MAX_SERVER_CALLS", "Reading", "ServerCalls",
           "checked_usage", "read_chunk", "server_words"]
