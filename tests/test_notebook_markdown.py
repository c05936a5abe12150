"""Answers rendered as Markdown: real structure (highlighted fences, lists, safe links), hostile Markdown kept
inert on every surface (HTML views, the stream, the chat panel's messages, ``%%midori``, the Markdown export),
the size bound, incremental rendering while streaming, and exports that keep the answer's own Markdown.

No model is loaded: the scripted agent streams the answers (the notebook layer's own behaviour)."""

from __future__ import annotations

import html as html_module
import re

import pytest

from midori_hf_nb import AgentResponse, make_payload
from midori_hf_nb.notebook import RecordingSink, ResponseView, render_response_html, render_response_markdown, stream_to_cell
from midori_hf_nb.notebook.chat.render import render_typed_entry_html
from midori_hf_nb.notebook.chat.transcript import TranscriptEntry, render_transcript_markdown
from midori_hf_nb.notebook.markdown import (
    IncrementalMarkdown,
    highlight_code,
    markdown_for_export,
    render_markdown_html,
    sanitize_html,
)
from midori_hf_nb.protocol import MemoryEntryData
from midori_hf_nb.testing import ScriptedAgent

from .conftest import run
from .markup import MARKDOWN_PAYLOADS, PAYLOADS, assert_inert_html, assert_inert_markdown, markdown_renderings, parse, text_of

CODE_ANSWER = ("Here is the function:\n\n```python\ndef add_numbers(a, b):\n    \"\"\"Add.\"\"\"\n    return a + b  # sum\n```\n\n"
               "- first *point*\n- second **point**\n\n1. one\n2. two\n\nSee [the docs](https://docs.python.org/3/) "
               "and `add_numbers(a, b)`.\n")


def hrefs(html: str) -> list[str]:
    return [dict(attrs).get("href") or "" for tag, attrs in parse(html).tags if tag == "a"]


def tags(html: str) -> list[str]:
    return [tag for tag, _ in parse(html).tags]


# --------------------------------------------------------------------------- structure


def test_a_python_fence_is_a_pre_with_pygments_spans():
    html = render_markdown_html(CODE_ANSWER)
    pre = re.search(r'<pre class="midori-code highlight language-python"[^>]*><code>(.*?)</code></pre>', html, re.S)
    assert pre, html
    code = pre.group(1)
    assert re.search(r'<span class="k" style="color:var\(--jp-mirror-editor-keyword-color, #[0-9a-f]{6}\)[^"]*">def</span>', code)
    assert re.search(r'<span class="nf"[^>]*>add_numbers</span>', code)
    assert re.search(r'<span class="c1"[^>]*># sum</span>', code)
    assert re.search(r'<span class="sd"[^>]*>&quot;&quot;&quot;Add.&quot;&quot;&quot;</span>|<span class="sd"[^>]*>"""Add."""</span>', code)
    assert html_module.unescape(re.sub(r"<[^>]+>", "", code)) == \
        'def add_numbers(a, b):\n    """Add."""\n    return a + b  # sum\n'  # the code exactly, indentation kept


def test_lists_emphasis_links_and_inline_code_are_rendered():
    html = render_markdown_html(CODE_ANSWER)
    assert re.search(r"<ul>\s*<li>first <em>point</em></li>\s*<li>second <strong>point</strong></li>\s*</ul>", html)
    assert re.search(r"<ol>\s*<li>one</li>\s*<li>two</li>\s*</ol>", html)
    assert hrefs(html) == ["https://docs.python.org/3/"]
    assert 'rel="noopener noreferrer nofollow"' in html
    assert re.search(r"<code style=\"[^\"]*\">add_numbers\(a, b\)</code>", html)
    assert "```" not in html and "\\_" not in html
    assert_inert_html(html)


def test_a_line_break_is_a_line_break():
    html = render_markdown_html("1\n2\n3\n\nnext")
    assert re.search(r"<p>1<br ?/?>\s*2<br ?/?>\s*3</p>\s*<p>next</p>", html), html


def test_an_unknown_language_and_a_long_block_are_plain_escaped_code():
    assert "<span" not in highlight_code("<b>x</b>", "no-such-language")
    assert "&lt;b&gt;x&lt;/b&gt;" in highlight_code("<b>x</b>", "no-such-language")
    long_code = "x = 1\n" * 20_000
    assert "<span" not in highlight_code(long_code, "python") and "<span" in highlight_code("x = 1\n", "python")


def test_math_is_left_alone():
    html = render_markdown_html("$\\href{javascript:alert(1)}{x}$")
    assert 'class="midori-md tex2jax_ignore mathjax_ignore"' in html


