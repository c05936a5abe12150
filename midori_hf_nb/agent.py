"""``HuggingFaceLocalAgent``: the Midori AI agent protocol on a local transformers model.

Creating an agent is instant: torch and transformers are imported and the model loaded on
first use (the first ``invoke``, ``stream`` or ``invoke_with_tools``). Generation runs in a
worker thread, so the event loop keeps serving other coroutines; abandoning a stream stops
its generation within a token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator

from .config import HuggingFaceConfig
from .parsing import (
    StreamSplitter,
    normalise_call,
    extract_reasoning_blocks,
    parse_tool_calls_detailed,
    prompt_opens_thinking,
    unique_ids,
)
from .prompting import (
    Prompt,
    assistant_tool_call_message,
    build_prompt,
    template_supports_tools,
    tool_result_message,
)
from .protocol import AgentPayload, AgentResponse, MidoriAiAgentProtocol, ReasoningEffort
from .tools import callables_by_name, execute_call, tool_instructions, tool_names, tool_schemas

if TYPE_CHECKING:  # pragma: no cover
    from .engine import GenerationResult, GenerationSettings, LoadedModel

#: Per-call overrides that map onto configuration fields (validated like the constructor's).
CONFIG_OVERRIDES = ("max_new_tokens", "temperature", "top_p", "top_k", "do_sample")


@dataclass
class StreamEvent:
    """A typed piece of a stream: ``kind`` is ``"text"``, ``"thinking"``, ``"tool_call"``,
    ``"tool_result"`` (tool loops only) or ``"done"``.

    ``text`` carries the piece; ``data`` the parsed call (``tool_call``), the executed step's
    record (``tool_result``) or the final :class:`AgentResponse` (``done``).
    """

    kind: str
    text: str = ""
    data: Any = None


def native_parse(tokenizer: Any, text: str, prefix: str, schemas: list[dict] | None) -> dict[str, Any] | None:
    """The tokenizer's own ``parse_response`` where the model ships a response template, else None.

    A tokenizer without a response template returns None at once; a template that does not
    match this output (the parser raises) is logged and returns None, so the tag parser runs.
    """
    from .engine.capabilities import tokenizer_parses_responses

    if not tokenizer_parses_responses(tokenizer):
        return None
    try:
        message = tokenizer.parse_response(text, prefix=prefix, tools=schemas or None)
    except Exception as exc:  # model output the template cannot read: the tag parser takes over
        logging.getLogger("midori_hf_nb").debug("parse_response failed (%s: %s); using the tag parser",
                                                type(exc).__name__, exc)
        return None
    return message if isinstance(message, dict) else None


def _reasoning_kwargs(effort: Any) -> dict[str, Any]:
    """Chat-template variables for a reasoning effort (ignored by templates that do not use them)."""
    if effort is None:
        return {}
    level = effort.effort if hasattr(effort, "effort") else effort.get("effort", "low")
    return {"reasoning_effort": level, "enable_thinking": level != "none"}


class _LiveGeneration:
    """One generation in its own thread, feeding text pieces into an asyncio queue."""

    def __init__(self, lm: "LoadedModel", input_ids: list[int], settings: "GenerationSettings",
                 stop_event: threading.Event) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.stop_event = stop_event
        self.thread = threading.Thread(
            target=self._run, args=(lm, input_ids, settings), name="midori-generate", daemon=True
        )

    def _post(self, item: tuple[str, Any]) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is gone: nobody is listening any more
            self.stop_event.set()

    def _run(self, lm: "LoadedModel", input_ids: list[int], settings: "GenerationSettings") -> None:
        from . import engine

        try:
            result = engine.generate(lm, input_ids, settings, on_text=lambda t: self._post(("text", t)),
                                     stop_event=self.stop_event)
            self._post(("done", result))
        except BaseException as exc:  # delivered to the consumer, raised there
            self._post(("error", exc))

    def start(self) -> None:
        self.thread.start()


class AgentStream:
    """An async iterator over one generation.

    Iterating yields text pieces of the answer (or :class:`StreamEvent` objects with
    ``events=True``). After the iteration ends, :attr:`response` holds the final
    :class:`AgentResponse`. Breaking out of the loop, calling :meth:`cancel` or
    :meth:`aclose`, or cancelling the consuming task stops the generation within a token.
    """

    def __init__(self, agent: "HuggingFaceLocalAgent", payload: AgentPayload, *, events: bool,
                 overrides: dict[str, Any], schemas: list[dict] | None = None,
                 continuation: list[dict] | None = None) -> None:
        self._agent = agent
        self._payload = payload
        self._events_mode = events
        self._overrides = overrides
        self._schemas = schemas
        self._continuation = continuation
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.response: AgentResponse | None = None
        self._iterator = self._run()

    def __aiter__(self) -> "AgentStream":
        return self

    async def __anext__(self) -> Any:
        while True:
            event = await self._iterator.__anext__()
            if self._events_mode:
                return event
            if event.kind == "text":
                return event.text

    def cancel(self) -> None:
        """Ask the generation to stop; it ends within a token with ``finish_reason="cancelled"``."""
        self._stop.set()

    @property
    def thread(self) -> threading.Thread | None:
        """The generation thread (None before the model is loaded)."""
        return self._thread

    async def aclose(self) -> None:
        """Stop the generation and wait until its thread has ended."""
        self._stop.set()
        await self._iterator.aclose()
        if self._thread is not None and self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)

    async def __aenter__(self) -> "AgentStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __del__(self) -> None:
        self._stop.set()

    async def collect(self) -> AgentResponse:
        """Run the stream to its end and return the final response."""
        async for _ in self:
            pass
        assert self.response is not None
        return self.response

    def _piece_events(self, piece: Any, live_calls: list[dict]) -> list[StreamEvent]:
        """Events for one piece of the splitter: thinking/text as they are, a tool piece as its calls."""
        if piece.kind != "tool":
            return [StreamEvent(piece.kind, piece.text)]
        offered = set(tool_names(self._schemas or []))
        events = []
        for call in piece.parse.calls if piece.parse is not None else []:
            call = dict(call)
            if call["name"] not in offered:
                call["unknown"] = True
            live_calls.append(call)
            events.append(StreamEvent("tool_call", call["name"], call))
        return events

    @staticmethod
    async def _drain(queue: "asyncio.Queue[tuple[str, Any]]") -> "GenerationResult | None":
        """After a stop request: wait (briefly) for the generation's final result."""
        try:
            async with asyncio.timeout(60):
                while True:
                    kind, value = await queue.get()
                    if kind == "done":
                        return value
                    if kind == "error":
                        return None
        except (TimeoutError, asyncio.CancelledError):
            return None

    async def _run(self) -> AsyncIterator[StreamEvent]:
        agent = self._agent
        call_config, settings = agent._call_settings(self._overrides)
        lm = await agent._ensure_loaded()
        from . import engine

        engine.check_generation_kwargs(settings.extra)
        prompt = agent._prompt(lm, self._payload, call_config, self._schemas, self._continuation)
        live = _LiveGeneration(lm, prompt.input_ids, settings, self._stop)
        self._thread = live.thread
        splitter = StreamSplitter(start_in_thinking=prompt_opens_thinking(prompt.text),
                                  tools=self._schemas is not None)
        live_calls: list[dict] = []  # tool calls announced while generating
        wall_start = time.perf_counter()
        live.start()
        try:
            while True:
                try:
                    kind, value = await live.queue.get()
                except asyncio.CancelledError:
                    # The consuming task was cancelled: stop, keep the partial answer, re-raise.
                    self._stop.set()
                    result = await self._drain(live.queue)
                    if result is not None:
                        self.response = agent._response(lm, prompt, result, settings, self._payload,
                                                        self._schemas, time.perf_counter() - wall_start)
                    raise
                if kind == "text":
                    for piece in splitter.feed(value):
                        for event in self._piece_events(piece, live_calls):
                            yield event
                elif kind == "error":
                    raise value
                else:
                    result = value
                    break
            for piece in splitter.finish():
                for event in self._piece_events(piece, live_calls):
                    yield event
            self.response = agent._response(lm, prompt, result, settings, self._payload, self._schemas,
                                            time.perf_counter() - wall_start)
            for call in _adopt_live_ids(self.response.tool_calls or [], live_calls):
                yield StreamEvent("tool_call", call["name"], call)
            yield StreamEvent("done", self.response.response, self.response)
        finally:
            self._stop.set()  # no-op after a normal end; stops an abandoned generation


