"""The compiled kernels against a slow, plain-Python transcription of the same algorithm."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from sparsembed.word2vec import kernels

MASK = (1 << 64) - 1


def _next(state: int) -> tuple[int, int]:
    state ^= state >> 12
    state = (state ^ (state << 25)) & MASK
    state ^= state >> 27
    return state, (state * 2685821657736338717) & MASK


def _sigmoid_index(score: float) -> int:
    return int((score + kernels.MAX_EXP) * (kernels.TABLE_SIZE / kernels.MAX_EXP / 2.0))


def reference_job(syn0, syn1, ids, starts, sample_ints, threshold, alias, sg, window, negative,
                  alpha_start, alpha_end, total, before, seed, epoch, job):
    """word2vec with negative sampling, one sentence at a time, exactly as kernels.train_job is specified."""
    sig, logsig = kernels.SIGMOID_TABLE, kernels.LOG_SIGMOID_TABLE
    state = int(kernels.job_seed(seed, epoch, job))
    n_rows = syn0.shape[0]
    loss, pairs, trained, done = 0.0, 0, 0, before
    slope = (alpha_start - alpha_end) / max(total, 1)

    def draw_negatives():
        nonlocal state
        rows = []
        for _ in range(negative):
            state, bits = _next(state)
            row = ((bits >> 32) * n_rows) >> 32
            rows.append(row if (bits & 0xFFFFFFFF) < threshold[row] else alias[row])
        return rows

    upcoming = draw_negatives()  # each example's noise rows are drawn one example ahead

    def negative_pass(hidden, target):
        nonlocal loss, upcoming
        negatives, upcoming = upcoming, draw_negatives()
        work = np.zeros_like(hidden)
        for d in range(negative + 1):
            if d == 0:
                row, label = target, 1.0
            else:
                row, label = negatives[d - 1], 0.0
                if row == target:
                    continue
            score = float(np.dot(hidden, syn1[row]))
            if score <= -6 or score >= 6:
                continue
            g = np.float32((label - sig[_sigmoid_index(score)]) * alpha)
            signed = score if d == 0 else -score
            if -6 < signed < 6:
                loss -= float(logsig[_sigmoid_index(signed)])
            work += g * syn1[row]
            syn1[row] += g * hidden
        return work

    for s in range(len(starts) - 1):
        first, last = starts[s], starts[s + 1]
        alpha = np.float32(max(alpha_start - slope * done, alpha_end))
        done += last - first
        kept = []
        for t in range(first, last):
            state, bits = _next(state)
            if sample_ints[ids[t]] >= (bits >> 32):
                kept.append(ids[t])
        trained += len(kept)
        for i, word in enumerate(kept):
            state, bits = _next(state)
            reduced = (bits >> 32) % window
            lo, hi = max(0, i - window + reduced), min(len(kept), i + window + 1 - reduced)
            context = [kept[j] for j in range(lo, hi) if j != i]
            if sg:
                for c in context:
                    syn0[c] += negative_pass(syn0[c].copy(), word)
                    pairs += 1
            elif context:
                hidden = (syn0[context].sum(axis=0) / np.float32(len(context))).astype(np.float32)
                work = negative_pass(hidden, word)
                pairs += 1
                for c in context:
                    syn0[c] += work
    return loss, pairs, trained


def _tiny_problem(seed: int, n_rows: int = 12, dim: int = 8):
    rng = np.random.default_rng(seed)
    counts = np.sort(rng.integers(1, 50, n_rows))[::-1]
    ids = rng.choice(n_rows, size=120, p=counts / counts.sum()).astype(np.int32)
    starts = np.array([0, 37, 80, 120], dtype=np.int64)
    sample_ints = rng.integers(2**30, 2**32, n_rows).astype(np.uint64)
    threshold = rng.integers(0, 2**32, n_rows).astype(np.uint64)
    alias = rng.integers(0, n_rows, n_rows).astype(np.int64)
    syn0 = kernels.init_input_matrix(n_rows, dim, seed)
    syn1 = (rng.standard_normal((n_rows, dim)) * 0.3).astype(np.float32)
    return ids, starts, sample_ints, threshold, alias, syn0, syn1


@pytest.mark.parametrize("sg", [0, 1])
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("n_rows", [12, 400], ids=["words repeat in most windows", "most windows distinct"])
def test_train_job_equals_reference(sg: int, seed: int, n_rows: int) -> None:
    # 12 words: most windows hold a word twice, so rows change twice in one update and noise words repeat;
    # 400 words: most windows are distinct, as in a real vocabulary.
    ids, starts, sample_ints, threshold, alias, syn0, syn1 = _tiny_problem(seed, n_rows=n_rows)
    args = (sg, 3, 4, 0.5, 0.01, 1000, 100, seed, 2, 7)
    ref0, ref1 = syn0.copy(), syn1.copy()
    expected = reference_job(ref0, ref1, ids, starts, sample_ints, threshold, alias, *args)
    got = kernels.train_job(syn0, syn1, ids, starts, 0, len(starts) - 1, sample_ints, True,
                            kernels.pack_alias(threshold, alias), *args,
                            kernels.SIGMOID_TABLE, kernels.LOG_SIGMOID_TABLE)
    assert got[1:] == expected[1:]
    assert got[0] == pytest.approx(expected[0], rel=1e-4)
    np.testing.assert_allclose(syn0, ref0, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(syn1, ref1, rtol=1e-4, atol=1e-6)


def test_nan_weights_surface_as_nan_loss() -> None:
    ids, starts, sample_ints, threshold, alias, syn0, syn1 = _tiny_problem(4)
    syn1[:] = np.nan
    loss, _, _ = kernels.train_job(syn0, syn1, ids, starts, 0, 3, sample_ints, False,
                                   kernels.pack_alias(threshold, alias), 0, 3, 4, 0.025, 0.0001, 100, 0, 1, 0, 0,
                                   kernels.SIGMOID_TABLE, kernels.LOG_SIGMOID_TABLE)
    assert np.isnan(loss)


@njit
def _draw_many(packed: np.ndarray, n: int, seed: int) -> np.ndarray:
    state = kernels.job_seed(seed, 0, 0)
    out = np.zeros(packed.shape[0], dtype=np.int64)
    for _ in range(n):
        state, bits = kernels.next_bits(state)
        out[kernels.draw_negative(packed, packed.shape[0], bits)] += 1
    return out


def test_alias_draws_follow_the_table() -> None:
    # A hand-made alias table for p = (0.5, 0.3, 0.2): row 0 keeps 1.0, row 1 keeps 0.9 (else 0), row 2 keeps 0.6.
    threshold = np.round(np.array([1.0, 0.9, 0.6]) * 2**32).clip(max=2**32 - 1).astype(np.uint64)
    alias = np.array([0, 0, 0])
    counts = _draw_many(kernels.pack_alias(threshold, alias), 300_000, 5)
    # Binomial sd of a share over 300k draws is < 0.001; 0.005 leaves a wide margin.
    np.testing.assert_allclose(counts / counts.sum(), [0.5, 0.3, 0.2], atol=0.005)


def test_job_seed_is_deterministic_and_distinct() -> None:
    seeds = {int(kernels.job_seed(1, e, j)) for e in range(5) for j in range(200)}
    assert len(seeds) == 1000 and 0 not in seeds
    assert kernels.job_seed(7, 1, 2) == kernels.job_seed(7, 1, 2)


def test_init_rows_depend_on_seed_and_row_only() -> None:
    small, large = kernels.init_input_matrix(5, 16, 3), kernels.init_input_matrix(50, 16, 3)
    np.testing.assert_array_equal(small, large[:5])
    assert np.abs(large).max() < 1 / 16 + 1e-9 and np.abs(large).max() > 0.9 / 16
    assert not np.array_equal(large, kernels.init_input_matrix(50, 16, 4))
    # Uniform on [-1/dim, 1/dim): the mean of 800 values has sd ~0.0013.
    assert abs(large.mean()) < 0.008


def test_unpack_alias_undoes_pack_alias() -> None:
    threshold = np.array([0, 1, 2**32 - 1, 12345], dtype=np.uint64)
    alias = np.array([3, 0, 2, 1], dtype=np.int32)
    got_threshold, got_alias = kernels.unpack_alias(kernels.pack_alias(threshold, alias))
    np.testing.assert_array_equal(got_threshold, threshold)
    np.testing.assert_array_equal(got_alias, alias.astype(np.uint64))
