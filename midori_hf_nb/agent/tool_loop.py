"""``ToolLoopStream``: the opt-in tool execution loop as a stream of events.

Like :mod:`.stream`, the loop's body is an async generator over a shared state, never over the
``ToolLoopStream`` itself, so dropping the stream stops the running generation at once.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator

from ..prompting import assistant_tool_call_message, template_supports_tools, tool_result_message
from ..protocol import AgentPayload, AgentResponse
from ..stats import ResponseStats
from ..structured.formats import tool_choice_from
from ..tools import DEFAULT_MAX_RESULT_CHARS, DEFAULT_TOOL_TIMEOUT, ToolRunner, check_tool_options
from ..events import EventStream, StreamEvent
from ..log.capture import new_id
from .stream import AgentStream

if TYPE_CHECKING:  # pragma: no cover
    from .host import GenerationHost


@dataclass
class ToolLoopState:
    """What a tool loop and its consumer share: the executed steps, the current step's stream."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    response: AgentResponse | None = None
    current: AgentStream | None = None
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True
        if self.current is not None:
            self.current.cancel()


class ToolLoopStream(EventStream):
    """An async iterator over an opt-in tool loop (see :meth:`HuggingFaceLocalAgent.stream_tools`).

    :attr:`steps` lists the executed calls so far, also when the loop is stopped or its task
    cancelled; :attr:`response` holds the final response once the loop has ended.
    :meth:`cancel` stops the current generation and ends the loop without running further calls.
    """

    def __init__(self, agent: "GenerationHost", payload: AgentPayload, tools: list[Any], max_steps: int,
                 overrides: dict[str, Any], tool_timeout: float | None = DEFAULT_TOOL_TIMEOUT,
                 max_result_chars: int = DEFAULT_MAX_RESULT_CHARS) -> None:
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps={max_steps!r} is not allowed: expected a positive integer")
        options = check_tool_options(tool_timeout, max_result_chars, caller="")
        state = ToolLoopState()
        super().__init__(run_tool_loop(state, agent, payload, tools, max_steps, overrides, *options), state,
                         events=True)
        weakref.finalize(self, state.cancel)

    @property
    def steps(self) -> list[dict[str, Any]]:
        """The executed calls so far (records of step, name, arguments, id, result, error, seconds, status, note)."""
        return self._state.steps

    def cancel(self) -> None:
        """Stop the running generation; calls not yet run are not run."""
        self._state.cancel()

    async def aclose(self) -> None:
        """Stop the loop and close it."""
        self._state.cancel()
        await self._iterator.aclose()


def later_step_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides of the steps after the first: a ``tool_choice`` that forces a call
    ("required", a name) applies to the first step only, so the model can answer with the results."""
    choice = tool_choice_from(overrides.get("tool_choice"))
    if choice is None or not choice.forces_call:
        return overrides
    return {**overrides, "tool_choice": None}


async def run_tool_loop(state: ToolLoopState, agent: "GenerationHost", payload: AgentPayload,
                        tools: list[Any], max_steps: int, overrides: dict[str, Any],
                        tool_timeout: float | None = DEFAULT_TOOL_TIMEOUT,
                        max_result_chars: int = DEFAULT_MAX_RESULT_CHARS) -> AsyncIterator[StreamEvent]:
    """The events of a tool loop (the body of :class:`ToolLoopStream`)."""
    runner = ToolRunner(tools, tool_timeout=tool_timeout, max_result_chars=max_result_chars)
    schemas = runner.schemas
    lm = await agent.ensure_loaded()
    structured = template_supports_tools(lm.tokenizer)
    continuation: list[dict] = []
    thinking: list[str] = []
    totals = {"prompt_tokens": 0, "completion_tokens": 0, "total_seconds": 0.0}
    response: AgentResponse | None = None
    step = 0
    loop_id = new_id()  # the log's group_id of the loop's generations
    for step in range(1, max_steps + 1):
        step_overrides = overrides if step == 1 else later_step_overrides(overrides)
        state.current = AgentStream(agent, payload, events=True, overrides=step_overrides, schemas=schemas,
                                    continuation=list(continuation), method="tool_loop", group_id=loop_id)
        if state.cancelled:
            state.current.cancel()
        async for event in state.current:
            if event.kind != "done":
                yield event
        response = state.current.response
        assert response is not None
        stats = ResponseStats.from_metadata(response.metadata)
        totals["prompt_tokens"] += stats.prompt_tokens or 0
        totals["completion_tokens"] += stats.completion_tokens or 0
        totals["total_seconds"] += stats.total_seconds or 0.0
        if response.thinking:
            thinking.append(response.thinking)
        calls = response.tool_calls or []
        if not calls or step == max_steps or state.cancelled:
            break
        records = []
        room = runner.room(lm.tokenizer, agent.config.context_window, response.metadata or {}, len(calls),
                           lm.tokenizer_lock)
        for found in calls:
            record = await runner.run(step, found, room)
            records.append(record)
            state.steps.append(record.as_dict())
            yield StreamEvent("tool_result", record.name, record.as_dict())
        continuation.append(assistant_tool_call_message(response.response, calls, structured))
        for record in records:
            continuation.append(tool_result_message(record.content, record.name, record.call_id, structured))
    assert response is not None
    stats = ResponseStats.from_metadata(response.metadata).replace(
        prompt_tokens=totals["prompt_tokens"], completion_tokens=totals["completion_tokens"],
        total_seconds=totals["total_seconds"], tool_steps=list(state.steps), steps=step,
        max_steps_reached=bool(response.tool_calls) and step == max_steps and not state.cancelled)
    response.metadata = stats.as_dict()
    response.thinking = "\n\n".join(thinking)
    state.response = response
    yield StreamEvent("done", response.response, response)
