"""Compiled fastText training jobs (CBOW and skip-gram over subword rows, negative sampling), and the row helpers.

A word's *input rows* are its own row and the rows of its n-grams' buckets (:class:`~sparsembed.subword.index.
SubwordIndex`: CSR ``offsets`` / ``rows``, word row first). As in fastText (``FastText::cbow`` / ``skipgram``,
``Model::update``):

* CBOW: the input list of a position is the concatenation of its context words' input rows; ``hidden`` is their
  mean; the context predicts the centre word against ``negative`` noise words; the whole error goes to every row of
  the list (a row listed twice gets it twice).
* skip-gram: ``hidden`` is the mean of the centre word's input rows, which predicts each word of its (shrunk)
  window in turn; each prediction's error goes to all those rows. fastText adds it to the rows and recomputes the
  mean before the next prediction; since every row of the list gets the same error, the new mean is the old one
  plus that error, so this kernel keeps the mean, adds each error to it and to a sum, and adds the sum to the rows
  once per centre word: the same arithmetic with one pass over the rows instead of one per context word. (A row
  listed twice, as ``"aa"`` is in ``"<aaaa>"``, gets the error twice, which moves the mean by
  ``sum(multiplicity**2) / len`` times the error: ``SubwordIndex.gain``, 1 for a list without repeats.)

Everything else is :mod:`sparsembed.word2vec.kernels`': one job per call without the GIL (Hogwild threads),
the generator seeded by (seed, epoch, job), word2vec's subsampling, the window drawn uniformly in 1..window,
noise from the alias table, the sigmoid tables, a learning rate falling linearly per sentence with the global
position, and the ``touched0`` / ``touched1`` marks of the rows a job may change (every input row of every kept
word, every target and noise row).

Functions over 80 lines: a job is one compiled loop whose per-example state (generator, noise buffers, window,
counters) lives in locals; cut into calls, each example would pass a dozen arrays back and forth.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from sparsembed.word2vec.kernels import (
    FASTMATH,
    draw_negatives,
    job_start,
    longest_sentence,
    marks_or_none,
    negative_pass,
    next_bits,
    prefetch_row,
    sentence_alpha,
    subsample,
)

#: The generator stream of bucket rows' initial values (``fill_initial_rows``; word rows use ``INPUT_STREAM``).
BUCKET_STREAM = 0xB0C4E7


@njit(inline="always")
def add_rows_of(syn0, sub_offsets, sub_rows, word, out):
    """``out +=`` each of ``word``'s input rows, in list order (a row listed twice, twice)."""
    dim = out.shape[0]
    for r in range(sub_offsets[word], sub_offsets[word + 1]):
        row = syn0[sub_rows[r]]
        for k in range(dim):
            out[k] += row[k]


@njit(inline="always")
def add_to_rows_of(syn0, sub_offsets, sub_rows, word, change):
    """Each of ``word``'s input rows ``+= change``, once per listing, as fastText adds an error."""
    dim = change.shape[0]
    for r in range(sub_offsets[word], sub_offsets[word + 1]):
        row = syn0[sub_rows[r]]
        for k in range(dim):
            row[k] += change[k]


@njit(inline="always")
def prefetch_rows_of(syn0, sub_offsets, sub_rows, word):
    """Prefetch ``word``'s input rows (a hint, no effect on results)."""
    for r in range(sub_offsets[word], sub_offsets[word + 1]):
        prefetch_row(syn0, sub_rows[r])


@njit(inline="always")
def mark_rows_of(kept, n, sub_offsets, sub_rows, touched0):
    """``touched0`` marks every input row of the words ``kept[:n]``."""
    for i in range(n):
        for r in range(sub_offsets[kept[i]], sub_offsets[kept[i] + 1]):
            touched0[sub_rows[r]] = 1


