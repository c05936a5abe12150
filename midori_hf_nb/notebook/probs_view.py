"""``token_view(response)``: an answer's tokens shaded by probability, with their alternatives.

Each token is shaded by how unlikely it was (``shade="probability"``: ``1 - p``; ``"surprisal"``:
``-log2 p`` bits, full colour at 8 bits), from the model's raw distribution or, with
``processed=True``, the distribution it was drawn from. Hovering a token, or focusing it with the
keyboard (Tab), shows its probabilities, rank, the entropy of its step, the grammar's pressure
under a constraint, and its top-k alternatives. Under the text: an entropy strip (one bar per token)
and the least confident tokens; with prompt probabilities, the prompt's perplexity.

The view is static HTML: it needs no kernel and no script, so it works in a saved notebook and in
exports. One small ``<style>`` block scoped to ``.midori-tokens`` shows a token's card on
``:hover`` and ``:focus-within``; the card carries the ``hidden`` attribute, so where a sanitizer
removes style blocks (an untrusted notebook) the cards stay hidden and each token's ``title``
tooltip shows the same numbers. Colours are translucent and the card takes JupyterLab's theme
variables, so the view reads on light and dark themes. Every token text, alternatives included,
is model output and escaped (:func:`~.escaping.escape_html`).

:func:`branch_view` shows an answer and a branch of it (``response.branch(step, token)``) side by
side; ``branchable=True`` renders each alternative as a button carrying its step and token id, which
the chat panel turns into a branch.
"""

from __future__ import annotations

import math
from typing import Any

from ..logprobs import Logprobs, LogprobsError, TokenLogprob, logprobs_of
from .escaping import NO_MATH_CLASS, escape_html

#: Shading modes of :func:`token_view`.
SHADES = ("probability", "surprisal")
#: The most tokens a view draws (the rest is summed up in a line).
MAX_VIEW_TOKENS = 4_000
#: Surprisal (bits) shown at full colour.
FULL_SURPRISAL_BITS = 8.0
#: Entropy (nats) of a full-height bar of the entropy strip.
FULL_ENTROPY = 4.0

_CSS = (".midori-tokens .mt-tok{position:relative;border-radius:3px;cursor:default}"
        ".midori-tokens .mt-tok:focus{outline:2px solid rgba(80,140,255,0.8);outline-offset:1px}"
        ".midori-tokens .mt-tok:hover>.mt-card,.midori-tokens .mt-tok:focus-within>.mt-card"
        "{display:block !important}"
        ".midori-tokens .mt-alt{font:inherit;padding:0 4px;margin:1px 0;border:1px solid rgba(128,128,128,0.45);"
        "border-radius:3px;background:transparent;color:inherit;cursor:pointer;text-align:left}"
        ".midori-tokens .mt-alt:hover,.midori-tokens .mt-alt:focus{background:rgba(80,140,255,0.18)}")
STYLE_BOX = "font-family:inherit;line-height:1.45;max-width:100%"
STYLE_TEXT = "white-space:pre-wrap;word-break:break-word;line-height:1.9"
STYLE_CARD = ("position:absolute;left:0;top:1.7em;z-index:20;min-width:16em;max-width:28em;padding:4px 8px;"
              "white-space:normal;font-size:0.85em;line-height:1.4;text-align:left;font-weight:400;"
              "background:var(--jp-layout-color1,#fff);color:var(--jp-ui-font-color1,#1a1a1a);"
              "border:1px solid var(--jp-border-color1,rgba(128,128,128,0.6));border-radius:4px;"
              "box-shadow:0 2px 8px rgba(0,0,0,0.25)")
STYLE_NOTE = "opacity:0.7;font-size:0.85em;margin:0.2em 0"
STYLE_STRIP = "display:flex;align-items:flex-end;gap:1px;height:24px;margin:0.4em 0 0.2em 0;overflow:hidden"
STYLE_CELL = "padding:0 6px 0 0;text-align:left;white-space:nowrap"
#: The colour of doubt (translucent, so the text's own colour stays readable on light and dark themes).
DOUBT_RGB = "235,100,40"
PRESSURE_STYLE = "border-bottom:2px dotted rgba(150,80,220,0.9)"


