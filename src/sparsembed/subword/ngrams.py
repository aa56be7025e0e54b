"""fastText's character n-grams and their hash, exactly: which n-grams a word has and which bucket each goes to.

A word's n-grams are those of ``"<" + word + ">"`` with ``minn <= n <= maxn`` *characters* (UTF-8 code points),
in fastText's order (``Dictionary::computeSubwords``): by start character, then by length; an n-gram never starts
on a UTF-8 continuation byte, and the 1-grams ``"<"`` and ``">"`` are left out. Repeats stay (``"aaaa"`` has
``"aa"`` three times), as fastText keeps them. An n-gram's bucket is ``hash % buckets`` with fastText's
``Dictionary::hash``: 32-bit FNV-1a over the bytes, each byte taken as a *signed* char (``int8_t``) and widened
to ``uint32``, so bytes >= 0x80 mix in as ``0xFFFFFF80 | byte`` (gensim's ``ft_hash_bytes`` reproduces this).

:func:`ngram_buckets` does the whole vocabulary at once, compiled, over one buffer of UTF-8 bytes with word
offsets, and returns the buckets as CSR arrays; :func:`compute_ngrams` and :func:`ft_hash` are the plain-Python
statements of the same rules (tests and single queries). :func:`parse_subwords` reads ``--subwords``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

from sparsembed.errors import UserError
from sparsembed.word2vec.settings import MAX_SUBWORD_N

__all__ = ["MAX_N", "ft_hash", "compute_ngrams", "ngram_buckets", "encode_words", "parse_subwords"]

#: The longest n-gram length ``--subwords`` accepts (fastText sets none; longer n-grams are nearly whole words).
MAX_N = MAX_SUBWORD_N
#: The largest bucket count: fastText stores ``hash % buckets`` in an ``int32``.
MAX_BUCKETS = 2**31 - 1
_BOW, _EOW = 0x3C, 0x3E  # "<", ">"
_FNV_OFFSET, _FNV_PRIME = 2166136261, 16777619


def ft_hash(data: bytes) -> int:
    """fastText's ``Dictionary::hash`` of ``data``: FNV-1a 32, each byte sign-extended as an ``int8_t``."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ (byte | 0xFFFFFF00 if byte >= 0x80 else byte)) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def compute_ngrams(word: str, minn: int, maxn: int) -> list[bytes]:
    """The n-grams of ``word`` as UTF-8 bytes, in fastText's order (plain Python: the rules stated once)."""
    data = b"<" + word.encode("utf-8") + b">"
    out = []
    for i in range(len(data)):
        if data[i] & 0xC0 == 0x80:
            continue
        j, n = i, 1
        while j < len(data) and n <= maxn:
            j += 1
            while j < len(data) and data[j] & 0xC0 == 0x80:
                j += 1
            if n >= minn and not (n == 1 and (i == 0 or j == len(data))):
                out.append(data[i:j])
            n += 1
    return out


def encode_words(words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``words`` as one UTF-8 byte buffer (uint8) and ``len(words) + 1`` int64 offsets into it."""
    encoded = [w.encode("utf-8") for w in words]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def ngram_buckets(words: Sequence[str], minn: int, maxn: int, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """The buckets of every word's n-grams: CSR ``(offsets int64 [len(words) + 1], buckets int32)``, word ``w``'s
    buckets being ``buckets[offsets[w]:offsets[w + 1]]`` in fastText's order (repeats kept)."""
    if not (1 <= minn <= maxn and 1 <= buckets <= MAX_BUCKETS):
        raise ValueError(f"need 1 <= minn <= maxn and 1 <= buckets <= {MAX_BUCKETS}, got {minn}, {maxn}, {buckets}")
    data, starts = encode_words(words)
    return _ngram_buckets(data, starts, minn, maxn, buckets)


@njit(nogil=True, cache=True)
def _byte(data, start, length, p):
    """Byte ``p`` of ``"<" + data[start:start + length] + ">"``."""
    if p == 0:
        return np.uint8(_BOW)
    if p == length + 1:
        return np.uint8(_EOW)
    return data[start + p - 1]


@njit(nogil=True, cache=True)
def _word_ngrams(data, start, length, minn, maxn, buckets, out, n_out):
    """fastText's ``computeSubwords`` over word ``data[start:start + length]``: write the buckets into
    ``out[n_out:]`` (when ``out`` is large enough; a sizing pass passes an empty one) and return the new count."""
    size = length + 2
    write = out.shape[0] > 0
    for i in range(size):
        if (_byte(data, start, length, i) & 0xC0) == 0x80:
            continue
        h = np.uint64(_FNV_OFFSET)
        j = i
        n = 1
        while j < size and n <= maxn:
            while True:  # one character: its first byte and its continuation bytes
                b = np.int64(_byte(data, start, length, j))
                if b >= 0x80:
                    b |= 0xFFFFFF00  # (uint32)(int8_t) byte: sign extension
                h = ((h ^ np.uint64(b)) * np.uint64(_FNV_PRIME)) & np.uint64(0xFFFFFFFF)
                j += 1
                if j >= size or (_byte(data, start, length, j) & 0xC0) != 0x80:
                    break
            if n >= minn and not (n == 1 and (i == 0 or j == size)):
                if write:
                    out[n_out] = np.int32(h % np.uint64(buckets))
                n_out += 1
            n += 1
    return n_out


@njit(nogil=True, cache=True)
def _ngram_buckets(data, starts, minn, maxn, buckets):
    n_words = starts.shape[0] - 1
    offsets = np.zeros(n_words + 1, dtype=np.int64)
    empty = np.empty(0, dtype=np.int32)
    for w in range(n_words):
        offsets[w + 1] = offsets[w] + _word_ngrams(data, starts[w], starts[w + 1] - starts[w], minn, maxn, buckets,
                                                   empty, 0)
    out = np.empty(offsets[n_words], dtype=np.int32)
    for w in range(n_words):
        _word_ngrams(data, starts[w], starts[w + 1] - starts[w], minn, maxn, buckets, out, offsets[w])
    return offsets, out


def parse_subwords(text: str) -> tuple[int, int] | None:
    """``--subwords``: ``"MINN-MAXN"`` (``"3-6"``) or ``"N"`` (``N-N``) as ``(minn, maxn)``; ``"0"`` as None (off).

    A UserError says what is wrong and what to give instead.
    """
    usage = (f"give MINN-MAXN character lengths with 1 <= MINN <= MAXN <= {MAX_N} (fastText's default is 3-6), "
             "or 0 for none")
    raw = text.strip()
    parts = raw.split("-")
    if len(parts) > 2 or not all(p.strip().isdigit() for p in parts):
        raise UserError(f"--subwords {text!r} is not a range of n-gram lengths; {usage}")
    minn, maxn = int(parts[0]), int(parts[-1])
    if len(parts) == 1 and minn == 0:
        return None
    if minn < 1:
        raise UserError(f"--subwords {text}: n-grams need at least 1 character; {usage}")
    if minn > maxn:
        raise UserError(f"--subwords {text}: the shortest n-gram length ({minn}) exceeds the longest ({maxn}); {usage}")
    if maxn > MAX_N:
        raise UserError(f"--subwords {text}: n-grams of {maxn} characters are too long; {usage}")
    return minn, maxn
