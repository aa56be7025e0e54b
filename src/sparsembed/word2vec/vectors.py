"""Trained word vectors: lookup, cosine neighbours, files, and the standard evaluations (gensim-compatible).

:class:`Vectors` plays the part of gensim's ``KeyedVectors`` for a finished model: rows are in vocabulary
order (most frequent first, which ``restrict_vocab`` relies on), ``most_similar`` follows gensim 4.4's semantics
exactly, and the two evaluations (:mod:`sparsembed.word2vec.evaluate`) are its methods with gensim's result
shapes; :meth:`Vectors.to_gensim` hands the vectors to gensim itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sparsembed.errors import UserError
from sparsembed.word2vec import evaluate, formats

if TYPE_CHECKING:
    from gensim.models import KeyedVectors

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
Key = str | np.ndarray


class UnknownWordError(UserError, KeyError):
    """A word that is not in the vocabulary (a ``KeyError`` for mapping code, a ``UserError`` for the CLI)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Vectors:
    """Word vectors in vocabulary order, with gensim ``KeyedVectors``-style queries.

    Attributes: ``index_to_key`` (words by row), ``key_to_index``, ``vectors`` (float32 ``[n, dim]``),
    ``vector_size``, ``counts`` (int64 ``[n]`` or None).
    """

    def __init__(self, words: Sequence[str], matrix: np.ndarray, counts: np.ndarray | None = None) -> None:
        matrix = np.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[0] != len(words):
            raise UserError(f"need one matrix row per word: {len(words)} words, matrix shape {matrix.shape}")
        self.index_to_key: list[str] = list(words)
        self.key_to_index: dict[str, int] = {word: i for i, word in enumerate(self.index_to_key)}
        if len(self.key_to_index) != len(self.index_to_key):
            seen: set[str] = set()
            repeated = next(w for w in self.index_to_key if w in seen or seen.add(w))
            raise UserError(f"word {repeated!r} appears more than once in the vocabulary")
        self.vectors: np.ndarray = np.ascontiguousarray(matrix, dtype=np.float32)
        self.vector_size: int = int(matrix.shape[1])
        self.counts: np.ndarray | None = None
        if counts is not None:
            self.counts = np.asarray(counts, dtype=np.int64)
            if self.counts.shape != (len(words),):
                raise UserError(f"counts has shape {self.counts.shape}, expected ({len(words)},)")
        self._normed: np.ndarray | None = None

    # ------------------------------------------------------------------------------------------ lookup

    def __len__(self) -> int:
        return len(self.index_to_key)

    def __contains__(self, word: object) -> bool:
        return word in self.key_to_index

    def __getitem__(self, word: str | Sequence[str]) -> np.ndarray:
        """The row of ``word`` (a view), or a 2-D array of rows for a list of words; a word outside the
        vocabulary gets :meth:`unknown_vector` (which raises here; subword vectors compose one)."""
        if isinstance(word, str):
            return self.vectors[self.key_to_index[word]] if word in self.key_to_index else self.unknown_vector(word)
        if all(w in self.key_to_index for w in word):
            return self.vectors[[self.key_to_index[w] for w in word]]
        return np.array([self[w] for w in word], dtype=np.float32).reshape(len(word), self.vector_size)

    def __repr__(self) -> str:
        return f"Vectors({len(self)} words x {self.vector_size})"

    def _index(self, word: str) -> int:
        try:
            return self.key_to_index[word]
        except KeyError:
            raise UnknownWordError(f"word {word!r} is not in the vocabulary") from None

    def unknown_vector(self, word: str) -> np.ndarray:
        """The vector of a word outside the vocabulary: none here (UnknownWordError); subword vectors
        (:class:`sparsembed.subword.vectors.SubwordVectors`) compose it from the word's character n-grams."""
        raise UnknownWordError(f"word {word!r} is not in the vocabulary")

    def _unit_vector(self, word: str) -> np.ndarray:
        if word in self.key_to_index:
            return self.get_normed_vectors()[self.key_to_index[word]]
        return _unit(self.unknown_vector(word).astype(np.float64)).astype(np.float32)

    def get_normed_vectors(self) -> np.ndarray:
        """Rows scaled to unit length (cached; all-zero rows stay zero)."""
        if self._normed is None:
            norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
            self._normed = self.vectors / np.where(norms > 0, norms, 1).astype(np.float32)
        return self._normed

    # ------------------------------------------------------------------------------------- similarity

    def similarity(self, w1: str, w2: str) -> float:
        """Cosine similarity of two words."""
        return float(np.dot(self._unit_vector(w1), self._unit_vector(w2)))

    def most_similar(
        self,
        positive: Key | Iterable[Key | tuple[Key, float]] = (),
        negative: Key | Iterable[Key | tuple[Key, float]] = (),
        topn: int | None = 10,
        restrict_vocab: int | None = None,
    ) -> list[tuple[str, float]] | np.ndarray:
        """Words closest (cosine) to the weighted mean of unit ``positive`` minus unit ``negative`` vectors.

        As in gensim: words and vectors (a single one or a list; ``(key, weight)`` pairs allowed) are
        combined with weights +1 / -1 divided by the sum of absolute weights; given words are left out of
        the answer; ``restrict_vocab`` searches only the first rows; ``topn=None`` returns all similarities.
        """
        pos_keys, pos_weights = _weighted_keys(positive, 1.0)
        neg_keys, neg_weights = _weighted_keys(negative, -1.0)
        keys, weights = pos_keys + neg_keys, np.array(pos_weights + neg_weights)
        if topn is not None and topn < 1:
            return []
        if not keys:
            raise UserError("most_similar needs at least one positive or negative word or vector")
        normed = self.get_normed_vectors()
        mean = np.zeros(self.vector_size, dtype=np.float64)
        exclude = []
        for key, weight in zip(keys, weights, strict=True):
            if isinstance(key, str) and key not in self.key_to_index:  # composed from subwords, or UnknownWordError
                mean += weight * self._unit_vector(key)
            elif isinstance(key, str):
                exclude.append(self._index(key))
                mean += weight * normed[exclude[-1]]
            else:
                mean += weight * np.asarray(key, dtype=np.float64)  # gensim does not normalise raw vectors
        mean /= np.abs(weights).sum()
        mean = _unit(mean).astype(np.float32)
        end = len(self) if not restrict_vocab else min(restrict_vocab, len(self))
        dists = normed[:end] @ mean
        if topn is None:
            return dists
        best = _top(dists, topn + len(exclude))
        excluded = set(exclude)
        result = [(self.index_to_key[i], float(dists[i])) for i in best if i not in excluded]
        return result[:topn]

    # ------------------------------------------------------------------------------------ evaluations
    # gensim's two evaluations, as methods in gensim's shapes (``self`` is their ``vectors``), and the same
    # figures as JSON-able dicts with more detail.
    evaluate_word_analogies = evaluate.word_analogies
    evaluate_word_pairs = evaluate.word_pairs
    analogy_report = evaluate.analogy_report
    pair_report = evaluate.pair_report

    def evaluate(
        self,
        analogies: PathLike | None = None,
        pairs: Iterable[PathLike] = (),
        restrict_vocab: int = 30_000,
    ) -> dict[str, Any]:
        """Run the analogy and word-pair evaluations; one JSON-able dict (what ``sparsembed eval`` prints).

        ``{"vocab_size", "vector_size", "restrict_vocab", "analogies": analogy_report(...) or None,
        "pairs": {file: pair_report(...)}}``, ``restrict_vocab`` being the number of most frequent words
        that took part (the one asked for, at most the vocabulary size).
        """
        result: dict[str, Any] = {
            "vocab_size": len(self),
            "vector_size": self.vector_size,
            "restrict_vocab": min(restrict_vocab, len(self)),
            "analogies": None,
            "pairs": {},
        }
        if analogies is not None:
            result["analogies"] = self.analogy_report(analogies, restrict_vocab=restrict_vocab)
        for pair_file in pairs:
            result["pairs"][os.fspath(pair_file)] = self.pair_report(pair_file, restrict_vocab=restrict_vocab)
        return result

    def to_gensim(self) -> KeyedVectors:
        """These vectors (and counts, if any, as the ``"count"`` attribute) as a ``gensim.models.KeyedVectors``.

        A copy: gensim's object owns its rows. Needs gensim (``pip install gensim``).
        """
        try:
            from gensim.models import KeyedVectors
        except ImportError:
            raise UserError("to_gensim needs gensim, which is not installed: pip install gensim") from None
        kv = KeyedVectors(self.vector_size, dtype=np.float32)
        kv.add_vectors(self.index_to_key, self.vectors)
        if self.counts is not None:
            for word, count in zip(self.index_to_key, self.counts.tolist(), strict=True):
                kv.set_vecattr(word, "count", count)
        return kv

    # -------------------------------------------------------------------------------------------- files

    def save_word2vec_format(self, path: PathLike, binary: bool = True, fvocab: PathLike | None = None) -> None:
        """Write word2vec C format (gensim-loadable) in row order, and the counts to ``fvocab`` if given."""
        if fvocab is not None:
            if self.counts is None:
                raise UserError(f"cannot write {fvocab}: these vectors carry no word counts")
            formats.write_fvocab(fvocab, self.index_to_key, self.counts)
        formats.write_word2vec(path, self.index_to_key, self.vectors, binary=binary)

    @classmethod
    def load_word2vec_format(
        cls, path: PathLike, binary: bool | None = None, fvocab: PathLike | None = None
    ) -> Vectors:
        """Read word2vec C format (binary or text, detected when ``binary`` is None) and optional counts.

        Words missing from ``fvocab`` get count 0 (gensim leaves them unset), with a logged warning.
        """
        words, matrix = formats.read_word2vec(path, binary=binary)
        counts = None
        if fvocab is not None:
            count_of = dict(zip(*formats.read_fvocab(fvocab), strict=True))
            counts = np.fromiter((count_of.get(w, 0) for w in words), dtype=np.int64, count=len(words))
            missing = sum(w not in count_of for w in words)
            if missing:
                logger.warning("%s lacks %d of the %d words in %s; their count is 0", fvocab, missing, len(words), path)
        return cls(words, matrix, counts)


# ------------------------------------------------------------------------------------------- helpers


def _weighted_keys(items: Any, sign: float) -> tuple[list[Key], list[float]]:
    """Split gensim-style ``positive`` / ``negative`` arguments into keys and signed weights."""
    if isinstance(items, str) or (isinstance(items, np.ndarray) and items.ndim == 1):
        items = [items]
    keys: list[Key] = []
    weights: list[float] = []
    for item in items:
        if isinstance(item, (str, np.ndarray)):
            keys.append(item)
            weights.append(sign)
        else:
            keys.append(item[0])
            weights.append(float(item[1]))
    return keys, weights


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, best first."""
    if k >= len(scores):
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k)[:k]
    return part[np.argsort(-scores[part], kind="stable")]