def _adopt_live_ids(calls: list[dict], live_calls: list[dict]) -> list[dict]:
    """Give the final calls the ids of the matching calls announced live; return those not announced."""
    unmatched = list(live_calls)
    missing = []
    for call in calls:
        match = next((c for c in unmatched if c["name"] == call["name"] and c["arguments"] == call["arguments"]), None)
        if match is None:
            missing.append(call)
        else:
            unmatched.remove(match)
            call["id"] = match["id"]
    unique_ids(calls)
    return missing


class ToolLoopStream:
    """An async iterator over an opt-in tool loop (see :meth:`HuggingFaceLocalAgent.stream_tools`).

    :attr:`steps` lists the executed calls so far, also when the loop is stopped or its task
    cancelled; :attr:`response` holds the final response once the loop has ended.
    :meth:`cancel` stops the current generation and ends the loop without running further calls.
    """

    def __init__(self, agent: "HuggingFaceLocalAgent", payload: AgentPayload, tools: list[Any], max_steps: int,
                 overrides: dict[str, Any]) -> None:
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"run_tools: max_steps={max_steps!r} is not allowed: expected a positive integer")
        self._agent = agent
        self._payload = payload
        self._schemas = tool_schemas(tools)
        self._functions = callables_by_name(tools)
        self._max_steps = max_steps
        self._overrides = overrides
        self._current: AgentStream | None = None
        self._cancelled = False
        self.steps: list[dict[str, Any]] = []
        self.response: AgentResponse | None = None
        self._iterator = self._run()

    def __aiter__(self) -> "ToolLoopStream":
        return self

    async def __anext__(self) -> StreamEvent:
        return await self._iterator.__anext__()

    def cancel(self) -> None:
        """Stop the running generation; calls not yet run are not run."""
        self._cancelled = True
        if self._current is not None:
            self._current.cancel()

    async def aclose(self) -> None:
        self.cancel()
        await self._iterator.aclose()

    async def collect(self) -> AgentResponse:
        """Run the loop to its end and return the final response."""
        async for _ in self:
            pass
        assert self.response is not None
        return self.response

    async def _run(self) -> AsyncIterator[StreamEvent]:
        agent = self._agent
        offered = set(tool_names(self._schemas))
        lm = await agent._ensure_loaded()
        structured = template_supports_tools(lm.tokenizer)
        continuation: list[dict] = []
        thinking: list[str] = []
        totals = {"prompt_tokens": 0, "completion_tokens": 0, "total_seconds": 0.0}
        response: AgentResponse | None = None
        step = 0
        for step in range(1, self._max_steps + 1):
            self._current = AgentStream(agent, self._payload, events=True, overrides=self._overrides,
                                        schemas=self._schemas, continuation=list(continuation))
            if self._cancelled:
                self._current.cancel()
            async for event in self._current:
                if event.kind != "done":
                    yield event
            response = self._current.response
            assert response is not None
            meta = response.metadata or {}
            for key in totals:
                totals[key] += meta.get(key, 0) or 0
            if response.thinking:
                thinking.append(response.thinking)
            calls = response.tool_calls or []
            if not calls or step == self._max_steps or self._cancelled:
                break
            records = []
            for call in calls:
                record = await execute_call(step, call, self._functions, offered)
                records.append(record)
                self.steps.append(record.as_dict())
                yield StreamEvent("tool_result", record.name, record.as_dict())
            continuation.append(assistant_tool_call_message(response.response, calls, structured))
            for record in records:
                content = record.result if record.error is None else f"Error: {record.error}"
                continuation.append(tool_result_message(content, record.name, record.call_id, structured))
        assert response is not None
        meta = dict(response.metadata or {})
        meta.update(totals)
        meta["tool_steps"] = list(self.steps)
        meta["steps"] = step
        meta["max_steps_reached"] = bool(response.tool_calls) and step == self._max_steps and not self._cancelled
        response.metadata = meta
        response.thinking = "\n\n".join(thinking)
        self.response = response
        yield StreamEvent("done", response.response, response)


