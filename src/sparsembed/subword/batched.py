"""fastText's model with each sentence position's input rows gathered once and updated once (``kernel="batched"``).

fastText's CBOW (:func:`sparsembed.subword.kernels.train_job`) sums, for every target, the input rows of every
context word (its own row and its n-grams', about 20 for a word of 7 letters), then adds the error to each of
them: with a window of 5, a word's rows are read and written about 6 times each as the window slides over it.
Here each kept position of a sentence is *composed* once, when it enters the window: ``S_j``, the sum of its word's
input rows, in a ring of ``2 * window + 2`` slots. An error ``e`` meant for position ``j``'s rows is added to its
pending change ``P_j`` and to ``S_j`` itself (``S_j += sq_j * e``, ``sq_j`` the sum of the squared multiplicities of
the word's rows: what adding ``e`` to each listed row does to their sum), so a position's sum stays what fastText
would recompute from its rows. When a position leaves the window, ``P_j`` is added to each of its rows once per
listing, as fastText adds each error.

* CBOW: a target's hidden vector is the mean over its context's ``S_j`` (divided by their rows in all, as
  fastText's mean over the concatenated list); its error goes to every context position, as in fastText.
* skip-gram: fastText predicts each context word from the centre word's mean row; here, as in pWord2Vec's
  minibatch (:mod:`sparsembed.word2vec.batched`), the context positions' mean vectors ``S_j / len_j`` predict the
  centre word against one set of noise words shared by the window: all scores from the rows as loaded, then the
  output rows get ``G^T . In`` and each position ``G . Out``. Over a corpus the (input word, output word) pairs are
  the same as fastText's, each the other way round; scores outside (-6, 6) saturate (pWord2Vec's rule).

What differs from fastText besides: a row shared by two positions of one window (the same word twice, or a common
n-gram such as ``<th`` in "the" and "then") sees the other position's changes only once it has left the window,
and other threads see a position's changes when it leaves (Hogwild) rather than after each target. Everything else,
the generator order included, is the exact kernel's: subsampling, the window drawn per target, one set of noise
words per target, the sigmoid tables, the per-sentence learning rate and the touched-row marks.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from sparsembed.subword.kernels import add_rows_of, add_to_rows_of, mark_rows_of, prefetch_rows_of
from sparsembed.word2vec.batched import saturated_gradient
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

__all__ = ["train_job_batched"]

#: How many positions ahead of the one being composed its rows are prefetched.
PREFETCH_AHEAD = 2


@njit(nogil=True, fastmath=FASTMATH, inline="always")
def _cbow_target(syn1, sums, pending, kept, sub_offsets, sub_gain, i, lo, hi, negs, alpha, hidden, work, sig, logsig):
    """Target ``i`` against its context ``[lo, hi)``'s composed sums: fastText's CBOW example. Returns
    (loss, examples)."""
    dim = hidden.shape[0]
    ring = sums.shape[0]
    count = 0
    hidden[:] = 0.0
    for j in range(lo, hi):
        if j != i:
            src = sums[j % ring]
            for k in range(dim):
                hidden[k] += src[k]
            count += sub_offsets[kept[j] + 1] - sub_offsets[kept[j]]
    if count == 0:
        return 0.0, 0
    inv = np.float32(1.0) / np.float32(count)
    for k in range(dim):
        hidden[k] *= inv
    work[:] = 0.0
    loss = negative_pass(syn1, hidden, kept[i], work, alpha, negs, sig, logsig)
    for j in range(lo, hi):
        if j != i:
            slot = j % ring
            c = kept[j]
            # each listed row gets work once per listing: their sum moves by sum(multiplicity ** 2) * work
            sq = sub_gain[c] * np.float32(sub_offsets[c + 1] - sub_offsets[c])
            for k in range(dim):
                pending[slot, k] += work[k]
                sums[slot, k] += sq * work[k]
    return loss, 1


@njit(nogil=True, fastmath=FASTMATH, inline="always")
def _skipgram_target(syn1, sums, pending, kept, sub_offsets, sub_gain, i, lo, hi, negs, alpha, inputs, slots, grad,
                     old, sig, logsig):
    """Target ``i``'s output row and the shared noise rows ``negs`` against the mean input vectors of its context
    ``[lo, hi)`` (pWord2Vec's minibatch: all scores from the rows as loaded, then both sides at once). Returns
    (loss, pairs)."""
    dim = inputs.shape[1]
    ring = sums.shape[0]
    word = kept[i]
    nc = 0
    for j in range(lo, hi):
        if j != i:
            slot = j % ring
            inv = np.float32(1.0) / np.float32(sub_offsets[kept[j] + 1] - sub_offsets[kept[j]])
            for k in range(dim):
                inputs[nc, k] = sums[slot, k] * inv
            slots[nc] = j
            nc += 1
    if nc == 0:
        return 0.0, 0
    loss = 0.0
    n_out = negs.shape[0] + 1
    for o in range(n_out):
        row = word if o == 0 else negs[o - 1]
        out = syn1[row]
        for k in range(dim):
            old[o, k] = out[k]
        for c in range(nc):
            if o > 0 and row == word:
                grad[c, o] = 0.0
                continue
            score = np.float32(0.0)
            for k in range(dim):
                score += inputs[c, k] * out[k]
            g, part = saturated_gradient(score, np.float32(1.0) if o == 0 else np.float32(0.0), alpha, sig, logsig)
            grad[c, o] = g
            loss += part
    for o in range(n_out):  # Out += G^T . In
        out = syn1[word if o == 0 else negs[o - 1]]
        for c in range(nc):
            g = grad[c, o]
            for k in range(dim):
                out[k] += g * inputs[c, k]
    for c in range(nc):  # In += G . Out (the rows as loaded), into the position's sum and pending change
        j = slots[c]
        slot = j % ring
        w = kept[j]
        sq = sub_gain[w] * np.float32(sub_offsets[w + 1] - sub_offsets[w])
        for o in range(n_out):
            g = grad[c, o]
            for k in range(dim):
                pending[slot, k] += g * old[o, k]
                sums[slot, k] += sq * g * old[o, k]
    return loss, nc


@njit(nogil=True, fastmath=FASTMATH, cache=True)
def train_job_batched(
    syn0, syn1, sub_offsets, sub_rows, sub_gain, ids, starts, first_sentence, last_sentence, sample_ints, use_sample,
    packed_alias, sg, window, negative, alpha_start, alpha_end, total_tokens, tokens_before, seed, epoch, job, sig,
    logsig, touched0=None, touched1=None,
):
    """:func:`sparsembed.subword.kernels.train_job`'s arguments, marks and result, with each position composed
    once and updated once (module docstring); ``pairs`` counts targets for CBOW and (context, target) pairs for
    skip-gram."""
    marks0, marks1 = marks_or_none(touched0), marks_or_none(touched1)
    dim = syn0.shape[1]
    track = marks0.shape[0] > 0
    kept = np.empty(longest_sentence(starts, first_sentence, last_sentence), dtype=np.int32)
    ring = 2 * window + 2
    sums = np.zeros((ring, dim), dtype=np.float32)
    pending = np.zeros((ring, dim), dtype=np.float32)
    hidden = np.empty(dim, dtype=np.float32)
    work = np.empty(dim, dtype=np.float32)
    inputs = np.empty((2 * window, dim), dtype=np.float32)
    slots = np.empty(2 * window, dtype=np.int64)
    grad = np.empty((2 * window, negative + 1), dtype=np.float32)
    old = np.empty((negative + 1, dim), dtype=np.float32)
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
        entered = 0  # positions [0, entered) are composed; [0, released) have given back their changes
        released = 0
        for i in range(n):
            state, bits = next_bits(state)
            reduced = int((bits >> np.uint64(32)) % np.uint64(window))
            lo = max(0, i - window + reduced)
            hi = min(n, i + window + 1 - reduced)
            while released < i - window:  # no later target's window reaches it
                slot = released % ring
                add_to_rows_of(syn0, sub_offsets, sub_rows, kept[released], pending[slot])
                released += 1
            while entered < hi:
                slot = entered % ring
                sums[slot, :] = 0.0
                add_rows_of(syn0, sub_offsets, sub_rows, kept[entered], sums[slot])
                pending[slot, :] = 0.0
                entered += 1
                if entered + PREFETCH_AHEAD < n:
                    prefetch_rows_of(syn0, sub_offsets, sub_rows, kept[entered + PREFETCH_AHEAD])
            if i + 1 < n:
                prefetch_row(syn1, kept[i + 1])
            if hi - lo - 1 <= 0:  # no context: nothing to train, nothing drawn (as in the exact kernel)
                continue
            state = draw_negatives(syn1, packed_alias, negs[(example + 1) & 1], state, marks1)
            if sg:
                part, count = _skipgram_target(syn1, sums, pending, kept, sub_offsets, sub_gain, i, lo, hi,
                                               negs[example & 1], alpha, inputs, slots, grad, old, sig, logsig)
            else:
                part, count = _cbow_target(syn1, sums, pending, kept, sub_offsets, sub_gain, i, lo, hi,
                                           negs[example & 1], alpha, hidden, work, sig, logsig)
            loss += part
            example += 1
            pairs += count
        while released < n:
            slot = released % ring
            add_to_rows_of(syn0, sub_offsets, sub_rows, kept[released], pending[slot])
            released += 1
    return loss, pairs, trained
