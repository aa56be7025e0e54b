"""Which input rows make up each word, and where the buckets' rows are stored: :class:`SubwordIndex`.

Only the buckets that some vocabulary word's n-grams fall into are ever trained, so only they get rows: the input
matrix ``syn0`` holds the ``nwords`` word rows, then one row per *used* bucket (``bucket_of_row[i]`` is the bucket
of row ``nwords + i``), in the order the vocabulary (most frequent word first) first uses them. Hashing scatters a
frequent word's n-grams over all buckets; in first-use order the rows most tokens touch lie together at the start
of the matrix, so training reuses cache lines and pages (the gain is measured in BENCHMARKS.md). A bucket's row is a
binary search away in a sorted copy.
``syn0`` stays one dense array, sparse-sent: the data-parallel exchange carries bucket rows like word rows. A
bucket no word uses keeps its initial value, a function of (seed, bucket) alone
(:func:`~sparsembed.word2vec.kernels.fill_initial_rows`), so an out-of-vocabulary query or an export of all buckets
sees what a dense ``(nwords + buckets) x dim`` matrix would hold, at ``n_used / buckets`` of its memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from sparsembed.subword import kernels
from sparsembed.subword.ngrams import ngram_buckets
from sparsembed.word2vec.kernels import fill_initial_rows, init_input_matrix

__all__ = ["SubwordIndex"]


@dataclass
class SubwordIndex:
    """Word ``w``'s input rows are ``rows[offsets[w]:offsets[w + 1]]``: its own row ``w`` first, then the rows of
    its n-grams' buckets in fastText's order (:mod:`~sparsembed.subword.ngrams`). ``bucket_of_row`` (int64,
    unique, in first-use order unless a checkpoint's layout was given) names the bucket of each row after the word
    rows."""

    nwords: int
    minn: int
    maxn: int
    buckets: int
    offsets: np.ndarray  # int64 [nwords + 1]
    rows: np.ndarray  # int32
    bucket_of_row: np.ndarray  # int64 [n_used]
    gain: np.ndarray  # float32 [nwords]: sum(multiplicity**2) / len of each word's rows (skip-gram's mean update)

    def __post_init__(self) -> None:
        self._sorted_order = np.argsort(self.bucket_of_row, kind="stable")  # row - nwords, by bucket
        self._sorted_buckets = self.bucket_of_row[self._sorted_order]

    @classmethod
    def build(cls, words: Sequence[str], minn: int, maxn: int, buckets: int,
              layout: np.ndarray | None = None) -> SubwordIndex:
        """The index of ``words`` (vocabulary order), compiled over all of them at once.

        ``layout`` (a checkpoint's ``bucket_of_row``) keeps the row order a model was trained with; by default the
        used buckets get rows in first-use order. ValueError when ``layout`` is not the used buckets, each once.
        """
        offsets, ngrams = ngram_buckets(words, minn, maxn, buckets)
        used, first = np.unique(ngrams.astype(np.int64), return_index=True)
        if layout is None:
            bucket_of_row = used[np.argsort(first, kind="stable")]
        else:
            bucket_of_row = np.asarray(layout, dtype=np.int64)
            if not np.array_equal(np.sort(bucket_of_row), used):
                raise ValueError("its bucket rows do not match its vocabulary's n-grams")
        row_of_used = np.empty(len(used), dtype=np.int64)  # sorted position of a bucket -> its row - nwords
        row_of_used[np.searchsorted(used, bucket_of_row)] = np.arange(len(used))
        rows_offsets, rows = _with_word_rows(offsets, ngrams, used, row_of_used)
        return cls(len(words), minn, maxn, buckets, rows_offsets, rows, bucket_of_row,
                   kernels.mean_gains(rows_offsets, rows))

    @property
    def n_rows(self) -> int:
        """Rows of the input matrix: words, then used buckets."""
        return self.nwords + len(self.bucket_of_row)

    def row_counts(self, word_counts: np.ndarray) -> np.ndarray:
        """How often each input row is trained (int64 ``[n_rows]``): a word row its word's count, a bucket row the
        counts of the words listing it, summed (what a load-balanced shard map of ``syn0`` would weigh rows by)."""
        per_entry = np.repeat(np.asarray(word_counts, dtype=np.int64), np.diff(self.offsets))
        return np.bincount(self.rows, weights=per_entry, minlength=self.n_rows).astype(np.int64)

    def initial_input_matrix(self, dim: int, seed: int) -> np.ndarray:
        """A fresh input matrix: the word rows word2vec starts from, then the used buckets' initial rows."""
        syn0 = np.empty((self.n_rows, dim), dtype=np.float32)
        syn0[:self.nwords] = init_input_matrix(self.nwords, dim, seed)
        fill_initial_rows(syn0[self.nwords:], self.bucket_of_row, seed, kernels.BUCKET_STREAM)
        return syn0

    def initial_bucket_rows(self, dim: int, seed: int, buckets: np.ndarray | None = None) -> np.ndarray:
        """The initial values (float32 ``[len(buckets), dim]``) of ``buckets`` (default: the used ones, in row
        order)."""
        keys = self.bucket_of_row if buckets is None else np.asarray(buckets, dtype=np.int64)
        out = np.empty((len(keys), dim), dtype=np.float32)
        fill_initial_rows(out, keys, seed, kernels.BUCKET_STREAM)
        return out

    def word_vectors(self, syn0: np.ndarray) -> np.ndarray:
        """Every word's vector, fastText's ``getWordVector``: the mean of its input rows (float32 ``[nwords, dim]``)."""
        out = np.empty((self.nwords, syn0.shape[1]), dtype=np.float32)
        kernels.mean_rows(syn0, self.offsets, self.rows, out)
        return out

    def bucket_rows(self, syn0: np.ndarray, seed: int, start: int, stop: int) -> np.ndarray:
        """The rows of buckets ``[start, stop)``, all of them as a dense matrix would hold them: trained rows from
        ``syn0`` for the used buckets, initial values for the others."""
        start, stop = max(0, int(start)), min(self.buckets, int(stop))
        out = self.initial_bucket_rows(syn0.shape[1], seed, np.arange(start, max(start, stop), dtype=np.int64))
        lo, hi = np.searchsorted(self._sorted_buckets, [start, stop])
        out[self._sorted_buckets[lo:hi] - start] = syn0[self.nwords + self._sorted_order[lo:hi]]
        return out

    def oov_vector(self, word: str, syn0: np.ndarray, seed: int) -> tuple[np.ndarray | None, int, int]:
        """An unknown word's vector, fastText's: the mean of its n-gram rows (trained or initial); with how many
        n-grams it has and how many of their buckets were trained. None when it has no n-gram at all."""
        offsets, ngrams = ngram_buckets([word], self.minn, self.maxn, self.buckets)
        if len(ngrams) == 0:
            return None, 0, 0
        ngrams = ngrams.astype(np.int64)
        where = np.searchsorted(self._sorted_buckets, ngrams)
        where = np.minimum(where, max(len(self._sorted_buckets) - 1, 0))
        trained = (self._sorted_buckets[where] == ngrams) if len(self._sorted_buckets) else np.zeros(len(ngrams), bool)
        rows = np.empty((len(ngrams), syn0.shape[1]), dtype=np.float32)
        rows[trained] = syn0[self.nwords + self._sorted_order[where[trained]]]
        if not trained.all():
            rows[~trained] = self.initial_bucket_rows(syn0.shape[1], seed, ngrams[~trained])
        vector = np.zeros(syn0.shape[1], dtype=np.float32)
        for row in rows:  # in order, in float32, as the word vectors are summed
            vector += row
        vector *= np.float32(1.0) / np.float32(len(rows))
        return vector, len(ngrams), int(trained.sum())


@njit(cache=True)
def _with_word_rows(offsets, ngrams, used, row_of_used):
    """CSR of input rows: each word's own row, then ``nwords + row_of_used[index of its bucket in used]`` per
    n-gram (``used`` sorted)."""
    nwords = offsets.shape[0] - 1
    out_offsets = offsets + np.arange(nwords + 1)
    rows = np.empty(out_offsets[nwords], dtype=np.int32)
    for w in range(nwords):
        p = out_offsets[w]
        rows[p] = w
        for q in range(offsets[w], offsets[w + 1]):
            p += 1
            rows[p] = nwords + row_of_used[np.searchsorted(used, ngrams[q])]
    return out_offsets, rows
