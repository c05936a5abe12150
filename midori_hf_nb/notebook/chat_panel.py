"""A chat panel widget: a conversation with an agent inside one notebook cell.

``panel = ChatPanel(agent)`` as a cell's last expression shows:

* a scrolling transcript (newest at the bottom), every message HTML-escaped, the model's
  reasoning in a collapsible block and tool calls as a small table under the answer;
* a multi-line input with **Send**, **Stop**, **Regenerate** and **Clear** buttons;
* a status line: tokens, tokens/s, finish reason and the memory readout (process RSS and
  the weights of loaded models, from :func:`~midori_hf_nb.notebook.memory_readout`);
* a collapsed **Settings** area: system prompt, temperature, max new tokens, greedy toggle
  and "Enter sends"; settings apply to the next message.

Generation runs as a task on the kernel's event loop (the agent generates in its own thread),
so the cell returns at once and the kernel keeps processing button clicks: **Stop** ends the
generation within a token or two and keeps the partial answer, marked as stopped. The
transcript is refreshed at most every ``throttle`` seconds (0.1 by default) while streaming.

Enter and Shift+Enter: ipywidgets' ``Textarea`` reports no key events, so the two keys cannot
be told apart. With "Enter sends" ticked (the default) a line break typed at the *end* of the
text sends it; a line break typed anywhere else stays. To compose several lines, untick
"Enter sends" in Settings (or type the lines, then add the breaks inside the text) and press Send.

Nothing is lost when something fails: invalid settings are reported before anything is sent
and the typed message stays in the input; an exception during generation (a prompt too long
for the context window, running out of memory, an unknown generation option) is shown in the
transcript in place of the answer, with whatever text had arrived, and the rest of the
transcript and any unsent input stay. **Regenerate** retries the last message.

The conversation *is* the payload memory: :attr:`ChatPanel.memory`, a list of
:class:`~midori_hf_nb.MemoryEntryData` (answers carry tokens, seconds, finish reason,
thinking, tool steps, ``stopped`` and ``error`` in their ``metadata``). Failed exchanges stay
in the transcript but are not sent to the model. Export it any time with :meth:`~ChatPanel.to_frame`,
:meth:`~ChatPanel.to_json` (load it into a new panel with :meth:`ChatPanel.from_json`) and
:meth:`~ChatPanel.to_markdown`.

Tools: with ``tools=[...]`` the model is offered the tools and the calls it makes are shown,
not executed. Tools run only with ``execute_tools=True`` (the agent's opt-in loop,
:meth:`~midori_hf_nb.HuggingFaceLocalAgent.stream_tools`): each step streams in, and each call
that ran appears in the table with its result or error as soon as it returns. Stop ends the
loop within a token or two and keeps the steps already run.

Programmatic use (for notebooks and tests)::

    answer = await panel.send("What is the capital of France?")   # the answer's transcript dict
    task = panel.send("Tell me a long story")                      # returns at once (an asyncio.Task)
    panel.stop(); await panel.wait()
    await panel.regenerate()
    panel.clear()
    panel.transcript                                               # list of dicts

Outside a running event loop (a plain script), ``send`` and ``regenerate`` run to completion
and return the dict directly.
"""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace
from typing import Any, Awaitable

import ipywidgets as widgets

from ..protocol import MemoryEntryData
from .conversation import ROLES, count_tokens
from .display import (
    STYLE_BOX,
    STYLE_FOOTER,
    escape,
    escape_markdown,
    render_response_html,
    render_response_markdown,
)
from .streaming import DEFAULT_THROTTLE, LiveView

#: The ``format`` field of :meth:`ChatPanel.to_json` documents.
JSON_FORMAT = "midori-hf-nb/chat-panel"
JSON_VERSION = 1

#: Settings keys (:meth:`ChatPanel.settings`).
SETTINGS_KEYS = ("system_prompt", "temperature", "max_new_tokens", "greedy", "enter_sends")

STYLE_MESSAGE = "margin:0.35em 0;padding:0.35em 0.6em;border-radius:6px;line-height:1.45"
STYLE_USER = STYLE_MESSAGE + ";background:rgba(70,130,180,0.12)"
STYLE_ASSISTANT = STYLE_MESSAGE + ";background:rgba(128,128,128,0.08)"
STYLE_ROLE = "font-size:0.8em;font-weight:600;opacity:0.7;margin-bottom:0.15em"
STYLE_TEXT = "white-space:pre-wrap;word-break:break-word"
STYLE_ERROR = ("white-space:pre-wrap;word-break:break-word;color:#b00020;background:rgba(176,0,32,0.07);"
               "border-left:3px solid #b00020;padding:0.2em 0.5em;margin-top:0.3em")
