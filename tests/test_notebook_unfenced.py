"""Code a model left without a fence keeps its lines and indentation in a monospaced block; prose stays prose.

The first example is the answer that was mangled on screen (indentation lost, a proportional font, the
``# Example usage:`` comment turned into a large heading) in the chat panel and ``%%midori``.
"""

from __future__ import annotations

import html as html_module
import re

import pytest

from midori_hf_nb import AgentResponse, make_payload
from midori_hf_nb.notebook import RecordingSink, render_response_markdown, stream_to_cell
from midori_hf_nb.notebook.markdown import IncrementalMarkdown, markdown_for_export, render_markdown_html
from midori_hf_nb.notebook.unfenced import fence_unfenced_code, looks_like_code
from midori_hf_nb.testing import ScriptedAgent

from .conftest import run
from .markup import assert_inert_html, assert_inert_markdown, markdown_renderings, parse, text_of

MANGLED = """Here's a Python function that reverses a string:

def reverse_string(s):
    return s[::-1]

# Example usage:
print(reverse_string("hello"))  # Output: "olleh"

This function uses slicing with a step of -1 to reverse the string."""

CODE = """def reverse_string(s):
    return s[::-1]

# Example usage:
print(reverse_string("hello"))  # Output: "olleh\""""


def code_blocks(html: str) -> list[str]:
    """The text of each <pre> block, as a browser shows it."""
    return [html_module.unescape(re.sub(r"<[^>]+>", "", block))
            for block in re.findall(r"<pre[^>]*>(.*?)</pre>", html, re.S)]


def test_the_mangled_answer_keeps_its_lines_indentation_and_comment_in_one_code_block():
    html = render_markdown_html(MANGLED)
    assert code_blocks(html) == [CODE + "\n"]  # lines, indentation and the comment, exactly
    assert "<h1" not in html and "language-python" in html  # no heading; highlighted as Python
    assert 'style="' in html.split("<pre", 1)[1].split(">", 1)[0] and "monospace" in html  # a monospaced block
    paragraphs = [text_of(p) for p in re.findall(r"<p>(.*?)</p>", html, re.S)]
    assert paragraphs == ["Here's a Python function that reverses a string:",
                          "This function uses slicing with a step of -1 to reverse the string."]


def test_the_streamed_answer_ends_with_the_same_block_and_shows_no_heading_once_the_code_line_is_there():
    sink = RecordingSink(keep=True)
    run(stream_to_cell(ScriptedAgent(MANGLED, piece_chars=4), make_payload("q"), sink=sink, throttle=0))
    assert code_blocks(sink.last["text/html"]) == [CODE + "\n"]
    with_the_call = [b["text/html"] for b in sink.bundles if 'reverse_string("hello"))' in text_of(b["text/html"])]
    assert len(with_the_call) >= 3 and not any("<h1" in h for h in with_the_call)
    renderer = IncrementalMarkdown()
    for end in range(0, len(MANGLED), 7):
        renderer.render(MANGLED[:end])
    streamed = code_blocks(renderer.render(MANGLED))  # the settled part was rendered apart: two blocks at most
    assert "".join(streamed) == CODE.replace("\n\n", "\n") + "\n" or streamed == [CODE + "\n"], streamed


@pytest.mark.parametrize("text", [
    "# A heading\n\nSome prose. For example, in Python:\n\n- a list item\n- x = 5 inside a list item",
    "The function will\nreturn the value you give it.",
    "1. First step\n2. Second step(s)\n\n> a quote = fine",
    "| a | b |\n|---|---|\n| x = 1 | f(x) |",
    "Paris (France) is the capital.\nIt is large.",
    "for example, in Python: nothing here",
    "If you want:\n\n* print it\n* return it",
])
def test_prose_lists_tables_and_headings_are_not_taken_for_code(text):
    assert fence_unfenced_code(text) == text


@pytest.mark.parametrize("text, language, block", [
    ("Here is the code:\nimport os\nprint(os.getcwd())\nDone.", "python", "import os\nprint(os.getcwd())"),
    ("function add(a, b) {\n  return a + b;\n}\n\nconsole.log(add(1, 2));", "javascript",
     "function add(a, b) {\n  return a + b;\n}\n\nconsole.log(add(1, 2));"),
    ('#include <stdio.h>\nint main() {\n    printf("hi");\n}\nThat prints hi.', "",
     '#include <stdio.h>\nint main() {\n    printf("hi");\n}'),
    ("result = add(2, 3)", "", "result = add(2, 3)"),
])
def test_unfenced_code_is_fenced_with_its_language(text, language, block):
    fenced = fence_unfenced_code(text)
    assert f"```{language}\n{block}\n```" in fenced
    assert fenced.replace(f"```{language}\n", "").replace("\n```", "") == text  # nothing else changed


def test_fenced_code_is_never_touched_and_a_fence_is_longer_than_the_code_s_backticks():
    fenced = "```python\ndef f():\n    return 1\n```\n\n# Usage\n\nf()"
    assert fence_unfenced_code(fenced) == fenced.replace("f()", "```\nf()\n```").replace("```\nf():", "f():", 1) \
        or fence_unfenced_code(fenced).startswith("```python\ndef f():\n    return 1\n```")
    assert fence_unfenced_code("x = '```'\nprint(x)").startswith("````python\nx = '```'\nprint(x)\n````")
    assert looks_like_code("    return s[::-1]") and not looks_like_code("The answer is 42.")
    assert not looks_like_code("x = " + "1" * 2000)  # a line that long is never taken for code


def test_hostile_unfenced_code_stays_text():
    hostile = 'x = "</code></pre><script>alert(1)</script>"\nprint(x)  # <img src=x onerror=alert(1)>'
    html = render_markdown_html(hostile)
    assert_inert_html(html)
    assert code_blocks(html) == [hostile + "\n"]
    md = markdown_for_export(hostile)
    assert_inert_markdown(md)
    for renderer, rendered in markdown_renderings(md).items():
        assert "<script" not in rendered and "<img" not in rendered, renderer


def test_the_markdown_export_fences_the_unfenced_code_as_the_screen_does():
    md = render_response_markdown(AgentResponse(thinking="", response=MANGLED))
    assert f"```python\n{CODE}\n```" in md
    for renderer, rendered in markdown_renderings(md).items():
        assert "<h1" not in rendered and "<pre" in rendered, renderer
    assert [tag for tag, _ in parse(render_markdown_html(MANGLED)).tags].count("pre") == 1