# --------------------------------------------------------------------------- hostile Markdown


HTML_SURFACES = {
    "render_markdown_html": render_markdown_html,
    "render_response_html": lambda p: render_response_html(AgentResponse(thinking=p, response=p)),
    "ResponseView": lambda p: ResponseView(AgentResponse(thinking="", response=p))._repr_html_(),
    "chat message": lambda p: render_typed_entry_html(TranscriptEntry.from_memory(
        MemoryEntryData(role="assistant", content=p, metadata={}))),
    "incremental (every prefix)": lambda p: "".join(IncrementalMarkdown().render(p[:i]) for i in range(len(p) + 1)),
}


@pytest.mark.parametrize("surface", sorted(HTML_SURFACES))
@pytest.mark.parametrize("payload", MARKDOWN_PAYLOADS + PAYLOADS)
def test_hostile_markdown_is_inert_on_every_html_surface(surface, payload):
    payload = payload.replace("\\n", "\n")
    html = HTML_SURFACES[surface](payload)
    assert_inert_html(html)
    assert not any(re.match(r"\s*(javascript|data|vbscript):", h, re.I) for h in hrefs(html)), hrefs(html)


#: What a reader sees of the hostile cases whose words are not simply shown as written: the text each
#: must show, and (for links that are kept) the exact ``href`` values.
SHOWN = {
    "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)":
        (["[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)"], []),  # no link: the text as written
    "![x](https://example.com/x.png)": (["x"], ["https://example.com/x.png"]),  # a link to the image, no <img>
    "&#60;img src=x onerror=alert(1)&#62;": (["<img src=x onerror=alert(1)>"], []),  # the characters, as text
    "<!-- x --><style>body{display:none}</style>": (["<!-- x --><style>body{display:none}</style>"], []),
    "<style>body{display:none}</style>": (["<style>body{display:none}</style>"], []),
    '[x](https://ok.example/"onmouseover="alert(1))': (["x"], ["https://ok.example/%22onmouseover=%22alert(1)"]),
}
#: Words of a hostile payload that must stay visible when the payload shows them as written.
WORDS = ("alert", "javascript", "onerror", "script")


def expected_shown(payload: str) -> tuple[list[str], list[str] | None]:
    """The texts ``payload`` must show and its expected ``href`` values (None: not checked)."""
    if payload in SHOWN:
        return SHOWN[payload]
    assert not any(marker in payload for marker in ("&#", "data:", "https:")), \
        f"{payload!r} is not shown as written: give its expectation in SHOWN"
    return [word for word in WORDS if word in payload], None


def test_every_hostile_case_has_something_to_show():
    for payload in MARKDOWN_PAYLOADS + PAYLOADS:
        assert expected_shown(payload.replace("\\n", "\n"))[0], payload


@pytest.mark.parametrize("payload", MARKDOWN_PAYLOADS + PAYLOADS)
def test_hostile_markdown_is_shown_not_dropped(payload):
    payload = payload.replace("\\n", "\n")
    html = render_markdown_html(payload)
    shown = text_of(html)
    texts, links = expected_shown(payload)
    assert texts, f"nothing to check for {payload!r}"
    for text in texts:
        assert text in shown, (text, shown)
    if links is not None:
        assert hrefs(html) == links


@pytest.mark.parametrize("payload", MARKDOWN_PAYLOADS + PAYLOADS)
def test_hostile_markdown_is_inert_in_the_export(payload):
    payload = payload.replace("\\n", "\n")
    md = render_response_markdown(AgentResponse(thinking="", response=payload, code="print(1)",
                                                metadata={"completion_tokens": 3, "finish_reason": "stop"}))
    assert_inert_markdown(md)
    for renderer, html in markdown_renderings(md).items():
        assert "3 tokens · finish: stop" in text_of(html), renderer  # the export's own footer survives the answer
        assert "print(1)" in text_of(html), renderer


@pytest.mark.parametrize("payload", MARKDOWN_PAYLOADS)
def test_streamed_markdown_is_inert_at_every_step(payload):
    payload = payload.replace("\\n", "\n")
    sink = RecordingSink(keep=True)
    run(stream_to_cell(ScriptedAgent(payload, piece_chars=2), make_payload("q"), sink=sink, throttle=0))
    assert len(sink.bundles) > 3
    for bundle in sink.bundles:
        assert_inert_html(bundle["text/html"])
        assert not any(re.match(r"\s*(javascript|data|vbscript):", h, re.I) for h in hrefs(bundle["text/html"]))


