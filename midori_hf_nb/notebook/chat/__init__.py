"""A chat panel widget: a conversation with an agent inside one notebook cell.

``panel = ChatPanel(agent)`` as a cell's last expression shows:

* a scrolling transcript (newest at the bottom), every message HTML-escaped, the model's
  reasoning in a collapsible block and tool calls as a small table under the answer; each
  message shows when it was sent (an answer: when it ended), and the answer being generated
  carries its "Assistant" label from its first piece;
* long conversations are paged (:mod:`.pages`): the transcript shows the latest 100 messages
  and **Show earlier** adds more, so the browser never receives the whole history at once;
* a multi-line input with **Send** (**Queue** while an answer is written: the message waits and
  is sent when the answer ends, :mod:`.actions`), then **Stop** (or Esc), **Regenerate**,
  **Clear** (with **Undo clear** until the next message is sent) and **Export**
  (:meth:`ChatPanel.export`: JSON and Markdown files next to the notebook; the notice says where);
  buttons show their real state (Stop coloured only while an answer runs);
* on each message **Copy** (and on each code block of an answer), **As text** on answers, **Edit**
  on the user's messages (send it again: the conversation forks, :mod:`.branches`, and ‹ n/m ›
  switches between the versions);
* a status line: "loading model… N s" with the load's stage and counts while the model loads,
  then tokens, tokens/s, finish reason, model and the memory readout (process RSS and the
  weights of loaded models, from :func:`~midori_hf_nb.notebook.memory_readout`);
* a collapsed **Settings** area: system prompt, temperature, max new tokens, top-p, top-k, seed,
  greedy, the repetition guard, "Enter sends" and the response format (a box checked as you type;
  answers under a format carry a "schema" badge); settings apply to the next message and are
  checked by :func:`~midori_hf_nb.settings.check_overrides`;
* the model named short in the title and status line (a served model by its id and host).

``agent`` is any :class:`~midori_hf_nb.MidoriAiAgentProtocol` agent: the panel streams with its
``stream`` when it has one (else awaits ``invoke``) and offers tools through
``stream_with_tools`` / ``stream_tools`` when the agent has them (:mod:`.generation`).

Generation runs as a task on the kernel's event loop (the agent generates in its own thread),
so the cell returns at once and the kernel keeps processing button clicks: **Stop** ends the
generation within a token or two and keeps the partial answer, marked as stopped. The
transcript is refreshed at most every ``throttle`` seconds (0.1 by default) while streaming.

Send sends what the box shows: the input (:class:`~.composer.ChatInput`) is a small browser
widget that reads the box when **Send** is clicked or Enter pressed and sends that text with the
action, so a busy kernel (another cell running) cannot receive a half-synced draft; the box
clears at once and the message is shown as queued until the kernel takes it. Enter sends (untick
"Enter sends" in Settings to make Enter a line break), Shift+Enter starts a new line.

Nothing is lost when something fails: invalid settings are reported before anything is sent
and the typed message stays in the input; an exception during generation (a prompt too long
for the context window, running out of memory, an unknown generation option) is shown in the
transcript in place of the answer, with whatever text had arrived, and the rest of the
transcript and any unsent input stay. **Regenerate** retries the last message.

The conversation *is* the payload memory: :attr:`ChatPanel.memory`, a list of
:class:`~midori_hf_nb.MemoryEntryData`; answers keep their statistics under the names of
:class:`~midori_hf_nb.stats.ResponseStats` in ``metadata`` (:mod:`.transcript`), and
:attr:`ChatPanel.entries` is the same conversation typed. Failed exchanges stay in the
transcript but are not sent to the model. Export it any time with :meth:`~ChatPanel.to_frame`,
:meth:`~ChatPanel.to_json` (load it into a new panel with :meth:`ChatPanel.from_json`, which
checks every message and setting of the file: :mod:`.document`) and :meth:`~ChatPanel.to_markdown`.

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
    panel.clear(); panel.undo_clear()
    panel.export()                                                 # ChatExport(json_path, markdown_path, ...)
    panel.transcript                                               # list of dicts

Outside a running event loop (a plain script), ``send`` and ``regenerate`` run to completion
and return the dict directly.

Modules: :mod:`.transcript` (typed entries, checks, dict/Markdown/DataFrame exports),
:mod:`.document` (the JSON file), :mod:`.branches` (forks of the conversation), :mod:`.export` (the
files of Export), :mod:`.pages` (paging and Undo clear), :mod:`.composer` (the input box, Send and
the browser code of the message buttons and Esc), :mod:`.options` (option checks), :mod:`.render`
(HTML and status text), :mod:`.generation` (asking the agent), :mod:`.layout` (the widgets),
:mod:`.actions` (the queue, editing, branches, as text), :mod:`.persistence` (exports and import),
:mod:`.structured_field` (the response format), :mod:`.panel` (the behaviour).
"""

from __future__ import annotations

from .document import JSON_FORMAT, JSON_VERSION, SETTINGS_KEYS, read_document, write_document
from .export import ChatExport
from .panel import ChatPanel
from .render import render_entry_html, render_transcript_html
from .transcript import (
    ROLE_LABELS,
    TranscriptEntry,
    TranscriptError,
    check_entry,
    check_memory,
    entry_to_dict,
    payload_memory,
    render_transcript_markdown,
)

__all__ = [
    "ChatExport",
    "ChatPanel",
    "JSON_FORMAT",
    "JSON_VERSION",
    "ROLE_LABELS",
    "SETTINGS_KEYS",
    "TranscriptEntry",
    "TranscriptError",
    "check_entry",
    "check_memory",
    "entry_to_dict",
    "payload_memory",
    "read_document",
    "render_entry_html",
    "render_transcript_html",
    "render_transcript_markdown",
    "write_document",
]
