"""The standard evaluations of word vectors, with gensim 4.4's answers: analogies and word-pair similarity.

:func:`word_analogies` gives exactly gensim's ``evaluate_word_analogies`` answers but scores a whole batch of
questions with one matrix product and a compiled loop (numba, no GIL, a few threads) instead of one
``most_similar`` call per question; :func:`word_pairs` is gensim's ``evaluate_word_pairs`` (Pearson and Spearman).
Both are :class:`~sparsembed.word2vec.vectors.Vectors` methods, as in gensim.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numba
import numpy as np

from sparsembed.errors import UserError

if TYPE_CHECKING:
    from sparsembed.word2vec.vectors import Vectors

__all__ = ["word_analogies", "word_pairs"]

PathLike = str | os.PathLike

# Threads for the analogy kernel (it releases the GIL); more than the cores would only contend.
_THREADS = max(1, min(4, os.cpu_count() or 1))
# gensim's evaluate_word_analogies asks most_similar for this many candidates and gives up after them.
_ANALOGY_TOPN = 5
# Questions re-scored at once under gensim's exact top-5 rule (a [block, vocab] float32 array).
_PICK_BLOCK = 256


def word_analogies(
    vectors: Vectors,
    path: PathLike,
    restrict_vocab: int = 300_000,
    case_insensitive: bool = True,
    dummy4unknown: bool = False,
) -> dict[str, Any]:
    """Accuracy on an analogy file (``: section`` headers, then ``a b c expected`` lines), as gensim.

    Same answers as gensim 4.4's ``KeyedVectors.evaluate_word_analogies``: only the first
    ``restrict_vocab`` rows take part; with ``case_insensitive`` words are upper-cased and the first
    (most frequent) row of each upper-cased form stands for it; questions with a word outside that
    vocabulary are skipped (or counted wrong with ``dummy4unknown``); the answer is the best-scoring
    row by 3CosAdd that is not a question word.  Returns ``accuracy`` (all answered questions),
    ``semantic`` / ``syntactic`` (sections not / starting with ``gram``, as word2vec's compute-accuracy
    splits them), ``coverage`` (answerable share of all questions), ``correct``, ``incorrect``,
    ``questions``, ``restrict_vocab`` (effective) and ``sections``: per-section ``correct``,
    ``incorrect``, ``accuracy``, the last entry being gensim's ``"Total accuracy"``.  Blank lines are
    skipped; any other line that is not four words raises :class:`UserError` (gensim logs and skips).
    """
    vocab, canon = _upper_vocab(vectors, restrict_vocab, case_insensitive)
    names, section_of, questions = _read_analogies(path, case_insensitive)
    if not len(questions):
        raise UserError(f"{path}: no analogy questions found")
    ids = _lookup(vocab, questions)
    known = (ids >= 0).all(axis=1)
    correct = np.zeros(len(ids), dtype=bool)
    correct[known] = _solve_analogies(vectors, ids[known], canon)
    answered = known | dummy4unknown
    n_sections = len(names)
    right = np.bincount(section_of[correct & answered], minlength=n_sections)
    tried = np.bincount(section_of[answered], minlength=n_sections)
    sections = [_score(name, int(r), int(t - r)) for name, r, t in zip(names, right, tried, strict=True)]
    is_gram = np.array([name.startswith("gram") for name in names], dtype=bool)
    total = _score("Total accuracy", int(right.sum()), int(tried.sum() - right.sum()))
    return {
        "accuracy": total["accuracy"],
        "semantic": _ratio(right[~is_gram].sum(), tried[~is_gram].sum()),
        "syntactic": _ratio(right[is_gram].sum(), tried[is_gram].sum()),
        "coverage": float(known.sum() / len(known)),
        "correct": total["correct"],
        "incorrect": total["incorrect"],
        "questions": len(known),
        "sections": [*sections, total],
        "restrict_vocab": len(canon),
    }

def _upper_vocab(vectors: Vectors, restrict_vocab: int | None,
                 case_insensitive: bool) -> tuple[dict[str, int], np.ndarray]:
    """Evaluation vocabulary: key -> row among the first ``restrict_vocab`` rows, plus ``canon``, which
    maps every such row to the row that stands for its key (itself unless an earlier row upper-cases
    to the same key)."""
    end = len(vectors) if restrict_vocab is None else min(int(restrict_vocab), len(vectors))
    keys = vectors.index_to_key[:end]
    if case_insensitive:
        keys = [key.upper() for key in keys]
    # Built from the back so the first (most frequent) row of a repeated key wins, as in gensim.
    vocab = dict(zip(reversed(keys), range(end - 1, -1, -1), strict=True))
    if len(vocab) == end:
        return vocab, np.arange(end)
    return vocab, np.fromiter(map(vocab.__getitem__, keys), dtype=np.int64, count=end)

def _solve_analogies(vectors: Vectors, ids: np.ndarray, canon: np.ndarray) -> np.ndarray:
    """Whether each question ``[a, b, c, expected]`` (rows in the restricted vocabulary) is answered right.

    The 3CosAdd score of row ``j`` is ``u_j . (u_b + u_c - u_a)`` (gensim normalises the sum first,
    which does not change the ranking).  It is linear, so one matrix product gives the cosine of the
    few hundred distinct question words against the restricted vocabulary, and a compiled loop adds
    three of its rows per question while tracking the best row that is not a question row: about
    3 additions per (question, row) instead of a ``dim``-long dot product.  Where that answer is
    another spelling of a question word (case-insensitive runs), gensim's rule applies instead: walk
    its top 5 candidates for the first that is not a question word.
    """
    unit = vectors.get_normed_vectors()[: len(canon)]
    rows, local = np.unique(ids[:, :3], return_inverse=True)
    local = np.ascontiguousarray(local.reshape(-1, 3), dtype=np.int64)
    live = unit.any(axis=1)
    sims = unit[rows] @ unit.T
    sims[:, ~live] = _DEAD  # gensim scores zero rows NaN: never an answer
    questions = np.ascontiguousarray(ids[:, :3], dtype=np.int64)
    best = _run_split(_best_rows, len(ids), sims, local, questions)
    hit = canon[np.maximum(best, 0)]
    answered = (best >= 0) & live[np.maximum(best, 0)]
    correct = (hit == ids[:, 3]) & answered
    # Rare cases decided by gensim's exact rule: the best row spells a question word differently
    # (case-insensitive runs), or there is no usable row at all.
    clash = (hit[:, None] == ids[:, :3]).any(axis=1) | ~answered
    redo = np.flatnonzero(clash)
    for start in range(0, len(redo), _PICK_BLOCK):
        chunk = redo[start : start + _PICK_BLOCK]
        correct[chunk] = _gensim_pick(sims, local[chunk], ids[chunk], canon)
    return correct

def word_pairs(
    vectors: Vectors,
    path: PathLike,
    delimiter: str = "\t",
    restrict_vocab: int = 300_000,
    case_insensitive: bool = True,
    dummy4unknown: bool = False,
) -> dict[str, Any]:
    """Correlation with human similarity judgements (``word1<delim>word2<delim>score`` lines), as gensim.

    Lines starting with ``#`` are comments.  Returns ``pearson``, ``spearman`` (average ranks for
    ties), ``oov_ratio`` (percent of pairs with a word outside the first ``restrict_vocab`` rows,
    computed as gensim does) and ``pairs`` (pairs used; with ``dummy4unknown`` unknown pairs count
    with similarity 0).  Malformed lines raise :class:`UserError` (gensim logs and skips them).
    """
    vocab, _ = _upper_vocab(vectors, restrict_vocab, case_insensitive)
    words, gold = _read_pairs(path, delimiter, case_insensitive)
    ids = _lookup(vocab, words)
    known = (ids >= 0).all(axis=1)
    oov = int((~known).sum())
    unit = vectors.get_normed_vectors()
    model = np.zeros(len(ids), dtype=np.float64)
    pairs = ids[known]
    model[known] = np.einsum("ij,ij->i", unit[pairs[:, 0]], unit[pairs[:, 1]], dtype=np.float64)
    used = np.ones(len(ids), dtype=bool) if dummy4unknown else known
    if not used.any():
        raise UserError(f"{path}: every word pair has a word outside the vocabulary; nothing to evaluate")
    n_used = int(used.sum())
    return {
        "pearson": _pearson(gold[used], model[used]),
        "spearman": _pearson(_average_ranks(gold[used]), _average_ranks(model[used])),
        "oov_ratio": 100.0 * oov / (n_used if dummy4unknown else n_used + oov),
        "pairs": n_used,
    }


def _gensim_pick(sims: np.ndarray, local: np.ndarray, ids: np.ndarray, canon: np.ndarray) -> np.ndarray:
    """gensim's answer rule for a block of questions, where the plain best row may not decide.

    gensim takes the top 5 rows other than the three question rows and answers with the first whose
    (upper-cased) word is not a question word, else with the last of them; no rows, no answer.
    """
    scores = sims[local[:, 1]] + sims[local[:, 2]] - sims[local[:, 0]]
    rows = np.arange(len(ids))[:, None]
    scores[rows, ids[:, :3]] = -np.inf
    scores[scores <= _DEAD] = -np.inf
    k = min(_ANALOGY_TOPN, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)
    usable = np.isfinite(np.take_along_axis(scores, top, axis=1))
    words = canon[top]
    fresh = usable & ~(words[:, :, None] == ids[:, None, :3]).any(axis=2)
    # First fresh candidate, else the last usable one (gensim's loop leaves `predicted` there).
    pick = np.where(fresh.any(axis=1), fresh.argmax(axis=1), usable.sum(axis=1) - 1)
    predicted = words[rows[:, 0], np.maximum(pick, 0)]
    return (pick >= 0) & (predicted == ids[:, 3])


# Scores of all-zero rows: far below any cosine sum, finite so the fast max below needs no NaN handling.
_DEAD = np.float32(-1e30)
_TILE = 256  # vocabulary rows per tile: three tiles of float32 stay in L1 while a question is scored


@numba.njit(cache=True, nogil=True, fastmath={"nnan", "ninf", "nsz"})
def _tile_max(sa: np.ndarray, sb: np.ndarray, sc: np.ndarray, j0: int, j1: int) -> float:
    """Upper bound pass: the best ``sb + sc - sa`` in a tile, ignoring exclusions (branch-free)."""
    top = np.float32(-3e38)
    for j in range(j0, j1):
        top = max(top, sb[j] + sc[j] - sa[j])
    return top


@numba.njit(cache=True, nogil=True)
def _best_rows(start: int, stop: int, sims: np.ndarray, local: np.ndarray, rows: np.ndarray, out: np.ndarray):
    """For questions ``start:stop``: the row ``j`` maximising ``sims[b, j] + sims[c, j] - sims[a, j]``
    among rows other than the question's own three (``-1`` if none), into ``out``.

    ``local`` holds each question's a, b, c as rows of ``sims``, ``rows`` as vocabulary rows.  The
    vocabulary is walked in tiles so consecutive questions (which share words) reuse cached slices, and
    a tile is scanned for the argmax only when its maximum beats the best so far.
    """
    n = sims.shape[1]
    best = np.full(stop - start, np.float32(-3e38), dtype=np.float32)
    for q in range(start, stop):
        out[q] = -1
    for j0 in range(0, n, _TILE):
        j1 = min(j0 + _TILE, n)
        for q in range(start, stop):
            sa = sims[local[q, 0]]
            sb = sims[local[q, 1]]
            sc = sims[local[q, 2]]
            top = best[q - start]
            if _tile_max(sa, sb, sc, j0, j1) <= top:
                continue
            arg = out[q]
            xa, xb, xc = rows[q, 0], rows[q, 1], rows[q, 2]
            for j in range(j0, j1):
                s = sb[j] + sc[j] - sa[j]
                if s > top and j != xa and j != xb and j != xc:
                    top = s
                    arg = j
            best[q - start] = top
            out[q] = arg


def _run_split(kernel: Any, n: int, *args: np.ndarray) -> np.ndarray:
    """Run a ``nogil`` kernel over ``n`` items in a few threads, each on a contiguous share."""
    out = np.empty(n, dtype=np.int64)
    workers = max(1, min(_THREADS, (n + 255) // 256))
    bounds = np.linspace(0, n, workers + 1).astype(np.int64)
    if workers == 1:
        kernel(0, n, *args, out)
        return out
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda k: kernel(bounds[k], bounds[k + 1], *args, out), range(workers)))
    return out


def _read_text(path: PathLike, what: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().split("\n")
    except OSError as exc:
        raise UserError(f"cannot read {what} file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _read_analogies(path: PathLike, case_insensitive: bool) -> tuple[list[str], np.ndarray, list[list[str]]]:
    """Section names, the section of each question, and the questions' four words."""
    names: list[str] = []
    section_of: list[int] = []
    questions: list[list[str]] = []
    for line_no, line in enumerate(_read_text(path, "analogy"), start=1):
        if line.startswith(": "):
            names.append(line.lstrip(": ").strip())
            continue
        words = (line.upper() if case_insensitive else line).split()
        if not words:
            continue
        if not names:
            raise UserError(f"{path}: line {line_no}: a question before the first ': section' line")
        if len(words) != 4:
            raise UserError(f"{path}: line {line_no}: expected 4 words, got {len(words)}: {line.strip()[:80]!r}")
        section_of.append(len(names) - 1)
        questions.append(words)
    return names, np.array(section_of, dtype=np.int64), questions


