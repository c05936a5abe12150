"""Concurrent single-sequence generations share the model: requests that arrive while a
generation runs join its decode loop at the next step boundary.

One :class:`SharedDecoder` per loaded model runs the engine's loop in its own thread while it has
work, holding the model's ``generation_lock``. A new request is prefilled alone (from its kept KV
cache when there is one, see :mod:`.prefix_cache`), gets its first token, and then joins the
running batch: its cache and the batch's are left-padded to one length and stacked
(:func:`~.capabilities.stack_cache_rows`), with an attention mask and per-row positions. Each step
runs one forward for every row; each row chooses its token with its own settings (greedy, or
its temperature/top-k/top-p, its logits processors), streams it, and leaves the batch when it
ends, is cancelled or reaches its own ``max_new_tokens``. A request alone runs exactly the single
sequence loop (same operations, same tokens); rows that shared a batch ran their products with
several rows, whose float rounding can differ from one row's (as in ``generate_batch``), unless
they are reproducible (:mod:`.reproducible`): a reproducible request is prefilled in aligned
tiles, and a step with a reproducible row runs in the reproducible decode mode, so each of its
rows gets the tokens it gets alone. A seeded sampled row draws from its own generator.

Waiting is fair. The model's ``generation_lock`` is granted first come, first served
(:mod:`.fair_lock`), and while a caller that needs the whole model (``generate_batch``, a
``compare()`` batch, a generation on ``model.generate``, an unload) waits for it, the loop admits
no new rows: the rows already running finish, the loop releases the lock, the waiter runs, and the
requests that arrived meanwhile are served after it. So such a caller waits at most for the rows
running when it asked (each bounded by its ``max_new_tokens``), however many single requests keep
arriving, and those wait at most for the callers that asked before the loop stepped aside.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Hashable

import torch

from . import capabilities, reproducible
from .forward_mode import forward_mode
from .prefix_cache import NO_REUSE, kv_bytes_per_token
from .repetition import LoopDetector, loop_guard
from .threads import apply_threads

#: The key of the thread governor of stacked batches in ``LoadedModel.governors`` (batch sizes are
#: positive, so it never collides with ``generate_batch``'s).
STACKED_GOVERNOR = -1

if TYPE_CHECKING:  # pragma: no cover
    from ..settings import GenerationSettings
    from .loaded import LoadedModel


@dataclass(eq=False)
class SharedRequest:
    """One sequence's generation in the shared loop, and what it produced."""

    input_ids: list[int]
    settings: "GenerationSettings"
    cfg: Any
    processors: Any = None
    streamer: Any = None
    stop_event: threading.Event | None = None
    reuse_key: Hashable | None = None
    #: the row's token-probability :class:`~.logprobs.Recorder` (None: none asked for)
    recorder: Any = None
    # ------------------------------------------------------------------ filled by the loop
    tokens: list[int] = field(default_factory=list)
    text: str = ""  #: the answer's text (a final eos left out), decoded before the model can be unloaded
    started: float | None = None
    first_token_at: float | None = None
    ended_at: float | None = None
    reused: int = 0
    #: the most rows this request's steps ran with
    peak_rows: int = 1
    error: BaseException | None = None
    #: what failed while choosing this row's token (its logits processors): only this row ends
    failure: BaseException | None = None
    #: the repetition guard saw this row loop (it ends with ``finish_reason="repetition"``)
    repeated: bool = False
    #: why the answer is not reproducible (None: it is; see :func:`.reproducible.call_reason`)
    unreproducible: str | None = "reproducible mode is off (reproducible=False)"
    done: threading.Event = field(default_factory=threading.Event)
    # ------------------------------------------------------------------ loop state
    cache: Any = None  #: its own cache until it joins a batch
    warpers: Any = None
    sequence: torch.Tensor | None = None  #: prompt and tokens, for logits processors
    next_token: torch.Tensor | None = None
    prompt: torch.Tensor | None = None
    loops: Any = None  #: the row's :class:`~.repetition.LoopDetector` (None without the guard)
    #: the model's reproducible support when this row runs reproducibly (None: it does not)
    exact: Any = None
    #: positions of its cache a later reproducible prefill may reuse (see :class:`.prefix_cache.KeptCache`)
    exact_positions: int = 0
    generator: torch.Generator | None = None  #: a seeded row's own random numbers

    def finished(self, eos: frozenset[int]) -> bool:
        if self.failure is not None or self.repeated:
            return True
        if not self.tokens:
            return False
        return (self.tokens[-1] in eos or len(self.tokens) >= int(self.cfg.max_new_tokens)
                or (self.stop_event is not None and self.stop_event.is_set()))


