"""The one place that talks to llguidance, the constraint library (the ``structured`` extra).

Everything the project uses of llguidance goes through here, and ``tests/test_structured.py``
tests each of it: the lazy import (a missing library is a :class:`StructuredOutputError` naming
the extra), a JSON schema or a Lark grammar to a grammar checked by the library, the model's
tokenizer read into the library's own (cached per tokenizer and vocabulary width), and a
:class:`Matcher` per sequence that writes the allowed next tokens into a bitmask and follows the
tokens chosen.

llguidance was chosen by measurement (``benchmarks/results/structured-library-choice.md``):
sub-millisecond schema compilation, no dependencies, any fast Hugging Face tokenizer read from
memory, Lark grammars for tool calls.

Bounded literals. llguidance writes a JSON number as an unbounded regular expression (any count of
digits in the integer, fraction and exponent parts) and none of its JSON options bounds it: its
options set separators, whitespace and escapes, and a number schema takes only ranges and
``multipleOf``, which bound neither the fraction nor the count of digits (and a range rules out
exponents). A model that runs away inside a number (``3121223200000000000...``) therefore never
has to stop. So every constraint is the intersection of two grammars, both run by llguidance: the
schema's, and :data:`LITERAL_BOUNDS`, a regular grammar over the whole answer (a Lark grammar of
one terminal, using llguidance's ``&``/``~`` regex operators) that lets a number literal have at
most :data:`MAX_NUMBER_DIGITS` digits before its exponent (what a double holds) and at most
:data:`MAX_EXPONENT_DIGITS` in it, and leaves strings and everything else alone. A
:class:`Matcher` runs both and allows a token only when both do; should the two ever leave no
token in common (a schema whose range needs a longer literal), the bounds step aside for that
sequence and the schema alone decides, so the bounds never make an answer impossible. Strings
keep the schema's own bounds (``maxLength``, which llguidance enforces); unbounded strings get no
default bound, since a string that loops is closed by the repetition guard's closing rule (see
:mod:`.closing`).
"""

from __future__ import annotations

import functools
import json
import threading
import weakref
from typing import Any

import numpy as np

from .errors import INSTALL_HINT, StructuredOutputError
from .schema_checks import MAX_SCHEMA_DEPTH, check_schema_structure

#: How JSON is laid out under the constraint: no free whitespace (a small model could otherwise
#: spend its whole budget on blank lines), items and keys separated as people write them.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def library() -> Any:
    """The ``llguidance`` module, imported on first use; raises naming the extra when missing."""
    try:
        import llguidance
        import llguidance.hf  # noqa: F401  (the Hugging Face tokenizer reader)
        import llguidance.numpy  # noqa: F401  (the bitmask writer)
    except ImportError as exc:
        raise StructuredOutputError(f"structured output (response_format, tool_choice) needs llguidance: "
                                    f"{INSTALL_HINT} ({exc})") from exc
    return llguidance


