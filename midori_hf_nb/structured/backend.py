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
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import Any

from .errors import INSTALL_HINT, StructuredOutputError

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


#: The most nested levels :func:`closed_objects` walks (deeper schemas are left as they are).
MAX_SCHEMA_DEPTH = 64


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
    closed, see :func:`closed_objects`)."""
    try:
        grammar = library().LLMatcher.grammar_from_json_schema(json.dumps(closed_objects(schema)),
                                                               defaults=dict(JSON_LAYOUT))
    except (TypeError, ValueError) as exc:
        raise StructuredOutputError(f"{field}: the schema cannot be read as JSON: {exc}") from exc
    return _checked(grammar, field, "JSON schema")


def lark_grammar(lark: str, field: str) -> str:
    """The checked grammar of a Lark grammar (``%json {...}`` embeds a JSON schema)."""
    return _checked(library().LLMatcher.grammar_from_lark(lark), field, "grammar")


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
    """Where one sequence is in a grammar: which tokens may come next, and the tokens taken."""

    def __init__(self, lltokenizer: Any, grammar: str) -> None:
        lib = library()
        self._lib = lib
        self._matcher = lib.LLMatcher(lltokenizer, grammar)
        if self._matcher.is_error():
            raise StructuredOutputError(f"the constraint could not start: {self._matcher.get_error()}")

    def fill(self, bitmask: Any, row: int) -> None:
        """Write the allowed next tokens into row ``row`` of ``bitmask`` (numpy int32, C-contiguous)."""
        self._lib.numpy.fill_next_token_bitmask(self._matcher, bitmask, row)

    def consume(self, token: int) -> bool:
        """Advance by one chosen token; False when the grammar does not allow it."""
        return bool(self._matcher.consume_token(int(token)))

    @property
    def stopped(self) -> bool:
        """True once the grammar is complete and an end-of-sequence token was taken (or it failed)."""
        return bool(self._matcher.is_stopped())

    @property
    def accepting(self) -> bool:
        """True when the text so far is a complete answer of the grammar."""
        return bool(self._matcher.is_accepting())

    @property
    def error(self) -> str | None:
        """The matcher's error, or None."""
        return self._matcher.get_error() if self._matcher.is_error() else None


__all__ = ["JSON_LAYOUT", "Matcher", "bitmask_words", "lark_grammar", "library", "schema_grammar",
           "tokenizer_for", "version"]
