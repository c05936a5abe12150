"""Reproducible generation: the same prompt, settings and seed give the same tokens alone, in a
batch of any size and company, concurrently with other requests, and from a kept KV cache.

Why answers differ otherwise (measured on the default model in bfloat16 on CPU): a matrix
product's rounding depends on how many rows it multiplies (torch picks other kernels and sums in
another order for 1, 2-3 and 4 or more rows, and the engine widens bfloat16 weights to float32
only for more than two rows); SDPA attention sums a row's keys in blocks counted from the first
key, so the left padding of a stacked batch moves the block edges; and a kept cache holds keys
and values computed with other row counts (the answer one token at a time) than a full prefill
of the longer prompt. Each of these changes the last bits, and in bfloat16 a greedy answer
follows them within a few dozen tokens. A reproducible generation therefore (each piece
necessary, see the README's section on reproducible mode for the measurements):

* prefills alone (never in a padded batch), in tiles of :data:`PREFILL_TILE` positions aligned to
  absolute positions (:mod:`.forward_mode`: the products of a tile have the tile's rows, the
  attention of a tile covers the keys up to its end), so a prompt's keys and values are the same
  whether the positions before a tile were prefilled now or kept from an earlier generation;
* reuses from a kept cache only the whole tiles a reproducible prefill computed (never the
  answer's positions, which were decoded one at a time);
* decodes each row with products that give a row the same result whatever the other rows (the
  layer's own product where :func:`support` finds that it does, else tiles of
  :data:`DECODE_TILE` rows, padded), and with each row's attention over its own keys;
* draws a seeded sample from the request's own ``torch.Generator``, never the global one.

:func:`support` checks, once per loaded model, that this holds on this machine (a probe that
compares a prefill from a cut cache with a full one and rows of two stacked batches with the
same row decoded alone, at one thread and at every core) and says why when it does not. CPU only.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterator

import torch

from . import capabilities
from .forward_mode import ForwardMode
from .layers import use_tiled_linears
from .threads import usable_cores

if TYPE_CHECKING:  # pragma: no cover
    from ..settings import GenerationSettings
    from .loaded import LoadedModel

#: Positions per prefill tile; a kept cache is reused in whole tiles.
PREFILL_TILE = 64
#: Rows per decode product when a layer's own product depends on the row count.
DECODE_TILE = 8

#: Held while ``model.generate`` samples with a seed: it draws from torch's global generator, so
#: two such generations (on two models, in two threads) must not interleave their draws.
GLOBAL_RNG_LOCK = threading.Lock()


@dataclass(frozen=True)
class ReproducibleSupport:
    """Whether reproducible generation holds for a loaded model on this machine, and how.

    ``products``: ``"rows"`` (each layer's own product, found to give every row the same result
    at any row count) or ``"tiles"`` (decode products of :data:`DECODE_TILE` rows); ``reason``
    says why it does not hold when ``supported`` is False. ``prefill_threads`` /
    ``decode_threads``: the torch thread count reproducible prefills / decode steps run at, where
    the probe found that the count changes the result (None: it does not, and the generation's own
    thread setting applies).
    """

    supported: bool
    products: str | None = None
    reason: str | None = None
    prefill_threads: int | None = None
    decode_threads: int | None = None

    @property
    def decode_tile(self) -> int:
        """The decode forward mode's tile (0: each layer's own product)."""
        return 0 if self.products == "rows" else DECODE_TILE


@contextmanager
def threads(count: int | None) -> Iterator[None]:
    """Run the ``with`` block at ``count`` torch threads (None: unchanged), restoring the count after."""
    previous = torch.get_num_threads()
    if count is None or count == previous:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def request_generator(settings: GenerationSettings, device: Any, width: int) -> torch.Generator | None:
    """A generator of its own for a seeded sampled generation (None: unseeded, or greedy).

    A continuation of a paused generation (``settings.answer_so_far`` tokens so far, the same
    seed) gets the generator where the paused part left it: the draws of the answer so far, one
    sample over ``width`` logits per token, are replayed (:func:`skip_draws`)."""
    if settings.seed is None or settings.greedy:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(settings.seed)
    skip_draws(generator, settings.answer_so_far, width, device)
    return generator


def skip_draws(generator: torch.Generator | None, count: int, width: int, device: Any) -> None:
    """Advance ``generator`` (None: torch's global one) past ``count`` token samples over ``width``
    logits: ``torch.multinomial`` of one sample from a row of ``width`` probabilities draws the
    same random numbers whatever the probabilities, so sampling a uniform row replays them."""
    if count <= 0:
        return
    uniform = torch.full((1, width), 1.0 / width, device=device)
    for _ in range(count):
        torch.multinomial(uniform, num_samples=1, generator=generator)


def logits_width(lm: LoadedModel) -> int:
    """The width of ``lm``'s logits (its output layer's rows; the configuration's vocabulary size
    where the model has no output layer to ask)."""
    head = lm.model.get_output_embeddings() if hasattr(lm.model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is not None:
        return int(weight.shape[0])
    config = lm.model.config.get_text_config() if hasattr(lm.model.config, "get_text_config") else lm.model.config
    return int(config.vocab_size)


def prefill_mode() -> ForwardMode:
    """The forward mode of a reproducible prefill."""
    return ForwardMode("prefill", PREFILL_TILE)


def decode_mode(found: ReproducibleSupport) -> ForwardMode:
    """The forward mode of a reproducible decode step on a model with ``found`` support."""
    return ForwardMode("decode", found.decode_tile)


def exact_positions(prompt_tokens: int) -> int:
    """Positions of a reproducibly prefilled prompt that later prompts may reuse (its whole tiles)."""
    return (prompt_tokens // PREFILL_TILE) * PREFILL_TILE


#: Why a continuation of a paused stream is not reproducible without its first part's KV cache.
RESUMED_WITHOUT_CACHE = ("a paused stream continued without the KV cache its first part left (it paused while "
                         "sharing a decode batch, the cache was evicted or forgotten, or the model was reloaded): "
                         "the answer so far was prefilled again, which rounds differently from the decode steps "
                         "that computed it")


@dataclass(frozen=True)
class FirstForward:
    """How a reproducible generation runs its first forward (see :func:`first_forward`)."""

    mode: ForwardMode
    threads: int | None  #: the torch thread count it runs at (None: unchanged)
    #: positions of the cache afterwards that a later reproducible prefill may reuse
    exact: int
    reason: str | None  #: why the answer is not reproducible (None: it is)


def first_forward(found: ReproducibleSupport, settings: GenerationSettings, prompt_tokens: int, reused: int,
                  reused_exact: int) -> FirstForward:
    """The first forward of a reproducible generation of ``prompt_tokens`` positions whose first
    ``reused`` come from a kept cache (``reused_exact`` of them computed by a reproducible prefill).

    A fresh prompt is prefilled in aligned tiles. A continuation of a paused generation
    (``settings.answer_so_far``) that found the whole cache its first part left (every position
    but the last token, see :meth:`~.prefix_cache.PrefixCacheStore.take`) runs that token as the
    decode step the unpaused generation would have run, so it continues with the same numbers;
    without that cache the answer so far is prefilled again, and the answer is not reproducible."""
    if settings.answer_so_far and reused == prompt_tokens - 1:
        return FirstForward(decode_mode(found), found.decode_threads, reused_exact, None)
    return FirstForward(prefill_mode(), found.prefill_threads, exact_positions(prompt_tokens),
                        RESUMED_WITHOUT_CACHE if settings.answer_so_far else None)


def support(lm: LoadedModel) -> ReproducibleSupport:
    """Whether reproducible generation holds for ``lm`` (checked on first use, then kept on
    ``lm.reproducible``). The first call prepares the model (its linear layers and attention
    follow :mod:`.forward_mode`; outside a reproducible forward nothing changes) and runs the
    probe; call it holding ``lm.generation_lock``."""
    found = lm.reproducible
    if found is None:
        found = lm.reproducible = _prepare(lm)
        if not found.supported:
            capabilities.fallback(f"reproducible:{lm.spec.key}", (
                f"reproducible mode is not available for {lm.spec.source.name!r}: {found.reason}; its answers "
                "carry reproducible=False"))
    return found


def call_reason(lm: LoadedModel, settings: GenerationSettings, engine_path: bool) -> str | None:
    """Why a generation with ``settings`` is not reproducible (None: it is). ``engine_path``: it
    runs in the engine's decode loops (else ``model.generate``, one sequence at a time)."""
    if not settings.reproducible:
        return "reproducible mode is off (reproducible=False)"
    if not settings.greedy and settings.seed is None:
        return "sampled without a seed"
    if lm.spec.device != "cpu":
        return f"reproducible mode runs on CPU only (the model is on {lm.spec.device!r})"
    if settings.answer_so_far and not engine_path:
        return ("a paused stream continued on model.generate's path, which prefills the answer so far again "
                "(it rounds differently from the decode steps that computed it)")
    if engine_path:
        found = support(lm)
        if not found.supported:
            return found.reason
    return None


