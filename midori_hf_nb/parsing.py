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

_TOOL_TAG_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.IGNORECASE | re.DOTALL)
#: ``TOOL_CALL: name(`` not glued to a word or a quote (so ``print("TOOL_CALL: ...")`` is code, not a call).
_TOOL_CALL_LINE_RE = re.compile(r"(?<![\w\"'])TOOL_CALL:\s*([A-Za-z_][\w.\-]*)\s*\(")
_FENCE_BLOCK_RE = re.compile(r"```([\w+.#-]*)(.*?)(?:```|\Z)", re.DOTALL)
_JSON_START_RE = re.compile(r"\{|\[(?=\s*\{)")
_MISTRAL_MARKER = "[TOOL_CALLS]"

#: Fence languages whose content may be a tool call; other fences (python, js, ...) are code.
CALL_FENCE_LANGUAGES = frozenset({"", "json", "json5", "jsonc", "tool_call", "tool_calls", "tool", "tools"})

#: Keys a bare call object may have (anything else makes it ordinary JSON, not a call).
_CALL_KEYS = frozenset({"name", "arguments", "parameters", "id", "type", "function", "index"})

_HINT_START_RE = re.compile(
    r"""\[?\s*\{\s*["'](?:tool_calls|name|function|type|id|arguments|parameters)["']\s*:"""
)
_HINT_TOOL_CALLS_RE = re.compile(r"""["']tool_calls["']\s*:""")
_HINT_NAME_RE = re.compile(r"""["']name["']\s*:""")
_HINT_ARGS_RE = re.compile(r"""["'](?:arguments|parameters)["']\s*:""")
_HINT_FUNCTION_RE = re.compile(r"""["']function["']\s*:\s*\{""")


@dataclass
class ToolCallParse:
    """The detailed outcome of :func:`parse_tool_calls_detailed`."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    text: str = ""  #: the input with recognised (and malformed) tool-call text removed
    prose_before_calls: str = ""  #: cleaned text before the first call (reasoning ahead of the calls)
    answer: str = ""  #: cleaned text from the first call on (all of ``text`` when there is no call)


def _new_id() -> str:
    return "call_" + uuid.uuid4().hex[:12]


def unique_ids(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give every call an id, replacing missing and repeated ones (in place); returns ``calls``."""
    seen: set[str] = set()
    for call in calls:
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id or call_id in seen:
            call_id = _new_id()
            call["id"] = call_id
        seen.add(call_id)
    return calls


