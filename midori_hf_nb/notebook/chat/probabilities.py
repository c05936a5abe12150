"""The chat panel's token probabilities: a "Probabilities" toggle, the answers shown as their tokens
(shaded by probability, alternatives on hover and keyboard focus), and a click on an alternative
that branches the answer from it.

With the toggle on (``panel.probs = True``, or a panel made with ``top_logprobs=k`` among its
overrides), each message asks the agent for ``top_logprobs=5`` and answers that carry token
probabilities are drawn by :func:`~midori_hf_nb.notebook.probs_view.token_view_html` with their
alternatives as buttons (an answer streams as text, then shows as its tokens). The answers are
static HTML in the transcript, so a few lines of browser code (an
`anywidget <https://anywidget.dev>`_ widget, :class:`BranchRelay`) listen for a click on such a
button inside this panel and send its answer, step and token to the kernel; the panel then
continues that answer's prompt with the answer's first tokens and the chosen one forced
(:func:`~midori_hf_nb.agent.branching.branch_answer`, a local agent) and shows the original and
the branch side by side under the conversation, which is left as it is. Without a browser,
:meth:`BranchRelay.click` does what the browser does.

The layout (:class:`~.layout.ChatLayout`) builds the controls; :class:`ProbabilitiesMixin` (a base
of the layout) gives the panel :attr:`~ProbabilitiesMixin.probs` and
:meth:`~ProbabilitiesMixin.branch`, using the panel's conversation, payloads and settings.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import anywidget
import ipywidgets as widgets

from ...agent.branching import branch_answer, check_branch
from ..probs_view import branch_view, has_logprobs
from .transcript import TranscriptEntry, payload_memory

logger = logging.getLogger(__name__)

#: The class of the panel's outer box, which the browser code looks for.
PANEL_CLASS = "midori-chat-panel"
#: Alternatives per token the panel asks for while the toggle is on.
PANEL_TOP_LOGPROBS = 5

_ESM = r"""
function render({ model, el }) {
  el.style.display = "none";
  const onClick = (event) => {
    const button = event.target instanceof Element ? event.target.closest(".mt-alt[data-step][data-token]") : null;
    if (!button) return;
    const panel = button.closest(".midori-chat-panel");
    if (!panel || !panel.contains(el)) return;
    const answer = button.closest("[data-answer]");
    const step = Number(button.dataset.step), token = Number(button.dataset.token);
    if (!answer || !Number.isInteger(step) || !Number.isInteger(token)) return;
    event.preventDefault();
    event.stopPropagation();
    model.send({ type: "branch", answer: Number(answer.dataset.answer), step, token });
  };
  document.addEventListener("click", onClick, true);
  return () => document.removeEventListener("click", onClick, true);
}
export default { render };
"""


class BranchRelay(anywidget.AnyWidget):
    """Hands clicks on an alternative inside its panel to :meth:`on_branch` handlers as
    ``(answer index, step, token id)``."""

    _esm = _ESM

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._handlers: list[Callable[[int, int, int], Any]] = []
        self.on_msg(self._on_browser_message)

    def on_branch(self, handler: Callable[[int, int, int], Any]) -> None:
        """Call ``handler(answer, step, token)`` for each click on an alternative."""
        self._handlers.append(handler)

    def click(self, answer: int, step: int, token: int) -> list[Any]:
        """What a click in the browser does (for code and tests); returns the handlers' results."""
        return [handler(answer, step, token) for handler in self._handlers]

    def _on_browser_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict) or content.get("type") != "branch":
            return
        values = [content.get(key) for key in ("answer", "step", "token")]
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31 for v in values):
            logger.warning("BranchRelay: ignored a branch message without valid numbers")
            return
        self.click(*values)


#: The overrides that ask for token probabilities (the toggle sets and removes them).
PROBABILITY_KEYS = ("logprobs", "top_logprobs", "prompt_logprobs")


