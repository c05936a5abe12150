"""Start and stop ``transformers serve`` on this machine: an OpenAI-compatible server for a local
model directory, on 127.0.0.1 and a free port, for notebooks, benchmarks and tests.

The server is a separate process (transformers' ``serving`` extra: fastapi and uvicorn), started
with the model directory as its forced model and ``HF_HUB_OFFLINE=1``, waited for until
``GET /v1/models`` answers, and stopped by its process id. Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

#: how ``transformers serve`` is run: the ``transformers`` command of this Python
_SERVE = "import sys; from transformers.cli.transformers import main; sys.argv[0] = 'transformers'; sys.exit(main())"


class ServerStartError(RuntimeError):
    """The server process ended, or did not answer in time; the message carries its last log lines."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the system picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def serving_available() -> str | None:
    """None when ``transformers serve`` can run here, else why not (a missing package)."""
    import importlib.util

    for module, extra in (("transformers", "transformers"), ("fastapi", "transformers[serving]"),
                          ("uvicorn", "transformers[serving]")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install '{extra}')"
    return None


class TransformersServer:
    """``transformers serve MODEL_DIR`` on ``host``:``port`` (a free port when None).

    Use as a context manager, or call :meth:`start` and :meth:`stop`::

        with TransformersServer(model_dir) as server:
            agent = OpenAICompatibleAgent(model=server.model, base_url=server.base_url)

    Args:
        model_dir: a local model directory (e.g. the converted default model).
        host: the address to listen on (loopback by default: nothing outside this machine sees it).
        port: the port; None picks a free one.
        log_path: where the server's output goes (a temporary file when None).
        extra_args: further ``transformers serve`` options (e.g. ``["--dtype", "float32"]``).
    """

    def __init__(self, model_dir: str | os.PathLike, *, host: str = "127.0.0.1", port: int | None = None,
                 log_path: str | os.PathLike | None = None, extra_args: list[str] | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.extra_args = list(extra_args or [])
        self._log_path = Path(log_path) if log_path is not None else None
        self.process: subprocess.Popen | None = None

    @property
    def model(self) -> str:
        """The model id the server lists (the directory as given)."""
        return str(self.model_dir)

    @property
    def base_url(self) -> str:
        """The API root to give an agent."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        """The server's process id (None before :meth:`start`)."""
        return self.process.pid if self.process is not None else None

    @property
    def log_path(self) -> Path | None:
        """The file the server writes its output to."""
        return self._log_path

    def command(self) -> list[str]:
        """The command line that starts the server."""
        return [sys.executable, "-c", _SERVE, "serve", str(self.model_dir), "--host", self.host,
                "--port", str(self.port), *self.extra_args]

    def start(self, timeout: float = 180.0) -> "TransformersServer":
        """Start the server and wait (up to ``timeout`` seconds) until it answers. Returns it.

        Raises:
            ServerStartError: the process ended or did not answer in time (it is stopped then);
                the message has the last lines of its log.
        """
        if self.process is not None:
            return self
        if not self.model_dir.is_dir():
            raise ServerStartError(f"model_dir={str(self.model_dir)!r} is not a directory: expected a local model "
                                   "directory (config.json, weights, tokenizer)")
        if self._log_path is None:
            handle, name = tempfile.mkstemp(prefix="transformers-serve-", suffix=".log")
            os.close(handle)
            self._log_path = Path(name)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
        with open(self._log_path, "wb") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def models(self, timeout: float = 2.0) -> list[str]:
        """The model ids ``GET /v1/models`` lists now (raises ``OSError`` when nothing answers)."""
        with urllib.request.urlopen(f"{self.base_url}/models", timeout=timeout) as reply:  # noqa: S310 - loopback
            data = json.loads(reply.read(1_000_000))
        return [str(m.get("id")) for m in data.get("data", []) if isinstance(m, dict)]

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Wait until the server lists its model; raise :class:`ServerStartError` if it ends first
        or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise ServerStartError(f"transformers serve ended (exit code {code}) before answering on "
                                       f"{self.base_url}:\n{self.log_tail()}")
            try:
                if self.models():
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(f"transformers serve did not answer on {self.base_url} within {timeout:.0f} s:"
                                       f"\n{self.log_tail()}")
            time.sleep(0.25)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's output."""
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        text = self._log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def kill(self) -> None:
        """End the server at once (SIGKILL), as a crash would; open streams break midway."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server by its process id: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=30)

    def __enter__(self) -> "TransformersServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.process is not None and self.process.poll() is None else "stopped"
        return f"TransformersServer({self.model!r}, base_url={self.base_url!r}, pid={self.pid}, {state})"


__all__ = ["ServerStartError", "TransformersServer", "free_port", "serving_available"]
