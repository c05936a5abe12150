"""Interrupting a real Jupyter kernel while an answer streams: generation stops, the partial text stays."""

from __future__ import annotations

import queue
import textwrap
import time

import pytest

jupyter_client = pytest.importorskip("jupyter_client")

SETUP = """
import time
from transformers import LogitsProcessor
from midori_hf_nb import HuggingFaceLocalAgent, make_payload
from midori_hf_nb.notebook import stream_to_cell
from midori_hf_nb.testing import ScriptedOutput

class Slow(LogitsProcessor):          # paces the real generation so the interrupt lands mid-answer
    def __call__(self, input_ids, scores):
        time.sleep(0.03)
        return scores

agent = HuggingFaceLocalAgent(model={model!r}, do_sample=False, max_new_tokens=300, progress=False)
await agent.load()
TEXT = " ".join(f"w{{i}}" for i in range(250))
def processors():
    return [Slow(), ScriptedOutput(agent.loaded_model.tokenizer, TEXT)]
%load_ext midori_hf_nb
from midori_hf_nb.notebook import current_session
"""


@pytest.fixture(scope="module")
def kernel(tiny_model):
    manager, client = jupyter_client.manager.start_new_kernel(kernel_name="python3", startup_timeout=120)
    try:
        reply = run_cell(client, SETUP.format(model=str(tiny_model)), timeout=180)
        assert reply["content"]["status"] == "ok", reply["content"]
        yield manager, client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def run_cell(client, code, timeout=120, interrupt_after=None, manager=None):
    """Execute code; optionally interrupt the kernel once ``interrupt_after`` display updates were seen."""
    msg_id = client.execute(textwrap.dedent(code))
    updates = 0
    interrupted = False
    deadline = time.monotonic() + timeout
    while True:  # drain iopub until the cell is idle
        try:
            msg = client.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError("the cell did not finish in time") from None
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "update_display_data":
            updates += 1
            if interrupt_after is not None and not interrupted and updates >= interrupt_after:
                manager.interrupt_kernel()
                interrupted = True
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    reply = client.get_shell_msg(timeout=timeout)
    reply["updates"] = updates
    reply["interrupted"] = interrupted
    return reply


def printed(client, code):
    lines: list[str] = []

    def hook(msg):
        if msg["msg_type"] == "stream":
            lines.append(msg["content"]["text"])

    client.execute_interactive(code, timeout=60, output_hook=hook)
    return "".join(lines).strip()


def test_interrupting_an_awaited_stream_keeps_the_partial_answer(kernel):
    manager, client = kernel
    reply = run_cell(client, "resp = await stream_to_cell(agent, make_payload('q'), throttle=0, "
                             "logits_processor=processors())", interrupt_after=3, manager=manager)
    assert reply["interrupted"]
    assert reply["content"]["status"] == "ok"  # the cell finished and kept its result
    finish, answer, full = printed(client, "print(resp.metadata['finish_reason']); print(resp.response[:40]); "
                                           "print(len(resp.response) < len(TEXT))").splitlines()
    assert finish == "cancelled"
    assert answer.startswith("w0 w1")
    assert full == "True"


def test_interrupting_the_cell_magic_keeps_the_partial_answer(kernel):
    manager, client = kernel
    printed(client, "current_session().agent = agent; "
                    "current_session().overrides['logits_processor'] = processors()")
    reply = run_cell(client, "%%midori --name mresp --throttle 0\nCount.", interrupt_after=3, manager=manager)
    assert reply["interrupted"]
    assert reply["content"]["status"] == "ok"
    finish, turns = printed(client, "print(mresp.metadata['finish_reason']); "
                                    "print(len(current_session().conversation))").splitlines()
    assert finish == "cancelled" and turns == "2"  # the partial exchange is remembered
    assert printed(client, "print(TEXT.startswith(mresp.response) and 0 < len(mresp.response) < len(TEXT))") == "True"
