"""Answers as Markdown, rendered safely: one renderer for every HTML surface of the notebook layer.

Model output is untrusted, so rendering it as Markdown goes through two walls:

1. **The parser** (``markdown-it-py``, CommonMark plus tables and strikethrough; a line break in
   the answer is a ``<br>``, as in chat front ends) runs with raw
   HTML disabled (``<script>`` in an answer is text), images disabled (no remote fetches from an
   answer: ``![x](...)`` shows as text), no linkify, and links limited to :data:`LINK_SCHEMES`
   (``javascript:``, ``data:``, ``vbscript:`` ... destinations leave the link unrendered, as text).
   Fenced code is highlighted with ``pygments`` (the fence's language, else plain text): every
   token is an escaped ``<span>`` with pygments' short class name and an inline colour taken from
   JupyterLab's own editor theme variables (``var(--jp-mirror-editor-keyword-color, ...)``), so
   the colours follow the light and dark themes and no ``<style>`` block is written (no CSS leaks
   into the rest of the page).
2. **The sanitiser** (``nh3``) then keeps only an explicit allow-list of tags
   (:data:`ALLOWED_TAGS`), attributes (:data:`ALLOWED_ATTRIBUTES`), CSS properties
   (:data:`ALLOWED_STYLE_PROPERTIES`; no ``background`` shorthand, which could carry ``url()``) and
   URL schemes, and adds ``rel="noopener noreferrer nofollow"`` to links.

Code the model wrote without a fence is fenced before rendering (:mod:`.unfenced` states the
rule), so it keeps its lines and indentation in a monospaced block.

Input is bounded: at most :data:`MAX_MARKDOWN_CHARS` characters of an answer are rendered as
Markdown; the rest is shown as escaped plain text under a note saying so (an answer is never cut).

:class:`IncrementalMarkdown` renders a growing answer while it streams without re-rendering what
is already settled: blocks before the last blank line outside a code fence are rendered once and
kept, and only the tail is rendered on each update.

:func:`markdown_for_export` is the Markdown *source* side: the answer's own Markdown (code fences,
indentation, lists) is kept for ``to_markdown()`` exports, while raw HTML, unsafe link schemes and
``$`` math outside code are neutralised and a fence the answer left open is closed, so nothing the
export adds after the answer can be swallowed by it.
"""

from __future__ import annotations

import re
from functools import lru_cache
from html import escape as _escape
from html import unescape
from typing import Any

import nh3
from markdown_it import MarkdownIt
from pygments.lexers import get_lexer_by_name
from pygments.token import STANDARD_TYPES, Token
from pygments.util import ClassNotFound

from .escaping import NO_MATH_CLASS, normalise_newlines
from .unfenced import fence_unfenced_code

#: Characters of one text rendered as Markdown; past it the rest is shown as escaped plain text.
MAX_MARKDOWN_CHARS = 200_000
#: Characters of one code block highlighted; a longer block is shown plain (still escaped).
MAX_HIGHLIGHT_CHARS = 50_000
#: Link schemes that stay links (anything else, e.g. ``javascript:``/``data:``, stays text).
LINK_SCHEMES = frozenset({"http", "https", "mailto"})

#: Tags the sanitiser keeps (everything markdown-it makes from CommonMark + tables, nothing else).
ALLOWED_TAGS = frozenset({
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "em", "strong", "s", "del", "code", "pre", "span",
    "div", "blockquote", "ul", "ol", "li", "table", "thead", "tbody", "tr", "th", "td", "a",
})
#: Attributes the sanitiser keeps, per tag.
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "ol": {"start"},
    "span": {"class", "style"},
    "pre": {"class", "style"},
    "code": {"class", "style"},
    "div": {"class", "style"},
    "table": {"style"},
    "th": {"style"},
    "td": {"style"},
}
#: CSS properties the sanitiser keeps in ``style`` attributes.
ALLOWED_STYLE_PROPERTIES = frozenset({
    "color", "background-color", "font-style", "font-weight", "font-family", "font-size",
    "text-align", "padding", "margin", "border-radius", "overflow-x", "white-space", "line-height",
    "border", "border-collapse",
})

