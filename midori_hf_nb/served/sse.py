"""Reading a server's event stream as the Server-Sent Events specification says, within bounds.

The ``openai`` client's own reader decodes each line as strict UTF-8 (invalid bytes raise
``UnicodeDecodeError``), keeps a leading byte-order mark as part of the first field name (the
first event is lost), dispatches events without data (``id:`` lines alone, which then fail as
JSON) and buffers a line of any length. So the served agent reads the raw bytes of the response
itself (``with_streaming_response``) with :class:`SSEDecoder`, which follows the specification
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):

- one leading UTF-8 byte-order mark is removed;
- lines end at CR, LF or CRLF; each is decoded with UTF-8, invalid bytes becoming U+FFFD (the
  specification's "UTF-8 decode"); :attr:`SSEDecoder.replaced` says it happened;
- comment lines (``:``) and the ``id``, ``retry`` and unknown fields are ignored (a stream of
  one answer is never resumed); ``event`` sets the event's type; ``data`` lines are joined with
  newlines; a blank line dispatches the event, but only when it has data;
- an event left unfinished when the stream ends is dropped.

Bounds (:mod:`.limits`): one line or event at most :data:`~.limits.MAX_EVENT_BYTES`, the whole
stream at most :data:`~.limits.MAX_STREAM_BYTES`; past either, :class:`StreamLimitError`.
"""

from __future__ import annotations

import re

from .limits import MAX_EVENT_BYTES, MAX_STREAM_BYTES

_BOM = b"\xef\xbb\xbf"
_LINE_END = re.compile(rb"\r\n|\r|\n")
_REPLACEMENT = "\ufffd"


class MalformedStreamError(Exception):
    """The server's stream cannot be read as an answer (the message says how)."""


class StreamLimitError(MalformedStreamError):
    """The server's stream passed one of the bounds of :mod:`.limits`."""


class SSEDecoder:
    """Bytes of an event stream in, ``(event type, data)`` of each complete event out."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES, max_stream_bytes: int = MAX_STREAM_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self.max_stream_bytes = max_stream_bytes
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer known to hold no line end
        self._started = False
        self._data: list[str] = []
        self._data_bytes = 0
        self._type = ""
        #: bytes received so far (decompressed)
        self.received = 0
        #: some bytes were not UTF-8 and were replaced by U+FFFD
        self.replaced = False

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        """The events completed by ``chunk``."""
        self.received += len(chunk)
        if self.received > self.max_stream_bytes:
            raise StreamLimitError(f"the stream passed {self.max_stream_bytes:,} bytes")
        buffer = self._buffer
        buffer += chunk
        if not self._started:
            if len(buffer) < len(_BOM) and _BOM.startswith(bytes(buffer)):
                return []  # maybe a byte-order mark, split
            self._started = True
            if buffer.startswith(_BOM):
                del buffer[:len(_BOM)]
        events: list[tuple[str, str]] = []
        start = 0
        position = max(0, self._scanned - 1)
        while True:
            found = _LINE_END.search(buffer, position)
            if found is None:
                break
            if found.group() == b"\r" and found.end() == len(buffer):
                break  # a CR at the end: an LF may follow in the next chunk
            self._line(bytes(buffer[start:found.start()]), events)
            start = position = found.end()
        if start:
            del buffer[:start]
        self._scanned = len(buffer)
        if len(buffer) > self.max_event_bytes:
            raise StreamLimitError(f"one line of the stream is longer than {self.max_event_bytes:,} bytes")
        return events

    def finish(self) -> None:
        """At the end of the stream: an unfinished event (and line) is dropped."""
        self._buffer.clear()
        self._data, self._data_bytes, self._type = [], 0, ""

    def _line(self, raw: bytes, events: list[tuple[str, str]]) -> None:
        text = raw.decode("utf-8", errors="replace")
        if _REPLACEMENT in text and _REPLACEMENT.encode() not in raw:
            self.replaced = True
        if not text:  # a blank line: dispatch the event (only when it has data)
            if self._data:
                data = "\n".join(self._data)
                if data:
                    events.append((self._type or "message", data))
            self._data, self._data_bytes, self._type = [], 0, ""
            return
        if text.startswith(":"):
            return
        name, colon, value = text.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data_bytes += len(raw)
            if self._data_bytes > self.max_event_bytes:
                raise StreamLimitError(f"one event of the stream is longer than {self.max_event_bytes:,} bytes")
            self._data.append(value)
        elif name == "event":
            self._type = value
        # "id", "retry" and unknown fields: ignored


__all__ = ["MalformedStreamError", "SSEDecoder", "StreamLimitError"]