STYLE_BADGE = "font-size:0.75em;font-weight:600;padding:0 0.4em;border-radius:3px;margin-left:0.5em"
STYLE_STOPPED = STYLE_BADGE + ";background:rgba(230,140,0,0.2);color:#8a5200"
STYLE_FAILED = STYLE_BADGE + ";background:rgba(176,0,32,0.15);color:#b00020"

ROLE_LABELS = {"user": "You", "assistant": "Assistant", "system": "System", "tool": "Tool"}


# --------------------------------------------------------------------------- memory <-> dicts


def _clean(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if v is not None}


def entry_to_dict(entry: MemoryEntryData) -> dict[str, Any]:
    """A memory entry as a flat transcript dict.

    Keys: ``role``, ``content``, ``timestamp``, ``thinking``, ``tokens``, ``seconds``,
    ``tokens_per_second``, ``finish_reason``, ``stopped``, ``error``, ``tool_calls`` (rows of
    the tool table: executed steps with results, then calls parsed and not executed).
    """
    meta = entry.metadata or {}
    return {
        "role": entry.role,
        "content": entry.content,
        "timestamp": entry.timestamp,
        "thinking": meta.get("thinking", ""),
        "tokens": meta.get("tokens"),
        "seconds": meta.get("seconds"),
        "tokens_per_second": meta.get("tokens_per_second"),
        "finish_reason": meta.get("finish_reason"),
        "stopped": bool(meta.get("stopped", False)),
        "error": meta.get("error"),
        "tool_calls": _tool_rows(entry),
    }


def _jsonable(value: Any) -> Any:
    """``value`` reduced to JSON types (unknown objects become their ``str``)."""
    return json.loads(json.dumps(value, default=str))


def entry_to_json(entry: MemoryEntryData) -> dict[str, Any]:
    """A memory entry as a JSON-ready dict (the fields of :class:`~midori_hf_nb.MemoryEntryData`)."""
    return _jsonable({"role": entry.role, "content": entry.content, "timestamp": entry.timestamp,
                      "tool_calls": entry.tool_calls, "metadata": entry.metadata})


def entry_from_json(item: Any, index: int) -> MemoryEntryData:
    """Rebuild a memory entry from :func:`entry_to_json` output; raises ``ValueError`` naming the entry."""
    if not isinstance(item, dict):
        raise ValueError(f"ChatPanel.from_json: memory[{index}] is {type(item).__name__}: expected an object "
                         "with 'role' and 'content'")
    role, content = item.get("role"), item.get("content")
    if role not in ROLES:
        raise ValueError(f"ChatPanel.from_json: memory[{index}].role={role!r} is not allowed: expected one of "
                         f"{', '.join(ROLES)}")
    if not isinstance(content, str):
        raise ValueError(f"ChatPanel.from_json: memory[{index}].content must be a string, got "
                         f"{type(content).__name__}")
    timestamp = item.get("timestamp")
    if timestamp is not None and (isinstance(timestamp, bool) or not isinstance(timestamp, (int, float))):
        raise ValueError(f"ChatPanel.from_json: memory[{index}].timestamp={timestamp!r} is not allowed: "
                         "expected seconds since the epoch or null")
    tool_calls = item.get("tool_calls")
    if tool_calls is not None and not isinstance(tool_calls, list):
        raise ValueError(f"ChatPanel.from_json: memory[{index}].tool_calls must be a list or null")
    metadata = item.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise ValueError(f"ChatPanel.from_json: memory[{index}].metadata must be an object or null")
    return MemoryEntryData(role=role, content=content, timestamp=timestamp, tool_calls=tool_calls,
                           metadata=metadata)


def _as_response(entry: MemoryEntryData) -> SimpleNamespace:
    """An answer entry in the shape the response renderers of :mod:`.display` read."""
    meta = entry.metadata or {}
    return SimpleNamespace(
        response=entry.content,
        thinking=meta.get("thinking", ""),
        code=None,
        tool_calls=entry.tool_calls,
        metadata=_clean({
            "completion_tokens": meta.get("tokens"),
            "total_seconds": meta.get("seconds"),
            "tokens_per_second": meta.get("tokens_per_second"),
            "finish_reason": meta.get("finish_reason"),
            "tool_steps": meta.get("tool_steps"),
            "steps": meta.get("steps"),
        }),
    )


def _tool_rows(entry: MemoryEntryData) -> list[dict[str, Any]]:
    from .display import tool_call_rows

    if entry.role != "assistant":
        return []
    return tool_call_rows(_as_response(entry))


