"""The compiled tokenizer: byte pieces in, word table and int32 token ids out, no Python object per token.

A numba (nogil) kernel hashes each word's bytes straight into an open-addressing table (FNV-1a + murmur
finaliser, linear probing, keys stored as offsets into a byte pool). The only per-token output is an int32 in a
numpy array, kept in an unlinked temporary file (:class:`_IdSpool`) so that a corpus of any size costs a few
blocks of resident memory. Python only grows the table, pool and output arrays when the kernel asks
(:class:`Scanner`).

Tokens are runs of non-whitespace bytes; whitespace is ASCII (space, \\t, \\n, \\v, \\f, \\r), exactly
what ``bytes.split()`` uses. A ``\\n`` ends a sentence; a sentence is also cut after every ``max_len`` raw tokens.
:func:`space_bounds` finds where a block of text may be cut between tokens.
"""

from __future__ import annotations

import mmap
import tempfile
from typing import TYPE_CHECKING

import numba
import numpy as np

from sparsembed.errors import UserError

if TYPE_CHECKING:
    from sparsembed.word2vec.vocab import Vocab

__all__ = ["Scanner", "readonly", "space_bounds"]

_EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)  # an empty table slot; a used one packs (hash >> 32) << 32 | entry id
_LOW32 = np.uint64(0xFFFFFFFF)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)

# Kernel state slots (one int64 array, so a resumed call picks up exactly where the last one stopped).
_N_ENT, _POOL_USED, _N_IDS, _N_SENT, _CUR_LEN, _RAW = range(6)
# Kernel return codes: done, or which array Python must grow (or prune) before calling again.
_DONE, _GROW_TABLE, _GROW_ENT, _GROW_POOL, _GROW_IDS, _GROW_STARTS, _PRUNE = range(7)


# ----------------------------------------------------------------------------------------------- kernels
@numba.njit(nogil=True, cache=True, inline="always")
def _is_space(c):
    return c == 32 or (c >= 9 and c <= 13)


@numba.njit(nogil=True, cache=True, inline="always")
def _finish_hash(h):
    # murmur3 fmix64: FNV-1a's low bits are weak for short keys, and the table indexes by low bits
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


# Over 80 lines, kept whole: the compiled loop over every byte of the corpus, its state in locals from token to token.
@numba.njit(nogil=True, cache=True)
def _scan_kernel(buf, pos, slots, ent, ent_hash, pool, state, ids, starts, insert, record, max_len, max_vocab):
    """Tokenise ``buf[pos:]``; return (code, position to resume at).

    insert: add unseen words to the table and count every token (else unseen words are OOV, not counted).
    record: write each in-table token's entry id to ``ids`` and each sentence end (ids, raw) to ``starts``.
    max_vocab > 0: stop with _PRUNE after a sentence end that leaves more than max_vocab entries.
    A non-_DONE code leaves the state consistent at a token (or sentence) boundary.
    """
    n = buf.shape[0]
    mask = np.uint64(slots.shape[0] - 1)
    n_ent = state[_N_ENT]
    pool_used = state[_POOL_USED]
    n_ids = state[_N_IDS]
    n_sent = state[_N_SENT]
    cur = state[_CUR_LEN]
    raw = state[_RAW]
    code = _DONE
    i = pos
    while i < n:
        c = buf[i]
        if _is_space(c):
            if c == 10 and cur > 0:
                if record and n_sent == starts.shape[0]:
                    code = _GROW_STARTS
                    break
                if record:
                    starts[n_sent, 0] = n_ids
                    starts[n_sent, 1] = raw
                    n_sent += 1
                cur = 0
                if max_vocab > 0 and n_ent > max_vocab:
                    i += 1
                    code = _PRUNE
                    break
            i += 1
            continue
        if record and (n_ids == ids.shape[0] or n_sent == starts.shape[0]):
            code = _GROW_IDS if n_ids == ids.shape[0] else _GROW_STARTS
            break
        h = _FNV_OFFSET
        j = i
        while j < n:
            b = buf[j]
            if _is_space(b):
                break
            h = (h ^ np.uint64(b)) * _FNV_PRIME
            j += 1
        h = _finish_hash(h)
        length = j - i
        tag = h >> np.uint64(32)
        s = h & mask
        e = -1
        while True:
            v = slots[s]
            if v == _EMPTY:
                break
            if (v >> np.uint64(32)) == tag:
                cand = np.int64(v & _LOW32)
                if ent[cand, 1] == length:
                    off = ent[cand, 0]
                    k = 0
                    while k < length and pool[off + k] == buf[i + k]:
                        k += 1
                    if k == length:
                        e = cand
                        break
            s = (s + np.uint64(1)) & mask
        if e < 0 and insert:
            if (n_ent + 1) * 2 > slots.shape[0]:
                code = _GROW_TABLE
                break
            if n_ent == ent.shape[0]:
                code = _GROW_ENT
                break
            if pool_used + length > pool.shape[0]:
                code = _GROW_POOL
                break
            for k in range(length):
                pool[pool_used + k] = buf[i + k]
            ent[n_ent, 0] = pool_used
            ent[n_ent, 1] = length
            ent[n_ent, 2] = 0
            ent_hash[n_ent] = h
            slots[s] = (tag << np.uint64(32)) | np.uint64(n_ent)
            e = n_ent
            n_ent += 1
            pool_used += length
        if e >= 0:
            if insert:
                ent[e, 2] += 1
            if record:
                ids[n_ids] = e
                n_ids += 1
        raw += 1
        cur += 1
        i = j
        if cur == max_len:
            if record:
                starts[n_sent, 0] = n_ids
                starts[n_sent, 1] = raw
                n_sent += 1
            cur = 0
            if max_vocab > 0 and n_ent > max_vocab:
                code = _PRUNE
                break
    state[_N_ENT] = n_ent
    state[_POOL_USED] = pool_used
    state[_N_IDS] = n_ids
    state[_N_SENT] = n_sent
    state[_CUR_LEN] = cur
    state[_RAW] = raw
    return code, i


