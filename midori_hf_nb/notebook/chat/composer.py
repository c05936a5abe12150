"""The chat panel's input box and Send button: the browser sends the typed text *with* the Send action.

ipywidgets' ``Textarea`` keeps a kernel-side copy of the text that the browser syncs lazily:
while the kernel is busy (another cell runs, the machine is loaded) the browser sends the first
change and holds the rest until the kernel answers, but a button click goes out at once, so a
kernel that read its copy on Send could send the first letter of what the user typed. Here a
few lines of browser code (an `anywidget <https://anywidget.dev>`_ widget) read the box when
Send is clicked or Enter pressed and send that text in the same message; the box clears then,
and the message is shown as queued until the kernel takes it. When the kernel refuses it (a
generation is running, invalid settings) the text comes back into the box.

Keys: Enter sends (with :attr:`ChatInput.enter_sends`), Shift+Enter starts a new line, Esc
(anywhere in the panel) stops the running answer, or stops editing an earlier message.

The button shows its real state: **Send**, or **Queue** while an answer runs (a message sent then
waits for it: :mod:`.actions`), and disabled (dimmed) while the box is empty.

The same browser code serves the buttons on the panel's messages (:mod:`.render`): **Copy** on a
message or a code block copies its text to the clipboard in the browser (no round trip to the
kernel); the others (As text, Edit, ‹ ›, Back to the box) and Esc are sent to the kernel as
actions (:data:`ACTIONS`, handled by :meth:`ChatInput.on_action`'s handlers). It finds its panel as
the nearest element with the class ``midori-chat-panel`` around it, and marks the panel so that
keys pressed in it are not JupyterLab shortcuts.

Without a browser (nbmake, scripts, tests) :meth:`ChatInput.submit` does what the browser does:
it takes the text, clears the box, hands the text to the send handlers and puts it back when
they refuse it; :meth:`ChatInput.act` sends an action.
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

#: The actions the browser code sends (Esc, and the buttons on the messages), with their numbers.
ACTIONS = ("stop", "escape", "as-text", "edit", "branch", "unqueue")
ACTION_NUMBERS = ("index", "step", "position")

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
    showState();
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
      showState();
    }
  };
  const showState = () => {  // the button's real state: Send or Queue, disabled while the box is empty
    const busy = model.get("busy");
    send.textContent = busy ? "Queue" : "Send";
    send.title = busy ? "An answer is being written: this message is queued and sent when it ends (Esc stops it)"
      : "Send the message (Enter sends when 'Enter sends' is ticked; Shift+Enter: a new line)";
    send.disabled = area.value.trim() === "";
  };
  const onKey = (event) => {
    event.stopPropagation();
    if (event.type === "keydown" && event.key === "Enter" && !event.shiftKey && !event.isComposing
        && model.get("enter_sends")) {
      event.preventDefault();
      if (area.value.trim() !== "") submit();
    }
  };
  const onValue = () => {
    const value = model.get("value");
    if (value !== area.value && syncTimer === null) area.value = value;
    showState();
  };
  const onPlaceholder = () => { area.placeholder = model.get("placeholder"); };

  // The panel around this input: its message buttons and Esc.
  const panelOf = (node) => (node && node.closest ? node.closest(".midori-chat-panel") : null);
  const mine = (node) => { const panel = panelOf(node); return panel !== null && panel.contains(el); };
  const markPanel = () => {  // keys pressed in the panel are text or its own keys, not JupyterLab shortcuts
    const panel = panelOf(el);
    if (panel !== null) panel.dataset.lmSuppressShortcuts = "true";
  };
  const copyText = (text, button) => {
    const label = button.dataset.midoriLabel || button.textContent;
    button.dataset.midoriLabel = label;
    const done = (ok) => {
      button.textContent = ok ? "Copied" : "Copy failed";
      setTimeout(() => { button.textContent = label; }, 1500);
    };
    const fallback = () => {
      const scratch = document.createElement("textarea");
      scratch.value = text;
      scratch.style.position = "fixed";
      scratch.style.opacity = "0";
      document.body.append(scratch);
      scratch.select();
      let ok = false;
      try { ok = document.execCommand("copy"); } catch (error) { ok = false; }
      scratch.remove();
      done(ok);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(() => done(true), fallback);
    } else {
      fallback();
    }
  };
  const onClick = (event) => {
    const button = event.target && event.target.closest ? event.target.closest("[data-midori-action]") : null;
    if (button === null || !mine(button)) return;
    const action = button.dataset.midoriAction;
    if (action === "copy-code") {
      const block = button.closest(".midori-codeblock");
      const pre = block === null ? null : block.querySelector("pre");
      copyText(pre === null ? "" : pre.textContent, button);
      return;
    }
    if (action === "copy") {
      const message = button.closest("div[data-midori-index]");
      const source = message === null ? null
        : (message.querySelector(".midori-chat-source") || message.querySelector(".midori-chat-text"));
      copyText(source === null ? "" : source.textContent, button);
      return;
    }
    const numbers = {};
    for (const [key, name] of [["index", "midoriIndex"], ["step", "midoriStep"], ["position", "midoriPosition"]]) {
      if (button.dataset[name] !== undefined) numbers[key] = Number(button.dataset[name]);
    }
    model.send({ type: "action", action, numbers });
    if (action === "edit") area.focus();
  };
  const onEscape = (event) => {
    if (event.key !== "Escape" || event.isComposing || !mine(event.target)) return;
    event.preventDefault();
    event.stopPropagation();
    model.send({ type: "action", action: "escape", numbers: {} });
  };
  area.addEventListener("input", () => {
    showState();
    if (syncTimer !== null) clearTimeout(syncTimer);
    syncTimer = setTimeout(syncValue, 300);
  });
  area.addEventListener("focus", markPanel);
  for (const kind of ["keydown", "keypress", "keyup"]) area.addEventListener(kind, onKey);
  send.addEventListener("click", submit);
  document.addEventListener("click", onClick, true);
  document.addEventListener("keydown", onEscape, true);
  model.on("msg:custom", onAck);
  model.on("change:value", onValue);
  model.on("change:busy", showState);
  model.on("change:placeholder", onPlaceholder);
  showState();
  setTimeout(markPanel, 0);
  return () => {
    document.removeEventListener("click", onClick, true);
    document.removeEventListener("keydown", onEscape, true);
    model.off("msg:custom", onAck);
    model.off("change:value", onValue);
    model.off("change:busy", showState);
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
.midori-composer-send:disabled { opacity: 0.4; cursor: not-allowed; box-shadow: none; }
.midori-chat-panel .jupyter-button:disabled { opacity: 0.4; cursor: not-allowed; }
.midori-chat-action {
  font-size: 0.85em; font-weight: 400; line-height: 1.3; padding: 0 0.45em; margin-left: 0.35em; opacity: 0.8;
  border: 1px solid rgba(128, 128, 128, 0.45); border-radius: 3px; background: transparent; color: inherit;
  cursor: pointer;
}
.midori-chat-action:hover { opacity: 1; background: rgba(128, 128, 128, 0.15); }
.midori-chat-actions { float: right; }
.midori-codeblock { position: relative; }
.midori-copy-code { position: absolute; top: 0.3em; right: 0.3em; }
.midori-chat-source { display: none; }
.midori-composer-queue {
  font-size: 0.85em; opacity: 0.8; margin-top: 3px; white-space: pre-wrap; word-break: break-word;
}
"""


