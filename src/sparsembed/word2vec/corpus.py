"""Corpus: stream text files (or token lists) into counted words and compact int32 token ids.

Files are read in fixed-size byte blocks and tokenised by a numba (nogil) kernel that hashes each word's
bytes straight into an open-addressing table (FNV-1a + murmur finaliser, linear probing, keys stored as
offsets into a byte pool). No Python object is ever made per token: the only per-token output is an
int32 in a numpy array. Python only grows the table, pool and output arrays when the kernel asks.

Tokens are runs of non-whitespace bytes; whitespace is ASCII (space, \\t, \\n, \\v, \\f, \\r), exactly
what ``bytes.split()`` uses. A ``\\n`` ends a sentence, so does the end of each file; a sentence is also
cut after every ``max_sentence_len`` raw tokens (chunked like gensim's ``LineSentence``, never truncated).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import mmap
import os
import queue
import tempfile
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numba
import numpy as np

from sparsembed.errors import UserError
from sparsembed.word2vec.vocab import Vocab, rows_by_frequency

Source = Union[str, "os.PathLike[str]", Iterable[Iterable[str]]]

BLOCK_SIZE = 4 << 20  # bytes per read: amortises the per-call overhead; the only buffer of file text held
MAX_SENTENCE_LEN = 10_000

_EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)  # an empty table slot; a used one packs (hash >> 32) << 32 | entry id
_LOW32 = np.uint64(0xFFFFFFFF)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)

# Kernel state slots (one int64 array, so a resumed call picks up exactly where the last one stopped).
_N_ENT, _POOL_USED, _N_IDS, _N_SENT, _CUR_LEN, _RAW = range(6)
# Kernel return codes: done, or which array Python must grow (or prune) before calling again.
_DONE, _GROW_TABLE, _GROW_ENT, _GROW_POOL, _GROW_IDS, _GROW_STARTS, _PRUNE = range(7)

_COMPRESSED = {".gz": ("gzip", gzip.open), ".bz2": ("bzip2", bz2.open), ".xz": ("xz", lzma.open)}


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
def _space_bounds(buf):
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


@numba.njit(nogil=True, cache=True)
def _text_error(buf):
    """(0, -1) for valid UTF-8 without NUL bytes; else (1, offset) for a NUL, (2, offset) for bad UTF-8.

    The strict rules of Python's decoder: no overlongs, surrogates or code points above U+10FFFF; a
    sequence cut by the end of ``buf`` is an error (pieces end at ASCII whitespace, so none is cut).
    """
    n = buf.shape[0]
    i = 0
    while i < n:
        c = buf[i]
        if c < 0x80:
            if c == 0:
                return 1, i
            i += 1
            continue
        lo = 0x80
        hi = 0xBF
        if c >= 0xC2 and c <= 0xDF:
            need = 1
        elif c == 0xE0:
            need, lo = 2, 0xA0
        elif c == 0xED:
            need, hi = 2, 0x9F
        elif c >= 0xE1 and c <= 0xEF:
            need = 2
        elif c == 0xF0:
            need, lo = 3, 0x90
        elif c >= 0xF1 and c <= 0xF3:
            need = 3
        elif c == 0xF4:
            need, hi = 3, 0x8F
        else:
            return 2, i
        if i + need >= n or buf[i + 1] < lo or buf[i + 1] > hi:
            return 2, i
        for k in range(2, need + 1):
            if buf[i + k] < 0x80 or buf[i + k] > 0xBF:
                return 2, i
        i += need + 1
    return 0, -1


# ------------------------------------------------------------------------------------------ hash table


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


class _Scanner:
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
    def for_vocab(cls, vocab: Vocab, max_len: int) -> _Scanner:
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
        return int(self.state[_N_ENT])

    @property
    def raw_words(self) -> int:
        return int(self.state[_RAW])

    def feed(self, buf: np.ndarray) -> None:
        """Tokenise one piece (ends at whitespace, so no token straddles two pieces)."""
        buf = _readonly(buf)
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

    def words(self, entries: np.ndarray) -> list[str]:
        """The words of the given entries, as str (one decode for all)."""
        if len(entries) == 0:
            return []
        joined = _gather_words(self.pool, self.ent, np.ascontiguousarray(entries, np.int64))
        return joined.tobytes().decode("utf-8").split("\n")

    def counts(self) -> np.ndarray:
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


# ----------------------------------------------------------------------------------------------- input


def corpus_files(path: str | os.PathLike) -> list[Path]:
    """The files a corpus path stands for: the file itself, or a directory's files.

    A directory is walked recursively; hidden files and directories (name starts with '.') are skipped,
    and files come sorted by path (component by component). Raises UserError for a missing path or a
    directory without files.
    """
    root = Path(path)
    if not root.exists():
        raise UserError(f"corpus path {str(root)!r} does not exist; check the path")
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise UserError(f"corpus path {str(root)!r} is neither a file nor a directory")
    files = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise_walk_error):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files.extend(Path(dirpath, f) for f in filenames if not f.startswith("."))
    files = sorted(f for f in files if f.is_file())
    if not files:
        raise UserError(f"corpus directory {str(root)!r} contains no (non-hidden) files; "
                        "point --corpus at a text file or a directory of text files")
    return files


def _raise_walk_error(exc: OSError) -> None:
    raise UserError(f"cannot list corpus directory {exc.filename!r}: {exc.strerror}")


def corpus_fingerprint(path: str | os.PathLike) -> dict:
    """Path, size and mtime_ns of every corpus file, to detect a corpus that changed before a resume."""
    files = []
    for f in corpus_files(path):
        st = f.stat()
        files.append({"path": str(f), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)})
    return {"path": str(Path(path)), "files": files}


def _open(file: Path):
    """(reader, raw file): the reader decompresses by suffix (or is the raw file)."""
    kind = _COMPRESSED.get(file.suffix.lower())
    try:
        raw = open(file, "rb", buffering=0)
    except OSError as exc:
        raise UserError(f"cannot open corpus file {str(file)!r}: {exc.strerror or exc}") from exc
    if kind is None:
        return raw, raw
    return kind[1](raw, "rb"), raw


def _read_error(exc: BaseException, file: Path, offset: int) -> UserError:
    kind = _COMPRESSED.get(file.suffix.lower())
    if kind is None:
        return UserError(f"cannot read corpus file {str(file)!r} at byte {offset}: {exc}")
    return UserError(f"corpus file {str(file)!r} is not valid {kind[0]} data (corrupt or truncated after "
                     f"{offset} decompressed bytes: {exc}); re-create or re-download it")


_READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)


def _chunks(file: Path, block_size: int) -> Iterator[tuple[bytes | bytearray, int]]:
    """(buffer, byte count) blocks of a file, decompressed by suffix.

    Plain files reuse one buffer (each block must be used before the next is asked for). Compressed
    files are decompressed one block ahead in a thread (zlib, bz2 and lzma release the GIL), so the
    tokenizer overlaps decompression.
    """
    handle, raw = _open(file)
    with handle, raw:
        if handle is raw:
            block = bytearray(block_size)
            offset = 0
            while True:
                try:
                    n = raw.readinto(block)
                except OSError as exc:
                    raise _read_error(exc, file, offset) from exc
                if not n:
                    return
                yield block, n
                offset += n
        else:
            yield from _prefetched(handle, file, block_size)


def _prefetched(handle, file: Path, block_size: int) -> Iterator[tuple[bytes, int]]:
    ready: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def read_ahead() -> None:
        offset = 0
        try:
            while not stop.is_set():
                chunk = handle.read(block_size)
                ready.put(chunk)
                offset += len(chunk)
                if not chunk:
                    return
        except _READ_ERRORS as exc:
            ready.put(_read_error(exc, file, offset))

    worker = threading.Thread(target=read_ahead, name=f"decompress {file.name}", daemon=True)
    worker.start()
    try:
        while True:
            chunk = ready.get()
            if isinstance(chunk, UserError):
                raise chunk
            if not chunk:
                return
            yield chunk, len(chunk)
    finally:
        stop.set()
        while worker.is_alive():  # unblock a put() so the worker sees stop before the file closes
            try:
                ready.get(timeout=0.05)
            except queue.Empty:
                pass


def _checked(piece: np.ndarray, file: Path, offset: int) -> np.ndarray:
    """The piece as a read-only array, after rejecting NUL bytes and invalid UTF-8 (file, byte offset)."""
    piece = _readonly(piece)
    code, at = _text_error(piece)
    if code == 1:
        raise UserError(f"corpus file {str(file)!r} contains a NUL byte at byte offset {offset + at}: "
                        "it looks binary; give plain (or .gz/.bz2/.xz compressed) UTF-8 text")
    if code == 2:
        raise UserError(f"corpus file {str(file)!r} is not valid UTF-8 at byte offset {offset + at} "
                        f"(byte 0x{int(piece[at]):02x}); convert it to UTF-8 (e.g. with iconv)")
    return piece


def _readonly(array: np.ndarray) -> np.ndarray:
    # one numba specialisation for bytes- and bytearray-backed pieces alike
    if array.flags.writeable:
        array = array.view()
        array.flags.writeable = False
    return array


def _file_pieces(file: Path, block_size: int) -> Iterator[np.ndarray]:
    """Validated byte pieces of one (decompressed) file, each ending at whitespace; the last one is
    followed by a newline, so the file's end ends its sentence.

    Big pieces are views of one reused block buffer: each must be consumed before the next is requested.
    """
    carry: list[bytes] = []  # a word (or line tail) cut at the block boundary
    carry_offset = 0
    offset = 0  # (decompressed) offset of the block's first byte
    for block, n in _chunks(file, block_size):
        view = np.frombuffer(block, np.uint8, count=n)
        first, last = _space_bounds(_readonly(view))
        if first < 0:
            if not carry:
                carry_offset = offset
            carry.append(bytes(block[:n]))
        elif carry:
            # finish the cut word in a small piece, so the big block below needs no copy
            carry.append(bytes(block[: first + 1]))
            yield _checked(np.frombuffer(b"".join(carry), np.uint8), file, carry_offset)
            yield _checked(view[first + 1: last + 1], file, offset + first + 1)
            carry = []
        else:
            yield _checked(view[: last + 1], file, offset)
        if first >= 0 and last + 1 < n:
            carry = [bytes(block[last + 1: n])]
            carry_offset = offset + last + 1
        offset += n
    if not carry:
        carry_offset = offset
    carry.append(b"\n")
    yield _checked(np.frombuffer(b"".join(carry), np.uint8), file, carry_offset)


def _sentence_pieces(sentences: Iterable[Iterable[str]], block_size: int) -> Iterator[np.ndarray]:
    """Token lists as newline-separated UTF-8 pieces (so they tokenise exactly like a file)."""
    lines: list[bytes] = []
    size = 0
    for k, sentence in enumerate(sentences):
        if isinstance(sentence, (str, bytes)):
            raise UserError(f"sentence #{k} is a {type(sentence).__name__}, not a list of tokens; "
                            "give each sentence as a list of str (e.g. line.split())")
        try:
            tokens = list(sentence)
            line = " ".join(tokens).encode("utf-8")
        except TypeError:
            raise UserError(f"sentence #{k} is not a list of str tokens; give lists of str") from None
        except UnicodeEncodeError as exc:
            raise UserError(f"sentence #{k} has a token that is not encodable as UTF-8 ({exc.reason})") from None
        if not _joins_cleanly(line, len(tokens)):
            bad = next(t for t in tokens if not t or len(t.encode("utf-8").split()) != 1
                       or t.encode("utf-8").split()[0] != t.encode("utf-8"))
            raise UserError(f"sentence #{k} has the token {bad!r}, which is empty or contains whitespace; "
                            "tokens must be non-empty and whitespace-free")
        lines.append(line)
        size += len(line) + 1
        if size >= block_size:
            lines.append(b"")
            yield np.frombuffer(b"\n".join(lines), np.uint8)
            lines, size = [], 0
    if lines:
        lines.append(b"")
        yield np.frombuffer(b"\n".join(lines), np.uint8)


def _joins_cleanly(line: bytes, n_tokens: int) -> bool:
    """True if ``line``, the tokens joined by single spaces, splits back into exactly those tokens.

    Equal counts alone are not enough: an empty token and one holding a space cancel out (['', 'a b']).
    The split must also account for every byte of the line but the ``n_tokens - 1`` joining spaces.
    """
    parts = line.split()
    return len(parts) == n_tokens and sum(map(len, parts)) == len(line) - max(n_tokens - 1, 0)


def _is_path(source) -> bool:
    return isinstance(source, (str, os.PathLike))


def _describe(source) -> str:
    return repr(str(source)) if _is_path(source) else "the given sentences"


def _feed(scanner: _Scanner, source: Source, block_size: int) -> None:
    """Run a whole corpus (path or token lists) through the scanner."""
    if _is_path(source):
        for file in corpus_files(source):
            for piece in _file_pieces(file, block_size):
                scanner.feed(piece)
        return
    if isinstance(source, bytes):
        raise UserError("a corpus is a path (str) or an iterable of token lists, not bytes")
    try:
        iterator = iter(source)
    except TypeError:
        raise UserError(f"a corpus is a path or an iterable of token lists, not {type(source).__name__}") from None
    for piece in _sentence_pieces(iterator, block_size):
        scanner.feed(piece)


def _check_not_empty(raw_words: int, source: Source) -> None:
    if raw_words == 0:
        raise UserError(f"the corpus {_describe(source)} contains no tokens (it is empty or only "
                        "whitespace); give a non-empty text corpus")


# ----------------------------------------------------------------------------------------- public API


@dataclass
class EncodedCorpus:
    """A corpus as int32 vocabulary rows, split into sentences.

    Attributes:
        ids: int32 rows of the in-vocabulary tokens in corpus order (OOV tokens dropped, as gensim does
            before windowing).
        sentence_starts: int64, length n_sentences + 1; sentence k is ``ids[starts[k]:starts[k+1]]``.
            Sentences were cut at ``max_sentence_len`` raw tokens (OOV included), so one may be empty
            after dropping OOV tokens; lines without any token are not sentences.
        raw_words: raw tokens of these sentences, OOV included (for gensim-style progress / alpha decay).
        raw_starts: int64, length n_sentences + 1: raw tokens before each sentence (relative to the first).
    """

    ids: np.ndarray
    sentence_starts: np.ndarray
    raw_words: int
    raw_starts: np.ndarray | None = None
    mapping: mmap.mmap | None = None

    def __len__(self) -> int:
        return len(self.sentence_starts) - 1

    def release(self, first_token: int, last_token: int) -> None:
        """Drop the pages wholly inside ``ids[first_token:last_token]`` from this process (mapped ids only).

        The scan leaves ``ids`` in an unlinked temporary file (see ``_IdSpool``); training reads them once per
        epoch and releases each job's stretch, so the page cache, not the process, holds the corpus.
        """
        if self.mapping is None:
            return
        page = mmap.PAGESIZE
        start = -(-first_token * 4 // page) * page
        stop = last_token * 4 // page * page
        if stop > start:
            self.mapping.madvise(mmap.MADV_DONTNEED, start, stop - start)

    def slice(self, first_sentence: int, last_sentence: int) -> EncodedCorpus:
        """Sentences ``first_sentence`` up to (excluding) ``last_sentence``; ids is a view, not a copy."""
        n = len(self)
        if not 0 <= first_sentence <= last_sentence <= n:
            raise IndexError(f"sentence range [{first_sentence}, {last_sentence}) outside [0, {n}]")
        starts = self.sentence_starts[first_sentence: last_sentence + 1]
        ids = self.ids[starts[0]: starts[-1]]
        raw = None
        raw_words = 0
        if self.raw_starts is not None:
            raw = self.raw_starts[first_sentence: last_sentence + 1] - self.raw_starts[first_sentence]
            raw_words = int(raw[-1])
        return EncodedCorpus(ids, starts - starts[0], raw_words, raw)


def _encoded(ids: np.ndarray, ends: np.ndarray, raw_ends: np.ndarray, raw_words: int,
             mapping: mmap.mmap | None = None) -> EncodedCorpus:
    starts = np.zeros(len(ends) + 1, np.int64)
    starts[1:] = ends
    raw_starts = np.zeros(len(ends) + 1, np.int64)
    raw_starts[1:] = raw_ends
    return EncodedCorpus(ids, starts, int(raw_words), raw_starts, mapping)


def _count(source: Source, max_vocab: int | None, max_sentence_len: int, block_size: int) -> _Scanner:
    """Count pass: every distinct word (first-occurrence order, pruned gensim-style with max_vocab)."""
    _check_sentence_len(max_sentence_len)
    if max_vocab is not None and max_vocab < 1:
        raise UserError(f"max_vocab must be at least 1 (got {max_vocab}); leave it unset for no limit")
    scanner = _Scanner(insert=True, record=False, max_len=max_sentence_len, max_vocab=max_vocab or 0)
    _feed(scanner, source, block_size)
    _check_not_empty(scanner.raw_words, source)
    return scanner


def _vocab_of(scanner: _Scanner, min_count: int) -> tuple[Vocab, np.ndarray]:
    """The vocabulary of a counted scanner, and its table entries in row order."""
    counts = scanner.counts()
    entries = rows_by_frequency(counts, min_count, lambda e: scanner.words(np.array([e]))[0])
    return Vocab(scanner.words(entries), counts[entries], scanner.raw_words), entries


def count_vocab(source: Source, min_count: int = 5, max_vocab: int | None = None,
                max_sentence_len: int = MAX_SENTENCE_LEN, block_size: int = BLOCK_SIZE) -> Vocab:
    """``vocab.build_vocab``'s work: one counting pass (see there)."""
    return _vocab_of(_count(source, max_vocab, max_sentence_len, block_size), min_count)[0]