#: What :meth:`SharedDecoder._take_pending` returns when the loop should release the lock for a waiter.
_STEP_ASIDE: Any = object()


def decoder_for(lm: "LoadedModel") -> "SharedDecoder":
    """The shared decode loop of ``lm`` (made on first use and kept in ``lm.decoder``)."""
    if lm.decoder is None:
        with lm.tokenizer_lock:
            if lm.decoder is None:
                lm.decoder = SharedDecoder(lm)
    return lm.decoder


class SharedDecoder:
    """The shared decode loop of one loaded model (see the module docstring)."""

    def __init__(self, lm: "LoadedModel") -> None:
        self.lm = lm
        self._pending: list[SharedRequest] = []
        self._cond = threading.Condition()
        self._running = False
        #: steps run with several rows, and the most rows one step ran
        self.shared_steps = 0
        self.peak_rows = 0

    def run(self, request: SharedRequest) -> SharedRequest:
        """Queue ``request`` and block until it has finished (its ``error`` set when it failed)."""
        with self._cond:
            self._pending.append(request)
            if not self._running:
                self._running = True
                threading.Thread(target=self._loop, name="midori-shared-decode", daemon=True).start()
        request.done.wait()
        return request

    def run_all(self, requests: list[SharedRequest]) -> list[SharedRequest]:
        """Queue every request at once (they join one batch) and block until all have finished."""
        with self._cond:
            self._pending.extend(requests)
            if not self._running:
                self._running = True
                threading.Thread(target=self._loop, name="midori-shared-decode", daemon=True).start()
        for request in requests:
            request.done.wait()
        return requests

    # ------------------------------------------------------------------ the loop

    def _take_pending(self, active: list[SharedRequest]) -> list[SharedRequest] | None:
        """The requests to admit now; None when there is no work left, :data:`_STEP_ASIDE` when a
        caller waits for the lock and no row runs (the loop releases the lock and queues behind it)."""
        with self._cond:
            if self.lm.generation_lock.waiting and self._pending:  # fairness: no new rows while one waits
                return [] if active else _STEP_ASIDE
            new, self._pending = self._pending, []
            if not new and not active:
                self._running = False
                return None
            return new

    def _loop(self) -> None:
        batch = _Batch(self.lm)
        try:
            self._serve(batch)
        except BaseException as exc:  # a failure outside a step: every waiting request gets it
            with self._cond:
                pending, self._pending = self._pending, []
                self._running = False
            for request in [*batch.rows, *pending]:
                if not request.done.is_set():
                    self._finish(request, error=exc)

    def _serve(self, batch: "_Batch") -> None:
        while self._serve_turn(batch) is _STEP_ASIDE:
            pass  # the lock is asked for again, behind the callers waiting for it

    def _serve_turn(self, batch: "_Batch") -> Any:
        """Serve requests while holding the lock; returns None when the work is done, or
        :data:`_STEP_ASIDE` when it released the lock for a waiting caller."""
        lm = self.lm
        with lm.generation_lock:
            while True:
                new = self._take_pending(batch.rows)
                if new is None or new is _STEP_ASIDE:
                    return new
                for request in new:
                    self._admit(batch, request)
                if not batch.rows:
                    continue
                try:
                    batch.step()
                except BaseException as exc:  # delivered to every row of the failed step
                    for row in batch.rows:
                        self._finish(row, error=exc)
                    batch.clear()
                    continue
                for row in batch.finished_rows():
                    self._finish(row, error=row.failure)

    def _admit(self, batch: "_Batch", request: SharedRequest) -> None:
        lm = self.lm
        try:
            if lm.model is None:
                raise RuntimeError(f"model {lm.spec.source.name!r} was unloaded")
            if request.stop_event is not None and request.stop_event.is_set():
                self._finish(request)
                return
            batch.prefill(request)
        except BaseException as exc:
            self._finish(request, error=exc)
            return
        if request.finished(lm.eos_token_ids):
            self._finish(request)
            return
        try:
            batch.join(request)
        except BaseException as exc:
            self._finish(request, error=exc)
            return
        self.peak_rows = max(self.peak_rows, len(batch.rows))

    def _finish(self, request: SharedRequest, error: BaseException | None = None) -> None:
        """End a request: its text, its kept cache, and wake its caller (whatever happens here)."""
        lm = self.lm
        try:
            if error is None:
                if request.streamer is not None:
                    request.streamer.end()
                tokens = request.tokens
                text_tokens = tokens[:-1] if tokens and tokens[-1] in lm.eos_token_ids else tokens
                with lm.tokenizer_lock:
                    request.text = lm.tokenizer.decode(text_tokens, skip_special_tokens=True)
                keep = request.reuse_key is not None and lm.prefix_support.supported
                if keep and request.cache is not None and request.tokens:
                    held = list(request.input_ids) + request.tokens[:-1]
                    if capabilities.cache_length(request.cache) == len(held):
                        lm.prefix_caches.put(request.reuse_key, held, request.cache, kv_bytes_per_token(lm.model),
                                             request.exact_positions, request.unreproducible is None)
        except BaseException as exc:  # delivered to the caller
            error = exc
        finally:
            request.error = error
            request.cache = request.sequence = request.next_token = request.prompt = request.loops = None
            request.generator = None
            request.ended_at = time.perf_counter()
            request.done.set()


