"""What the chat panel does besides sending: messages queued while an answer runs, editing an
earlier message (the conversation forks: :mod:`.branches`), answers shown as text, and the
actions the input's browser code sends (Esc, the buttons on the messages).

**The queueing rule.** A message sent (Send, Enter) while an answer is being written is queued:
it leaves the box at once, shows under the transcript as "Queued 1: ..." with a **Back to the box**
button, and is sent when the answer ends, in the order it was queued, each one answered before the
next is sent. Stopping an answer (Stop, Esc) ends that answer only; the queue goes on. Clear
empties the conversation and puts the queued messages back into the box (they are not sent into a
conversation the user just cleared). A queued message that cannot be sent (its settings became
invalid meanwhile) goes back into the box with a notice. Nothing typed is dropped, and two messages
are never joined into one.

**Edit and resend.** Edit on one of the user's messages puts its text into the box (a notice says
so; Esc or Cancel edit stops editing). Sending it then keeps everything from that message on as a
branch and sends the edited text in its place; ‹ n/m › on the message shows the other versions.
Editing is refused while an answer runs (the text stays in the box, a notice says why).
"""

from __future__ import annotations

from typing import Any

from ...protocol import MemoryEntryData
from .branches import Branch, switch, version_numbers
from .composer import ACTIONS
from .render import render_queue_html