@numba.njit(nogil=True, cache=True)
def _fill_slots(slots, ent_hash, n_ent):
    """(Re)insert entries 0..n_ent-1 into an all-empty table."""
    mask = np.uint64(slots.shape[0] - 1)
    for e in range(n_ent):
        h = ent_hash[e]
        s = h & mask
        while slots[s] != _EMPTY:
            s = (s + np.uint64(1)) & mask
        slots[s] = ((h >> np.uint64(32)) << np.uint64(32)) | np.uint64(e)


@numba.njit(nogil=True, cache=True)
def _prune_entries(ent, ent_hash, pool, n_ent, min_reduce):
    """Drop entries counted fewer than min_reduce times, keeping the survivors' order; compact the pool.

    Returns (entries left, pool bytes used). The caller rebuilds the slot table.
    """
    w = 0
    p = 0
    for e in range(n_ent):
        if ent[e, 2] >= min_reduce:
            off = ent[e, 0]
            length = ent[e, 1]
            for k in range(length):  # p <= off, so a forward copy never overwrites unread bytes
                pool[p + k] = pool[off + k]
            ent[w, 0] = p
            ent[w, 1] = length
            ent[w, 2] = ent[e, 2]
            ent_hash[w] = ent_hash[e]
            w += 1
            p += length
    return w, p


@numba.njit(nogil=True, cache=True)
def _compact_ids(ids, starts, first, last, r, w, row_of, ends):
    """In place, sentences [first, last): map entry ids to rows, dropping -1s; fill their ends in the
    compacted ids; return the (read, write) positions to carry into the next stretch."""
    for k in range(first, last):
        stop = starts[k, 0]
        while r < stop:
            row = row_of[ids[r]]
            if row >= 0:
                ids[w] = row
                w += 1
            r += 1
        ends[k] = w
    return r, w


@numba.njit(nogil=True, cache=True)
def _gather_words(pool, ent, entries):
    """Bytes of the given entries joined by b'\\n' (decoded and split once by Python)."""
    total = 0
    for e in entries:
        total += ent[e, 1] + 1
    out = np.empty(max(total - 1, 0), np.uint8)
    p = 0
    for idx in range(entries.shape[0]):
        e = entries[idx]
        off = ent[e, 0]
        for k in range(ent[e, 1]):
            out[p] = pool[off + k]
            p += 1
        if idx + 1 < entries.shape[0]:
            out[p] = 10
            p += 1
    return out


@numba.njit(nogil=True, cache=True)
def space_bounds(buf):
    """(index of the first whitespace byte, index of the last one); (-1, -1) when there is none."""
    n = buf.shape[0]
    first = -1
    for i in range(n):
        if _is_space(buf[i]):
            first = i
            break
    if first < 0:
        return -1, -1
    last = n - 1
    while not _is_space(buf[last]):
        last -= 1
    return first, last


