"""Compiled word2vec hot loops: CBOW and skip-gram with negative sampling.

One call trains one *job* (a run of consecutive sentences) and releases the GIL, so ``workers`` Python
threads train side by side on shared matrices (Hogwild, as word2vec and gensim do). Everything random in a
job comes from a generator seeded by (seed, epoch, job index), so a single-thread run is reproducible bit for
bit and a resumed run replays exactly the jobs it had left.

The arithmetic follows gensim 4's ``word2vec_inner.pyx`` so that quality matches at equal settings:
sigmoid and log-sigmoid from 1000-entry tables over [-6, 6], a pair whose score leaves that range is
skipped, subsampling keeps word ``w`` when ``sample_int[w] >= random_uint32``, windows shrink by a uniform
``b in [0, window)``, CBOW averages its context (gensim's ``cbow_mean=1``) and gives the full error to every
context row. Negative words come from a Walker alias table in O(1) instead of gensim's binary search.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

MAX_EXP = 6.0
#: Touched-row arrays that track nothing (a single process needs no record of the rows it changed); a job function
#: called without marks uses an empty array of its own (:func:`marks_or_none`).
NOT_TRACKED = np.zeros(0, dtype=np.uint8)
TABLE_SIZE = 1000
_TABLE_SCALE = TABLE_SIZE / MAX_EXP / 2.0


def _tables() -> tuple[np.ndarray, np.ndarray]:
    x = (np.arange(TABLE_SIZE, dtype=np.float64) / TABLE_SIZE * 2.0 - 1.0) * MAX_EXP
    sig = 1.0 / (1.0 + np.exp(-x))
    return sig.astype(np.float32), np.log(sig).astype(np.float32)


SIGMOID_TABLE, LOG_SIGMOID_TABLE = _tables()


def pack_alias(threshold: np.ndarray, alias: np.ndarray) -> np.ndarray:
    """Pack an alias table into one uint64 per row (threshold << 32 | alias): one memory access per draw."""
    return (threshold.astype(np.uint64) << np.uint64(32)) | alias.astype(np.uint64)


def unpack_alias(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pack_alias` undone: (threshold, alias), uint64 each."""
    return packed >> np.uint64(32), packed & np.uint64(0xFFFFFFFF)


@njit(inline="always")
def next_bits(state):
    # xorshift64*: 64 good bits per step for a few cycles; the state must never be 0.
    state ^= state >> np.uint64(12)
    state ^= state << np.uint64(25)
    state ^= state >> np.uint64(27)
    return state, state * np.uint64(2685821657736338717)


@njit(inline="always")
def draw_negative(packed, n_rows, bits):
    row = ((bits >> np.uint64(32)) * np.uint64(n_rows)) >> np.uint64(32)
    entry = packed[row]
    if (bits & np.uint64(0xFFFFFFFF)) < (entry >> np.uint64(32)):
        return np.int64(row)
    return np.int64(entry & np.uint64(0xFFFFFFFF))


@njit(inline="always")
def table_index(score):
    return int((score + MAX_EXP) * _TABLE_SCALE)


