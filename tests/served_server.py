"""Real servers for the served-agent tests: ``transformers serve`` on the default model, on
127.0.0.1 and a free port, started once per session, waited for, and stopped by its process id.

When the server cannot start here the tests that need it are skipped with the reason; with
``MIDORI_HF_NB_REQUIRE_SERVE=1`` (set by ``make test``, so CI) that is a failure instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REQUIRE_ENV = "MIDORI_HF_NB_REQUIRE_SERVE"
GATEWAY = Path(__file__).with_name("served_gateway.py")


def unavailable(reason: str) -> None:
    """Skip with ``reason``, or fail where the served tests are required."""
    message = f"transformers serve cannot run here: {reason}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1: these tests must run)", pytrace=False)
    pytest.skip(message)


def start_server(model_dir: Path):
    """A started :class:`TransformersServer` on ``model_dir`` (or a skip/failure saying why not)."""
    from midori_hf_nb.served.local_server import ServerStartError, TransformersServer, serving_available

    reason = serving_available()
    if reason:
        unavailable(reason)
    server = TransformersServer(model_dir)
    try:
        server.start(timeout=240)
    except ServerStartError as exc:
        unavailable(str(exc))
    return server


@pytest.fixture(scope="session")
def served_server(default_model_dir):
    """``transformers serve`` on the default model for the whole session (stopped by PID at the end)."""
    server = start_server(default_model_dir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def served_agent(served_server):
    """A greedy :class:`OpenAICompatibleAgent` on the session's server, warmed up by one short call."""
    from midori_hf_nb import OpenAICompatibleAgent, make_payload

    agent = OpenAICompatibleAgent(model=served_server.model, base_url=served_server.base_url, do_sample=False,
                                  max_new_tokens=24)
    import asyncio

    asyncio.run(agent.invoke(make_payload("Hi"), max_new_tokens=1))  # the server's first request is slow
    return agent


class Gateway:
    """The key-checking gateway of ``served_gateway.py`` as a process in front of ``upstream``."""

    def __init__(self, upstream: str, key: str) -> None:
        from midori_hf_nb.served.local_server import free_port

        self.port = free_port()
        self.process = subprocess.Popen([sys.executable, str(GATEWAY), str(self.port), upstream, key],
                                        stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.base_url}/models", timeout=1)
            except urllib.error.HTTPError:  # 401: it answers
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the test gateway did not start") from None
                time.sleep(0.1)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def gateway(served_server):
    """A gateway requiring the key ``sk-right-key-0123456789`` in front of the session's server."""
    gate = Gateway(served_server.base_url, "sk-right-key-0123456789")
    try:
        yield gate
    finally:
        gate.stop()
