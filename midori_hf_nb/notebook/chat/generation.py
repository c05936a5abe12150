"""Asking any Midori protocol agent for one answer of the chat panel.

The panel takes any :class:`~midori_hf_nb.MidoriAiAgentProtocol` agent and uses what it has:

* no tools: ``agent.stream(payload, events=True, **overrides)`` when the agent has ``stream``,
  else ``await agent.invoke(payload, **overrides)``;
* ``tools=[...]``: ``agent.stream_with_tools(...)`` when it has it, else ``invoke_with_tools``;
  calls are shown, never run;
* ``tools=[...], execute_tools=True`` (the opt-in tool loop): ``agent.stream_tools(...)``; an
  agent without it is refused when the panel is made.

Settings an agent's method does not take (a method without ``**overrides`` and without a
parameter of that name) are left out and listed in :attr:`GenerationPlan.ignored`, so the panel
can say so. :class:`AnswerRun` runs one answer into a
:class:`~midori_hf_nb.notebook.LiveView` and can be stopped; :func:`answer_entry` turns what came
back into a typed :class:`~.transcript.TranscriptEntry`, statistics read with
:func:`~midori_hf_nb.stats.stats_of`.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ...events import StreamEvent
from ...config import DEFAULTS
from ...settings import check_overrides
from ...stats import ResponseStats, stats_of
from .document import jsonable
from .transcript import TranscriptEntry


def agent_model(agent: Any) -> str:
    """The model an agent runs: its ``config.model`` when it has one, else its ``repr``."""
    model = getattr(getattr(agent, "config", None), "model", None)
    return str(model) if model else repr(agent)


def agent_defaults(agent: Any) -> dict[str, Any]:
    """Temperature, max new tokens and greedy the agent generates with when a message sets none:
    its ``resolve_settings()`` where it has one (a local agent: once its model is loaded, with the
    values of the model's ``generation_config.json``), else its ``config`` (the package defaults
    for an agent without one)."""
    config = getattr(agent, "config", None)
    resolve = getattr(agent, "resolve_settings", None)
    if callable(resolve):
        try:
            config = getattr(resolve(), "config", config)
        except (TypeError, ValueError):  # another agent's resolve_settings: its config stands
            pass
    do_sample = getattr(config, "do_sample", DEFAULTS["do_sample"])
    return {"temperature": getattr(config, "temperature", DEFAULTS["temperature"]),
            "max_new_tokens": getattr(config, "max_new_tokens", DEFAULTS["max_new_tokens"]),
            "greedy": not do_sample if isinstance(do_sample, bool) else not DEFAULTS["do_sample"]}


def initial_settings(agent: Any, overrides: Mapping[str, Any], *, temperature: Any = None,
                     max_new_tokens: Any = None, greedy: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The panel's first settings and the rest of its overrides, checked with
    :func:`~midori_hf_nb.settings.check_overrides` (so its rules apply: a temperature above 0
    given without ``greedy`` means sampling). Settings given neither as keywords nor in
    ``overrides`` come from :func:`agent_defaults`. Raises ``ValueError`` naming the setting."""
    rest = dict(overrides)
    given = {"temperature": rest.pop("temperature", None), "max_new_tokens": rest.pop("max_new_tokens", None),
             "greedy": rest.pop("greedy", None), "do_sample": rest.pop("do_sample", None)}
    for name, value in (("temperature", temperature), ("max_new_tokens", max_new_tokens), ("greedy", greedy)):
        if value is not None:
            given[name] = value
    try:
        checked = check_overrides(given)
        rest = check_overrides(rest) if rest else {}
    except ValueError as exc:
        raise ValueError(f"ChatPanel settings: {exc}") from exc
    defaults = agent_defaults(agent)
    settings = {
        "temperature": float(checked.get("temperature", defaults["temperature"])),
        "max_new_tokens": int(checked.get("max_new_tokens", defaults["max_new_tokens"])),
        "greedy": (not checked["do_sample"]) if "do_sample" in checked else bool(defaults["greedy"]),
    }
    return settings, rest


