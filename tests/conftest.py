"""Shared fixtures: the offline default model, tiny random models built in a temp dir, payloads."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

import pytest

from .suite_guards import CpuPaths, DefaultModelLoads, held_by_wider_fixtures, models_left_loaded, registry_counts

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Every call the tests make is recorded in the call log (it is on by default): point it at a
# folder of this test session, never the user's own log. Set before the package is imported,
# so the kernels, servers and scripts the tests start inherit it too.
TEST_LOG_DIR = Path(tempfile.mkdtemp(prefix="midori-test-log-"))
os.environ["MIDORI_HF_NB_LOG"] = str(TEST_LOG_DIR / "logs.db")
os.environ.pop("MIDORI_HF_NB_LOG_MAX_MB", None)


@pytest.fixture(scope="session", autouse=True)
def session_call_log():
    """The test session's call log folder (see :data:`TEST_LOG_DIR`), removed at the end."""
    yield TEST_LOG_DIR
    import shutil
    import sys as _sys

    log = _sys.modules.get("midori_hf_nb.log")
    if log is not None:
        log.flush(5)
    shutil.rmtree(TEST_LOG_DIR, ignore_errors=True)


@pytest.fixture
def call_log(tmp_path):
    """A fresh call log for one test (``tmp_path/logs/logs.db``, recording); the process's log
    settings (switch, location, bound, redaction hook) are restored afterwards."""
    from midori_hf_nb import log

    state = log.state()
    saved = (state.enabled, state.path, state.max_bytes, state.redactor)
    path = log.on(tmp_path / "logs" / "logs.db")
    try:
        yield path
    finally:
        log.flush(30)
        state.enabled, state.path, state.max_bytes, state.redactor = saved


def log_rows(path, where: str = "1", args: tuple = ()) -> list[dict]:
    """Rows of ``responses`` in the log at ``path``, read with sqlite3 itself (oldest first)."""
    import sqlite3

    from midori_hf_nb import log

    log.flush(30)
    if not path.exists():
        return []
    conn = sqlite3.connect(str(path))
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM responses WHERE {where} ORDER BY datetime_utc, rowid",
                                              args)]
    finally:
        conn.close()


#: Model loads of every test and the processes it starts (see tests/suite_guards.py).
LOADS = DefaultModelLoads()
#: Which CPU-dependent path each test ran (fixture ``cpu_path``; "CPU paths" in the summary).
CPU_PATHS = CpuPaths()


