"""The chat panel's input box and Send button: the browser sends the typed text *with* the Send action.

ipywidgets' ``Textarea`` keeps a kernel-side copy of the text that the browser syncs lazily:
while the kernel is busy (another cell runs, the machine is loaded) the browser sends the first
change and holds the rest until the kernel answers, but a button click goes out at once, so a
kernel that read its copy on Send could send the first letter of what the user typed. Here a
few lines of browser code (an `anywidget <https://anywidget.dev>`_ widget) read the box when
Send is clicked or Enter pressed and send that text in the same message; the box clears then,
and the message is shown as queued until the kernel takes it. When the kernel refuses it (a
generation is running, invalid settings) the text comes back into the box.

Keys: Enter sends (with :attr:`ChatInput.enter_sends`), Shift+Enter starts a new line.

Without a browser (nbmake, scripts, tests) :meth:`ChatInput.submit` does what the browser does:
it takes the text, clears the box, hands the text to the send handlers and puts it back when
they refuse it.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import anywidget
import traitlets

logger = logging.getLogger(__name__)

#: Longest message the box hands to the panel, in characters (longer ones are refused and kept in the box).
MAX_INPUT_CHARS = 200_000

#: Longest id of a send message from the browser, in characters.
MAX_ID_CHARS = 64

_ESM = r"""
function render({ model, el }) {
  el.classList.add("midori-composer");
  el.dataset.lmSuppressShortcuts = "true";  // keys typed here are text, not JupyterLab shortcuts
  const area = document.createElement("textarea");
  area.className = "midori-composer-input widget-textarea";
  area.rows = model.get("rows");
  area.placeholder = model.get("placeholder");
  area.value = model.get("value");
  const send = document.createElement("button");
  send.className = "jupyter-button widget-button mod-primary midori-composer-send";
  send.textContent = "Send";
  send.title = "Send the message (Enter sends when 'Enter sends' is ticked; Shift+Enter: a new line)";
  const queue = document.createElement("div");
  queue.className = "midori-composer-queue";
  queue.hidden = true;
  const row = document.createElement("div");
  row.className = "midori-composer-row";
  row.append(area, send);
  el.append(row, queue);

  const pending = new Map();
  let counter = 0;
  let syncTimer = null;
  const syncValue = () => {
    if (syncTimer !== null) { clearTimeout(syncTimer); syncTimer = null; }
    model.set("value", area.value);
    model.save_changes();
  };
  const showQueue = () => {
    const shown = [...pending.values()].filter((item) => item.shown);
    queue.replaceChildren(...shown.map((item) => {
      const line = document.createElement("div");
      line.className = "midori-composer-queued";
      const label = document.createElement("b");
      label.textContent = "Queued (the kernel is busy; sent when it is free): ";
      const text = document.createElement("span");
      text.textContent = item.text;
      line.append(label, text);
      return line;
    }));
    queue.hidden = shown.length === 0;
  };
  const submit = () => {
    const text = area.value;
    const id = `${Date.now().toString(36)}-${++counter}`;
    area.value = "";
    syncValue();
    const item = { text, shown: false, timer: null };
    item.timer = setTimeout(() => { item.shown = true; showQueue(); }, 200);
    pending.set(id, item);
    model.send({ type: "send", id, text });
    area.focus();
  };
  const onAck = (msg) => {
    if (!msg || msg.type !== "ack") return;
    const item = pending.get(msg.id);
    if (item === undefined) return;
    clearTimeout(item.timer);
    pending.delete(msg.id);
    showQueue();
    if (!msg.accepted && item.text.trim()) {
      area.value = area.value ? `${item.text}\n${area.value}` : item.text;
      syncValue();
    }
  };
  const onKey = (event) => {
    event.stopPropagation();
    if (event.type === "keydown" && event.key === "Enter" && !event.shiftKey && !event.isComposing
        && model.get("enter_sends")) {
      event.preventDefault();
      if (!send.disabled) submit();
    }
  };
  const onValue = () => {
    const value = model.get("value");
    if (value !== area.value && syncTimer === null) area.value = value;
  };
  const onBusy = () => { send.disabled = model.get("busy"); };
  const onPlaceholder = () => { area.placeholder = model.get("placeholder"); };
  area.addEventListener("input", () => {
    if (syncTimer !== null) clearTimeout(syncTimer);
    syncTimer = setTimeout(syncValue, 300);
  });
  for (const kind of ["keydown", "keypress", "keyup"]) area.addEventListener(kind, onKey);
  send.addEventListener("click", submit);
  model.on("msg:custom", onAck);
  model.on("change:value", onValue);
  model.on("change:busy", onBusy);
  model.on("change:placeholder", onPlaceholder);
  onBusy();
  return () => {
    model.off("msg:custom", onAck);
    model.off("change:value", onValue);
    model.off("change:busy", onBusy);
    model.off("change:placeholder", onPlaceholder);
  };
}
export default { render };
"""

_CSS = """
.midori-composer { width: 100%; box-sizing: border-box; }
.midori-composer-row { display: flex; gap: 6px; align-items: stretch; width: 100%; }
.midori-composer-input {
  flex: 1 1 auto; min-width: 0; resize: vertical; box-sizing: border-box; padding: 4px 8px;
  font-family: var(--jp-ui-font-family, sans-serif); font-size: var(--jp-widgets-font-size, 13px);
  color: var(--jp-widgets-input-color, inherit); background: var(--jp-widgets-input-background-color, transparent);
  border: var(--jp-widgets-input-border-width, 1px) solid var(--jp-widgets-input-border-color, #9e9e9e);
}
.midori-composer-send { flex: 0 0 auto; align-self: flex-end; }
.midori-composer-queue {
  font-size: 0.85em; opacity: 0.8; margin-top: 3px; white-space: pre-wrap; word-break: break-word;
}
"""


SendHandler = Callable[[str], bool]


class ChatInput(anywidget.AnyWidget):
    """A multi-line input box with a Send button whose browser code sends the text with the click.

    ``value`` is the draft in the box (synced from the browser as the user types, for reading
    from code); the text that is *sent* comes with the Send message itself, so it is exactly
    what the box held when Send was clicked or Enter pressed. Register what Send does with
    :meth:`on_send`.
    """

    _esm = _ESM
    _css = _CSS

    #: The draft in the box.
    value = traitlets.Unicode("").tag(sync=True)
    #: Shown in the empty box.
    placeholder = traitlets.Unicode("").tag(sync=True)
    #: Visible lines of the box.
    rows = traitlets.Int(3).tag(sync=True)
    #: Whether Enter sends (Shift+Enter always starts a new line).
    enter_sends = traitlets.Bool(True).tag(sync=True)
    #: True while an answer runs: Send is disabled (typing is not).
    busy = traitlets.Bool(False).tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._handlers: list[SendHandler] = []
        self.on_msg(self._on_browser_message)

    def __repr__(self) -> str:
        return f"ChatInput(value={self.value!r}, busy={self.busy})"

    def on_send(self, handler: SendHandler) -> None:
        """Call ``handler(text)`` for each message sent; it returns True when it took the message
        (False puts the text back into the box)."""
        self._handlers.append(handler)

    def submit(self, text: str | None = None) -> bool:
        """Send as the browser does (for code and tests): ``text`` (default: the box), clearing the
        box; when refused, the text goes back into the box. Returns whether it was taken."""
        text = self.value if text is None else text
        self.value = ""
        accepted = self._dispatch(text)
        if not accepted and text.strip():
            self.value = f"{text}\n{self.value}" if self.value else text
        return accepted

    def _dispatch(self, text: str) -> bool:
        if len(text) > MAX_INPUT_CHARS:
            logger.warning("ChatInput: a message of %d characters was refused (at most %d)", len(text),
                           MAX_INPUT_CHARS)
            return False
        return all([handler(text) for handler in self._handlers]) if self._handlers else False

    def _on_browser_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict) or content.get("type") != "send":
            return
        message_id, text = content.get("id"), content.get("text")
        if not isinstance(message_id, str) or len(message_id) > MAX_ID_CHARS:
            logger.warning("ChatInput: ignored a send message without a valid id")
            return
        accepted = isinstance(text, str) and self._dispatch(text)
        self.send({"type": "ack", "id": message_id, "accepted": bool(accepted)})


__all__ = ["ChatInput", "MAX_INPUT_CHARS", "SendHandler"]
