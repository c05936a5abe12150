"""Fair waiting for the model: a batch or a generation on the locked path gets the model within a
bounded wait while single requests keep arriving (the shared decode loop admits no new rows while
such a caller waits), and the single requests are served again after it. Real generation on a tiny
random model; no timing is asserted beyond the bound a starved caller would exceed."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from midori_hf_nb import make_payload
from midori_hf_nb.engine.fair_lock import FairLock

from .conftest import loaded_agent

pytestmark = pytest.mark.timeout(300)

#: How long single requests keep arriving at most: a starved caller waits all of it.
STREAM_SECONDS = 30
WORKERS = 4


@pytest.fixture(scope="module")
def tiny_agent(tiny_model):
    yield from loaded_agent(tiny_model, max_new_tokens=24, stop_on_repetition=False, kv_reuse=False)


class SingleRequests:
    """``WORKERS`` coroutines in one thread, each sending one request after the other until stopped."""

    def __init__(self, agent) -> None:
        self.agent = agent
        self.stop = threading.Event()
        self.finished: list[float] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def _worker(self, index: int) -> None:
        while not self.stop.is_set():  # answers of different lengths: the rows never all end at once
            await self.agent.invoke(make_payload(f"Tell a long story number {index}."), max_new_tokens=17 + 6 * index)
            self.finished.append(time.monotonic())

    def _run(self) -> None:
        async def main():
            await asyncio.gather(*(self._worker(i) for i in range(WORKERS)))
        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def wait_for(self, count: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while len(self.finished) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self.finished) >= count

    def __enter__(self) -> "SingleRequests":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(120)


def _batch(agent) -> None:
    responses = agent.generate_batch([make_payload("Name a colour."), make_payload("Name a fruit.")], max_new_tokens=8)
    assert len(responses) == 2


def _locked_path_call(agent) -> None:
    # repetition_penalty is not an option of the engine's own loop: the call runs model.generate
    response = asyncio.run(agent.invoke(make_payload("Name a colour."), max_new_tokens=8, repetition_penalty=1.1))
    assert response.metadata["decode_path"] == "generate"


@pytest.mark.parametrize("caller", [_batch, _locked_path_call], ids=["generate_batch", "generate-path invoke"])
def test_a_caller_needing_the_whole_model_is_not_starved_by_single_requests(tiny_agent, caller):
    with SingleRequests(tiny_agent) as singles:
        assert singles.wait_for(WORKERS, 120), singles.errors  # the stream is running
        done, failure = threading.Event(), []

        def call():
            try:
                caller(tiny_agent)
            except BaseException as exc:
                failure.append(exc)
            finally:
                done.set()

        threading.Thread(target=call, daemon=True).start()
        got_the_model = done.wait(STREAM_SECONDS)
        finished_then = len(singles.finished)
        # and the single requests are served again after it
        served_after = singles.wait_for(finished_then + WORKERS, 120) if got_the_model else False
        still_arriving = singles.thread.is_alive() and not singles.errors
    assert not failure, failure
    assert got_the_model, f"the caller still waited after {STREAM_SECONDS} s of single requests"
    assert still_arriving and served_after


def test_the_fair_lock_serves_waiters_in_arrival_order():
    lock = FairLock()
    order: list[int] = []
    lock.acquire()
    threads = []
    for index in range(5):
        thread = threading.Thread(target=lambda i=index: (lock.acquire(), order.append(i), lock.release()))
        thread.start()
        threads.append(thread)
        deadline = time.monotonic() + 10
        while lock.waiting < index + 1 and time.monotonic() < deadline:  # each in line before the next
            time.sleep(0.001)
    assert lock.waiting == 5
    lock.release()
    # a thread that asks now queues behind the five, however quickly it asks
    assert lock.acquire(timeout=30)
    lock.release()
    for thread in threads:
        thread.join(10)
    assert order == [0, 1, 2, 3, 4]
    assert lock.acquire(blocking=False) and not lock.acquire(blocking=False)
    assert lock.acquire(timeout=0.05) is False
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()
