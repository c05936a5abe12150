"""Reasoning and tool-call extraction from raw model text. Pure Python, usable without a model.

Reasoning: ``<think>``, ``<thinking>``, ``<reasoning>`` and ``<chain_of_thought>`` blocks,
including an unclosed tag at the end of a truncated output and a lone closing tag (templates
that open the thinking block in the prompt).

Tool calls, all of:

- JSON ``{"tool_calls": [{"name": ..., "arguments": {...}}]}``, in prose or in a fenced block;
- ``TOOL_CALL: name(arg=value, other="text, with comma")``;
- Hermes/Qwen ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` (several allowed);
- a bare ``{"name": ..., "arguments"|"parameters": ...}`` object.

Malformed input never raises: the call is skipped and the reason recorded.
"""

from __future__ import annotations

import ast
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

REASONING_TAGS = ("think", "thinking", "reasoning", "chain_of_thought")
_TAG_ALT = "|".join(REASONING_TAGS)
_BLOCK_RE = re.compile(rf"<({_TAG_ALT})>(.*?)</\1>", re.IGNORECASE | re.DOTALL)
_OPEN_RE = re.compile(rf"<({_TAG_ALT})>", re.IGNORECASE)
_CLOSE_RE = re.compile(rf"</({_TAG_ALT})>", re.IGNORECASE)

_TOOL_TAG_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.IGNORECASE | re.DOTALL)
_TOOL_CALL_LINE_RE = re.compile(r"TOOL_CALL:\s*([A-Za-z_][\w.\-]*)\s*\(")
_FENCE_RE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
_OPEN_FENCE_TAIL_RE = re.compile(r"```[A-Za-z0-9_-]*\s*$")
_CALL_HINT_RE = re.compile(r"""^\{\s*["']?(tool_calls|name|function)["']?\s*:""")


# --------------------------------------------------------------------------- reasoning


def extract_reasoning_blocks(text: str) -> tuple[list[str], str]:
    """Split ``text`` into its reasoning blocks and the remaining answer.

    Returns ``(blocks, answer)``; ``blocks`` keeps each block's text in order.
    """
    blocks: list[str] = []
    # A closing tag before any opening tag: the template opened the block in the prompt.
    first_close = _CLOSE_RE.search(text)
    first_open = _OPEN_RE.search(text)
    if first_close and (first_open is None or first_close.start() < first_open.start()):
        blocks.append(text[: first_close.start()].strip())
        text = text[first_close.end() :]

    def take(match: re.Match[str]) -> str:
        blocks.append(match.group(2).strip())
        return ""

    text = _BLOCK_RE.sub(take, text)
    dangling = _OPEN_RE.search(text)  # unclosed tag at the end of a truncated output
    if dangling:
        blocks.append(text[dangling.end() :].strip())
        text = text[: dangling.start()]
    return [b for b in blocks if b], text.strip()


def extract_reasoning(text: str) -> tuple[str, str]:
    """Return ``(thinking, answer)`` from raw model text.

    Thinking blocks are joined with blank lines; the answer is the text with them removed.

    >>> extract_reasoning("<think>2+2 is 4</think>The answer is 4.")
    ('2+2 is 4', 'The answer is 4.')
    """
    blocks, answer = extract_reasoning_blocks(text)
    return "\n\n".join(blocks), answer


# --------------------------------------------------------------------------- tool calls


@dataclass
class ToolCallParse:
    """The detailed outcome of :func:`parse_tool_calls_detailed`."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    text: str = ""  #: the input with recognised tool-call text removed
    prose_before_calls: str = ""  #: text before the first call (reasoning ahead of the calls)


def _new_id() -> str:
    return "call_" + uuid.uuid4().hex[:12]


def _load_object(raw: str) -> Any:
    """JSON first; then a Python literal (single quotes, True/None), evaluated safely."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise exc from None


