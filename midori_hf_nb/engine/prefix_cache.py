"""Conversation KV caches kept between turns, so a turn prefills only its new tokens.

After a generation on the engine's single-sequence loop, its ``DynamicCache`` (the prompt and
the answer, all but the last token) is kept in the model's :class:`PrefixCacheStore` under the
caller's owner key (an agent and a session). The owner's next prompt is compared with the kept
token ids: their longest common prefix is kept (the cache is cut back to it) and only the rest
of the prompt is prefilled. Keys and values of a position depend only on the tokens up to it,
so the answer follows the same tokens; a history that was edited, regenerated or trimmed shares a
shorter prefix (or none), and only what still matches is used.

Same tokens out holds exactly in reproducible generation (:mod:`.reproducible`), which reuses only
the whole prefill tiles a reproducible prefill computed (``KeptCache.exact``). Otherwise the kept
positions were computed with other row counts than a full prefill of the longer prompt computes
them (the prompt in one pass, the answer one token at a time): their last bits can differ, and in
bfloat16 a greedy answer can then change after some tokens (in float32 too, more rarely).

The store is a least-recently-used map bounded in entries and bytes; it is emptied when the
model is unloaded. Each owner has at most one entry, taken out while its generation runs.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Hashable, Sequence

from . import capabilities

#: Kept caches per model (one per agent and session).
DEFAULT_MAX_ENTRIES = 8
#: Bytes of kept caches per model.
DEFAULT_MAX_BYTES = 512 * 2**20
#: A common prefix shorter than this is not worth keeping: the prompt is prefilled in full.
MIN_REUSED_TOKENS = 8


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of keys and values one position takes in the cache of ``model`` (from its config)."""
    cfg = model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    layers = int(getattr(text_cfg, "num_hidden_layers", 1))
    heads = int(getattr(text_cfg, "num_attention_heads", 1))
    kv_heads = int(getattr(text_cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text_cfg, "head_dim", None) or int(getattr(text_cfg, "hidden_size", 64)) // max(heads, 1))
    dtype = getattr(model, "dtype", None)
    element = dtype.itemsize if dtype is not None and dtype.is_floating_point else 4
    return 2 * layers * kv_heads * head_dim * element


@dataclass
class KeptCache:
    """A generation's KV cache and the token ids of the positions it holds."""

    token_ids: tuple[int, ...]
    cache: Any
    nbytes: int
    #: the first positions a reproducible prefill computed in whole tiles (reproducible generations
    #: reuse no more than these; 0: none)
    exact: int = 0
    #: every position was computed by a reproducible generation (its prefill and decode steps), so
    #: the continuation of a paused one may reuse all of them
    reproducible: bool = False


@dataclass(frozen=True)
class Reuse:
    """What :meth:`PrefixCacheStore.take` found: a cache cut back to ``reused`` positions (None:
    none), the first ``exact`` of them computed by a reproducible prefill in whole tiles."""

    cache: Any
    reused: int
    exact: int = 0


NO_REUSE = Reuse(None, 0)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token id sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCacheStore:
    """The kept conversation caches of one loaded model: LRU, at most ``max_entries`` entries
    and ``max_bytes`` bytes, one entry per owner. Thread-safe."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 0:
            raise ValueError(f"max_entries={max_entries!r} is not allowed: expected an integer >= 0")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes={max_bytes!r} is not allowed: expected an integer >= 0")
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[Hashable, KeptCache] = OrderedDict()
        self._lock = threading.Lock()
        #: prompts that reused a kept cache, and prompt tokens not prefilled thanks to it
        self.hits = 0
        self.reused_tokens = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes of the kept caches."""
        with self._lock:
            return sum(entry.nbytes for entry in self._entries.values())

    def owners(self) -> list[Hashable]:
        """Owners with a kept cache, least recently used first."""
        with self._lock:
            return list(self._entries)

    def take(self, owner: Hashable, input_ids: Sequence[int], tile: int | None = None,
             continuation: bool = False) -> Reuse:
        """Take the owner's kept cache out of the store, cut back to the prefix it shares with
        ``input_ids`` (at most all but the last prompt token, whose logits the generation needs).
        With ``tile`` (a reproducible generation) only whole tiles of the positions a
        reproducible prefill computed (``KeptCache.exact``) are kept -- except for the
        ``continuation`` of a paused reproducible generation whose prompt is the whole kept cache
        and one token more: it keeps everything, as the unpaused generation would have.

        Returns :data:`NO_REUSE` when the owner has none or the shared prefix is shorter than
        :data:`MIN_REUSED_TOKENS` (the kept cache is dropped: the prompt no longer extends it).
        """
        with self._lock:
            entry = self._entries.pop(owner, None)
        if entry is None:
            return NO_REUSE
        shared = min(common_prefix(entry.token_ids, input_ids), len(input_ids) - 1)
        whole = continuation and entry.reproducible and shared == len(entry.token_ids) == len(input_ids) - 1
        if tile is not None and not whole:
            shared = (min(shared, entry.exact) // tile) * tile
        if shared < MIN_REUSED_TOKENS:
            return NO_REUSE
        capabilities.crop_cache(entry.cache, shared)
        with self._lock:
            self.hits += 1
            self.reused_tokens += shared
        return Reuse(entry.cache, shared, min(shared, entry.exact))

    def put(self, owner: Hashable, token_ids: Sequence[int], cache: Any, bytes_per_token: int, exact: int = 0,
            reproducible: bool = False) -> bool:
        """Keep ``cache`` (holding ``token_ids``; its first ``exact`` positions computed by a
        reproducible prefill in whole tiles; ``reproducible``: all of them by a reproducible
        generation) as the owner's, evicting the least recently used entries beyond the bounds.
        False (nothing kept) when it alone exceeds ``max_bytes``."""
        nbytes = len(token_ids) * bytes_per_token
        if nbytes > self.max_bytes or self.max_entries == 0:
            self.drop(owner)
            return False
        with self._lock:
            self._entries.pop(owner, None)
            self._entries[owner] = KeptCache(tuple(token_ids), cache, nbytes, exact, reproducible)
            total = sum(entry.nbytes for entry in self._entries.values())
            while len(self._entries) > self.max_entries or total > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                total -= evicted.nbytes
        return True

    def drop(self, owner: Hashable) -> None:
        """Forget the owner's kept cache (its history changed, or it is gone)."""
        with self._lock:
            self._entries.pop(owner, None)

    def drop_matching(self, predicate: Any) -> int:
        """Forget the kept caches of every owner for which ``predicate(owner)`` is true; how many."""
        with self._lock:
            gone = [owner for owner in self._entries if predicate(owner)]
            for owner in gone:
                del self._entries[owner]
        return len(gone)

    def clear(self) -> None:
        """Forget every kept cache."""
        with self._lock:
            self._entries.clear()


__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_ENTRIES", "KeptCache", "MIN_REUSED_TOKENS", "NO_REUSE",
           "PrefixCacheStore", "Reuse", "common_prefix", "kv_bytes_per_token"]
