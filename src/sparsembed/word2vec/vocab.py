"""Vocabulary: words in gensim 4's row order, their counts, subsampling thresholds and the noise table.

Row order is gensim 4.4's ``sort_by_descending_frequency``: descending count; among equal counts the word
whose first occurrence (as gensim's raw-vocab dict order, i.e. after ``max_vocab`` pruning) is LATER
comes first (``np.lexsort((-first_index, -count))``). Matching it keeps our rows aligned with gensim's.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numba
import numpy as np

from sparsembed.errors import UserError
from sparsembed.fsutil import atomic_write

_U32_MAX = 2**32 - 1


class Vocab:
    """Words (rows) with counts.

    Attributes:
        words: row order (see the module docstring).
        counts: int64 corpus counts, aligned with ``words``.
        raw_words: all tokens read from the corpus, including words below min_count (for a vocabulary
            loaded from an fvocab file: the sum of its counts).
    """

    def __init__(self, words: list[str], counts: np.ndarray, raw_words: int | None = None):
        counts = np.asarray(counts, dtype=np.int64)
        if counts.shape != (len(words),):
            raise ValueError(f"{len(words)} words but counts has shape {counts.shape}")
        self.words = list(words)
        self.counts = counts
        self.raw_words = int(counts.sum()) if raw_words is None else int(raw_words)
        self._word_to_id: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.words)

    def __repr__(self) -> str:
        return f"Vocab({len(self)} words, {self.raw_words} raw tokens)"

    @property
    def word_to_id(self) -> dict[str, int]:
        """word -> row (built on first use)."""
        if self._word_to_id is None:
            self._word_to_id = {w: i for i, w in enumerate(self.words)}
        return self._word_to_id

    def index(self, word: str) -> int:
        """Row of ``word``; KeyError if it is not in the vocabulary."""
        return self.word_to_id[word]

    def sample_ints(self, sample: float) -> np.ndarray:
        """Per-row uint32 keep thresholds for frequent-word subsampling, bit-identical to gensim 4.4.

        Keep a token of row r when ``sample_int[r] >= random_uint32``. threshold_count = sample * (sum of
        counts) (for sample >= 1: ``int(sample * (3 + sqrt 5) / 2)``, gensim's shorthand); keep probability
        p = (sqrt(c / threshold_count) + 1) * threshold_count / c, capped at 1; sample_int =
        uint32(p * (2**32 - 1)) (truncated, as gensim does). ``sample=0`` keeps everything (2**32 - 1).
        """
        if sample < 0:
            raise UserError(f"sample must be >= 0 (got {sample}); 0 disables subsampling")
        counts = self.counts.astype(np.float64)
        total = float(self.counts.sum())
        if not sample:
            threshold = total
        elif sample < 1.0:
            threshold = sample * total
        else:
            threshold = float(int(sample * (3 + np.sqrt(5)) / 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            p = (np.sqrt(counts / threshold) + 1) * (threshold / counts)
        p = np.where(np.isnan(p) | (p >= 1.0), 1.0, p)
        return (p * _U32_MAX).astype(np.uint32)

    def noise_alias(self, power: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
        """Walker alias table for drawing noise words with P(r) proportional to counts[r] ** power.

        Returns (threshold uint32, alias int32). To draw one word: r = uniform integer in [0, n);
        u = uniform uint32; the word is ``r if u < threshold[r] else alias[r]`` (see ``alias_draw``).
        Buckets that keep all their mass have ``alias[r] == r``, so threshold 2**32 - 1 is exact there.
        """
        if len(self) == 0:
            raise UserError("cannot build a noise distribution for an empty vocabulary")
        weights = self.counts.astype(np.float64) ** power
        if not np.all(np.isfinite(weights)) or weights.sum() <= 0:
            raise UserError(f"noise power {power} gives no usable distribution over the counts")
        prob, alias = _vose(weights / weights.sum() * len(weights))
        threshold = np.minimum(np.floor(prob * 2.0**32), _U32_MAX).astype(np.uint32)
        return threshold, alias

    def save_fvocab(self, path: str | os.PathLike) -> None:
        """Write gensim's fvocab format ("word count" per line, row order), atomically."""
        text = "".join(f"{w} {c}\n" for w, c in zip(self.words, self.counts.tolist(), strict=True))
        with atomic_write(path) as handle:
            handle.write(text.encode("utf-8"))

    @classmethod
    def load_fvocab(cls, path: str | os.PathLike) -> Vocab:
        """Read an fvocab file ("word count" per line); rows keep the file's order."""
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise UserError(f"cannot read vocabulary file {str(path)!r}: {exc.strerror or exc}") from exc
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"vocabulary file {str(path)!r} is not UTF-8 at byte {exc.start}") from None
        words, counts = [], []
        for number, line in enumerate(text.split("\n"), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].isdigit():
                raise UserError(f"vocabulary file {str(path)!r} line {number}: expected 'word count', "
                                f"got {line[:80]!r}")
            words.append(fields[0])
            counts.append(int(fields[1]))
        if len(set(words)) != len(words):
            raise UserError(f"vocabulary file {str(path)!r} lists a word twice; each word must appear once")
        return cls(words, np.array(counts, dtype=np.int64))

    def to_state(self) -> dict:
        """Arrays and ints for a checkpoint (``np.savez``-able, no pickles); keys start with ``vocab_``."""
        encoded = [w.encode("utf-8") for w in self.words]
        ends = np.cumsum([len(b) for b in encoded], dtype=np.int64)
        return {
            "vocab_bytes": np.frombuffer(b"".join(encoded), np.uint8).copy(),
            "vocab_ends": ends,
            "vocab_counts": self.counts.copy(),
            "vocab_raw_words": np.int64(self.raw_words),
        }

    @classmethod
    def from_state(cls, state: dict) -> Vocab:
        """Inverse of ``to_state`` (extra keys are ignored)."""
        data = np.asarray(state["vocab_bytes"], np.uint8).tobytes()
        ends = np.asarray(state["vocab_ends"], np.int64).tolist()
        starts = [0, *ends[:-1]]
        words = [data[a:b].decode("utf-8") for a, b in zip(starts, ends, strict=True)]
        return cls(words, np.asarray(state["vocab_counts"], np.int64), int(state["vocab_raw_words"]))


