"""``response_format`` and ``tool_choice``: what a call asks for, validated before any model loads.

Nothing here imports torch; the constraint library is imported (lazily, through
:mod:`.backend`) only to compile a schema.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import StructuredOutputError
from .schema_checks import check_schema_structure

#: The ``response_format`` that asks for any JSON object.
ANY_JSON = "json"
#: The accepted ``tool_choice`` words.
TOOL_CHOICES = ("auto", "required", "none")
#: The longest answer text parsed as JSON (the answer is bounded by max_new_tokens anyway).
MAX_PARSE_CHARS = 4_000_000


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_pydantic_model(value: Any) -> bool:
    if not isinstance(value, type):
        return False
    try:
        from pydantic import BaseModel
    except ImportError:  # pragma: no cover - a pydantic class cannot exist without pydantic
        return False
    return issubclass(value, BaseModel)


def _is_python_type(value: Any) -> bool:
    return isinstance(value, type) or typing.get_origin(value) is not None


@dataclass(frozen=True)
class GrammarConstraint:
    """A compiled grammar; the engine runs it as a logits processor
    (:class:`~.processor.GrammarLogitsProcessor`, made fresh for each generation)."""

    grammar: str = field(repr=False)
    #: what it constrains to, for statistics and errors ("json", a model's name, "tool call")
    label: str
    #: bound number literals to what a double holds (see :mod:`.backend`); the grammar is JSON
    literal_bounds: bool = True


@dataclass(frozen=True)
class ResponseFormat:
    """A validated ``response_format``: the JSON schema the answer must match, and how to parse it.

    Made by :func:`response_format_from` from a pydantic model class, a JSON schema dict, a Python
    type (``list[int]``, a ``TypedDict``, a dataclass...) or ``"json"`` (any JSON object).
    """

    #: "model" (a pydantic model class), "type" (a Python type), "schema" (a JSON schema) or "json"
    kind: str
    schema: dict[str, Any] = field(repr=False)
    #: a short name: the model's or type's name, the schema's title, or "json"
    name: str
    target: Any = field(default=None, repr=False, compare=False)
    constraint: GrammarConstraint | None = field(default=None, repr=False, compare=False)

    def parse(self, text: str) -> Any:
        """The answer text as the requested object: a model instance (kind "model"), a validated
        Python value (kind "type") or the decoded JSON (kinds "schema" and "json").

        Raises :class:`StructuredOutputError` saying why the text does not match.
        """
        if len(text) > MAX_PARSE_CHARS:
            raise StructuredOutputError(f"the answer is longer than {MAX_PARSE_CHARS} characters; not parsed")
        try:
            return self._parse(text)
        except RecursionError:  # nesting deeper than the interpreter's recursion limit (answer or schema)
            raise StructuredOutputError(
                f"the answer could not be checked against {self.name}: it or the schema nests deeper than "
                "Python's recursion limit") from None

    def _parse(self, text: str) -> Any:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StructuredOutputError(f"the answer is not JSON: {exc}") from exc
        if self.kind == "model":
            from pydantic import ValidationError

            try:
                return self.target.model_validate(value)
            except ValidationError as exc:
                raise StructuredOutputError(f"the answer does not match {self.name}: {exc}") from exc
        if self.kind == "type":
            from pydantic import TypeAdapter, ValidationError

            try:
                return TypeAdapter(self.target).validate_python(value)
            except ValidationError as exc:
                raise StructuredOutputError(f"the answer does not match {self.name}: {exc}") from exc
        from jsonschema.exceptions import best_match

        from .answers import answer_validator

        error = best_match(answer_validator(self.schema).iter_errors(value))
        if error is not None:
            where = "".join(f"[{part!r}]" for part in error.absolute_path)
            raise StructuredOutputError(f"the answer does not match the schema"
                                        f"{' at ' + where if where else ''}: {error.message}")
        return value


def _check_schema(schema: Any, field: str) -> dict[str, Any]:
    if not isinstance(schema, dict):
        raise StructuredOutputError(f"{field}={_show(schema)} is not allowed: expected a JSON schema dict")
    check_schema_structure(schema, field)  # before anything recurses into it
    try:
        json.dumps(schema)
    except (TypeError, ValueError) as exc:
        raise StructuredOutputError(f"{field}: the schema is not JSON data ({exc})") from exc
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise StructuredOutputError(f"{field}: not a valid JSON schema: {exc.message}") from exc
    return schema


def _pydantic_schema(value: Any, field: str, make: Any) -> dict[str, Any]:
    """The JSON schema pydantic makes for ``value``; its user errors (a forward reference that is
    not defined, ...) and a recursion past Python's limit become :class:`StructuredOutputError`."""
    from pydantic import PydanticUserError

    try:
        return make()
    except PydanticUserError as exc:
        raise StructuredOutputError(f"{field}={_show(value)}: pydantic cannot describe this type as a JSON schema: "
                                    f"{str(exc).splitlines()[0]}; define every type it refers to") from exc
    except RecursionError:
        raise StructuredOutputError(f"{field}={_show(value)}: this type nests deeper than Python's recursion limit; "
                                    "not allowed") from None