def normalise_call(obj: Any) -> tuple[dict[str, Any] | None, str | None]:
    """Turn one parsed object (``{"name", "arguments"|"parameters"}`` or the OpenAI ``function`` form) into ``{"name", "arguments", "id"}`` or give a reason it is not one."""
    if not isinstance(obj, dict):
        return None, f"tool call is not an object: {obj!r:.80}"
    if isinstance(obj.get("function"), dict):  # OpenAI: {"type": "function", "function": {...}}
        inner = dict(obj["function"])
        inner.setdefault("id", obj.get("id"))
        obj = inner
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return None, f"tool call without a name: {json.dumps(obj, default=str)[:80]}"
    args: Any = obj.get("arguments", obj.get("parameters", {}))
    if args is None:
        args = {}
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            return None, f"tool call {name!r}: arguments are not valid JSON ({exc.msg})"
    if not isinstance(args, dict):
        return None, f"tool call {name!r}: arguments must be an object, got {type(args).__name__}"
    call_id = obj.get("id") if isinstance(obj.get("id"), str) and obj.get("id") else _new_id()
    return {"name": name.strip(), "arguments": args, "id": call_id}, None


def _calls_from_object(obj: Any) -> tuple[list[dict[str, Any]], list[str], bool]:
    """Calls in one top-level JSON value. The flag says whether it was meant as a tool call."""
    if isinstance(obj, dict) and "tool_calls" in obj:
        items = obj["tool_calls"]
        if not isinstance(items, list):
            return [], ["'tool_calls' is not a list"], True
        calls, errors = [], []
        for item in items:
            call, error = normalise_call(item)
            if call:
                calls.append(call)
            else:
                errors.append(error or "unreadable tool call")
        return calls, errors, True
    if isinstance(obj, dict) and (
        ("name" in obj and ("arguments" in obj or "parameters" in obj)) or isinstance(obj.get("function"), dict)
    ):
        call, error = normalise_call(obj)
        return ([call] if call else []), ([error] if error else []), True
    if isinstance(obj, list) and obj and all(isinstance(i, dict) and "name" in i for i in obj):
        calls, errors = [], []
        for item in obj:
            call, error = normalise_call(item)
            if call:
                calls.append(call)
            else:
                errors.append(error or "unreadable tool call")
        return calls, errors, True
    return [], [], False


def _balanced_end(text: str, start: int) -> int:
    """Index just past the bracket closing the one at ``start``; ``len(text)`` if it never closes."""
    pairs = {"{": "}", "[": "]", "(": ")"}
    stack = [pairs[text[start]]]
    quote: str | None = None
    i = start + 1
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "\"'" and (ch == '"' or stack[-1] == ")"):
            quote = ch
        elif ch in pairs:
            stack.append(pairs[ch])
        elif ch == stack[-1]:
            stack.pop()
            if not stack:
                return i + 1
        i += 1
    return len(text)


def _json_spans(text: str) -> list[tuple[int, int]]:
    """Top-level ``{...}`` spans of ``text`` (string-aware brace matching)."""
    spans, i = [], 0
    while True:
        i = text.find("{", i)
        if i < 0:
            return spans
        end = _balanced_end(text, i)
        spans.append((i, end))
        i = end


# ---- TOOL_CALL: name(arg=value, ...)

_LITERALS = {"true": True, "false": False, "null": None, "none": None}
_NUMBER_RE = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")


def _typed_value(raw: str) -> Any:
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        body = raw[1:-1]
        try:
            return ast.literal_eval(raw) if "\\" in body else body
        except (ValueError, SyntaxError):
            return body
    if raw.lower() in _LITERALS:
        return _LITERALS[raw.lower()]
    if _NUMBER_RE.match(raw):
        return float(raw) if any(c in raw for c in ".eE") else int(raw)
    if raw[:1] in "[{":
        try:
            return _load_object(raw)
        except (json.JSONDecodeError, ValueError):
            pass
    return raw


def _split_arguments(body: str) -> list[str]:
    """Split ``a=1, b="x, y", c=[1, 2]`` at top-level commas."""
    parts, depth, quote, current = [], 0, None, []
    i = 0
    while i < len(body):
        ch = body[i]
        if quote:
            current.append(ch)
            if ch == "\\" and i + 1 < len(body):
                current.append(body[i + 1])
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
            current.append(ch)
        elif ch in "([{":
            depth += 1
            current.append(ch)
        elif ch in ")]}":
            depth -= 1
            current.append(ch)
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    if "".join(current).strip():
        parts.append("".join(current))
    return parts