@numba.njit(nogil=True, cache=True)
def _vose(scaled):
    """Vose's alias method; ``scaled`` sums to n. Returns (probability of keeping r, alias of r)."""
    n = scaled.shape[0]
    p = scaled.copy()
    prob = np.ones(n, np.float64)
    alias = np.arange(n).astype(np.int32)
    small = np.empty(n, np.int64)
    large = np.empty(n, np.int64)
    ns = 0
    nl = 0
    for i in range(n):
        if p[i] < 1.0:
            small[ns] = i
            ns += 1
        else:
            large[nl] = i
            nl += 1
    while ns > 0 and nl > 0:
        ns -= 1
        s = small[ns]
        g = large[nl - 1]
        prob[s] = p[s]
        alias[s] = g
        p[g] = (p[g] + p[s]) - 1.0
        if p[g] < 1.0:
            nl -= 1
            small[ns] = g
            ns += 1
    # leftovers (either list) hold mass 1 up to rounding: keep prob 1, alias self
    return prob, alias


def alias_draw(threshold: np.ndarray, alias: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Draw ``size`` rows from a ``noise_alias`` table (vectorised reference sampler)."""
    r = rng.integers(0, len(threshold), size=size)
    u = rng.integers(0, 2**32, size=size, dtype=np.uint64)
    return np.where(u < threshold[r], r, alias[r])


def rows_by_frequency(counts: np.ndarray, min_count: int, word_at: Callable[[int], str]) -> np.ndarray:
    """Indices (into first-occurrence order) of the words kept by min_count, in gensim 4's row order.

    ``word_at(i)`` names word i, for the error raised when no word reaches min_count.
    """
    if min_count < 0:
        raise UserError(f"min_count must be >= 0 (got {min_count})")
    kept = np.flatnonzero(counts >= min_count)
    if len(kept) == 0:
        top = int(np.lexsort((-np.arange(len(counts)), -counts))[0])
        raise UserError(f"no word reaches min_count={min_count} (the most frequent word "
                        f"{word_at(top)!r} occurs {int(counts[top])} times); lower --min-count")
    return kept[np.lexsort((-kept, -counts[kept]))]

