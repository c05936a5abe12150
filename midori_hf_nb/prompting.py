"""From an :class:`AgentPayload` to chat messages to token ids, through the model's own chat template.

The system message is ``payload.system_context``, followed by the user profile (when not
empty), the earlier context of ``payload.thinking_blob`` (when there is no memory) and any
tool instructions. Memory entries follow with their roles, then the user's message.

A tokenizer without a chat template gets the plain fallback format::

    {system}

    User: {message}
    Assistant: {answer}
    User: {message}
    Assistant:

Fitting the context window: the prompt may use ``context_window - max_new_tokens`` tokens.
The oldest memory turns are dropped first; the user's message is never cut, and when it
alone does not fit a :class:`ContextWindowError` says by how much. How many of the newest turns
fit is searched for (O(log n) renders of the template), so fitting long memory takes time
linear in its length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from .protocol import AgentPayload, MemoryEntryData

TOOL_ROLES = ("tool", "ipython", "function")


class ContextWindowError(ValueError):
    """The prompt does not fit the context window even with all memory dropped."""


@dataclass
class Prompt:
    """A rendered prompt."""

    text: str
    input_ids: list[int]
    messages: list[dict[str, Any]]
    dropped_memory: int = 0
    used_chat_template: bool = True
    tools_in_template: bool = False
    template_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)


def chat_template_of(tokenizer: Any) -> str | None:
    """The tokenizer's default chat template text, or None."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), None)
    return template or None


def template_supports_tools(tokenizer: Any) -> bool:
    """True when the chat template reads a ``tools`` variable (so ``tools=`` reaches the model)."""
    template = chat_template_of(tokenizer)
    return bool(template) and "tools" in template


def tool_call_to_template(call: dict[str, Any]) -> dict[str, Any]:
    """A parsed call in the OpenAI/transformers message format."""
    return {
        "id": call.get("id") or "",
        "type": "function",
        "function": {"name": call["name"], "arguments": call.get("arguments") or {}},
    }


def _result_text(result: Any) -> str:
    if isinstance(result, str):
        return result
    try:
        return json.dumps(result, default=str)
    except (TypeError, ValueError):
        return str(result)


def memory_to_messages(memory: Iterable[MemoryEntryData], structured_tools: bool) -> list[dict[str, Any]]:
    """Memory entries as chat messages.

    An assistant entry with ``tool_calls`` becomes an assistant message with the calls, followed by
    one tool message per call that carries a ``result``. Without template tool support the calls
    are written as JSON text and results as user messages, so any template can render them.
    """
    messages: list[dict[str, Any]] = []
    for entry in memory:
        role = entry.role
        if role in TOOL_ROLES:
            messages.append(tool_result_message(entry.content, (entry.metadata or {}).get("name", "tool"),
                                                (entry.metadata or {}).get("tool_call_id"), structured_tools))
            continue
        calls = [c for c in (entry.tool_calls or []) if isinstance(c, dict) and c.get("name")]
        if role == "assistant" and calls:
            messages.append(assistant_tool_call_message(entry.content, calls, structured_tools))
            for call in calls:
                if "result" in call:
                    messages.append(tool_result_message(call["result"], call["name"], call.get("id"), structured_tools))
        else:
            messages.append({"role": role, "content": entry.content})
    return messages


def assistant_tool_call_message(content: str, calls: list[dict[str, Any]], structured: bool) -> dict[str, Any]:
    """The assistant's turn that made ``calls``."""
    if structured:
        return {"role": "assistant", "content": content or "", "tool_calls": [tool_call_to_template(c) for c in calls]}
    payload = {"tool_calls": [{"name": c["name"], "arguments": c.get("arguments") or {}} for c in calls]}
    text = (content + "\n" if content else "") + json.dumps(payload)
    return {"role": "assistant", "content": text}


def tool_result_message(result: Any, name: str, call_id: str | None, structured: bool) -> dict[str, Any]:
    """The message that feeds a tool's result (or error) back to the model."""
    text = _result_text(result)
    if structured:
        message = {"role": "tool", "name": name, "content": text}
        if call_id:
            message["tool_call_id"] = call_id
        return message
    return {"role": "user", "content": f"Result of tool {name}: {text}"}


def system_text(payload: AgentPayload, include_thinking_blob: bool, tool_instructions: str | None) -> str:
    """The system message for ``payload``."""
    parts = [payload.system_context.strip()] if payload.system_context and payload.system_context.strip() else []
    if payload.user_profile:
        lines = "\n".join(f"- {k}: {v}" for k, v in payload.user_profile.items())
        parts.append(f"User profile:\n{lines}")
    if include_thinking_blob and payload.thinking_blob and payload.thinking_blob.strip():
        parts.append(f"Earlier context:\n{payload.thinking_blob.strip()}")
    if tool_instructions:
        parts.append(tool_instructions)
    return "\n\n".join(parts)


