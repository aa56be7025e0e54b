"""A plain, sequential reference of :mod:`sparsembed.gpu.kernels` (numba on the CPU), token after token.

The GPU kernels under Triton's interpreter run their programs one after another, so they must equal this to float
tolerance; and because it is compiled, it trains whole corpora, so the kernels' *semantics* (not the GPU's races)
can be checked for quality against the CPU kernels on a real corpus.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from sparsembed.gpu.engine import DeviceTrainer, run_key

MAX_EXP = np.float32(6.0)
U32 = np.uint64(0xFFFFFFFF)


@njit(inline="always")
def mix32(x):
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & U32
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & U32
    return x ^ (x >> np.uint64(16))


@njit(inline="always")
def draw(key, position, k):
    return mix32((mix32(np.uint64(key) ^ np.uint64(position)) + np.uint64(k) * np.uint64(0x9E3779B9)) & U32)


@njit(inline="always")
def softplus(x):
    return max(x, np.float32(0.0)) + np.float32(np.log1p(np.exp(-abs(x))))


@njit(cache=True)
def train_reference(syn0, syn1, tokens, positions, lows, highs, key, window, negative, alias_threshold, alias_row,
                    alpha_start, alpha_end, slope, done_before, first_position, sg):
    dim = syn0.shape[1]
    n_rows = syn1.shape[0]
    loss = 0.0
    pairs = 0
    outs = np.empty(negative + 1, np.int64)
    valid = np.empty(negative + 1, np.bool_)
    ctx = np.empty(2 * window + 1, np.int64)
    for i in range(tokens.shape[0]):
        word = np.int64(tokens[i])
        position = np.uint64(positions[i]) & U32
        reduced = int(draw(key, position, 0) % np.uint64(window))
        lo = max(lows[i], i - window + reduced)
        hi = min(highs[i], i + window + 1 - reduced)
        count = 0
        for j in range(lo, hi):
            if j != i:
                ctx[count] = tokens[j]
                count += 1
        if count == 0:
            continue
        offset = np.float32(np.int64(position) - np.int64(np.uint64(first_position) & U32))
        alpha = max(np.float32(alpha_start) - np.float32(slope) * (np.float32(done_before) + offset),
                    np.float32(alpha_end))
        for j in range(negative + 1):
            if j == 0:
                outs[j] = word
                valid[j] = True
                continue
            bucket = np.int64((draw(key, position, 2 * j + 1) * np.uint64(n_rows)) >> np.uint64(32))
            coin = np.int64(draw(key, position, 2 * j + 2))
            noise = bucket if coin < alias_threshold[bucket] else np.int64(alias_row[bucket])
            outs[j] = noise
            valid[j] = noise != word
        rows = syn0[ctx[:count]].copy()
        out = syn1[outs].copy()
        if sg:
            score = rows @ out.T
            g = np.zeros((count, negative + 1), np.float32)
            for c in range(count):
                for j in range(negative + 1):
                    if not valid[j]:
                        continue
                    s = score[c, j]
                    p = np.float32(1.0) if s >= MAX_EXP else (np.float32(0.0) if s <= -MAX_EXP
                                                                else np.float32(1.0 / (1.0 + np.exp(-s))))
                    label = np.float32(1.0) if j == 0 else np.float32(0.0)
                    g[c, j] = (label - p) * alpha
                    loss += softplus(-s if j == 0 else s)
            pairs += count
            grad_in = g @ out
            grad_out = g.T @ rows
            for j in range(negative + 1):
                if valid[j]:
                    syn1[outs[j]] = out[j] + grad_out[j]
            for c in range(count):
                syn0[ctx[c]] = rows[c] + grad_in[c]
        else:
            hidden = rows.sum(axis=0) / np.float32(count)
            work = np.zeros(dim, np.float32)
            new_out = out.copy()
            live = np.zeros(negative + 1, np.bool_)
            for j in range(negative + 1):
                if not valid[j]:
                    continue
                s = np.float32(np.dot(out[j], hidden))
                if s != s:
                    loss += np.nan
                if not (-MAX_EXP < s < MAX_EXP):
                    continue
                live[j] = True
                label = np.float32(1.0) if j == 0 else np.float32(0.0)
                gj = (label - np.float32(1.0 / (1.0 + np.exp(-s)))) * alpha
                loss += softplus(-s if j == 0 else s)
                work += gj * out[j]
                new_out[j] = out[j] + gj * hidden
            pairs += 1
            for j in range(negative + 1):
                if live[j]:
                    syn1[outs[j]] = new_out[j]
            for c in range(count):
                syn0[ctx[c]] = rows[c] + work
    return loss, pairs


def reference_job(trainer: DeviceTrainer, syn0: np.ndarray, syn1: np.ndarray, sg: int, window: int, negative: int,
                  alpha: float, min_alpha: float, total_tokens: int, tokens_before: int, seed: int, epoch: int,
                  first_token: int, last_token: int) -> tuple[float, int, int]:
    """:meth:`DeviceTrainer.train_job` on host arrays ``syn0`` / ``syn1`` (the trainer only prepares the job)."""
    key = run_key(seed, epoch)
    job = trainer.prepare(key, first_token, last_token)
    loss, pairs = train_reference(
        syn0, syn1, *(t.cpu().numpy() for t in (job.tokens, job.positions, job.lows, job.highs)), key, window,
        negative, trainer.alias_threshold.cpu().numpy(), trainer.alias_row.cpu().numpy(), alpha, min_alpha,
        (alpha - min_alpha) / max(total_tokens, 1), float(tokens_before), first_token, sg)
    return loss, pairs, job.n
