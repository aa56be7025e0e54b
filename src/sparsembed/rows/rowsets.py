"""Row-set encodings: a strictly increasing set of row ids in ``[0, num_rows)`` as few bytes as possible.

Each encoding is a small codec with ``size`` (exact, cheap), ``encode`` and ``decode``:

* ``index``: gaps coded Golomb-Rice with one parameter per block of 256 ids (adapts to clustered, Zipf-like
  sets). Within a few percent of the information bound ``log2 C(num_rows, n)`` from the sparsest sets up to
  about half density, where it degenerates gracefully into a bitmap.
* ``complement``: ``index`` of the rows *not* in the set; wins above half density.
* ``bitmap``: ``num_rows`` bits.
* ``roaring``: Roaring portable serialization (pyroaring), no run containers; for interoperability.
* ``all``: every row, zero bytes.

:func:`choose` ("auto") computes each candidate's exact size and takes the smallest. ``decode`` validates
everything (lengths, canonical padding, ids strictly increasing and in range) and raises :class:`RowSetError`.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["ENCODINGS", "RowSetError", "choose", "get", "strictly_increasing", "Index", "Complement", "Bitmap",
           "Roaring", "All"]

#: Ids per Rice block; each block spends one byte on its parameter.
BLOCK = 256
#: Largest Rice parameter accepted (gaps are < 2**48 because num_rows is).
MAX_K = 56


class RowSetError(ValueError):
    """A row-id section that cannot be decoded."""


def _check_ids(ids: np.ndarray, n: int, num_rows: int, what: str) -> np.ndarray:
    if ids.shape[0] != n:
        raise RowSetError(f"{what}: header says {n} rows, section holds {ids.shape[0]}")
    if n and (ids[0] < 0 or ids[-1] >= num_rows or not strictly_increasing(ids)):
        raise RowSetError(f"{what}: ids not strictly increasing within [0, {num_rows})")
    return ids


# -- index: blocked Golomb-Rice ----------------------------------------------------------------------------------
class Index:
    """Gap (delta - 1) Golomb-Rice code, parameter chosen per block of :data:`BLOCK` ids.

    Layout: one byte per block (its parameter k), then a little-endian bit stream where each id is its
    quotient ``gap >> k`` in unary (zeros closed by a one) followed by the ``k`` low bits of the gap.
    """

    name = "index"
    code = 1

    @staticmethod
    def size(ids: np.ndarray, num_rows: int) -> int:
        """Exact encoded size in bytes."""
        _, bits = _rice_plan(ids)
        return -(-ids.shape[0] // BLOCK) + (bits + 7) // 8

    @staticmethod
    def encode(ids: np.ndarray, num_rows: int) -> bytes:
        """Encode strictly increasing int64 ``ids``."""
        ks, bits = _rice_plan(ids)
        words = np.zeros((bits + 63) // 64 + 1, np.uint64)
        _rice_write(ids, ks, words)
        return ks.tobytes() + words.view(np.uint8)[: (bits + 7) // 8].tobytes()

    @staticmethod
    def decode(buf: bytes, n: int, num_rows: int) -> np.ndarray:
        """Decode ``n`` ids; raises RowSetError on anything malformed."""
        nblocks = -(-n // BLOCK)
        if len(buf) < nblocks:
            raise RowSetError(f"index: section of {len(buf)} bytes cannot hold {nblocks} block parameters")
        if n == 0:
            if len(buf):
                raise RowSetError("index: trailing bytes after an empty set")
            return np.empty(0, np.int64)
        ks = np.frombuffer(buf, np.uint8, nblocks)
        if int(ks.max()) > MAX_K:
            raise RowSetError(f"index: Rice parameter {int(ks.max())} > {MAX_K}")
        stream = len(buf) - nblocks
        words = np.zeros(stream // 8 + 2, np.uint64)
        words.view(np.uint8)[:stream] = np.frombuffer(buf, np.uint8, stream, nblocks)
        out = np.empty(n, np.int64)
        status = _rice_read(words, stream * 8, ks, num_rows, out)
        if status:
            raise RowSetError("index: " + _RICE_ERRORS[status])
        return out


_RICE_ERRORS = {
    1: "bit stream ends before the last id",
    2: "id out of range",
    3: "bytes or non-zero padding after the last id",
}


class Complement:
    """:class:`Index` of the rows absent from the set; cheapest above half density."""

    name = "complement"
    code = 2

    @staticmethod
    def _complement(ids: np.ndarray, num_rows: int) -> np.ndarray:
        mask = np.ones(num_rows, np.bool_)
        mask[ids] = False
        return np.flatnonzero(mask)

    @staticmethod
    def size(ids: np.ndarray, num_rows: int) -> int:
        """Exact encoded size in bytes (costs O(num_rows))."""
        return Index.size(Complement._complement(ids, num_rows), num_rows)

    @staticmethod
    def encode(ids: np.ndarray, num_rows: int) -> bytes:
        """Encode strictly increasing int64 ``ids``."""
        return Index.encode(Complement._complement(ids, num_rows), num_rows)

    @staticmethod
    def decode(buf: bytes, n: int, num_rows: int) -> np.ndarray:
        """Decode ``n`` ids."""
        if not 0 <= n <= num_rows:
            raise RowSetError(f"complement: {n} rows of {num_rows}")
        absent = Index.decode(buf, num_rows - n, num_rows)
        mask = np.ones(num_rows, np.bool_)
        mask[absent] = False
        return np.flatnonzero(mask).astype(np.int64, copy=False)


class Bitmap:
    """``num_rows`` bits, least significant bit first; padding bits must be zero."""

    name = "bitmap"
    code = 3

    @staticmethod
    def size(ids: np.ndarray, num_rows: int) -> int:
        """Exact encoded size in bytes."""
        return (num_rows + 7) // 8

    @staticmethod
    def encode(ids: np.ndarray, num_rows: int) -> bytes:
        """Encode strictly increasing int64 ``ids``."""
        mask = np.zeros(num_rows, np.bool_)
        mask[ids] = True
        return np.packbits(mask, bitorder="little").tobytes()

    @staticmethod
    def decode(buf: bytes, n: int, num_rows: int) -> np.ndarray:
        """Decode ``n`` ids."""
        if len(buf) != (num_rows + 7) // 8:
            raise RowSetError(f"bitmap: {len(buf)} bytes for {num_rows} rows")
        mask = np.unpackbits(np.frombuffer(buf, np.uint8), bitorder="little")
        if mask[num_rows:].any():
            raise RowSetError("bitmap: non-zero padding bits")
        ids = np.flatnonzero(mask[:num_rows]).astype(np.int64, copy=False)
        return _check_ids(ids, n, num_rows, "bitmap")


class Roaring:
    """Roaring portable serialization without run containers (cookie 12346), via pyroaring.

    Needs ``num_rows <= 2**32``. Decoding checks the container directory before pyroaring reads anything.
    """

    name = "roaring"
    code = 4
    COOKIE = 12346

    @staticmethod
    def size(ids: np.ndarray, num_rows: int) -> int:
        """Exact encoded size in bytes, from container cardinalities alone."""
        if num_rows > 1 << 32:
            raise RowSetError("roaring: needs num_rows <= 2**32")
        cards = np.bincount(ids >> 16) if ids.shape[0] else np.zeros(0, np.int64)
        cards = cards[cards > 0]
        return 8 + 8 * cards.shape[0] + int(np.minimum(2 * cards, 8192).sum())

    @staticmethod
    def encode(ids: np.ndarray, num_rows: int) -> bytes:
        """Encode strictly increasing int64 ``ids``."""
        import array

        from pyroaring import BitMap

        if num_rows > 1 << 32:
            raise RowSetError("roaring: needs num_rows <= 2**32")
        bm = BitMap(array.array("I", ids.astype(np.uint32).tobytes()), optimize=False)
        return bm.serialize()

    @staticmethod
    def decode(buf: bytes, n: int, num_rows: int) -> np.ndarray:
        """Decode ``n`` ids."""
        from pyroaring import BitMap

        Roaring._check_directory(buf, n, num_rows)
        ids = np.frombuffer(BitMap.deserialize(bytes(buf)).to_array(), np.uint32).astype(np.int64)
        return _check_ids(ids, n, num_rows, "roaring")

    @staticmethod
    def _check_directory(buf: bytes, n: int, num_rows: int) -> None:
        if num_rows > 1 << 32:
            raise RowSetError("roaring: needs num_rows <= 2**32")
        if len(buf) < 8:
            raise RowSetError("roaring: truncated header")
        cookie, count = np.frombuffer(buf, "<u4", 2)
        if cookie != Roaring.COOKIE:
            raise RowSetError(f"roaring: cookie {int(cookie)} is not {Roaring.COOKIE} (no-run format)")
        count = int(count)
        if count > (num_rows + 65535) >> 16 or len(buf) < 8 + 8 * count:
            raise RowSetError(f"roaring: {count} containers do not fit {num_rows} rows / {len(buf)} bytes")
        desc = np.frombuffer(buf, "<u2", 2 * count, 8).reshape(count, 2).astype(np.int64)
        keys, cards = desc[:, 0], desc[:, 1] + 1
        if count and (np.any(np.diff(keys) <= 0) or keys[-1] > (num_rows - 1) >> 16):
            raise RowSetError("roaring: container keys not increasing or out of range")
        sizes = np.minimum(2 * cards, 8192)
        starts = 8 + 8 * count + np.cumsum(sizes) - sizes
        offsets = np.frombuffer(buf, "<u4", count, 8 + 4 * count).astype(np.int64)
        if not np.array_equal(offsets, starts) or 8 + 8 * count + int(sizes.sum()) != len(buf):
            raise RowSetError("roaring: container offsets or lengths do not add up")
        if int(cards.sum()) != n:
            raise RowSetError(f"roaring: cardinalities sum to {int(cards.sum())}, header says {n}")
        # pyroaring trusts the stored cardinalities when it sizes its output: check them against the payload.
        raw = np.frombuffer(buf, np.uint8)
        for start, size, card in zip(starts.tolist(), sizes.tolist(), cards.tolist(), strict=True):
            body = raw[start : start + size]
            if card > 4096:
                ok = int(np.unpackbits(body).sum()) == card
            else:
                ok = bool(np.all(np.diff(body.view("<u2").astype(np.int64)) > 0))
            if not ok:
                raise RowSetError("roaring: container contents disagree with the directory")


class All:
    """Every row: nothing to send."""

    name = "all"
    code = 0

    @staticmethod
    def size(ids: np.ndarray, num_rows: int) -> int:
        """Zero."""
        return 0

    @staticmethod
    def encode(ids: np.ndarray, num_rows: int) -> bytes:
        """Empty; ``ids`` must be every row."""
        if ids.shape[0] != num_rows:
            raise RowSetError(f"all: {ids.shape[0]} ids but {num_rows} rows")
        return b""

    @staticmethod
    def decode(buf: bytes, n: int, num_rows: int) -> np.ndarray:
        """``arange(num_rows)``."""
        if len(buf) or n != num_rows:
            raise RowSetError("all: expects an empty section and n == num_rows")
        return np.arange(num_rows, dtype=np.int64)


#: Encodings by name.
ENCODINGS = {c.name: c for c in (Index, Complement, Bitmap, Roaring, All)}
_BY_CODE = {c.code: c for c in ENCODINGS.values()}


def get(key: str | int) -> type:
    """The encoding class for a name or wire code."""
    table = _BY_CODE if isinstance(key, int) else ENCODINGS
    if key not in table:
        raise RowSetError(f"unknown row-set encoding {key!r}; choose from {sorted(ENCODINGS)}")
    return table[key]


def candidate_sizes(ids: np.ndarray, num_rows: int) -> dict[str, int]:
    """Exact size of every encoding that applies; complement only above half density (else it cannot win)."""
    n = ids.shape[0]
    sizes = {"index": Index.size(ids, num_rows), "bitmap": Bitmap.size(ids, num_rows)}
    if 2 * n > num_rows:
        sizes["complement"] = Complement.size(ids, num_rows)
    if num_rows <= 1 << 32:
        sizes["roaring"] = Roaring.size(ids, num_rows)
    if n == num_rows:
        sizes["all"] = 0
    return sizes


def choose(ids: np.ndarray, num_rows: int) -> type:
    """The smallest encoding for these ids ("auto")."""
    sizes = candidate_sizes(ids, num_rows)
    return ENCODINGS[min(sizes, key=lambda k: (sizes[k], k != "all"))]


# -- compiled kernels ---------------------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def strictly_increasing(a):  # pragma: no cover - compiled
    """Whether the 1-d array ``a`` is strictly increasing (a valid row set: sorted, no repeats)."""
    for i in range(1, a.shape[0]):
        if a[i] <= a[i - 1]:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _rice_plan(ids):  # pragma: no cover - compiled
    """Best Rice parameter per block (among 4 around log2 of the mean gap) and the stream's exact bit count."""
    n = ids.shape[0]
    nblocks = (n + BLOCK - 1) // BLOCK
    ks = np.zeros(nblocks, np.uint8)
    total = 0
    for b in range(nblocks):
        lo = b * BLOCK
        hi = min(n, lo + BLOCK)
        prev = ids[lo - 1] if lo > 0 else -1
        s = ids[hi - 1] - prev - (hi - lo)  # sum of gaps in the block
        mean = s // (hi - lo)
        k0 = 0
        while (2 << k0) <= mean:
            k0 += 1
        best_k, best = 0, -1
        for k in range(max(0, k0 - 2), k0 + 2):
            cost = (hi - lo) * (k + 1)
            p = prev
            for i in range(lo, hi):
                cost += (ids[i] - p - 1) >> k
                p = ids[i]
            if best < 0 or cost < best:
                best, best_k = cost, k
        ks[b] = best_k
        total += best
    return ks, total


