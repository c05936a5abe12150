"""Code a model wrote without a code fence, found and fenced before an answer is rendered as Markdown.

Small models often write code as plain lines. Rendered as Markdown those lines lose their line
breaks and indentation, show in a proportional font, and a ``# Example usage:`` comment becomes a
large heading. :func:`fence_unfenced_code` puts such code into a fence first, by this rule:

* Only lines outside code fences are looked at; fenced code is never changed.
* A **block starts** at a line that begins in column 0 and looks like code (:func:`looks_like_code`):
  a Python or C-family statement (``def``/``class``/``import``/``from ... import``/``return``/
  ``if ...:``/``for ... in ...:``/``while ...:``/``try:``/``with ...:``/``@decorator``,
  ``function``, ``const``/``let``/``var``, ``#include``, ``public``/``private``/``static``...),
  an assignment (``name = ...``, ``name += ...``), a call statement (``name(...)`` or
  ``obj.method(...)``, optionally ending in ``;``), a line ending in ``{``, or a lone closing
  bracket; and that comes first in the answer or after a blank line, a line ending in ``:``
  ("Here is the code:") or a heading (never in the middle of a paragraph). A ``#`` or ``//``
  comment line directly above such a line (no blank line between) starts the block too.
* The block **goes on** over lines that are indented, look like code, or are comments directly
  followed by such a line, and over blank lines when the next non-blank line would go on too.
  Any other line (prose, a list item, a heading followed by a blank line) ends it.
* The block is fenced with a fence longer than any backtick run in it, tagged ``python`` when a
  line is Python-only (``def``, ``class``, ``import``, ``elif``, ``print(``, a ``:`` ending a
  block statement), ``javascript`` for ``function``/``const``/``let``/``console.``, else untagged.

Prose is never pulled in: a sentence begins with a capital letter or a word followed by more
words, which none of the patterns match, and a Markdown heading followed by a blank line stays a
heading. Everything is linear in the length of the text.
"""

from __future__ import annotations

import re

from .escaping import normalise_newlines

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_BLOCK_KEYWORD = r"(?:if|elif|while|with|async\s+with|async\s+for|except)\b.*:"

#: Lines that look like code (matched against the line with its indentation removed).
_CODE_PATTERNS = [
    re.compile(r"(?:async\s+)?def\s+\w+\s*\(.*\)\s*(?:->.*)?:\s*(?:#.*)?$"),
    re.compile(r"class\s+\w+\s*(?:\(.*\))?\s*:\s*(?:#.*)?$"),
    re.compile(r"(?:import\s+[\w.]+(?:\s+as\s+\w+)?(?:\s*,\s*[\w.]+)*|from\s+[\w.]+\s+import\s+.+)\s*;?\s*$"),
    re.compile(_BLOCK_KEYWORD + r"\s*(?:#.*)?$"),
    re.compile(r"for\s+\(?\w+(?:\s*,\s*\w+)*\)?\s+in\s+.+:\s*(?:#.*)?$"),
    re.compile(r"(?:else|try|finally)\s*:\s*(?:#.*)?$"),
    re.compile(r"(?:return|yield|raise|assert|del|global|nonlocal)\b(?:\s+\S.*)?$"),
    re.compile(r"(?:pass|break|continue)\s*(?:#.*)?$"),
    re.compile(r"@[\w.]+(?:\(.*\))?\s*$"),
    re.compile(r"(?:function\s*\w*\s*\(|(?:const|let|var)\s+\w+\s*=|#include\s*[<\"]|"
               r"(?:public|private|protected|static)\s+\w|int\s+main\s*\(|fn\s+\w+\s*\()"),
    re.compile(r"[A-Za-z_][\w.]*(?:\[[^\]\n]*\])?\s*(?:[-+*/%|&^]|//|\*\*)?=(?!=)\s*\S.*$"),
    re.compile(r"(?:await\s+)?[A-Za-z_][\w.]*\(.*\)\s*;?\s*(?:#.*|//.*)?$"),
    re.compile(r".*[{]\s*$"),
    re.compile(r"[})\]];?,?\s*$"),
]
_COMMENT = re.compile(r"(?:#(?:[ \t!]|$)|//)")
#: Longer lines are never taken for code (keeps the patterns' work per line bounded).
MAX_CODE_LINE = 1000
_PYTHON = re.compile(r"^\s*(?:def |class |import |from \S+ import |elif |print\()|:\s*(?:#.*)?$")
_JAVASCRIPT = re.compile(r"^\s*(?:function\b|const |let |var )|console\.")


def looks_like_code(line: str) -> bool:
    """Whether ``line`` (its indentation ignored) is a statement of code by the module's rule."""
    stripped = line.strip()
    return bool(stripped) and len(stripped) <= MAX_CODE_LINE and any(p.match(stripped) for p in _CODE_PATTERNS)


def _is_comment(line: str) -> bool:
    return bool(_COMMENT.match(line.strip())) and not line.startswith((" ", "\t"))


def _language(lines: list[str]) -> str:
    if any(_JAVASCRIPT.search(line) for line in lines):
        return "javascript"
    if any(_PYTHON.search(line) for line in lines if not _is_comment(line)):
        return "python"
    return ""


def _fence(lines: list[str]) -> list[str]:
    runs = [len(r) for line in lines for r in re.findall(r"`+", line)]
    fence = "`" * max(3, max(runs, default=0) + 1)
    return [fence + _language(lines), *lines, fence]


def _code_spans(lines: list[str]) -> list[tuple[int, int]]:
    """(start, end) line ranges of unfenced code among ``lines`` (none of them inside a fence)."""
    count = len(lines)
    indented = [line[:1] in (" ", "\t") for line in lines]
    code = [looks_like_code(line) and not _is_comment(line) for line in lines]
    leads = [False] * count  # a column-0 comment directly above code (or above such a comment)
    for i in range(count - 2, -1, -1):
        leads[i] = _is_comment(lines[i]) and (code[i + 1] or leads[i + 1])
    spans: list[tuple[int, int]] = []
    i = 0
    while i < count:
        after_break = i == 0 or not lines[i - 1].strip() or lines[i - 1].rstrip().endswith(":") \
            or lines[i - 1].lstrip().startswith("#")
        if indented[i] or not (code[i] or leads[i]) or not after_break:
            i += 1
            continue
        end = j = i + 1
        while j < count:
            if lines[j].strip() and not (indented[j] or code[j] or leads[j]):
                break
            if lines[j].strip():
                end = j + 1
            j += 1
        spans.append((i, end))
        i = end
    return spans


def fence_unfenced_code(text: str) -> str:
    """``text`` with code the model left outside fences put into fences (the module's rule);
    everything else, fenced code included, is kept as it is."""
    text = normalise_newlines(text)
    lines = text.split("\n")
    out: list[str] = []
    outside: list[str] = []
    fence: str | None = None

    def flush() -> None:
        spans = _code_spans(outside)
        last = 0
        for start, end in spans:
            out.extend(outside[last:start])
            out.extend(_fence(outside[start:end]))
            last = end
        out.extend(outside[last:])
        outside.clear()

    for line in lines:
        match = _FENCE.match(line)
        if fence is None:
            if match:
                flush()
                fence = match.group(1)
                out.append(line)
            else:
                outside.append(line)
        else:
            out.append(line)
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
                    and not match.group(2).strip():
                fence = None
    flush()
    return "\n".join(out)


__all__ = ["MAX_CODE_LINE", "fence_unfenced_code", "looks_like_code"]