def encode_corpus(source: Source, vocab: Vocab, max_sentence_len: int = MAX_SENTENCE_LEN,
                  block_size: int = BLOCK_SIZE) -> EncodedCorpus:
    """Token ids (vocabulary rows) of a corpus; tokens not in ``vocab`` are dropped."""
    _check_sentence_len(max_sentence_len)
    scanner = _Scanner.for_vocab(vocab, max_sentence_len)
    _feed(scanner, source, block_size)
    _check_not_empty(scanner.raw_words, source)
    n_ids, n_sent = int(scanner.state[_N_IDS]), int(scanner.state[_N_SENT])
    starts = scanner.starts[:n_sent]
    scanner.ids = None
    ids, mapping = scanner.spool.finish(n_ids)
    return _encoded(ids, starts[:, 0], starts[:, 1], scanner.raw_words, mapping)


def scan_corpus(source: Source, min_count: int = 5, max_vocab: int | None = None,
                max_sentence_len: int = MAX_SENTENCE_LEN,
                block_size: int = BLOCK_SIZE) -> tuple[Vocab, EncodedCorpus]:
    """Vocabulary and encoded corpus; one pass over the data unless ``max_vocab`` forces two.

    One pass records every token's table entry, then maps entries to final rows (or drop) in place,
    so the peak is about one int32 per raw token plus the table.
    """
    _check_sentence_len(max_sentence_len)
    if max_vocab is not None:
        if not _is_path(source) and iter(source) is source:
            raise UserError("max_vocab needs two passes over the corpus, but the sentences given are a "
                            "one-shot iterator; pass a list or a re-iterable object")
        vocab = count_vocab(source, min_count, max_vocab, max_sentence_len, block_size)
        return vocab, encode_corpus(source, vocab, max_sentence_len, block_size)
    scanner = _Scanner(insert=True, record=True, max_len=max_sentence_len)
    _feed(scanner, source, block_size)
    _check_not_empty(scanner.raw_words, source)
    vocab, entries = _vocab_of(scanner, min_count)
    row_of = np.full(scanner.n_entries, -1, np.int32)
    row_of[entries] = np.arange(len(entries), dtype=np.int32)
    n_sent = int(scanner.state[_N_SENT])
    starts = scanner.starts[:n_sent]
    ends = _compact(scanner, starts, row_of)
    scanner.ids = None
    ids, mapping = scanner.spool.finish(int(ends[-1]) if n_sent else 0)
    return vocab, _encoded(ids, ends, starts[:, 1], scanner.raw_words, mapping)


def _compact(scanner: _Scanner, starts: np.ndarray, row_of: np.ndarray, chunk_tokens: int = 1 << 22) -> np.ndarray:
    """Map entries to rows in place, a stretch of sentences at a time, dropping each stretch's pages after."""
    n_sent = starts.shape[0]
    ends = np.empty(n_sent, np.int64)
    read = written = first = 0
    scanner.spool.rewind()
    while first < n_sent:
        last = int(np.searchsorted(starts[:, 0], starts[first, 0] + chunk_tokens, side="right"))
        last = min(max(last, first + 1), n_sent)
        read, written = _compact_ids(scanner.ids, starts, first, last, read, written, row_of, ends)
        scanner.spool.release(written)
        first = last
    return ends


def _check_sentence_len(max_sentence_len: int) -> None:
    if max_sentence_len < 1:
        raise UserError(f"max_sentence_len must be at least 1 (got {max_sentence_len})")
