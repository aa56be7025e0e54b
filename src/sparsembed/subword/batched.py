"""fastText's CBOW with each context word's input rows gathered once and updated once per sentence position.

fastText's CBOW (:func:`sparsembed.subword.kernels.train_job`) sums, for every target, the input rows of every
context word (its own row and its n-grams', about 20 for a word of 7 letters), then adds the error to each of
them: with a window of 5, a word's rows are read and written about 6 times each as the window slides over it.
Here each kept position of a sentence is *composed* once, when it enters the window: ``S_j``, the sum of its word's
input rows, in a ring of ``2 * window + 2`` slots. A target's hidden vector is the mean over its context's ``S_j``
(divided by their rows in all, as fastText's mean over the concatenated list); the error ``work`` it returns is
added to each context position's pending change ``P_j`` and to ``S_j`` itself (``S_j += sq_j * work``, ``sq_j``
the sum of the squared multiplicities of the word's rows: what adding ``work`` to each listed row does to their
sum), so a position's sum stays what fastText would recompute from its rows. When a position leaves the window,
``P_j`` is added to each of its rows once per listing, as fastText adds each error.

What differs from fastText: a row shared by two positions of one window (the same word twice, or a common n-gram
such as ``<th`` in "the" and "then") sees the other position's changes only once it has left the window, and other
threads see a position's changes when it leaves (Hogwild) rather than after each target. Everything else, the
generator order included, is the exact kernel's: subsampling, the window drawn per target, one set of noise words
per target, the sigmoid tables, the per-sentence learning rate and the touched-row marks.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from sparsembed.word2vec.kernels import (
    FASTMATH,
    NOT_TRACKED,
    draw_negatives,
    job_start,
    longest_sentence,
    negative_pass,
    next_bits,
    prefetch_row,
    sentence_alpha,
    subsample,
)

__all__ = ["train_cbow_job_batched"]

#: How many positions ahead of the one being composed its rows are prefetched.
PREFETCH_AHEAD = 2


@njit(nogil=True, fastmath=FASTMATH, inline="always")
def _compose(syn0, sub_offsets, sub_rows, word, out):
    """``out`` = the sum of ``word``'s input rows."""
    dim = out.shape[0]
    for k in range(dim):
        out[k] = 0.0
    for r in range(sub_offsets[word], sub_offsets[word + 1]):
        row = syn0[sub_rows[r]]
        for k in range(dim):
            out[k] += row[k]


@njit(nogil=True, fastmath=FASTMATH, inline="always")
def _release(syn0, sub_offsets, sub_rows, word, pending):
    """Add ``pending`` to each of ``word``'s input rows (once per listing)."""
    dim = pending.shape[0]
    for r in range(sub_offsets[word], sub_offsets[word + 1]):
        row = syn0[sub_rows[r]]
        for k in range(dim):
            row[k] += pending[k]


@njit(nogil=True, fastmath=FASTMATH, cache=True)
def train_cbow_job_batched(
    syn0, syn1, sub_offsets, sub_rows, sub_gain, ids, starts, first_sentence, last_sentence, sample_ints, use_sample,
    packed_alias, sg, window, negative, alpha_start, alpha_end, total_tokens, tokens_before, seed, epoch, job, sig,
    logsig, touched0=NOT_TRACKED, touched1=NOT_TRACKED,
):
    """:func:`sparsembed.subword.kernels.train_job`'s arguments, marks and result, CBOW only (``sg`` must be 0),
    with each position composed once and updated once (module docstring)."""
    dim = syn0.shape[1]
    track = touched0.shape[0] > 0
    kept = np.empty(longest_sentence(starts, first_sentence, last_sentence), dtype=np.int32)
    ring = 2 * window + 2
    sums = np.zeros((ring, dim), dtype=np.float32)
    pending = np.zeros((ring, dim), dtype=np.float32)
    hidden = np.empty(dim, dtype=np.float32)
    work = np.empty(dim, dtype=np.float32)
    state, negs = job_start(syn1, packed_alias, negative, seed, epoch, job, touched1)
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
        n, state = subsample(ids, first, last, sample_ints, use_sample, kept, state, touched0, touched1)
        trained += n
        if track:
            for i in range(n):
                for r in range(sub_offsets[kept[i]], sub_offsets[kept[i] + 1]):
                    touched0[sub_rows[r]] = 1
        entered = 0  # positions [0, entered) are composed; [0, released) have given back their changes
        released = 0
        for i in range(n):
            state, bits = next_bits(state)
            reduced = int((bits >> np.uint64(32)) % np.uint64(window))
            lo = max(0, i - window + reduced)
            hi = min(n, i + window + 1 - reduced)
            while released < i - window:  # no later target's window reaches it
                slot = released % ring
                _release(syn0, sub_offsets, sub_rows, kept[released], pending[slot])
                released += 1
            while entered < hi:
                slot = entered % ring
                _compose(syn0, sub_offsets, sub_rows, kept[entered], sums[slot])
                pending[slot, :] = 0.0
                entered += 1
                if entered + PREFETCH_AHEAD < n:
                    w = kept[entered + PREFETCH_AHEAD]
                    for r in range(sub_offsets[w], sub_offsets[w + 1]):
                        prefetch_row(syn0, sub_rows[r])
            if i + 1 < n:
                prefetch_row(syn1, kept[i + 1])
            count = 0
            hidden[:] = 0.0
            for j in range(lo, hi):
                if j != i:
                    src = sums[j % ring]
                    for k in range(dim):
                        hidden[k] += src[k]
                    count += sub_offsets[kept[j] + 1] - sub_offsets[kept[j]]
            if count == 0:
                continue
            inv = np.float32(1.0) / np.float32(count)
            for k in range(dim):
                hidden[k] *= inv
            work[:] = 0.0
            state = draw_negatives(syn1, packed_alias, negs[(example + 1) & 1], state, touched1)
            loss += negative_pass(syn1, hidden, kept[i], work, alpha, negs[example & 1], sig, logsig)
            example += 1
            pairs += 1
            for j in range(lo, hi):
                if j != i:
                    slot = j % ring
                    c = kept[j]
                    # each listed row gets work once per listing: their sum moves by sum(multiplicity ** 2) * work
                    sq = sub_gain[c] * np.float32(sub_offsets[c + 1] - sub_offsets[c])
                    for k in range(dim):
                        pending[slot, k] += work[k]
                        sums[slot, k] += sq * work[k]
        while released < n:
            slot = released % ring
            _release(syn0, sub_offsets, sub_rows, kept[released], pending[slot])
            released += 1
    return loss, pairs, trained