@dataclass(frozen=True)
class SettingsBaseline:
    """The panel's first settings and which of them the user gave (as keywords or overrides).

    :meth:`asked` sends a setting with a message only when the user gave it or changed it in the
    panel since; the others are left to the agent, so its own precedence applies (the model's
    ``generation_config.json``, then the package defaults; see :mod:`midori_hf_nb.settings`).
    """

    initial: Mapping[str, Any]
    given: frozenset[str]

    @classmethod
    def of(cls, settings: Mapping[str, Any], overrides: Mapping[str, Any], **keywords: Any) -> "SettingsBaseline":
        """The baseline of ``settings`` (from :func:`initial_settings`) for the panel's keywords and overrides."""
        given = {name for name, value in keywords.items() if value is not None}
        given |= {name for name in ("temperature", "max_new_tokens", "greedy") if name in overrides}
        return cls(dict(settings), frozenset(given | ({"greedy"} if "do_sample" in overrides else set())))

    def synced(self, settings: Mapping[str, Any], defaults: Mapping[str, Any],
               show: Callable[[dict[str, Any]], None]) -> "SettingsBaseline":
        """The baseline with the settings the user neither gave nor changed (``settings``: the
        panel's current ones) following ``defaults`` (:func:`agent_defaults` now: a loaded
        model's ``generation_config.json`` may sample where the package defaults decode greedily);
        ``show`` puts the changed ones into the panel's inputs."""
        changes = {n: defaults[n] for n in ("temperature", "max_new_tokens", "greedy")
                   if n not in self.given and settings[n] == self.initial[n] and defaults[n] != self.initial[n]}
        if changes:
            show(changes)
        return SettingsBaseline({**self.initial, **changes}, self.given)

    def asked(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The generation settings of ``settings`` (the panel's current ones) to send with a message."""
        changed = {n for n in ("temperature", "max_new_tokens", "greedy")
                   if n in self.given or settings[n] != self.initial[n]}
        asked: dict[str, Any] = {}
        if "max_new_tokens" in changed:
            asked["max_new_tokens"] = settings["max_new_tokens"]
        if changed & {"greedy", "temperature"}:
            asked["greedy"] = settings["greedy"]
            if not settings["greedy"]:
                asked["temperature"] = settings["temperature"]
        return asked


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class GenerationPlan:
    """How one answer is asked for: the agent's method, its arguments after the payload, its
    keyword arguments, and the settings the method does not take."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()

    @property
    def streaming(self) -> bool:
        """True when the method returns a stream of events (else it is awaited for a response)."""
        return self.method.startswith("stream")


def tool_method(agent: Any, tools: list[Any] | None, execute_tools: bool) -> str:
    """The agent method that answers: ``stream_tools``, ``stream_with_tools``, ``invoke_with_tools``,
    ``stream`` or ``invoke``; raises ``ValueError`` for a tool loop the agent cannot run."""
    def has(name: str) -> bool:
        return callable(getattr(agent, name, None))

    if execute_tools:
        if not has("stream_tools"):
            raise ValueError(f"ChatPanel(execute_tools=True) is not allowed with {agent_model(agent)}: the agent has "
                             "no stream_tools (the opt-in tool loop); expected an agent with stream_tools, e.g. "
                             "HuggingFaceLocalAgent, or execute_tools=False to show the calls without running them")
        return "stream_tools"
    if tools:
        return "stream_with_tools" if has("stream_with_tools") else "invoke_with_tools"
    return "stream" if has("stream") else "invoke"


def accepted_overrides(method: Callable[..., Any], overrides: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The overrides ``method`` takes (all of them when it has ``**kwargs``) and the names it does not."""
    try:
        parameters = inspect.signature(method).parameters
    except (TypeError, ValueError):  # no signature to read: pass everything
        return dict(overrides), ()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(overrides), ()
    names = {n for n, p in parameters.items()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return {k: v for k, v in overrides.items() if k in names}, tuple(k for k in overrides if k not in names)


def plan_generation(agent: Any, overrides: Mapping[str, Any], *, tools: list[Any] | None = None,
                    execute_tools: bool = False, max_tool_steps: int = 5) -> GenerationPlan:
    """The :class:`GenerationPlan` for one answer of ``agent`` with ``overrides``."""
    method = tool_method(agent, tools, execute_tools)
    fixed: dict[str, Any] = {"stream": {"events": True}, "stream_with_tools": {"events": True},
                             "stream_tools": {"max_steps": max_tool_steps}}.get(method, {})
    kwargs, ignored = accepted_overrides(getattr(agent, method), overrides)
    return GenerationPlan(method, (tools,) if tools else (), {**kwargs, **fixed}, ignored)


# --------------------------------------------------------------------------- one answer


@dataclass
class Outcome:
    """What one :class:`AnswerRun` ended with."""

    response: Any = None
    error: str | None = None
    stopped: bool = False
    seconds: float = 0.0
    #: the cancellation that ended the run, to be raised again when it came from outside
    cancelled: asyncio.CancelledError | None = None


class AnswerRun:
    """One answer being generated into ``view`` (a :class:`~midori_hf_nb.notebook.LiveView`).

    :meth:`run` returns an :class:`Outcome` and never raises for a failure of the agent (the
    error is in the outcome). :meth:`stop` ends the answer keeping what arrived: a stream's
    ``cancel()`` when it has one, else the stream is left after its next event; an awaited
    ``invoke`` is cancelled. ``on_event`` is called after every event the view takes.
    """

    def __init__(self, agent: Any, payload: Any, plan: GenerationPlan, view: Any, *,
                 on_event: Callable[[], None] | None = None, stopped: bool = False) -> None:
        self.agent = agent
        self.payload = payload
        self.plan = plan
        self.view = view
        self.on_event = on_event
        self.stop_requested = stopped
        self.started = time.perf_counter()
        self.stream: Any = None
        self.waiting: asyncio.Future | None = None

    def stop(self) -> None:
        """End the answer within a token or two, keeping the partial text."""
        self.stop_requested = True
        self._cancel_source()
        self.view.mark_interrupted()
        self.view.refresh(force=True)

    def _cancel_source(self) -> None:
        cancel = getattr(self.stream, "cancel", None)
        if callable(cancel):
            cancel()
        if self.waiting is not None:
            self.waiting.cancel()

    async def run(self) -> Outcome:
        """Generate the answer; the outcome holds the response, or the error, and whether it stopped."""
        outcome = Outcome()
        try:
            outcome.response = await (self._consume() if self.plan.streaming else self._await())
        except asyncio.CancelledError as exc:  # Stop of an awaited answer or a tool loop, or cancelled outside
            outcome.cancelled = exc
            self.stop_requested = True
        except Exception as exc:  # shown in the panel; the transcript and the input stay
            outcome.error = f"{type(exc).__name__}: {exc}"
        outcome.stopped = self.stop_requested
        outcome.seconds = time.perf_counter() - self.started
        return outcome

    async def _consume(self) -> Any:
        stream = getattr(self.agent, self.plan.method)(self.payload, *self.plan.args, **self.plan.kwargs)
        self.stream = stream
        if self.stop_requested:
            self._cancel_source()
        final = None
        try:
            async for item in stream:
                event = item if isinstance(getattr(item, "kind", None), str) else StreamEvent("text", str(item))
                if event.kind == "done":
                    final = event.data
                self.view.feed(event)
                if self.on_event is not None:
                    self.on_event()
                if self.stop_requested and not callable(getattr(stream, "cancel", None)):
                    break
        finally:
            self.stream = None
            close = getattr(stream, "aclose", None)
            if callable(close):
                await close()
        return final if final is not None else getattr(stream, "response", None)

    async def _await(self) -> Any:
        call = getattr(self.agent, self.plan.method)(self.payload, *self.plan.args, **self.plan.kwargs)
        self.waiting = asyncio.ensure_future(call)
        if self.stop_requested:
            self.waiting.cancel()
        response = await self.waiting
        if response is not None:
            self.view.feed(StreamEvent("done", getattr(response, "response", "") or "", response))
        return response


def answer_entry(outcome: Outcome, view: Any, *, model: str) -> TranscriptEntry:
    """The transcript entry of an answer: the response (or, without one, what the view received),
    its statistics from :func:`~midori_hf_nb.stats.stats_of` with the model, the wall time and the
    finish reason filled in where the agent did not report them."""
    response, state = outcome.response, view.state
    stats = stats_of(response) if response is not None else ResponseStats(tool_steps=state.tool_steps or None)
    stopped = outcome.stopped or stats.finish_reason == "cancelled"
    finish = "error" if outcome.error else stats.finish_reason or ("cancelled" if stopped else None)
    stats = stats.replace(
        model=stats.model or model, finish_reason=finish,
        wall_seconds=stats.wall_seconds if stats.wall_seconds is not None else outcome.seconds,
        tool_steps=jsonable(stats.tool_steps) if stats.tool_steps else None, extra=jsonable(stats.extra))
    calls = response.tool_calls if response is not None else (state.tool_calls or None)
    return TranscriptEntry(
        role="assistant",
        content=(response.response if response is not None else state.answer) or "",
        timestamp=time.time(),
        tool_calls=jsonable(calls) if calls else None,
        thinking=(response.thinking if response is not None else state.thinking) or "",
        stats=stats, stopped=stopped, error=outcome.error,
        display_updates=view.updates, display_events=view.events)


__all__ = [
    "AnswerRun",
    "GenerationPlan",
    "Outcome",
    "accepted_overrides",
    "agent_defaults",
    "agent_model",
    "answer_entry",
    "initial_settings",
    "SettingsBaseline",
    "plan_generation",
    "tool_method",
]