def _prepare(lm: LoadedModel) -> ReproducibleSupport:
    if lm.spec.device != "cpu":
        return ReproducibleSupport(False, reason=f"reproducible mode runs on CPU only (the model is on {lm.spec.device!r})")
    if lm.spec.quantization in ("8bit", "4bit"):
        return ReproducibleSupport(False, reason="bitsandbytes layers do not follow the reproducible forward")
    attention = capabilities.exact_attention_support(lm.model)
    if not attention.supported:
        return ReproducibleSupport(False, reason=attention.reason)
    use_tiled_linears(lm.model)
    capabilities.use_exact_attention(lm.model)
    try:
        return _probe(lm)
    except _Inexact as exc:
        return ReproducibleSupport(False, reason=f"a layer could not keep rows apart ({exc})")


class _Inexact(RuntimeError):
    pass


def _forward(lm: LoadedModel, mode: ForwardMode, ids: torch.Tensor, cache: Any, **kwargs: Any) -> torch.Tensor:
    from .forward_mode import forward_mode

    with forward_mode(mode):
        out = lm.model(input_ids=ids, use_cache=True, logits_to_keep=1,
                       **{lm.decode_support.cache_argument: cache}, **kwargs)
    if mode.inexact:
        raise _Inexact(mode.inexact[0])
    return out.logits[:, -1, :]