def version() -> str:
    """The installed llguidance version (``"missing"`` when it is not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("llguidance")
    except PackageNotFoundError:
        return "missing"


def _checked(grammar: str, field: str, what: str) -> str:
    is_error, messages = library().LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        detail = "; ".join(messages) or "unknown error"
        raise StructuredOutputError(f"{field}: the constraint library cannot compile this {what}: {detail}. "
                                    "Change the schema (supported: JSON Schema types, properties, required, "
                                    "items, enum, const, anyOf/oneOf, $ref, string lengths and patterns, "
                                    "number ranges; not supported: 'not', unknown 'format's, unsatisfiable ranges)")
    return grammar


def closed_objects(schema: Any, depth: int = 0) -> Any:
    """A copy of ``schema`` in which every object that lists ``properties`` and says nothing about
    ``additionalProperties`` allows no other keys.

    JSON Schema (and pydantic's schemas) leave such objects open, and a small model under an open
    object tends to invent key after key until its budget runs out; the constraint generates only
    the listed keys. Parsing still validates against the schema as given.
    """
    if depth > MAX_SCHEMA_DEPTH:
        return schema
    if isinstance(schema, list):
        return [closed_objects(item, depth + 1) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: closed_objects(value, depth + 1) if key not in ("const", "enum", "default", "examples") else value
           for key, value in schema.items()}
    if isinstance(out.get("properties"), dict) and "additionalProperties" not in out \
            and "patternProperties" not in out:
        out["additionalProperties"] = False
    return out


def schema_grammar(schema: dict[str, Any], field: str = "response_format") -> str:
    """The checked grammar of a JSON schema (compact layout, see :data:`JSON_LAYOUT`; objects
    closed, see :func:`closed_objects`). The schema's depth and ``$ref`` cycles are checked first
    (:func:`~.schema_checks.check_schema_structure`)."""
    check_schema_structure(schema, field)
    try:
        grammar = library().LLMatcher.grammar_from_json_schema(json.dumps(closed_objects(schema)),
                                                               defaults=dict(JSON_LAYOUT))
    except (TypeError, ValueError) as exc:
        raise StructuredOutputError(f"{field}: the schema cannot be read as JSON: {exc}") from exc
    return _checked(grammar, field, "JSON schema")


#: The most digits of a number literal before its exponent (a double holds about 17 significant digits).
MAX_NUMBER_DIGITS = 17
#: The most digits of a number literal's exponent (a double's exponents have at most 3).
MAX_EXPONENT_DIGITS = 3

#: The literal bounds every constraint runs alongside its grammar (see the module docstring): the
#: answer is a sequence of JSON strings (any content), number literals each followed by what may
#: follow a number in JSON, and any other character that is neither a quote, a digit nor a minus.
#: A number's mantissa is JSON's, and (``~``: not) not one of more than MAX_NUMBER_DIGITS digits.
LITERAL_BOUNDS = rf"""
start: TEXT
TEXT: (STRING | OTHER | NUMBER END)* NUMBER?
STRING: /"([^"\\]|\\(.|\n))*"/
OTHER: /[^"0-9\-]/
END: /[,\]}} \t\n\r]/
NUMBER: MANTISSA EXPONENT?
MANTISSA: /-?(0|[1-9][0-9]*)(\.[0-9]+)?/ & ~/-?([0-9]\.?){{{MAX_NUMBER_DIGITS + 1},}}/
EXPONENT: /[eE][+-]?[0-9]{{1,{MAX_EXPONENT_DIGITS}}}/
"""


@functools.lru_cache(maxsize=1)
def literal_bounds_grammar() -> str:
    """The checked grammar of :data:`LITERAL_BOUNDS` (compiled once)."""
    return _checked(library().LLMatcher.grammar_from_lark(LITERAL_BOUNDS), "response_format", "bounds grammar")


# Reading a tokenizer takes about half a second: one per (tokenizer, vocabulary width, eos ids).
_TOKENIZERS: "weakref.WeakKeyDictionary[Any, dict[tuple, Any]]" = weakref.WeakKeyDictionary()
_TOKENIZERS_LOCK = threading.Lock()


def tokenizer_for(tokenizer: Any, width: int, eos_ids: tuple[int, ...], lock: Any = None) -> Any:
    """The library's tokenizer for a Hugging Face tokenizer and a logits width (cached).

    Raises :class:`StructuredOutputError` naming the tokenizer class when the library cannot
    read it (it reads fast, Rust-backed tokenizers: ``PreTrainedTokenizerFast`` and subclasses).
    """
    lib = library()
    key = (int(width), tuple(eos_ids))
    with _TOKENIZERS_LOCK:
        cached = _TOKENIZERS.get(tokenizer, {}).get(key)
    if cached is not None:
        return cached
    from transformers import PreTrainedTokenizerFast

    name = type(tokenizer).__name__
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise StructuredOutputError(
            f"response_format/tool_choice: the model's tokenizer ({name}) cannot be read by the constraint "
            "library, which needs a fast (Rust-backed) Hugging Face tokenizer (PreTrainedTokenizerFast): "
            "use a model that ships tokenizer.json, or leave response_format and tool_choice unset")
    try:
        if lock is not None:
            with lock:
                made = lib.hf.from_tokenizer(tokenizer, n_vocab=int(width), eos_token=list(eos_ids))
        else:
            made = lib.hf.from_tokenizer(tokenizer, n_vocab=int(width), eos_token=list(eos_ids))
    except (ValueError, RuntimeError, TypeError) as exc:
        raise StructuredOutputError(
            f"response_format/tool_choice: the constraint library cannot read the model's tokenizer ({name}): "
            f"{exc}; use a model with a standard fast tokenizer, or leave response_format and tool_choice unset"
        ) from exc
    with _TOKENIZERS_LOCK:
        _TOKENIZERS.setdefault(tokenizer, {})[key] = made
    return made


def bitmask_words(width: int) -> int:
    """32-bit words of a bitmask over ``width`` tokens."""
    return (int(width) + 31) // 32


class Matcher:
    """Where one sequence is in a grammar: which tokens may come next, and the tokens taken.

    With ``bounds`` (:func:`literal_bounds_grammar`) it runs that grammar alongside and allows
    only the tokens both allow (see the module docstring).
    """

    def __init__(self, lltokenizer: Any, grammar: str, bounds: str | None = None) -> None:
        lib = library()
        self._lib = lib
        self.lltokenizer = lltokenizer
        self._matcher = lib.LLMatcher(lltokenizer, grammar)
        if self._matcher.is_error():
            raise StructuredOutputError(f"the constraint could not start: {self._matcher.get_error()}")
        self._bounds = lib.LLMatcher(lltokenizer, bounds) if bounds is not None else None
        if self._bounds is not None and self._bounds.is_error():
            raise StructuredOutputError(f"the literal bounds could not start: {self._bounds.get_error()}")
        self._scratch: np.ndarray | None = None
        #: True once the bounds stepped aside for this sequence (they and the grammar had no token in common)
        self.bounds_dropped = False

    @property
    def bounded(self) -> bool:
        """True while the literal bounds apply."""
        return self._bounds is not None

    def _drop_bounds(self) -> None:
        self._bounds = None
        self.bounds_dropped = True

    def fill(self, bitmask: Any, row: int) -> None:
        """Write the allowed next tokens into row ``row`` of ``bitmask`` (numpy int32, C-contiguous)."""
        self._lib.numpy.fill_next_token_bitmask(self._matcher, bitmask, row)
        if self._bounds is None:
            return
        if self._scratch is None or self._scratch.shape[1] != bitmask.shape[1]:
            self._scratch = np.zeros((1, bitmask.shape[1]), dtype=np.int32)
        self._lib.numpy.fill_next_token_bitmask(self._bounds, self._scratch, 0)
        both = bitmask[row] & self._scratch[0]
        if both.any():
            bitmask[row] = both
        else:  # no token in common: the schema alone decides from here on
            self._drop_bounds()

    def consume(self, token: int) -> bool:
        """Advance by one chosen token; False when the grammar does not allow it."""
        taken = bool(self._matcher.consume_token(int(token)))
        if self._bounds is not None and not self._bounds.consume_token(int(token)):
            self._drop_bounds()
        return taken

    def allows(self, token: int) -> bool:
        """True when ``token`` may come next (by the grammar and the bounds); consumes nothing."""
        if self._matcher.validate_tokens([int(token)]) != 1:
            return False
        return self._bounds is None or self._bounds.validate_tokens([int(token)]) == 1

    def signature(self) -> bytes:
        """The grammar's allowed-token bitmask as bytes (states with different ones differ)."""
        return bytes(self._matcher.compute_bitmask())

    def copy(self) -> "Matcher":
        """An independent copy at the same place (for looking ahead)."""
        twin = object.__new__(Matcher)
        twin._lib, twin.lltokenizer = self._lib, self.lltokenizer
        twin._matcher = self._matcher.deep_copy()
        twin._bounds = self._bounds.deep_copy() if self._bounds is not None else None
        twin._scratch, twin.bounds_dropped = None, self.bounds_dropped
        return twin

    def tokenize(self, data: bytes) -> list[int]:
        """``data`` as tokens of the model's vocabulary."""
        return list(self.lltokenizer.tokenize_bytes(bytes(data)))

    def decode(self, tokens: list[int]) -> bytes:
        """The bytes of ``tokens``."""
        return bytes(self.lltokenizer.decode_bytes([int(t) for t in tokens]))

    def byte_tokens(self) -> dict[int, int]:
        """The token of each byte the vocabulary has a one-byte token for (byte -> token id)."""
        found = {}
        for byte in range(256):
            tokens = self.lltokenizer.tokenize_bytes(bytes([byte]))
            if len(tokens) == 1 and self.lltokenizer.decode_bytes(tokens) == bytes([byte]):
                found[byte] = int(tokens[0])
        return found

    @property
    def stopped(self) -> bool:
        """True once the grammar is complete and an end-of-sequence token was taken (or it failed)."""
        return bool(self._matcher.is_stopped())

    @property
    def accepting(self) -> bool:
        """True when the text so far is a complete answer of the grammar (and within the bounds)."""
        if not self._matcher.is_accepting():
            return False
        return self._bounds is None or bool(self._bounds.is_accepting())

    @property
    def error(self) -> str | None:
        """The matcher's error, or None."""
        return self._matcher.get_error() if self._matcher.is_error() else None