def payload_memory(entries: list[MemoryEntryData]) -> list[MemoryEntryData]:
    """The entries sent to the model: everything except failed exchanges.

    A failed exchange is an answer with ``metadata["error"]`` and the user message it answered.
    """
    kept: list[MemoryEntryData] = []
    for entry in entries:
        if entry.role == "assistant" and (entry.metadata or {}).get("error"):
            if kept and kept[-1].role == "user":
                kept.pop()
            continue
        kept.append(entry)
    return kept


# --------------------------------------------------------------------------- rendering


def render_entry_html(entry: MemoryEntryData) -> str:
    """One message of the transcript as HTML; all text is escaped."""
    meta = entry.metadata or {}
    label = escape(ROLE_LABELS.get(entry.role, entry.role))
    if entry.role != "assistant":
        style = STYLE_USER if entry.role == "user" else STYLE_ASSISTANT
        return (f'<div class="midori-chat-{escape(entry.role)}" style="{style}">'
                f'<div style="{STYLE_ROLE}">{label}</div>'
                f'<div class="midori-chat-text" style="{STYLE_TEXT}">{escape(entry.content)}</div></div>')
    badges = ""
    if meta.get("stopped"):
        badges += f'<span class="midori-chat-stopped" style="{STYLE_STOPPED}">stopped</span>'
    if meta.get("error"):
        badges += f'<span class="midori-chat-failed" style="{STYLE_FAILED}">failed</span>'
    body = render_response_html(_as_response(entry)) if (entry.content or meta.get("thinking")
                                                         or entry.tool_calls or meta.get("tool_steps")
                                                         or not meta.get("error")) else ""
    error = ""
    if meta.get("error"):
        error = (f'<div class="midori-chat-error" style="{STYLE_ERROR}">{escape(meta["error"])}\n'
                 "The transcript is kept; fix the cause and press Regenerate to retry.</div>")
    return (f'<div class="midori-chat-assistant" style="{STYLE_ASSISTANT}">'
            f'<div style="{STYLE_ROLE}">{label}{badges}</div>{body}{error}</div>')


def render_transcript_html(entries: list[MemoryEntryData]) -> str:
    """The whole transcript as HTML (a placeholder line when it is empty)."""
    if not entries:
        return (f'<div class="midori-chat-empty" style="{STYLE_BOX};{STYLE_FOOTER}">'
                "No messages yet: type below and press Send.</div>")
    return (f'<div class="midori-chat-transcript" style="{STYLE_BOX}">'
            + "".join(render_entry_html(e) for e in entries) + "</div>")


def render_transcript_markdown(entries: list[MemoryEntryData], title: str | None = None) -> str:
    """The transcript as Markdown; message text is HTML- and Markdown-escaped."""
    lines: list[str] = []
    if title:
        lines += [f"# {escape_markdown(title)}", ""]
    for entry in entries:
        meta = entry.metadata or {}
        heading = f"**{ROLE_LABELS.get(entry.role, entry.role)}**"
        if meta.get("stopped"):
            heading += " *(stopped)*"
        if meta.get("error"):
            heading += " *(failed)*"
        lines += [heading, ""]
        if entry.role == "assistant":
            lines.append(render_response_markdown(_as_response(entry)))
            if meta.get("error"):
                lines += ["", "> " + escape_markdown("Error: " + str(meta["error"])).replace("\n", "\n> ")]
        else:
            lines.append("\n".join(escape_markdown(line) + "  " for line in entry.content.splitlines()))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


class _WidgetSink:
    """A :class:`~midori_hf_nb.notebook.LiveView` sink that writes the HTML into an ``HTML`` widget."""

    def __init__(self, target: widgets.HTML) -> None:
        self.target = target

    def display(self, bundle: dict[str, str]) -> None:
        self.target.value = bundle["text/html"]

    def update(self, bundle: dict[str, str]) -> None:
        self.target.value = bundle["text/html"]


def _memory_text() -> str:
    """Process RSS and model weights, from the notebook layer's memory readout."""
    try:
        from .memory import format_bytes, memory_readout
    except ImportError:  # pragma: no cover - the readout module is part of the package
        import os

        import psutil

        return f"RSS {psutil.Process(os.getpid()).memory_info().rss / 2**20:.0f} MiB"
    readout = memory_readout()
    text = f"RSS {format_bytes(readout.rss_bytes)}"
    if readout.models:
        text += f" · model weights {format_bytes(readout.model_bytes)}"
    return text


# --------------------------------------------------------------------------- the panel


