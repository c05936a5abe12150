"""The chat panel's widgets: title, transcript, notice, input, buttons, status line and settings.

:class:`ChatLayout` builds and shows them and knows nothing of agents;
:class:`~.panel.ChatPanel` adds the behaviour. Every text put into an ``HTML`` widget goes
through the escaping renderers of :mod:`.render`.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import ipywidgets as widgets

from ...load_progress import LoadProgress
from ..memory import format_bytes, memory_readout
from .export import ChatExport
from .composer import ChatInput
from .render import render_info_html, render_notice_html, render_status_html, render_title_html

#: Seconds between two reads of the memory readout shown in the status line.
MEMORY_REFRESH_SECONDS = 1.0


class WidgetSink:
    """A :class:`~midori_hf_nb.notebook.LiveView` sink that writes the HTML into an ``HTML`` widget
    (through ``wrap``, e.g. :func:`~.render.render_live_html`, when given)."""

    def __init__(self, target: widgets.HTML, wrap: Callable[[str], str] | None = None) -> None:
        self.target = target
        self.wrap = wrap

    def display(self, bundle: dict[str, str]) -> None:
        """Show the first bundle."""
        self.update(bundle)

    def update(self, bundle: dict[str, str]) -> None:
        """Show a newer bundle in place."""
        html = bundle["text/html"]
        self.target.value = self.wrap(html) if self.wrap is not None else html


def memory_text() -> str:
    """Process RSS and the weights of loaded models, from the notebook layer's memory readout."""
    readout = memory_readout()
    text = f"RSS {format_bytes(readout.rss_bytes)}"
    if readout.models:
        text += f" · model weights {format_bytes(readout.model_bytes)}"
    return text