class _Batch:
    """The rows decoding together: one request with its own cache, or several stacked."""

    def __init__(self, lm: "LoadedModel") -> None:
        self.lm = lm
        self.rows: list[SharedRequest] = []
        self.cache: Any = None  # the stacked cache (None while one row runs on its own cache)
        self.mask: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None  # next position of each row
        self.governor = None

    def clear(self) -> None:
        """Forget every row (after a failed step)."""
        self.rows, self.cache, self.mask, self.positions, self.governor = [], None, None, None, None

    # ------------------------------------------------------------------ a row joins

    def prefill(self, request: SharedRequest) -> None:
        """The request's prompt forward (from its kept cache when there is one) and first token."""
        lm = self.lm
        settings = request.settings
        request.warpers = capabilities.sampling_warpers(request.cfg) if request.cfg.do_sample else None
        guard = loop_guard(settings)  # under a constraint its logits processor runs the guard
        request.loops = LoopDetector(guard) if guard is not None else None
        request.unreproducible = reproducible.call_reason(lm, settings, engine_path=True)
        if settings.reproducible and reproducible.support(lm).supported:
            request.exact = reproducible.support(lm)
        governor = apply_threads(lm, settings.num_threads)
        ids = request.prompt = torch.tensor([request.input_ids], dtype=torch.long, device=lm.input_device)
        request.started = time.perf_counter()
        if request.streamer is not None:
            request.streamer.put(ids.cpu())
        if request.processors is not None:
            request.sequence = torch.empty((1, ids.shape[1] + int(request.cfg.max_new_tokens)), dtype=torch.long,
                                           device=ids.device)
            request.sequence[:, :ids.shape[1]] = ids
        keep = request.reuse_key is not None and lm.prefix_support.supported
        tile = reproducible.PREFILL_TILE if request.exact else None
        found = (lm.prefix_caches.take(request.reuse_key, request.input_ids, tile,
                                       continuation=settings.answer_so_far > 0) if keep else NO_REUSE)
        request.reused = found.reused
        cache = found.cache if found.cache is not None else capabilities.new_dynamic_cache(lm.model)
        first = (reproducible.first_forward(request.exact, settings, len(request.input_ids), found.reused,
                                            found.exact) if request.exact else None)
        request.exact_positions = first.exact if first is not None else 0
        if first is not None and first.reason is not None:
            request.unreproducible = request.unreproducible or first.reason
        mode = first.mode if first is not None else None
        pinned = first.threads if first is not None else None
        with torch.inference_mode(), forward_mode(mode), reproducible.threads(pinned):
            out = lm.model(input_ids=ids[:, request.reused:], use_cache=True, logits_to_keep=1,
                           **{lm.decode_support.cache_argument: cache})
        if mode is not None and mode.inexact:
            request.unreproducible = request.unreproducible or mode.inexact[0]
        request.cache = cache
        self._choose(request, out.logits[:, -1, :])
        if governor is not None:
            governor.step()

    def join(self, request: SharedRequest) -> None:
        """Add a prefilled request to the rows (stacking caches once there are two)."""
        if not self.rows:
            self.rows = [request]
            self.governor = apply_threads(self.lm, request.settings.num_threads)
            return
        lm = self.lm
        if self.cache is None:  # the running row's own cache becomes the batch's
            only = self.rows[0]
            length = capabilities.cache_length(only.cache)
            self.cache, only.cache = only.cache, None
            self.mask = torch.ones((1, length), dtype=torch.long, device=lm.input_device)
            self.positions = torch.tensor([[length]], dtype=torch.long, device=lm.input_device)
        own = capabilities.cache_length(request.cache)
        width = max(own, self.mask.shape[1])
        self.cache = capabilities.stack_cache_rows(lm.model, [(self.cache, width - self.mask.shape[1]),
                                                              (request.cache, width - own)])
        request.cache = None
        pad = lambda m, n: torch.cat([m.new_zeros((m.shape[0], n)), m], dim=1) if n else m  # noqa: E731
        self.mask = torch.cat([pad(self.mask, width - self.mask.shape[1]),
                               pad(torch.ones((1, own), dtype=torch.long, device=lm.input_device), width - own)])
        self.positions = torch.cat([self.positions, torch.tensor([[own]], dtype=torch.long, device=lm.input_device)])
        if len(self.rows) == 1:
            # one thread governor for every stacked batch size, kept while the rows change (a new
            # governor per size would probe every core again at each join and leave)
            self.governor = apply_threads(lm, self.rows[0].settings.num_threads, rows=STACKED_GOVERNOR)
        elif self.governor is not None:
            self.governor.resume()  # the batch's count again after the joiner's prefill
        self.rows.append(request)
        for row in self.rows:
            row.peak_rows = max(row.peak_rows, len(self.rows))

    # ------------------------------------------------------------------ one step

    def step(self) -> None:
        """One forward of every row's last token, and each row's next token."""
        lm = self.lm
        argument = lm.decode_support.cache_argument
        exact = next((row.exact for row in self.rows if row.exact is not None), None)
        mode = reproducible.decode_mode(exact) if exact is not None else None
        pinned = exact.decode_threads if exact is not None else None
        with torch.inference_mode(), forward_mode(mode), reproducible.threads(pinned):
            if self.cache is None:  # one row on its own cache: the single-sequence loop
                row = self.rows[0]
                out = lm.model(input_ids=row.next_token[:, None], use_cache=True, **{argument: row.cache})
                self._choose_or_fail(row, out.logits[:, -1, :])
            else:
                tokens = torch.cat([row.next_token for row in self.rows])[:, None]
                self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
                out = lm.model(input_ids=tokens, attention_mask=self.mask, position_ids=self.positions,
                               use_cache=True, **{argument: self.cache})
                self.positions = self.positions + 1
                logits = out.logits[:, -1, :]
                for index, row in enumerate(self.rows):
                    self._choose_or_fail(row, logits[index:index + 1])
        if mode is not None and mode.inexact:
            for row in self.rows:
                row.unreproducible = row.unreproducible or mode.inexact[0]
        if self.governor is not None:
            self.governor.step()

    def _choose_or_fail(self, row: SharedRequest, logits: torch.Tensor) -> None:
        try:
            self._choose(row, logits)
        except Exception as exc:  # the row's own processors failed: the row ends with the error
            row.failure = exc

    def _choose(self, row: SharedRequest, logits: torch.Tensor) -> None:
        """The row's next token from its logits (its processors, then argmax or its warpers and a draw)."""
        logits = raw = logits.to(dtype=torch.float32)
        length = len(row.input_ids) + len(row.tokens)
        if row.sequence is not None:
            if row.recorder is not None:
                raw = logits.clone()
            logits = row.processors(row.sequence[:, :length], logits)
        if row.warpers is None:
            next_token = torch.argmax(logits, dim=-1)
        else:
            logits = row.warpers(row.prompt, logits)
            probs = torch.nn.functional.softmax(logits, dim=-1)
            if row.generator is None and not row.tokens:  # a seeded row's own, made at its first draw
                row.generator = reproducible.request_generator(row.settings, probs.device, probs.shape[-1])
            next_token = torch.multinomial(probs, num_samples=1, generator=row.generator).squeeze(1)
        if row.recorder is not None:
            row.recorder.step(raw, logits, next_token)
        token = int(next_token[0])
        row.tokens.append(token)
        if row.loops is not None and row.loops.push(token):
            row.repeated = True
        if row.sequence is not None:
            row.sequence[0, length] = token
        if row.first_token_at is None:
            row.first_token_at = time.perf_counter()
        if row.streamer is not None:
            row.streamer.put(next_token.cpu())
        row.next_token = next_token

    # ------------------------------------------------------------------ rows leave

    def finished_rows(self) -> list[SharedRequest]:
        """Take the rows that ended out of the batch (their cache rows with them)."""
        eos = self.lm.eos_token_ids
        done = [row for row in self.rows if row.finished(eos)]
        if not done:
            return []
        keep = [index for index, row in enumerate(self.rows) if not row.finished(eos)]
        if self.cache is not None:
            if keep:
                chosen = torch.tensor(keep, dtype=torch.long, device=self.lm.input_device)
                self.cache.batch_select_indices(chosen)
                self.mask, self.positions = self.mask[chosen], self.positions[chosen]
            else:
                self.cache = self.mask = self.positions = None
        self.rows = [self.rows[index] for index in keep]
        return done


__all__ = ["SharedDecoder", "SharedRequest"]