def _read_pairs(path: PathLike, delimiter: str, case_insensitive: bool) -> tuple[list[list[str]], np.ndarray]:
    """Word pairs and their gold scores; ``#`` comment lines and blank lines are skipped."""
    words: list[list[str]] = []
    gold: list[float] = []
    for line_no, line in enumerate(_read_text(path, "word-pair"), start=1):
        if line.startswith("#") or not line.strip():
            continue
        fields = line.rstrip("\r").split(delimiter)
        try:
            if len(fields) != 3:
                raise ValueError
            gold.append(float(fields[2]))
        except ValueError:
            raise UserError(
                f"{path}: line {line_no}: expected 'word1{delimiter!r}word2{delimiter!r}score', got {line[:80]!r}"
            ) from None
        words.append([w.upper() for w in fields[:2]] if case_insensitive else fields[:2])
    if not gold:
        raise UserError(f"{path}: no word pairs found")
    return words, np.array(gold, dtype=np.float64)


def _lookup(vocab: dict[str, int], rows: list[list[str]]) -> np.ndarray:
    """Row indices for a table of words, -1 where a word is not in ``vocab``; one dict lookup per distinct word."""
    if not rows:
        return np.zeros((0, 0), dtype=np.int64)
    table = np.array(rows, dtype=object)
    distinct, inverse = np.unique(table.astype(str), return_inverse=True)
    ids = np.array([vocab.get(word, -1) for word in distinct.tolist()], dtype=np.int64)
    return ids[inverse.reshape(table.shape)]


def _score(name: str, correct: int, incorrect: int) -> dict[str, Any]:
    return {
        "section": name,
        "correct": correct,
        "incorrect": incorrect,
        "accuracy": _ratio(correct, incorrect + correct),
    }


def _ratio(numerator: float, denominator: float) -> float:
    """gensim reports 0.0 for a section with no answered questions."""
    return float(numerator / denominator) if denominator else 0.0


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing their average rank (scipy.stats.rankdata's 'average')."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    group_rank = (starts + ends + 1) / 2.0  # mean of the 1-based positions starts+1 .. ends
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r in float64; NaN when either side is constant (as scipy)."""
    x = x - x.mean()
    y = y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else float("nan")