@njit(nogil=True, fastmath=FASTMATH, cache=True)
def train_job(
    syn0, syn1, sub_offsets, sub_rows, sub_gain, ids, starts, first_sentence, last_sentence, sample_ints, use_sample,
    packed_alias, sg, window, negative, alpha_start, alpha_end, total_tokens, tokens_before, seed, epoch, job, sig,
    logsig, touched0=None, touched1=None,
):
    """Train sentences ``[first_sentence, last_sentence)`` in place; return (loss, pairs, trained words), as
    :func:`sparsembed.word2vec.kernels.train_job` does, with word ``w``'s input rows
    ``sub_rows[sub_offsets[w]:sub_offsets[w + 1]]`` (rows of ``syn0``; ``syn1`` has one row per word) and
    ``sub_gain[w]`` how far an error added to each of them moves their mean (see the module docstring)."""
    marks0, marks1 = marks_or_none(touched0), marks_or_none(touched1)
    dim = syn0.shape[1]
    track = marks0.shape[0] > 0
    kept = np.empty(longest_sentence(starts, first_sentence, last_sentence), dtype=np.int32)
    hidden = np.empty(dim, dtype=np.float32)
    work = np.empty(dim, dtype=np.float32)
    total = np.empty(dim, dtype=np.float32)
    state, negs = job_start(syn1, packed_alias, negative, seed, epoch, job, marks1)
    example = 0
    loss = 0.0
    pairs = 0
    trained = 0
    done = tokens_before
    slope = (alpha_start - alpha_end) / max(total_tokens, 1)
    for s in range(first_sentence, last_sentence):
        first, last = starts[s], starts[s + 1]
        alpha = sentence_alpha(alpha_start, alpha_end, slope, done)
        done += last - first
        n, state = subsample(ids, first, last, sample_ints, use_sample, kept, state, marks0, marks1)
        trained += n
        if track:
            mark_rows_of(kept, n, sub_offsets, sub_rows, marks0)
        for i in range(n):
            state, bits = next_bits(state)
            reduced = int((bits >> np.uint64(32)) % np.uint64(window))
            lo = max(0, i - window + reduced)
            hi = min(n, i + window + 1 - reduced)
            word = kept[i]
            if i + 1 < n:
                prefetch_row(syn1, kept[i + 1])
            ahead = i + 1 if sg else i + window + 1
            if ahead < n:
                prefetch_rows_of(syn0, sub_offsets, sub_rows, kept[ahead])
            if sg:
                a, b = sub_offsets[word], sub_offsets[word + 1]
                if lo + 1 >= hi or a == b:
                    continue
                hidden[:] = 0.0
                add_rows_of(syn0, sub_offsets, sub_rows, word, hidden)
                inv = np.float32(1.0) / np.float32(b - a)
                for k in range(dim):
                    hidden[k] *= inv
                total[:] = 0.0
                gain = sub_gain[word]
                for j in range(lo, hi):
                    if j == i:
                        continue
                    work[:] = 0.0
                    state = draw_negatives(syn1, packed_alias, negs[(example + 1) & 1], state, marks1)
                    loss += negative_pass(syn1, hidden, kept[j], work, alpha, negs[example & 1], sig, logsig)
                    example += 1
                    pairs += 1
                    for k in range(dim):  # what fastText's recomputed mean would be after adding work to each row
                        hidden[k] += gain * work[k]
                        total[k] += work[k]
                add_to_rows_of(syn0, sub_offsets, sub_rows, word, total)
            else:
                count = 0
                hidden[:] = 0.0
                for j in range(lo, hi):
                    if j == i:
                        continue
                    c = kept[j]
                    add_rows_of(syn0, sub_offsets, sub_rows, c, hidden)
                    count += sub_offsets[c + 1] - sub_offsets[c]
                if count == 0:
                    continue
                inv = np.float32(1.0) / np.float32(count)
                for k in range(dim):
                    hidden[k] *= inv
                work[:] = 0.0
                state = draw_negatives(syn1, packed_alias, negs[(example + 1) & 1], state, marks1)
                loss += negative_pass(syn1, hidden, word, work, alpha, negs[example & 1], sig, logsig)
                example += 1
                pairs += 1
                for j in range(lo, hi):
                    if j == i:
                        continue
                    add_to_rows_of(syn0, sub_offsets, sub_rows, kept[j], work)
    return loss, pairs, trained


@njit(nogil=True, cache=True)
def mean_gains(offsets, rows):
    """Per word, ``sum(multiplicity**2) / len`` over its list of rows: how far the mean of those rows moves when
    every listed row gets the same change once per listing (1.0 when no row repeats; 0 for an empty list)."""
    n = offsets.shape[0] - 1
    out = np.zeros(n, dtype=np.float32)
    for w in range(n):
        a, b = offsets[w], offsets[w + 1]
        square_sum = 0
        for p in range(a, b):  # sum over listings of the listing's multiplicity = sum(multiplicity**2)
            for q in range(a, b):
                if rows[q] == rows[p]:
                    square_sum += 1
        if b > a:
            out[w] = np.float32(square_sum / (b - a))
    return out


@njit(nogil=True, cache=True)
def mean_rows(syn0, offsets, rows, out):
    """``out[w]`` = the mean of ``syn0[rows[offsets[w]:offsets[w + 1]]]`` (zeros where the list is empty),
    summed in float32 in list order as the kernels sum ``hidden``."""
    dim = syn0.shape[1]
    for w in range(offsets.shape[0] - 1):
        a, b = offsets[w], offsets[w + 1]
        for k in range(dim):
            out[w, k] = 0.0
        add_rows_of(syn0, offsets, rows, w, out[w])
        if b > a:
            inv = np.float32(1.0) / np.float32(b - a)
            for k in range(dim):
                out[w, k] *= inv