def _copy(lm: LoadedModel, cache: Any) -> Any:
    return capabilities.stack_cache_rows(lm.model, [(cache, 0)])


def _stacked_step(lm: LoadedModel, found: ReproducibleSupport, parts: list[tuple[Any, int]], token: int) -> torch.Tensor:
    """One reproducible decode step of the rows of ``parts`` (cache, length) stacked with left padding."""
    width = max(length for _, length in parts)
    device = lm.input_device
    cache = capabilities.stack_cache_rows(lm.model, [(c, width - length) for c, length in parts])
    mask = torch.tensor([[0] * (width - length) + [1] * (length + 1) for _, length in parts], device=device)
    positions = torch.tensor([[length] for _, length in parts], device=device)
    ids = torch.full((len(parts), 1), token, dtype=torch.long, device=device)
    return _forward(lm, decode_mode(found), ids, cache, attention_mask=mask, position_ids=positions)


def _probe(lm: LoadedModel) -> ReproducibleSupport:
    """The support reproducible generation has on ``lm`` here, found by comparing logits bit for
    bit: a prefill from a cut cache against a full one, rows of stacked batches (3 and 9 rows)
    against the same row decoded alone, each at one thread and at every usable core."""
    model = lm.model
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    vocab = int(getattr(text_config, "vocab_size", 1000))
    device = lm.input_device
    sequence = torch.randint(0, vocab, (1, PREFILL_TILE + 5), generator=torch.Generator().manual_seed(0)).to(device)
    length, token = sequence.shape[1], int(sequence[0, 0])
    many = max(1, usable_cores())
    new = capabilities.new_dynamic_cache
    with torch.inference_mode(), threads(many):
        whole = new(model)
        first = _forward(lm, prefill_mode(), sequence, whole)
        cut = new(model)
        _forward(lm, prefill_mode(), sequence[:, :PREFILL_TILE], cut)
        if not torch.equal(_forward(lm, prefill_mode(), sequence[:, PREFILL_TILE:], cut), first):
            return ReproducibleSupport(False, reason="a prefill from a cut cache differs from a full prefill")
        with threads(1):
            prefill_threads = None if torch.equal(_forward(lm, prefill_mode(), sequence, new(model)), first) else many
        short, shorter = new(model), new(model)
        _forward(lm, prefill_mode(), sequence[:, :9], short)
        _forward(lm, prefill_mode(), sequence[:, 3:8], shorter)
        failures = []
        for products in ("rows", "tiles"):
            found = ReproducibleSupport(True, products, prefill_threads=prefill_threads)
            alone = _forward(lm, decode_mode(found), torch.tensor([[token]], device=device), _copy(lm, whole))[0]
            three = _stacked_step(lm, found, [(short, 9), (whole, length), (shorter, 5)], token)
            nine = _stacked_step(lm, found, [(short, 9), (shorter, 5)] * 4 + [(whole, length)], token)
            if not (torch.equal(three[1], alone) and torch.equal(nine[8], alone)):
                failures.append(f"{products}: a row decoded in a stacked batch differs from the same row decoded alone")
                continue
            with threads(1):
                same = torch.equal(_forward(lm, decode_mode(found), torch.tensor([[token]], device=device),
                                            _copy(lm, whole))[0], alone) \
                    and torch.equal(_stacked_step(lm, found, [(short, 9), (whole, length), (shorter, 5)], token), three)
            return replace(found, decode_threads=None if same else many)
    return ReproducibleSupport(False, reason="; ".join(failures))


__all__ = ["DECODE_TILE", "GLOBAL_RNG_LOCK", "PREFILL_TILE", "RESUMED_WITHOUT_CACHE", "FirstForward",
           "ReproducibleSupport", "call_reason", "decode_mode", "exact_positions", "first_forward", "logits_width",
           "prefill_mode", "request_generator", "skip_draws", "support"]
