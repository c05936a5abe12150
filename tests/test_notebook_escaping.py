"""Hostile model output on every HTML and Markdown surface of the notebook layer: shown as text, never live.

Table-driven: each payload goes into every field of a response (answer, thinking, code, tool names,
arguments, ids, results and errors, statistics values, the model name) and through every view. The HTML
is inspected with a parser (only the view's own tags and attributes may exist, the payload must be
visible as text), and the Markdown is rendered by two Markdown renderers that pass raw HTML through.
No model is loaded: the scripted agent streams the hostile text.
"""

from __future__ import annotations

import json
import math

import pytest

from midori_hf_nb import AgentResponse, make_payload
from midori_hf_nb.notebook import (
    RecordingSink,
    ResponseView,
    conversation_frame,
    render_response_html,
    render_response_markdown,
    stream_to_cell,
    thinking_frame,
    tool_calls_frame,
)
from midori_hf_nb.notebook.display import render_response_text, tool_call_rows, tool_calls_html
from midori_hf_nb.notebook.escaping import (
    css_percent,
    css_value,
    escape_html,
    escape_markdown,
    markdown_code_block,
    markdown_lines,
    to_text,
)
from midori_hf_nb.notebook.memory import MemoryReadout
from midori_hf_nb.testing import ScriptedAgent

from .conftest import run
from .markup import (
    PAYLOADS,
    assert_inert_html,
    assert_inert_markdown,
    assert_no_math,
    frame_table,
    markdown_renderings,
    squash,
    text_of,
)