def _parse_tool_call_line(name: str, body: str) -> tuple[dict[str, Any] | None, str | None]:
    arguments: dict[str, Any] = {}
    for part in _split_arguments(body):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_]\w*", key):
            return None, f"TOOL_CALL {name}: argument {part.strip()!r} is not of the form name=value"
        arguments[key] = _typed_value(value)
    return {"name": name, "arguments": arguments, "id": _new_id()}, None


# ---- the parser


def parse_tool_calls_detailed(text: str) -> ToolCallParse:
    """Parse every tool call in ``text``; never raises.

    Returns the calls in order of appearance, the reasons for skipped calls, and ``text``
    with the recognised tool-call text removed.
    """
    found: list[tuple[int, dict[str, Any]]] = []
    errors: list[str] = []
    remove: list[tuple[int, int]] = []

    # 1. <tool_call>...</tool_call> blocks (an unclosed last block runs to the end).
    for match in _TOOL_TAG_RE.finditer(text):
        inner = match.group(1).strip()
        remove.append(match.span())
        if not inner:
            errors.append("empty <tool_call> block")
            continue
        try:
            obj = _load_object(inner)
        except (json.JSONDecodeError, ValueError) as exc:
            errors.append(f"<tool_call> block is not valid JSON ({getattr(exc, 'msg', exc)}): {inner[:80]!r}")
            continue
        calls, errs, _ = _calls_from_object(obj)
        errors.extend(errs)
        found.extend((match.start(), c) for c in calls)

    def covered(pos: int) -> bool:
        return any(a <= pos < b for a, b in remove)

    # 2. TOOL_CALL: name(...) lines.
    for match in _TOOL_CALL_LINE_RE.finditer(text):
        if covered(match.start()):
            continue
        open_paren = match.end() - 1
        end = _balanced_end(text, open_paren)
        if end >= len(text) and not text.rstrip().endswith(")"):
            errors.append(f"TOOL_CALL {match.group(1)}: unclosed parenthesis")
            continue
        call, error = _parse_tool_call_line(match.group(1), text[open_paren + 1 : end - 1])
        remove.append((match.start(), end))
        if call:
            found.append((match.start(), call))
        else:
            errors.append(error or "unreadable TOOL_CALL")

    # 3. JSON objects in prose or fences: {"tool_calls": [...]} or a bare call object.
    for start, end in _json_spans(text):
        if covered(start):
            continue
        raw = text[start:end]
        try:
            obj = _load_object(raw)
        except (json.JSONDecodeError, ValueError) as exc:
            if _CALL_HINT_RE.match(raw):
                errors.append(f"malformed tool-call JSON ({getattr(exc, 'msg', exc)}): {raw[:80]!r}")
            continue
        calls, errs, meant = _calls_from_object(obj)
        if not meant:
            continue
        errors.extend(errs)
        remove.append((start, end))
        found.extend((start, c) for c in calls)

    cleaned = _remove_spans(text, remove)
    found.sort(key=lambda item: item[0])
    before = _remove_spans(text[: found[0][0]], [(a, b) for a, b in remove if b <= found[0][0]]) if found else ""
    before = _OPEN_FENCE_TAIL_RE.sub("", before).strip()
    return ToolCallParse(calls=[c for _, c in found], errors=errors, text=cleaned, prose_before_calls=before)


def _remove_spans(text: str, spans: list[tuple[int, int]]) -> str:
    if not spans:
        return text.strip()
    out, last = [], 0
    for a, b in sorted(spans):
        if a < last:
            continue
        out.append(text[last:a])
        last = b
    out.append(text[last:])
    cleaned = "".join(out)
    cleaned = _FENCE_RE.sub(lambda m: "" if not m.group(1).strip() else m.group(0), cleaned)
    cleaned = re.sub(r"\n{3,}", "\n\n", cleaned)
    return cleaned.strip()


def parse_tool_calls(text: str) -> list[dict[str, Any]]:
    """Parse tool calls from raw model text.

    Returns a list of ``{"name": str, "arguments": dict, "id": str}`` in order of appearance.
    Malformed calls are skipped (see :func:`parse_tool_calls_detailed` for the reasons).

    >>> parse_tool_calls('TOOL_CALL: add(a=1, b=2)')[0]["arguments"]
    {'a': 1, 'b': 2}
    """
    return parse_tool_calls_detailed(text).calls