# ---------------------------------------------------------------------------------------- the scanner
class _IdSpool:
    """A growable int32 array in an unlinked temporary file, written front to back.

    Pages behind the writer are dropped from this process once complete (the page cache keeps them), so a
    corpus of any size costs a few blocks of resident memory while it is scanned and compacted.
    """

    def __init__(self, capacity: int) -> None:
        try:
            self.file = tempfile.TemporaryFile(prefix="sparsembed-ids-")
        except OSError as exc:
            raise UserError(f"cannot create a temporary file for the encoded corpus in {tempfile.gettempdir()}: "
                            f"{exc.strerror}; free disk space or set TMPDIR") from exc
        self.released = 0
        self.array = self._map(capacity)

    def _map(self, capacity: int) -> np.ndarray:
        try:
            self.file.truncate(capacity * 4)
            self.mapping = mmap.mmap(self.file.fileno(), capacity * 4)
        except OSError as exc:
            raise UserError(f"cannot grow the encoded corpus to {capacity * 4 >> 20} MiB in a temporary file in "
                            f"{tempfile.gettempdir()}: {exc.strerror}; free disk space or set TMPDIR") from exc
        self.released = 0
        return np.frombuffer(self.mapping, np.int32)

    def grow(self, capacity: int) -> np.ndarray:
        """A mapping of the same file, longer (the old one is unmapped once nothing refers to it)."""
        self.array = None
        self.array = self._map(capacity)
        return self.array

    def rewind(self) -> None:
        """Start a new front-to-back pass (the compaction re-reads and rewrites from the beginning)."""
        self.released = 0

    def release(self, upto: int) -> None:
        """Drop the complete pages of ``array[:upto]`` (not dropped since the last rewind) from this process."""
        stop = upto * 4 // mmap.PAGESIZE * mmap.PAGESIZE
        if stop > self.released:
            self.mapping.madvise(mmap.MADV_DONTNEED, self.released, stop - self.released)
            self.released = stop

    def finish(self, length: int) -> tuple[np.ndarray, mmap.mmap | None]:
        """The first ``length`` ids as a read-only mapping of the truncated file (and that mapping)."""
        self.array = None
        self.mapping = None
        if length == 0:
            return np.empty(0, np.int32), None
        self.file.truncate(length * 4)
        mapping = mmap.mmap(self.file.fileno(), length * 4, access=mmap.ACCESS_READ)
        self.file.close()
        return np.frombuffer(mapping, np.int32), mapping


