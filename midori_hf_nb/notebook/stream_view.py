"""What a streamed answer looks like: :class:`StreamState` (what has arrived so far) and its
rendering as HTML and as plain text (pure functions, usable outside IPython). Every value shown
is escaped; the answer is safe Markdown (:mod:`.markdown`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..load_progress import LoadProgress
from .display import (
    STYLE_ANSWER,
    STYLE_BOX,
    STYLE_FOOTER,
    answer_html,
    escape,
    format_footer,
    response_stats,
    thinking_html,
    tool_call_rows,
    tool_calls_html,
)
from .escaping import NO_MATH_CLASS, to_text
from .markdown import IncrementalMarkdown, render_markdown_html
from .probs_view import has_logprobs, token_view_html
from ..logprobs import Logprobs

STYLE_LOADING = "opacity:0.8;font-size:0.92em;margin:0.1em 0 0.3em 0"
STYLE_LOADED = "opacity:0.55;font-size:0.85em;margin:0.1em 0 0.3em 0"


def loaded_text(loaded: LoadProgress) -> str:
    """The finished line of a load: "model loaded in 3.2 s" (``loaded.detail`` holds the seconds)."""
    return f"{loaded.model} loaded in {loaded.detail} s"


@dataclass
class StreamState:
    """What has arrived so far in one streamed answer."""

    answer: str = ""
    thinking: str = ""
    tool_calls: list[dict] = field(default_factory=list)  #: calls announced and not yet run
    tool_steps: list[dict] = field(default_factory=list)  #: calls run by a tool loop (``tool_result`` events)
    response: Any = None  #: the final AgentResponse, once done
    elapsed: float = 0.0  #: seconds since the stream started
    pieces: int = 0  #: text and thinking pieces received
    interrupted: bool = False
    error: str | None = None
    title: str | None = None
    loading: LoadProgress | None = None  #: the model's load progress while it loads (before any text)
    loaded: LoadProgress | None = None  #: the last load progress seen, once the load ended (the finished line)
    tokens: list[Any] = field(default_factory=list)  #: token records so far (when probabilities were asked for)

    def end_loading(self, now: float | None = None) -> None:
        """The load ended: keep its last progress, with its seconds, for one finished line."""
        if self.loading is not None:
            seconds = self.loading.seconds(now)
            self.loaded = replace(self.loading, detail=f"{seconds:.1f}")
            self.loading = None

    @property
    def done(self) -> bool:
        return self.response is not None or self.error is not None


def render_stream_html(state: StreamState, *, show_thinking: bool = True, markdown: bool = True,
                       renderer: IncrementalMarkdown | None = None, probs: str | None = None) -> str:
    """The HTML of a stream's current state (pure but for ``renderer``'s cache: no IPython needed).

    The answer is safe Markdown (``markdown=False``: escaped plain text); while streaming,
    ``renderer`` (an :class:`~.markdown.IncrementalMarkdown`) re-renders only the answer's
    unsettled tail. With ``probs`` (a shading of :mod:`.probs_view`) the answer is its tokens,
    shaded as they arrive. Every other value is escaped."""
    parts = [f'<div class="midori-stream {NO_MATH_CLASS}" style="{STYLE_BOX}">']
    if state.title:
        parts.append(f'<div style="opacity:0.7;font-size:0.92em">{escape(state.title)}</div>')
    if state.loading is not None and not state.done:
        parts.append(f'<div class="midori-loading" style="{STYLE_LOADING}">{escape(state.loading.text())}</div>')
    elif state.loaded is not None:  # collapsed to one finished line
        parts.append(f'<div class="midori-loaded" style="{STYLE_LOADED}">{escape(loaded_text(state.loaded))}</div>')
    response = state.response
    thinking = to_text(getattr(response, "thinking", "") if response is not None else state.thinking)
    answer = to_text(getattr(response, "response", "") if response is not None else state.answer)
    if show_thinking and thinking:
        parts.append(thinking_html(thinking, open_=not state.done and not answer, live=not state.done))
    cursor = "" if state.done else "▌"
    if probs is not None and (state.tokens or has_logprobs(response)):
        source = response if has_logprobs(response) else Logprobs(content=list(state.tokens))
        parts.append(token_view_html(source, shade=probs, least=5 if state.done else 0))
    elif not markdown:
        parts.append(f'<div class="midori-answer" style="{STYLE_ANSWER}">{escape(answer)}{cursor}</div>')
    elif state.done:
        parts.append(answer_html(answer))
    else:
        body = renderer.render(answer) if renderer is not None else render_markdown_html(answer)
        parts.append(f'<div class="midori-answer">{body}<span class="midori-cursor">{cursor}</span></div>')
    parts.append(tool_calls_html(tool_call_rows(response) if response is not None else live_tool_rows(state)))
    parts.append(f'<div class="midori-footer" style="{STYLE_FOOTER}">{escape(stream_footer(state))}</div>')
    parts.append("</div>")
    return "".join(parts)


def render_stream_text(state: StreamState) -> str:
    """Plain-text form of a stream's state (answer, then the footer in brackets)."""
    answer = to_text(getattr(state.response, "response", "") if state.response is not None else state.answer)
    return f"{answer}\n[{stream_footer(state)}]"


def stream_footer(state: StreamState) -> str:
    """The footer line: live progress while streaming, then tokens, seconds, tokens/s, finish and
    the call's id in the call log (the output is saved with the notebook, so a reopened notebook
    shows which logged call it was)."""
    if state.error is not None:
        return f"error: {state.error}"
    if state.response is not None:
        footer = format_footer(response_stats(state.response), interrupted=state.interrupted)
        metadata = getattr(state.response, "metadata", None)
        log_id = metadata.get("log_id") if isinstance(metadata, dict) else None
        if isinstance(log_id, str) and log_id:  # the call log's id: midori_hf_nb.log.logs(ids=...) finds it
            footer += f" · log id {log_id}"
        return footer
    if state.interrupted:
        return f"stopping… {state.elapsed:.1f} s"
    if state.pieces == 0:
        if state.loading is not None:
            return f"loading the model… {state.elapsed:.1f} s"
        return f"waiting for the first token… {state.elapsed:.1f} s"
    return f"streaming… {state.elapsed:.1f} s"


def live_tool_rows(state: StreamState) -> list[dict[str, Any]]:
    """Tool-call rows while streaming: the calls a loop has run, then those announced and not run."""
    rows = [{**step, "executed": True} for step in state.tool_steps]
    last = state.tool_steps[-1].get("step") if state.tool_steps else 0
    step = last + 1 if isinstance(last, int) and not isinstance(last, bool) else 1
    rows += [{"step": step, "name": c.get("name"), "arguments": c.get("arguments"), "id": c.get("id"),
              "result": None, "error": "unknown tool" if c.get("unknown") else None, "seconds": None,
              "executed": False} for c in state.tool_calls]
    return rows
