"""Settings of an agent on an OpenAI-compatible server, validated at construction.

Nothing here imports the ``openai`` client: building a configuration (and so an agent) works
without the optional extra, and is instant.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..config import ConfigError, fields_from_kwargs, refusal_message
from .errors import KEY_MASK, NO_KEY
from .limits import DEFAULT_DEADLINE

#: where the key is read from when none is given (the ``openai`` client's own variable)
API_KEY_ENV = "OPENAI_API_KEY"
#: where the base URL is read from when none is given (the ``openai`` client's own variable)
BASE_URL_ENV = "OPENAI_BASE_URL"
# NO_KEY (from .errors) is sent when there is no key at all: servers on a private network
# (``transformers serve``, vLLM without ``--api-key``, llama.cpp, Ollama) accept any key, and the
# client needs a non-empty one
#: the most characters of one server option value (a JSON text) sent with each request
MAX_OPTION_CHARS = 100_000


class ApiKey:
    """An API key that never shows itself: ``repr``, ``str`` and formatting give ``***``.

    :meth:`reveal` gives the key to the one place that sends it (the HTTP client).
    """

    __slots__ = ("_value", "__weakref__")

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The key itself (for the ``Authorization`` header only)."""
        return self._value

    def __repr__(self) -> str:
        return f"ApiKey({KEY_MASK})"

    def __str__(self) -> str:
        return KEY_MASK

    def __format__(self, spec: str) -> str:
        return KEY_MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ApiKey) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("ApiKey", self._value))

    def __reduce__(self):  # a pickled agent would carry the key: refuse rather than leak it
        raise TypeError("an ApiKey cannot be pickled: pass the key again (or set OPENAI_API_KEY) where it is needed")


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ConfigError(refusal_message(f"OpenAIConfig.{name}", value, allowed))


