"""Triton kernels of word2vec on a GPU: CBOW (gensim's updates) and skip-gram (pWord2Vec's minibatched updates).

Why Triton: a word2vec step is a gather of a few 100-float rows, a handful of dot products and a scatter back; a
Triton program holds a window's rows as one ``[rows, dim]`` tile, so the gather, the products (``tl.dot`` for
skip-gram's window-by-targets matrices) and the stores are a few block operations, and the same source runs on the
CPU through Triton's interpreter (``TRITON_INTERPRET=1``), which is how CI checks these kernels against a plain
reference without a GPU. numba-cuda would need thread-level code for the same tiles; CUDA C++ a compiler on every
user's machine.

The work of a launch is a job's subsampled tokens (:mod:`sparsembed.gpu.engine` prepares them with torch ops): each
program trains ``chunk`` consecutive kept tokens one after another, so a token sees the rows its neighbours just
changed, as on the CPU; programs run side by side without locks (Hogwild, as BlazingText and word2vec's threads do).
Races between programs make GPU runs nondeterministic; one program at a time (the interpreter, or ``chunk`` as
large as the job) is deterministic.

Everything random is a hash of (run key, token position, draw number) (:func:`mix32`), not a generator's state, so
any program can draw any token's window and noise words without the others, and a job trains the same wherever
its tokens land in the grid. Noise words come from the same Walker alias table as on the CPU.

Semantics per kept token at position ``i`` of its sentence (``lo``/``hi``: the sentence's kept tokens):
window ``b = draw0 % window``, context ``[max(lo, i-window+b), min(hi, i+window+1-b))`` without ``i``; noise words
``draw(1..negative)`` through the alias table, one noise word equal to the target dropped.
* CBOW: hidden = mean of the context rows; scores of hidden against the target and noise rows; a score outside
  (-6, 6) is skipped (gensim); each output row += g * hidden, each context row += sum_j g_j * out_j.
* skip-gram: context rows C and output rows O (target and noise) as matrices: F = C O^T, G = (label - sigmoid(F))
  * alpha (saturated outside (-6, 6), pWord2Vec's rule), then C += G O and O += G^T C, both from the loaded rows.
A word twice in one window is one row: both positions store the same new value, so it gets one update, not two
(the CPU kernels give two); this keeps one program's result independent of store order.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["HASH_STREAM_SUBSAMPLE", "MAX_EXP", "cbow_kernel", "mix32", "skipgram_kernel"]

#: Scores outside (-MAX_EXP, MAX_EXP) are skipped (CBOW) or saturated (skip-gram), as on the CPU.
MAX_EXP = 6.0
_MAX_EXP = tl.constexpr(MAX_EXP)
#: The draw number of a token's subsampling coin (its window and noise words use 0..negative).
HASH_STREAM_SUBSAMPLE = 0xFFFF


@triton.jit
def mix32(x):
    """A 32-bit avalanche hash (Wellons' lowbias32) of a uint32 tensor."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    x = x ^ (x >> 16)
    return x


@triton.jit
def _draw(key, position, k):
    """The ``k``-th uint32 draw of the token at ``position`` (uint32 tensors in, one hash per draw)."""
    return mix32(mix32(key ^ position) + k * 0x9E3779B9)


@triton.jit
def _softplus(x):
    """``log(1 + exp(x))`` = ``-log sigmoid(-x)``, without overflow for large ``x``."""
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _noise_rows(key, position, word, n_rows, alias_threshold, alias_row, NEG: tl.constexpr, BN: tl.constexpr):
    """Output rows of one example: ``[word, noise_1..noise_NEG, padding]`` and which of them count (a noise word
    equal to ``word`` does not)."""
    j = tl.arange(0, BN)
    ju = j.to(tl.uint32)
    bucket_bits = _draw(key, position, 2 * ju + 1)
    coin = _draw(key, position, 2 * ju + 2)
    bucket = ((bucket_bits.to(tl.uint64) * n_rows) >> 32).to(tl.int64)
    is_noise = (j >= 1) & (j <= NEG)
    threshold = tl.load(alias_threshold + bucket, mask=is_noise, other=0)
    other = tl.load(alias_row + bucket, mask=is_noise, other=0)
    noise = tl.where(coin.to(tl.int64) < threshold, bucket, other.to(tl.int64))
    rows = tl.where(j == 0, word, noise)
    valid = (j == 0) | (is_noise & (noise != word))
    return rows, valid


@triton.jit
def _window(tokens, positions, lows, highs, i, key, window, BW: tl.constexpr):
    """Token ``i``'s word, position, and its context: slots ``lo + arange(BW)`` and which are context."""
    word = tl.load(tokens + i).to(tl.int64)
    position = tl.load(positions + i).to(tl.uint32)
    first = tl.load(lows + i)
    last = tl.load(highs + i)
    reduced = (_draw(key, position, 0) % window.to(tl.uint32)).to(tl.int32)
    lo = tl.maximum(first, i - window + reduced)
    hi = tl.minimum(last, i + window + 1 - reduced)
    slots = lo + tl.arange(0, BW)
    is_context = (slots < hi) & (slots != i)
    return word, position, slots, is_context


@triton.jit
def _load_rows(matrix, ids, present, DIM: tl.constexpr, BD: tl.constexpr):
    """Rows ``ids`` of ``matrix`` (those ``present``) as a ``[len(ids), BD]`` tile: their pointers, mask and values
    (0 where absent)."""
    d = tl.arange(0, BD)
    ptrs = matrix + ids[:, None] * DIM + d[None, :]
    mask = present[:, None] & (d < DIM)[None, :]
    return ptrs, mask, tl.load(ptrs, mask=mask, other=0.0)


# Integer arguments equal to 1 would otherwise become compile-time constants (Triton's specialisation), and
# ``window`` is used as a tensor.
@triton.jit(do_not_specialize=["window"])
def cbow_kernel(syn0, syn1, tokens, positions, lows, highs, n_tokens, chunk, key, window, n_rows,
                alias_threshold, alias_row, alpha_start, alpha_end, slope, done_before, first_position,
                loss_out, pairs_out,
                DIM: tl.constexpr, NEG: tl.constexpr, BD: tl.constexpr, BW: tl.constexpr, BN: tl.constexpr):
    """Train kept tokens ``[pid * chunk, (pid + 1) * chunk)`` with CBOW; write this program's loss and targets."""
    pid = tl.program_id(0)
    loss = tl.zeros((BN,), tl.float32)
    pairs = pid * 0
    start = pid * chunk
    stop = tl.minimum(start + chunk, n_tokens)
    for i in range(start, stop):
        word, position, slots, is_context = _window(tokens, positions, lows, highs, i, key, window, BW)
        count = tl.sum(is_context.to(tl.int32), 0)
        if count > 0:
            alpha = tl.maximum(alpha_start - slope * (done_before + (position - first_position).to(tl.float32)),
                               alpha_end)
            context = tl.load(tokens + slots, mask=is_context, other=0).to(tl.int64)
            in_ptrs, in_mask, rows = _load_rows(syn0, context, is_context, DIM, BD)
            hidden = tl.sum(rows, 0) / count.to(tl.float32)
            outs, valid = _noise_rows(key, position, word, n_rows, alias_threshold, alias_row, NEG, BN)
            out_ptrs, out_mask, out = _load_rows(syn1, outs, valid, DIM, BD)
            score = tl.sum(out * hidden[None, :], 1)
            label = (tl.arange(0, BN) == 0).to(tl.float32)
            live = valid & (score > -_MAX_EXP) & (score < _MAX_EXP)
            p = tl.sigmoid(score)
            g = tl.where(live, (label - p) * alpha, 0.0)
            signed = tl.where(label > 0, score, -score)
            part = tl.where(live, _softplus(-signed), 0.0)
            # a NaN score (diverged rows) skips its update but must reach the loss: the caller checks it
            loss += tl.where(valid & (score != score), score, part)
            pairs += 1
            work = tl.sum(g[:, None] * out, 0)
            tl.store(out_ptrs, out + g[:, None] * hidden[None, :], mask=out_mask & live[:, None])
            tl.store(in_ptrs, rows + work[None, :], mask=in_mask)
    tl.store(loss_out + pid, tl.sum(loss, 0))
    tl.store(pairs_out + pid, pairs)


@triton.jit(do_not_specialize=["window"])
def skipgram_kernel(syn0, syn1, tokens, positions, lows, highs, n_tokens, chunk, key, window, n_rows,
                    alias_threshold, alias_row, alpha_start, alpha_end, slope, done_before, first_position,
                    loss_out, pairs_out,
                    DIM: tl.constexpr, NEG: tl.constexpr, BD: tl.constexpr, BW: tl.constexpr, BN: tl.constexpr):
    """Train kept tokens ``[pid * chunk, (pid + 1) * chunk)`` with minibatched skip-gram; write this program's loss
    and (context, target) pairs."""
    pid = tl.program_id(0)
    loss = tl.zeros((BW, BN), tl.float32)
    pairs = pid * 0
    start = pid * chunk
    stop = tl.minimum(start + chunk, n_tokens)
    for i in range(start, stop):
        word, position, slots, is_context = _window(tokens, positions, lows, highs, i, key, window, BW)
        count = tl.sum(is_context.to(tl.int32), 0)
        if count > 0:
            alpha = tl.maximum(alpha_start - slope * (done_before + (position - first_position).to(tl.float32)),
                               alpha_end)
            context = tl.load(tokens + slots, mask=is_context, other=0).to(tl.int64)
            in_ptrs, in_mask, rows = _load_rows(syn0, context, is_context, DIM, BD)
            outs, valid = _noise_rows(key, position, word, n_rows, alias_threshold, alias_row, NEG, BN)
            out_ptrs, out_mask, out = _load_rows(syn1, outs, valid, DIM, BD)
            score = tl.dot(rows, tl.trans(out), input_precision="ieee")
            label = (tl.arange(0, BN) == 0).to(tl.float32)[None, :]
            live = is_context[:, None] & valid[None, :]
            p = tl.where(score >= _MAX_EXP, 1.0, tl.where(score <= -_MAX_EXP, 0.0, tl.sigmoid(score)))
            g = tl.where(live, (label - p) * alpha, 0.0)
            signed = tl.where(label > 0, score, -score)
            loss += tl.where(live, _softplus(-signed), 0.0)
            pairs += count
            grad_in = tl.dot(g, out, input_precision="ieee")
            grad_out = tl.dot(tl.trans(g), rows, input_precision="ieee")
            tl.store(out_ptrs, out + grad_out, mask=out_mask)
            tl.store(in_ptrs, rows + grad_in, mask=in_mask)
    tl.store(loss_out + pid, tl.sum(tl.sum(loss, 1), 0))
    tl.store(pairs_out + pid, pairs)