#: The root of rendered Markdown (the caller's box sets fonts; this resets ``pre-wrap`` of the old views).
STYLE_MARKDOWN = "white-space:normal;word-break:break-word"
STYLE_PRE = ("background-color:rgba(128,128,128,0.12);padding:0.5em 0.7em;"
             "border-radius:4px;overflow-x:auto;line-height:1.35;white-space:pre;"
             "font-family:var(--jp-code-font-family,monospace);font-size:0.92em")
STYLE_CODE_INLINE = ("background-color:rgba(128,128,128,0.15);padding:0 0.25em;"
                     "border-radius:3px;font-family:var(--jp-code-font-family,monospace);font-size:0.92em")
STYLE_TABLE = "border-collapse:collapse;margin:0.4em 0"
STYLE_TABLE_CELL = "border:1px solid rgba(128,128,128,0.4);padding:2px 8px"
STYLE_TRUNCATED = "white-space:pre-wrap;word-break:break-word"
STYLE_NOTE = "opacity:0.6;font-size:0.85em;margin:0.3em 0"

#: Token colours: (pygments token type, JupyterLab editor variable, fallback usable on light and dark).
_TOKEN_COLOURS = [
    (Token.Comment, "comment", "#7f8c8d", "font-style:italic"),
    (Token.Keyword, "keyword", "#2e9b47", "font-weight:600"),
    (Token.Operator.Word, "keyword", "#2e9b47", "font-weight:600"),
    (Token.Name.Builtin, "builtin", "#2e9b47", ""),
    (Token.Name.Function, "def", "#3a7bd5", ""),
    (Token.Name.Class, "def", "#3a7bd5", "font-weight:600"),
    (Token.Name.Decorator, "meta", "#a052d4", ""),
    (Token.Name.Tag, "tag", "#2e9b47", ""),
    (Token.Name.Attribute, "attribute", "#b8860b", ""),
    (Token.Literal.String, "string", "#c8553d", ""),
    (Token.Literal.Number, "number", "#2e9b47", ""),
    (Token.Operator, "operator", "#a052d4", ""),
    (Token.Generic.Deleted, "error", "#d13438", ""),
    (Token.Generic.Inserted, "string", "#2e9b47", ""),
    (Token.Error, "error", "#d13438", ""),
]

_SCHEME = re.compile(r"^\s*([a-zA-Z][a-zA-Z0-9+.\-]*):")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


def _link_allowed(url: str) -> bool:
    """Links keep only :data:`LINK_SCHEMES`, fragments and paths; ``javascript:``, ``data:`` ... are refused."""
    match = _SCHEME.match(url)
    return match is None or match.group(1).lower() in LINK_SCHEMES


def _token_style(ttype: Any) -> str:
    for kind, variable, fallback, extra in _TOKEN_COLOURS:
        if ttype in kind:
            return f"color:var(--jp-mirror-editor-{variable}-color,{fallback})" + (f";{extra}" if extra else "")
    return ""


@lru_cache(maxsize=64)
def _lexer(language: str) -> Any:
    try:
        return get_lexer_by_name(language, stripnl=False, ensurenl=False) if language else None
    except ClassNotFound:
        return None


def highlight_code(code: str, language: str = "") -> str:
    """``code`` as ``<pre class="midori-code"><code>`` with pygments token spans (escaped).

    ``language``: a pygments lexer name or alias (``python``, ``js``, ...); unknown or empty gives
    plain escaped text, as does a block longer than :data:`MAX_HIGHLIGHT_CHARS`.
    """
    lexer = _lexer(language.strip().lower()) if len(code) <= MAX_HIGHLIGHT_CHARS else None
    if lexer is None:
        body = _escape(code, quote=False)
    else:
        pieces = []
        for ttype, value in lexer.get_tokens(code):
            text = _escape(value, quote=False)
            style = _token_style(ttype)
            short = STANDARD_TYPES.get(ttype) or STANDARD_TYPES.get(ttype.parent, "")
            if style or short:
                pieces.append(f'<span class="{short}" style="{style}">{text}</span>' if style
                              else f'<span class="{short}">{text}</span>')
            else:
                pieces.append(text)
        body = "".join(pieces)
    lang = re.sub(r"[^a-z0-9+#_\-]", "", language.strip().lower())[:30]
    classes = "midori-code highlight" + (f" language-{lang}" if lang else "")
    return f'<pre class="{classes}" style="{STYLE_PRE}"><code>{body}</code></pre>\n'


