"""One generation in its own thread, feeding text pieces into an asyncio queue, with a bounded
look-ahead: a generation whose reader stopped reading pauses (see :class:`LookAhead`)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from typing import TYPE_CHECKING, Any, Callable, Hashable

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import GenerationResult, LoadedModel
    from ..settings import GenerationSettings

#: tokens a stream may hold that its reader has not taken (in pieces waiting to be read, or not
#: yet printable); at this many the generation pauses: it stops and releases the model until the
#: reader has taken every piece and asks for more
STREAM_LOOKAHEAD = 64


class LookAhead:
    """The bounded queue between a generating thread and its reader, counted in tokens: the
    generation pauses when :data:`STREAM_LOOKAHEAD` tokens are waiting for the reader
    (thread-safe: the generating thread counts what it makes, the reader what it takes).

    Tokens the streamer holds back (an unfinished word) count too, except while the reader is
    waiting for a piece: a reader that keeps up (``invoke``, a loop that prints each piece)
    never pauses anything. One that stopped reading (``break`` out of a stream it still holds)
    lets the generation run at most :data:`STREAM_LOOKAHEAD` tokens ahead; then ``pause`` is
    called once.
    """

    def __init__(self, limit: int = STREAM_LOOKAHEAD) -> None:
        self.limit = limit
        self._pause: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._pending = 0  # tokens made since the last piece (held back by the streamer)
        self._queued = 0  # tokens of the pieces posted and not taken
        self._waiting = False
        #: the generation was paused (it ends within a token; a continuation clears this)
        self.paused = False

    def waiting(self, waiting: bool) -> None:
        """The reader starts (True) or stops (False) waiting for a piece with none left to take."""
        with self._lock:
            self._waiting = waiting

    def on_token(self, count: int) -> None:
        """``count`` more tokens were generated (called by the generating thread)."""
        with self._lock:
            self._pending += count
            if self.paused or self._waiting or self._pending + self._queued < self.limit:
                return
            self.paused = True
            pause = self._pause
        if pause is not None:
            pause()

    def on_piece(self) -> int:
        """A piece is posted (by the generating thread): the tokens it carries."""
        with self._lock:
            count, self._pending = self._pending, 0
            self._queued += count
            return count

    def taken(self, count: int) -> None:
        """The reader took a piece of ``count`` tokens."""
        with self._lock:
            self._queued -= count

    def resume(self, pause: Callable[[], None]) -> None:
        """Before a part of the generation starts: count from zero, pausing with ``pause``."""
        with self._lock:
            self._pause, self._pending, self._queued, self.paused = pause, 0, 0, False


class LiveGeneration:
    """Runs :func:`midori_hf_nb.engine.generate` in a daemon thread (with ``reuse_key``: from
    and into the kept KV cache of that agent and session).

    The thread posts ``("text", piece, tokens)`` for each decoded piece, then ``("done", result,
    0)`` or ``("error", exception, 0)`` to :attr:`queue` on the event loop that created this
    object. Setting :attr:`stop_event` stops the generation within a token. The thread holds no
    reference to the stream that consumes it, so an abandoned stream can be collected (and
    stopped) at once. With a :class:`LookAhead`, each piece carries the tokens it took and the
    look-ahead counts them; ``carry`` goes to the engine (see :func:`~midori_hf_nb.engine.generate`).
    """

    def __init__(self, lm: "LoadedModel", input_ids: list[int], settings: "GenerationSettings",
                 stop_event: threading.Event, reuse_key: Hashable | None = None,
                 lookahead: LookAhead | None = None, carry: Any = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[str, Any, int]] = asyncio.Queue()
        self.stop_event = stop_event
        self.thread = threading.Thread(
            target=_generate_into,
            args=(self.loop, self.queue, stop_event, lm, input_ids, settings, reuse_key, lookahead, carry),
            name="midori-generate", daemon=True,
        )

    def start(self) -> None:
        self.thread.start()

    async def drain(self, timeout: float = 60.0) -> "GenerationResult | None":
        """After a stop request: wait (up to ``timeout`` seconds) for the generation's final result."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    kind, value, _ = await self.queue.get()
                    if kind == "done":
                        return value
                    if kind == "error":
                        return None
        except (TimeoutError, asyncio.CancelledError):
            return None


