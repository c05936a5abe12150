"""Reasoning blocks in raw model text: ``<think>``, ``<thinking>``, ``<reasoning>`` and
``<chain_of_thought>``, including an unclosed tag at the end of a truncated output and a lone
closing tag (templates that open the thinking block in the prompt). Tags match case-insensitively.

Blocks are found in linear time: the search for a block's closing tag remembers, per tag, where
the next one is (or that there is none), so many unclosed tags do not rescan the text.
"""

from __future__ import annotations

import re
from typing import Iterator

REASONING_TAGS = ("think", "thinking", "reasoning", "chain_of_thought")
_ALTERNATIVES = "|".join(f"({tag})" for tag in REASONING_TAGS)
#: Any opening reasoning tag; :func:`tag_of` names the tag of a match.
OPEN_TAG_RE = re.compile(rf"<(?:{_ALTERNATIVES})>", re.IGNORECASE)
#: Any closing reasoning tag.
CLOSE_TAG_RE = re.compile(rf"</(?:{_ALTERNATIVES})>", re.IGNORECASE)
_CLOSE_RES = {tag: re.compile(rf"</{tag}>", re.IGNORECASE) for tag in REASONING_TAGS}


def tag_of(match: re.Match[str]) -> str:
    """The reasoning tag (lower case) of a match of :data:`OPEN_TAG_RE` or :data:`CLOSE_TAG_RE`."""
    return REASONING_TAGS[(match.lastindex or 1) - 1]


def close_tag_re(tag: str) -> re.Pattern[str]:
    """The closing tag of ``tag`` (case-insensitive)."""
    return _CLOSE_RES[tag]


def iter_blocks(text: str) -> Iterator[tuple[int, int, int, int]]:
    """The closed blocks of ``text``, leftmost first and not overlapping, as
    ``(start, end, inner_start, inner_end)``: an opening tag and the nearest closing tag of the
    same name after it. An opening tag with no closing tag after it starts no block."""
    next_close: dict[str, int] = {}  # tag -> the first closing tag at or after the last search (-1: none)
    pos = 0
    while True:
        match = OPEN_TAG_RE.search(text, pos)
        if match is None:
            return
        tag = tag_of(match)
        close = next_close.get(tag)
        if close is None or 0 <= close < match.end():
            found = _CLOSE_RES[tag].search(text, match.end())
            close = next_close[tag] = found.start() if found else -1
        if close < 0:
            pos = match.start() + 1
            continue
        end = close + len(tag) + 3
        yield match.start(), end, match.end(), close
        pos = end


def _lone_close(text: str) -> re.Match[str] | None:
    """A closing tag before any opening tag: the template opened the block in the prompt."""
    first_close = CLOSE_TAG_RE.search(text)
    if first_close is None:
        return None
    first_open = OPEN_TAG_RE.search(text, 0, first_close.start())
    return first_close if first_open is None else None


def extract_reasoning_blocks(text: str) -> tuple[list[str], str]:
    """Split ``text`` into its reasoning blocks and the remaining answer.

    Returns ``(blocks, answer)``; ``blocks`` keeps each block's text in order.
    """
    blocks: list[str] = []
    lone = _lone_close(text)
    if lone:
        blocks.append(text[: lone.start()].strip())
        text = text[lone.end() :]
    kept, last = [], 0
    for start, end, inner_start, inner_end in iter_blocks(text):
        blocks.append(text[inner_start:inner_end].strip())
        kept.append(text[last:start])
        last = end
    kept.append(text[last:])
    text = "".join(kept)
    dangling = OPEN_TAG_RE.search(text)  # unclosed tag at the end of a truncated output
    if dangling:
        blocks.append(text[dangling.end() :].strip())
        text = text[: dangling.start()]
    return [b for b in blocks if b], text.strip()


def extract_reasoning(text: str) -> tuple[str, str]:
    """Return ``(thinking, answer)`` from raw model text.

    Thinking blocks are joined with blank lines; the answer is the text with them removed.

    >>> extract_reasoning("<think>2+2 is 4</think>The answer is 4.")
    ('2+2 is 4', 'The answer is 4.')
    """
    blocks, answer = extract_reasoning_blocks(text)
    return "\n\n".join(blocks), answer


def reasoning_spans(text: str) -> list[tuple[int, int]]:
    """Where the reasoning is in ``text`` (as :func:`extract_reasoning_blocks` sees it), as
    ``(start, end)`` spans, not sorted: tool calls there are drafts, not calls."""
    spans: list[tuple[int, int]] = []
    lone = _lone_close(text)
    lone_end = lone.end() if lone else 0
    if lone:
        spans.append((0, lone_end))
    blocks = [(start, end) for start, end, _, _ in iter_blocks(text) if start >= lone_end]
    spans += blocks
    k = 0
    for match in OPEN_TAG_RE.finditer(text, lone_end):
        pos = match.start()
        while k < len(blocks) and blocks[k][1] <= pos:
            k += 1
        if k < len(blocks) and blocks[k][0] <= pos:
            continue
        spans.append((pos, len(text)))  # unclosed tag: reasoning runs to the end
        break
    return spans
