"""Row-sparse gradients: a few rows of a huge ``num_rows x dim`` matrix, with in-place coalescing.

A CBOW or skip-gram step touches the same hot rows ("the", "of") many times per batch. :class:`RowSparse`
holds the raw ``(ids, values)`` pairs as produced, and :meth:`RowSparse.coalesce_` turns them, in place, into
strictly increasing ids with duplicate rows summed, without a second ``n x dim`` buffer.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import torch

from sparsembed.rows.rowsets import strictly_increasing

__all__ = ["RowSparse", "VALUE_DTYPES"]

#: Value dtypes a RowSparse may hold.
VALUE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _as_tensor(x: Any, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    raise ValueError(f"RowSparse: {what} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


class RowSparse:
    """Rows ``ids`` of a ``num_rows x dim`` matrix with values ``values``: the sparse gradient of one step.

    ``ids`` is int64 ``[n]`` and ``values`` is ``[n, dim]`` float32, float16 or bfloat16; ids may be unsorted and
    repeated (duplicates mean "add these rows"). Numpy arrays are accepted and shared, not copied, when already
    int64 / contiguous; ids of another integer type are converted, non-contiguous values are made contiguous.
    Tensors must live on the CPU.
    """

    __slots__ = ("ids", "values", "num_rows", "_coalesced")

    def __init__(self, ids: Any, values: Any, num_rows: int, *, check: bool = True) -> None:
        ids_t = _as_tensor(ids, "ids")
        values_t = _as_tensor(values, "values")
        if isinstance(num_rows, bool) or not isinstance(num_rows, (int, np.integer)) or num_rows < 0:
            raise ValueError(f"RowSparse: num_rows must be a non-negative int, got {num_rows!r}")
        if ids_t.device.type != "cpu" or values_t.device.type != "cpu":
            raise ValueError("RowSparse: ids and values must be CPU tensors")
        if ids_t.dim() != 1:
            raise ValueError(f"RowSparse: ids must be 1-D, got shape {tuple(ids_t.shape)}")
        if ids_t.dtype.is_floating_point or ids_t.dtype.is_complex or ids_t.dtype == torch.bool:
            raise ValueError(f"RowSparse: ids must be integers, got {ids_t.dtype}")
        if values_t.dim() != 2 or values_t.shape[0] != ids_t.shape[0]:
            raise ValueError(
                f"RowSparse: values must be [n, dim] with n = len(ids) = {ids_t.shape[0]}, "
                f"got shape {tuple(values_t.shape)}"
            )
        if values_t.dtype not in VALUE_DTYPES:
            raise ValueError(f"RowSparse: values dtype must be float32, float16 or bfloat16, got {values_t.dtype}")
        ids_t = ids_t.to(torch.int64).contiguous()
        values_t = values_t.contiguous()
        if check and ids_t.numel():
            lo, hi = int(ids_t.min()), int(ids_t.max())
            if lo < 0 or hi >= num_rows:
                bad = lo if lo < 0 else hi
                raise ValueError(f"RowSparse: row id {bad} out of range [0, {num_rows})")
        self.ids: torch.Tensor = ids_t
        self.values: torch.Tensor = values_t
        self.num_rows: int = int(num_rows)
        self._coalesced = False

    @classmethod
    def from_sorted(cls, ids: Any, values: Any, num_rows: int) -> RowSparse:
        """A RowSparse of ids the caller promises strictly increasing and in range (an exchange's result, a
        replica's touched rows): no checks, and already coalesced."""
        rs = cls(ids, values, num_rows, check=False)
        rs._coalesced = True
        return rs

    # -- shape ------------------------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        """Number of (id, row) pairs currently held."""
        return int(self.ids.shape[0])

    @property
    def dim(self) -> int:
        """Row width."""
        return int(self.values.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        """Value dtype."""
        return self.values.dtype

    def __repr__(self) -> str:
        state = "coalesced" if self.is_coalesced() else "raw"
        return f"RowSparse(n={self.n}, dim={self.dim}, num_rows={self.num_rows}, dtype={self.dtype}, {state})"

    def is_coalesced(self) -> bool:
        """True when ids are strictly increasing (checked once, then remembered until ids change)."""
        if not self._coalesced:
            self._coalesced = bool(strictly_increasing(self.ids.numpy()))
        return self._coalesced

    # -- coalescing -------------------------------------------------------------------------------------------
    def coalesce_(self) -> RowSparse:
        """Sort ids, sum duplicate rows and compact, in place; returns ``self``.

        Afterwards ids are strictly increasing and ``ids`` / ``values`` are views of the leading ``m`` rows of
        the original storage. Extra memory is O(n) integers (radix-sort keys and permutation, 16 bytes per row while
        ids and n fit in 32 bits) plus one row of scratch: never a second ``n x dim`` block. Half-precision
        groups are summed in float32 and rounded once.
        """
        if self.is_coalesced():
            return self
        n = self.n
        ids_np = self.ids.numpy()
        # 32-bit keys and permutation when they fit: the sort's scratch is most of coalescing's extra memory.
        keys = np.empty((2, n), np.int32 if self.num_rows <= 1 << 31 else np.int64)
        perm = np.empty((2, n), np.int32 if n < 1 << 31 else np.int64)
        sorted_ids, order, spare = _radix_argsort(ids_np, self.num_rows, keys, perm)
        if self.values.dtype == torch.float32:
            m = _reduce_f32(sorted_ids, order, self.values.numpy())
        else:
            kind = 0 if self.values.dtype == torch.float16 else 1
            bits = self.values.view(torch.int16).numpy()
            m = _reduce_half(sorted_ids, order, bits, _half_table(kind), kind)
        del keys, sorted_ids
        rows = self.values.view(torch.int32 if self.values.dtype == torch.float32 else torch.int16).numpy()
        state = spare.view(np.uint8)[:n]
        state[:] = 0
        _compact(order, m, rows, ids_np, state)
        self.ids = self.ids[:m]
        self.values = self.values[:m]
        self._coalesced = True
        return self

    def coalesced(self) -> RowSparse:
        """A coalesced copy (``self`` untouched); ``self`` itself when already coalesced."""
        if self.is_coalesced():
            return self
        return self.clone().coalesce_()

    def clone(self) -> RowSparse:
        """Deep copy."""
        out = RowSparse(self.ids.clone(), self.values.clone(), self.num_rows, check=False)
        out._coalesced = self._coalesced
        return out

    # -- bulk row access --------------------------------------------------------------------------------------
    def gather(self, matrix: Any) -> RowSparse:
        """A RowSparse with the same ids and rows ``matrix[ids]`` (one ``index_select``), e.g. current weights."""
        m = _as_tensor(matrix, "matrix")
        self._check_matrix(m)
        out = RowSparse(self.ids, m.index_select(0, self.ids), self.num_rows, check=False)
        out._coalesced = self._coalesced
        return out

    def scatter_add_(self, matrix: Any, alpha: float = 1.0) -> Any:
        """``matrix[ids] += alpha * values`` in one ``index_add_`` (duplicates accumulate); returns ``matrix``.

        ``matrix`` is updated in place (a numpy matrix through a shared tensor view); values are cast to its
        dtype.
        """
        m = _as_tensor(matrix, "matrix")
        self._check_matrix(m)
        m.index_add_(0, self.ids, self.values.to(m.dtype), alpha=alpha)
        return matrix

    def to_dense(self) -> torch.Tensor:
        """The ``num_rows x dim`` float32 matrix this gradient represents (for tests and small cases)."""
        out = torch.zeros(self.num_rows, self.dim, dtype=torch.float32)
        out.index_add_(0, self.ids, self.values.float())
        return out

    def _check_matrix(self, m: torch.Tensor) -> None:
        if m.dim() != 2 or m.shape[0] != self.num_rows or m.shape[1] != self.dim:
            raise ValueError(f"RowSparse: matrix must be [{self.num_rows}, {self.dim}], got shape {tuple(m.shape)}")


_TABLES: dict[int, np.ndarray] = {}


def _half_table(kind: int) -> np.ndarray:
    """float32 value of every float16 (kind 0) or bfloat16 (kind 1) bit pattern."""
    if kind not in _TABLES:
        pat = np.arange(1 << 16, dtype=np.uint32)
        if kind == 0:
            _TABLES[kind] = pat.astype(np.uint16).view(np.float16).astype(np.float32)
        else:
            _TABLES[kind] = (pat << 16).view(np.float32)
    return _TABLES[kind]


# -- compiled kernels ---------------------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _radix_argsort(ids, num_rows, keys, perm):  # pragma: no cover - compiled
    """Stable LSD radix sort of ``ids`` (all in [0, num_rows)) using the two rows of ``keys`` / ``perm`` as
    ping-pong buffers; returns (sorted keys, permutation, the permutation buffer left free)."""
    n = ids.shape[0]
    width = 1
    while (1 << width) < num_rows:
        width += 1
    passes = (width + 10) // 11
    digit = (width + passes - 1) // passes
    mask = (1 << digit) - 1
    count = np.empty(1 << digit, np.int64)
    src, dst = 0, 1
    for p in range(passes):
        shift = p * digit
        count[:] = 0
        for i in range(n):
            key = ids[i] if p == 0 else keys[src, i]
            count[(key >> shift) & mask] += 1
        total = 0
        for b in range(count.shape[0]):
            c = count[b]
            count[b] = total
            total += c
        for i in range(n):
            key = ids[i] if p == 0 else keys[src, i]
            b = (key >> shift) & mask
            j = count[b]
            count[b] = j + 1
            keys[dst, j] = key
            perm[dst, j] = i if p == 0 else perm[src, i]
        src, dst = dst, src
    return keys[src], perm[src], perm[dst]


@numba.njit(cache=True, nogil=True)
def _reduce_f32(sorted_ids, perm, vals):  # pragma: no cover - compiled
    """Sum each run of equal ids into its first member's row; perm[k] := that row for the k-th distinct id."""
    n = sorted_ids.shape[0]
    dim = vals.shape[1]
    m = 0
    j = 0
    while j < n:
        key = sorted_ids[j]
        lead = perm[j]
        j += 1
        while j < n and sorted_ids[j] == key:
            src = perm[j]
            for c in range(dim):
                vals[lead, c] += vals[src, c]
            j += 1
        perm[m] = lead
        m += 1
    return m


@numba.njit(cache=True, nogil=True, inline="always")
def _f32bits_to_half(f):  # pragma: no cover - compiled
    """float32 bits -> float16 bits, round to nearest even (numpy's algorithm)."""
    h_sgn = (f & 0x80000000) >> 16
    f_exp = f & 0x7F800000
    if f_exp >= 0x47800000:
        if f_exp == 0x7F800000 and (f & 0x007FFFFF) != 0:
            return h_sgn | 0x7E00
        return h_sgn | 0x7C00
    if f_exp <= 0x38000000:
        if f_exp < 0x33000000:
            return h_sgn
        e = f_exp >> 23
        sig = 0x00800000 + (f & 0x007FFFFF)
        sig >>= 113 - e
        if (sig & 0x3FFF) != 0x1000 or (f & 0x7FF) != 0:
            sig += 0x1000
        return h_sgn + (sig >> 13)
    h_exp = (f_exp - 0x38000000) >> 13
    sig = f & 0x007FFFFF
    if (sig & 0x3FFF) != 0x1000:
        sig += 0x1000
    return h_sgn + h_exp + (sig >> 13)


@numba.njit(cache=True, nogil=True, inline="always")
def _f32bits_to_bf16(f):  # pragma: no cover - compiled
    if (f & 0x7F800000) == 0x7F800000 and (f & 0x007FFFFF) != 0:
        return (f >> 16) | 0x40
    return (f + 0x7FFF + ((f >> 16) & 1)) >> 16


@numba.njit(cache=True, nogil=True)
def _reduce_half(sorted_ids, perm, bits, table, kind):  # pragma: no cover - compiled
    """Like _reduce_f32 on 16-bit rows (kind 0: float16, 1: bfloat16), summing each group in float32.

    ``table`` maps the 65,536 bit patterns to float32 (256 KiB, stays in cache).
    """
    n = sorted_ids.shape[0]
    dim = bits.shape[1]
    acc = np.empty(dim, np.float32)
    acc_bits = acc.view(np.uint32)
    m = 0
    j = 0
    while j < n:
        key = sorted_ids[j]
        lead = perm[j]
        j += 1
        if j < n and sorted_ids[j] == key:
            for c in range(dim):
                acc[c] = table[np.uint16(bits[lead, c])]
            while j < n and sorted_ids[j] == key:
                src = perm[j]
                for c in range(dim):
                    acc[c] += table[np.uint16(bits[src, c])]
                j += 1
            for c in range(dim):
                b = acc_bits[c]
                h = _f32bits_to_half(b) if kind == 0 else _f32bits_to_bf16(b)
                bits[lead, c] = np.int16(np.uint16(h & 0xFFFF))
        perm[m] = lead
        m += 1
    return m


@numba.njit(cache=True, nogil=True)
def _compact(src, m, rows, ids, state):  # pragma: no cover - compiled
    """Move row ``src[k]`` (and its id) to slot ``k`` for k < m, in place, with one row of scratch.

    The map k -> src[k] is injective, so it splits into chains that start at a slot holding no needed row and
    cycles among needed rows; chains need no scratch, each cycle needs one row.
    """
    dim = rows.shape[1]
    for k in range(m):
        state[src[k]] = 1  # holds a needed row
    for d in range(m):
        if state[d] != 0:
            continue
        cur = d
        while True:
            s = src[cur]
            for c in range(dim):
                rows[cur, c] = rows[s, c]
            ids[cur] = ids[s]
            state[cur] = 2
            if s < m and state[s] == 1:
                cur = s
            else:
                break
    scratch = np.empty(dim, rows.dtype)
    for d in range(m):
        if state[d] != 1:
            continue
        if src[d] == d:
            state[d] = 2
            continue
        for c in range(dim):
            scratch[c] = rows[d, c]
        sid = ids[d]
        cur = d
        while True:
            s = src[cur]
            state[cur] = 2
            if s == d:
                for c in range(dim):
                    rows[cur, c] = scratch[c]
                ids[cur] = sid
                break
            for c in range(dim):
                rows[cur, c] = rows[s, c]
            ids[cur] = ids[s]
            cur = s
