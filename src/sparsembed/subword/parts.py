"""What a fastText model file holds, taken from a trained model: :class:`SubwordParts`.

``Word2Vec.fasttext_parts()`` returns one; the ``.bin`` writer (:mod:`sparsembed.subword.fasttext_bin`) consumes
it. The input matrix a fastText file stores is dense, ``(nwords + buckets) x dim``: the word rows, then every
bucket's row. Most buckets were never trained (no vocabulary word's n-gram falls into them) and are not stored
here; :attr:`SubwordParts.bucket_rows` gives any range of buckets as the dense matrix would hold them, so a writer
can stream 2M bucket rows in blocks without ever holding them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sparsembed.errors import UserError

if TYPE_CHECKING:
    from sparsembed.word2vec.model import Word2Vec

__all__ = ["SubwordParts"]


@dataclass
class SubwordParts:
    """A trained subword model, in fastText's terms.

    Attributes:
        words: the vocabulary, in row order (descending count).
        counts: int64 corpus count of each word.
        dim: vector size (fastText's ``dim``).
        window: maximum context window (``ws``).
        epochs: passes over the corpus (``epoch``).
        min_count: the vocabulary's count threshold (``minCount``).
        negative: noise words per positive (``neg``).
        sample: subsampling threshold (``t``); word2vec's formula, not fastText's, was used while training.
        alpha: initial learning rate (``lr``).
        sg: 1 for skip-gram, 0 for CBOW (fastText's ``model``: ``sg`` / ``cbow``).
        minn, maxn: character n-gram lengths (``minn``, ``maxn``).
        buckets: number of hash buckets (``bucket``).
        word_rows: float32 ``[nwords, dim]``: the words' own input rows (not their composed vectors), rows
            ``0..nwords-1`` of fastText's input matrix.
        bucket_rows: ``bucket_rows(start, stop)`` → float32 ``[stop - start, dim]``, buckets ``[start, stop)`` of
            ALL ``buckets``, rows ``nwords + start ..`` of fastText's input matrix: trained ones as trained, the
            others at their initial value.
        syn1: float32 ``[nwords, dim]``: the output matrix (fastText's ``output``).
        ntokens: every token the corpus held, words below ``min_count`` included (fastText's ``ntokens``).
    """

    words: list[str]
    counts: np.ndarray
    dim: int
    window: int
    epochs: int
    min_count: int
    negative: int
    sample: float
    alpha: float
    sg: int
    minn: int
    maxn: int
    buckets: int
    word_rows: np.ndarray
    bucket_rows: Callable[[int, int], np.ndarray]
    syn1: np.ndarray
    ntokens: int

    @property
    def model_name(self) -> str:
        """fastText's name of the model: ``"sg"`` or ``"cbow"``."""
        return "sg" if self.sg else "cbow"

    @classmethod
    def of(cls, model: Word2Vec) -> SubwordParts:
        """The parts of ``model`` (its own arrays, not copies); UserError when it was trained without subwords."""
        index = model.subwords
        if index is None:
            raise UserError("this model was trained without subwords (--subwords 0); a fastText model needs "
                            "n-grams: train with --subwords 3-6")
        s = model.settings
        syn0 = model.syn0

        def bucket_rows(start: int, stop: int) -> np.ndarray:
            if not (0 <= start <= stop <= index.buckets):
                raise ValueError(f"bucket range [{start}, {stop}) is outside [0, {index.buckets})")
            return index.bucket_rows(syn0, s.seed, start, stop)

        return cls(
            words=list(model.vocab.words), counts=model.vocab.counts, dim=s.vector_size, window=s.window,
            epochs=s.epochs, min_count=s.min_count, negative=s.negative, sample=s.sample, alpha=s.alpha, sg=s.sg,
            minn=s.minn, maxn=s.maxn, buckets=s.buckets, word_rows=syn0[:index.nwords], bucket_rows=bucket_rows,
            syn1=model.syn1, ntokens=model.vocab.raw_words,
        )
