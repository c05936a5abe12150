"""``OpenAICompatibleAgent``: the Midori AI agent protocol on a model behind an OpenAI-compatible
chat-completions server (``transformers serve``, vLLM, TGI, a llama.cpp server, Ollama, OpenAI).

Creating an agent is instant and sends nothing; the ``openai`` client (the ``openai`` extra) is
imported on the first call. Every call streams, so each answer has a time to first token; the
statistics are the local agent's :class:`~midori_hf_nb.stats.ResponseStats` with
``backend="openai"``, ``device="remote"`` and the server's ``base_url``.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any

from ..config import ConfigError
from ..protocol import AgentPayload, AgentResponse, MidoriAiAgentProtocol, ReasoningEffort
from ..tools import tool_schemas
from ..log.control import check_log_option
from ..validation import validate_reasoning_effort
from .client import import_openai
from .config import SERVED_DEFAULTS, OpenAIConfig
from .errors import (
    ServedAgentError,
    ServerAuthError,
    ServerRequestError,
    ServerTimeoutError,
    ServerUnreachableError,
    UnknownModelError,
    scrub,
)
from .redaction import guard_logs
from .request import ServedCallSettings, request_body, resolve_served_settings
from .stream import ServedStream

#: the most characters of a server's error text put into an error message
MAX_DETAIL_CHARS = 400


def _detail(exc: Any) -> str:
    """The server's own words from an error response, shortened."""
    body = getattr(exc, "body", None)
    text = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            text = error.get("message")
        elif isinstance(error, str):
            text = error
        text = text or body.get("detail") or body.get("message")
    if not isinstance(text, str) or not text:
        text = str(getattr(exc, "message", "") or exc)
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL_CHARS else text[:MAX_DETAIL_CHARS - 3] + "..."


