"""From a finished generation to an :class:`AgentResponse`: reasoning and tool calls parsed
(the tokenizer's own response parser where the model ships one, else the tag parser), and the
typed :class:`~midori_hf_nb.stats.ResponseStats` put into the metadata."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..logprobs import Logprobs, LogprobsResponse
from ..parsing import extract_reasoning_blocks, normalise_call
from ..protocol import AgentPayload, AgentResponse
from ..stats import ResponseStats
from ..structured import StructuredOutputError
from ..tools.answers import attach_tool_calls

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import GenerationResult, LoadedModel
    from ..prompting import Prompt
    from ..settings import CallSettings

logger = logging.getLogger("midori_hf_nb")


@dataclass
class StructuredResponse(LogprobsResponse):
    """The response of a call with a ``response_format``: an :class:`AgentResponse` whose
    ``response`` is the raw JSON text, plus ``parsed``: the answer as the requested object (a
    pydantic model instance, a validated Python value, or the decoded JSON), or None when the
    answer is not complete (``finish_reason`` "length" or "cancelled"; the reason is in
    ``metadata["structured_error"]``). Never a half object. When the repetition guard ends a loop
    in the answer, the answer is closed by the grammar's shortest completion and parsed
    (``finish_reason`` "repetition", ``metadata["closing_tokens"]`` the completion's length).
    ``logprobs`` holds the token probabilities when they were asked for (see
    :class:`~midori_hf_nb.logprobs.LogprobsResponse`)."""

    parsed: Any = None


def parse_structured(call: "CallSettings", result: "GenerationResult", answer: str) -> tuple[Any, str | None]:
    """(parsed object, None) for a complete answer of a call with a ``response_format``, else
    (None, why)."""
    fmt = call.response_format
    if result.finish_reason == "length":
        return None, (f"the answer reached max_new_tokens={call.generation.max_new_tokens} before the JSON "
                      "closed; raise max_new_tokens")
    if result.finish_reason == "repetition" and result.closing_tokens is None:
        return None, ("the repetition guard ended a loop and no completion of the grammar was found that fits in "
                      f"max_new_tokens={call.generation.max_new_tokens}; raise max_new_tokens")
    if result.finish_reason not in ("stop", "repetition"):
        return None, f"the generation ended with finish_reason={result.finish_reason!r} before the JSON closed"
    try:
        return fmt.parse(answer), None
    except StructuredOutputError as exc:
        return None, str(exc)


def native_parse(tokenizer: Any, text: str, prefix: str, schemas: list[dict] | None) -> dict[str, Any] | None:
    """The tokenizer's own ``parse_response`` where the model ships a response template, else None.

    A tokenizer without a response template returns None at once; a template that does not
    match this output (the parser raises) is logged and returns None, so the tag parser runs.
    """
    from ..engine.capabilities import tokenizer_parses_responses

    if not tokenizer_parses_responses(tokenizer):
        return None
    try:
        message = tokenizer.parse_response(text, prefix=prefix, tools=schemas or None)
    except Exception as exc:  # model output the template cannot read: the tag parser takes over
        logger.debug("parse_response failed (%s: %s); using the tag parser", type(exc).__name__, exc)
        return None
    return message if isinstance(message, dict) else None


def build_response(model_name: str, lm: "LoadedModel", prompt: "Prompt", result: "GenerationResult",
                   call: "CallSettings", payload: AgentPayload, schemas: list[dict] | None,
                   called_at: float) -> AgentResponse:
    """The protocol response of one generation, with its statistics in ``metadata``
    (``called_at``: ``time.perf_counter()`` when the call began)."""
    now = time.perf_counter()
    settings = call.generation
    native = native_parse(lm.tokenizer, result.text, prompt.text, schemas)
    native_calls: list[dict] = []
    native_errors: list[str] = []  # calls the tokenizer's parser found but that are not readable calls
    if native is not None:
        thought = native.get("thinking") or native.get("reasoning_content") or ""
        blocks, answer = ([thought.strip()] if thought.strip() else []), str(native.get("content") or "").strip()
        for item in native.get("tool_calls") or []:
            call_dict, error = normalise_call(item)
            if call_dict:
                native_calls.append(call_dict)
            else:
                native_errors.append(error or "unreadable tool call")
    else:
        blocks, answer = extract_reasoning_blocks(result.text)
    stats = ResponseStats(
        model=model_name, backend="huggingface", session_id=payload.session_id,
        prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
        time_to_first_token=result.time_to_first_token, total_seconds=result.seconds, wall_seconds=now - called_at,
        call_to_first_token=None if result.first_token_at is None else result.first_token_at - called_at,
        tokens_per_second=result.tokens_per_second, decode_tokens_per_second=result.decode_tokens_per_second,
        finish_reason=result.finish_reason, decode_path=result.decode_path,
        decode_path_reason=result.decode_path_reason, memory_dropped=prompt.dropped_memory,
        used_chat_template=prompt.used_chat_template, device=lm.spec.device, dtype=lm.spec.dtype,
        quantization=lm.spec.quantization, seed=settings.seed, do_sample=not settings.greedy,
        temperature=settings.temperature, max_new_tokens=settings.max_new_tokens,
        raw_text=result.text, parser="tokenizer" if native is not None else "tags",
        reproducible=result.reproducible, reproducible_reason=result.reproducible_reason,
    )
    calls = None
    if schemas is not None:
        answer, blocks, calls = attach_tool_calls(answer, blocks, native_calls, native_errors, schemas, stats,
                                                  tools_in_template=prompt.tools_in_template)
    stats.thinking_blocks = list(blocks)
    stats.extra["reused_prompt_tokens"] = result.reused_prompt_tokens
    stats.extra["shared_rows"] = result.shared_rows
    if call.tool_choice is not None:
        stats.tool_choice = call.tool_choice.describe()
    if settings.constraint is not None:
        stats.closing_tokens = result.closing_tokens
    logprobs = result_logprobs(result, settings.probabilities)
    if logprobs is not None:
        stats.logprobs = logprobs.as_dict()
    if call.response_format is not None:
        stats.response_format = call.response_format.name
        parsed, stats.structured_error = parse_structured(call, result, answer)
        return StructuredResponse(thinking="\n\n".join(blocks), response=answer, code=None, tool_calls=calls,
                                  metadata=stats.as_dict(), logprobs=logprobs, parsed=parsed)
    if logprobs is not None:
        return LogprobsResponse(thinking="\n\n".join(blocks), response=answer, code=None, tool_calls=calls,
                                metadata=stats.as_dict(), logprobs=logprobs)
    return AgentResponse(thinking="\n\n".join(blocks), response=answer, code=None, tool_calls=calls,
                         metadata=stats.as_dict())


def result_logprobs(result: "GenerationResult", request: Any) -> Logprobs | None:
    """The :class:`~midori_hf_nb.logprobs.Logprobs` of a generation that asked for them (else None)."""
    if request is None:
        return None
    return Logprobs(content=list(result.logprobs or []), prompt=result.prompt_logprobs, source="engine",
                    top=request.top)
