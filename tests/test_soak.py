"""Soak: 200 consecutive gradient exchanges on 2 gloo ranks, each checked against a dense all_reduce.

Every step draws, from ``(SEED, step)``, a strategy (replicated forced sparse, replicated auto, sharded), a row-set
encoding, a compressor, and per rank a density of distinct rows from 0 to 100% plus random duplicate ids. Some
steps are forced: one rank empty, both empty, one or both ranks touching every row (auto then goes dense). Each rank
computes the reference with a real ``dist.all_reduce`` of its densified gradient in the same process group, so the
exchange's collectives interleave with other traffic as they do in a trainer. Sharded steps keep a weight matrix
whose owned rows must track the reference weight over all 200 steps (no drift). A failure names the step, the seed,
the strategy and both ranks' densities.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch

from dist_utils import DistPool
from sparsembed.comm.replicated import replicated
from sparsembed.comm.sharded import even_boundaries, sharded
from sparsembed.rows.coalesce import RowSparse

pytestmark = [pytest.mark.dist, pytest.mark.timeout(180)]

WORLD = 2
ROWS, DIM = 3000, 16
STEPS = 200
SEED = 20240611
STRATEGIES = ("replicated-sparse", "replicated-auto", "sharded")
ROW_ENCODINGS = ("auto", "index", "bitmap", "roaring", "complement")
COMPRESSORS = (None, None, "zstd", "lz4")
ATOL, RTOL = 1e-5, 1e-5  # fp32 sums of at most two ranks' rows: only the order of additions differs


@pytest.fixture(scope="module")
def pool():
    with DistPool(WORLD, timeout=150.0, collective_timeout=30.0) as p:
        yield p


def _plan(seed: int, step: int) -> dict:
    """What step ``step`` does: identical on every rank (drawn from ``(seed, step)`` only)."""
    rng = np.random.default_rng([seed, step, 0])
    densities = []
    for _ in range(WORLD):
        u = rng.random()
        if u < 0.12:
            densities.append(0.0)
        elif u < 0.22:
            densities.append(1.0)
        else:
            densities.append(float(10 ** rng.uniform(-3.5, 0)))  # log-uniform: 1 row .. every row
    forced = step % 10
    if forced == 1:
        densities[step % WORLD] = 0.0  # one rank empty, the other not
        densities[(step + 1) % WORLD] = max(densities[(step + 1) % WORLD], 0.01)
    elif forced == 4:
        densities = [1.0] * WORLD  # every row everywhere: replicated auto must go dense
    elif forced == 6:
        densities[step % WORLD] = 1.0  # one rank dense, the other sparse or empty
    elif step % 50 == 9:
        densities = [0.0] * WORLD  # nobody touched anything
    return {
        "strategy": STRATEGIES[step % len(STRATEGIES)],
        "rows": ROW_ENCODINGS[int(rng.integers(len(ROW_ENCODINGS)))],
        "compress": COMPRESSORS[int(rng.integers(len(COMPRESSORS)))],
        "densities": densities,
        "dup": float(rng.choice([0.0, 0.3, 1.0, 3.0])),  # duplicate ids per distinct row (on average)
        "pull": ["grad", "few", "all"][int(rng.integers(3))],
    }


def _grad(seed: int, step: int, rank: int, density: float, dup: float) -> RowSparse:
    """``density * ROWS`` distinct rows plus about ``dup`` duplicates per row, shuffled, standard normal values."""
    rng = np.random.default_rng([seed, step, rank + 1])
    k = int(round(density * ROWS))
    distinct = rng.choice(ROWS, k, replace=False)
    extra = rng.choice(distinct, int(rng.poisson(dup * k)) if k else 0)
    ids = rng.permutation(np.concatenate([distinct, extra]).astype(np.int64))
    vals = rng.standard_normal((ids.shape[0], DIM), dtype=np.float32)
    return RowSparse(torch.from_numpy(ids), torch.from_numpy(vals), ROWS)


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def _rss_mb() -> float:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss / 2**20


def _case_soak(seed: int, steps: int) -> dict:
    dist = torch.distributed
    rank = dist.get_rank()
    b = even_boundaries(ROWS, WORLD)
    lo, hi = int(b[rank]), int(b[rank + 1])
    weight = torch.zeros(ROWS, DIM)  # sharded steps: owned rows exact, others as last pulled
    reference = torch.zeros(ROWS, DIM)  # the weight a dense all_reduce trainer would hold
    log: list[tuple] = []
    rss: dict[int, float] = {}
    for step in range(steps):
        plan = _plan(seed, step)
        dens = plan["densities"]
        grad = _grad(seed, step, rank, dens[rank], plan["dup"])
        where = (
            f"soak step {step} (seed {seed}, {plan['strategy']}, rows={plan['rows']}, compress={plan['compress']}, "
            f"densities {', '.join(f'r{r}={d:.4f}' for r, d in enumerate(dens))}, dup={plan['dup']}, "
            f"pull={plan['pull']}, this rank {rank}: {grad.n} ids)"
        )
        expect = grad.to_dense()  # before the exchange coalesces grad in place
        dist.all_reduce(expect)
        try:
            if plan["strategy"].startswith("replicated"):
                mode = plan["strategy"].split("-")[1]
                summed, stats = replicated(
                    grad, rows=plan["rows"], compress=plan["compress"], mode=mode, name=f"soak{step}",
                    transport="tcp" if step % 2 else "auto",  # gloo and shared memory in turn
                )
                assert summed.is_coalesced(), "result not coalesced"
                torch.testing.assert_close(summed.to_dense(), expect, atol=ATOL, rtol=RTOL)
                log.append((step, stats.mode, stats.encoding, _digest(summed.ids, summed.values)))
            else:
                received: list[RowSparse] = []

                def apply_owned(rs: RowSparse, received: list = received) -> None:
                    received.append(rs)
                    weight.index_add_(0, rs.ids, rs.values, alpha=-1.0)

                pull = {
                    "grad": None,
                    "few": np.random.default_rng([seed, step, 9]).choice(ROWS, 7, replace=False),
                    "all": np.arange(ROWS),
                }[plan["pull"]]
                fresh, stats = sharded(
                    grad,
                    b,
                    apply_owned,
                    lambda ids: weight[ids],
                    pull=pull,
                    rows=plan["rows"],
                    compress=plan["compress"],
                    name=f"soak{step}",
                )
                reference -= expect
                assert len(received) == 1, f"apply_owned called {len(received)} times"
                owned = received[0]
                assert owned.ids.numel() == 0 or (int(owned.ids.min()) >= lo and int(owned.ids.max()) < hi)
                torch.testing.assert_close(owned.to_dense()[lo:hi], expect[lo:hi], atol=ATOL, rtol=RTOL)
                want = grad.ids if pull is None else torch.from_numpy(np.unique(pull))
                assert torch.equal(fresh.ids, want), "fresh rows are not the rows asked for"
                torch.testing.assert_close(fresh.values, reference[want], atol=1e-4, rtol=RTOL)
                weight[fresh.ids] = fresh.values
                torch.testing.assert_close(weight[lo:hi], reference[lo:hi], atol=1e-4, rtol=RTOL)  # no drift
                all_rows = _digest(weight) if pull is not None and want.numel() == ROWS else None
                log.append((step, stats.mode, stats.encoding, all_rows))
        except AssertionError as e:
            raise AssertionError(f"{where}: {e}") from None
        if step in (steps // 4, steps - 1):
            rss[step] = _rss_mb()
    return {"log": log, "rss": rss}


def test_soak_200_steps_equal_dense_all_reduce(pool):
    out = pool.run(_case_soak, SEED, STEPS, timeout=150.0)
    logs = [o["log"] for o in out]
    assert [len(lg) for lg in logs] == [STEPS] * WORLD
    modes: dict[str, set] = {s: set() for s in STRATEGIES}
    encodings = set()
    for entries in zip(*logs, strict=True):
        step = entries[0][0]
        plan = _plan(SEED, step)
        where = f"soak step {step} (seed {SEED}, {plan['strategy']}, densities {plan['densities']})"
        assert len({e[1] for e in entries}) == 1, f"{where}: ranks took different paths: {entries}"
        assert len({e[3] for e in entries}) == 1, f"{where}: ranks hold different results"
        modes[plan["strategy"]].add(entries[0][1])
        encodings.update(e[2] for e in entries)
    # The schedule really covered what it claims: auto went both ways, forced sparse never densified.
    assert modes["replicated-auto"] == {"sparse", "dense"}, modes
    assert modes["replicated-sparse"] == {"sparse"}, modes
    assert {"index", "bitmap", "roaring", "complement"} <= encodings, encodings
    for rank, o in enumerate(out):  # buffers are reused: memory is flat after the first quarter
        first, last = o["rss"][STEPS // 4], o["rss"][STEPS - 1]
        assert last - first < 64, f"rank {rank}: RSS grew {last - first:.0f} MiB from step {STEPS // 4} to the end"