class PanelActions:
    """The queue, editing, branches and browser actions of :class:`~.panel.ChatPanel` (a mixin: it
    uses the panel's ``memory``, widgets, :meth:`send`, :meth:`stop` and :meth:`refresh`; the panel
    calls :meth:`handle_action`, :meth:`send_next_queued` and :meth:`return_queue_to_box`)."""

    memory: list[MemoryEntryData]

    def init_actions(self) -> None:
        """The state of this mixin: no branches, nothing queued, no edit, no answer shown as text."""
        self.branches: list[Branch] = []
        self.queued: list[str] = []
        self.editing: int | None = None
        self._as_text: set[int] = set()  # ids of the answers (memory entries) shown as text

    # ------------------------------------------------------------------ the queue

    def queue(self, text: str) -> int:
        """Queue ``text`` to be sent when the running answer ends (see the module's rule); returns its
        place in the queue (1 is next). Sent at once when nothing runs."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("ChatPanel.queue: the message is empty; type something first")
        if not self.is_running:  # type: ignore[attr-defined]
            self.send(text)  # type: ignore[attr-defined]
            return 0
        self.queued.append(text)
        self._show_queue()
        return len(self.queued)

    def unqueue(self, position: int) -> str:
        """Take queued message ``position`` (0 is next) out of the queue and put it back into the box
        (before what the box holds); returns its text. ``ValueError`` for a position not in the queue."""
        if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position < len(self.queued):
            raise ValueError(f"ChatPanel.unqueue({position!r}) is not allowed: expected 0 to {len(self.queued) - 1}")
        text = self.queued.pop(position)
        self._to_box(text)
        self._show_queue()
        return text

    def _to_box(self, text: str) -> None:
        box = self.input.value  # type: ignore[attr-defined]
        self.input.value = f"{text}\n{box}" if box.strip() else text  # type: ignore[attr-defined]

    def _show_queue(self) -> None:
        self.queue_html.value = render_queue_html(self.queued)  # type: ignore[attr-defined]

    def send_next_queued(self) -> None:
        """After an answer: send the next queued message (its answer sends the one after it)."""
        if self.is_running or not self.queued:  # type: ignore[attr-defined]
            return
        text = self.queued.pop(0)
        self._show_queue()
        try:
            self.send(text)  # type: ignore[attr-defined]
        except (ValueError, RuntimeError) as exc:
            self._to_box(text)
            self.show_notice(f"The queued message went back into the box: {exc}")  # type: ignore[attr-defined]

    def return_queue_to_box(self) -> None:
        """Clear: the queued messages go back into the box, in order, not sent."""
        while self.queued:
            self._to_box(self.queued.pop())
        self._show_queue()

    # ------------------------------------------------------------------ edit and resend, branches

    def start_edit(self, index: int) -> str:
        """Put user message ``index`` into the box to edit it (Send then forks the conversation there);
        returns its text. ``ValueError`` for a position that is not one of the user's messages."""
        self.check_user_message(index)
        text = self.memory[index].content
        self.editing = index
        self.input.value = text  # type: ignore[attr-defined]
        self.show_widget(self.cancel_edit_button, True)  # type: ignore[attr-defined]
        self.show_notice(f"Editing message {index + 1}: Send forks the conversation there (this version stays "  # type: ignore[attr-defined]
                         "reachable with ‹ ›); Esc or Cancel edit stops editing.", error=False)
        return text

    def cancel_edit(self) -> bool:
        """Stop editing (the box is emptied); returns whether an edit was going on."""
        if self.editing is None:
            return False
        self.stop_editing()
        self.input.value = ""  # type: ignore[attr-defined]
        return True

    def stop_editing(self) -> None:
        """Leave the editing state (the box is left as it is)."""
        self.editing = None
        self.show_widget(self.cancel_edit_button, False)  # type: ignore[attr-defined]
        self.show_notice("")  # type: ignore[attr-defined]

    def edit(self, index: int, text: str) -> Any:
        """Send ``text`` in place of user message ``index``: the messages from ``index`` on are kept as
        a branch (reachable with :meth:`switch_branch` and in every export) and the answer to ``text``
        follows. Returns like :meth:`send`; ``ValueError`` for a bad position or an empty text,
        ``RuntimeError`` while an answer runs."""
        return self.send(text, edit=index)  # type: ignore[attr-defined]

    def switch_branch(self, index: int, step: int = 1) -> tuple[int, int]:
        """Show another version of the conversation from message ``index`` (``step`` -1: the previous
        one; versions are numbered by when they were sent); the one shown is kept as a branch.
        Returns (number shown, versions). ``ValueError`` where it did not fork, ``RuntimeError``
        while an answer runs."""
        if self.is_running:  # type: ignore[attr-defined]
            raise RuntimeError("ChatPanel.switch_branch: an answer is running; wait for it or stop it first")
        if isinstance(step, bool) or not isinstance(step, int):
            raise ValueError(f"ChatPanel.switch_branch(step={step!r}) is not allowed: expected an integer")
        self.memory[:], self.branches[:] = switch(self.memory, self.branches, index, step)
        self.refresh()  # type: ignore[attr-defined]
        return version_numbers(self.memory, self.branches)[index]

    def check_user_message(self, index: int) -> None:
        """``ValueError`` unless ``index`` is the position of one of the user's messages."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.memory) \
                or self.memory[index].role != "user":
            raise ValueError(f"message {index!r} is not allowed: expected the position of one of your messages")

    # ------------------------------------------------------------------ as text

    def show_as_text(self, index: int, as_text: bool | None = None) -> bool:
        """Show answer ``index`` as its own text (True) or rendered (False; None toggles); returns the new state."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.memory) \
                or self.memory[index].role != "assistant":
            raise ValueError(f"message {index!r} is not allowed: expected the position of an answer")
        key = id(self.memory[index])
        shown = (key not in self._as_text) if as_text is None else bool(as_text)
        (self._as_text.add if shown else self._as_text.discard)(key)
        self.refresh()  # type: ignore[attr-defined]
        return shown

    def view_state(self) -> dict[str, Any]:
        """What the transcript's HTML needs besides the messages: answers shown as text, versions."""
        present = {id(e) for e in self.memory}
        self._as_text &= present
        return {"as_text": frozenset(i for i, e in enumerate(self.memory) if id(e) in self._as_text),
                "versions": version_numbers(self.memory, self.branches)}

    # ------------------------------------------------------------------ browser actions

    def handle_action(self, action: str, numbers: dict[str, int]) -> None:
        """An action from the input's browser code (:data:`~.composer.ACTIONS`); refusals become notices."""
        assert action in ACTIONS
        index = numbers.get("index", -1)
        try:
            if action in ("stop", "escape"):
                if not self.stop() and action == "escape":  # type: ignore[attr-defined]
                    self.cancel_edit()
            elif action == "as-text":
                self.show_as_text(index)
            elif action == "edit":
                if self.is_running:  # type: ignore[attr-defined]
                    raise RuntimeError("An answer is running: stop it (Esc) or wait, then edit the message")
                self.start_edit(index)
            elif action == "branch":
                self.switch_branch(index, 1 if numbers.get("step", 1) >= 0 else -1)
            elif action == "unqueue":
                self.unqueue(numbers.get("position", -1))
        except (ValueError, RuntimeError) as exc:
            self.show_notice(str(exc))  # type: ignore[attr-defined]


__all__ = ["PanelActions"]
