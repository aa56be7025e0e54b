"""Minibatched ("HogBatch") word2vec jobs: one shared set of negatives per window, updated as small matrices.

After Ji et al., "Parallelizing Word2Vec in Shared and Distributed Memory" (IEEE TPDS 2019; Intel's pWord2Vec).

Skip-gram: for one target word, its window's ``c`` context rows of ``syn0`` and ``1 + negative`` output rows of
``syn1`` (the target, then ONE set of noise words drawn for the whole window, a noise word equal to the target
dropped) form two small matrices. All ``c x (1 + negative)`` scores are taken from the rows as they were loaded,
then both sides change at once (pWord2Vec's order: ``syn0`` rows get ``G^T . Out``, ``syn1`` rows ``G . In``, both
from the old values). Every loaded row is reused by every score of the window, and a window draws ``negative`` noise
rows instead of ``c x negative``: far fewer random rows come from memory, which is where the exact kernel waits.
The inner loops are written for LLVM's vectoriser: contiguous float32 rows, three rows per pass over a row being
summed into (one load and store of it per three rows), three dot products per pass over a shared row.

Measured on wiki17m (BENCHMARKS.md, issue 19): skip-gram trains 1.9x as many words per second of a thread as the
exact kernel and scores about 2 analogy points higher. That gain comes from the update order (all scores from the
rows as loaded, then both sides at once), not from sharing the noise words (the exact kernel with one noise set per
window: +0.3 pt) nor from the saturated gradients (this kernel with gensim's skipping: the same 36.1%).

CBOW: ``CBOW_GROUP`` consecutive targets of a sentence share one set of noise words; each target's hidden vector
is its averaged context (gensim's ``cbow_mean=1``) as the rows were when the group started, and the group's
updates land together.

As in pWord2Vec (and word2vec.c), a score outside [-6, 6] gives the saturated gradient (``label - 0`` or
``label - 1``) instead of being skipped as gensim does. Everything else is the exact kernel's
(:mod:`sparsembed.word2vec.kernels`): the (seed, epoch, job) generator, subsampling, window shrinking, the alias
table, the sigmoid tables, per-sentence learning rate, the touched-row marks, the NaN report, and the return value
(loss, pairs, trained words); ``pairs`` counts (context, target) pairs for skip-gram and targets for CBOW, as there.

Functions over 80 lines: a job is one compiled loop whose per-example state (generator, noise buffers, window,
counters) lives in locals; cut into calls, each example would pass a dozen arrays back and forth.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from sparsembed.word2vec.kernels import (
    FASTMATH,
    MAX_EXP,
    draw_negatives,
    job_start,
    longest_sentence,
    marks_or_none,
    next_bits,
    prefetch_row,
    sentence_alpha,
    subsample,
    table_index,
)

__all__ = ["CBOW_GROUP", "saturated_gradient", "train_job_batched"]

#: How many consecutive CBOW targets share one set of noise words.
CBOW_GROUP = 4

#: Row indices 0, 1, 2, ... for _add_rows over a local matrix (at most 1 + negative <= 1001 rows).
_IDENTITY = np.arange(1024, dtype=np.int64)


@njit(nogil=True, inline="always")
def saturated_gradient(score, label, alpha, sig, logsig):
    """(gradient times alpha, loss) of one score: saturated outside (-6, 6), one table index for both.

    ``log sigmoid(-x) = log sigmoid(x) - x``. A NaN score (diverged weights) fails every comparison and lands in
    the last branch, whose loss is NaN: the caller's divergence check sees it, and no table is indexed with it.
    """
    if score > -MAX_EXP and score < MAX_EXP:
        i = table_index(score)
        p = sig[i]
        log_p = logsig[i]
        log_q = log_p - score
    elif score >= MAX_EXP:
        p = np.float32(1.0)
        log_p = np.float32(0.0)
        log_q = -score
    else:
        p = np.float32(0.0)
        log_p = score
        log_q = np.float32(0.0) if score <= -MAX_EXP else score  # NaN stays NaN
    loss = -log_p if label > 0 else -log_q
    return (label - p) * alpha, np.float64(loss)


@njit(nogil=True, fastmath=FASTMATH, inline="always")
def _add_rows(x, matrix, rows, coef, n):
    """``x += sum_j coef[j] * matrix[rows[j]]`` for ``j < n``, three rows a pass: ``x`` is loaded and stored a
    third as often as with one axpy per row (measured 1.6x faster at dim 100)."""
    dim = x.shape[0]
    j = 0
    while j + 2 < n:
        y0 = matrix[rows[j]]
        y1 = matrix[rows[j + 1]]
        y2 = matrix[rows[j + 2]]
        g0, g1, g2 = coef[j], coef[j + 1], coef[j + 2]
        for k in range(dim):
            x[k] += g0 * y0[k] + g1 * y1[k] + g2 * y2[k]
        j += 3
    while j < n:
        y0 = matrix[rows[j]]
        g0 = coef[j]
        for k in range(dim):
            x[k] += g0 * y0[k]
        j += 1


@njit(fastmath=FASTMATH, inline="always")
def _dot3(a, b0, b1, b2):
    """The dot products of ``a`` with three rows in one pass (``a`` loaded once for the three)."""
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    for k in range(a.shape[0]):
        s0 += b0[k] * a[k]
        s1 += b1[k] * a[k]
        s2 += b2[k] * a[k]
    return s0, s1, s2


@njit(fastmath=FASTMATH, inline="always")
def _dot(a, b):
    s = np.float32(0.0)
    for k in range(a.shape[0]):
        s += b[k] * a[k]
    return s


@njit(nogil=True, fastmath=FASTMATH, inline="always")
def _skipgram_window(syn0, syn1, ctx, nc, outs, no, alpha, grad, grad_t, old, sig, logsig):
    """One window: ``nc`` context rows ``ctx`` of syn0 against ``no`` output rows ``outs`` of syn1 (the first is the
    target); both sides updated from the old values. Returns the loss."""
    dim = syn0.shape[1]
    loss = 0.0
    for c in range(nc):  # scores, three output rows a pass (the context row loaded once for both)
        row = syn0[ctx[c]]
        o = 0
        while o + 2 < no:
            s0, s1, s2 = _dot3(row, syn1[outs[o]], syn1[outs[o + 1]], syn1[outs[o + 2]])
            grad[o, c] = s0
            grad[o + 1, c] = s1
            grad[o + 2, c] = s2
            o += 3
        while o < no:
            grad[o, c] = _dot(row, syn1[outs[o]])
            o += 1
    for o in range(no):
        label = np.float32(1.0) if o == 0 else np.float32(0.0)
        for c in range(nc):
            g, part = saturated_gradient(grad[o, c], label, alpha, sig, logsig)
            grad[o, c] = g
            grad_t[c, o] = g
            loss += part
    for o in range(no):  # the output rows as they were (pWord2Vec's outputM)
        out = syn1[outs[o]]
        saved = old[o]
        for k in range(dim):
            saved[k] = out[k]
    for o in range(no):  # Out += G . In (input rows not yet changed)
        _add_rows(syn1[outs[o]], syn0, ctx, grad[o], nc)
    for c in range(nc):  # In += G^T . Out (the saved output rows)
        _add_rows(syn0[ctx[c]], old, _IDENTITY, grad_t[c], no)
    return loss


@njit(nogil=True, fastmath=FASTMATH, inline="always")
def _cbow_group(syn0, syn1, kept, group_first, group_last, lows, highs, negs, negative, alpha, hidden, work, grad,
                outs, coef, rows, sig, logsig):
    """Targets ``kept[group_first:group_last]`` (context ``kept[lows[b]:highs[b]]`` without the target) against
    their own output rows and the shared noise rows ``negs``. Returns (loss, targets trained)."""
    dim = syn0.shape[1]
    loss = 0.0
    targets = 0
    n_targets = group_last - group_first
    for b in range(n_targets):  # hidden vectors from the rows as the group found them
        i = group_first + b
        h = hidden[b]
        for k in range(dim):
            h[k] = 0.0
        count = 0
        for j in range(lows[b], highs[b]):
            if j != i:
                rows[count] = kept[j]
                coef[count] = 1.0
                count += 1
        if count == 0:
            continue
        _add_rows(h, syn0, rows, coef, count)
        inv = np.float32(1.0) / np.float32(count)
        for k in range(dim):
            h[k] *= inv
    outs[1:negative + 1] = negs
    for b in range(n_targets):  # scores and gradients; work = G . Out (old output rows)
        i = group_first + b
        w = work[b]
        for k in range(dim):
            w[k] = 0.0
        if highs[b] - lows[b] - 1 <= 0:
            continue
        targets += 1
        word = kept[i]
        outs[0] = word
        h = hidden[b]
        o = 0
        while o <= negative:  # three output rows a pass (the hidden row loaded once for them)
            if o + 2 <= negative:
                s0, s1, s2 = _dot3(h, syn1[outs[o]], syn1[outs[o + 1]], syn1[outs[o + 2]])
                grad[b, o] = s0
                grad[b, o + 1] = s1
                grad[b, o + 2] = s2
                o += 3
            else:
                grad[b, o] = _dot(h, syn1[outs[o]])
                o += 1
        for d in range(negative + 1):
            if d > 0 and outs[d] == word:
                grad[b, d] = 0.0
                continue
            g, part = saturated_gradient(grad[b, d], np.float32(1.0) if d == 0 else np.float32(0.0), alpha, sig, logsig)
            grad[b, d] = g
            loss += part
        _add_rows(w, syn1, outs, grad[b], negative + 1)
    for b in range(n_targets):  # the targets' own output rows
        if highs[b] - lows[b] - 1 > 0:
            g = grad[b, 0]
            out = syn1[kept[group_first + b]]
            h = hidden[b]
            for k in range(dim):
                out[k] += g * h[k]
    for d in range(negative):  # the shared noise rows: the group's hidden rows in one pass each
        for b in range(n_targets):
            coef[b] = grad[b, d + 1] if highs[b] - lows[b] - 1 > 0 else np.float32(0.0)
        _add_rows(syn1[negs[d]], hidden, _IDENTITY, coef, n_targets)
    # Each context position gets the errors of the group's targets whose window holds it, in one pass.
    span_lo = lows[0]
    span_hi = highs[0]
    for b in range(1, n_targets):
        span_lo = min(span_lo, lows[b])
        span_hi = max(span_hi, highs[b])
    for j in range(span_lo, span_hi):
        count = 0
        for b in range(n_targets):
            if lows[b] <= j < highs[b] and j != group_first + b:
                rows[count] = b
                coef[count] = 1.0
                count += 1
        if count > 0:
            _add_rows(syn0[kept[j]], work, rows, coef, count)
    return loss, targets


@njit(nogil=True, fastmath=FASTMATH, cache=True)
def train_job_batched(
    syn0, syn1, ids, starts, first_sentence, last_sentence, sample_ints, use_sample, packed_alias,
    sg, window, negative, alpha_start, alpha_end, total_tokens, tokens_before, seed, epoch, job, sig, logsig,
    touched0=None, touched1=None,
):
    """:func:`~sparsembed.word2vec.kernels.train_job`'s contract (arguments, marks, determinism, return value) with
    the minibatched updates of this module.

    Generator order: ``job_seed``; the first window's noise words; then per sentence the subsampling draws, and per
    target one window draw; a skip-gram target with at least one context draws the noise words of the *next* such
    target (prefetched) before it trains; a CBOW group draws the next group's noise words, after its targets'
    window draws.
    """
    marks0, marks1 = marks_or_none(touched0), marks_or_none(touched1)
    dim = syn0.shape[1]
    kept = np.empty(longest_sentence(starts, first_sentence, last_sentence), dtype=np.int32)
    span = 2 * window
    ctx = np.empty(span, dtype=np.int64)
    outs = np.empty(negative + 1, dtype=np.int64)
    rows_out = max(negative + 1, CBOW_GROUP)
    grad = np.empty((rows_out, max(span, negative + 1)), dtype=np.float32)
    grad_t = np.empty((span, negative + 1), dtype=np.float32)
    old = np.empty((negative + 1, dim), dtype=np.float32)
    hidden = np.empty((CBOW_GROUP, dim), dtype=np.float32)
    work = np.empty((CBOW_GROUP, dim), dtype=np.float32)
    lows = np.empty(CBOW_GROUP, dtype=np.int64)
    coef = np.empty(max(span, negative + 1, CBOW_GROUP), dtype=np.float32)
    cbow_rows = np.empty(max(span, CBOW_GROUP), dtype=np.int64)
    highs = np.empty(CBOW_GROUP, dtype=np.int64)
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
        if sg:
            for i in range(n):
                state, bits = next_bits(state)
                reduced = int((bits >> np.uint64(32)) % np.uint64(window))
                lo = max(0, i - window + reduced)
                hi = min(n, i + window + 1 - reduced)
                word = kept[i]
                if i + 1 < n:
                    prefetch_row(syn1, kept[i + 1])
                if i + window + 1 < n:
                    prefetch_row(syn0, kept[i + window + 1])
                nc = 0
                for j in range(lo, hi):
                    if j != i:
                        ctx[nc] = kept[j]
                        nc += 1
                if nc == 0:
                    continue
                current = negs[example & 1]
                state = draw_negatives(syn1, packed_alias, negs[(example + 1) & 1], state, marks1)
                example += 1
                outs[0] = word
                no = 1
                for d in range(negative):
                    if current[d] != word:
                        outs[no] = current[d]
                        no += 1
                loss += _skipgram_window(syn0, syn1, ctx, nc, outs, no, alpha, grad, grad_t, old, sig, logsig)
                pairs += nc
        else:
            for group_first in range(0, n, CBOW_GROUP):
                group_last = min(n, group_first + CBOW_GROUP)
                for b in range(group_last - group_first):
                    i = group_first + b
                    state, bits = next_bits(state)
                    reduced = int((bits >> np.uint64(32)) % np.uint64(window))
                    lows[b] = max(0, i - window + reduced)
                    highs[b] = min(n, i + window + 1 - reduced)
                for ahead in range(group_last, min(n, group_last + CBOW_GROUP)):  # the next group's rows
                    prefetch_row(syn1, kept[ahead])
                    if ahead + window < n:
                        prefetch_row(syn0, kept[ahead + window])
                current = negs[example & 1]
                state = draw_negatives(syn1, packed_alias, negs[(example + 1) & 1], state, marks1)
                example += 1
                part, targets = _cbow_group(syn0, syn1, kept, group_first, group_last, lows, highs, current,
                                            negative, alpha, hidden, work, grad, outs, coef, cbow_rows, sig, logsig)
                loss += part
                pairs += targets
    return loss, pairs, trained