class Scanner:
    """Owns the word table and output arrays; feeds byte pieces through the kernel, growing on request."""

    def __init__(self, *, insert: bool, record: bool, max_len: int, max_vocab: int = 0):
        self.insert, self.record = insert, record
        self.max_len, self.max_vocab = int(max_len), int(max_vocab or 0)
        self.min_reduce = 1
        self.slots = np.full(1 << 16, _EMPTY, np.uint64)
        self.ent = np.zeros((1 << 14, 3), np.int64)
        self.ent_hash = np.zeros(1 << 14, np.uint64)
        self.pool = np.zeros(1 << 18, np.uint8)
        self.state = np.zeros(6, np.int64)
        self.spool = _IdSpool(1 << 20) if record else None
        self.ids = self.spool.array if record else np.empty(0, np.int32)
        self.starts = np.empty((1024 if record else 0, 2), np.int64)

    @classmethod
    def for_vocab(cls, vocab: Vocab, max_len: int) -> Scanner:
        """A lookup-only scanner whose entry ids are the vocabulary rows."""
        scanner = cls(insert=True, record=False, max_len=max_len)
        joined = "\n".join(vocab.words).encode("utf-8")
        raw = np.frombuffer(joined + b"\n", np.uint8)
        _check_vocab_words(vocab, raw)
        scanner.feed(raw)
        if scanner.n_entries != len(vocab):
            dup = _first_duplicate(vocab.words)
            raise UserError(f"the vocabulary lists the word {dup!r} twice; each word must appear once")
        scanner.insert, scanner.record = False, True
        scanner.state[[_N_IDS, _N_SENT, _CUR_LEN, _RAW]] = 0
        scanner.spool = _IdSpool(1 << 20)
        scanner.ids = scanner.spool.array
        scanner.starts = np.empty((1024, 2), np.int64)
        return scanner

    @property
    def n_entries(self) -> int:
        """Distinct words in the table."""
        return int(self.state[_N_ENT])

    @property
    def raw_words(self) -> int:
        """Tokens read so far, in the table or not."""
        return int(self.state[_RAW])

    def feed(self, buf: np.ndarray) -> None:
        """Tokenise one piece (ends at whitespace, so no token straddles two pieces)."""
        buf = readonly(buf)
        pos = 0
        while True:
            code, pos = _scan_kernel(buf, pos, self.slots, self.ent, self.ent_hash, self.pool, self.state,
                                     self.ids, self.starts, self.insert, self.record, self.max_len,
                                     self.max_vocab)
            if code == _DONE:
                if self.spool is not None:
                    self.spool.release(int(self.state[_N_IDS]))
                return
            self._grow(code)

    def _grow(self, code: int) -> None:
        if code == _GROW_TABLE:
            self._rehash(self.slots.shape[0] * 2)
        elif code == _GROW_ENT:
            n = self.ent.shape[0] * 2
            self.ent = _resized(self.ent, (n, 3))
            self.ent_hash = _resized(self.ent_hash, (n,))
        elif code == _GROW_POOL:
            self.pool = _resized(self.pool, (self.pool.shape[0] * 2,))
        elif code == _GROW_IDS:
            # The ids live in a mapped file: growing maps it longer, nothing is copied or kept resident.
            self.ids = self.spool.grow(self.ids.shape[0] * 2)
        elif code == _GROW_STARTS:
            self.starts.resize((self.starts.shape[0] * 2, 2), refcheck=False)
        elif code == _PRUNE:
            n_ent, used = _prune_entries(self.ent, self.ent_hash, self.pool, self.n_entries, self.min_reduce)
            self.state[_N_ENT], self.state[_POOL_USED] = n_ent, used
            self.min_reduce += 1
            self._rehash(self.slots.shape[0])

    def _rehash(self, size: int) -> None:
        self.slots = np.full(size, _EMPTY, np.uint64)
        _fill_slots(self.slots, self.ent_hash, self.n_entries)

    @property
    def n_ids(self) -> int:
        """Token ids recorded so far."""
        return int(self.state[_N_IDS])

    @property
    def sentences(self) -> np.ndarray:
        """One row per recorded sentence: (ids before its end, raw tokens before its end)."""
        return self.starts[: int(self.state[_N_SENT])]

    def compact(self, row_of: np.ndarray, chunk_tokens: int = 1 << 22) -> np.ndarray:
        """Map the recorded entry ids to rows in place (``row_of[entry]``, -1: drop), a stretch of sentences at a
        time, dropping each stretch's pages after; return every sentence's end in the compacted ids."""
        starts = self.sentences
        n_sent = starts.shape[0]
        ends = np.empty(n_sent, np.int64)
        read = written = first = 0
        self.spool.rewind()
        while first < n_sent:
            last = int(np.searchsorted(starts[:, 0], starts[first, 0] + chunk_tokens, side="right"))
            last = min(max(last, first + 1), n_sent)
            read, written = _compact_ids(self.ids, starts, first, last, read, written, row_of, ends)
            self.spool.release(written)
            first = last
        return ends

    def finish(self, length: int) -> tuple[np.ndarray, mmap.mmap | None]:
        """The first ``length`` recorded ids, read-only (and the mapping that holds them); the scanner records no
        more."""
        self.ids = None
        return self.spool.finish(length)

    def words(self, entries: np.ndarray) -> list[str]:
        """The words of the given entries, as str (one decode for all)."""
        if len(entries) == 0:
            return []
        joined = _gather_words(self.pool, self.ent, np.ascontiguousarray(entries, np.int64))
        return joined.tobytes().decode("utf-8").split("\n")

    def counts(self) -> np.ndarray:
        """How often each entry was counted, in entry order (a copy)."""
        return self.ent[: self.n_entries, 2].copy()


def _resized(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, array.dtype)
    out[: array.shape[0]] = array
    return out


def _check_vocab_words(vocab: Vocab, joined: np.ndarray) -> None:
    """Vocabulary words must be non-empty and whitespace-free, or corpus tokens could never match them.

    ``joined`` is every word followed by b'\\n': valid iff its only whitespace is those n newlines and no
    two of them are adjacent (an empty word).
    """
    n = len(vocab)
    newlines = int(np.count_nonzero(joined == 10))
    spaces = int(np.count_nonzero((joined == 32) | ((joined >= 9) & (joined <= 13))))
    if newlines == n and spaces == n and (n == 0 or joined[0] != 10) and b"\n\n" not in joined.tobytes():
        return
    bad = next(k for k, w in enumerate(vocab.words) if len(w.encode("utf-8").split()) != 1
               or w.encode("utf-8").split()[0] != w.encode("utf-8"))
    raise UserError(f"vocabulary word #{bad} {vocab.words[bad]!r} is empty or contains whitespace; "
                    "words are whitespace-separated tokens")


def _first_duplicate(words: list[str]) -> str:
    seen: set[str] = set()
    for w in words:
        if w in seen:
            return w
        seen.add(w)
    return ""


def readonly(array: np.ndarray) -> np.ndarray:
    """``array`` as a read-only view: one numba specialisation for bytes- and bytearray-backed pieces alike."""
    if array.flags.writeable:
        array = array.view()
        array.flags.writeable = False
    return array