def _post(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, stop_event: threading.Event,
          item: tuple[str, Any, int]) -> None:
    try:
        loop.call_soon_threadsafe(queue.put_nowait, item)
    except RuntimeError:  # the loop is gone: nobody is listening any more
        stop_event.set()


def _generate_into(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, stop_event: threading.Event,
                   lm: "LoadedModel", input_ids: list[int], settings: "GenerationSettings",
                   reuse_key: Hashable | None = None, lookahead: LookAhead | None = None,
                   carry: Any = None) -> None:
    from .. import engine

    def on_text(text: str) -> None:
        _post(loop, queue, stop_event, ("text", text, lookahead.on_piece() if lookahead is not None else 0))

    try:
        result = engine.generate(lm, input_ids, settings, on_text=on_text, stop_event=stop_event, reuse_key=reuse_key,
                                 on_token=lookahead.on_token if lookahead is not None else None, carry=carry)
        _post(loop, queue, stop_event, ("done", result, 0))
    except BaseException as exc:  # delivered to the consumer, raised there
        _post(loop, queue, stop_event, ("error", exc, 0))


class GenerationParts:
    """The parts of one stream's generation: the first, and a continuation after each pause
    (``state``: the stream's state, with ``stop``, ``part_stop``, ``thread`` and ``lookahead``)."""

    def __init__(self, state: Any, lm: Any, prompt_ids: list[int], settings: Any, reuse_key: Any) -> None:
        from .. import engine

        self.state, self.lm, self.prompt_ids, self.settings, self.reuse_key = state, lm, list(prompt_ids), settings, reuse_key
        self.results: list[Any] = []
        self.carry = engine.TextCarry()
        self.lookahead = state.lookahead = LookAhead()

    def _pause_for(self, event: threading.Event) -> Any:
        carry = self.carry

        def pause() -> None:
            carry.hold = True  # before the stop: the streamer keeps the word it holds for the continuation
            event.set()
        return pause

    @property
    def tokens(self) -> list[int]:
        return [token for result in self.results for token in result.token_ids]

    def start(self) -> LiveGeneration:
        """The next part, started."""
        done = self.tokens
        settings = self.settings
        if done:  # a continuation: the rest of the budget, the answer so far as input, no second seeding
            settings = dataclasses.replace(settings, max_new_tokens=settings.max_new_tokens - len(done), seed=None,
                                           answer_so_far=len(done))
        event = threading.Event()
        self.state.part_stop = event
        if self.state.stop.is_set():
            event.set()
        self.carry.hold = False
        self.lookahead.resume(self._pause_for(event))
        live = LiveGeneration(self.lm, self.prompt_ids + done, settings, event, self.reuse_key,
                              self.lookahead, self.carry)
        self.state.thread = live.thread
        live.start()
        return live

    def paused(self, result: Any) -> bool:
        """Whether ``result`` ended at a pause that a continuation should follow."""
        self.results.append(result)
        return (result.finish_reason == "cancelled" and self.lookahead.paused and not self.state.stop.is_set()
                and len(self.tokens) < self.settings.max_new_tokens)

    def result(self) -> Any:
        """The result of the whole generation."""
        from .. import engine

        if len(self.results) == 1 and not (self.lookahead.paused and self.results[0].finish_reason == "cancelled"):
            return self.results[0]
        tokens, last = self.tokens, self.results[-1]
        finish = last.finish_reason
        if finish == "cancelled" and not self.state.stop.is_set() and len(tokens) >= self.settings.max_new_tokens:
            finish = "length"  # paused at the budget's last token
        lm = self.lm
        text_tokens = tokens[:-1] if finish == "stop" and tokens and tokens[-1] in lm.eos_token_ids else tokens
        with lm.tokenizer_lock:
            text = lm.tokenizer.decode(text_tokens, skip_special_tokens=True)
        return engine.join_results(self.results, text, finish)

    def held_text(self) -> str:
        """Text a paused part held that no continuation will hand on."""
        return self.carry.rest(self.lm.tokenizer, self.lm.tokenizer_lock)