class Hostile:
    """A value of no string type whose text is hostile (a tool result, an argument, a DataFrame cell)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__


def hostile_response(p: str) -> AgentResponse:
    """``p`` in every field a view shows, including statistics and values of other types."""
    return AgentResponse(
        thinking=p, response=p, code=p,
        tool_calls=[{"name": p, "arguments": {p: p, "n": Hostile(p)}, "id": p, "unknown": True}],
        metadata={"model": p, "decode_path": p, "decode_path_reason": p, "finish_reason": p, "completion_tokens": p,
                  "total_seconds": 1.5, "tool_steps": [{"step": p, "name": p, "arguments": {"q": p}, "id": p,
                                                        "result": Hostile(p), "error": p, "seconds": p}],
                  "steps": 2},
    )


def hostile_readout(p: str) -> MemoryReadout:
    return MemoryReadout(process={"rss_bytes": 10, "peak_rss_bytes": 10, "vms_bytes": 10},
                         system={"total_bytes": 100, "available_bytes": 50, "used_bytes": 50, "percent": 50.0},
                         models=[{"model": p, "parameters": 1, "bytes": 4, "dtype": p, "quantization": p,
                                  "device": p, "references": 1}],
                         remote=[{"model": p, "agent": p}])


HTML_SURFACES = {
    "render_response_html": lambda p: render_response_html(hostile_response(p), title=p),
    "ResponseView": lambda p: ResponseView(hostile_response(p), title=p)._repr_html_(),
    "tool_calls_html": lambda p: tool_calls_html(tool_call_rows(hostile_response(p))),
    "memory readout": lambda p: hostile_readout(p)._repr_html_(),
    "tool_calls_frame": lambda p: frame_table(tool_calls_frame(hostile_response(p))._repr_html_()),
    "thinking_frame": lambda p: frame_table(thinking_frame(hostile_response(p))._repr_html_()),
    "conversation_frame": lambda p: frame_table(conversation_frame(
        [{"role": "assistant", "content": p, "metadata": {"tokens": p, "finish_reason": p}}])._repr_html_()),
}


@pytest.mark.parametrize("surface", sorted(HTML_SURFACES))
@pytest.mark.parametrize("payload", PAYLOADS)
def test_html_surfaces_show_hostile_text_as_text(surface, payload):
    html = HTML_SURFACES[surface](payload)
    assert_inert_html(html)
    shown = squash(text_of(html).replace("\\r", " ").replace("\\n", " "))  # pandas writes line breaks as \r, \n
    assert squash(payload) in shown  # shown, not dropped


@pytest.mark.parametrize("payload", PAYLOADS)
def test_views_keep_mathjax_out(payload):
    for html in (render_response_html(hostile_response(payload)), hostile_readout(payload)._repr_html_()):
        assert_no_math(html)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_every_field_reaches_the_html_escaped(payload):
    html = render_response_html(hostile_response(payload))
    shown = text_of(html)
    # answer, thinking, code, tool name, argument key and value, id-free table, executed result and error, decoder
    assert shown.count(squash(payload)) >= 6
    assert f"decode: {squash(payload)}" in shown
    # a finish reason or token count of the wrong type is dropped by the typed statistics, not shown
    assert "tokens" not in shown.replace("tokens/s", "") and "finish:" not in shown


@pytest.mark.parametrize("payload", PAYLOADS)
def test_markdown_renders_no_live_html(payload):
    md = render_response_markdown(hostile_response(payload))
    assert_inert_markdown(md)
    assert_inert_markdown(ResponseView(hostile_response(payload))._repr_markdown_())
    for renderer, html in markdown_renderings(md).items():
        assert squash(payload) in text_of(html), renderer


@pytest.mark.parametrize("payload", PAYLOADS)
def test_streamed_bundles_are_inert_at_every_step(payload):
    sink = RecordingSink(keep=True)
    agent = ScriptedAgent(f"<think>{payload}</think>{payload}", piece_chars=3)
    response = run(stream_to_cell(agent, make_payload("q"), sink=sink, throttle=0, title=payload))
    assert response.response == payload.strip() or response.response == payload
    assert len(sink.bundles) > 3
    for bundle in sink.bundles:  # partial tags like "<scr" mid-stream are escaped as well
        assert_inert_html(bundle["text/html"])
        assert_no_math(bundle["text/html"])
    assert squash(payload) in text_of(sink.last["text/html"])


@pytest.mark.parametrize("answer", ["see code", "- an open list item", "> a quote", "```\nan open fence"])
def test_code_after_a_lone_carriage_return_stays_in_the_code_block(answer):
    response = AgentResponse(thinking="", response=answer, code="x\r<img src=x onerror=alert(1)>\r\ny")
    md = render_response_markdown(response)
    code = md[md.rindex("```\nx"):]
    assert "\r" not in md
    assert code.split("\n")[:5] == ["```", "x", "<img src=x onerror=alert(1)>", "y", "```"]  # a fence at column 0
    for renderer, html in markdown_renderings(md).items():
        assert "<img" not in html, renderer
        assert "&lt;img src=x onerror=alert(1)&gt;" in html, renderer  # shown literally, as code
    assert_inert_markdown(md)


@pytest.mark.parametrize("text, lines", [
    ("a\r\nb", ["a", "b"]), ("a\rb", ["a", "b"]), ("a\nb", ["a", "b"]), ("a\u2028b\x0cc", ["a", "b", "c"]),
    ("", [""]),
])
def test_markdown_lines_split_on_every_line_break(text, lines):
    assert markdown_lines(text) == lines
    assert markdown_code_block(text).split("\n") == ["    " + line for line in lines]


@pytest.mark.parametrize("value, expected", [
    ("<b>&'\"", "&lt;b&gt;&amp;&#x27;&quot;"),
    (None, ""),
    (42, "42"),
    ({"k": "<i>"}, "{&#x27;k&#x27;: &#x27;&lt;i&gt;&#x27;}"),
    (Hostile("<script>"), "&lt;script&gt;"),
])
def test_escape_html_takes_any_value(value, expected):
    assert escape_html(value) == expected


def test_a_value_whose_str_fails_is_shown_by_its_type():
    class Broken:
        def __str__(self):
            raise RuntimeError("no text")

    assert to_text(Broken()) == "<Broken>"
    assert escape_html(Broken()) == "&lt;Broken&gt;"
    assert "Broken" in render_response_html(AgentResponse(thinking="", response=Broken()))


def test_escape_markdown_is_one_line_and_inert():
    assert escape_markdown("a\rb\nc") == "a b c"
    assert escape_markdown("[x](javascript:alert(1)) $x$ <b>") == "\\[x](javascript:alert(1)) \\$x\\$ \\<b>"
    assert_inert_markdown(escape_markdown("[x](javascript:alert(1)) $x$ <b>"))


@pytest.mark.parametrize("text", ["5.19 s", "Line one of my message.", "a < b and b > c", "AT&T (2024): 3 - 1 = 2!",
                                  "snake_case_name", "2 * 3", "~5 s", "-5 degrees", "1.5x faster"])
def test_escape_markdown_leaves_text_that_starts_no_markup_as_it_is(text):
    assert escape_markdown(text) == text


@pytest.mark.parametrize("text, escaped", [
    ("<b>bold</b>", "\\<b>bold\\</b>"), ("# not a heading", "\\# not a heading"), ("> no quote", "\\> no quote"),
    ("- no item", "\\- no item"), ("* no item", "\\* no item"), ("1. no list", "1\\. no list"),
    ("*em* _em_ ~~s~~", "\\*em\\* \\_em\\_ \\~\\~s\\~~"), ("`code`", "\\`code\\`"), ("a | b", "a \\| b"),
    ("&amp; &#60;", "\\&amp; \\&#60;"), ("\\*", "\\\\\\*"), ("<https://x.org>", "\\<https://x.org>"), ("===", "\\==="),
])
def test_escape_markdown_escapes_only_what_would_start_markup(text, escaped):
    assert escape_markdown(text) == escaped
    for renderer, html in markdown_renderings(escaped).items():
        assert squash(text_of(html)) == squash(text), (renderer, html)


@pytest.mark.parametrize("value", ["url(javascript:alert(1))", "red;background:url(x)", "expression(alert(1))",
                                   "var(--x)", "\"", "1px\\9", math.nan, math.inf, True])
def test_css_value_refuses_anything_but_plain_tokens(value):
    with pytest.raises(ValueError, match="CSS value="):
        css_value(value)


def test_css_value_and_percent_accept_plain_values():
    assert css_value(12) == "12" and css_value(0.5) == "0.5" and css_value("rgba(1, 2, 3, 0.5)") == "rgba(1, 2, 3, 0.5)"
    assert css_percent(0.25) == "25.0%" and css_percent(7) == "100.0%" and css_percent(-1) == "0.0%"
    assert css_percent(math.nan) == "0%" and css_percent("50%;x") == "0%" and css_percent(None) == "0%"


def test_plain_text_form_is_the_answer_and_footer():
    text = render_response_text(AgentResponse(thinking="", response="<b>hi</b>",
                                              metadata={"completion_tokens": 3, "finish_reason": "stop"}))
    assert text == "<b>hi</b>\n[3 tokens · finish: stop]"  # text/plain is never rendered as markup


def test_tool_arguments_are_shown_as_json():
    html = render_response_html(AgentResponse(thinking="", response="", tool_calls=[
        {"name": "f", "arguments": {"q": "<script>"}, "id": "c1"}]))
    assert json.dumps({"q": "<script>"}) in text_of(html)