def _highlight(code: str, language: str, _attrs: str) -> str:
    return highlight_code(code, language.split()[0] if language.strip() else "")


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    # breaks: a line break in an answer is a line break (models write poems, steps, one number per line)
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False, "breaks": True,
                                   "highlight": _highlight})
    md.enable(["table", "strikethrough"])
    md.disable("image")
    md.validateLink = _link_allowed

    def code_inline(renderer, tokens, idx, options, env):
        return f'<code style="{STYLE_CODE_INLINE}">{_escape(tokens[idx].content, quote=False)}</code>'

    md.add_render_rule("code_inline", code_inline)

    def style_tables(state):  # tables look like tables outside JupyterLab's own stylesheet too
        for token in state.tokens:
            if token.type == "table_open":
                token.attrSet("style", STYLE_TABLE)
            elif token.type in ("th_open", "td_open"):
                align = token.attrGet("style")
                token.attrSet("style", STYLE_TABLE_CELL + (f";{align}" if align else ""))

    md.core.ruler.push("midori_table_style", style_tables)
    return md


def sanitize_html(html: str) -> str:
    """The second wall: ``html`` with only :data:`ALLOWED_TAGS`, :data:`ALLOWED_ATTRIBUTES`,
    :data:`ALLOWED_STYLE_PROPERTIES` and :data:`LINK_SCHEMES` kept (``nh3``); comments dropped,
    ``<script>``/``<style>`` dropped with their content."""
    return nh3.clean(html, tags=set(ALLOWED_TAGS), attributes={k: set(v) for k, v in ALLOWED_ATTRIBUTES.items()},
                     clean_content_tags={"script", "style"}, url_schemes=set(LINK_SCHEMES),
                     filter_style_properties=set(ALLOWED_STYLE_PROPERTIES), strip_comments=True,
                     link_rel="noopener noreferrer nofollow")


def markdown_body_html(text: Any) -> str:
    """``text`` rendered as Markdown and sanitised, without the root element and without the size bound.
    Code the model left unfenced is fenced first (:func:`~.unfenced.fence_unfenced_code`)."""
    return sanitize_html(_parser().render(fence_unfenced_code(normalise_newlines(text))))


def _wrap(body: str, rest: str, limit: int) -> str:
    parts = [f'<div class="midori-md {NO_MATH_CLASS}" style="{STYLE_MARKDOWN}">', body]
    if rest:
        parts.append(f'<div class="midori-md-truncated" style="{STYLE_NOTE}">Markdown rendering stops after '
                     f'{limit:,} characters; the remaining {len(rest):,} are shown as plain text.</div>'
                     f'<div class="midori-md-plain" style="{STYLE_TRUNCATED}">{_escape(rest, quote=False)}</div>')
    parts.append("</div>")
    return "".join(parts)


def render_markdown_html(text: Any, *, limit: int = MAX_MARKDOWN_CHARS) -> str:
    """``text`` (an answer) as safe HTML: Markdown rendered, fenced code highlighted, sanitised.

    The first ``limit`` characters are rendered as Markdown; any rest is shown as escaped plain
    text under a note. The root is ``<div class="midori-md tex2jax_ignore mathjax_ignore">``.
    """
    text = normalise_newlines(text)
    head, rest = text[:limit], text[limit:]
    return _wrap(markdown_body_html(head) if head else "", rest, limit)


