"""Vectors of a subword model: every vocabulary word's composed vector, and vectors for words never seen.

:class:`SubwordVectors` is a :class:`~sparsembed.word2vec.vectors.Vectors` whose rows are the vocabulary words'
composed vectors (the mean of the word's own row and its n-grams' rows, fastText's ``getWordVector``), so lookups,
``most_similar``, evaluations and files work as for word2vec; a word outside the vocabulary gets the mean of its
n-grams' rows (trained, or the initial value of a bucket no vocabulary word uses), as fastText gives it. A word
none of whose n-grams was trained (or that has none) has no vector: a KeyError (``UnknownWordError``) says so.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sparsembed.subword.index import SubwordIndex
from sparsembed.word2vec.vectors import UnknownWordError, Vectors

__all__ = ["SubwordVectors"]


class SubwordVectors(Vectors):
    """Composed word vectors plus the subword rows, to compose a vector for any word.

    ``index`` and ``syn0`` are the model's own (shared, not copied); ``seed`` gives the initial rows of the
    buckets that were never trained.
    """

    def __init__(self, words: Sequence[str], matrix: np.ndarray, counts: np.ndarray | None, index: SubwordIndex,
                 syn0: np.ndarray, seed: int) -> None:
        super().__init__(words, matrix, counts)
        self.subwords = index
        self._syn0 = syn0
        self._seed = seed

    def __repr__(self) -> str:
        s = self.subwords
        return f"SubwordVectors({len(self)} words x {self.vector_size}, n-grams {s.minn}-{s.maxn}, {s.buckets} buckets)"

    def unknown_vector(self, word: str) -> np.ndarray:
        """The mean of ``word``'s n-gram rows; UnknownWordError when it has no n-gram or none was trained."""
        s = self.subwords
        vector, n_ngrams, trained = s.oov_vector(word, self._syn0, self._seed)
        if vector is None:
            raise UnknownWordError(f"word {word!r} is not in the vocabulary and has no character n-gram of "
                                   f"{s.minn}-{s.maxn} characters, so it has no vector")
        if trained == 0:
            raise UnknownWordError(f"word {word!r} is not in the vocabulary and none of its {n_ngrams} character "
                                   f"n-grams was trained (no vocabulary word shares one), so it has no vector")
        return vector