def test_the_sanitiser_is_a_second_wall():
    dirty = ('<p onclick="x()">a</p><img src=x onerror=alert(1)><a href="javascript:alert(1)">j</a>'
             '<span style="color:red;position:fixed;background:url(x)">s</span><script>alert(1)</script><iframe></iframe>')
    clean = sanitize_html(dirty)
    assert_inert_html(clean)
    assert "alert(1)</script>" not in clean and "position" not in clean and "url(" not in clean
    assert hrefs(clean) == [""] and 'style="color:red"' in clean


# --------------------------------------------------------------------------- bounds and streaming


def test_text_past_the_bound_is_shown_as_plain_text():
    text = "**bold**\n\n" + "x" * 50 + "<script>alert(1)</script> **not bold**"
    html = render_markdown_html(text, limit=30)
    assert "<strong>bold</strong>" in html
    assert "Markdown rendering stops after 30 characters; the remaining" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; **not bold**" in html  # escaped, not rendered
    assert_inert_html(html)
    assert text_of(html).count("x") >= 50  # nothing is cut


def test_incremental_rendering_keeps_settled_blocks_and_matches_the_whole():
    blocks = [f"Paragraph {i} with *emphasis*.\n\n```python\nx = {i}\n```\n\n" for i in range(30)]
    text = "".join(blocks)
    renderer = IncrementalMarkdown()
    naive = 0
    for end in range(5, len(text) + 1, 5):
        html = renderer.render(text[:end])
        naive += end
        assert_inert_html(html)
    assert renderer.render(text) == render_markdown_html(text)  # the settled blocks render as the whole does
    assert renderer.rendered_chars < naive / 10  # each update rendered the tail, not the whole answer
    # a text that does not extend the rendered one starts over
    assert "<em>other</em>" in renderer.render("*other*") and "Paragraph" not in renderer.render("*other*")


def test_an_open_fence_is_not_settled_while_streaming():
    renderer = IncrementalMarkdown()
    renderer.render("Intro.\n\n```python\nx = 1\n\ny = 2\n")  # a blank line inside the open fence
    html = renderer.render("Intro.\n\n```python\nx = 1\n\ny = 2\n```\n")
    assert html.count("<pre") == 1 and "y = " in text_of(html)


def test_stream_to_cell_renders_markdown_live_and_whole_at_the_end():
    sink = RecordingSink(keep=True)
    response = run(stream_to_cell(ScriptedAgent(CODE_ANSWER, piece_chars=7), make_payload("q"), sink=sink, throttle=0))
    assert response.response == CODE_ANSWER.strip()
    live = [b["text/html"] for b in sink.bundles[1:-1]]
    assert any("<pre class=\"midori-code highlight language-python\"" in h and "midori-cursor" in h for h in live)
    final = sink.last["text/html"]
    assert "midori-cursor" not in final and re.search(r"<ol>\s*<li>one</li>", final)
    plain = RecordingSink(keep=True)
    run(stream_to_cell(ScriptedAgent(CODE_ANSWER), make_payload("q"), sink=plain, throttle=0, markdown=False))
    assert "<pre" not in plain.last["text/html"] and "```python" in plain.last["text/html"]


# --------------------------------------------------------------------------- exports keep the answer's Markdown


def test_the_export_keeps_code_fences_and_indentation():
    md = render_response_markdown(AgentResponse(thinking="", response=CODE_ANSWER))
    assert "```python\ndef add_numbers(a, b):\n    \"\"\"Add.\"\"\"\n    return a + b  # sum\n```" in md
    assert "`add_numbers(a, b)`" in md and "\\_" not in md and "\\(" not in md
    html = markdown_renderings(md)["markdown-it"]
    assert "<pre><code class=\"language-python\">def add_numbers(a, b):\n    " in html


def test_the_transcript_export_keeps_the_answer_and_escapes_what_it_adds():
    entries = [MemoryEntryData(role="user", content="Write *add* <b>now</b>", metadata={}),
               MemoryEntryData(role="assistant", content=CODE_ANSWER, metadata={})]
    md = render_transcript_markdown(entries, title="Chat <script>")
    assert md.startswith("# Chat &lt;script&gt;\n")
    assert "Write \\*add\\* &lt;b&gt;now&lt;/b&gt;" in md  # the user's text is escaped, as before
    assert "```python\ndef add_numbers(a, b):\n    \"\"\"Add.\"\"\"" in md
    assert_inert_markdown(md)


@pytest.mark.parametrize("answer, closing", [("```python\nx = 1", "```"), ("~~~~\n<b>", "~~~~"), ("ok", None)])
def test_a_fence_the_answer_left_open_is_closed(answer, closing):
    md = markdown_for_export(answer)
    assert md.startswith(answer)
    assert md.endswith("\n" + closing) if closing else md == answer
