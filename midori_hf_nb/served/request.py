"""From a payload and a call's overrides to the body of one chat-completions request.

Pure Python (no ``openai`` import): the same messages the local agent puts through its chat
template (system context, user profile, earlier context, memory with its tool calls and results,
the user's message), in the OpenAI wire format, and the call's settings resolved with the rules
of :mod:`midori_hf_nb.settings` (``greedy``, a temperature turning sampling on, ``seed``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..config import ConfigError
from ..prompting import memory_to_messages, system_text
from ..protocol import AgentPayload, ReasoningEffort
from ..settings import split_overrides
from ..structured.formats import ResponseFormat
from .config import OpenAIConfig, check_server_options

@dataclass(frozen=True)
class ServedCallSettings:
    """What one call to the server runs with: the agent's configuration with the call's
    overrides applied (``config``), the seed, ``stop`` and further server options."""

    config: OpenAIConfig
    seed: int | None = None
    stop: str | list[str] | None = None
    server_options: dict[str, Any] = field(default_factory=dict)

    @property
    def greedy(self) -> bool:
        """True when the call decodes greedily (temperature 0 is sent)."""
        return self.config.greedy

    @property
    def max_new_tokens(self) -> int:
        return self.config.max_new_tokens


def _check_stop(value: Any) -> str | list[str] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and len(value) <= 16 and all(isinstance(s, str) for s in value):
        return list(value)
    raise ConfigError(f"stop={value!r:.80} is not allowed: expected a text or a list of at most 16 texts")


def resolve_served_settings(config: OpenAIConfig, overrides: Mapping[str, Any] | None = None) -> ServedCallSettings:
    """The settings one call runs with: ``config`` with ``overrides`` applied and checked.

    Overrides: ``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``, ``do_sample``,
    ``greedy``, ``seed``, ``stop``, ``deadline`` (seconds for the whole call), ``response_format``
    (validated as for a local agent, sent as :func:`wire_response_format`; the answer is plain text,
    not parsed) and further server options (JSON data, sent as request fields). Raises
    :class:`~midori_hf_nb.config.ConfigError` naming the field.
    """
    overrides = dict(overrides or {})
    deadline = overrides.pop("deadline", None)
    fields, seed, rest = split_overrides(overrides)
    if deadline is not None:
        fields["deadline"] = deadline
    if "stop_strings" in rest:  # the local agent's name for it
        rest["stop"] = rest.pop("stop_strings")
    if isinstance(rest.get("response_format"), ResponseFormat):
        rest["response_format"] = wire_response_format(rest["response_format"])
    stop = _check_stop(rest.pop("stop", None))
    options = check_server_options(rest, "overrides") if rest else {}
    call_config = config.replace(**fields) if fields else config
    return ServedCallSettings(call_config, seed, stop, {**config.server_options, **options})


def wire_response_format(fmt: ResponseFormat) -> dict[str, Any]:
    """A validated ``response_format`` as the OpenAI request field: ``{"type": "json_schema",
    "json_schema": {"name", "schema", "strict": true}}`` (``{"type": "json_object"}`` for ``"json"``).
    Servers that implement it (OpenAI, vLLM, llama.cpp) constrain the answer; others may ignore it,
    so the answer is still parsed and checked by whoever asked for it."""
    if fmt.kind == "json":
        return {"type": "json_object"}
    name = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in fmt.name)[:64] or "answer"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": fmt.schema, "strict": True}}


def _wire_call(call: dict[str, Any]) -> dict[str, Any]:
    """A call of the project's form as an OpenAI ``tool_calls`` item (arguments as JSON text)."""
    function = call.get("function") if isinstance(call.get("function"), dict) else call
    arguments = function.get("arguments") or {}
    return {"id": call.get("id") or "", "type": "function",
            "function": {"name": function.get("name"), "arguments": arguments if isinstance(arguments, str)
                         else json.dumps(arguments, default=str)}}


def payload_messages(payload: AgentPayload) -> list[dict[str, Any]]:
    """The chat messages of ``payload`` in the OpenAI wire format.

    Memory tool calls and results are sent structured (``tool_calls`` on the assistant message,
    ``tool`` messages with their ``tool_call_id``) when every call has an id; otherwise as text,
    which every server accepts.
    """
    memory = list(payload.memory or [])
    structured = all(c.get("id") for entry in memory for c in (entry.tool_calls or []) if isinstance(c, dict)) \
        and all((entry.metadata or {}).get("tool_call_id") for entry in memory if entry.role in ("tool", "function"))
    messages: list[dict[str, Any]] = []
    system = system_text(payload, include_thinking_blob=not memory, tool_instructions=None)
    if system:
        messages.append({"role": "system", "content": system})
    for message in memory_to_messages(memory, structured_tools=structured):
        if message.get("tool_calls"):
            message = {**message, "tool_calls": [_wire_call(c) for c in message["tool_calls"]]}
        if message.get("role") == "tool":
            message = {k: v for k, v in message.items() if k != "name"}
        messages.append(message)
    messages.append({"role": "user", "content": payload.user_message})
    return messages


def request_body(config: OpenAIConfig, payload: AgentPayload, call: ServedCallSettings,
                 schemas: list[dict] | None, reasoning_effort: ReasoningEffort | None) -> dict[str, Any]:
    """The keyword arguments of ``client.chat.completions.create`` for one streamed call
    (server options go in ``extra_body``)."""
    c = call.config
    body: dict[str, Any] = {
        "model": config.model,
        "messages": payload_messages(payload),
        "stream": True,
        "max_tokens": c.max_new_tokens,
        "temperature": 0.0 if c.greedy else c.temperature,
    }
    if not c.greedy:
        body["top_p"] = c.top_p
    if call.seed is not None:
        body["seed"] = call.seed
    if call.stop is not None:
        body["stop"] = call.stop
    if c.stream_usage:
        body["stream_options"] = {"include_usage": True}
    if schemas:
        body["tools"] = schemas
    if reasoning_effort is not None:
        body["reasoning_effort"] = reasoning_effort.effort
    extra = dict(call.server_options)
    if c.top_k is not None and not c.greedy:
        extra.setdefault("top_k", c.top_k)
    if extra:
        body["extra_body"] = extra
    return body


__all__ = ["ServedCallSettings", "payload_messages", "request_body", "resolve_served_settings",
           "wire_response_format"]