@numba.njit(cache=True, nogil=True)
def _rice_write(ids, ks, words):  # pragma: no cover - compiled
    pos = 0
    prev = -1
    for i in range(ids.shape[0]):
        k = ks[i // BLOCK]
        gap = ids[i] - prev - 1
        prev = ids[i]
        pos += gap >> k  # unary zeros: the buffer is already zero
        words[pos >> 6] |= np.uint64(1) << np.uint64(pos & 63)
        pos += 1
        if k:
            low = np.uint64(gap & ((1 << k) - 1))
            off = pos & 63
            words[pos >> 6] |= low << np.uint64(off)
            if off + k > 64:
                words[(pos >> 6) + 1] |= low >> np.uint64(64 - off)
            pos += k


@numba.njit(cache=True, nogil=True)
def _rice_read(words, nbits, ks, num_rows, out):  # pragma: no cover - compiled
    """Decode len(out) ids; 0 on success, else an error code (see _RICE_ERRORS). ``words`` has spare zeros."""
    pos = 0
    prev = -1
    for i in range(out.shape[0]):
        k = ks[i // BLOCK]
        # unary quotient: skip to the next set bit
        start = pos
        w = words[pos >> 6] >> np.uint64(pos & 63)
        while w == 0:
            pos = (pos | 63) + 1
            if pos >= nbits:
                return 1
            w = words[pos >> 6]
        while (w & np.uint64(1)) == 0:
            w >>= np.uint64(1)
            pos += 1
        q = pos - start
        pos += 1
        if pos + k > nbits:
            return 1
        low = 0
        if k:
            off = pos & 63
            v = words[pos >> 6] >> np.uint64(off)
            if off + k > 64:
                v |= words[(pos >> 6) + 1] << np.uint64(64 - off)
            low = np.int64(v & ((np.uint64(1) << np.uint64(k)) - np.uint64(1)))
            pos += k
        if q > (num_rows >> k):
            return 2
        cur = prev + 1 + ((q << k) | low)
        if cur >= num_rows:
            return 2
        out[i] = cur
        prev = cur
    if (nbits + 7) // 8 != (pos + 7) // 8:
        return 3
    if pos & 63:
        if words[pos >> 6] >> np.uint64(pos & 63) != 0:
            return 3
    return 0
