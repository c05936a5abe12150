"""One generation in its own thread, feeding text pieces into an asyncio queue."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any, Hashable

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import GenerationResult, LoadedModel
    from ..settings import GenerationSettings


class LiveGeneration:
    """Runs :func:`midori_hf_nb.engine.generate` in a daemon thread (with ``reuse_key``: from
    and into the kept KV cache of that agent and session).

    The thread posts ``("text", piece)`` for each decoded piece (and, when token probabilities
    were asked for on the engine's loop, ``("token", record)`` for each token before its text),
    then ``("done", result)`` or ``("error", exception)`` to :attr:`queue` on the event loop that
    created this object. Setting
    :attr:`stop_event` stops the generation within a token. The thread holds no reference to
    the stream that consumes it, so an abandoned stream can be collected (and stopped) at once.
    """

    def __init__(self, lm: "LoadedModel", input_ids: list[int], settings: "GenerationSettings",
                 stop_event: threading.Event, reuse_key: Hashable | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.stop_event = stop_event
        self.thread = threading.Thread(
            target=_generate_into, args=(self.loop, self.queue, stop_event, lm, input_ids, settings, reuse_key),
            name="midori-generate", daemon=True,
        )

    def start(self) -> None:
        self.thread.start()

    async def drain(self, timeout: float = 60.0) -> "GenerationResult | None":
        """After a stop request: wait (up to ``timeout`` seconds) for the generation's final result."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    kind, value = await self.queue.get()
                    if kind == "done":
                        return value
                    if kind == "error":
                        return None
        except (TimeoutError, asyncio.CancelledError):
            return None


def _post(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, stop_event: threading.Event,
          item: tuple[str, Any]) -> None:
    try:
        loop.call_soon_threadsafe(queue.put_nowait, item)
    except RuntimeError:  # the loop is gone: nobody is listening any more
        stop_event.set()


def _generate_into(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, stop_event: threading.Event,
                   lm: "LoadedModel", input_ids: list[int], settings: "GenerationSettings",
                   reuse_key: Hashable | None = None) -> None:
    from .. import engine

    try:
        on_token = None
        if settings.probabilities is not None:
            on_token = lambda record: _post(loop, queue, stop_event, ("token", record))  # noqa: E731
        result = engine.generate(lm, input_ids, settings, on_text=lambda t: _post(loop, queue, stop_event, ("text", t)),
                                 stop_event=stop_event, reuse_key=reuse_key, on_token=on_token)
        _post(loop, queue, stop_event, ("done", result))
    except BaseException as exc:  # delivered to the consumer, raised there
        _post(loop, queue, stop_event, ("error", exc))