def shown_text(text: str, raw: list[int] | None = None) -> str:
    """A token's text as shown in a card or a list: whitespace made visible, bytes of a partial
    character as ``\\xNN`` (plain text: escape it)."""
    if "\ufffd" in text and raw:
        return "".join(f"\\x{b:02x}" for b in raw)
    return text.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\t", "\u21e5") or "\u2205"


def _percent(logprob: float | None) -> str:
    if logprob is None:
        return "0%"
    value = math.exp(logprob) * 100
    return f"{value:.1f}%" if value >= 0.1 else f"{value:.2g}%"


def _doubt(record: TokenLogprob, shade: str, processed: bool) -> float:
    """How strongly a token is shaded, 0 to 1 (a server's record, which has no processed value,
    by its raw one)."""
    processed = processed and (record.processed_logprob is not None or record.rank is not None)
    logprob = record.processed_logprob if processed else record.logprob
    if logprob is None:
        return 1.0 if processed and record.logprob is not None else 0.0
    if shade == "surprisal":
        return min(1.0, -logprob / math.log(2) / FULL_SURPRISAL_BITS)
    return 1.0 - math.exp(logprob)


def _summary_lines(step: int, record: TokenLogprob) -> list[str]:
    """A token's numbers as plain lines (the card's head and the ``title`` tooltip)."""
    lines = [f"step {step}: {shown_text(record.token, record.bytes)} (id {record.id})" if record.id is not None
             else f"step {step}: {shown_text(record.token, record.bytes)}"]
    numbers = [f"p {_percent(record.logprob)}"]
    if record.processed_logprob is not None or record.rank is not None:
        numbers.append(f"sampled from {_percent(record.processed_logprob)}")
    if record.rank is not None:
        numbers.append(f"rank {record.rank}")
    if record.entropy is not None:
        numbers.append(f"entropy {record.entropy:.2f} nats")
    lines.append(" · ".join(numbers))
    if record.allowed is not None:
        pressure = f"the constraint allowed {record.allowed} token{'s' if record.allowed != 1 else ''}"
        if record.top_forbidden:
            pressure += "; it forbade the model's first choice"
        lines.append(pressure)
    return lines


def _title(step: int, record: TokenLogprob) -> str:
    lines = _summary_lines(step, record)
    for alt in record.top_logprobs:
        lines.append(f"  {shown_text(alt.token, alt.bytes)}: {_percent(alt.logprob)}"
                     + (f" (sampled from {_percent(alt.processed_logprob)})" if record.rank is not None else ""))
    return "\n".join(lines)


def _card(step: int, record: TokenLogprob, branchable: bool) -> str:
    head = "<br>".join(escape_html(line) for line in _summary_lines(step, record))
    rows = []
    for alt in record.top_logprobs:
        label = escape_html(shown_text(alt.token, alt.bytes))
        chosen = _same(alt, record)
        if branchable and alt.id is not None and not chosen:
            label = (f'<button type="button" class="mt-alt" data-step="{step}" data-token="{alt.id}" '
                     f'title="continue the answer from this token">{label}</button>')
        elif chosen:
            label = f"<b>{label}</b>"
        processed = f"<td style=\"{STYLE_CELL}\">{_percent(alt.processed_logprob)}</td>" if record.rank is not None \
            else ""
        rows.append(f'<tr><td style="{STYLE_CELL}">{label}</td><td style="{STYLE_CELL}">{_percent(alt.logprob)}</td>'
                    f"{processed}</tr>")
    table = ""
    if rows:
        sampled = f'<th style="{STYLE_CELL}">sampled</th>' if record.rank is not None else ""
        table = (f'<table class="mt-alts" style="border-collapse:collapse;margin-top:3px"><thead><tr>'
                 f'<th style="{STYLE_CELL}">alternative</th><th style="{STYLE_CELL}">p</th>{sampled}</tr></thead>'
                 f"<tbody>{''.join(rows)}</tbody></table>")
    return f'<span class="mt-card" role="tooltip" hidden style="{STYLE_CARD}">{head}{table}</span>'