def response_format_from(value: Any, field: str = "response_format") -> ResponseFormat | None:
    """Validate a ``response_format`` and compile its grammar; None stays None.

    Accepted: a pydantic model class, a JSON schema dict, ``"json"`` (any JSON object), a Python
    type pydantic can describe (``list[int]``, ``TypedDict``, dataclass, ...) or a
    :class:`ResponseFormat`. Raises :class:`StructuredOutputError` naming ``field``: not one of
    these kinds, not a valid schema, a schema the constraint library cannot compile, or the
    library missing.
    """
    from . import backend

    if value is None or isinstance(value, ResponseFormat):
        return value
    if isinstance(value, str):
        if value != ANY_JSON:
            raise StructuredOutputError(
                f"{field}={_show(value)} is not allowed: expected \"json\" (any JSON object), a pydantic model "
                "class, a JSON schema dict or a Python type")
        kind, schema, name, target = "json", {"type": "object"}, ANY_JSON, None
    elif _is_pydantic_model(value):
        kind, schema, name, target = "model", _pydantic_schema(value, field, value.model_json_schema), value.__name__, value
    elif isinstance(value, dict):
        kind, schema, target = "schema", _check_schema(value, field), None
        name = str(value.get("title") or "schema")[:80]
    elif _is_python_type(value):
        try:
            from pydantic import PydanticSchemaGenerationError, TypeAdapter
        except ImportError as exc:
            raise StructuredOutputError(f"{field}: a Python type needs pydantic to describe it; install pydantic "
                                        "or pass a JSON schema dict") from exc
        try:
            schema = _pydantic_schema(value, field, lambda: TypeAdapter(value).json_schema())
        except StructuredOutputError:
            raise
        except (PydanticSchemaGenerationError, TypeError, ValueError) as exc:
            raise StructuredOutputError(f"{field}={_show(value)}: this Python type cannot be described as a JSON "
                                        f"schema ({exc}); pass a pydantic model class or a JSON schema dict") from exc
        kind, target = "type", value
        name = getattr(value, "__name__", None) or str(value)
    else:
        raise StructuredOutputError(
            f"{field}={_show(value)} ({type(value).__name__}) is not allowed: expected \"json\", a pydantic "
            "model class (not an instance), a JSON schema dict or a Python type such as list[int]")
    grammar = backend.schema_grammar(schema, field)
    return ResponseFormat(kind, schema, name, target, GrammarConstraint(grammar, name))


@dataclass(frozen=True)
class ToolChoice:
    """A validated ``tool_choice``: ``"auto"`` (the model decides), ``"none"`` (no tools offered,
    no call parsed), ``"required"`` (exactly one call to one of the tools) or a tool's name (exactly
    one call to it). ``required`` and a name generate the call under the grammar of the tools'
    schemas, so its arguments always validate."""

    mode: str  #: "auto", "none", "required" or "named"
    name: str | None = None

    @property
    def forces_call(self) -> bool:
        """True for "required" and a named tool."""
        return self.mode in ("required", "named")

    def describe(self) -> str:
        """The choice as given ("auto", "none", "required" or the tool's name)."""
        return self.name if self.mode == "named" and self.name else self.mode


def tool_choice_from(value: Any, field: str = "tool_choice") -> ToolChoice | None:
    """Validate a ``tool_choice``: "auto", "required", "none", ``{"name": tool}`` (or OpenAI's
    ``{"type": "function", "function": {"name": tool}}``), or a :class:`ToolChoice`; None stays None."""
    if value is None or isinstance(value, ToolChoice):
        return value
    if isinstance(value, str):
        if value in TOOL_CHOICES:
            return ToolChoice(value)
    elif isinstance(value, dict):
        inner = value.get("function") if isinstance(value.get("function"), dict) else value
        name = inner.get("name")
        if isinstance(name, str) and name and len(name) <= 200:
            return ToolChoice("named", name)
    raise StructuredOutputError(
        f"{field}={_show(value)} is not allowed: expected \"auto\", \"required\", \"none\" or "
        "{\"name\": <one of the offered tools>}")


__all__ = ["ANY_JSON", "GrammarConstraint", "ResponseFormat", "TOOL_CHOICES", "ToolChoice",
           "response_format_from", "tool_choice_from"]