class HuggingFaceLocalAgent(MidoriAiAgentProtocol):
    """A local Hugging Face model behind the Midori AI agent protocol.

    Args:
        model: a hub id, a local model directory, a ``.gguf`` file, or
            :data:`midori_hf_nb.DEFAULT_MODEL` (offline SmolLM2-135M-Instruct).
        device, torch_dtype, max_new_tokens, temperature, top_p, top_k, do_sample,
        context_window, trust_remote_code, load_in_8bit, load_in_4bit: see
            :class:`HuggingFaceConfig`; invalid values raise ``ValueError`` naming the field.
        reasoning_effort: default :class:`ReasoningEffort` for payloads that carry none.
        **kwargs: further ``generate()`` options (e.g. ``repetition_penalty``).

    Nothing is loaded until first use; agents with the same model, device, dtype and
    quantization share one loaded copy, freed when the last of them calls :meth:`unload_model`.
    """

    def __init__(
        self,
        model: str,
        device: str = "auto",
        torch_dtype: str = "auto",
        max_new_tokens: int = 512,
        temperature: float = 0.7,
        top_p: float = 0.9,
        top_k: int = 50,
        do_sample: bool = True,
        context_window: int = 4096,
        trust_remote_code: bool = False,
        load_in_8bit: bool = False,
        load_in_4bit: bool = False,
        *,
        reasoning_effort: ReasoningEffort | dict | None = None,
        **kwargs: Any,
    ) -> None:
        config = HuggingFaceConfig.from_kwargs(
            model=model, device=device, torch_dtype=torch_dtype, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, top_k=top_k, do_sample=do_sample,
            context_window=context_window, trust_remote_code=trust_remote_code,
            load_in_8bit=load_in_8bit, load_in_4bit=load_in_4bit, **kwargs,
        )
        self._init(config, reasoning_effort)

    def _init(self, config: HuggingFaceConfig, reasoning_effort: Any) -> None:
        self._config = config
        self._reasoning_effort = reasoning_effort
        self._lm: LoadedModel | None = None
        self._key: tuple | None = None
        self._load_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: HuggingFaceConfig, reasoning_effort: ReasoningEffort | None = None) -> "HuggingFaceLocalAgent":
        """An agent for an existing :class:`HuggingFaceConfig`."""
        agent = cls.__new__(cls)
        agent._init(config, reasoning_effort)
        return agent

    def __repr__(self) -> str:
        state = "loaded" if self.is_loaded else "not loaded"
        return f"HuggingFaceLocalAgent(model={self._config.model!r}, device={self._config.device!r}, {state})"

    # ------------------------------------------------------------------ properties

    @property
    def config(self) -> HuggingFaceConfig:
        """The agent's :class:`HuggingFaceConfig`."""
        return self._config

    @property
    def is_loaded(self) -> bool:
        """True while this agent holds a reference to a loaded model."""
        return self._lm is not None

    @property
    def loaded_model(self) -> "LoadedModel | None":
        """The shared :class:`~midori_hf_nb.engine.LoadedModel` (model, tokenizer, spec), if loaded."""
        return self._lm

    @property
    def reference_count(self) -> int:
        """References held on this agent's model by all agents (0 when not loaded)."""
        if self._key is None:
            return 0
        from .engine import REGISTRY

        return REGISTRY.refcount(self._key)

    # ------------------------------------------------------------------ loading

    def _acquire_sync(self) -> "LoadedModel":
        with self._load_lock:
            if self._lm is None:
                from . import engine

                self._lm = engine.acquire(self._config)
                self._key = self._lm.spec.key
            return self._lm

    async def _ensure_loaded(self) -> "LoadedModel":
        lm = self._lm
        if lm is not None:
            return lm
        return await asyncio.to_thread(self._acquire_sync)

    async def load(self) -> "HuggingFaceLocalAgent":
        """Load the model now rather than on first use. Returns the agent."""
        await self._ensure_loaded()
        return self

    async def unload_model(self) -> None:
        """Release this agent's reference; the model is freed when no agent holds it any more.

        Waits for a running generation on the model to finish first. The agent loads the model
        again on its next use.
        """
        await asyncio.to_thread(self.unload_model_sync)

    def load_sync(self) -> "HuggingFaceLocalAgent":
        """:meth:`load` for synchronous code (blocks while the model loads). Returns the agent."""
        self._acquire_sync()
        return self

    def unload_model_sync(self) -> None:
        """:meth:`unload_model` for synchronous code: release this agent's reference now."""
        with self._load_lock:
            lm, self._lm = self._lm, None
        if lm is not None:
            from . import engine

            engine.release(lm)

    def generate_batch(self, payloads: list[AgentPayload], *, tools: list[Any] | None = None,
                       stop_event: threading.Event | None = None, **overrides: Any) -> list[AgentResponse]:
        """Answer several payloads with one left-padded ``generate`` call (blocking, in the calling thread).

        Loads the model on first use. ``overrides`` are those of :meth:`invoke` and apply to every
        payload; a ``seed`` seeds the whole call once, so a sampled answer depends on the batch it
        ran in (its companions and its position). ``tools`` are offered as in
        :meth:`invoke_with_tools` (parsed, never executed). Timing metadata (``total_seconds``,
        ``time_to_first_token``) is that of the whole batch. Setting ``stop_event`` stops every
        sequence within a token (``finish_reason="cancelled"``).
        """
        if not payloads:
            return []
        schemas = tool_schemas(tools) if tools else None
        call_config, settings = self._call_settings(overrides)
        from . import engine

        engine.check_generation_kwargs(settings.extra)
        lm = self._acquire_sync()
        prompts = [self._prompt(lm, payload, call_config, schemas, None) for payload in payloads]
        started = time.perf_counter()
        if len(prompts) == 1:  # no padding: the single-sequence path of invoke
            results = [engine.generate(lm, prompts[0].input_ids, settings, stop_event=stop_event)]
        else:
            results = engine.generate_batch(lm, [p.input_ids for p in prompts], settings, stop_event)
        wall = time.perf_counter() - started
        return [self._response(lm, prompt, result, settings, payload, schemas, wall)
                for prompt, result, payload in zip(prompts, results, payloads)]

    # ------------------------------------------------------------------ protocol

    async def get_context_window(self) -> int:
        """The configured context window (prompt plus answer tokens)."""
        return self._config.context_window

    async def supports_streaming(self) -> bool:
        """Always True: :meth:`stream` yields text as it is generated."""
        return True

    async def invoke(self, payload: AgentPayload, **overrides: Any) -> AgentResponse:
        """Answer ``payload``.

        Per-call ``overrides``: ``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``,
        ``do_sample``, ``greedy`` (True means ``do_sample=False``), ``seed``, and any
        ``generate()`` option (e.g. ``logits_processor``, ``stop_strings``). A ``temperature``
        above 0 given without ``do_sample`` or ``greedy`` turns sampling on for the call.
        Cancelling the calling task stops the generation within a token.
        """
        return await AgentStream(self, payload, events=True, overrides=overrides).collect()

    def stream(self, payload: AgentPayload, *, events: bool = False, **overrides: Any) -> AgentStream:
        """Stream the answer to ``payload``.

        Yields answer text pieces (reasoning is left out; their concatenation equals
        ``invoke(...).response`` for the same greedy request). With ``events=True`` yields
        :class:`StreamEvent` objects: ``thinking`` and ``text`` pieces as they arrive, and a
        final ``done`` event with the response. Overrides are those of :meth:`invoke`.
        """
        return AgentStream(self, payload, events=events, overrides=overrides)

    async def invoke_with_tools(self, payload: AgentPayload, tools: list[Any], **overrides: Any) -> AgentResponse:
        """Answer ``payload`` with ``tools`` offered to the model; calls are parsed, never executed.

        ``tools``: typed, documented callables, OpenAI-format function dicts, or dicts with
        ``name`` and ``description``. Templates that support ``tools=`` receive the schemas;
        others get a tool description in the system message. Parsed calls are in
        ``response.tool_calls``; calls to names not offered carry ``"unknown": True``.
        """
        schemas = tool_schemas(tools)
        return await AgentStream(self, payload, events=True, overrides=overrides, schemas=schemas).collect()

    def stream_with_tools(self, payload: AgentPayload, tools: list[Any], *, events: bool = True,
                          **overrides: Any) -> AgentStream:
        """Like :meth:`invoke_with_tools`, streamed (typed events by default); nothing is executed.

        Events arrive live: ``thinking`` and ``text`` pieces, and a ``tool_call`` event (``data``
        is the parsed call, flagged ``"unknown"`` when not offered) as soon as a call's text is
        complete; tool-call text never appears as ``text``. The ``done`` event carries the final
        response, whose ``tool_calls`` have the same ids. It is authoritative: prose streamed as
        ``text`` before a call counts as reasoning there (``response.thinking``).
        """
        return AgentStream(self, payload, events=events, overrides=overrides, schemas=tool_schemas(tools))

    async def run_tools(self, payload: AgentPayload, tools: list[Any], max_steps: int = 5,
                        **overrides: Any) -> AgentResponse:
        """Opt-in tool execution loop.

        Each step generates with the tools offered; the parsed calls of callable tools are run
        (sync ones in a worker thread, async ones awaited), their results (or errors, for a tool
        that raises or a name not offered) are appended to the conversation as tool messages, and
        the model continues. The loop ends when the model answers without a call, or after
        ``max_steps`` generations (the last step's calls are then left unexecuted and
        ``metadata["max_steps_reached"]`` is True). ``metadata["tool_steps"]`` records every
        executed call: step, name, arguments, id, result, error, seconds. :meth:`stream_tools`
        is the same loop as a stream of events.
        """
        return await self.stream_tools(payload, tools, max_steps=max_steps, **overrides).collect()

    def stream_tools(self, payload: AgentPayload, tools: list[Any], max_steps: int = 5,
                     **overrides: Any) -> "ToolLoopStream":
        """The opt-in tool loop of :meth:`run_tools`, streamed as :class:`StreamEvent` objects.

        Yields each step's ``thinking``, ``text`` and ``tool_call`` events, a ``tool_result`` event
        per executed call (``data``: the step record), and a final ``done`` event with the response.
        """
        return ToolLoopStream(self, payload, tools, max_steps, overrides)

    # ------------------------------------------------------------------ internals

    def _call_settings(self, overrides: dict[str, Any]) -> tuple[HuggingFaceConfig, "GenerationSettings"]:
        overrides = dict(overrides)
        seed = overrides.pop("seed", None)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed={seed!r} is not allowed: expected an integer")
        greedy = overrides.pop("greedy", None)
        if greedy is not None:
            if not isinstance(greedy, bool):
                raise ValueError(f"greedy={greedy!r} is not allowed: expected true or false")
            overrides["do_sample"] = not greedy
        fields = {k: overrides.pop(k) for k in CONFIG_OVERRIDES if k in overrides}
        if fields.get("temperature") and "do_sample" not in fields:
            fields["do_sample"] = True  # asking for a temperature > 0 asks for sampling
        config = self._config.replace(**fields) if fields else self._config
        from .engine import GenerationSettings

        settings = GenerationSettings(
            max_new_tokens=config.max_new_tokens,
            do_sample=config.do_sample,
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=config.top_k,
            seed=seed,
            extra={**config.generation_kwargs, **overrides},
            num_threads=config.num_threads,
            decode_loop=config.decode_loop,
        )
        return config, settings

    def _prompt(self, lm: "LoadedModel", payload: AgentPayload, config: HuggingFaceConfig,
                schemas: list[dict] | None, continuation: list[dict] | None) -> Prompt:
        template_tools = instructions = None
        if schemas:
            if template_supports_tools(lm.tokenizer):
                template_tools = schemas
            else:
                instructions = tool_instructions(schemas)
        effort = payload.reasoning_effort or self._reasoning_effort
        with lm.tokenizer_lock:
            return build_prompt(
                lm.tokenizer,
                payload,
                context_window=config.context_window,
                max_new_tokens=config.max_new_tokens,
                tools=template_tools,
                tool_instructions=instructions,
                template_kwargs=_reasoning_kwargs(effort),
                continuation=continuation,
            )

    def _response(self, lm: "LoadedModel", prompt: Prompt, result: "GenerationResult",
                  settings: "GenerationSettings", payload: AgentPayload, schemas: list[dict] | None,
                  wall_seconds: float) -> AgentResponse:
        native = native_parse(lm.tokenizer, result.text, prompt.text, schemas)
        native_calls: list[dict] = []
        native_errors: list[str] = []  # calls the tokenizer's parser found but that are not readable calls
        if native is not None:
            thought = native.get("thinking") or native.get("reasoning_content") or ""
            blocks, answer = ([thought.strip()] if thought.strip() else []), str(native.get("content") or "").strip()
            for item in native.get("tool_calls") or []:
                call, error = normalise_call(item)
                if call:
                    native_calls.append(call)
                else:
                    native_errors.append(error or "unreadable tool call")
        else:
            blocks, answer = extract_reasoning_blocks(result.text)
        metadata: dict[str, Any] = {
            "model": self._config.model,
            "backend": "huggingface",
            "session_id": payload.session_id,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "time_to_first_token": result.time_to_first_token,
            "total_seconds": result.seconds,
            "wall_seconds": wall_seconds,
            "tokens_per_second": result.tokens_per_second,
            "decode_tokens_per_second": result.decode_tokens_per_second,
            "finish_reason": result.finish_reason,
            "decode_path": result.decode_path,
            "decode_path_reason": result.decode_path_reason,
            "memory_dropped": prompt.dropped_memory,
            "used_chat_template": prompt.used_chat_template,
            "device": lm.spec.device,
            "dtype": lm.spec.dtype,
            "quantization": lm.spec.quantization,
            "seed": settings.seed,
            "do_sample": not settings.greedy,
            "temperature": settings.temperature,
            "max_new_tokens": settings.max_new_tokens,
            "thinking_blocks": blocks,
            "raw_text": result.text,
            "parser": "tokenizer" if native is not None else "tags",
        }
        calls = None
        if schemas is not None:
            parsed = parse_tool_calls_detailed(answer)
            parsed.calls = unique_ids(native_calls + parsed.calls)
            parsed.errors = native_errors + parsed.errors
            offered = set(tool_names(schemas))
            unknown = [c["name"] for c in parsed.calls if c["name"] not in offered]
            for call in parsed.calls:
                if call["name"] not in offered:
                    call["unknown"] = True
            if parsed.calls and parsed.prose_before_calls:  # reasoning written ahead of the calls
                blocks = [*blocks, parsed.prose_before_calls]
                answer = parsed.answer
            else:
                answer = parsed.text
            calls = parsed.calls or None
            metadata.update(
                tools_offered=sorted(offered),
                tools_in_template=prompt.tools_in_template,
                tool_parse_errors=parsed.errors,
                unknown_tool_calls=unknown,
                thinking_blocks=blocks,
            )
        return AgentResponse(
            thinking="\n\n".join(blocks),
            response=answer,
            code=None,
            tool_calls=calls,
            metadata=metadata,
        )
