"""The standard evaluations of word vectors, with gensim 4.4's answers: analogies and word-pair similarity.

:func:`word_analogies` and :func:`word_pairs` return exactly what gensim's ``evaluate_word_analogies`` /
``evaluate_word_pairs`` return, in gensim's shapes, so gensim users' code runs unchanged; the analogies are
scored a whole batch at a time with one matrix product and a compiled loop (numba, no GIL, a few threads)
instead of one ``most_similar`` call per question.  :func:`analogy_report` and :func:`pair_report` give the
same figures as JSON-able dicts with more detail (semantic / syntactic split, out-of-vocabulary share, p-values),
all shares in percent with ``_pct`` in their names; ``sparsembed eval`` prints them.  All four are
:class:`~sparsembed.word2vec.vectors.Vectors` methods.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numba
import numpy as np

from sparsembed.errors import UserError

if TYPE_CHECKING:
    from sparsembed.word2vec.vectors import Vectors

__all__ = ["analogy_report", "pair_report", "word_analogies", "word_pairs"]

PathLike = str | os.PathLike
Question = tuple[str, str, str, str]

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
) -> tuple[float, list[dict[str, Any]]]:
    """Accuracy on an analogy file (``: section`` headers, then ``a b c expected`` lines), as gensim.

    Same answers and shape as gensim 4.4's ``KeyedVectors.evaluate_word_analogies``: ``(score, sections)``,
    ``score`` the fraction of answered questions answered right, ``sections`` one dict per section of the
    file with its ``"section"`` name and the ``"correct"`` and ``"incorrect"`` questions as lists of
    ``(a, b, c, expected)`` tuples (upper-cased when ``case_insensitive``), then a ``"Total accuracy"``
    section holding all of them.  Only the first ``restrict_vocab`` rows take part; with
    ``case_insensitive`` the first (most frequent) row of each upper-cased form stands for it; questions
    with a word outside that vocabulary are left out (or counted incorrect with ``dummy4unknown``); the
    answer is the best-scoring row by 3CosAdd that is not a question word.  Blank lines are skipped; any
    other line that is not four words raises :class:`UserError` (gensim logs and skips it).
    """
    outcome = _analogy_outcome(vectors, path, restrict_vocab, case_insensitive, dummy4unknown)
    correct: list[list[Question]] = [[] for _ in outcome.names]
    incorrect: list[list[Question]] = [[] for _ in outcome.names]
    for question, section, right, answered in zip(outcome.questions, outcome.section_of.tolist(),
                                                  outcome.correct.tolist(), outcome.answered.tolist(), strict=True):
        if answered:
            (correct if right else incorrect)[section].append(question)
    sections = [{"section": name, "correct": correct[i], "incorrect": incorrect[i]}
                for i, name in enumerate(outcome.names)]
    total = {"section": "Total accuracy", "correct": [q for s in correct for q in s],
             "incorrect": [q for s in incorrect for q in s]}
    score = _ratio(len(total["correct"]), len(total["correct"]) + len(total["incorrect"]))
    return score, [*sections, total]


def analogy_report(
    vectors: Vectors,
    path: PathLike,
    restrict_vocab: int = 300_000,
    case_insensitive: bool = True,
    dummy4unknown: bool = False,
) -> dict[str, Any]:
    """The figures of :func:`word_analogies` (same arguments, same answers) as a JSON-able dict.

    ``questions`` (in the file), ``correct`` and ``incorrect`` (answered questions), ``accuracy_pct``
    (correct / answered, gensim's score in percent), ``semantic_pct`` / ``syntactic_pct`` (the same over
    sections not starting / starting with ``gram``, as word2vec's compute-accuracy splits them),
    ``oov_pct`` (questions with a word outside the first ``restrict_vocab`` rows, as gensim logs it) and
    ``sections``: per section of the file its ``section`` name, ``correct``, ``incorrect`` and ``accuracy_pct``.
    """
    outcome = _analogy_outcome(vectors, path, restrict_vocab, case_insensitive, dummy4unknown)
    n_sections = len(outcome.names)
    right = np.bincount(outcome.section_of[outcome.correct & outcome.answered], minlength=n_sections)
    tried = np.bincount(outcome.section_of[outcome.answered], minlength=n_sections)
    is_gram = np.array([name.startswith("gram") for name in outcome.names], dtype=bool)
    return {
        "questions": len(outcome.questions),
        "correct": int(right.sum()),
        "incorrect": int(tried.sum() - right.sum()),
        "accuracy_pct": 100 * _ratio(right.sum(), tried.sum()),
        "semantic_pct": 100 * _ratio(right[~is_gram].sum(), tried[~is_gram].sum()),
        "syntactic_pct": 100 * _ratio(right[is_gram].sum(), tried[is_gram].sum()),
        "oov_pct": 100 * _ratio((~outcome.known).sum(), len(outcome.known)),
        "sections": [{"section": name, "correct": int(r), "incorrect": int(t - r), "accuracy_pct": 100 * _ratio(r, t)}
                     for name, r, t in zip(outcome.names, right, tried, strict=True)],
    }


@dataclass
class _AnalogyOutcome:
    """Every question of an analogy file and how it fared; both result shapes are built from this."""

    names: list[str]  # section names, in file order
    section_of: np.ndarray  # int64 [questions]: index into names
    questions: list[Question]  # as compared (upper-cased when case-insensitive)
    known: np.ndarray  # bool [questions]: all four words among the first restrict_vocab rows
    answered: np.ndarray  # bool [questions]: scored (known, or every question with dummy4unknown)
    correct: np.ndarray  # bool [questions]: answered right


def _analogy_outcome(vectors: Vectors, path: PathLike, restrict_vocab: int, case_insensitive: bool,
                     dummy4unknown: bool) -> _AnalogyOutcome:
    vocab, canon = _upper_vocab(vectors, restrict_vocab, case_insensitive)
    names, section_of, questions = _read_analogies(path, case_insensitive)
    if not len(questions):
        raise UserError(f"{path}: no analogy questions found")
    ids = _lookup(vocab, questions)
    known = (ids >= 0).all(axis=1)
    correct = np.zeros(len(ids), dtype=bool)
    correct[known] = _solve_analogies(vectors, ids[known], canon)
    answered = known | dummy4unknown
    return _AnalogyOutcome(names, section_of, [tuple(q) for q in questions], known, answered, correct & answered)


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
) -> tuple[tuple[float, float], tuple[float, float], float]:
    """Correlation with human similarity judgements (``word1<delim>word2<delim>score`` lines), as gensim.

    Same values and shape as gensim 4.4's ``KeyedVectors.evaluate_word_pairs``: ``((pearson, p_value),
    (spearman, p_value), oov_ratio)``, the p-values two-sided as scipy's ``pearsonr`` / ``spearmanr`` give
    them (plain tuples here, where gensim returns scipy's result objects), Spearman with average ranks for
    ties, ``oov_ratio`` the percent of pairs with a word outside the first ``restrict_vocab`` rows (with
    ``dummy4unknown`` such pairs count with similarity 0 and the percent is of the pairs used, as gensim
    computes it).  Lines starting with ``#`` are comments; malformed lines raise :class:`UserError` (gensim
    logs and skips them).
    """
    figures = pair_report(vectors, path, delimiter, restrict_vocab, case_insensitive, dummy4unknown)
    return ((figures["pearson"], figures["pearson_p"]), (figures["spearman"], figures["spearman_p"]),
            figures["oov_pct"])


def pair_report(
    vectors: Vectors,
    path: PathLike,
    delimiter: str = "\t",
    restrict_vocab: int = 300_000,
    case_insensitive: bool = True,
    dummy4unknown: bool = False,
) -> dict[str, Any]:
    """The figures of :func:`word_pairs` (same arguments, same values) as a JSON-able dict.

    ``pairs`` (in the file), ``pairs_used``, ``pearson``, ``pearson_p``, ``spearman``, ``spearman_p`` and
    ``oov_pct`` (gensim's ``oov_ratio``, a percent).
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
    pearson = _pearson(gold[used], model[used])
    spearman = _pearson(_average_ranks(gold[used]), _average_ranks(model[used]))
    return {
        "pairs": len(ids),
        "pairs_used": n_used,
        "pearson": pearson,
        # scipy's pearsonr gives p = 1 for two points, where the t-test has no degrees of freedom.
        "pearson_p": 1.0 if n_used == 2 and math.isfinite(pearson) else _correlation_p(pearson, n_used),
        "spearman": spearman,
        "spearman_p": _correlation_p(spearman, n_used),
        "oov_pct": 100.0 * oov / (n_used if dummy4unknown else n_used + oov),
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


def _correlation_p(r: float, n: int) -> float:
    """Two-sided p-value of a correlation ``r`` over ``n`` pairs, as scipy's ``pearsonr`` and ``spearmanr``.

    Both reduce to the t-test with ``n - 2`` degrees of freedom, whose two-sided tail is the regularised
    incomplete beta function ``I_x(dof / 2, 1 / 2)`` at ``x = 1 - r**2`` (no scipy needed).
    """
    if not math.isfinite(r) or n < 3:
        return float("nan")
    return _betainc((n - 2) / 2, 0.5, max(0.0, 1.0 - r * r))


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function ``I_x(a, b)`` by its continued fraction (Numerical Recipes 6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    # The fraction converges fast on this side of the mean; the other side follows by symmetry.
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function, by the modified Lentz method."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):  # about sqrt(max(a, b)) terms; the bound only guards against a bug
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h