class OpenAICompatibleAgent(MidoriAiAgentProtocol):
    """A model on an OpenAI-compatible server behind the Midori AI agent protocol.

    Args:
        model: the model id the server serves (``GET /v1/models`` lists them).
        base_url: the server's API root, e.g. ``http://127.0.0.1:8000/v1``; what changes between
            a laptop and a GPU cluster. None: ``OPENAI_BASE_URL``, else OpenAI's API.
        api_key: sent as a bearer token; None: ``OPENAI_API_KEY``, else a placeholder. It never
            appears in a ``repr``, a log line, an error message or a transcript.
        max_new_tokens, temperature, top_p, top_k, do_sample, context_window, timeout, deadline,
        connect_timeout, max_retries, concurrency, stream_usage: see :class:`OpenAIConfig`;
            invalid values raise ``ValueError`` naming the field.
        reasoning_effort: default :class:`ReasoningEffort` for payloads that carry none (sent as
            the request's ``reasoning_effort``).
        log: the call log of this agent's calls (:mod:`midori_hf_nb.log`): None (default) follows
            the process's switch, False records nothing, True records even when it is off, a path
            records to that database; a call's own ``log=`` wins. The key is never recorded.
        **kwargs: further request fields for the server (JSON data), e.g. ``repetition_penalty``.

    Errors name the server and the model and never the key: :class:`ServerUnreachableError`,
    :class:`ServerAuthError` (refused key), :class:`UnknownModelError`,
    :class:`ServerTimeoutError`, :class:`ServerRequestError` (all :class:`ServedAgentError`).
    A stream the server drops midway keeps the partial answer with ``finish_reason="error"``.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        max_new_tokens: int = SERVED_DEFAULTS["max_new_tokens"],
        temperature: float = SERVED_DEFAULTS["temperature"],
        top_p: float = SERVED_DEFAULTS["top_p"],
        top_k: int | None = SERVED_DEFAULTS["top_k"],
        do_sample: bool = SERVED_DEFAULTS["do_sample"],
        context_window: int = SERVED_DEFAULTS["context_window"],
        *,
        reasoning_effort: ReasoningEffort | dict | None = None,
        log: Any = None,
        **kwargs: Any,
    ) -> None:
        self.log = log
        config = OpenAIConfig.from_kwargs(
            model=model, base_url=base_url, api_key=api_key, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, top_k=top_k, do_sample=do_sample,
            context_window=context_window, **kwargs,
        )
        self._setup(config, reasoning_effort)

    def _setup(self, config: OpenAIConfig, reasoning_effort: Any) -> None:
        if not hasattr(self, "_log"):
            self._log = None
        self._config = config
        self._reasoning_effort = validate_reasoning_effort(reasoning_effort, "reasoning_effort", error=ConfigError)
        self._clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]" = weakref.WeakKeyDictionary()
        self._clients_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: OpenAIConfig, reasoning_effort: ReasoningEffort | None = None) -> "OpenAICompatibleAgent":
        """An agent for an existing :class:`OpenAIConfig`."""
        agent = cls.__new__(cls)
        agent._setup(config, reasoning_effort)
        return agent

    def __repr__(self) -> str:
        return f"OpenAICompatibleAgent(model={self._config.model!r}, base_url={self._config.server!r})"

    def __reduce__(self):
        raise TypeError("an OpenAICompatibleAgent cannot be pickled (it holds an API key): create it again")

    # ------------------------------------------------------------------ properties

    @property
    def log(self) -> Any:
        """Where this agent's calls are logged (see the ``log`` argument); settable."""
        return self._log

    @log.setter
    def log(self, value: Any) -> None:
        self._log = check_log_option(value, "OpenAICompatibleAgent(log=...)")

    @property
    def config(self) -> OpenAIConfig:
        """The agent's :class:`OpenAIConfig` (its ``api_key`` shows as ``***``)."""
        return self._config

    @property
    def model(self) -> str:
        """The model id sent to the server."""
        return self._config.model

    @property
    def base_url(self) -> str:
        """The server's API root."""
        return self._config.server

    @property
    def concurrency(self) -> int:
        """How many calls a comparison runs at once on this server."""
        return self._config.concurrency

    # ------------------------------------------------------------------ the HTTP client

    def client(self) -> Any:
        """The ``openai.AsyncOpenAI`` client of the running event loop (one per loop, since its
        connections belong to the loop that opened them)."""
        loop = asyncio.get_running_loop()
        with self._clients_lock:
            client = self._clients.get(loop)
            if client is None:
                openai = import_openai()
                c = self._config
                client = openai.AsyncOpenAI(
                    api_key=c.api_key.reveal(), base_url=c.server, max_retries=c.max_retries,
                    timeout=openai.Timeout(c.timeout, connect=c.connect_timeout),
                )
                self._clients[loop] = client
                guard_logs(c.api_key)  # a server may echo the key in a header the client logs at DEBUG
            return client

    async def unload_model(self) -> None:
        """Close this event loop's connections to the server (the model stays on the server;
        the next call connects again)."""
        loop = asyncio.get_running_loop()
        with self._clients_lock:
            client = self._clients.pop(loop, None)
        if client is not None:
            await client.close()

    # ------------------------------------------------------------------ building blocks

    def resolve_settings(self, overrides: dict[str, Any] | None = None, **_: Any) -> ServedCallSettings:
        """The settings a call with ``overrides`` runs with; raises ``ValueError`` naming a field
        that is not allowed (see :func:`~midori_hf_nb.served.request.resolve_served_settings`)."""
        return resolve_served_settings(self._config, overrides or {})

    def request_body(self, payload: AgentPayload, call: ServedCallSettings,
                     schemas: list[dict] | None = None) -> dict[str, Any]:
        """The keyword arguments of ``chat.completions.create`` for ``payload`` (never the key)."""
        effort = payload.reasoning_effort or self._reasoning_effort
        return request_body(self._config, payload, call, schemas, effort)

    async def list_models(self) -> list[str]:
        """The model ids the server serves (``GET /v1/models``; at most 10,000, each at most 1,000
        characters, the API key masked where an id carries it); errors as for a call."""
        openai = import_openai()
        try:
            page = await self.client().models.list()
        except openai.OpenAIError as exc:
            raise await self.explain(exc, check_model=False) from None
        key = self._config.api_key.reveal()
        return [scrub(str(m.id)[:1_000], key) for m in page.data[:10_000]]

    async def _served_models(self) -> list[str] | None:
        try:
            return await self.list_models()
        except ServedAgentError:
            return None

    async def explain(self, exc: BaseException, *, check_model: bool = True) -> ServedAgentError:
        """The :class:`ServedAgentError` for an ``openai`` exception: which server, which model,
        what to check (asks the server for its models when a request was refused, to tell an
        unknown model apart). The key is never part of it."""
        openai = import_openai()
        c = self._config
        url, model, key = c.server, c.model, c.api_key.reveal()
        where = dict(base_url=url, model=model)
        if isinstance(exc, openai.APITimeoutError):
            return ServerTimeoutError(
                f"the server at {url} did not answer within timeout={c.timeout} s (connect_timeout="
                f"{c.connect_timeout} s) for model {model!r}: check that it runs and is not overloaded, or "
                "raise timeout", **where)
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            return ServerUnreachableError(scrub(
                f"cannot reach the server at {url} for model {model!r} ({type(cause).__name__}: {cause}): check "
                "that it runs and that base_url is its API root (e.g. http://127.0.0.1:8000/v1)", key), **where)
        if isinstance(exc, openai.APIStatusError):
            status, detail = exc.status_code, scrub(_detail(exc), key)
            if status in (401, 403):
                return ServerAuthError(
                    f"the server at {url} refused the API key (HTTP {status}: {detail}): check api_key "
                    "(or the OPENAI_API_KEY environment variable)", status=status, **where)
            if check_model and status in (400, 404, 422):
                available = await self._served_models()
                if available is not None and scrub(model, key) not in available:
                    shown = ", ".join(repr(m) for m in available[:20]) or "none listed"
                    return UnknownModelError(
                        f"the server at {url} does not serve model {model!r} (HTTP {status}: {detail}); it serves: "
                        f"{shown}", status=status, available=available, **where)
            hint = ("; check that base_url is the API root, e.g. http://HOST:PORT/v1"
                    if status == 404 and not url.rstrip("/").endswith("/v1") else "")
            return ServerRequestError(f"the server at {url} refused the request for model {model!r} "
                                      f"(HTTP {status}: {detail}){hint}", status=status, **where)
        return ServerRequestError(scrub(f"the request to {url} for model {model!r} failed: "
                                        f"{type(exc).__name__}: {exc}", key), **where)

    # ------------------------------------------------------------------ protocol

    async def get_context_window(self) -> int:
        """The configured context window (the server enforces its own)."""
        return self._config.context_window

    async def supports_streaming(self) -> bool:
        """Always True: :meth:`stream` yields text as the server sends it."""
        return True

    async def invoke(self, payload: AgentPayload, **overrides: Any) -> AgentResponse:
        """Answer ``payload``.

        Per-call ``overrides``: ``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``,
        ``do_sample``, ``greedy``, ``seed``, ``stop`` and further server options (JSON data).
        Cancelling the calling task closes the HTTP stream. ``log``: where this call is recorded
        (None, False, True or a path; see :mod:`midori_hf_nb.log`), over the agent's ``log``.
        """
        return await ServedStream(self, payload, events=True, overrides=overrides, method="invoke").collect()

    def stream(self, payload: AgentPayload, *, events: bool = False, **overrides: Any) -> ServedStream:
        """Stream the answer to ``payload``: text pieces (their concatenation equals the final
        ``response``), or with ``events=True`` :class:`~midori_hf_nb.StreamEvent` objects
        (``thinking``, ``text``, ``tool_call``, and a final ``done`` with the response)."""
        return ServedStream(self, payload, events=events, overrides=overrides)

    async def invoke_with_tools(self, payload: AgentPayload, tools: list[Any], **overrides: Any) -> AgentResponse:
        """Answer ``payload`` with ``tools`` offered as OpenAI tools; calls are parsed, never executed.

        Calls come from the server's ``tool_calls``, and from the text (the project's parser) when
        a server returns them as text; calls to names not offered carry ``"unknown": True``.
        """
        schemas = tool_schemas(tools)
        return await ServedStream(self, payload, events=True, overrides=overrides, schemas=schemas,
                                  method="invoke_with_tools").collect()

    def stream_with_tools(self, payload: AgentPayload, tools: list[Any], *, events: bool = True,
                          **overrides: Any) -> ServedStream:
        """Like :meth:`invoke_with_tools`, streamed (typed events by default); nothing is executed."""
        return ServedStream(self, payload, events=events, overrides=overrides, schemas=tool_schemas(tools),
                            method="stream_with_tools")


__all__ = ["OpenAICompatibleAgent"]