def _token_html(step: int, record: TokenLogprob, shade: str, processed: bool, branchable: bool,
                marked: bool) -> str:
    alpha = 0.08 + 0.62 * _doubt(record, shade, processed)
    style = f"background:rgba({DOUBT_RGB},{alpha:.3f})"
    if record.top_forbidden:
        style += ";" + PRESSURE_STYLE
    if marked:
        style += ";outline:2px solid rgba(80,140,255,0.9)"
    return (f'<span class="mt-tok" tabindex="0" data-step="{step}" style="{style}" '
            f'title="{escape_html(_title(step, record))}">{escape_html(record.token)}'
            f"{_card(step, record, branchable)}</span>")


def _strip(content: list[TokenLogprob]) -> str:
    bars = []
    for step, record in enumerate(content):
        entropy = record.entropy
        if entropy is None:
            continue
        height = max(2, min(24, round(24 * entropy / FULL_ENTROPY)))
        bars.append(f'<span style="flex:1 1 0;min-width:1px;max-width:8px;height:{height}px;'
                    f'background:rgba({DOUBT_RGB},0.75)" title="{escape_html(f"step {step}: entropy {entropy:.2f} nats")}">'
                    "</span>")
    if not bars:
        return ""
    return (f'<div class="mt-entropy" style="{STYLE_STRIP}" title="entropy of each step (taller: the model was '
            f'less sure what came next)">{"".join(bars)}</div>')


def _same(alternative: Any, record: TokenLogprob) -> bool:
    """Whether an alternative is the generated token itself."""
    if alternative.id is not None and record.id is not None:
        return alternative.id == record.id
    return alternative.token == record.token


def _least(found: Logprobs, count: int, processed: bool) -> str:
    items = []
    for step, record in found.least_confident(count, processed=processed):
        if record.logprob is None:
            continue
        best = next((alt for alt in record.top_logprobs if not _same(alt, record)), None)
        rival = f"; first choice {escape_html(shown_text(best.token, best.bytes))} {_percent(best.logprob)}" \
            if best is not None and (record.rank or 1) > 1 else ""
        items.append(f"<li>step {step}: <b>{escape_html(shown_text(record.token, record.bytes))}</b> "
                     f"{_percent(record.processed_logprob if processed else record.logprob)}{rival}</li>")
    if not items:
        return ""
    return (f'<div class="mt-least" style="font-size:0.88em"><div style="{STYLE_NOTE}">least confident tokens</div>'
            f'<ol style="margin:0;padding-left:1.6em">{"".join(items)}</ol></div>')