def _merge_system_into_user(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For templates that reject a system role: prepend it to the first user message."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    for message in rest:
        if message["role"] == "user":
            message["content"] = f"{system}\n\n{message['content']}"
            return rest
    return [{"role": "user", "content": system}, *rest]


def plain_render(messages: list[dict[str, Any]]) -> str:
    """The documented fallback format for tokenizers without a chat template."""
    chunks: list[str] = []
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "system":
            chunks.append(f"{content}\n\n")
        elif role == "assistant":
            chunks.append(f"Assistant: {content}\n")
        elif role == "user":
            chunks.append(f"User: {content}\n")
        else:
            chunks.append(f"{role.capitalize()}: {content}\n")
    chunks.append("Assistant:")
    return "".join(chunks)


def render(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    template_kwargs: dict[str, Any] | None = None,
) -> tuple[str, list[int], bool]:
    """Render ``messages`` to text and token ids. Returns ``(text, ids, used_chat_template)``."""
    if chat_template_of(tokenizer) is None:
        text = plain_render(messages)
        return text, list(tokenizer(text)["input_ids"]), False
    kwargs = dict(template_kwargs or {})
    if tools:
        kwargs["tools"] = tools
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    except Exception as exc:  # jinja raises TemplateError for e.g. "System role not supported"
        if messages and messages[0]["role"] == "system" and "system" in str(exc).lower():
            merged = _merge_system_into_user(messages)
            text = tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True, **kwargs)
        else:
            raise
    return text, list(tokenizer(text, add_special_tokens=False)["input_ids"]), True


def _drop_oldest_turn(memory: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop the oldest message and whatever belongs to its turn, so memory starts at a user message."""
    rest = memory[1:]
    while rest and rest[0]["role"] != "user":
        rest = rest[1:]
    return rest


def turn_starts(memory: list[dict[str, Any]]) -> list[int]:
    """Where the memory kept after dropping 0, 1, 2, ... oldest turns begins, ending with ``len(memory)``.

    Entry ``k`` is the start of what :func:`_drop_oldest_turn` applied ``k`` times leaves: the
    whole memory (0), then every later user message, then nothing (``len(memory)``).
    """
    n = len(memory)
    starts = [0] + [i for i in range(1, n) if memory[i]["role"] == "user"]
    if starts[-1] != n:
        starts.append(n)
    return starts


def build_prompt(
    tokenizer: Any,
    payload: AgentPayload,
    *,
    context_window: int,
    max_new_tokens: int,
    tools: list[dict[str, Any]] | None = None,
    tool_instructions: str | None = None,
    template_kwargs: dict[str, Any] | None = None,
    continuation: list[dict[str, Any]] | None = None,
) -> Prompt:
    """Build the prompt for ``payload``, fitted to the context window.

    The payload is checked first (:func:`midori_hf_nb.validation.validate_payload`): a bad field
    raises :class:`~midori_hf_nb.validation.PayloadError` naming it.

    Fitting drops the oldest memory turns first (a turn starts at a user message), keeping as many
    of the newest turns as fit in ``context_window - max_new_tokens`` tokens. The number of turns
    kept is found by searching from the newest end (1, 2, 4, ... turns, then bisecting), so the
    template is rendered O(log n) times on prompts no longer than about twice the one returned:
    20,000 memory entries fit in well under a second. The search relies on a prompt never getting
    shorter when an older turn is added, which holds for chat templates that render each message
    in turn. The user's message is never cut: when it alone does not fit a
    :class:`ContextWindowError` says by how much.

    Args:
        tools: JSON schemas passed to the chat template as ``tools=`` (when it supports them).
        tool_instructions: text appended to the system message (for templates without tools).
        template_kwargs: extra chat-template variables (e.g. ``enable_thinking``).
        continuation: messages after the user's message (tool calls and results of a tool loop).
    """
    from .validation import validate_payload

    payload = validate_payload(payload)
    structured = tools is not None
    memory = memory_to_messages(payload.memory or [], structured_tools=structured)
    system = system_text(payload, include_thinking_blob=not payload.memory, tool_instructions=tool_instructions)
    head = [{"role": "system", "content": system}] if system else []
    tail = [{"role": "user", "content": payload.user_message}, *(continuation or [])]
    budget = context_window - max_new_tokens
    starts = turn_starts(memory)
    # Candidates k = 0 (all memory) .. last (none); fewer turns never make a longer prompt.
    last = len(starts) - 1
    rendered: dict[int, tuple[list[dict[str, Any]], str, list[int], bool]] = {}

    def attempt(k: int) -> bool:
        """Render with the ``k``-th candidate memory (``starts[k]`` onwards); True when it fits."""
        messages = [*head, *memory[starts[k]:], *tail]
        text, ids, used_template = render(tokenizer, messages, tools, template_kwargs)
        if len(ids) <= budget or k == last:  # keep what may be returned (or reported), not the long misses
            rendered[k] = (messages, text, ids, used_template)
        return len(ids) <= budget

    if not attempt(last):
        ids = rendered[last][2]
        raise ContextWindowError(
            f"the prompt needs {len(ids)} tokens but only {budget} are available "
            f"(context_window={context_window} minus max_new_tokens={max_new_tokens}), "
            "even with all conversation memory dropped; shorten the message or system context, "
            "lower max_new_tokens, or raise context_window"
        )
    fits, too_long = last, -1  # invariant: candidate `fits` fits, candidate `too_long` does not (-1: none known)
    step = 1
    while fits > 0:  # gallop towards more memory: keep 1, 2, 4, ... more turns
        k = max(fits - step, 0)
        if attempt(k):
            fits = k
            step *= 2
        else:
            too_long = k
            break
    while fits - too_long > 1 and too_long >= 0:  # bisect between the two
        k = (fits + too_long) // 2
        if attempt(k):
            fits = k
        else:
            too_long = k
    messages, text, ids, used_template = rendered[fits]
    return Prompt(
        text=text,
        input_ids=ids,
        messages=messages,
        dropped_memory=starts[fits],
        used_chat_template=used_template,
        tools_in_template=bool(tools) and used_template,
        template_kwargs=dict(template_kwargs or {}),
    )