class IncrementalMarkdown:
    """Renders a growing text (a streamed answer) as :func:`render_markdown_html` does, keeping the
    settled part: everything up to the last blank line outside a code fence is rendered once and
    reused, so each update renders only the tail. When the text stops extending the rendered
    prefix (a new answer), it starts over. The final answer should be rendered with
    :func:`render_markdown_html` (blocks rendered apart can differ slightly, e.g. a loose list).

    :attr:`rendered_chars` counts the characters rendered so far (for tests and statistics).
    """

    def __init__(self, *, limit: int = MAX_MARKDOWN_CHARS) -> None:
        self.limit = limit
        self.rendered_chars = 0
        self._settled_text = ""
        self._settled_html = ""

    def _settle_point(self, text: str) -> int:
        """The index after the last blank line of ``text`` at which no fence is open (>= the settled end)."""
        start = len(self._settled_text)
        fence: str | None = None
        best = start
        pos = start
        for line in text[start:].split("\n")[:-1]:  # the last line may still grow
            end = pos + len(line) + 1
            match = _FENCE.match(line)
            if fence is None and match:
                fence = match.group(1)
            elif fence is not None and match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
                    and not match.group(2).strip():
                fence = None
            elif fence is None and not line.strip():
                best = end
            pos = end
        return best

    def render(self, text: Any) -> str:
        """The HTML of ``text`` now (the same root element as :func:`render_markdown_html`)."""
        text = normalise_newlines(text)
        head, rest = text[:self.limit], text[self.limit:]
        if not head.startswith(self._settled_text):
            self._settled_text, self._settled_html = "", ""
        point = self._settle_point(head)
        if point > len(self._settled_text):
            chunk = head[len(self._settled_text):point]
            self._settled_html += markdown_body_html(chunk)
            self.rendered_chars += len(chunk)
            self._settled_text = head[:point]
        tail = head[len(self._settled_text):]
        self.rendered_chars += len(tail)
        return _wrap(self._settled_html + (markdown_body_html(tail) if tail else ""), rest, self.limit)


# --------------------------------------------------------------------------- Markdown source (exports)

_INLINE_LINK = re.compile(r"\]\(")
_REFERENCE_DEFINITION = re.compile(r"^( {0,3})\[([^\]\n]+)\]:", re.MULTILINE)
#: Characters after a link's ``](`` (or a reference definition's ``]:``) read for its scheme.
DESTINATION_WINDOW = 256
#: What a browser or a Markdown renderer drops inside a URL's scheme: whitespace, control characters,
#: and backslashes (CommonMark's escapes: ``javascript\:`` is ``javascript:``).
_DROPPED_IN_SCHEME = re.compile(r"[\x00-\x20\x7f\\]+")
#: A window that, decoded, is only scheme characters and pieces of character references: a
#: scheme could still complete past it.
_UNDECIDED = re.compile(r"[a-zA-Z0-9+.\-&#;]*")
_CUT_REFERENCE = re.compile(r"&#?[a-zA-Z0-9]*$")


def _destination_allowed(window: str) -> bool:
    """Whether the link destination starting ``window`` is safe: its scheme, after every character
    reference is decoded (repeatedly: ``&amp;colon;`` is ``&colon;`` is ``:`` to a renderer that
    decodes twice) and whitespace, control characters and backslashes are dropped, is one of
    :data:`LINK_SCHEMES`, or it has none."""
    full = len(window) >= DESTINATION_WINDOW
    text = window
    while "&" in text:  # each round that changes the text shortens it: at most len(window) rounds
        if full:  # a reference the window cut in two is left out (decoded whole, it could be a letter)
            text = _CUT_REFERENCE.sub("", text)
        decoded = unescape(text)
        if decoded == text:
            break
        text = decoded
    text = _DROPPED_IN_SCHEME.sub("", text).lstrip("<")
    match = _SCHEME.match(text)
    if match is not None:
        return match.group(1).lower() in LINK_SCHEMES
    return not (full and _UNDECIDED.fullmatch(text))


#: What a backslash makes inert in prose: raw HTML (``<`` before a tag, comment or autolink), an entity,
#: ``$`` math and an image; ``(\\*)`` is the run of backslashes before it (an odd run already escapes it).
_PROSE_ESCAPES = re.compile(r"(\\*)(<(?=[A-Za-z/!?])|&(?=#?\w+;)|\$|!(?=\[))")


def _escape_unescaped(match: re.Match) -> str:
    slashes, char = match.group(1), match.group(2)
    return match.group(0) if len(slashes) % 2 else f"{slashes}\\{char}"


def _neutralise_prose(text: str) -> str:
    """Raw HTML, entities, ``$`` math, images and links to unsafe schemes in Markdown prose made
    inert with as few backslashes as it takes (``<b>`` becomes ``\\<b>``), the rest kept as written.

    Linear in the text: each link looks at most :data:`DESTINATION_WINDOW` characters ahead.
    """
    def inline_link(match: re.Match) -> str:
        window = text[match.end():match.end() + DESTINATION_WINDOW]
        return match.group(0) if _destination_allowed(window) else "]\\("

    text = _INLINE_LINK.sub(inline_link, text)

    def reference(match: re.Match) -> str:
        window = text[match.end():match.end() + DESTINATION_WINDOW]
        return match.group(0) if _destination_allowed(window) else f"{match.group(1)}\\[{match.group(2)}]:"

    text = _REFERENCE_DEFINITION.sub(reference, text)
    return _PROSE_ESCAPES.sub(_escape_unescaped, text)