class ChatPanel:
    """A chat with ``agent`` as an ipywidgets panel (see the module docstring).

    Args:
        agent: a :class:`~midori_hf_nb.HuggingFaceLocalAgent` (or any agent with ``stream``,
            ``stream_with_tools``, ``run_tools`` and ``config``).
        tools: tools to offer the model (typed callables or schema dicts); calls are shown,
            and run only with ``execute_tools=True``.
        execute_tools: opt in to running the tools the model calls (default False).
        max_tool_steps: generations of the tool loop at most (``execute_tools=True``).
        system_prompt: the initial system prompt (editable in Settings).
        temperature, max_new_tokens, greedy: initial settings; default to the agent's configuration.
        memory: an earlier conversation to continue (list of :class:`~midori_hf_nb.MemoryEntryData`).
        session_id: the ``session_id`` of the payloads.
        title: a heading shown above the transcript (default: the model name).
        throttle: minimum seconds between transcript updates while streaming.
        height: the transcript's maximum height (CSS), e.g. ``"420px"``.
        enter_sends: whether a line break typed at the end of the input sends it.
        **overrides: further per-message generation overrides (``seed``, ``repetition_penalty``,
            ``logits_processor``...), as for :meth:`~midori_hf_nb.HuggingFaceLocalAgent.invoke`.
    """

    def __init__(self, agent: Any, tools: list[Any] | None = None, *, execute_tools: bool = False,
                 max_tool_steps: int = 5, system_prompt: str = "You are a helpful assistant.",
                 temperature: float | None = None, max_new_tokens: int | None = None, greedy: bool | None = None,
                 memory: list[MemoryEntryData] | None = None, session_id: str = "chat-panel",
                 title: str | None = None, throttle: float = DEFAULT_THROTTLE, height: str = "420px",
                 enter_sends: bool = True, **overrides: Any) -> None:
        if not isinstance(execute_tools, bool):
            raise ValueError(f"ChatPanel(execute_tools={execute_tools!r}) is not allowed: expected True or False")
        if execute_tools and not tools:
            raise ValueError("ChatPanel(execute_tools=True) needs tools=[...]: the tools that may run")
        if isinstance(max_tool_steps, bool) or not isinstance(max_tool_steps, int) or max_tool_steps < 1:
            raise ValueError(f"ChatPanel(max_tool_steps={max_tool_steps!r}) is not allowed: "
                             "expected a positive integer")
        if isinstance(throttle, bool) or not isinstance(throttle, (int, float)) or throttle < 0:
            raise ValueError(f"ChatPanel(throttle={throttle!r}) is not allowed: expected seconds >= 0")
        if not isinstance(system_prompt, str):
            raise ValueError(f"ChatPanel(system_prompt=...) expects a string, got {type(system_prompt).__name__}")
        self.agent = agent
        self.tools = list(tools) if tools else None
        self.execute_tools = execute_tools
        self.max_tool_steps = max_tool_steps
        self.session_id = session_id
        self.throttle = float(throttle)
        self.overrides = dict(overrides)
        if "do_sample" in self.overrides and greedy is None:
            greedy = not self.overrides["do_sample"]
        for key in ("temperature", "max_new_tokens", "greedy", "do_sample"):
            value = self.overrides.pop(key, None)
            if key == "temperature" and temperature is None:
                temperature = value
            elif key == "max_new_tokens" and max_new_tokens is None:
                max_new_tokens = value
            elif key == "greedy" and greedy is None:
                greedy = value
        config = agent.config
        self.memory: list[MemoryEntryData] = list(memory or [])
        self._task: asyncio.Future | None = None
        self._stream: Any = None
        self._view: LiveView | None = None
        self._stop_requested = False
        self._epoch = 0
        self._memory_text = ""
        self._memory_at = float("-inf")
        self._last_live_update = -1
        self._input_guard = False
        self._notice = ""
        self._status = ""

        # ---- widgets
        self.title_html = widgets.HTML(
            f'<div style="{STYLE_ROLE}">Chat · {escape(title if title is not None else config.model)}</div>')
        self.history_html = widgets.HTML(layout=widgets.Layout(flex="0 0 auto", width="100%"))
        self.live_html = widgets.HTML(layout=widgets.Layout(flex="0 0 auto", width="100%"))
        # column-reverse keeps the scroll position at the bottom (the newest message).
        self.transcript_box = widgets.Box(
            [self.live_html, self.history_html],
            layout=widgets.Layout(flex_flow="column-reverse", overflow="auto", max_height=height, width="100%",
                                  border="1px solid rgba(128,128,128,0.35)", padding="2px 6px"),
        )
        self.notice_html = widgets.HTML()
        self.input = widgets.Textarea(
            placeholder="Message… (Enter at the end sends; untick 'Enter sends' in Settings to write several lines)",
            rows=3, continuous_update=True, layout=widgets.Layout(width="100%"))
        self.send_button = widgets.Button(description="Send", button_style="primary", icon="paper-plane",
                                          tooltip="Send the message")
        self.stop_button = widgets.Button(description="Stop", button_style="warning", icon="stop", disabled=True,
                                          tooltip="Stop the running generation, keeping the partial answer")
        self.regenerate_button = widgets.Button(description="Regenerate", icon="redo",
                                                tooltip="Answer the last message again")
        self.clear_button = widgets.Button(description="Clear", icon="trash", tooltip="Forget the conversation")
        self.status_html = widgets.HTML()
        style = {"description_width": "9em"}
        self.system_prompt_input = widgets.Textarea(value=system_prompt, description="System prompt", rows=2,
                                                    style=style, layout=widgets.Layout(width="95%"))
        self.temperature_input = widgets.FloatText(
            value=float(config.temperature if temperature is None else temperature), step=0.1,
            description="Temperature", style=style)
        self.max_new_tokens_input = widgets.IntText(
            value=int(config.max_new_tokens if max_new_tokens is None else max_new_tokens), step=16,
            description="Max new tokens", style=style)
        self.greedy_input = widgets.Checkbox(value=bool((not config.do_sample) if greedy is None else greedy),
                                             description="Greedy (no sampling)", indent=False)
        self.enter_sends_input = widgets.Checkbox(value=bool(enter_sends), description="Enter sends", indent=False)
        self.settings_box = widgets.Accordion(
            children=[widgets.VBox([self.system_prompt_input, self.temperature_input, self.max_new_tokens_input,
                                    widgets.HBox([self.greedy_input, self.enter_sends_input])])],
            titles=("Settings (apply to the next message)",), selected_index=None)
        self.widget = widgets.VBox([
            self.title_html, self.transcript_box, self.notice_html, self.input,
            widgets.HBox([self.send_button, self.stop_button, self.regenerate_button, self.clear_button]),
            self.status_html, self.settings_box,
        ], layout=widgets.Layout(width="100%"))

        self.send_button.on_click(lambda _: self._submit())
        self.stop_button.on_click(lambda _: self.stop())
        self.regenerate_button.on_click(lambda _: self._guarded(self.regenerate))
        self.clear_button.on_click(lambda _: self.clear())
        self.input.observe(self._on_input_change, names="value")
        self._render_history()
        self._set_status("ready")
        self._set_buttons()

    # ------------------------------------------------------------------ display

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        state = "running" if self.is_running else "idle"
        return f"ChatPanel({len(self.memory)} messages, {state}, model={self.agent.config.model!r})"

    # ------------------------------------------------------------------ state

    @property
    def is_running(self) -> bool:
        """True while a generation is running."""
        return self._task is not None and not self._task.done()

    @property
    def partial(self) -> str:
        """The answer text received so far by the running generation ('' when idle)."""
        view = self._view
        return view.state.answer if (view is not None and self.is_running) else ""

    @property
    def transcript(self) -> list[dict[str, Any]]:
        """The conversation as dicts (see :func:`entry_to_dict`), oldest first."""
        return [entry_to_dict(e) for e in self.memory]

    @property
    def status(self) -> str:
        """The text of the status line."""
        return self._status

    @property
    def notice(self) -> str:
        """The last notice shown above the input ('' when none): refused sends, invalid settings."""
        return self._notice

    def settings(self) -> dict[str, Any]:
        """The current settings: system_prompt, temperature, max_new_tokens, greedy, enter_sends."""
        return {"system_prompt": self.system_prompt_input.value, "temperature": self.temperature_input.value,
                "max_new_tokens": self.max_new_tokens_input.value, "greedy": self.greedy_input.value,
                "enter_sends": self.enter_sends_input.value}

    def generation_overrides(self) -> dict[str, Any]:
        """The overrides the next message is generated with; raises ``ValueError`` naming a bad setting."""
        settings = self.settings()
        changes: dict[str, Any] = {"max_new_tokens": settings["max_new_tokens"], "do_sample": not settings["greedy"]}
        if not settings["greedy"]:
            changes["temperature"] = settings["temperature"]
        try:
            self.agent.config.replace(**changes)
        except ValueError as exc:
            raise ValueError(f"Settings: {exc}") from exc
        return {**self.overrides, **changes}

    def payload(self, user_message: str, memory: list[MemoryEntryData] | None = None) -> Any:
        """The payload the panel would send for ``user_message`` now (the conversation as memory)."""
        from ..protocol import make_payload

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
        overrides = self._overrides_or_notice()
        history = payload_memory(self.memory)
        self.memory.append(MemoryEntryData(role="user", content=text, timestamp=time.time()))
        if from_input:
            self._set_input("")
        self._show_notice("")
        return self._launch(self._turn(len(self.memory) - 1, history, overrides))

    def regenerate(self) -> Any:
        """Answer the last user message again, replacing the answer after it (if any).

        Returns like :meth:`send`. Raises ``ValueError`` when there is no user message and
        ``RuntimeError`` while a generation runs.
        """
        self._check_idle("regenerate")
        index = next((i for i in range(len(self.memory) - 1, -1, -1) if self.memory[i].role == "user"), None)
        if index is None:
            raise ValueError("ChatPanel.regenerate: there is no user message to answer yet")
        overrides = self._overrides_or_notice()
        del self.memory[index + 1:]
        history = payload_memory(self.memory[:index])
        self._show_notice("")
        self._render_history()
        return self._launch(self._turn(index, history, overrides))

    def stop(self) -> bool:
        """Stop the running generation (within a token or two); its partial answer is kept, marked as stopped.

        Returns True if a generation was running.
        """
        if not self.is_running:
            return False
        self._stop_requested = True
        if self._stream is not None:
            self._stream.cancel()
        if self._view is not None:
            self._view.mark_interrupted()
            self._view.refresh(force=True)
        self._set_status("stopping…")
        return True

    def clear(self) -> int:
        """Forget the conversation (stopping a running generation first); returns how many messages there were."""
        self.stop()
        self._epoch += 1  # a generation still finishing is not recorded
        count = len(self.memory)
        self.memory.clear()
        self.live_html.value = ""
        self._show_notice("")
        self._render_history()
        self._set_status("cleared")
        return count

    async def wait(self) -> dict[str, Any] | None:
        """Wait for the running generation (if any); returns its answer's transcript dict."""
        task = self._task
        if task is None:
            return None
        return await asyncio.shield(task) if not task.done() else task.result()

    # ------------------------------------------------------------------ export / import

    def to_frame(self):
        """The conversation as a DataFrame: the columns of :func:`~midori_hf_nb.notebook.conversation_frame`
        plus ``thinking``, ``stopped`` and ``error``."""
        import pandas as pd

        from .frames import conversation_frame

        frame = conversation_frame(self.memory)
        frame["thinking"] = pd.Series([(e.metadata or {}).get("thinking", "") for e in self.memory],
                                      dtype="string", index=frame.index)
        frame["stopped"] = pd.Series([bool((e.metadata or {}).get("stopped", False)) for e in self.memory],
                                     dtype="boolean", index=frame.index)
        frame["error"] = pd.Series([(e.metadata or {}).get("error") for e in self.memory],
                                   dtype="object", index=frame.index).astype("string")
        return frame

    def to_json(self, indent: int | None = 2) -> str:
        """The conversation and settings as JSON text; :meth:`from_json` loads it into a new panel."""
        settings = self.settings()
        document = {
            "format": JSON_FORMAT,
            "version": JSON_VERSION,
            "model": str(self.agent.config.model),
            "session_id": self.session_id,
            "settings": settings,
            "memory": [entry_to_json(e) for e in self.memory],
        }
        return json.dumps(document, indent=indent, ensure_ascii=False)

    @classmethod
    def from_json(cls, agent: Any, text: str, **options: Any) -> "ChatPanel":
        """A new panel on ``agent`` continuing the conversation saved by :meth:`to_json`.

        The saved settings (system prompt, temperature, max new tokens, greedy, Enter sends) and
        session id apply unless given in ``options`` (the keyword arguments of :class:`ChatPanel`).
        """
        try:
            document = json.loads(text)
        except (TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"ChatPanel.from_json: the text is not valid JSON ({exc})") from exc
        if not isinstance(document, dict) or document.get("format") != JSON_FORMAT:
            raise ValueError(f"ChatPanel.from_json: expected a document with format {JSON_FORMAT!r} "
                             "(made by ChatPanel.to_json)")
        if document.get("version") != JSON_VERSION:
            raise ValueError(f"ChatPanel.from_json: version {document.get('version')!r} is not supported: "
                             f"expected {JSON_VERSION}")
        items = document.get("memory")
        if not isinstance(items, list):
            raise ValueError("ChatPanel.from_json: 'memory' must be a list of messages")
        memory = [entry_from_json(item, i) for i, item in enumerate(items)]
        settings = document.get("settings") or {}
        if not isinstance(settings, dict):
            raise ValueError("ChatPanel.from_json: 'settings' must be an object")
        unknown = sorted(set(settings) - set(SETTINGS_KEYS))
        if unknown:
            raise ValueError(f"ChatPanel.from_json: unknown setting(s) {', '.join(map(repr, unknown))}: expected "
                             f"{', '.join(SETTINGS_KEYS)}")
        for key, value in settings.items():
            options.setdefault(key, value)
        if "session_id" in document:
            options.setdefault("session_id", document["session_id"])
        return cls(agent, memory=memory, **options)

    def to_markdown(self, title: str | None = "Chat") -> str:
        """The conversation as Markdown (message text escaped)."""
        return render_transcript_markdown(self.memory, title=title)

    # ------------------------------------------------------------------ internals

    def _check_idle(self, action: str) -> None:
        if self.is_running:
            message = (f"ChatPanel.{action}: a generation is running; wait for it (await panel.wait()) "
                       "or stop it (panel.stop()) first")
            self._show_notice(message)
            raise RuntimeError(message)

    def _overrides_or_notice(self) -> dict[str, Any]:
        try:
            return self.generation_overrides()
        except ValueError as exc:
            self._show_notice(str(exc))
            raise

    def _guarded(self, action: Any, *args: Any) -> Any:
        """Run an action for a button: refused actions show a notice instead of raising."""
        try:
            return action(*args)
        except (ValueError, RuntimeError) as exc:
            self._show_notice(str(exc))
            return None

    def _submit(self) -> Any:
        """The Send button and Enter: send the input box; on refusal the text stays in the box."""
        if not self.input.value.strip():
            self._show_notice("Type a message first.")
            return None
        return self._guarded(self.send)

    def _on_input_change(self, change: dict[str, Any]) -> None:
        if self._input_guard or not self.enter_sends_input.value:
            return
        new, old = change["new"] or "", change["old"] or ""
        if not (new.endswith("\n") and len(new) > len(old)):
            return
        self._set_input(new[:-1])  # the line break typed at the end means "send"
        self._submit()

    def _set_input(self, value: str) -> None:
        self._input_guard = True
        try:
            self.input.value = value
        finally:
            self._input_guard = False

    def _show_notice(self, text: str) -> None:
        self._notice = text
        self.notice_html.value = f'<div style="{STYLE_ERROR}">{escape(text)}</div>' if text else ""

    def _set_status(self, text: str) -> None:
        now = time.perf_counter()
        if now - self._memory_at >= 1.0:
            self._memory_text = _memory_text()
            self._memory_at = now
        self._status = f"{text} · {self._memory_text}" if self._memory_text else text
        self.status_html.value = f'<div class="midori-chat-status" style="{STYLE_FOOTER}">{escape(self._status)}</div>'

    def _set_buttons(self) -> None:
        running = self.is_running
        self.send_button.disabled = running
        self.regenerate_button.disabled = running
        self.stop_button.disabled = not running

    def _render_history(self) -> None:
        self.history_html.value = render_transcript_html(self.memory)

    def _launch(self, coro: Awaitable[Any]) -> Any:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self._stop_requested = False
        if loop is None:  # a plain script: run to completion here
            return asyncio.run(self._tracked(coro))
        self._task = loop.create_task(coro)
        self._set_buttons()
        return self._task

    async def _tracked(self, coro: Awaitable[Any]) -> Any:
        self._task = asyncio.ensure_future(coro)
        self._set_buttons()
        return await self._task

    def _live_status(self, view: LiveView, started: float) -> None:
        if view.updates == self._last_live_update:
            return
        self._last_live_update = view.updates
        tokens = count_tokens(self.agent, view.state.thinking + view.state.answer)
        elapsed = time.perf_counter() - started
        parts = ["generating…"]
        if tokens is not None:
            parts.append(f"{tokens} tokens")
            if elapsed > 0:
                parts.append(f"{tokens / elapsed:.1f} tokens/s")
        parts.append(f"{elapsed:.1f} s")
        self._set_status(" · ".join(parts))

    async def _generate(self, payload: Any, overrides: dict[str, Any], view: LiveView, started: float) -> Any:
        """Run one answer: streamed events into ``view``, or the opt-in tool loop."""
        if self.execute_tools:  # the opt-in loop: calls run, their results stream in as they come
            stream = self.agent.stream_tools(payload, self.tools, max_steps=self.max_tool_steps, **overrides)
        elif self.tools:
            stream = self.agent.stream_with_tools(payload, self.tools, events=True, **overrides)
        else:
            stream = self.agent.stream(payload, events=True, **overrides)
        self._stream = stream
        if self._stop_requested:
            stream.cancel()
        try:
            async for event in stream:
                view.feed(event)
                self._live_status(view, started)
        finally:
            self._stream = None
            await stream.aclose()
        return stream.response

    async def _turn(self, user_index: int, history: list[MemoryEntryData], overrides: dict[str, Any]) -> dict:
        epoch = self._epoch
        user_entry = self.memory[user_index]
        self._render_history()
        title = "running the tool loop (tools execute)…" if self.execute_tools else None
        view = LiveView(_WidgetSink(self.live_html), throttle=self.throttle, title=title)
        self._view = view
        started = time.perf_counter()
        self._set_status("waiting for the model…")
        view.start()
        response, error, cancelled = None, None, None
        try:
            payload = self.payload(user_entry.content, memory=history)
            response = await self._generate(payload, overrides, view, started)
        except asyncio.CancelledError as exc:  # Stop during the tool loop, or the task was cancelled
            cancelled = exc
            self._stop_requested = True
        except Exception as exc:  # shown in the panel; the transcript and the input stay
            error = f"{type(exc).__name__}: {exc}"
        meta = dict((response.metadata or {}) if response is not None else {})
        stopped = self._stop_requested or meta.get("finish_reason") == "cancelled"
        finish = "error" if error else meta.get("finish_reason") or ("cancelled" if stopped else None)
        entry_meta = _clean({
            "tokens": meta.get("completion_tokens"),
            "seconds": meta.get("total_seconds", time.perf_counter() - started),
            "tokens_per_second": meta.get("tokens_per_second"),
            "finish_reason": finish,
            "decode_path": meta.get("decode_path"),
            "decode_path_reason": meta.get("decode_path_reason"),
            "thinking": (response.thinking if response is not None else view.state.thinking) or None,
            "stopped": True if stopped else None,
            "error": error,
            "tool_steps": _jsonable(meta["tool_steps"]) if meta.get("tool_steps") else None,
            "steps": meta.get("steps") if meta.get("tool_steps") else None,
            "model": str(self.agent.config.model),
            "display_updates": view.updates,
            "display_events": view.events,
        })
        content = response.response if response is not None else view.state.answer
        calls = response.tool_calls if response is not None else None
        entry = MemoryEntryData(role="assistant", content=content or "", timestamp=time.time(),
                                tool_calls=_jsonable(calls) if calls else None, metadata=entry_meta)
        user_tokens = count_tokens(self.agent, user_entry.content)
        if user_tokens is not None:
            user_entry.metadata = {**(user_entry.metadata or {}), "tokens": user_tokens}
        self._view = None
        if epoch == self._epoch:  # not cleared meanwhile
            self.memory.append(entry)
            self.live_html.value = ""
            self._render_history()
            self._memory_at = float("-inf")
            self._set_status(self._final_status(entry_meta))
        self._stop_requested = False
        self._task_done_soon()
        task = asyncio.current_task()
        if cancelled is not None and task is not None and task.cancelling():
            raise cancelled  # cancelled from outside (not by Stop): recorded, then propagated
        return entry_to_dict(entry)

    def _task_done_soon(self) -> None:
        """Re-enable the buttons once the task has finished (it finishes right after this returns)."""
        task = self._task
        if task is not None and not task.done():
            task.add_done_callback(lambda _: self._set_buttons())
        else:
            self._set_buttons()

    @staticmethod
    def _final_status(meta: dict[str, Any]) -> str:
        if meta.get("error"):
            return f"error: {meta['error']}"
        parts = ["stopped" if meta.get("stopped") else "done"]
        if meta.get("tokens") is not None:
            parts.append(f"{meta['tokens']} tokens")
        if meta.get("tokens_per_second") is not None:
            parts.append(f"{meta['tokens_per_second']:.1f} tokens/s")
        if meta.get("seconds") is not None:
            parts.append(f"{meta['seconds']:.1f} s")
        if meta.get("finish_reason"):
            parts.append(f"finish: {meta['finish_reason']}")
        from .display import decode_label

        if decode_label(meta):
            parts.append(decode_label(meta))
        return " · ".join(parts)


__all__ = [
    "ChatPanel",
    "JSON_FORMAT",
    "entry_from_json",
    "entry_to_dict",
    "entry_to_json",
    "payload_memory",
    "render_entry_html",
    "render_transcript_html",
    "render_transcript_markdown",
]
