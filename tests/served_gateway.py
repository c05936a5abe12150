"""A key-checking gateway in front of an OpenAI-compatible server, as deployments put one in
front of vLLM or ``transformers serve`` (which checks no key itself).

Run as a process: ``python served_gateway.py PORT UPSTREAM_ROOT KEY``. A request whose
``Authorization`` is not ``Bearer KEY`` gets HTTP 401 with an OpenAI-style error body that, like a
careless server, repeats the key it was sent; any other request is forwarded to ``UPSTREAM_ROOT``
and its answer streamed back as it arrives.
"""

from __future__ import annotations

import http.client
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


def make_handler(upstream: str, key: str) -> type[BaseHTTPRequestHandler]:
    target = urlsplit(upstream)

    class Gateway(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the body ends when the connection closes: no re-chunking

        def log_message(self, *args) -> None:
            pass

        def _refuse(self, sent: str) -> None:
            body = json.dumps({"error": {"message": f"Incorrect API key provided: {sent}", "type": "invalid_request_error",
                                         "code": "invalid_api_key"}}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _forward(self, method: str) -> None:
            sent = self.headers.get("Authorization", "")
            if sent != f"Bearer {key}":
                self._refuse(sent.removeprefix("Bearer "))
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=300)
            headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
            connection.request(method, target.path.rstrip("/") + self.path.removeprefix("/v1"), body=body,
                               headers=headers)
            reply = connection.getresponse()
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.getheader("Content-Type", "application/json"))
            self.end_headers()
            while True:
                piece = reply.read1(65536)
                if not piece:
                    break
                self.wfile.write(piece)
                self.wfile.flush()
            connection.close()

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._forward("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._forward("POST")

    return Gateway


def main() -> None:
    port, upstream, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(upstream, key))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