class ProbabilityControls:
    """The toggle, the relay and the branch area of one panel (see the module docstring)."""

    def __init__(self, on: bool = False) -> None:
        self.toggle = widgets.ToggleButton(value=bool(on), description="Probabilities", icon="percent",
                                           tooltip="Show answers as their tokens shaded by probability; hover or "
                                                   "focus a token for its alternatives, click one to branch")
        self.relay = BranchRelay()
        self.branch_html = widgets.HTML(layout=widgets.Layout(width="100%"))
        #: the running branch (None before the first)
        self.task: asyncio.Future | None = None

    @property
    def on(self) -> bool:
        """Whether the toggle is on."""
        return bool(self.toggle.value)

    @property
    def busy(self) -> bool:
        """Whether a branch is being generated."""
        return self.task is not None and not self.task.done()

    def launch(self, coro: Any) -> Any:
        """Run a branch: a task on the running event loop (kept in :attr:`task`), else to its end."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        self.task = loop.create_task(coro)
        return self.task

    def widgets(self) -> list[widgets.Widget]:
        """The widgets the layout shows: the toggle (with the invisible relay) and the branch area."""
        return [widgets.HBox([self.toggle, self.relay]), self.branch_html]


class ProbabilitiesMixin:
    """The panel's token probabilities (a base of :class:`~.layout.ChatLayout`; the methods use the
    public parts of :class:`~.panel.ChatPanel`: its conversation, payloads, settings and status)."""

    probabilities: ProbabilityControls

    def build_probabilities(self) -> list[widgets.Widget]:
        """Make the controls (on when the panel's overrides ask for token probabilities) and wire
        them; returns the widgets to show."""
        overrides = getattr(self, "overrides", None) or {}
        self.probabilities = ProbabilityControls(any(overrides.get(key) for key in PROBABILITY_KEYS))
        self.probabilities.toggle.observe(lambda _: self._sync_probabilities(render=True), "value")
        self.probabilities.relay.on_branch(self._branch_clicked)
        self._sync_probabilities(render=False)
        return self.probabilities.widgets()

    @property
    def probs(self) -> bool:
        """Whether answers ask for token probabilities and show as their tokens (the toggle)."""
        return self.probabilities.on

    @probs.setter
    def probs(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"ChatPanel.probs={value!r} is not allowed: expected True or False")
        self.probabilities.toggle.value = value

    def _sync_probabilities(self, *, render: bool) -> None:
        """The overrides and the transcript's drawing after the toggle changed."""
        on = self.probabilities.on
        overrides = getattr(self, "overrides", None)
        if isinstance(overrides, dict):
            if on:
                overrides.setdefault("top_logprobs", PANEL_TOP_LOGPROBS)
            else:
                for key in PROBABILITY_KEYS:
                    overrides.pop(key, None)
        pages = getattr(self, "pages", None)
        if pages is not None:
            pages.probs = on
            if render:
                self.refresh()

    def _branch_clicked(self, answer: int, step: int, token: int) -> Any:
        """A click on an alternative: branch (returns what :meth:`branch` does), or say in a notice why not."""
        try:
            return self.branch(answer, step, token)
        except (ValueError, RuntimeError) as exc:
            self.show_notice(str(exc))
            return None

    def branch(self, answer: int, step: int, token: int | str) -> Any:
        """Continue answer ``answer`` (its index in ``memory``) from ``token`` (an id, or the text of
        an alternative) at ``step``: the same question, history and current settings, the answer's
        first ``step`` tokens and ``token`` forced (a local agent). The original and the branch show
        side by side under the conversation, which is left as it is; a click on an alternative in
        the panel does this. Returns an ``asyncio.Task`` resolving to the branched response when an
        event loop runs (a notebook), else the response.

        Raises ``ValueError`` (:class:`~midori_hf_nb.logprobs.BranchError`) for an answer without
        token probabilities or a step or token not in it, ``RuntimeError`` while a generation runs.
        """
        memory = self.memory
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(memory) \
                or memory[answer].role != "assistant":
            raise ValueError(f"ChatPanel.branch: answer={answer!r} is not allowed: expected the index of an answer "
                             "in the conversation (panel.memory)")
        original = TranscriptEntry.from_memory(memory[answer]).as_response()
        if not has_logprobs(original):
            raise ValueError(f"ChatPanel.branch: answer {answer} has no token probabilities: turn Probabilities on "
                             "and send (or regenerate) it")
        check_branch(original, step, token)
        asked = next((i for i in range(answer - 1, -1, -1) if memory[i].role == "user"), None)
        if asked is None:
            raise ValueError(f"ChatPanel.branch: answer {answer} answers no user message")
        if self.is_running or self.probabilities.busy:
            raise RuntimeError("ChatPanel.branch: a generation is running; wait for it (await panel.wait()) or "
                               "stop it (panel.stop()) first")
        payload = self.payload(memory[asked].content, memory=payload_memory(memory[:asked]))
        overrides = {"top_logprobs": PANEL_TOP_LOGPROBS, **self.generation_overrides()}
        return self.probabilities.launch(show_branch(self, answer, original, payload, overrides, step, token))


async def show_branch(panel: Any, answer: int, original: Any, payload: Any, overrides: dict[str, Any], step: int,
                      token: int | str) -> Any:
    """Branch answer ``answer`` of ``panel`` and show the original and the branch side by side under
    the conversation; a failure is a notice. Returns the branch (None on failure)."""
    panel.show_status(f"branching answer {answer} at step {step}…")
    try:
        branched = await branch_answer(panel.agent, payload, original, step, token, **overrides)
    except (ValueError, RuntimeError) as exc:
        panel.show_notice(f"Branch failed: {exc}")
        panel.show_status("branch failed")
        return None
    panel.probabilities.branch_html.value = branch_view(original, branched).html
    panel.show_status(f"branched answer {answer} at step {step}: the original and the branch are shown under the "
                      "conversation", fresh_memory=True)
    return branched


__all__ = ["PANEL_CLASS", "PANEL_TOP_LOGPROBS", "PROBABILITY_KEYS", "BranchRelay", "ProbabilitiesMixin",
           "ProbabilityControls", "show_branch"]