# --------------------------------------------------------------------------- live splitting

_STREAM_OPEN = {f"<{t}>": "thinking" for t in REASONING_TAGS} | {"<tool_call>": "tool"}


@dataclass
class StreamPiece:
    """A piece of streamed text with its kind: ``"text"``, ``"thinking"`` or ``"tool"`` (tool-call text)."""

    kind: str
    text: str


class StreamSplitter:
    """Splits streamed text into answer, thinking and tool-call pieces as it arrives.

    Tags split across pieces are handled by holding back a possible tag prefix. Answer text
    is emitted without leading whitespace and with trailing whitespace held until more text
    follows, so the concatenated answer pieces equal the stripped answer of
    :func:`extract_reasoning`. Tool-call blocks are withheld until closed and then emitted whole.
    """

    def __init__(self, start_in_thinking: bool = False) -> None:
        self._mode = "thinking" if start_in_thinking else "text"
        self._close = None if not start_in_thinking else "</"  # any reasoning close tag
        self._buffer = ""
        self._answer_started = False
        self._held_space = ""

    def _emit_text(self, text: str, out: list[StreamPiece]) -> None:
        if not self._answer_started:
            text = text.lstrip()
            if not text:
                return
            self._answer_started = True
        body = text.rstrip()
        if body:
            out.append(StreamPiece("text", self._held_space + body))
            self._held_space = text[len(body):]
        else:
            self._held_space += text

    def _emit(self, kind: str, text: str, out: list[StreamPiece]) -> None:
        if kind == "text":
            self._emit_text(text, out)
        elif text:
            out.append(StreamPiece(kind, text))

    @staticmethod
    def _partial_tag_start(buffer: str, tags: list[str]) -> int:
        """Index where a possible (incomplete) tag starts at the end of ``buffer``, else ``len``."""
        start = buffer.rfind("<")
        if start < 0:
            return len(buffer)
        tail = buffer[start:].lower()
        return start if any(tag.startswith(tail) for tag in tags) else len(buffer)

    def feed(self, piece: str) -> list[StreamPiece]:
        """Add streamed text; return the pieces that are now certain."""
        out: list[StreamPiece] = []
        self._buffer += piece
        while self._buffer:
            lower = self._buffer.lower()
            if self._mode == "text":
                hits = [(lower.find(tag), tag) for tag in _STREAM_OPEN if tag in lower]
                if hits:
                    index, tag = min(hits)
                    self._emit("text", self._buffer[:index], out)
                    self._mode = _STREAM_OPEN[tag]
                    self._close = "</" + tag[1:]
                    self._buffer = self._buffer[index + len(tag):]
                    continue
                cut = self._partial_tag_start(self._buffer, list(_STREAM_OPEN))
                self._emit("text", self._buffer[:cut], out)
                self._buffer = self._buffer[cut:]
                return out
            closes = [f"</{t}>" for t in REASONING_TAGS] if self._close == "</" else [self._close]
            hits = [(lower.find(tag), tag) for tag in closes if tag in lower]
            if hits:
                index, tag = min(hits)
                self._emit(self._mode, self._buffer[:index], out)
                self._mode, self._close = "text", None
                self._buffer = self._buffer[index + len(tag):]
                continue
            if self._mode == "tool":
                return out  # withheld until the block closes
            cut = self._partial_tag_start(self._buffer, closes)
            self._emit(self._mode, self._buffer[:cut], out)
            self._buffer = self._buffer[cut:]
            return out
        return out

    def finish(self) -> list[StreamPiece]:
        """Flush what is left at the end of the stream (trailing answer whitespace is dropped)."""
        out: list[StreamPiece] = []
        if self._buffer:
            self._emit(self._mode, self._buffer, out)
        self._buffer = ""
        self._held_space = ""
        return out


def prompt_opens_thinking(prompt_text: str) -> bool:
    """True when the rendered prompt ends inside an open reasoning block (e.g. ``...<think>\\n``)."""
    tail = prompt_text[-200:]
    opened = list(_OPEN_RE.finditer(tail))
    if not opened:
        return False
    return _CLOSE_RE.search(tail, opened[-1].end()) is None
