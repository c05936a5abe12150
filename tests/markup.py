"""Checks that rendered HTML and Markdown carry untrusted text as text: hostile payloads and a parser-based
inspection of what a browser (or a Markdown renderer, then a browser) would build from the output."""

from __future__ import annotations

import re
from html.parser import HTMLParser

#: Hostile model output: script, event handlers, javascript: URLs, attribute break-outs, a lone carriage
#: return before raw HTML, a Markdown link, MathJax, a style block, a closing tag of the view itself.
PAYLOADS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "javascript:alert(1)",
    '"><svg onload=alert(1)>',
    "x\r<img src=x onerror=alert(1)>",
    "ok\r\n<iframe src=javascript:alert(1)></iframe>",
    "[click](javascript:alert(1))",
    "$\\href{javascript:alert(1)}{x}$",
    "</div></td><script>alert(1)</script>",
    "<style>body{display:none}</style>",
]

#: Hostile Markdown: what an answer rendered as Markdown must keep inert (links to unsafe schemes, images
#: with handlers, raw HTML inside and outside fences, entities that spell markup, autolinks, reference links).
MARKDOWN_PAYLOADS = [
    "[x](javascript:alert(1))",
    "[x](  JavaScript:alert(1) )",
    "[x](<javascript:alert(1)>)",
    "[x][r]\n\n[r]: javascript:alert(1)",
    "<javascript:alert(1)>",
    "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[x](vbscript:msgbox(1))",
    "![x](x onerror=alert(1))",
    "![x](https://example.com/x.png)",
    "![x](javascript:alert(1))",
    "<script>alert(1)</script>",
    "text <img src=x onerror=alert(1)> text",
    "```html\n<script>alert(1)</script>\n```",
    "```\n</code></pre><script>alert(1)</script>\n```",
    "`<img src=x onerror=alert(1)>`",
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "&#60;img src=x onerror=alert(1)&#62;",
    "<div onclick=alert(1)>\n\n*x*\n\n</div>",
    "<!-- x --><style>body{display:none}</style>",
    "- item\n\n    <img src=x onerror=alert(1)>",
    "> quote <svg onload=alert(1)>",
    "| a |\n|---|\n| <img src=x onerror=alert(1)> |",
    "[x](https://ok.example/\"onmouseover=\"alert(1))",
]

#: Tags the notebook's own HTML views use.
VIEW_TAGS = {"div", "details", "summary", "table", "thead", "tbody", "tr", "th", "td", "pre", "span",
             # an answer rendered as Markdown (midori_hf_nb.notebook.markdown's allow-list)
             "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "em", "strong", "s", "del", "code",
             "blockquote", "ul", "ol", "li", "a"}
#: Link schemes an ``href`` may have (anything without a scheme is a relative link).
SAFE_SCHEMES = ("http:", "https:", "mailto:")
#: Tags a Markdown renderer makes from the notebook's Markdown (no raw HTML, no images; an answer keeps its own
#: lists, headings and links, and links may only have safe schemes: see ``problems``).
MARKDOWN_TAGS = {"p", "em", "strong", "blockquote", "pre", "code", "table", "thead", "tbody", "tr", "th", "td", "br",
                 "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "del", "s", "a"}


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> _Collector:
    collector = _Collector()
    collector.feed(html)
    collector.close()
    return collector


def problems(html: str, allowed_tags: set[str]) -> list[str]:
    """What in ``html`` is live markup that did not come from the view itself."""
    found = []
    for tag, attrs in parse(html).tags:
        if tag not in allowed_tags:
            found.append(f"<{tag}>")
        for name, value in attrs:
            if tag == "a" and name == "href":
                scheme = re.match(r"\s*([a-zA-Z][a-zA-Z0-9+.\-]*:)", value or "")
                if scheme and scheme.group(1).lower() not in SAFE_SCHEMES:
                    found.append(f"<a href={value!r}>")
                continue
            if (tag, name) in (("a", "rel"), ("a", "title"), ("ol", "start")):
                continue
            if name not in ("class", "style", "open", "align", "border"):
                found.append(f"<{tag} {name}=...>")
            if name == "style" and re.search(r"url\(|expression|javascript|@import", value or "", re.I):
                found.append(f"<{tag} style={value!r}>")
    return found


def frame_table(html: str) -> str:
    """A DataFrame's HTML without the constant ``<style scoped>`` block pandas puts before its table."""
    head, sep, rest = html.partition("</style>")
    assert sep and head.startswith("<div>\n<style scoped>") and "<" not in head[len("<div>\n<style scoped>"):], head
    return rest


def text_of(html: str) -> str:
    """The visible text of ``html`` (entities decoded), whitespace collapsed."""
    return squash("".join(parse(html).text))


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def assert_inert_html(html: str, allowed_tags: set[str] = VIEW_TAGS) -> None:
    assert not problems(html, allowed_tags), (problems(html, allowed_tags), html)


def assert_no_math(html: str) -> None:
    """The root element of a view tells MathJax to leave it alone (so ``$...$`` in model text is not typeset)."""
    root = parse(html).tags[0]
    classes = dict(root[1]).get("class") or ""
    assert "tex2jax_ignore" in classes.split() and "mathjax_ignore" in classes.split(), root


def markdown_renderings(md: str) -> dict[str, str]:
    """``md`` rendered by two Markdown renderers that pass raw HTML through (as notebook front ends do)."""
    import markdown_it
    import mistune

    return {"markdown-it": markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(md),
            "mistune": mistune.html(md)}


def assert_inert_markdown(md: str) -> None:
    for renderer, html in markdown_renderings(md).items():
        assert not problems(html, MARKDOWN_TAGS), (renderer, problems(html, MARKDOWN_TAGS), md, html)
