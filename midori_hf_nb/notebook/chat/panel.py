"""``ChatPanel``: a conversation with any Midori protocol agent inside one notebook cell (what it shows and
how it behaves: :mod:`midori_hf_nb.notebook.chat`). Here: the buttons' actions, each answer as a task on the
kernel's event loop, the status line; :mod:`.actions`: the queue, editing, branches; :mod:`.saving`: export
and import; :mod:`.persistence`: the call log and the saved copy."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

from ...protocol import AgentPayload, MemoryEntryData, make_payload
from ...settings import check_overrides, offers_reproducible
from ..conversation import count_tokens
from ...load_progress import LoadProgress
from ..streaming import DEFAULT_THROTTLE, LiveView, tick_while_waiting
from .actions import PanelActions
from .branches import Branch, fork
from .composer import MAX_INPUT_CHARS
from .export import ChatExport
from .generation import AnswerRun, GenerationPlan, agent_defaults, agent_model, answer_entry, initial_settings, \
    model_label, plan_generation, SettingsBaseline, tool_method
from .layout import ChatLayout, WidgetSink
from .options import check_panel_options
from .pages import TranscriptPages
from .persistence import PersistentPanel
from .saving import PanelSaving
from .render import final_status_text, live_status_text, render_live_html
from .structured_field import ResponseFormatField, attach
from .transcript import TOKENS_FIELD, TranscriptEntry, check_memory, entry_to_dict, payload_memory


class ChatPanel(PanelActions, PanelSaving, PersistentPanel, ChatLayout):
    """A chat with ``agent`` as an ipywidgets panel (see :mod:`midori_hf_nb.notebook.chat`).

    Args:
        agent: any :class:`~midori_hf_nb.MidoriAiAgentProtocol` agent (e.g.
            :class:`~midori_hf_nb.HuggingFaceLocalAgent`); it streams when it has ``stream``.
        tools: tools to offer the model (typed callables or schema dicts); calls are shown,
            and run only with ``execute_tools=True``.
        execute_tools: opt in to running the tools the model calls (needs an agent with ``stream_tools``).
        max_tool_steps: generations of the tool loop at most (``execute_tools=True``).
        system_prompt: the initial system prompt (editable in Settings).
        temperature, max_new_tokens, greedy: initial settings; default to the agent's configuration
            (so do ``top_p``, ``top_k``, ``seed`` and ``stop_on_repetition``, given as overrides).
        memory: an earlier conversation to continue (list of :class:`~midori_hf_nb.MemoryEntryData`;
            roles user, assistant, system or tool; checked field by field).
        session_id: the ``session_id`` of the payloads.
        title: a heading shown above the transcript (default: the model name).
        throttle: minimum seconds between transcript updates while streaming.
        height: the transcript's maximum height (CSS), e.g. ``"420px"``.
        enter_sends: whether Enter sends (Shift+Enter always starts a new line).
        conversation, log: a logged conversation to continue (id or name), the calls' log option (:mod:`.persistence`).
        **overrides: further per-message generation overrides (``seed``, ``top_p``, ``top_k`` and
            ``stop_on_repetition`` are Settings; ``repetition_penalty``, ``logits_processor``,
            ``tool_choice`` for the tools...), as for
            :meth:`~midori_hf_nb.HuggingFaceLocalAgent.invoke`. A ``response_format`` is the first
            value of the "Response format" setting (free text, ``json`` or a JSON schema).
    """

    def __init__(self, agent: Any, tools: list[Any] | None = None, *, execute_tools: bool = False,
                 max_tool_steps: int = 5, system_prompt: str = "You are a helpful assistant.",
                 temperature: float | None = None, max_new_tokens: int | None = None, greedy: bool | None = None,
                 memory: list[MemoryEntryData] | None = None, session_id: str = "chat-panel",
                 title: str | None = None, throttle: float = DEFAULT_THROTTLE, height: str = "420px",
                 enter_sends: bool = True, conversation: str | None = None, log: Any = None, **overrides: Any) -> None:
        check_panel_options(agent=agent, tools=tools, execute_tools=execute_tools, max_tool_steps=max_tool_steps,
                            throttle=throttle, system_prompt=system_prompt, enter_sends=enter_sends)
        tool_method(agent, tools, execute_tools)  # refuses a tool loop the agent cannot run
        settings, self.overrides = initial_settings(agent, overrides, temperature=temperature,
                                                    max_new_tokens=max_new_tokens, greedy=greedy)
        self._baseline = SettingsBaseline.of(settings, overrides, temperature=temperature,
                                             max_new_tokens=max_new_tokens, greedy=greedy)
        self.init_actions()
        self._cleared_branches: list[Branch] = []
        self.memory = check_memory(self.open_conversation(agent, conversation, memory, log), "ChatPanel(memory=...)")
        self.agent = agent
        self.tools = list(tools) if tools else None
        self.execute_tools = execute_tools
        self.max_tool_steps = max_tool_steps
        self.session_id = session_id
        self.throttle = float(throttle)
        self._fixed_title = title
        self._task: asyncio.Future | None = None
        self._run: AnswerRun | None = None
        self._stop_requested = False
        self._epoch = 0
        self._last_live_update = -1
        self.pages = TranscriptPages()
        label, full = model_label(agent)
        super().__init__(title=title if title is not None else label, title_tooltip="" if title is not None else full,
                         system_prompt=system_prompt, enter_sends=enter_sends, height=height, settings=settings)
        self.input.on_send(self._on_send)
        self.input.on_action(self.handle_action)
        self.cancel_edit_button.on_click(lambda _: self.cancel_edit())
        self.stop_button.on_click(lambda _: self.stop())
        self.regenerate_button.on_click(lambda _: self._guarded(self.regenerate))
        self.clear_button.on_click(lambda _: self.clear())
        self.undo_clear_button.on_click(lambda _: self._guarded(self.undo_clear))
        self.export_button.on_click(lambda _: self.export_clicked())
        self.earlier_button.on_click(lambda _: self.show_earlier())
        self.refresh()
        self.response_format_field = attach(self.settings_box,
                                            ResponseFormatField(self.overrides.pop("response_format", None)))
        self.show_status(self.ready_text())
        self.show_running(False)

    def __repr__(self) -> str:
        state = "running" if self.is_running else "idle"
        return f"ChatPanel({len(self.memory)} messages, {state}, model={agent_model(self.agent)!r})"

    # ------------------------------------------------------------------ state

    @property
    def is_running(self) -> bool:
        """True while a generation is running."""
        return self._task is not None and not self._task.done()

    @property
    def partial(self) -> str:
        """The answer text received so far by the running generation ('' when idle)."""
        run = self._run
        return run.view.state.answer if (run is not None and self.is_running) else ""

    @property
    def entries(self) -> list[TranscriptEntry]:
        """The conversation as typed :class:`~.transcript.TranscriptEntry` objects, oldest first."""
        return [TranscriptEntry.from_memory(e) for e in self.memory]
    @property
    def transcript(self) -> list[dict[str, Any]]:
        """The conversation as dicts (see :meth:`~.transcript.TranscriptEntry.as_dict`), oldest first."""
        return [entry_to_dict(e) for e in self.memory]

    def generation_overrides(self) -> dict[str, Any]:
        """The overrides the next message is generated with (see :class:`~.generation.SettingsBaseline`;
        greedy or seeded answers of a local model are reproducible unless the overrides say otherwise),
        checked by :func:`~midori_hf_nb.settings.check_overrides`; raises ``ValueError`` naming a bad setting."""
        try:
            reproducible = "reproducible" not in self.overrides and offers_reproducible(self.agent)
            asked = {**self.overrides, **self._baseline.asked({**self.settings(), "seed": self.seed_value()}, reproducible)}
            asked["response_format"] = self.response_format_field.value()
            return check_overrides(asked)
        except ValueError as exc:
            raise ValueError(f"Settings: {exc}") from exc

    def payload(self, user_message: str, memory: list[MemoryEntryData] | None = None) -> AgentPayload:
        """The payload the panel would send for ``user_message`` now (the conversation as memory)."""
        history = payload_memory(self.memory if memory is None else memory)
        return make_payload(user_message, self.system_prompt_input.value, memory=history or None,
                            session_id=self.session_id)

    # ------------------------------------------------------------------ actions

    def send(self, text: str | None = None, *, edit: int | None = None) -> Any:
        """Send ``text`` (default: the input box, which is then cleared) and start the answer.

        ``edit``: the position of one of your earlier messages to send ``text`` in its place: the
        messages from there on are kept as a branch (:mod:`.branches`; see :meth:`edit`).
        Returns an ``asyncio.Task`` resolving to the answer's transcript dict when an event loop
        is running (a notebook: ``await panel.send("...")``), else runs to completion and
        returns the dict. Raises ``ValueError`` for an empty message or invalid settings and
        ``RuntimeError`` while a generation runs; the input box is left as it was in both cases.
        (The input box queues a message sent while an answer runs: :mod:`.actions`.)
        """
        from_input = text is None
        text = self.input.value if from_input else text
        if not isinstance(text, str):
            raise ValueError(f"ChatPanel.send(text=...) expects a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError("ChatPanel.send: the message is empty; type something first")
        self._check_idle("send")
        if edit is not None:
            self.check_user_message(edit)
        plan = self._plan_or_notice()
        if edit is not None:
            self.memory[:], self.branches[:] = fork(self.memory, self.branches, edit)
            self.stop_editing()
        self.pages.cleared = None  # a new message: Undo clear no longer applies
        self.show_widget(self.undo_clear_button, False)
        history = payload_memory(self.memory)
        self.memory.append(MemoryEntryData(role="user", content=text, timestamp=time.time()))
        if from_input:
            self.input.value = ""
        self.show_notice("")
        return self._launch(self._turn(self.memory[-1], history, plan, self._epoch))

    def regenerate(self) -> Any:
        """Answer the last user message again, replacing the answer after it (if any).

        Returns like :meth:`send`. Raises ``ValueError`` when there is no user message and
        ``RuntimeError`` while a generation runs.
        """
        self._check_idle("regenerate")
        index = next((i for i in range(len(self.memory) - 1, -1, -1) if self.memory[i].role == "user"), None)
        if index is None:
            raise ValueError("ChatPanel.regenerate: there is no user message to answer yet")
        plan = self._plan_or_notice()
        del self.memory[index + 1:]
        history = payload_memory(self.memory[:index])
        self.show_notice("")
        self.refresh()
        return self._launch(self._turn(self.memory[index], history, plan, self._epoch))

    def stop(self) -> bool:
        """Stop the running answer within a token or two, keeping what arrived (marked stopped); True if one ran."""
        if not self.is_running:
            return False
        self._stop_requested = True
        if self._run is not None:
            self._run.stop()
        self.show_status("stopping…")
        return True

    def clear(self) -> int:
        """Forget the conversation (stopping a running generation first); returns how many messages
        there were. :meth:`undo_clear` brings them back until the next message is sent."""
        self.stop()
        self._epoch += 1  # a generation still finishing is not recorded
        self.return_queue_to_box()
        self.cancel_edit()
        count = len(self.memory)
        if self.memory:
            self._cleared_branches = list(self.branches)
        self.pages.keep_cleared(self.memory)
        self.memory.clear()
        self.branches.clear()
        self.live_html.value = ""
        self.show_notice("")
        self.refresh()
        self.show_widget(self.undo_clear_button, self.pages.cleared is not None)
        self.show_status(f"cleared {count} messages" + (" (Undo clear brings them back)" if count else ""))
        return count

    def undo_clear(self) -> int:
        """Bring back the conversation the last :meth:`clear` removed; returns how many messages came
        back. Raises ``ValueError`` when there is nothing to bring back (nothing was cleared, or a
        message was sent since) and ``RuntimeError`` while a generation runs."""
        self._check_idle("undo_clear")
        restored = self.pages.take_cleared()
        self.memory[:0] = restored
        self.branches[:0], self._cleared_branches = self._cleared_branches, []
        self.refresh()
        self.show_widget(self.undo_clear_button, False)
        self.show_status(f"{len(restored)} messages brought back")
        return len(restored)

    def show_earlier(self) -> int:
        """Show :data:`~.pages.PAGE_SIZE` more of the earlier messages; returns how many are shown now."""
        shown = self.pages.show_more(self.memory)
        self.refresh()
        return shown

    async def wait(self) -> dict[str, Any] | None:
        """Wait for the running generation (if any) and for the answers to the queued messages;
        returns the last answer's transcript dict."""
        while True:
            task = self._task
            if task is not None and not task.done():
                await asyncio.shield(task)
            elif self.queued:
                self.send_next_queued()
                await asyncio.sleep(0)
            else:
                return None if task is None else task.result()

    # ------------------------------------------------------------------ internals

    def _check_idle(self, action: str) -> None:
        if self.is_running:
            message = (f"ChatPanel.{action}: a generation is running; wait for it (await panel.wait()) "
                       "or stop it (panel.stop()) first")
            self.show_notice(message)
            raise RuntimeError(message)

    def _plan_or_notice(self) -> GenerationPlan:
        try:
            overrides = self.generation_overrides()
        except ValueError as exc:
            self.show_notice(str(exc))
            raise
        return plan_generation(self.agent, overrides, tools=self.tools, execute_tools=self.execute_tools,
                               max_tool_steps=self.max_tool_steps)

    def _guarded(self, action: Callable[..., Any], *args: Any) -> Any:
        """Run an action for a button: refused actions show a notice instead of raising."""
        try:
            return action(*args)
        except (ValueError, RuntimeError) as exc:
            self.show_notice(str(exc))
            return None

    def _on_send(self, text: str) -> bool:
        """Send (button or Enter) with the text the browser read from the box: the edit of an earlier
        message while editing, queued while an answer runs (:mod:`.actions`), else sent. False:
        refused (a notice says why, and the input puts the text back)."""
        if not text.strip():
            self.show_notice("Type a message first.")
            return False
        if len(text) > MAX_INPUT_CHARS:
            self.show_notice(f"The message has {len(text)} characters; at most {MAX_INPUT_CHARS} are allowed.")
            return False
        if self.editing is not None:
            return self._guarded(self.edit, self.editing, text) is not None
        if self.is_running:
            return self._guarded(self.queue, text) is not None
        return self._guarded(self.send, text) is not None

    def refresh(self) -> None:
        """Show the transcript again: the latest page of messages (:mod:`.pages`: a long transcript stays
        small in the browser), with the answers shown as text and the versions where it forked."""
        self.show_history(self.pages.html(self.memory, **self.view_state()), hidden=self.pages.hidden(self.memory))

    def _launch(self, coro: Awaitable[Any]) -> Any:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self._stop_requested = False
        if loop is None:  # a plain script: run to completion here
            return self.log_context().run(asyncio.run, self._tracked(coro))
        self._task = loop.create_task(coro, context=self.log_context())
        self.show_running(True)
        return self._task

    async def _tracked(self, coro: Awaitable[Any]) -> Any:
        self._task = asyncio.ensure_future(coro)
        self.show_running(True)
        return await self._task

    def _waiting_status(self, progress: LoadProgress | None, started: float) -> None:
        if not self._stop_requested:  # "stopping…" stays
            self.show_waiting(progress, time.perf_counter() - started)

    def _live_status(self, view: LiveView, started: float) -> None:
        if view.updates == self._last_live_update or self._stop_requested:  # "stopping…" stays
            return
        self._last_live_update = view.updates
        tokens = count_tokens(self.agent, view.state.thinking + view.state.answer)
        self.show_status(live_status_text(tokens, time.perf_counter() - started))

    async def _turn(self, user_entry: MemoryEntryData, history: list[MemoryEntryData], plan: GenerationPlan,
                    epoch: int) -> dict:
        """One answer; ``epoch``: the Clear count when it was sent (a Clear since, even before it started,
        leaves the answer unrecorded)."""
        self.refresh()
        title = "running the tool loop (tools execute)…" if self.execute_tools else None
        view = LiveView(WidgetSink(self.live_html, wrap=render_live_html), throttle=self.throttle, title=title)
        started = time.perf_counter()
        run = AnswerRun(self.agent, self.payload(user_entry.content, memory=history), plan, view,
                        on_event=lambda: self._live_status(view, started), stopped=self._stop_requested)
        self._run = run
        self.show_status("waiting for the model…")
        view.start()
        ticker = asyncio.ensure_future(tick_while_waiting(
            view, self.agent, on_tick=lambda progress: self._waiting_status(progress, started)))
        try:
            outcome = await run.run()
        finally:
            ticker.cancel()
        schema = plan.kwargs.get("response_format")
        entry = answer_entry(outcome, view, model=agent_model(self.agent), schema=getattr(schema, "name", None))
        self._run = None
        self.live_html.value = ""
        if epoch == self._epoch:  # not cleared meanwhile
            self._record(user_entry, entry, plan)
        self._baseline = self._baseline.synced(self.settings(), agent_defaults(self.agent), self.show_settings)
        self._stop_requested = False
        self._task_done_soon()
        task = asyncio.current_task()
        if outcome.cancelled is not None and task is not None and task.cancelling():
            raise outcome.cancelled  # cancelled from outside (not by Stop): recorded, then propagated
        return entry.as_dict()

    def _record(self, user_entry: MemoryEntryData, entry: TranscriptEntry, plan: GenerationPlan) -> None:
        """Put a finished answer into the conversation and show it."""
        user_tokens = count_tokens(self.agent, user_entry.content)
        if user_tokens is not None:
            user_entry.metadata = {**(user_entry.metadata or {}), TOKENS_FIELD: user_tokens}
        self.memory.append(entry.to_memory())
        self.refresh()
        label, full = model_label(self.agent, entry.stats.model)
        if self._fixed_title is None:
            self.show_title(label, full)
        self.show_status(final_status_text(entry, ignored=plan.ignored, model=label), fresh_memory=True)

    def _task_done_soon(self) -> None:
        """Re-enable the buttons once the task has finished (it finishes right after this returns),
        then send the next queued message."""
        def done(_: Any = None) -> None:
            self.show_running(self.is_running)
            self.send_next_queued()

        task = self._task
        if task is not None and not task.done():
            task.add_done_callback(done)
        else:
            done()


__all__ = ["ChatExport", "ChatPanel", "check_panel_options"]