@intrinsic
def _prefetch(typingctx, matrix, row, col):
    """``llvm.prefetch`` of ``matrix[row, col]``: a hint with no effect on results."""

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        array = context.make_array(array_type)(context, builder, args[0])
        index = [context.cast(builder, args[i], signature.args[i], types.intp) for i in (1, 2)]
        pointer = cgutils.get_item_pointer(context, builder, array_type, array, index, wraparound=False)
        byte_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]), "llvm.prefetch.p0"
        )
        # read access, high temporal locality, data cache
        builder.call(function, [builder.bitcast(pointer, byte_pointer), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(matrix, row, col), codegen


@njit(inline="always")
def prefetch_row(matrix, row):
    for k in range(0, matrix.shape[1], 16):  # one hint per 64-byte line of float32
        _prefetch(matrix, row, k)


@njit(inline="always")
def marks_or_none(marks):
    """A job's touched-row marks, or an empty array (nothing tracked) when the caller gave none.

    The job functions default their marks to None, not to an array: numba keys an omitted argument's type by its
    default value, and an array default keyed each process's compilation apart, so every process that left the
    marks out compiled the job anew (about 2 s) and added one more entry to numba's on-disk cache."""
    if marks is None:
        return np.zeros(0, dtype=np.uint8)
    return marks


@njit(inline="always")
def longest_sentence(starts, first_sentence, last_sentence):
    """Tokens of the longest of sentences ``[first_sentence, last_sentence)`` (at least 1): a job's buffer size."""
    longest = 1
    for s in range(first_sentence, last_sentence):
        longest = max(longest, starts[s + 1] - starts[s])
    return longest


@njit(nogil=True, cache=True)
def job_seed(seed: int, epoch: int, job: int) -> np.uint64:
    """A non-zero generator state from (seed, epoch, job), well mixed (splitmix64)."""
    z = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(epoch) * np.uint64(0xBF58476D1CE4E5B9)
    z += np.uint64(job) * np.uint64(0x94D049BB133111EB) + np.uint64(0x2545F4914F6CDD1D)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z if z != np.uint64(0) else np.uint64(1)


@njit(nogil=True, inline="always")
def subsample(ids, first, last, sample_ints, use_sample, kept, state, touched0, touched1):
    track = touched0.shape[0] > 0
    n = 0
    for t in range(first, last):
        w = ids[t]
        if use_sample:
            state, bits = next_bits(state)
            if sample_ints[w] < (bits >> np.uint64(32)):
                continue
        kept[n] = w
        n += 1
        if track:  # a kept word is a context (input) row and a target (output) row
            touched0[w] = 1
            touched1[w] = 1
    return n, state


@njit(nogil=True, inline="always")
def draw_negatives(syn1, packed, negs, state, touched1):
    """Draw the noise rows of the *next* example and prefetch them, so their cache misses overlap this one."""
    n_rows = syn1.shape[0]
    track = touched1.shape[0] > 0
    for d in range(negs.shape[0]):
        state, bits = next_bits(state)
        row = draw_negative(packed, n_rows, bits)
        negs[d] = row
        prefetch_row(syn1, row)
        if track:
            touched1[row] = 1
    return state


# Re-association lets LLVM vectorise the dot products; no "nnan"/"ninf", so the NaN checks survive.
FASTMATH = {"reassoc", "contract", "arcp", "nsz", "afn"}


@njit(nogil=True, inline="always")
def _next_output(negs, d, target):
    """The position after ``d`` of the next output row to score (noise rows equal to the target are not scored),
    or ``negs.shape[0] + 1`` when none is left; position 0 is the target, ``d >= 1`` is ``negs[d - 1]``."""
    d += 1
    while d <= negs.shape[0] and negs[d - 1] == target:
        d += 1
    return d


@njit(nogil=True, fastmath=FASTMATH, inline="always")
def negative_pass(syn1, hidden, target, work, alpha, negs, sig, logsig, scale=1.0):
    """Score ``scale * hidden`` against the target and the noise rows ``negs``; update them; add into ``work``.

    gensim's order, one row after another: a row's score sees every earlier row's update (a noise word drawn twice
    is scored the second time as the first left it). The pass that updates a row also takes the next row's score,
    so ``hidden`` is read once for both; a row that follows itself is read in that pass after its element was
    written, as the one-row-at-a-time order reads it. ``scale`` multiplies the scores and the rows' updates, not
    ``hidden`` itself: CBOW passes its context's sum and ``1 / count``, and no pass over ``hidden`` makes the mean.
    """
    scale = np.float32(scale)
    dim = hidden.shape[0]
    last = negs.shape[0]
    loss = 0.0
    out = syn1[target]
    score = np.float32(0.0)
    for k in range(dim):
        score += hidden[k] * out[k]
    d = 0
    while d <= last:
        label = np.float32(1.0) if d == 0 else np.float32(0.0)
        following = _next_output(negs, d, target)
        score *= scale
        g = np.float32(0.0)
        if score != score:
            # NaN: the weights have diverged. Report it through the loss; indexing a table with it is undefined.
            loss += np.nan
        elif -MAX_EXP < score < MAX_EXP:
            g = (label - sig[table_index(score)]) * alpha
            signed = score if d == 0 else -score
            if -MAX_EXP < signed < MAX_EXP:
                loss -= logsig[table_index(signed)]
        score = np.float32(0.0)
        if following <= last:
            upcoming = syn1[negs[following - 1]]
            if g != 0.0:
                gh = g * scale
                for k in range(dim):
                    o = out[k]
                    work[k] += g * o
                    out[k] = o + gh * hidden[k]
                    score += hidden[k] * upcoming[k]
            else:
                for k in range(dim):
                    score += hidden[k] * upcoming[k]
            out = upcoming
        elif g != 0.0:
            gh = g * scale
            for k in range(dim):
                o = out[k]
                work[k] += g * o
                out[k] = o + gh * hidden[k]
        d = following
    return loss


@njit(nogil=True, fastmath=FASTMATH, inline="always")
def sum_context(syn0, kept, lo, hi, i, ctx_rows, hidden):
    """``hidden`` = the sum of the rows of ``kept[lo:hi]`` but position ``i``, whose row ids go to ``ctx_rows``;
    three rows a pass, so ``hidden`` is loaded and stored a third as often as with one addition per row."""
    n = 0
    for j in range(lo, hi):
        if j != i:
            ctx_rows[n] = kept[j]
            n += 1
    dim = hidden.shape[0]
    j = 0
    if n >= 3:
        y0, y1, y2 = syn0[ctx_rows[0]], syn0[ctx_rows[1]], syn0[ctx_rows[2]]
        for k in range(dim):
            hidden[k] = y0[k] + y1[k] + y2[k]
        j = 3
    else:
        hidden[:] = 0.0
    while j + 2 < n:
        y0, y1, y2 = syn0[ctx_rows[j]], syn0[ctx_rows[j + 1]], syn0[ctx_rows[j + 2]]
        for k in range(dim):
            hidden[k] += y0[k] + y1[k] + y2[k]
        j += 3
    while j < n:
        y0 = syn0[ctx_rows[j]]
        for k in range(dim):
            hidden[k] += y0[k]
        j += 1


@njit(nogil=True, fastmath=FASTMATH, inline="always")
def add_to_rows(matrix, rows, n, work):
    """``matrix[rows[c]] += work`` for ``c < n``, three rows a pass (``work`` loaded once for the three); a row listed
    twice gets ``work`` twice, as one row at a time would."""
    dim = work.shape[0]
    c = 0
    while c + 2 < n:
        y0, y1, y2 = matrix[rows[c]], matrix[rows[c + 1]], matrix[rows[c + 2]]
        for k in range(dim):
            w = work[k]
            y0[k] += w
            y1[k] += w
            y2[k] += w
        c += 3
    while c < n:
        y0 = matrix[rows[c]]
        for k in range(dim):
            y0[k] += work[k]
        c += 1


@njit(inline="always")
def job_start(syn1, packed_alias, negative, seed, epoch, job, touched1):
    """A job's generator state (:func:`job_seed`) and its noise-row buffers: each example's noise rows are drawn
    one example ahead (see :func:`draw_negatives`) into one of two buffers, which the job swaps; the first is
    drawn here."""
    state = job_seed(seed, epoch, job)
    negs = np.empty((2, negative), dtype=np.int64)
    state = draw_negatives(syn1, packed_alias, negs[0], state, touched1)
    return state, negs


@njit(inline="always")
def sentence_alpha(alpha_start, alpha_end, slope, done):
    """The learning rate of a sentence that starts ``done`` tokens into the run (linear decay, floored)."""
    return np.float32(max(alpha_start - slope * done, alpha_end))


@njit(nogil=True, fastmath=FASTMATH, cache=True)
def train_job(
    syn0, syn1, ids, starts, first_sentence, last_sentence, sample_ints, use_sample, packed_alias,
    sg, window, negative, alpha_start, alpha_end, total_tokens, tokens_before, seed, epoch, job, sig, logsig,
    touched0=None, touched1=None,
):
    """Train sentences ``[first_sentence, last_sentence)`` in place; return (loss, pairs, trained words).

    ``touched0`` / ``touched1`` (uint8, one per row, or empty to skip) get a 1 for every input / output row the
    job may have changed (a superset: a drawn noise row the kernel skipped is marked too), which is what a
    data-parallel step must send.

    The generator state comes from ``(seed, epoch, job)`` alone, so a job trains the same way whenever it runs.

    ``alpha`` falls linearly with the global position: token ``t`` of the job sits at
    ``(tokens_before + t) / total_tokens`` of the whole run (all epochs).
    """
    marks0, marks1 = marks_or_none(touched0), marks_or_none(touched1)
    dim = syn0.shape[1]
    kept = np.empty(longest_sentence(starts, first_sentence, last_sentence), dtype=np.int32)
    hidden = np.empty(dim, dtype=np.float32)
    work = np.empty(dim, dtype=np.float32)
    ctx_rows = np.empty(2 * window, dtype=np.int64)
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
            if sg:
                for j in range(lo, hi):
                    if j == i:
                        continue
                    row = syn0[kept[j]]
                    work[:] = 0.0
                    state = draw_negatives(syn1, packed_alias, negs[(example + 1) & 1], state, marks1)
                    loss += negative_pass(syn1, row, word, work, alpha, negs[example & 1], sig, logsig)
                    example += 1
                    pairs += 1
                    for k in range(dim):
                        row[k] += work[k]
            else:
                count = hi - lo - 1
                if count <= 0:
                    continue
                sum_context(syn0, kept, lo, hi, i, ctx_rows, hidden)
                work[:] = 0.0
                state = draw_negatives(syn1, packed_alias, negs[(example + 1) & 1], state, marks1)
                loss += negative_pass(syn1, hidden, word, work, alpha, negs[example & 1], sig, logsig,
                                      np.float32(1.0) / np.float32(count))
                example += 1
                pairs += 1
                add_to_rows(syn0, ctx_rows, count, work)
    return loss, pairs, trained


#: The generator stream of word rows' initial values (:func:`init_input_matrix`); subword buckets use their own.
INPUT_STREAM = 0x5EED


@njit(nogil=True, cache=True)
def init_input_matrix(n_rows: int, dim: int, seed: int) -> np.ndarray:
    """Rows uniform in [-1/dim, 1/dim) as gensim 4 draws them (word2vec.c uses half that range; gensim's range
    scored +0.3 analogy points on wiki17m CBOW over 3 seeds), each a function of (seed, row) only, so a row
    does not depend on the vocabulary size."""
    out = np.empty((n_rows, dim), dtype=np.float32)
    fill_initial_rows(out, np.arange(n_rows, dtype=np.int64), seed, INPUT_STREAM)
    return out


@njit(nogil=True, cache=True)
def fill_initial_rows(out, keys, seed, stream):
    """``out[i]`` = the initial row of key ``keys[i]``: uniform in [-1/dim, 1/dim) from the generator of
    ``(seed, stream, key)``, so a row depends on its key alone (word rows: :func:`init_input_matrix`; subword
    buckets: their number, in their own stream)."""
    dim = out.shape[1]
    scale = np.float32(1.0 / dim)
    for i in range(keys.shape[0]):
        state = job_seed(seed, stream, keys[i])
        for k in range(dim):
            state, bits = next_bits(state)
            u = np.float32((bits >> np.uint64(40)) * (1.0 / (1 << 24)))
            out[i, k] = (np.float32(2.0) * u - np.float32(1.0)) * scale