SendHandler = Callable[[str], bool]
ActionHandler = Callable[[str, "dict[str, int]"], None]


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
    #: True while an answer runs: Send reads Queue (a message sent now waits for the answer).
    busy = traitlets.Bool(False).tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._handlers: list[SendHandler] = []
        self._action_handlers: list[ActionHandler] = []
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

    def on_action(self, handler: "ActionHandler") -> None:
        """Call ``handler(action, numbers)`` for each action the browser sends (:data:`ACTIONS`;
        ``numbers``: ``index``, ``step``, ``position`` where the button has them)."""
        self._action_handlers.append(handler)

    def act(self, action: str, **numbers: int) -> None:
        """Send an action as the browser does (for code and tests); ``ValueError`` for an unknown one."""
        if action not in ACTIONS:
            raise ValueError(f"action={action!r} is not allowed: expected one of {', '.join(ACTIONS)}")
        for handler in self._action_handlers:
            handler(action, dict(numbers))

    def _dispatch(self, text: str) -> bool:
        if len(text) > MAX_INPUT_CHARS:
            logger.warning("ChatInput: a message of %d characters was refused (at most %d)", len(text),
                           MAX_INPUT_CHARS)
            return False
        return all([handler(text) for handler in self._handlers]) if self._handlers else False

    def _on_browser_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "action":
            self._on_browser_action(content)
            return
        if not isinstance(content, dict) or content.get("type") != "send":
            return
        message_id, text = content.get("id"), content.get("text")
        if not isinstance(message_id, str) or len(message_id) > MAX_ID_CHARS:
            logger.warning("ChatInput: ignored a send message without a valid id")
            return
        accepted = isinstance(text, str) and self._dispatch(text)
        self.send({"type": "ack", "id": message_id, "accepted": bool(accepted)})

    def _on_browser_action(self, content: dict[str, Any]) -> None:
        action, numbers = content.get("action"), content.get("numbers")
        if action not in ACTIONS or not isinstance(numbers, dict) or set(numbers) - set(ACTION_NUMBERS):
            logger.warning("ChatInput: ignored an action that is not allowed")
            return
        checked: dict[str, int] = {}
        for name, value in numbers.items():
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 10**9:
                logger.warning("ChatInput: ignored an action with a number that is not allowed")
                return
            checked[name] = value
        self.act(action, **checked)


__all__ = ["ACTIONS", "ACTION_NUMBERS", "ActionHandler", "ChatInput", "MAX_INPUT_CHARS", "SendHandler"]