def token_view_html(source: Any, *, shade: str = "probability", processed: bool = False, least: int = 5,
                    title: str | None = None, branchable: bool = False, mark: int | None = None) -> str:
    """The HTML of :func:`token_view` (see the module docstring); ``mark`` outlines one step."""
    if shade not in SHADES:
        raise ValueError(f"shade={shade!r} is not allowed: expected one of {', '.join(map(repr, SHADES))}")
    if not isinstance(processed, bool):
        raise ValueError(f"processed={processed!r} is not allowed: expected True or False")
    if isinstance(least, bool) or not isinstance(least, int) or least < 0:
        raise ValueError(f"least={least!r} is not allowed: expected a whole number >= 0")
    parts = [f'<div class="midori-tokens {NO_MATH_CLASS}" style="{STYLE_BOX}"><style>{_CSS}</style>']
    if title:
        parts.append(f'<div style="{STYLE_NOTE}">{escape_html(title)}</div>')
    try:
        found = logprobs_of(source)
    except LogprobsError as exc:
        parts.append(f'<div class="mt-note" style="{STYLE_NOTE}">{escape_html(exc)}</div></div>')
        return "".join(parts)
    if found is None:
        parts.append(f'<div style="{STYLE_NOTE}">no token probabilities: ask with logprobs=True '
                     "(or top_logprobs=k)</div></div>")
        return "".join(parts)
    if found.note:
        parts.append(f'<div class="mt-note" style="{STYLE_NOTE}">{escape_html(found.note)}</div>')
    content = found.content[:MAX_VIEW_TOKENS]
    legend = ("shaded by " + ("surprisal (-log2 p)" if shade == "surprisal" else "how unlikely each token was (1 - p)")
              + (" in the distribution sampled from" if processed else "") + " · hover or focus a token for its "
              "alternatives")
    if any(record.top_forbidden for record in content):
        legend += " · dotted: the constraint forbade the model's first choice"
    if content:
        parts.append(f'<div style="{STYLE_NOTE}">{escape_html(legend)}</div>')
    parts.append(f'<div class="mt-text" style="{STYLE_TEXT}">')
    parts.extend(_token_html(step, record, shade, processed, branchable, step == mark)
                 for step, record in enumerate(content))
    parts.append("</div>")
    if len(found.content) > len(content):
        parts.append(f'<div style="{STYLE_NOTE}">{len(found.content) - len(content)} more tokens not drawn</div>')
    parts.append(_strip(content))
    if least:
        parts.append(_least(found.with_content(content), least, processed))
    facts = []
    if found.perplexity is not None:
        facts.append(f"answer perplexity {found.perplexity:.2f} over {len(found.content)} tokens")
    if found.prompt is not None and found.prompt.perplexity is not None:
        facts.append(f"prompt perplexity {found.prompt.perplexity:.2f} over {len(found.prompt.tokens)} tokens")
    if found.branch is not None:
        facts.append(f"branched at step {found.branch['step']} (token id {found.branch['token']})")
    if facts:
        parts.append(f'<div class="mt-facts" style="{STYLE_NOTE}">{escape_html(" · ".join(facts))}</div>')
    parts.append("</div>")
    return "".join(parts)


class TokenView:
    """A displayable token view (``_repr_html_``); ``html`` is its markup. See :func:`token_view`."""

    def __init__(self, html: str) -> None:
        self.html = html

    def _repr_html_(self) -> str:
        return self.html


def token_view(source: Any, *, shade: str = "probability", processed: bool = False, least: int = 5,
               title: str | None = None) -> TokenView:
    """The answer's tokens shaded by probability (or ``shade="surprisal"``), each with its
    alternatives on hover and keyboard focus, an entropy strip and the ``least`` least confident
    tokens (see the module docstring). ``processed=True`` shades by the distribution the tokens
    were drawn from (temperature, top-k/top-p, penalties, the constraint).

    ``source``: a response asked with ``logprobs=True``/``top_logprobs=k``, its metadata, a
    comparison row, or a :class:`~midori_hf_nb.logprobs.Logprobs`. Raises ``ValueError`` naming a
    bad option.
    """
    return TokenView(token_view_html(source, shade=shade, processed=processed, least=least, title=title))


def has_logprobs(source: Any) -> bool:
    """Whether ``source`` carries readable token probabilities (never raises)."""
    try:
        return logprobs_of(source) is not None
    except LogprobsError:
        return False


def branch_view(original: Any, branched: Any, *, shade: str = "probability") -> TokenView:
    """An answer and its branch (from ``original.branch(step, token)``) side by side, the step
    where they part outlined in both."""
    found = logprobs_of(branched)
    step = found.branch["step"] if found is not None and found.branch is not None else None
    left = token_view_html(original, shade=shade, least=3, title="original", mark=step)
    right = token_view_html(branched, shade=shade, least=3, mark=step,
                            title="branch" + (f" from step {step}" if step is not None else ""))
    return TokenView('<div class="midori-branches" style="display:flex;gap:1em;flex-wrap:wrap;align-items:flex-start">'
                     f'<div style="flex:1 1 22em;min-width:0">{left}</div>'
                     f'<div style="flex:1 1 22em;min-width:0">{right}</div></div>')


__all__ = ["FULL_ENTROPY", "FULL_SURPRISAL_BITS", "MAX_VIEW_TOKENS", "SHADES", "TokenView", "branch_view",
           "has_logprobs", "shown_text", "token_view", "token_view_html"]
