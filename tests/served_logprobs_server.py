"""A small OpenAI-compatible server that returns token probabilities, for the served-agent tests.

``transformers serve`` ignores the ``logprobs`` and ``top_logprobs`` parameters, so the tests of a
server that returns them run this one: a real HTTP server process on 127.0.0.1 that answers
``GET /v1/models`` and ``POST /v1/chat/completions`` (streamed as server-sent events, or as one JSON
object) in the OpenAI wire format, each chunk with its tokens' ``logprobs.content`` as OpenAI sends
them (``token``, ``logprob``, ``bytes``, ``top_logprobs``). The answers and probabilities come from
the project's local agent on the given model directory, greedy in float32.

Run as a process: ``python served_logprobs_server.py PORT MODEL_DIR [--refuse]``; with
``--refuse`` a request that asks for token probabilities gets HTTP 422, as a server that does not
support them might answer.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from midori_hf_nb import HuggingFaceLocalAgent, MemoryEntryData, make_payload


def wire_record(record: Any) -> dict[str, Any]:
    """A token record as OpenAI sends it."""
    return {"token": record.token, "logprob": record.logprob, "bytes": record.bytes,
            "top_logprobs": [{"token": alt.token, "logprob": alt.logprob, "bytes": alt.bytes}
                             for alt in record.top_logprobs]}


def payload_of(messages: list[dict[str, Any]]) -> Any:
    """The payload of an OpenAI message list: the system message, earlier turns as memory, the last user message."""
    system = "\n\n".join(m.get("content") or "" for m in messages if m.get("role") == "system")
    turns = [m for m in messages if m.get("role") in ("user", "assistant")]
    memory = [MemoryEntryData(role=m["role"], content=m.get("content") or "") for m in turns[:-1]]
    return make_payload(turns[-1].get("content") or "", system, memory=memory or None)


def overrides_of(body: dict[str, Any]) -> dict[str, Any]:
    overrides: dict[str, Any] = {"max_new_tokens": int(body.get("max_tokens") or 64), "greedy": True}
    if body.get("logprobs"):
        overrides["logprobs"] = True
        overrides["top_logprobs"] = int(body.get("top_logprobs") or 0)
    return overrides


def make_handler(agent: HuggingFaceLocalAgent, model_id: str, refuse: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, status: int, value: Any) -> None:
            data = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.rstrip("/") == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": "test"}]})
            else:
                self._json(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:  # noqa: N802
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._json(404, {"error": {"message": f"no route {self.path}"}})
                return
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if body.get("model") != model_id:
                self._json(404, {"error": {"message": f"model {body.get('model')!r} not found"}})
                return
            if refuse and ("logprobs" in body or "top_logprobs" in body):
                self._json(422, {"error": {"message": "logprobs and top_logprobs are not supported by this server"}})
                return
            if body.get("stream"):
                self._stream(body)
            else:
                self._whole(body)

        def _chunk(self, delta: dict[str, Any], records: list[Any] | None = None, finish: str | None = None) -> None:
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            if records:
                choice["logprobs"] = {"content": [wire_record(r) for r in records]}
            chunk = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": int(time.time()),
                     "model": model_id, "choices": [choice]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        def _stream(self, body: dict[str, Any]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()

            async def run() -> Any:
                async for event in agent.stream(payload_of(body["messages"]), events=True, **overrides_of(body)):
                    if event.kind == "text" and (event.text or event.logprobs):
                        self._chunk({"content": event.text}, event.logprobs)
                    elif event.kind == "done":
                        if event.logprobs:
                            self._chunk({"content": ""}, event.logprobs)
                        return event.data

            response = asyncio.run(run())
            finish = "length" if response.metadata.get("finish_reason") == "length" else "stop"
            self._chunk({}, finish=finish)
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": response.metadata["prompt_tokens"],
                         "completion_tokens": response.metadata["completion_tokens"],
                         "total_tokens": response.metadata["prompt_tokens"] + response.metadata["completion_tokens"]}
                data = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": int(time.time()),
                        "model": model_id, "choices": [], "usage": usage}
                self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

        def _whole(self, body: dict[str, Any]) -> None:
            response = asyncio.run(agent.invoke(payload_of(body["messages"]), **overrides_of(body)))
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": response.response},
                                      "finish_reason": "stop"}
            if getattr(response, "logprobs", None) is not None:
                choice["logprobs"] = {"content": [wire_record(r) for r in response.logprobs.content]}
            self._json(200, {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
                             "model": model_id, "choices": [choice]})

    return Handler


def main() -> None:
    port, model_dir = int(sys.argv[1]), sys.argv[2]
    refuse = "--refuse" in sys.argv[3:]
    agent = HuggingFaceLocalAgent(model=model_dir, torch_dtype="float32", progress=False, kv_reuse=False)
    agent.load_sync()
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(agent, model_dir, refuse))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
