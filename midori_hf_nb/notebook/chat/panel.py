"""``ChatPanel``: a conversation with any Midori protocol agent inside one notebook cell (what it shows and
how it behaves: :mod:`midori_hf_nb.notebook.chat`). Here: the buttons' actions, each answer as a task on the
kernel's event loop, the status line, export and import; :mod:`.persistence`: the call log and the saved copy."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from ...protocol import AgentPayload, MemoryEntryData, make_payload
from ...settings import check_overrides
from ..conversation import count_tokens
from ...load_progress import LoadProgress
from ..streaming import DEFAULT_THROTTLE, LiveView, tick_while_waiting
from .composer import MAX_INPUT_CHARS
from .document import read_document, write_document
from .export import ChatExport, write_export
from .generation import AnswerRun, GenerationPlan, agent_defaults, agent_model, answer_entry, initial_settings, \
    plan_generation, SettingsBaseline, tool_method
from .layout import ChatLayout, WidgetSink
from .options import check_panel_options
from .pages import TranscriptPages
from .persistence import PersistentPanel
from .render import final_status_text, live_status_text, render_live_html
from .structured_field import ResponseFormatField, attach
from .transcript import TOKENS_FIELD, TranscriptEntry, check_memory, entry_to_dict, payload_memory, \
    render_transcript_markdown, transcript_frame


class ChatPanel(PersistentPanel, ChatLayout):
    """A chat with ``agent`` as an ipywidgets panel (see :mod:`midori_hf_nb.notebook.chat`).

    Args:
        agent: any :class:`~midori_hf_nb.MidoriAiAgentProtocol` agent (e.g.
            :class:`~midori_hf_nb.HuggingFaceLocalAgent`); it streams when it has ``stream``.
        tools: tools to offer the model (typed callables or schema dicts); calls are shown,
            and run only with ``execute_tools=True``.
        execute_tools: opt in to running the tools the model calls (needs an agent with ``stream_tools``).
        max_tool_steps: generations of the tool loop at most (``execute_tools=True``).
        system_prompt: the initial system prompt (editable in Settings).
        temperature, max_new_tokens, greedy: initial settings; default to the agent's configuration.
        memory: an earlier conversation to continue (list of :class:`~midori_hf_nb.MemoryEntryData`;
            roles user, assistant, system or tool; checked field by field).
        session_id: the ``session_id`` of the payloads.
        title: a heading shown above the transcript (default: the model name).
        throttle: minimum seconds between transcript updates while streaming.
        height: the transcript's maximum height (CSS), e.g. ``"420px"``.
        enter_sends: whether Enter sends (Shift+Enter always starts a new line).
        conversation, log: a logged conversation to continue (id or name), the calls' log option (:mod:`.persistence`).
        **overrides: further per-message generation overrides (``seed``, ``repetition_penalty``,
            ``logits_processor``, ``tool_choice`` for the tools...), as for
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
        super().__init__(title=title if title is not None else agent_model(agent), system_prompt=system_prompt,
                         enter_sends=enter_sends, height=height, **settings)
        self.input.on_send(self._on_send)
        self.stop_button.on_click(lambda _: self.stop())
        self.regenerate_button.on_click(lambda _: self._guarded(self.regenerate))
        self.clear_button.on_click(lambda _: self.clear())
        self.undo_clear_button.on_click(lambda _: self._guarded(self.undo_clear))
        self.export_button.on_click(lambda _: self._export_clicked())
        self.earlier_button.on_click(lambda _: self.show_earlier())
        self._render_history()
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
        """The overrides the next message is generated with (settings the user neither gave nor changed
        are left to the agent, see :class:`~.generation.SettingsBaseline`), checked by
        :func:`~midori_hf_nb.settings.check_overrides`; raises ``ValueError`` naming a bad setting."""
        asked = {**self.overrides, **self._baseline.asked(self.settings())}
        try:
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

    def send(self, text: str | None = None) -> Any:
        """Send ``text`` (default: the input box, which is then cleared) and start the answer.

        Returns an ``asyncio.Task`` resolving to the answer's transcript dict when an event loop
        is running (a notebook: ``await panel.send("...")``), else runs to completion and
        returns the dict. Raises ``ValueError`` for an empty message or invalid settings and
        ``RuntimeError`` while a generation runs; the input box is left as it was in both cases.
        """
        from_input = text is None
        text = self.input.value if from_input else text
        if not isinstance(text, str):
            raise ValueError(f"ChatPanel.send(text=...) expects a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError("ChatPanel.send: the message is empty; type something first")
        self._check_idle("send")
        plan = self._plan_or_notice()
        self.pages.cleared = None  # a new message: Undo clear no longer applies
        self.show_widget(self.undo_clear_button, False)
        history = payload_memory(self.memory)
        self.memory.append(MemoryEntryData(role="user", content=text, timestamp=time.time()))
        if from_input:
            self.input.value = ""
        self.show_notice("")
        return self._launch(self._turn(len(self.memory) - 1, history, plan))

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
        self._render_history()
        return self._launch(self._turn(index, history, plan))

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
        count = len(self.memory)
        self.pages.keep_cleared(self.memory)
        self.memory.clear()
        self.live_html.value = ""
        self.show_notice("")
        self._render_history()
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
        self._render_history()
        self.show_widget(self.undo_clear_button, False)
        self.show_status(f"{len(restored)} messages brought back")
        return len(restored)

    def show_earlier(self) -> int:
        """Show :data:`~.pages.PAGE_SIZE` more of the earlier messages; returns how many are shown now."""
        shown = self.pages.show_more(self.memory)
        self._render_history()
        return shown

    def export(self, folder: str | os.PathLike[str] | None = None, *, stem: str | None = None) -> ChatExport:
        """Write :meth:`to_json` and :meth:`to_markdown` into ``folder`` (default: the working
        directory, the notebook's folder in Jupyter) as ``<stem>.json`` and ``<stem>.md``, never
        overwriting a file (see :func:`~.export.write_export`)."""
        return write_export(Path.cwd() if folder is None else Path(folder), stem,
                            {".json": self.to_json(), ".md": self.to_markdown()}, messages=len(self.memory))

    async def wait(self) -> dict[str, Any] | None:
        """Wait for the running generation (if any); returns its answer's transcript dict."""
        task = self._task
        return None if task is None else (await asyncio.shield(task) if not task.done() else task.result())

    # ------------------------------------------------------------------ export / import

    def to_frame(self):
        """The conversation as a DataFrame (see :func:`~.transcript.transcript_frame`)."""
        return transcript_frame(self.memory)

    def to_json(self, indent: int | None = 2) -> str:
        """The conversation and settings as JSON text (see :mod:`.document`); :meth:`from_json` loads it."""
        return write_document(self.memory, self.settings(), model=agent_model(self.agent),
                              session_id=self.session_id, indent=indent)

    @classmethod
    def from_json(cls, agent: Any, text: str, **options: Any) -> "ChatPanel":
        """A new panel on ``agent`` continuing the conversation saved by :meth:`to_json`.

        Checks every message and setting (:func:`~.document.read_document`, current format and
        version 1). The saved settings and session id apply unless given in ``options``.
        """
        document = read_document(text)
        for key, value in document.settings.items():
            options.setdefault(key, value)
        if document.session_id is not None:
            options.setdefault("session_id", document.session_id)
        return cls(agent, memory=document.memory, **options)

    def to_markdown(self, title: str | None = "Chat") -> str:
        """The conversation as Markdown (everything from the transcript escaped)."""
        return render_transcript_markdown(self.memory, title=title)

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
        """Send (button or Enter) with the text the browser read from the box; False: refused
        (a notice says why, and the input puts the text back)."""
        if not text.strip():
            self.show_notice("Type a message first.")
            return False
        if len(text) > MAX_INPUT_CHARS:
            self.show_notice(f"The message has {len(text)} characters; at most {MAX_INPUT_CHARS} are allowed.")
            return False
        return self._guarded(self.send, text) is not None

    def _export_clicked(self) -> None:
        """The Export button: write the files and say where (or why not)."""
        try:
            self.show_exported(self.export())
        except (OSError, ValueError) as exc:
            self.show_notice(f"Export failed: {exc}")

    def _render_history(self) -> None:
        """Show the latest page of messages (:mod:`.pages`: a long transcript stays small in the browser)."""
        self.show_history(self.pages.html(self.memory), hidden=self.pages.hidden(self.memory))

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

    async def _turn(self, user_index: int, history: list[MemoryEntryData], plan: GenerationPlan) -> dict:
        epoch = self._epoch
        user_entry = self.memory[user_index]
        self._render_history()
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
        entry = answer_entry(outcome, view, model=agent_model(self.agent))
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
        self._render_history()
        if self._fixed_title is None:
            self.show_title(entry.stats.model or agent_model(self.agent))
        self.show_status(final_status_text(entry, ignored=plan.ignored), fresh_memory=True)

    def _task_done_soon(self) -> None:
        """Re-enable the buttons once the task has finished (it finishes right after this returns)."""
        task = self._task
        if task is not None and not task.done():
            task.add_done_callback(lambda _: self.show_running(self.is_running))
        else:
            self.show_running(self.is_running)


__all__ = ["ChatExport", "ChatPanel", "check_panel_options"]