class ChatLayout:
    """The widgets of a chat panel (``widget`` is the whole panel), with the notice and status line.

    Args:
        title: the model name (or a title) shown above the transcript.
        system_prompt, temperature, max_new_tokens, greedy, enter_sends: the settings' first values.
        height: the transcript's maximum height (CSS).
    """

    def __init__(self, *, title: str, system_prompt: str, temperature: float, max_new_tokens: int, greedy: bool,
                 enter_sends: bool, height: str) -> None:
        self._notice = ""
        self._status = ""
        self._memory_text = ""
        self._memory_at = float("-inf")
        self.title_html = widgets.HTML(render_title_html(title))
        self.history_html = widgets.HTML(layout=widgets.Layout(flex="0 0 auto", width="100%"))
        self.live_html = widgets.HTML(layout=widgets.Layout(flex="0 0 auto", width="100%"))
        self.earlier_button = widgets.Button(description="Show earlier", icon="angle-up",
                                             tooltip="Show earlier messages of the transcript",
                                             layout=widgets.Layout(display="none", flex="0 0 auto"))
        # column-reverse keeps the scroll position at the bottom (the newest message).
        self.transcript_box = widgets.Box(
            [self.live_html, self.history_html, self.earlier_button],
            layout=widgets.Layout(flex_flow="column-reverse", overflow="auto", max_height=height, width="100%",
                                  border="1px solid rgba(128,128,128,0.35)", padding="2px 6px"),
        )
        self.notice_html = widgets.HTML()
        self.input = ChatInput(placeholder="Message… (Enter sends, Shift+Enter: new line)", rows=3,
                               enter_sends=enter_sends, layout=widgets.Layout(width="100%"))
        self._build_buttons()
        self.status_html = widgets.HTML()
        self._build_settings(system_prompt, temperature, max_new_tokens, greedy, enter_sends)
        widgets.link((self.enter_sends_input, "value"), (self.input, "enter_sends"))
        self.widget = widgets.VBox([
            self.title_html, self.transcript_box, self.notice_html, self.input,
            widgets.HBox([self.stop_button, self.regenerate_button, self.clear_button, self.undo_clear_button,
                          self.export_button]),
            self.status_html, self.settings_box,
        ], layout=widgets.Layout(width="100%"))

    def _build_buttons(self) -> None:
        self.stop_button = widgets.Button(description="Stop", button_style="warning", icon="stop", disabled=True,
                                          tooltip="Stop the running generation, keeping the partial answer")
        self.regenerate_button = widgets.Button(description="Regenerate", icon="redo",
                                                tooltip="Answer the last message again")
        self.clear_button = widgets.Button(description="Clear", icon="trash",
                                           tooltip="Forget the conversation (Undo clear brings it back)")
        self.undo_clear_button = widgets.Button(description="Undo clear", icon="undo",
                                                tooltip="Bring back the conversation that Clear removed",
                                                layout=widgets.Layout(display="none"))
        self.export_button = widgets.Button(description="Export", icon="download",
                                            tooltip="Write the conversation as JSON and Markdown next to the notebook")

    def _build_settings(self, system_prompt: str, temperature: float, max_new_tokens: int, greedy: bool,
                        enter_sends: bool) -> None:
        style = {"description_width": "9em"}
        self.system_prompt_input = widgets.Textarea(value=system_prompt, description="System prompt", rows=2,
                                                    style=style, layout=widgets.Layout(width="95%"))
        self.temperature_input = widgets.FloatText(value=temperature, step=0.1, description="Temperature",
                                                   style=style)
        self.max_new_tokens_input = widgets.IntText(value=max_new_tokens, step=16, description="Max new tokens",
                                                    style=style)
        self.greedy_input = widgets.Checkbox(value=greedy, description="Greedy (no sampling)", indent=False)
        self.enter_sends_input = widgets.Checkbox(value=enter_sends, description="Enter sends", indent=False)
        self.settings_box = widgets.Accordion(
            children=[widgets.VBox([self.system_prompt_input, self.temperature_input, self.max_new_tokens_input,
                                    widgets.HBox([self.greedy_input, self.enter_sends_input])])],
            titles=("Settings (apply to the next message)",), selected_index=None)

    # ------------------------------------------------------------------ display

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def settings(self) -> dict[str, Any]:
        """The current settings: system_prompt, temperature, max_new_tokens, greedy, enter_sends."""
        return {"system_prompt": self.system_prompt_input.value, "temperature": self.temperature_input.value,
                "max_new_tokens": self.max_new_tokens_input.value, "greedy": self.greedy_input.value,
                "enter_sends": self.enter_sends_input.value}

    def show_settings(self, values: dict[str, Any]) -> None:
        """Put ``values`` (temperature, max_new_tokens, greedy) into the settings' inputs."""
        inputs = {"temperature": self.temperature_input, "max_new_tokens": self.max_new_tokens_input,
                  "greedy": self.greedy_input}
        for name, value in values.items():
            inputs[name].value = value

    @property
    def status(self) -> str:
        """The text of the status line."""
        return self._status

    @property
    def notice(self) -> str:
        """The last notice shown above the input ('' when none): refused sends, invalid settings."""
        return self._notice

    def show_notice(self, text: str, *, error: bool = True) -> None:
        """Show ``text`` above the input ('' removes the notice); ``error=False`` for a note that
        is not a refusal (where an export was written)."""
        self._notice = text
        self.notice_html.value = render_notice_html(text) if error else render_info_html(text)

    @staticmethod
    def show_widget(widget: widgets.DOMWidget, shown: bool) -> None:
        """Show or hide ``widget`` (a button that applies only sometimes)."""
        widget.layout.display = None if shown else "none"

    def show_status(self, text: str, *, fresh_memory: bool = False) -> None:
        """Show ``text`` in the status line, followed by the memory readout (read at most once a
        second, or now with ``fresh_memory``)."""
        now = time.perf_counter()
        if fresh_memory or now - self._memory_at >= MEMORY_REFRESH_SECONDS:
            self._memory_text = memory_text()
            self._memory_at = now
        self._status = f"{text} · {self._memory_text}" if self._memory_text else text
        self.status_html.value = render_status_html(self._status)

    def show_waiting(self, progress: LoadProgress | None, seconds: float) -> None:
        """The status before the first piece of an answer: the model's load progress while it
        loads (:class:`~midori_hf_nb.load_progress.LoadProgress`), else the seconds waited."""
        self.show_status(progress.text() if progress is not None else f"waiting for the first token… {seconds:.1f} s")

    def show_history(self, html: str, *, hidden: int) -> None:
        """Show the transcript's HTML, with "Show earlier" while ``hidden`` earlier messages are not shown."""
        self.history_html.value = html
        self.earlier_button.description = f"Show earlier ({hidden} more)" if hidden > 0 else "Show earlier"
        self.show_widget(self.earlier_button, hidden > 0)

    def show_exported(self, written: ChatExport) -> None:
        """Say where an export was written."""
        self.show_notice(f"Exported {written.messages} messages to {written.json_path} and {written.markdown_path}",
                         error=False)

    def show_title(self, title: str) -> None:
        """Show ``title`` (a model name) above the transcript."""
        self.title_html.value = render_title_html(title)

    def show_running(self, running: bool) -> None:
        """Enable Stop while an answer runs, and Send and Regenerate otherwise."""
        self.input.busy = running
        self.regenerate_button.disabled = running
        self.stop_button.disabled = not running


__all__ = ["ChatLayout", "MEMORY_REFRESH_SECONDS", "WidgetSink", "memory_text"]
