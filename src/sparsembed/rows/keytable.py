"""Hash-stored rows: an int64 key -> slot table, and rows that are a pure function of ``(seed, key)``.

The seed's sparse-stored family (``HashEmbedding``, ``SparseParam``) keeps only the rows of keys seen: a key gets
the next slot on first touch, and its row starts as :func:`initial_rows` of ``(seed, key)``, so every worker
creates the same row for the same key without talking. :func:`splitmix64` is the one 64-bit mixer of the package
(the table's probe, the initial rows, the owner of a key in the sharded exchange).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import torch

__all__ = ["KeyTable", "initial_rows", "splitmix64", "mix"]

#: splitmix64's increment (the golden ratio in 64 bits).
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(keys: np.ndarray) -> np.ndarray:
    """splitmix64 of each int64 key (``key + GOLDEN``, then the finalizer :func:`mix`), as uint64."""
    k = np.ascontiguousarray(keys, dtype=np.int64)
    out = np.empty(k.shape[0], np.uint64)
    _splitmix64(k, out)
    return out


def initial_rows(keys: Any, dim: int, seed: int, scale: float) -> torch.Tensor:
    """Rows ``[n, dim]``, uniform in ``[-scale, scale)``, a pure function of ``(seed, key, column)``."""
    k = np.ascontiguousarray(np.asarray(keys), dtype=np.int64)
    out = np.empty((k.shape[0], dim), np.float32)
    _fill_initial(k, np.uint64(seed & 0xFFFFFFFFFFFFFFFF), np.float32(scale), out)
    return torch.from_numpy(out)


class KeyTable:
    """Open-addressing int64 key -> slot table (linear probing, load <= 1/2); slots are creation order."""

    def __init__(self, capacity: int) -> None:
        cap = 1 << max(4, int(2 * max(capacity, 1) - 1).bit_length())
        self.keys = np.zeros(cap, np.int64)
        self.slots = np.zeros(cap, np.int64)
        self.used = np.zeros(cap, np.uint8)
        self.slot_keys = np.zeros(cap // 2, np.int64)
        self.size = 0

    def find_or_insert(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slots of ``keys`` and a mask of those created by this call."""
        if 2 * (self.size + keys.shape[0]) > self.keys.shape[0]:
            self._grow(self.size + keys.shape[0])
        slots = np.empty(keys.shape[0], np.int64)
        created = np.zeros(keys.shape[0], np.bool_)
        table = (self.keys, self.slots, self.used, self.slot_keys)
        self.size = int(_find_or_insert(*table, self.size, keys, slots, created))
        return slots, created

    def _grow(self, need: int) -> None:
        cap = 1 << int(2 * need).bit_length()
        old = self.slot_keys[: self.size].copy()
        self.keys = np.zeros(cap, np.int64)
        self.slots = np.zeros(cap, np.int64)
        self.used = np.zeros(cap, np.uint8)
        self.slot_keys = np.zeros(cap // 2, np.int64)
        slots = np.empty(old.shape[0], np.int64)
        created = np.zeros(old.shape[0], np.bool_)
        _find_or_insert(self.keys, self.slots, self.used, self.slot_keys, 0, old, slots, created)


# -- compiled kernels ---------------------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True, inline="always")
def mix(z):  # pragma: no cover - compiled
    """splitmix64 finalizer on a uint64."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, nogil=True)
def _splitmix64(keys, out):  # pragma: no cover - compiled
    for i in range(keys.shape[0]):
        out[i] = mix(np.uint64(keys[i]) + GOLDEN)


@numba.njit(cache=True, nogil=True)
def _find_or_insert(tkeys, tslots, used, slot_keys, size, keys, out, created):  # pragma: no cover - compiled
    mask = np.uint64(tkeys.shape[0] - 1)
    for i in range(keys.shape[0]):
        k = keys[i]
        h = mix(np.uint64(k) + GOLDEN) & mask
        while True:
            if used[h] == 0:
                used[h] = 1
                tkeys[h] = k
                tslots[h] = size
                slot_keys[size] = k
                out[i] = size
                created[i] = True
                size += 1
                break
            if tkeys[h] == k:
                out[i] = tslots[h]
                break
            h = (h + np.uint64(1)) & mask
    return size


@numba.njit(cache=True, nogil=True)
def _fill_initial(keys, seed, scale, out):  # pragma: no cover - compiled
    base = mix(seed + np.uint64(0x632BE59BD9B4E019))
    for i in range(keys.shape[0]):
        kh = mix(base ^ (np.uint64(keys[i]) * GOLDEN))
        for c in range(out.shape[1]):
            z = mix(kh + np.uint64(c + 1) * GOLDEN)
            u = np.float64(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)
            out[i, c] = np.float32((2.0 * u - 1.0) * scale)
