"""``HuggingFaceLocalAgent``: the Midori AI agent protocol on a local transformers model.

Creating an agent is instant: torch and transformers are imported and the model loaded on
first use (the first ``invoke``, ``stream`` or ``invoke_with_tools``). Generation runs in a
worker thread, so the event loop keeps serving other coroutines; abandoning a stream stops
its generation within a token.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from ..config import DEFAULTS, ConfigError, HuggingFaceConfig, validate_seed
from ..prompting import Prompt, build_prompt, template_supports_tools
from ..protocol import AgentPayload, AgentResponse, MidoriAiAgentProtocol, ReasoningEffort
from ..settings import CallSettings, apply_tool_choice, resolve_call_settings, with_model_defaults
from ..tools import DEFAULT_MAX_RESULT_CHARS, DEFAULT_TOOL_TIMEOUT, tool_instructions, tool_schemas
from ..validation import validate_payloads, validate_reasoning_effort
from ..logprobs import attach_brancher
from .branching import make_brancher
from ..log.capture import finish_call, new_id, start_call
from ..log.control import check_log_option
from .call_log import local_details
from .responses import build_response
from .stream import AgentStream
from .tool_loop import ToolLoopStream

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import LoadedModel
    from ..load_progress import LoadProgress


def _row_seeds(seeds: Any, count: int, overrides: dict[str, Any], reproducible: bool) -> list[int] | None:
    """``generate_batch``'s ``seeds`` checked: one seed per payload, only without ``seed`` and in a
    reproducible call (a batch that is not reproducible draws from one generator)."""
    if seeds is None:
        return None
    if not isinstance(seeds, (list, tuple)) or len(seeds) != count:
        raise ConfigError(f"seeds={seeds!r:.80} is not allowed: expected a list of {count} seeds, one per payload")
    if overrides.get("seed") is not None:
        raise ConfigError("seeds and seed are both given: give one seed per payload (seeds) or one for the batch (seed)")
    if not reproducible:
        raise ConfigError("seeds=[...] needs reproducible=True: a batch that is not reproducible draws from one generator")
    return [validate_seed(seed) for seed in seeds]


def _reasoning_kwargs(effort: Any) -> dict[str, Any]:
    """Chat-template variables for a reasoning effort (ignored by templates that do not use them)."""
    if effort is None:
        return {}
    level = effort.effort if hasattr(effort, "effort") else effort.get("effort", "low")
    return {"reasoning_effort": level, "enable_thinking": level != "none"}


class HuggingFaceLocalAgent(MidoriAiAgentProtocol):
    """A local Hugging Face model behind the Midori AI agent protocol.

    Args:
        model: a hub id, a local model directory, a ``.gguf`` file, or
            :data:`midori_hf_nb.DEFAULT_MODEL` (offline SmolLM2-135M-Instruct).
        device, torch_dtype, max_new_tokens, temperature, top_p, top_k, do_sample,
        context_window, trust_remote_code, load_in_8bit, load_in_4bit: see
            :class:`HuggingFaceConfig`; invalid values raise ``ValueError`` naming the field. The
            five generation settings left as ``None`` come from the model's own
            ``generation_config.json`` where it has them, else from the project defaults for small
            chat models (:data:`midori_hf_nb.config.GENERATION_DEFAULTS`).
        reasoning_effort: default :class:`ReasoningEffort` for payloads that carry none.
        kv_reuse: keep each session's KV cache between turns, so a prompt that extends the
            previous one of the same session (``payload.session_id``) prefills only its new
            tokens (same tokens out; see :mod:`midori_hf_nb.engine.prefix_cache`). Default True.
        log: the call log of this agent's calls (:mod:`midori_hf_nb.log`): None (default)
            follows the process's switch, False records nothing, True records even when the
            switch is off, a path records to that database. A call's own ``log=`` wins.
        **kwargs: further :class:`HuggingFaceConfig` options (``num_threads``, ``decode_loop``,
            ``quantize_weights``, ``progress``) and ``generate()`` options (e.g. ``repetition_penalty``).

    Nothing is loaded until first use; agents with the same model, device, dtype and
    quantization share one loaded copy, freed when the last of them calls :meth:`unload_model`.
    """

    def __init__(
        self,
        model: str,
        device: str = DEFAULTS["device"],
        torch_dtype: str = DEFAULTS["torch_dtype"],
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        do_sample: bool | None = None,
        context_window: int = DEFAULTS["context_window"],
        trust_remote_code: bool = DEFAULTS["trust_remote_code"],
        load_in_8bit: bool = DEFAULTS["load_in_8bit"],
        load_in_4bit: bool = DEFAULTS["load_in_4bit"],
        *,
        reasoning_effort: ReasoningEffort | dict | None = None,
        kv_reuse: bool = True,
        log: Any = None,
        **kwargs: Any,
    ) -> None:
        self.log = log
        if not isinstance(kv_reuse, bool):
            raise ConfigError(f"kv_reuse={kv_reuse!r} is not allowed: expected True or False")
        self._config = HuggingFaceConfig.from_kwargs(
            model=model, device=device, torch_dtype=torch_dtype, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, top_k=top_k, do_sample=do_sample,
            context_window=context_window, trust_remote_code=trust_remote_code,
            load_in_8bit=load_in_8bit, load_in_4bit=load_in_4bit, **kwargs,
        )
        self._reasoning_effort = validate_reasoning_effort(reasoning_effort, "reasoning_effort", error=ConfigError)
        self._lm: LoadedModel | None = None
        self._key: tuple | None = None
        self._loading_key: tuple | None = None
        self._load_began: "LoadProgress | None" = None
        self._load_lock = threading.Lock()
        self._kv_reuse = kv_reuse
        self._owner = object()  # identifies this agent's kept KV caches (never equal to another agent's)

    @classmethod
    def from_config(cls, config: HuggingFaceConfig, reasoning_effort: ReasoningEffort | None = None) -> "HuggingFaceLocalAgent":
        """An agent for an existing :class:`HuggingFaceConfig`."""
        options = config.options()
        return cls(options.pop("model"), reasoning_effort=reasoning_effort, **options)

    def __repr__(self) -> str:
        state = "loaded" if self.is_loaded else "not loaded"
        return f"HuggingFaceLocalAgent(model={self._config.model!r}, device={self._config.device!r}, {state})"

    # ------------------------------------------------------------------ properties

    @property
    def log(self) -> Any:
        """Where this agent's calls are logged (see the ``log`` argument); settable."""
        return self._log

    @log.setter
    def log(self, value: Any) -> None:
        self._log = check_log_option(value, "HuggingFaceLocalAgent(log=...)")

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
        from ..engine import REGISTRY

        return REGISTRY.refcount(self._key)

    # ------------------------------------------------------------------ loading

    def _acquire_sync(self) -> "LoadedModel":
        with self._load_lock:
            if self._lm is None:
                from ..load_progress import LoadProgress

                self._load_began = LoadProgress(model=str(self._config.model), stage="resolving",
                                                detail="importing torch and transformers", started=time.monotonic())
                try:
                    from .. import engine

                    self._loading_key = engine.spec_for(self._config).key
                    self._lm = engine.acquire(self._config)
                finally:
                    self._load_began = None
                self._key = self._lm.spec.key
            return self._lm

    @property
    def load_progress(self) -> "LoadProgress | None":
        """Where the load of this agent's model stands while it loads (stage, seconds, weight
        counts: :class:`~midori_hf_nb.load_progress.LoadProgress`); None when it is not loading."""
        began = self._load_began
        if began is None or self._lm is not None:
            return None
        key = self._loading_key
        from ..load_progress import TRACKER

        progress = TRACKER.latest(key) if key is not None else None
        if progress is None or progress.started < began.started:  # not begun yet (imports), or an earlier load's
            return began
        return replace(progress, started=began.started)

    async def ensure_loaded(self) -> "LoadedModel":
        """The loaded model, loading it (in a worker thread) on first use."""
        lm = self._lm
        if lm is not None:
            return lm
        return await asyncio.to_thread(self._acquire_sync)

    async def load(self) -> "HuggingFaceLocalAgent":
        """Load the model now rather than on first use. Returns the agent."""
        await self.ensure_loaded()
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
        """:meth:`unload_model` for synchronous code: release this agent's reference now
        (and forget its kept KV caches)."""
        with self._load_lock:
            lm, self._lm = self._lm, None
        if lm is not None:
            from .. import engine

            self._forget_caches(lm)
            engine.release(lm)

    # ------------------------------------------------------------------ KV cache reuse

    @property
    def kv_reuse(self) -> bool:
        """Whether each session's KV cache is kept between turns (see the ``kv_reuse`` argument)."""
        return self._kv_reuse

    @kv_reuse.setter
    def kv_reuse(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise ConfigError(f"kv_reuse={value!r} is not allowed: expected True or False")
        self._kv_reuse = value
        if not value and self._lm is not None:
            self._forget_caches(self._lm)

    def reuse_key(self, payload: AgentPayload) -> tuple | None:
        """The key of the KV cache a generation for ``payload`` starts from and leaves behind:
        this agent and the payload's session (None when ``kv_reuse`` is off)."""
        return (self._owner, payload.session_id) if self._kv_reuse else None

    def forget_session(self, session_id: str | None = None) -> int:
        """Forget the kept KV caches of one session of this agent (all of its sessions when None),
        e.g. after its history was replaced. Returns how many were dropped. Not needed for
        correctness: a prompt that no longer extends the kept one reuses only what still matches."""
        lm = self._lm
        if lm is None:
            return 0
        return lm.prefix_caches.drop_matching(
            lambda key: key[0] is self._owner and (session_id is None or key[1] == session_id))

    def _forget_caches(self, lm: "LoadedModel") -> None:
        lm.prefix_caches.drop_matching(lambda key: isinstance(key, tuple) and key and key[0] is self._owner)

    # ------------------------------------------------------------------ building blocks

    def resolve_settings(self, overrides: dict[str, Any] | None = None, *, streaming: bool = True) -> CallSettings:
        """The settings a call with ``overrides`` runs with (see :mod:`midori_hf_nb.settings`);
        raises ``ValueError`` naming a field that is not allowed (``streaming=False``: a batch,
        where beam search is allowed). Once the model is loaded, the settings the user did not
        set come from its ``generation_config.json`` where it has them."""
        lm = self._lm
        return resolve_call_settings(self._config, overrides or {}, streaming=streaming,
                                     model_defaults=lm.generation_defaults if lm is not None else None)

    def build_prompt(self, lm: "LoadedModel", payload: AgentPayload, call: CallSettings,
                     schemas: list[dict] | None = None, continuation: list[dict] | None = None) -> Prompt:
        """The prompt of ``payload`` through the model's chat template, fitted into the context
        window (blocking: call it in a worker thread from async code)."""
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
                context_window=call.config.context_window,
                max_new_tokens=call.config.max_new_tokens,
                tools=template_tools,
                tool_instructions=instructions,
                template_kwargs=_reasoning_kwargs(effort),
                continuation=continuation,
            )

    def generate_batch(self, payloads: list[AgentPayload], *, tools: list[Any] | None = None,
                       stop_event: threading.Event | None = None, seeds: list[int] | None = None,
                       **overrides: Any) -> list[AgentResponse]:
        """Answer several payloads with one left-padded batch (blocking, in the calling thread).

        Loads the model on first use. ``overrides`` are those of :meth:`invoke` and apply to every
        payload; a ``seed`` seeds the whole call once, so a sampled answer depends on the batch it
        ran in (its companions and its position) -- unless the call is reproducible
        (``reproducible=True``, on the agent or among the overrides): then every answer is the one
        :meth:`invoke` gives its payload alone with the same settings (each sampled row draws from
        its own generator), and ``seeds`` (one per payload, instead of ``seed``) gives each row its
        own seed. ``tools`` are offered as in
        :meth:`invoke_with_tools` (parsed, never executed; ``tool_choice`` among the overrides as
        there). A ``response_format`` constrains every answer; a batch with it decodes through
        ``model.generate``. ``logprobs``/``top_logprobs``/``prompt_logprobs`` record token
        probabilities for every answer (see :meth:`invoke`). Timing metadata (``total_seconds``,
        ``time_to_first_token``) is that of the whole batch. Setting ``stop_event`` stops every
        sequence within a token (``finish_reason="cancelled"``). Each answer is recorded in the call
        log as its own call (one ``group_id`` per batch; ``log=`` as for :meth:`invoke`).
        """
        payloads = validate_payloads(payloads)
        if not payloads:
            return []
        log_option = overrides.pop("log", None)
        batch_id = new_id()
        tickets = [start_call(self._log, log_option, method="generate_batch", group_id=batch_id, payload=payload)
                   for payload in payloads]
        try:
            responses = self._generate_batch(payloads, tools, stop_event, overrides, tickets, seeds)
        except BaseException as exc:
            for ticket in tickets:
                finish_call(ticket, None, exc)
            raise
        for ticket, response in zip(tickets, responses):
            finish_call(ticket, response)
        return responses

    def _generate_batch(self, payloads: list[AgentPayload], tools: list[Any] | None,
                        stop_event: threading.Event | None, overrides: dict[str, Any], tickets: list,
                        seeds: list[int] | None = None) -> list[AgentResponse]:
        schemas = tool_schemas(tools) if tools else None
        call, schemas = apply_tool_choice(self.resolve_settings(overrides, streaming=False), schemas)
        row_seeds = _row_seeds(seeds, len(payloads), overrides, call.generation.reproducible)
        from .. import engine

        started = time.perf_counter()
        engine.check_generation_kwargs(call.generation.extra)
        lm = self._acquire_sync()
        call = with_model_defaults(call, self.resolve_settings(overrides, streaming=False))  # the model's defaults
        for ticket in tickets:
            if ticket is not None:
                ticket.details, ticket.tools = partial(local_details, self._config, lm, call), schemas
        prompts = [self.build_prompt(lm, payload, call, schemas, None) for payload in payloads]
        if len(prompts) == 1:  # no padding: the single-sequence path of invoke
            generation = call.generation if row_seeds is None else replace(call.generation, seed=row_seeds[0])
            results = [engine.generate(lm, prompts[0].input_ids, generation, stop_event=stop_event)]
        else:
            results = engine.generate_batch(lm, [p.input_ids for p in prompts], call.generation, stop_event,
                                            seeds=row_seeds)
        name = str(self._config.model)
        responses = [build_response(name, lm, prompt, result, call, payload, schemas, started)
                     for prompt, result, payload in zip(prompts, results, payloads)]
        if call.generation.probabilities is not None:
            for response, payload in zip(responses, payloads):
                attach_brancher(response, make_brancher(AgentStream, self, payload, overrides, schemas, None))
        return responses

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
        Cancelling the calling task stops the generation within a token. ``log``: where this call
        is recorded (None, False, True or a path; see :mod:`midori_hf_nb.log`), over the agent's ``log``.

        ``response_format`` (a pydantic model class, a JSON schema dict, a Python type or
        ``"json"``) constrains the answer token by token to JSON matching it; the response is then
        a :class:`~midori_hf_nb.agent.responses.StructuredResponse` whose ``parsed`` is the model
        instance, value or decoded JSON (None, with ``finish_reason="length"``, when
        ``max_new_tokens`` ran out before the JSON closed) and whose ``response`` is the raw text.
        Needs the ``structured`` extra; refusals raise
        :class:`~midori_hf_nb.structured.StructuredOutputError` naming what to change.

        Token probabilities (off by default; see :mod:`midori_hf_nb.logprobs`): ``logprobs=True``
        records each generated token's raw and processed log-probability, rank and entropy (and,
        under a ``response_format``, the grammar's pressure); ``top_logprobs=k`` (0-20) adds its
        ``k`` most likely alternatives; ``prompt_logprobs=True`` scores the prompt's tokens and its
        perplexity. The response is then a :class:`~midori_hf_nb.logprobs.LogprobsResponse`:
        ``response.logprobs.content[i]`` in the OpenAI shape, and ``await response.branch(step,
        token)`` continues the answer from another token.
        """
        return await AgentStream(self, payload, events=True, overrides=overrides, method="invoke").collect()

    def stream(self, payload: AgentPayload, *, events: bool = False, **overrides: Any) -> AgentStream:
        """Stream the answer to ``payload``.

        Yields answer text pieces (reasoning is left out; their concatenation equals
        ``invoke(...).response`` for the same greedy request). With ``events=True`` yields
        :class:`StreamEvent` objects: ``thinking`` and ``text`` pieces as they arrive, and a
        final ``done`` event with the response. Overrides are those of :meth:`invoke`.
        """
        return AgentStream(self, payload, events=events, overrides=overrides)

    async def invoke_with_tools(self, payload: AgentPayload, tools: list[Any], *, tool_choice: Any = None,
                                **overrides: Any) -> AgentResponse:
        """Answer ``payload`` with ``tools`` offered to the model; calls are parsed, never executed.

        ``tools``: typed, documented callables, OpenAI-format function dicts, or dicts with
        ``name`` and ``description``. Templates that support ``tools=`` receive the schemas;
        others get a tool description in the system message. Parsed calls are in
        ``response.tool_calls``; calls to names not offered carry ``"unknown": True``.

        ``tool_choice``: ``"auto"`` (default: the model decides), ``"none"`` (no tools offered),
        ``"required"`` (exactly one call, to one of the tools) or ``{"name": tool}`` (exactly one
        call to it). ``required`` and a name generate the call under the grammar of the tools'
        schemas (the ``structured`` extra), so it always parses and its arguments validate.
        """
        schemas = tool_schemas(tools)
        if tool_choice is not None:
            overrides["tool_choice"] = tool_choice
        return await AgentStream(self, payload, events=True, overrides=overrides, schemas=schemas,
                                 method="invoke_with_tools").collect()

    def stream_with_tools(self, payload: AgentPayload, tools: list[Any], *, events: bool = True,
                          tool_choice: Any = None, **overrides: Any) -> AgentStream:
        """Like :meth:`invoke_with_tools`, streamed (typed events by default); nothing is executed.

        Events arrive live: ``thinking`` and ``text`` pieces, and a ``tool_call`` event (``data``
        is the parsed call, flagged ``"unknown"`` when not offered) as soon as a call's text is
        complete; tool-call text never appears as ``text``. The ``done`` event carries the final
        response, whose ``tool_calls`` have the same ids. It is authoritative: prose streamed as
        ``text`` before a call counts as reasoning there (``response.thinking``). ``tool_choice``
        is that of :meth:`invoke_with_tools`.
        """
        if tool_choice is not None:
            overrides["tool_choice"] = tool_choice
        return AgentStream(self, payload, events=events, overrides=overrides, schemas=tool_schemas(tools),
                           method="stream_with_tools")

    async def run_tools(self, payload: AgentPayload, tools: list[Any], max_steps: int = 5, *,
                        tool_timeout: float | None = DEFAULT_TOOL_TIMEOUT,
                        max_result_chars: int = DEFAULT_MAX_RESULT_CHARS, tool_choice: Any = None,
                        **overrides: Any) -> AgentResponse:
        """Opt-in tool execution loop.

        Each step generates with the tools offered; the parsed calls of callable tools are run
        (sync ones in a worker thread, async ones awaited), their results (or errors, for a tool
        that raises or a name not offered) are appended to the conversation as tool messages, and
        the model continues. The loop ends when the model answers without a call, or after
        ``max_steps`` generations (the last step's calls are then left unexecuted and
        ``metadata["max_steps_reached"]`` is True). ``metadata["tool_steps"]`` records every
        executed call: step, name, arguments, id, result, error, seconds, status, note.
        :meth:`stream_tools` is the same loop as a stream of events.

        A call is checked against the tool's JSON schema first; one that does not match is not
        run and the model gets an error naming the argument. A call may take ``tool_timeout``
        seconds (None: no limit); a timed-out sync tool's thread cannot be stopped and runs on
        in the background. A result longer than ``max_result_chars`` characters, or than the
        context window has room for, is cut with a ``[truncated: N of M characters]`` note.
        A tool that raises (even ``SystemExit``), times out or returns something that cannot be
        written as text gives an error result; only ``KeyboardInterrupt`` and cancellation pass.

        ``tool_choice`` (see :meth:`invoke_with_tools`) applies to the first step: ``"required"``
        or a name forces a call there; later steps are ``"auto"``, so the model can answer with
        the results. ``"none"`` offers no tools at all.
        """
        return await self.stream_tools(payload, tools, max_steps=max_steps, tool_timeout=tool_timeout,
                                       max_result_chars=max_result_chars, tool_choice=tool_choice,
                                       **overrides).collect()

    def stream_tools(self, payload: AgentPayload, tools: list[Any], max_steps: int = 5, *,
                     tool_timeout: float | None = DEFAULT_TOOL_TIMEOUT,
                     max_result_chars: int = DEFAULT_MAX_RESULT_CHARS, tool_choice: Any = None,
                     **overrides: Any) -> ToolLoopStream:
        """The opt-in tool loop of :meth:`run_tools`, streamed as :class:`StreamEvent` objects.

        Yields each step's ``thinking``, ``text`` and ``tool_call`` events, a ``tool_result`` event
        per executed call (``data``: the step record), and a final ``done`` event with the response.
        """
        if tool_choice is not None:
            overrides["tool_choice"] = tool_choice
        return ToolLoopStream(self, payload, tools, max_steps, overrides, tool_timeout, max_result_chars)
