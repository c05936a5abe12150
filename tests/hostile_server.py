"""An OpenAI-compatible server that misbehaves in one documented way, for the hostile-input tests
of the served agent.

Run as a process: ``python hostile_server.py PORT MODE``. ``GET /health`` answers 200 once it
listens; ``GET /v1/models`` lists ``hostile-model`` (in mode ``key-in-models`` also a model id
that carries the key the request was sent with); ``POST /v1/chat/completions`` streams an
answer in the way ``MODE`` says:

==================  ===========================================================================
``ok``              a well-formed stream: "Hello world, this is fine." in pieces, with usage
``non-json``        two pieces, then a ``data:`` line that is not JSON (with the key sent), then more
``sse-fields``      ``id:``, ``event:``, ``retry:`` and comment lines around every event, blank
                    lines doubled, an event with an empty ``data:``
``invalid-utf8``    a piece whose bytes are not UTF-8 (``\\xff\\xfe``) between good pieces
``bom``             a UTF-8 byte-order mark before the first event ("Hel" is the first piece)
``negative-usage``  a good answer with ``completion_tokens: -131`` and ``prompt_tokens: -7``
``absurd-usage``    a good answer with ``completion_tokens: 10**15``
``endless``         ignores ``max_tokens``: content pieces for ever
``endless-reasoning``  ignores ``max_tokens``: ``reasoning_content`` pieces for ever
``trickle``         a valid stream sent one byte every 0.5 s, for ever
``huge-pieces``     ignores sizes: pieces of 512 KiB of text each, for ever
``gzip-bomb``       ``Content-Encoding: gzip``; the body inflates to one 300 MB line
``key-in-models``   the chat request is refused with 404; ``/v1/models`` lists a model id with the key
``refuse-key``      the chat request is refused with 401, the message repeating the key sent
``echo-key``        echoes the key sent: in a response header, split across two content pieces,
                    in reasoning and in a tool call's arguments
``no-index``        tool-call deltas without ``index``: two calls, told apart by ``id`` only,
                    the later pieces of each without ``id`` either
``nan-arguments``   tool calls whose arguments hold ``NaN`` and ``Infinity``
==================  ===========================================================================
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "hostile-model"


def chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None) -> dict:
    """One ``chat.completion.chunk`` object."""
    body: dict = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
                  "choices": [] if delta is None and finish is None else
                  [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return body


def event(obj: dict | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj)
    return f"data: {data}\n\n".encode()


def pieces(texts: list[str], usage: dict | None = None) -> list[bytes]:
    """A well-formed stream of ``texts`` (the role with the first, a stop, usage, [DONE])."""
    out = [event(chunk({"role": "assistant", "content": texts[0]}))]
    out += [event(chunk({"content": t})) for t in texts[1:]]
    out.append(event(chunk(finish="stop")))
    out.append(event(chunk(usage=usage or {"prompt_tokens": 7, "completion_tokens": len(texts),
                                           "total_tokens": 7 + len(texts)})))
    out.append(b"data: [DONE]\n\n")
    return out


GOOD = ["Hel", "lo", " world", ",", " this", " is", " fine", "."]


def tool_delta(index: int | None, call_id: str | None, name: str | None, arguments: str) -> dict:
    item: dict = {"type": "function", "function": {"arguments": arguments}}
    if index is not None:
        item["index"] = index
    if call_id is not None:
        item["id"] = call_id
    if name is not None:
        item["function"]["name"] = name
    return {"tool_calls": [item]}


def make_handler(mode: str) -> type[BaseHTTPRequestHandler]:
    class Hostile(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the body ends when the connection closes

        def log_message(self, *args) -> None:
            pass

        def _key(self) -> str:
            return self.headers.get("Authorization", "").removeprefix("Bearer ")

        def _json(self, status: int, obj: dict) -> None:
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _start_stream(self, headers: dict | None = None) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()

        def _send(self, *parts: bytes, pause: float = 0.0) -> None:
            for part in parts:
                self.wfile.write(part)
                self.wfile.flush()
                if pause:
                    time.sleep(pause)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/health":
                self._json(200, {"ok": True})
                return
            if self.path.rstrip("/") == "/v1/models":
                ids = [MODEL]
                if mode == "key-in-models":  # the model asked for is not among them
                    ids = ["other-model", f"ft:other-model:{self._key()}:v1"]
                self._json(200, {"object": "list", "data": [{"id": i, "object": "model", "owned_by": "x"} for i in ids]})
                return
            self._json(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length) or b"{}")
            if mode == "key-in-models":
                self._json(404, {"error": {"message": f"model {request.get('model')!r} does not exist"}})
                return
            if mode == "refuse-key":
                self._json(401, {"error": {"message": f"Incorrect API key provided: {self._key()}",
                                           "code": "invalid_api_key"}})
                return
            try:
                getattr(self, "mode_" + mode.replace("-", "_"))()
            except (BrokenPipeError, ConnectionResetError):  # the client closed the stream: it may
                pass

        # ---------------------------------------------------------------- the modes

        def mode_ok(self) -> None:
            self._start_stream()
            self._send(*pieces(GOOD))

        def mode_non_json(self) -> None:
            self._start_stream()
            good = pieces(GOOD)
            self._send(*good[:2], f"data: {{this is not json {self._key()}\n\n".encode(), *good[2:])

        def mode_sse_fields(self) -> None:
            self._start_stream()
            self._send(b": a comment before anything\n\n", b"retry: 1000\n\n")
            for number, part in enumerate(pieces(GOOD)):
                self._send(f"id: {number}\n".encode(), b"event: message\n", b": keep-alive\n", part, b"\n",
                           b"id: 99\n\n", b"data:\n\n")

        def mode_invalid_utf8(self) -> None:
            self._start_stream()
            good = pieces(GOOD)
            bad = b'data: {"choices": [{"index": 0, "delta": {"content": " bad \xff\xfe bytes"}}]}\n\n'
            self._send(*good[:2], bad, *good[2:])

        def mode_bom(self) -> None:
            self._start_stream()
            self._send(b"\xef\xbb\xbf", *pieces(GOOD))

        def mode_negative_usage(self) -> None:
            self._start_stream()
            self._send(*pieces(GOOD, {"prompt_tokens": -7, "completion_tokens": -131, "total_tokens": -138}))

        def mode_absurd_usage(self) -> None:
            self._start_stream()
            self._send(*pieces(GOOD, {"prompt_tokens": 7, "completion_tokens": 10**15, "total_tokens": 10**15 + 7}))

        def mode_endless(self) -> None:
            self._start_stream()
            self._send(event(chunk({"role": "assistant", "content": ""})))
            while True:
                self._send(event(chunk({"content": " more"})))

        def mode_endless_reasoning(self) -> None:
            self._start_stream()
            self._send(event(chunk({"role": "assistant", "content": ""})))
            while True:
                self._send(event(chunk({"reasoning_content": " thinking"})))

        def mode_trickle(self) -> None:
            self._start_stream()
            body = b"".join(pieces(GOOD))
            while True:
                for byte in body:
                    self._send(bytes([byte]), pause=0.5)

        def mode_huge_pieces(self) -> None:
            self._start_stream()
            self._send(event(chunk({"role": "assistant", "content": ""})))
            while True:
                self._send(event(chunk({"content": "x" * 512 * 1024})))

        def mode_gzip_bomb(self) -> None:
            self._start_stream({"Content-Encoding": "gzip"})
            packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
            block = b"a" * (1 << 20)
            self._send(packer.compress(b'data: {"choices": [{"index": 0, "delta": {"content": "'))
            for _ in range(300):  # one 300 MB line: no newline ever comes
                self._send(packer.compress(block))
            self._send(packer.flush())

        def mode_echo_key(self) -> None:
            key = self._key()
            half = len(key) // 2
            self._start_stream({"X-Echo-Authorization": key})
            self._send(event(chunk({"role": "assistant", "content": ""})),
                       event(chunk({"reasoning_content": f"the key is {key}."})),
                       event(chunk({"content": f"Your key: {key[:half]}"})),
                       event(chunk({"content": f"{key[half:]} (keep it safe)."})),
                       event(chunk(tool_delta(0, "call_1", "lookup", json.dumps({"token": key, "q": "x"})))),
                       event(chunk(finish="tool_calls")), b"data: [DONE]\n\n")

        def mode_no_index(self) -> None:
            self._start_stream()
            parts = [tool_delta(None, "call_a", "weather", '{"city": '), tool_delta(None, None, None, '"Rome"}'),
                     tool_delta(None, "call_b", "weather", '{"city"'), tool_delta(None, None, None, ': "Oslo"}')]
            self._send(event(chunk({"role": "assistant", "content": ""})), *[event(chunk(p)) for p in parts],
                       event(chunk(finish="tool_calls")), b"data: [DONE]\n\n")

        def mode_nan_arguments(self) -> None:
            self._start_stream()
            self._send(event(chunk({"role": "assistant", "content": ""})),
                       event(chunk(tool_delta(0, "call_n", "weather", '{"city": "Rome", "days": NaN}'))),
                       event(chunk(tool_delta(1, "call_i", "weather", '{"city": "Oslo", "days": Infinity}'))),
                       event(chunk(tool_delta(2, "call_ok", "weather", '{"city": "Nice", "days": 2}'))),
                       event(chunk(finish="tool_calls")), b"data: [DONE]\n\n")

    return Hostile


def main() -> None:
    port, mode = int(sys.argv[1]), sys.argv[2]
    handler = make_handler(mode)
    if not hasattr(handler, "mode_" + mode.replace("-", "_")) and mode not in ("key-in-models", "refuse-key"):
        raise SystemExit(f"unknown mode {mode!r}")
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