def _number(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(name, value, f"expected a number from {low} to {high}")
    if value > high or value < low or (low_open and value == low):
        _fail(name, value, f"expected a number {'above' if low_open else 'from'} {low} {'and at most' if low_open else 'to'} {high}")
    return float(value)


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        _fail(name, value, "expected a positive integer (> 0)")


def check_server_options(options: Any, where: str) -> dict[str, Any]:
    """Server options (request fields beyond the OpenAI ones, e.g. ``top_k`` or
    ``repetition_penalty`` for vLLM): names are text, values are JSON data of bounded size.

    A Python object a server cannot receive (a ``logits_processor``, a callable) is refused
    naming the field: it only works with a local model.
    """
    if not isinstance(options, dict):
        raise ConfigError(refusal_message(where, options, "expected a dict of request fields"))
    for key, value in options.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(refusal_message(f"{where} key", key, "expected a request field name (text)"))
        try:
            text = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ConfigError(refusal_message(
                f"{where}[{key!r}]", value,
                "expected JSON data (text, numbers, true/false, lists, dicts): a served model cannot run Python "
                "objects such as a logits_processor; use a local agent for those")) from None
        if len(text) > MAX_OPTION_CHARS:
            raise ConfigError(f"{where}[{key!r}] is not allowed: more than {MAX_OPTION_CHARS} characters as JSON")
    return dict(options)


def check_base_url(value: Any, field_name: str = "OpenAIConfig.base_url") -> str:
    """An ``http://`` or ``https://`` URL with a host (the API root, e.g. ``http://127.0.0.1:8000/v1``)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(refusal_message(field_name, value, "expected an http:// or https:// URL such as "
                                          "'http://127.0.0.1:8000/v1'"))
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ConfigError(refusal_message(field_name, value, f"expected a valid URL ({exc})")) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(refusal_message(field_name, value, "expected an http:// or https:// URL with a host, such "
                                          "as 'http://127.0.0.1:8000/v1'"))
    if parts.username or parts.password:
        raise ConfigError(f"{field_name} is not allowed to carry a user name or password: pass the key as api_key")
    return value.strip().rstrip("/")


@dataclass
class OpenAIConfig:
    """Settings of an :class:`~midori_hf_nb.served.OpenAICompatibleAgent`.

    Args:
        model: the model id the server serves (``GET /v1/models`` lists them).
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1`` (``transformers serve``, vLLM,
            llama.cpp), ``http://127.0.0.1:11434/v1`` (Ollama). None: the ``OPENAI_BASE_URL``
            environment variable, else OpenAI's own API.
        api_key: the key sent as ``Authorization: Bearer ...``. None: ``OPENAI_API_KEY``, else a
            placeholder (private servers accept any key). Kept as an :class:`ApiKey`: it never
            appears in a ``repr``, a log line, an error message or an exported transcript.
        max_new_tokens: upper bound on generated tokens per call (sent as ``max_tokens``).
        temperature: 0.0-2.0; 0 (or ``do_sample=False``) means greedy decoding.
        top_p: nucleus sampling mass in (0, 1], sent when sampling.
        top_k: top-k sampling, sent when set (vLLM, llama.cpp and Ollama read it; OpenAI's API and
            ``transformers serve`` refuse it). None: not sent.
        do_sample: sample (True) or decode greedily (False: temperature 0 is sent).
        context_window: the model's context window as the server has it (reported by
            ``get_context_window``; the server enforces it).
        timeout: seconds to wait for each piece of an answer (and for the whole request to start).
        deadline: seconds one call may take in all, however slowly the pieces come (default 600);
            past it the answer ends with ``finish_reason="error"``, the partial answer kept.
        connect_timeout: seconds to wait for the connection.
        max_retries: retries of a request that failed to connect or was refused with a
            retryable status (the ``openai`` client's own retry, with back-off). Default 0:
            an unreachable server is reported at once.
        concurrency: how many calls :func:`~midori_hf_nb.compare.compare` runs at once on this
            server (a server batches concurrent requests itself).
        stream_usage: ask for token counts at the end of a stream (``stream_options``); servers
            that do not know it ignore it.
        server_options: further request fields for the server (JSON data), e.g.
            ``{"repetition_penalty": 1.1}`` for vLLM.
    """

    model: str
    base_url: str | None = None
    api_key: ApiKey | str | None = field(default=None, repr=False)
    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int | None = None
    do_sample: bool = True
    context_window: int = 4096
    timeout: float = 120.0
    deadline: float = DEFAULT_DEADLINE
    connect_timeout: float = 10.0
    max_retries: int = 0
    concurrency: int = 4
    stream_usage: bool = True
    server_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.model, os.PathLike):
            self.model = os.fspath(self.model)
        if not isinstance(self.model, str) or not self.model.strip():
            _fail("model", self.model, "expected the model id the server serves (GET /v1/models lists them)")
        base_url = self.base_url if self.base_url is not None else os.environ.get(BASE_URL_ENV)
        self.base_url = check_base_url(base_url) if base_url is not None else None
        key = self.api_key
        if key is None:
            key = os.environ.get(API_KEY_ENV) or NO_KEY
        if isinstance(key, str):
            if not key.strip() or any(c in key for c in "\r\n"):
                raise ConfigError("OpenAIConfig.api_key is not allowed: expected a non-empty key on one line "
                                  "(or None for the OPENAI_API_KEY environment variable)")
            key = ApiKey(key.strip())
        if not isinstance(key, ApiKey):
            raise ConfigError(f"OpenAIConfig.api_key is not allowed: expected text or None (got {type(key).__name__})")
        self.api_key = key
        _positive_int("max_new_tokens", self.max_new_tokens)
        _number("temperature", self.temperature, 0.0, 2.0)
        _number("top_p", self.top_p, 0.0, 1.0, low_open=True)
        if self.top_k is not None:
            _positive_int("top_k", self.top_k)
        if not isinstance(self.do_sample, bool):
            _fail("do_sample", self.do_sample, "expected true or false")
        if not isinstance(self.stream_usage, bool):
            _fail("stream_usage", self.stream_usage, "expected true or false")
        _positive_int("context_window", self.context_window)
        _number("timeout", self.timeout, 0.0, 86_400.0, low_open=True)
        _number("deadline", self.deadline, 0.0, 86_400.0, low_open=True)
        _number("connect_timeout", self.connect_timeout, 0.0, 3_600.0, low_open=True)
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or not 0 <= self.max_retries <= 10:
            _fail("max_retries", self.max_retries, "expected a whole number from 0 to 10")
        _positive_int("concurrency", self.concurrency)
        self.server_options = check_server_options(self.server_options, "OpenAIConfig.server_options")

    @property
    def greedy(self) -> bool:
        """True when this configuration decodes greedily (``do_sample=False`` or temperature 0)."""
        return not self.do_sample or self.temperature == 0

    @property
    def server(self) -> str:
        """The base URL calls go to (OpenAI's own API when none was given)."""
        return self.base_url or "https://api.openai.com/v1"

    def replace(self, **changes: Any) -> "OpenAIConfig":
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The names of the constructor options."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_kwargs(cls, model: str, **kwargs: Any) -> "OpenAIConfig":
        """Build a configuration: known options set fields, the rest become server options
        (as a TOML file's further keys do)."""
        return cls(model=model, **fields_from_kwargs(cls.field_names(), kwargs, "server_options"))


#: The default of every :class:`OpenAIConfig` field that has one.
SERVED_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(OpenAIConfig) if f.default is not dataclasses.MISSING
}

__all__ = ["API_KEY_ENV", "ApiKey", "BASE_URL_ENV", "NO_KEY", "OpenAIConfig", "SERVED_DEFAULTS",
           "check_base_url", "check_server_options"]