def markdown_for_export(text: Any) -> str:
    """An answer's Markdown for a ``.md`` export: its own Markdown kept, nothing in it live.

    Code the model left unfenced is fenced first (:func:`~.unfenced.fence_unfenced_code`, as on
    screen). Code (fenced and indented blocks, as markdown-it-py parses them) is kept byte for byte. In
    the prose around it a backslash goes before ``<`` of a tag, ``&`` of an entity and ``$`` (no raw
    HTML, entities or math; ``a < b`` and ``AT&T`` stay as written), images
    become links (a viewer of the file fetches nothing), and links or reference definitions to schemes other than :data:`LINK_SCHEMES` lose their link
    syntax. A fence left open by the answer is closed, so what the export writes next stays
    outside it. Inline code spans holding ``<`` or ``&`` show those escaped (the price of
    escaping prose without a second parser).

    Bounded and linear: the first :data:`MAX_MARKDOWN_CHARS` characters are exported as Markdown;
    any rest follows under a note as a fenced code block (literal text, nothing live, nothing cut).
    """
    text = normalise_newlines(text)
    if len(text) > MAX_MARKDOWN_CHARS:
        head, rest = text[:MAX_MARKDOWN_CHARS], text[MAX_MARKDOWN_CHARS:]
        return (_export_head(head) + f"\n\n*The Markdown export stops after {MAX_MARKDOWN_CHARS:,} characters; "
                f"the remaining {len(rest):,} follow as plain text.*\n\n" + fenced_code(rest))
    return _export_head(text)


def _export_head(text: str) -> str:
    text = fence_unfenced_code(text)
    lines = text.split("\n")
    code = [False] * len(lines)
    open_fence = ""
    for token in _parser().parse(text):
        if token.type in ("fence", "code_block") and token.map:
            for i in range(token.map[0], min(token.map[1], len(lines))):
                code[i] = True
            if token.type == "fence" and token.map[1] >= len(lines):
                closing = _FENCE.match(lines[-1].lstrip(" >"))
                closed = (token.map[1] - token.map[0] >= 2 and closing is not None and not closing.group(2).strip()
                          and closing.group(1)[0] == token.markup[0] and len(closing.group(1)) >= len(token.markup))
                if not closed:
                    open_fence = token.markup
    out: list[str] = []
    prose: list[str] = []
    for line, is_code in zip(lines, code):
        if is_code:
            if prose:
                out.append(_neutralise_prose("\n".join(prose)))
                prose = []
            out.append(line)
        else:
            prose.append(line)
    if prose:
        out.append(_neutralise_prose("\n".join(prose)))
    result = "\n".join(out)
    if open_fence:
        result += "\n" + open_fence
    return result


def fenced_code(text: Any, language: str = "") -> str:
    """``text`` as a fenced Markdown code block whose fence is longer than any backtick run in it,
    so every line (line breaks of every kind normalised first) stays inside and shows literally,
    whatever comes before it (an open list or quote does not take it in: the fence starts at column 0)."""
    text = normalise_newlines(text)
    runs = [len(r) for r in re.findall(r"`+", text)]
    fence = "`" * max(3, max(runs, default=0) + 1)
    lang = re.sub(r"[^A-Za-z0-9+#_\-]", "", language)[:30]
    return f"{fence}{lang}\n{text}\n{fence}"


__all__ = [
    "ALLOWED_ATTRIBUTES",
    "ALLOWED_STYLE_PROPERTIES",
    "ALLOWED_TAGS",
    "IncrementalMarkdown",
    "LINK_SCHEMES",
    "MAX_HIGHLIGHT_CHARS",
    "MAX_MARKDOWN_CHARS",
    "fenced_code",
    "highlight_code",
    "markdown_body_html",
    "markdown_for_export",
    "render_markdown_html",
    "sanitize_html",
]
