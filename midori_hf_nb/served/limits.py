"""The bounds on what a server may send for one answer. A server is outside input: a broken or
hostile one must never make a call run for ever, fill the memory, or raise a raw exception.

- The token budget is counted on the client: every chunk that brings text (answer, reasoning or
  a tool call's name or arguments) counts as one token, the way servers stream (one chunk per
  token; a chunk of several tokens counts as one, so a server that keeps to ``max_tokens`` is
  never cut). When a server sends more than ``max_new_tokens`` such chunks, the stream is
  closed and the answer ends with ``finish_reason="length"`` and a note in ``stats.notes``.
  Reasoning counts against the same budget, as servers count it.
- :data:`MAX_EVENT_BYTES`: one server-sent event (and one line of the stream) at most; longer
  ends the answer with ``finish_reason="error"``, the partial answer kept.
- :data:`MAX_STREAM_BYTES`: the whole stream, decompressed, at most.
- :data:`MAX_ANSWER_CHARS`: the answer's text, reasoning and tool-call text together, at most.
- ``deadline`` (:class:`~.config.OpenAIConfig`, default :data:`DEFAULT_DEADLINE` seconds): the
  whole call at most, however slowly the pieces come (``timeout`` bounds the wait for each).
- Usage counts a server reports are used only when they can be right: whole numbers from 0,
  ``completion_tokens`` at most the budget asked for, ``prompt_tokens`` at most
  :data:`MAX_PROMPT_TOKENS`; otherwise the client's count stands (and a note says so).

A compressed body is inflated by the HTTP client in pieces of at most 1 MiB (``httpx2``; older
``httpx`` releases inflate each network read at once), and the event bound applies as the
pieces arrive, so a small compressed body that inflates to a huge line costs a few MiB at most.
"""

from __future__ import annotations

#: bytes of one server-sent event (or one line of the stream)
MAX_EVENT_BYTES = 4 * 2**20
#: bytes of one answer's stream, decompressed
MAX_STREAM_BYTES = 64 * 2**20
#: characters of one answer: text, reasoning and tool-call text together
MAX_ANSWER_CHARS = 4_000_000
#: seconds one call may take in all (the default of ``OpenAIConfig.deadline``)
DEFAULT_DEADLINE = 600.0
#: the most ``prompt_tokens`` a server's usage may report and be believed
MAX_PROMPT_TOKENS = 100_000_000

__all__ = ["DEFAULT_DEADLINE", "MAX_ANSWER_CHARS", "MAX_EVENT_BYTES", "MAX_PROMPT_TOKENS", "MAX_STREAM_BYTES"]
