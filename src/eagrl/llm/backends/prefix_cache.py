"""The transformers backend's KV cache: the LRU store of prompt prefixes (:class:`PrefixStore`) and the cache layer that
grows in place as a batch decodes (:class:`GrowingLayer`)."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


@dataclass
class PrefixEntry:
    ids: np.ndarray  # (L,) token ids the keys/values belong to
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (H, L_buf, D) keys and values (views of a batch cache)
    index: torch.Tensor  # (L,) where token i's keys/values sit in the L_buf axis (skips pads and holes)

    def gather(self, layer: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(H, n, D) keys and values of the first n tokens."""
        k, v = self.kv[layer]
        idx = self.index[:n]
        return k.index_select(1, idx), v.index_select(1, idx)


class PrefixStore:
    """LRU store of per-sequence keys/values, looked up by longest common token prefix.

    Entries are views of the batch cache they came from plus an index of the real positions, so keeping a
    row costs nothing until it is used again (then one gather).
    """

    def __init__(self, capacity_tokens: int):
        self.capacity = capacity_tokens
        self._entries: OrderedDict[bytes, PrefixEntry] = OrderedDict()
        self._tokens = 0
        self.hits = 0  # prompt tokens served from the store
        self.misses = 0  # prompt tokens computed

    def lookup(self, ids: np.ndarray) -> tuple[PrefixEntry | None, int]:
        """The entry sharing the longest prefix with ``ids`` and that length (at most len(ids) - 1)."""
        best, best_key, best_len, limit = None, None, 0, len(ids) - 1
        for key, e in self._entries.items():
            m = min(len(e.ids), limit)
            if m <= best_len:
                continue
            diff = np.flatnonzero(e.ids[:m] != ids[:m])
            common = int(diff[0]) if diff.size else m
            if common > best_len:
                best, best_key, best_len = e, key, common
        if best_key is not None:
            self._entries.move_to_end(best_key)
        return best, best_len

    def put(self, entry: PrefixEntry) -> None:
        n = len(entry.ids)
        if self.capacity <= 0 or n == 0 or n > self.capacity:
            return
        key = entry.ids.tobytes()
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        self._entries[key] = entry
        self._tokens += n
        while self._tokens > self.capacity:
            _, old = self._entries.popitem(last=False)
            self._tokens -= len(old.ids)

    def clear(self) -> None:
        self._entries.clear()
        self._tokens = 0

    def __len__(self) -> int:
        return len(self._entries)


def growing_cache(n_layers: int) -> DynamicCache:
    cache = DynamicCache()
    cache.layers = [GrowingLayer() for _ in range(n_layers)]
    cache.layer_class_to_replicate = None
    return cache


class GrowingLayer(DynamicLayer):
    """A full-attention cache layer that writes into reserved room (``DynamicLayer`` concatenates, copying
    the whole cache at every decoding step)."""

    def __init__(self, reserve: int = 0):
        super().__init__()
        self.reserve = reserve
        self._n = 0
        self._kb = self._vb = None

    def prime(self, rows: list[tuple[torch.Tensor, torch.Tensor] | None], length: int, reserve: int) -> None:
        """Start from per-row prefixes ((H, l, D) pairs or None), left-padded with zeros to ``length``."""
        ref = next(r[0] for r in rows if r is not None)
        h, _, d = ref.shape
        self._kb = ref.new_zeros(len(rows), h, length + reserve, d)
        self._vb = ref.new_zeros(len(rows), h, length + reserve, d)
        for b, r in enumerate(rows):
            if r is not None:
                n = r[0].shape[1]
                self._kb[b, :, length - n:length] = r[0]
                self._vb[b, :, length - n:length] = r[1]
        self.lazy_initialization(self._kb, self._vb)
        self._n = length
        self.reserve = reserve
        self.keys, self.values = self._kb[:, :, :length], self._vb[:, :, :length]

    def update(self, key_states, value_states, *args, **kwargs):
        b, h, t, d = key_states.shape
        if self._kb is None:
            self.lazy_initialization(key_states, value_states)
            self._kb = key_states.new_empty(b, h, t + self.reserve, d)
            self._vb = value_states.new_empty(b, h, t + self.reserve, d)
        elif self._n + t > self._kb.shape[2]:
            cap = max(2 * self._kb.shape[2], self._n + t + self.reserve)
            kb, vb = key_states.new_empty(b, h, cap, d), value_states.new_empty(b, h, cap, d)
            kb[:, :, :self._n], vb[:, :, :self._n] = self._kb[:, :, :self._n], self._vb[:, :, :self._n]
            self._kb, self._vb = kb, vb
        self._kb[:, :, self._n:self._n + t] = key_states
        self._vb[:, :, self._n:self._n + t] = value_states
        self._n += t
        self.keys, self.values = self._kb[:, :, :self._n], self._vb[:, :, :self._n]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._n

    def keep_rows(self, idx: torch.Tensor) -> None:
        """Only these batch rows from now on (views already handed out keep the old buffers)."""
        self._kb, self._vb = self._kb.index_select(0, idx), self._vb.index_select(0, idx)
        self.keys, self.values = self._kb[:, :, :self._n], self._vb[:, :, :self._n]
