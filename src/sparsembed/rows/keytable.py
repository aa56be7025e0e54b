"""Hash-stored rows: an int64 key -> slot table, and rows that are a pure function of ``(seed, key)``.

The hash-stored parameter family (``HashEmbedding``, ``SparseParam``) keeps only the rows of keys seen, in one
:class:`KeyedRows`: a key gets the next slot of its :class:`KeyTable` on first touch, and its row starts as
:func:`initial_rows` of ``(seed, key)``, so every worker creates the same row for the same key without talking.
:func:`splitmix64` is the one 64-bit mixer of the package (the table's probe, the initial rows, the owner of a key
in the sharded exchange).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import torch

__all__ = ["KeyTable", "KeyedRows", "initial_rows", "splitmix64", "mix"]

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


class KeyedRows:
    """Rows of ``dim`` float32 values keyed by arbitrary int64 keys, created on first touch.

    A new key's row is :func:`initial_rows` of ``(seed, key)``, uniform in ``[-scale, scale)``. Rows live in
    :attr:`rows` ``[capacity, dim]``, indexed by slot (creation order; slots past ``len(self)`` are garbage), and
    storage doubles when full. :attr:`columns` holds per-row side data (an optimizer's state, a last-use counter)
    aligned with the rows: grown with them and zero for every new row.
    """

    def __init__(self, dim: int, *, seed: int, scale: float, capacity: int = 1024) -> None:
        self.dim, self.seed, self.scale = int(dim), int(seed), float(scale)
        self.table = KeyTable(capacity)
        self.rows = torch.empty(max(capacity, 16), self.dim, dtype=torch.float32)
        self.columns: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.table.size

    def keys(self) -> np.ndarray:
        """Every key held, in slot (creation) order."""
        return self.table.slot_keys[: self.table.size].copy()

    def column(
        self, name: str, shape: tuple[int, ...] | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Side data ``name``, ``[capacity, *shape]`` (default ``shape``: ``(dim,)``), created as zeros."""
        if name not in self.columns:
            tail = (self.dim,) if shape is None else tuple(shape)
            self.columns[name] = torch.zeros(self.rows.shape[0], *tail, dtype=dtype)
        return self.columns[name]

    def find_or_create(self, keys: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Slots of ``keys`` and the slots this call created (rows initialized, side data zero).

        Creating may replace :attr:`rows` and the columns by larger ones: read them after this call.
        """
        k = np.ascontiguousarray(torch.as_tensor(keys).numpy(), dtype=np.int64)
        slots, created = self._insert(k)
        new = torch.from_numpy(slots[created])
        if new.numel():
            self.rows[new] = initial_rows(k[created], self.dim, self.seed, self.scale)
        return torch.from_numpy(slots), new

    def slots(self, keys: Any) -> torch.Tensor:
        """Slots of ``keys``, creating the rows of keys seen for the first time (see :meth:`find_or_create`)."""
        return self.find_or_create(keys)[0]

    def lookup(self, keys: Any) -> torch.Tensor:
        """Current rows of ``keys`` (``[n, dim]``, a copy), creating the missing ones."""
        slots = self.slots(keys)  # first: it may replace the row storage
        return self.rows.index_select(0, slots)

    def put(self, keys: Any, rows: torch.Tensor) -> torch.Tensor:
        """Set the rows of ``keys`` (distinct) to ``rows`` (no initial rows computed); returns their slots."""
        k = np.ascontiguousarray(torch.as_tensor(keys).numpy(), dtype=np.int64)
        slots = torch.from_numpy(self._insert(k)[0])
        self.rows[slots] = rows.float()
        return slots

    def _insert(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`KeyTable.find_or_insert`, then room for the new slots, their side data zeroed."""
        slots, created = self.table.find_or_insert(keys)
        if self.table.size > self.rows.shape[0]:
            self._grow(max(self.table.size, 2 * self.rows.shape[0]))
        if created.any():
            new = torch.from_numpy(slots[created])
            for c in self.columns.values():
                c[new] = 0
        return slots, created

    def _grow(self, capacity: int) -> None:
        n = self.rows.shape[0]
        rows = torch.empty(capacity, self.dim, dtype=torch.float32)
        rows[:n] = self.rows
        self.rows = rows
        for name, c in self.columns.items():
            grown = torch.zeros(capacity, *c.shape[1:], dtype=c.dtype)
            grown[:n] = c
            self.columns[name] = grown


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