_LOAD_MARK = pytest.StashKey[tuple]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Model loads count from the start of a test's setup: a wider fixture that loads the default
    model for the first test that needs it makes that test a slow one."""
    item.stash[_LOAD_MARK] = LOADS.mark()


@pytest.fixture(autouse=True)
def _guards(request):
    """Around every test (inside the wider-scoped fixtures, outside its other function-scoped ones):
    a test that leaves a model loaded has it unloaded and fails; a test that loads the offline
    default model (here or in a process it starts) fails unless it is marked ``slow``."""
    item = request.node
    before, (held_before, _) = registry_counts(), held_by_wider_fixtures(item)
    mark = item.stash.get(_LOAD_MARK, None) or LOADS.mark()
    yield
    left = models_left_loaded(item, before, held_before)
    problems = []
    if left:
        problems.append("it left models loaded (now unloaded, so later tests start clean): " + "; ".join(left)
                        + ". Unload in a finally block or a fixture (conftest.loaded_agent).")
    uses = LOADS.default_uses(mark)
    if uses and item.get_closest_marker("slow") is None:
        problems.append("it uses the offline default model (" + "; ".join(uses[:3]) + ") but is not marked "
                        "@pytest.mark.slow, so `make test-fast` would run it")
    if problems:
        pytest.fail(f"{item.nodeid}: " + " | ".join(problems), pytrace=False)


@pytest.fixture
def cpu_path(request, record_property):
    """``cpu_path(what, path)`` records which CPU-dependent path ran (also under ``-rA``: the
    "CPU paths" summary section, and a ``record_property`` entry for JUnit XML)."""

    def ran(what: str, path: str) -> None:
        record_property(f"cpu path: {what}", path)
        CPU_PATHS.add(request.node.nodeid, what, path)
        print(f"CPU path: {what}: {path}")

    return ran


def pytest_terminal_summary(terminalreporter):
    CPU_PATHS.summary(terminalreporter)


def pytest_unconfigure(config):
    LOADS.close()


def run(coro):
    """Run a coroutine to completion in a fresh event loop."""
    return asyncio.run(coro)


def loaded_agent(model_dir, **options):
    """A greedy agent on ``model_dir``, loaded now and released when the generator is closed.

    Use in a fixture: ``yield from loaded_agent(tiny_model, max_new_tokens=32)``.
    """
    from midori_hf_nb import HuggingFaceLocalAgent

    agent = HuggingFaceLocalAgent(model=str(model_dir), **{"do_sample": False, "progress": False, **options})
    run(agent.load())
    try:
        yield agent
    finally:
        run(agent.unload_model())


#: the tiny models whose chat templates do not / do render ``tools=``
TEMPLATE_MODELS = ["tiny_model", "tiny_tools_model"]


def agent_on_template(request, **options):
    """A greedy agent on the tiny model named by ``request.param`` (one of :data:`TEMPLATE_MODELS`),
    loaded now and released when the generator is closed; ``agent.structured`` says whether its
    template renders tools. Use in a fixture parametrized with ``TEMPLATE_MODELS``."""
    for agent in loaded_agent(request.getfixturevalue(request.param), **options):
        agent.structured = request.param == "tiny_tools_model"
        yield agent


def scripted(agent, *texts: str) -> list:
    """A ``logits_processor`` list forcing ``texts`` (one per generation) on ``agent``'s model."""
    from midori_hf_nb.testing import ScriptedOutput

    return [ScriptedOutput(agent.loaded_model.tokenizer, texts[0] if len(texts) == 1 else list(texts))]


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The converted offline default model (converted on first use, then cached)."""
    from midori_hf_nb import engine
    from midori_hf_nb.sources import default_model_path

    return engine.convert_gguf(default_model_path(), progress=False)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, default_model_dir) -> Path:
    """A 2-layer random Llama with the default model's tokenizer and ChatML template (no tools support)."""
    from midori_hf_nb.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", default_model_dir)


@pytest.fixture(scope="session")
def tiny_tools_model(tmp_path_factory, default_model_dir) -> Path:
    """A tiny model whose chat template renders ``tools=`` (Hermes/Qwen style)."""
    from midori_hf_nb.testing import TOOLS_CHAT_TEMPLATE, build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-tools") / "model", default_model_dir,
                            chat_template=TOOLS_CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def tiny_plain_model(tmp_path_factory, default_model_dir) -> Path:
    """A tiny model whose tokenizer has no chat template (plain fallback format)."""
    from midori_hf_nb.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-plain") / "model", default_model_dir, chat_template="")


@pytest.fixture(scope="session")
def default_agent():
    """A greedy agent on the offline default model, shared by the tests of this session."""
    from midori_hf_nb import DEFAULT_MODEL, HuggingFaceLocalAgent

    agent = HuggingFaceLocalAgent(model=DEFAULT_MODEL, do_sample=False, max_new_tokens=48, progress=False)
    yield agent
    run(agent.unload_model())


@pytest.fixture
def payload():
    """Factory for payloads: ``payload("question", system="...", memory=[...])``."""
    from midori_hf_nb import make_payload

    def make(message: str, system: str = "You are a helpful assistant.", **fields):
        return make_payload(message, system, **fields)

    return make


@pytest.fixture
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def python_exe() -> str:
    return sys.executable


# Real servers for the served-agent tests (tests/served_server.py): started once, stopped by PID.
from .served_server import gateway, served_agent, served_server  # noqa: E402,F401
