"""Running the async API from synchronous code: no loop, inside a running loop, inside an IPython cell."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading

import pytest

from midori_hf_nb import make_payload
from midori_hf_nb.notebook import SyncAgent, loop_running, run

from midori_hf_nb.notebook import RecordingSink
from midori_hf_nb.testing import ScriptedAgent

from .conftest import loaded_agent, scripted
from .protocol_agents import InvokeOnlyAgent


@pytest.fixture(scope="module")
def agent(tiny_model):
    yield from loaded_agent(tiny_model, max_new_tokens=40)


def test_run_without_a_loop_returns_the_response(agent):
    response = run(agent.invoke(make_payload("hi"), logits_processor=scripted(agent, "Plain call works.")))
    assert response.response == "Plain call works."
    assert not loop_running()


def test_run_from_sync_code_while_a_loop_is_running(agent):
    seen = {}

    async def answer():
        seen["thread"] = threading.get_ident()
        return await agent.invoke(make_payload("hi"), logits_processor=scripted(agent, "Inside a loop."))

    def plain_function():  # what a notebook user's helper looks like: no await available
        return run(answer())

    async def kernel_like():
        assert loop_running()
        with pytest.raises(RuntimeError):  # the failure run() exists to avoid
            coro = answer()
            try:
                asyncio.run(coro)
            finally:
                coro.close()
        return plain_function(), threading.get_ident()

    response, loop_thread = asyncio.run(kernel_like())
    assert response.response == "Inside a loop."
    assert seen["thread"] != loop_thread  # ran in the worker thread, the caller's loop was left alone


def test_run_propagates_exceptions_in_both_modes():
    async def fail():
        raise ValueError("bad value from the coroutine")

    with pytest.raises(ValueError, match="bad value"):
        run(fail())

    async def inside():
        with pytest.raises(ValueError, match="bad value"):
            run(fail())
        return True

    assert asyncio.run(inside())


def test_run_timeout_cancels_the_coroutine():
    cancelled = threading.Event()

    async def slow():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError, match="cancelled"):
        run(slow(), timeout=0.2)
    assert cancelled.is_set()


def test_run_rejects_bad_arguments():
    coro = asyncio.sleep(0)
    with pytest.raises(ValueError, match="mode='fast'.*'auto'"):
        run(coro, mode="fast")
    coro.close()
    with pytest.raises(TypeError, match="coroutine or awaitable"):
        run(42)


def test_sync_agent_in_an_ipython_cell_with_top_level_await(agent):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.user_ns.update(agent_sync=SyncAgent(agent), make_payload=make_payload,
                         processors=scripted(agent, "From a cell."))
    result = shell.run_cell(textwrap.dedent("""
        import asyncio
        from midori_hf_nb.notebook import loop_running
        await asyncio.sleep(0)            # top-level await: this cell runs on the shell's event loop
        cell_loop_running = loop_running()
        def helper():                     # a plain function calling the blocking API
            return agent_sync.invoke(make_payload("hi"), logits_processor=processors)
        cell_response = helper()
    """))
    result.raise_error()
    assert shell.user_ns["cell_loop_running"] is True
    assert shell.user_ns["cell_response"].response == "From a cell."


def test_sync_stream_iterates_and_break_stops_generation(agent):
    text = " ".join(f"word{i}" for i in range(120))
    stream_sync = SyncAgent(agent).stream(make_payload("hi"), max_new_tokens=400, logits_processor=scripted(agent, text))
    pieces = []
    for piece in stream_sync:
        pieces.append(piece)
        if len(pieces) == 3:
            break
    stream_sync.close()
    assert "".join(pieces).startswith("word0")
    # the generation thread is gone: a new call on the same model is not blocked behind it
    response = SyncAgent(agent).invoke(make_payload("hi"), logits_processor=scripted(agent, "Next call."))
    assert response.response == "Next call."


def test_sync_agent_wraps_the_other_methods(agent):
    sync = SyncAgent(agent)
    assert sync.get_context_window() == agent.config.context_window
    assert sync.config is agent.config  # attribute fall-through
    events = list(sync.stream(make_payload("hi"), events=True, logits_processor=scripted(agent, "Two words.")))
    assert events[-1].kind == "done" and events[-1].data.response == "Two words."


def test_sync_agent_with_any_protocol_agent():
    sync = SyncAgent(ScriptedAgent(["<think>hm</think>one two three", "again"]))
    assert "".join(sync.stream(make_payload("hi"))) == "one two three"  # text pieces only
    assert sync.invoke(make_payload("hi")).response == "again"
    invoked = SyncAgent(InvokeOnlyAgent("by invoke"))
    assert list(invoked.stream(make_payload("hi"))) == []  # no stream: no pieces, only the final response
    events = list(invoked.stream(make_payload("hi"), events=True))
    assert [e.kind for e in events] == ["done"] and events[0].data.response == "by invoke"
    sink = RecordingSink()
    assert invoked.display_stream(make_payload("hi"), sink=sink).response == "by invoke"
    assert "by invoke" in sink.last["text/html"]


NEST_SCRIPT = """
import asyncio
from midori_hf_nb.notebook.aio import enable_nesting, run

async def main():
    loop = asyncio.get_running_loop()
    print("enabled:", enable_nesting())
    future = loop.create_future()            # bound to the running loop, like a widget's future
    loop.call_later(0.05, future.set_result, "resolved on the kernel loop")

    async def wait_for_it():
        return await future

    try:
        run(wait_for_it(), mode="thread")
    except RuntimeError as exc:
        print("thread mode:", type(exc).__name__)
    print("nest mode:", run(wait_for_it(), mode="nest"))

asyncio.run(main())
"""


def test_nest_mode_serves_coroutines_bound_to_the_running_loop():
    # nest_asyncio2 patches asyncio process-wide, so this runs in its own interpreter.
    out = subprocess.run([sys.executable, "-c", NEST_SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "enabled: True" in out.stdout
    assert "thread mode: RuntimeError" in out.stdout
    assert "nest mode: resolved on the kernel loop" in out.stdout
