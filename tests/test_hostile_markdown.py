"""Exported Markdown carries no live unsafe link, whatever character references hide the scheme,
through the renderers that show exported Markdown (mistune, nbconvert's; markdown-it-py), and
the export is bounded and linear in the answer's length."""

from __future__ import annotations

import re
from html import unescape

import pytest

from midori_hf_nb.notebook.markdown import DESTINATION_WINDOW, MAX_MARKDOWN_CHARS, markdown_for_export
from midori_hf_nb.protocol import AgentResponse, MemoryEntryData

pytestmark = pytest.mark.timeout(120)

HIDDEN_SCHEMES = [
    "[click](javascript&colon;alert(1))",
    "[click](javascript&#58;alert(1))",
    "[click](javascript&#x3a;alert(1))",
    "[click](javascript&#X3A;alert(1))",
    "[click](javascript&#0000058;alert(1))",
    "[click](javascript&amp;colon;alert(1))",
    "[click](&#106;avascript:alert(1))",
    "[click](JAVASCRIPT&colon;alert(1))",
    "[click](javascript\\:alert(1))",
    "[click]( javascript&colon;alert(1) )",
    "[click](vbscript&colon;msgbox(1))",
    "[click](data&colon;text/html,<script>alert(1)</script>)",
    "[click][x]\n\n[x]: javascript&colon;alert(1)",
    "[click][x]\n\n[x]:\n  javascript&#58;alert(1)",
    "[click](&#x" + "0" * (DESTINATION_WINDOW + 10) + "6a;avascript:alert(1))",
]


def _renderers():
    mistune = pytest.importorskip("mistune")
    from markdown_it import MarkdownIt

    return {"mistune": mistune.html, "markdown-it": MarkdownIt("commonmark").render}


def live_unsafe_links(html: str) -> list[str]:
    """The hrefs of ``html`` that a browser would run or load as a script or document."""
    found = []
    for href in re.findall(r'href="([^"]*)"', html):
        url = re.sub(r"[\x00-\x20]", "", unescape(href)).lower()  # as a browser reads the attribute
        if url.startswith(("javascript:", "vbscript:", "data:")):
            found.append(href)
    return found


@pytest.mark.parametrize("answer", HIDDEN_SCHEMES)
def test_no_surface_exports_a_live_unsafe_link(answer):
    from midori_hf_nb.notebook import ResponseView
    from midori_hf_nb.notebook.chat.transcript import render_transcript_markdown

    surfaces = {
        "markdown_for_export": markdown_for_export(answer),
        "ResponseView._repr_markdown_": ResponseView(AgentResponse(thinking="", response=answer, code=None,
                                                                   tool_calls=None, metadata={}))._repr_markdown_(),
        "chat transcript to_markdown": render_transcript_markdown([MemoryEntryData(role="assistant", content=answer)]),
    }
    for surface, markdown in surfaces.items():
        for name, render in _renderers().items():
            assert live_unsafe_links(render(markdown)) == [], (surface, name, markdown)


def test_safe_links_stay_links():
    markdown = markdown_for_export("[ok](https://example.com) and [rel](docs/a.md), [top](#top), "
                                   "[mail](mailto:a@example.com) and [amp](https://example.com/?a=1&amp;b=2)")
    html = _renderers()["mistune"](markdown)
    for href in ("https://example.com", "docs/a.md", "#top", "mailto:a@example.com"):
        assert f'href="{href}"' in html


def test_a_large_export_is_bounded_and_keeps_the_rest_as_literal_text():
    answer = "[a]: b\n" * (4 * 2**20 // 7)  # 4 MB of reference definitions (63 s before the bound)
    exported = markdown_for_export(answer)
    note = f"*The Markdown export stops after {MAX_MARKDOWN_CHARS:,} characters"
    assert note in exported
    head, _, tail = exported.partition(note)
    assert len(head) <= 2 * MAX_MARKDOWN_CHARS
    fence = tail.split("\n")[2]
    assert fence.startswith("```") and tail.rstrip().endswith(fence)  # the rest is one literal code block
    assert answer[MAX_MARKDOWN_CHARS:] in tail  # nothing is cut


def test_many_links_are_checked_in_linear_time():
    # each link looks a bounded window ahead: 8,000 links in one paragraph stay quick
    answer = "[x](javascript&colon;a) " * 8_000
    exported = markdown_for_export(answer)
    assert exported.count("]\\(") == 8_000