# --------------------------------------------------------------------------- patterns on answers


class _ByteVocabulary:
    """A vocabulary of one token per byte (and an end token), so a matcher reads text byte by byte."""

    eos_token_id = 256
    bos_token_id = None
    tokens = [bytes([byte]) for byte in range(256)] + [b"<end>"]
    special_token_ids = [256]

    def __call__(self, text: bytes | str) -> list[int]:
        return list(text.encode("utf-8") if isinstance(text, str) else text)


@functools.lru_cache(maxsize=1)
def _byte_tokenizer() -> Any:
    lib = library()
    return lib.LLTokenizer(lib.TokenizerWrapper(_ByteVocabulary()))


@functools.lru_cache(maxsize=256)
def _pattern_grammar(pattern: str) -> str:
    grammar = library().LLMatcher.grammar_from_json_schema(json.dumps({"type": "string", "pattern": pattern}))
    is_error, messages = library().LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise StructuredOutputError(f"the pattern {pattern[:80]!r} cannot be checked by the constraint library: "
                                    f"{'; '.join(messages)[:300] or 'unknown error'}")
    return grammar


#: Bytes fed to a pattern matcher at once.
_PATTERN_CHUNK = 1 << 16


def pattern_search(pattern: str, text: str) -> bool:
    """True when JSON Schema ``pattern`` matches ``text`` (anywhere in it, as JSON Schema says;
    ``^``/``$`` anchor at its ends as in ECMA-262), checked by llguidance's regex engine: the one
    the constraint generated the answer with, whose lazily built automaton reads each byte once
    (linear time, no backtracking) and whose count of states is bounded.

    Raises :class:`StructuredOutputError` when the library cannot compile the pattern, or when
    the automaton would need more states than the library's bound for this text.
    """
    lib = library()
    try:
        data = json.dumps(text, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: not text any pattern can match
        return False
    matcher = lib.LLMatcher(_byte_tokenizer(), _pattern_grammar(pattern), log_level=0)
    for start in range(0, len(data), _PATTERN_CHUNK):
        chunk = list(data[start:start + _PATTERN_CHUNK])
        taken = matcher.try_consume_tokens(chunk)
        if matcher.is_error():
            raise StructuredOutputError(f"the pattern {pattern[:80]!r} could not be checked within the constraint "
                                        f"library's bounds: {matcher.get_error().splitlines()[0][:200]}")
        if taken < len(chunk):
            return False
    return bool(matcher.is_accepting())


__all__ = ["JSON_LAYOUT", "LITERAL_BOUNDS", "MAX_EXPONENT_DIGITS", "MAX_NUMBER_DIGITS", "Matcher", "bitmask_words",
           "library", "literal_bounds_grammar", "pattern_search", "schema_grammar", "tokenizer_for", "version"]