def _load_object(raw: str) -> Any:
    """JSON first; then a Python literal (single quotes, True/None), evaluated safely."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise exc from None


def normalise_call(obj: Any) -> tuple[dict[str, Any] | None, str | None]:
    """Turn one parsed object (``{"name", "arguments"|"parameters"}`` or the OpenAI ``function`` form) into ``{"name", "arguments", "id"}`` or give a reason it is not one.

    ``arguments`` may also be a JSON string (the OpenAI wire format).
    """
    if not isinstance(obj, dict):
        return None, f"tool call is not an object: {obj!r:.80}"
    if isinstance(obj.get("function"), dict):  # OpenAI: {"type": "function", "function": {...}}
        inner = dict(obj["function"])
        inner.setdefault("id", obj.get("id"))
        obj = inner
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return None, f"tool call without a name: {json.dumps(obj, default=str)[:80]}"
    args: Any = obj["arguments"] if "arguments" in obj else obj.get("parameters", {})
    if args is None:
        args = {}
    if isinstance(args, str):
        try:
            args = _load_object(args) if args.strip() else {}
        except (json.JSONDecodeError, ValueError) as exc:
            return None, f"tool call {name.strip()!r}: arguments are not valid JSON ({getattr(exc, 'msg', exc)}): {args[:80]!r}"
    if not isinstance(args, dict):
        return None, f"tool call {name.strip()!r}: arguments must be an object, got {type(args).__name__}"
    call_id = obj.get("id") if isinstance(obj.get("id"), str) and obj.get("id") else _new_id()
    return {"name": name.strip(), "arguments": args, "id": call_id}, None


def _is_call_object(obj: Any) -> bool:
    """A bare object meant as a call: only call keys, and a ``function`` object or name plus arguments."""
    if not isinstance(obj, dict) or not obj or not set(obj) <= _CALL_KEYS:
        return False
    if isinstance(obj.get("function"), dict):
        return True
    return "name" in obj and ("arguments" in obj or "parameters" in obj)


def _calls_from_items(items: list[Any]) -> tuple[list[dict[str, Any]], list[str]]:
    calls, errors = [], []
    for item in items:
        call, error = normalise_call(item)
        if call:
            calls.append(call)
        else:
            errors.append(error or "unreadable tool call")
    return calls, errors


def _calls_from_object(obj: Any) -> tuple[list[dict[str, Any]], list[str], bool]:
    """Calls in one top-level JSON value. The flag says whether it was meant as a tool call."""
    if isinstance(obj, dict) and "tool_calls" in obj:
        items = obj["tool_calls"]
        if not isinstance(items, list):
            return [], [f"'tool_calls' is not a list but {type(items).__name__}"], True
        calls, errors = _calls_from_items(items)
        return calls, errors, True
    if _is_call_object(obj):
        call, error = normalise_call(obj)
        return ([call] if call else []), ([error] if error else []), True
    if isinstance(obj, list) and obj and all(_is_call_object(item) for item in obj):
        calls, errors = _calls_from_items(obj)
        return calls, errors, True
    return [], [], False


def _looks_like_call(raw: str) -> bool:
    """Whether unparseable JSON text was meant as a call (so its failure is worth reporting).

    It must open like a call object (a call key first) and carry call keys.
    """
    return bool(_HINT_START_RE.match(raw)) and bool(
        _HINT_TOOL_CALLS_RE.search(raw)
        or _HINT_FUNCTION_RE.search(raw)
        or (_HINT_NAME_RE.search(raw) and _HINT_ARGS_RE.search(raw))
    )


def _prev_significant(text: str, index: int) -> str:
    j = index - 1
    while j >= 0 and text[j] in " \t\r\n":
        j -= 1
    return text[j] if j >= 0 else ""


def _opens_string(text: str, index: int, in_json: bool) -> bool:
    """Whether the quote at ``index`` starts a string literal (an apostrophe in prose does not)."""
    if text[index] == '"' and in_json:
        return True
    return _prev_significant(text, index) in ("", "(", "[", "{", ",", "=", ":")


_PAIRS = {"{": "}", "[": "]", "(": ")"}


class _BracketScan:
    """String-aware matching of the bracket at ``origin``, resumable as ``text`` grows.

    Every bracket opened inside is matched on the way; :attr:`ends` maps each opening
    position to the index just past its closer (-1 for those still open).
    """

    def __init__(self, origin: int) -> None:
        self.origin = origin
        self.pos = origin + 1
        self.stack: list[tuple[str, int]] = []
        self.quote: str | None = None
        self.ends: dict[int, int] = {}

    def end(self, text: str) -> int:
        """Index just past the closer of the bracket at ``origin``; -1 while it is open."""
        if not self.stack and self.pos == self.origin + 1:
            self.stack.append((_PAIRS[text[self.origin]], self.origin))
        if not self.stack:
            return self.ends[self.origin]
        stack, quote, i = self.stack, self.quote, self.pos
        while i < len(text):
            ch = text[i]
            if quote:
                if ch == "\\":
                    if i + 1 >= len(text):
                        break  # the escaped character has not arrived yet
                    i += 2
                    continue
                if ch == quote:
                    quote = None
            elif ch in "\"'" and _opens_string(text, i, stack[-1][0] != ")"):
                quote = ch
            elif ch in _PAIRS:
                stack.append((_PAIRS[ch], i))
            elif ch == stack[-1][0]:
                self.ends[stack.pop()[1]] = i + 1
                if not stack:
                    self.pos, self.quote = i + 1, None
                    return i + 1
            i += 1
        self.pos, self.quote = i, quote
        return -1

    def finish(self) -> dict[int, int]:
        """:attr:`ends`, with the brackets still open at the end of the text marked -1."""
        for _, opened in self.stack:
            self.ends.setdefault(opened, -1)
        return self.ends


def _balanced_end(text: str, start: int, cache: dict[int, int] | None = None) -> int:
    """Index just past the bracket closing the one at ``start``; -1 if it never closes.

    With ``cache``, the ends of all brackets met on the way are kept there, so scanning many
    nested or unclosed brackets of one text stays linear.
    """
    if cache is not None and start in cache:
        return cache[start]
    scan = _BracketScan(start)
    end = scan.end(text)
    if cache is not None:
        cache.update(scan.finish())
    return end


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
        elif ch in "\"'" and _opens_string(body, i, depth > 0):
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


def _reasoning_spans(text: str) -> list[tuple[int, int]]:
    """Where the reasoning is (as :func:`extract_reasoning_blocks` sees it): calls there are drafts."""
    spans = []
    first_close = _CLOSE_RE.search(text)
    first_open = _OPEN_RE.search(text)
    if first_close and (first_open is None or first_close.start() < first_open.start()):
        spans.append((0, first_close.end()))
    spans += [m.span() for m in _BLOCK_RE.finditer(text) if not _inside(m.start(), spans)]
    for m in _OPEN_RE.finditer(text):
        if not _inside(m.start(), spans):  # unclosed tag: reasoning runs to the end
            spans.append((m.start(), len(text)))
            break
    return spans


def _inside(pos: int, spans: list[tuple[int, int]]) -> bool:
    return any(a <= pos < b for a, b in spans)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _keep(text: str, spans: list[tuple[int, int]], lo: int, hi: int) -> str:
    """``text[lo:hi]`` without the (merged, sorted) ``spans``, tidied."""
    out, last = "", lo
    for a, b in spans:
        if b <= lo or a >= hi:
            continue
        out = _join(out, text[last:max(a, lo)])
        last = min(b, hi)
    out = _join(out, text[last:hi])
    return re.sub(r"\n{3,}", "\n\n", out).strip()


def _join(left: str, right: str) -> str:
    """Concatenate two kept pieces without doubling the spaces around a removed span."""
    if left and right and left[-1] in " \t" and right[0] in " \t":
        right = right.lstrip(" \t")
    return left + right


def parse_tool_calls_detailed(text: str) -> ToolCallParse:
    """Parse every tool call in ``text``; never raises.

    Returns the calls in order of appearance (ids unique), the reasons for skipped calls,
    ``text`` with the tool-call text removed (also that of malformed calls; empty fences that
    held calls go too), and that text split at the first call into the prose before it and
    the rest. JSON and ``TOOL_CALL`` text inside code fences of a programming language
    (```` ```python ````) is code, not a call; calls inside reasoning blocks (``<think>``...)
    are drafts, not calls (the blocks stay in the text: see :func:`extract_reasoning`).
    """
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    found: list[tuple[int, dict[str, Any]]] = []
    errors: list[str] = []
    remove: list[tuple[int, int]] = []
    fences = [(m.start(), m.end(), m.group(1).lower(), m.start(2), m.end(2)) for m in _FENCE_BLOCK_RE.finditer(text)]
    thinking = _reasoning_spans(text)
    code = [(a, b) for a, b, lang, _, _ in fences if lang not in CALL_FENCE_LANGUAGES] + thinking

    # 1. <tool_call>...</tool_call> blocks (an unclosed last block runs to the end).
    for match in _TOOL_TAG_RE.finditer(text):
        if _inside(match.start(), thinking):
            continue
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
        calls, errs, meant = _calls_from_object(obj)
        if not meant and not errs:
            call, error = normalise_call(obj)  # inside the tag it can only be a call: say what is wrong
            calls, errs = ([call] if call else []), ([error] if error else [])
        errors.extend(errs)
        found.extend((match.start(), c) for c in calls)

    # 2. TOOL_CALL: name(...) lines.
    for match in _TOOL_CALL_LINE_RE.finditer(text):
        if _inside(match.start(), remove) or _inside(match.start(), code):
            continue
        name, open_paren = match.group(1), match.end() - 1
        end = _balanced_end(text, open_paren)
        if end < 0:
            line_end = text.find("\n", match.start())
            line_end = len(text) if line_end < 0 else line_end
            errors.append(f"TOOL_CALL {name}: unclosed parenthesis: {text[match.start():line_end][:80]!r}")
            remove.append((match.start(), line_end))
            continue
        call, error = _parse_tool_call_line(name, text[open_paren + 1 : end - 1])
        remove.append((match.start(), end))
        if call:
            found.append((match.start(), call))
        else:
            errors.append(error or "unreadable TOOL_CALL")

    # 3. JSON in prose or fences: {"tool_calls": [...]}, a bare call object, or a list of call objects.
    ends: dict[int, int] = {}
    i = 0
    while True:
        match = _JSON_START_RE.search(text, i)
        if match is None:
            break
        start = match.start()
        if _inside(start, remove) or _inside(start, code):
            i = start + 1
            continue
        end = _balanced_end(text, start, ends)
        raw = text[start:] if end < 0 else text[start:end]
        if end < 0:
            if _looks_like_call(raw):
                errors.append(f"malformed tool-call JSON (brackets never balance): {raw[:80]!r}")
                remove.append((start, len(text)))
                break
            i = start + 1
            continue
        try:
            obj = _load_object(raw)
        except (json.JSONDecodeError, ValueError) as exc:
            if _looks_like_call(raw):
                errors.append(f"malformed tool-call JSON ({getattr(exc, 'msg', exc)}): {raw[:80]!r}")
                remove.append((start, end))
                i = end
            else:
                i = start + 1  # maybe a stray brace before a real object
            continue
        calls, errs, meant = _calls_from_object(obj)
        if meant:
            marker = text.rfind(_MISTRAL_MARKER, 0, start)
            if marker >= 0 and not text[marker + len(_MISTRAL_MARKER):start].strip():
                start = marker
            errors.extend(errs)
            remove.append((start, end))
            found.extend((start, c) for c in calls)
        i = end  # ordinary JSON: its nested objects are data, not calls

    # Fences that held nothing but calls go with them.
    for a, b, lang, inner_a, inner_b in fences:
        if lang in CALL_FENCE_LANGUAGES and any(inner_a <= s < inner_b for s, _ in remove):
            if not _keep(text, _merge(remove), inner_a, inner_b):
                remove.append((a, b))

    merged = _merge(remove)
    found.sort(key=lambda item: item[0])
    calls = unique_ids([c for _, c in found])
    cleaned = _keep(text, merged, 0, len(text))
    if not found:
        return ToolCallParse(calls=calls, errors=errors, text=cleaned, prose_before_calls="", answer=cleaned)
    first = next(a for a, b in merged if a <= found[0][0] < b)
    return ToolCallParse(
        calls=calls,
        errors=errors,
        text=cleaned,
        prose_before_calls=_keep(text, merged, 0, first),
        answer=_keep(text, merged, first, len(text)),
    )


def parse_tool_calls(text: str) -> list[dict[str, Any]]:
    """Parse tool calls from raw model text.

    Returns a list of ``{"name": str, "arguments": dict, "id": str}`` in order of appearance.
    Malformed calls are skipped (see :func:`parse_tool_calls_detailed` for the reasons).

    >>> parse_tool_calls('TOOL_CALL: add(a=1, b=2)')[0]["arguments"]
    {'a': 1, 'b': 2}
    """
    return parse_tool_calls_detailed(text).calls


# --------------------------------------------------------------------------- live splitting

_TOOL_CALL_WORD = "TOOL_CALL:"
_TOOL_CALL_HEAD_RE = re.compile(r"TOOL_CALL:\s*([A-Za-z_][\w.\-]*)?\s*(\()?")
_FENCE_HEAD_RE = re.compile(r"```([\w+.#-]*)")
_MARKER_PREFIXES = "|".join(re.escape(_MISTRAL_MARKER[1:i]) + r"\Z" for i in range(2, len(_MISTRAL_MARKER)))
_JSON_CANDIDATE_RE = re.compile(
    rf"\{{(?=\s*[\"']|\s*\Z)|\[(?=\s*\{{|\s*\Z|{re.escape(_MISTRAL_MARKER[1:])}|{_MARKER_PREFIXES})"
)


@dataclass
class StreamPiece:
    """A piece of streamed text with its kind: ``"text"``, ``"thinking"`` or ``"tool"`` (tool-call text).

    A ``"tool"`` piece carries its :class:`ToolCallParse` in ``parse``.
    """

    kind: str
    text: str
    parse: ToolCallParse | None = None


class StreamSplitter:
    """Splits streamed text into answer, thinking and tool-call pieces as it arrives.

    Tags split across pieces are handled by holding back a possible tag prefix. Answer text
    is emitted without leading whitespace and with trailing whitespace held until more text
    follows, so the concatenated answer pieces equal the stripped answer of
    :func:`extract_reasoning`.

    With ``tools=True`` (tools were offered), tool-call text is withheld until it is complete
    and then emitted whole as one ``"tool"`` piece with its parse: ``<tool_call>`` blocks,
    ``TOOL_CALL: name(...)`` calls, JSON objects that start with a key (and lists of objects),
    and fences of JSON (or no language). Held text that turns out not to be a call is
    emitted as text. Fences of a programming language stream through as text.
    """

    def __init__(self, start_in_thinking: bool = False, tools: bool = False) -> None:
        self._mode = "thinking" if start_in_thinking else "text"
        self._close = None if not start_in_thinking else "</"  # any reasoning close tag
        self._tools = tools
        self._open_tags = {f"<{t}>": "thinking" for t in REASONING_TAGS}
        if tools:
            self._open_tags["<tool_call>"] = "tool"
        self._buffer = ""
        self._answer_started = False
        self._held_space = ""
        self._in_code = False  # inside a code fence: no tool-call detection until it closes
        self._prev = ""  # the last character passed on (word boundary of TOOL_CALL)
        self._scan: _BracketScan | None = None  # the held candidate's bracket scan
        self._waiting: str | None = None  # the kind of candidate held at the start of the buffer
        self._after_tool = False  # a tool piece went out since the last answer text
        self._find_from = 0  # where to resume looking for a closing fence or tag in the held buffer

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
            out.append(StreamPiece("text", self._held_space + body))
            self._held_space = text[len(body):]
        else:
            self._held_space += text

    def _emit(self, kind: str, text: str, out: list[StreamPiece]) -> None:
        if kind == "text":
            self._emit_text(text, out)
        elif text:
            out.append(StreamPiece(kind, text))

    def _emit_candidate(self, text: str, out: list[StreamPiece]) -> None:
        """Emit held text as a tool piece when it holds a call (or a malformed one), else as text."""
        parse = parse_tool_calls_detailed(text)
        if parse.calls or parse.errors:
            out.append(StreamPiece("tool", text, parse))
            self._prev = text[-1:]
            self._after_tool = True
            if parse.text:  # e.g. the rest of the line after an unclosed TOOL_CALL
                self._emit_text(parse.text, out)
        else:
            self._emit_text(text, out)

    @staticmethod
    def _partial_tag_start(buffer: str, tags: list[str]) -> int:
        """Index where a possible (incomplete) tag starts at the end of ``buffer``, else ``len``."""
        start = buffer.rfind("<")
        if start < 0:
            return len(buffer)
        tail = buffer[start:].lower()
        return start if any(tag.startswith(tail) for tag in tags) else len(buffer)

    def _boundary(self, buffer: str, index: int) -> bool:
        before = buffer[index - 1] if index > 0 else self._prev
        return not before or not (before.isalnum() or before in "_\"'")

    def _safe_cut(self, buffer: str) -> int:
        """How much of ``buffer`` (with no complete marker) can go out now."""
        cut = self._partial_tag_start(buffer, list(self._open_tags))
        if self._tools:
            ticks = len(buffer) - len(buffer.rstrip("`"))
            if 0 < ticks < 3:
                cut = min(cut, len(buffer) - ticks)
            for size in range(min(len(buffer), len(_TOOL_CALL_WORD) - 1), 0, -1):
                index = len(buffer) - size
                if _TOOL_CALL_WORD.startswith(buffer[index:]) and self._boundary(buffer, index):
                    cut = min(cut, index)
                    break
        return cut

    def _next_marker(self, buffer: str) -> tuple[int, str] | None:
        """The earliest complete marker: a tag, or (with tools) the start of a possible call."""
        lower = buffer.lower()
        hits = [(lower.find(tag), tag) for tag in self._open_tags if tag in lower]
        if self._tools:
            for match in re.finditer(re.escape(_TOOL_CALL_WORD), buffer):
                if self._boundary(buffer, match.start()):
                    hits.append((match.start(), "toolcall"))
                    break
            fence = buffer.find("```")
            if fence >= 0:
                hits.append((fence, "fence"))
            json_start = _JSON_CANDIDATE_RE.search(buffer)
            if json_start:
                hits.append((json_start.start(), "json"))
        return min(hits) if hits else None

    def _candidate(self, kind: str, buffer: str, out: list[StreamPiece]) -> int | None:
        """Handle the candidate at the start of ``buffer``; return how much was used (None: wait)."""
        if kind == "toolcall":
            head = _TOOL_CALL_HEAD_RE.match(buffer)
            if head and head.group(2):
                end = self._scan_end(head.end() - 1)
                if end < 0:
                    return None
                self._emit_candidate(buffer[:end], out)
                return end
            if head is None or head.end() == len(buffer):
                return None
            self._emit_text(buffer[: len(_TOOL_CALL_WORD)], out)
            return len(_TOOL_CALL_WORD)
        if kind == "fence":
            head = _FENCE_HEAD_RE.match(buffer)
            if head is None or head.end() == len(buffer):
                return None
            if head.group(1).lower() not in CALL_FENCE_LANGUAGES:
                self._emit_text(buffer[: head.end()], out)
                self._in_code = True
                return head.end()
            close = buffer.find("```", max(head.end(), self._find_from))
            if close < 0:
                self._find_from = max(head.end(), len(buffer) - 2)
                return None
            self._emit_candidate(buffer[: close + 3], out)
            return close + 3
        # json: "{" before a key, "[" before "{", or Mistral's "[TOOL_CALLS]" before either
        if not _JSON_CANDIDATE_RE.match(buffer):  # what followed the bracket rules it out
            self._emit_text(buffer[0], out)
            return 1
        start = 0
        if buffer[:len(_MISTRAL_MARKER)] == _MISTRAL_MARKER[:len(buffer)] and buffer[1:2] != "{":
            if len(buffer) <= len(_MISTRAL_MARKER):
                return None
            rest = buffer[len(_MISTRAL_MARKER):]
            if not rest.strip():
                return None
            start = len(buffer) - len(rest.lstrip())
            if buffer[start] not in "[{":
                self._emit_text(_MISTRAL_MARKER, out)
                return len(_MISTRAL_MARKER)
        end = self._scan_end(start)
        if end < 0:
            return None
        self._emit_candidate(buffer[:end], out)
        return end

    def _consume(self, count: int) -> None:
        """Drop the first ``count`` characters of the buffer (they have been emitted)."""
        if count:
            self._buffer = self._buffer[count:]
            self._scan = None  # positions were relative to the old buffer
            self._waiting = None
            self._find_from = 0

    def _scan_end(self, origin: int) -> int:
        """Where the bracket at ``origin`` of the buffer closes (-1: not yet), resuming earlier scans."""
        if self._scan is None or self._scan.origin != origin:
            self._scan = _BracketScan(origin)
        return self._scan.end(self._buffer)

    def feed(self, piece: str) -> list[StreamPiece]:
        """Add streamed text; return the pieces that are now certain."""
        out: list[StreamPiece] = []
        self._buffer += piece
        while self._buffer:
            if self._mode == "text" and self._waiting:  # a held candidate: only it can change
                used = self._candidate(self._waiting, self._buffer, out)
                if used is None:
                    return out
                self._consume(used)
                continue
            if self._mode == "text" and self._in_code:
                close = self._buffer.find("```")
                if close < 0:
                    ticks = len(self._buffer) - len(self._buffer.rstrip("`"))
                    cut = len(self._buffer) - (ticks if ticks < 3 else 0)
                    self._emit_text(self._buffer[:cut], out)
                    self._consume(cut)
                    return out
                self._emit_text(self._buffer[: close + 3], out)
                self._consume(close + 3)
                self._in_code = False
                continue
            if self._mode == "text":
                marker = self._next_marker(self._buffer)
                if marker is None:
                    cut = self._safe_cut(self._buffer)
                    self._emit("text", self._buffer[:cut], out)
                    self._consume(cut)
                    return out
                index, tag = marker
                self._emit("text", self._buffer[:index], out)
                self._consume(index)
                if tag in self._open_tags:
                    self._mode = self._open_tags[tag]
                    self._close = "</" + tag[1:]
                    self._consume(len(tag))
                    continue
                used = self._candidate(tag, self._buffer, out)
                if used is None:
                    self._waiting = tag  # wait for the rest of the candidate
                    return out
                self._consume(used)
                continue
            closes = [f"</{t}>" for t in REASONING_TAGS] if self._close == "</" else [self._close]
            start = self._find_from
            lower = self._buffer[start:].lower()
            hits = [(lower.find(tag) + start, tag) for tag in closes if tag in lower]
            if hits:
                index, tag = min(hits)
                self._find_from = 0
                if self._mode == "tool":
                    self._emit_candidate(f"<tool_call>{self._buffer[: index + len(tag)]}", out)
                else:
                    self._emit(self._mode, self._buffer[:index], out)
                self._mode, self._close = "text", None
                self._consume(index + len(tag))
                continue
            if self._mode == "tool":
                self._find_from = max(0, len(self._buffer) - len(self._close) + 1)
                return out  # withheld until the block closes
            cut = self._partial_tag_start(self._buffer, closes)
            self._emit(self._mode, self._buffer[:cut], out)
            self._consume(cut)
            return out
        return out

    def finish(self) -> list[StreamPiece]:
        """Flush what is left at the end of the stream (trailing answer whitespace is dropped)."""
        out: list[StreamPiece] = []
        if self._mode == "tool":
            self._emit_candidate(f"<tool_call>{self._buffer}", out)
        elif self._buffer and self._mode == "text" and self._tools and not self._in_code:
            self._emit_candidate(self._buffer, out)
        elif self._buffer:
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
