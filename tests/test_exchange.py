"""Gradient exchange over 3 gloo ranks: every strategy and encoding equals a dense all_reduce of the same gradients.

One spawned pool runs every case. Each rank builds every rank's gradient from ``(seed, rank)``, so it can compute
the expected dense sum locally; rank 2's gradient is empty unless a case says otherwise. Ranks return digests of
what they hold and the parent checks they agree.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from dist_utils import DistPool
from sparsembed.comm import dense, policy, transport
from sparsembed.comm.fused import FusedExchange, Segment
from sparsembed.comm.messages import RowMessages
from sparsembed.comm.replicated import replicated
from sparsembed.comm.sharded import even_boundaries, key_owner, sharded
from sparsembed.errors import UserError
from sparsembed.nn.families import DenseParam, RowSparseParam, SparseParam
from sparsembed.rows.coalesce import RowSparse
from sparsembed.rows.keytable import initial_rows

pytestmark = [pytest.mark.dist, pytest.mark.timeout(120)]

WORLD = 3
ROWS, DIM = 300, 5
TOL = {"fp32": 1e-5, "fp16": 2e-2, "bf16": 1e-1}


@pytest.fixture(scope="module")
def pool():
    with DistPool(WORLD, timeout=90.0) as p:
        yield p


# -- helpers run on the ranks -------------------------------------------------------------------------------------
def _grad(seed: int, rank: int, n: int = 40, empty_rank: int | None = 2, num_rows: int = ROWS) -> RowSparse:
    """Rank ``rank``'s raw gradient: ``n`` ids with duplicates (none on ``empty_rank``)."""
    rng = np.random.default_rng([seed, rank])
    n = 0 if rank == empty_rank else n
    ids = rng.integers(0, num_rows, n)
    return RowSparse(torch.from_numpy(ids), torch.from_numpy(rng.standard_normal((n, DIM), np.float32)), num_rows)


def _expected(seed: int, **kw) -> torch.Tensor:
    return sum(_grad(seed, r, **kw).to_dense().double() for r in range(WORLD)).float()


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def _rank() -> int:
    return torch.distributed.get_rank()


# -- cases (run on every rank) ------------------------------------------------------------------------------------
def _case_replicated(seed, rows, values, compress, mode, n, empty_rank, transport="tcp"):
    grad = _grad(seed, _rank(), n=n, empty_rank=empty_rank)
    summed, stats = replicated(grad, rows=rows, values=values, compress=compress, mode=mode, name="m",
                                        transport=transport)
    if transport == "auto" and stats.mode == "sparse":
        assert "shm_round" in stats.phases and "eager_round" not in stats.phases  # the ranks share this host
    expect = _expected(seed, n=n, empty_rank=empty_rank)
    tol = TOL[values] if stats.mode == "sparse" else 1e-5
    torch.testing.assert_close(summed.to_dense(), expect, atol=tol, rtol=tol)
    assert summed.is_coalesced()
    return _digest(summed.ids, summed.values), stats.mode, stats.encoding, stats.bytes_sent


def _case_short_receive():
    """gloo fills a posted receive buffer larger than the message with just the message: the eager round's basis."""
    dist = torch.distributed
    rank = _rank()
    buf = torch.full((64,), 255, dtype=torch.uint8)
    reqs = [dist.irecv(buf, src=(rank - 1) % WORLD)]
    reqs.append(dist.isend(torch.arange(rank + 1, dtype=torch.uint8), dst=(rank + 1) % WORLD))
    for r in reqs:
        r.wait()
    return buf.tolist()


def _case_two_rounds(seed, values, mode):
    """Messages larger than the eager frame (its 64 KiB floor) finish in a second round; auto goes dense here,
    densifying the raw gradient in many row blocks."""
    saved = transport.EAGER_BYTES, dense.DENSE_BLOCK_BYTES
    transport.EAGER_BYTES, dense.DENSE_BLOCK_BYTES = 0, 4096
    try:
        num_rows = 20000  # ~9000 distinct rows a rank: every message is over 64 KiB, even in fp16
        grad = _grad(seed, _rank(), n=12000, empty_rank=1, num_rows=num_rows)
        summed, stats = replicated(grad, values=values, mode=mode, transport="tcp")
        expect = _expected(seed, n=12000, empty_rank=1, num_rows=num_rows)
    finally:
        transport.EAGER_BYTES, dense.DENSE_BLOCK_BYTES = saved
    tol = TOL[values] if stats.mode == "sparse" else 1e-5
    torch.testing.assert_close(summed.to_dense(), expect, atol=tol, rtol=tol)
    assert stats.mode == "dense" or stats.bytes_recv > 64 << 10
    return _digest(summed.ids, summed.values), stats.mode


def _case_sharded(seed, boundaries, pull_kind, values):
    rank = _rank()
    w0 = torch.from_numpy(np.random.default_rng(seed).standard_normal((ROWS, DIM), np.float32))
    weight = w0.clone()
    param = RowSparseParam(weight, strategy="sharded", boundaries=boundaries, values=values)
    grad = _grad(seed, rank)
    touched = torch.unique(grad.ids)
    pull = {"grad": None, "all": np.arange(ROWS), "few": np.array([0, 7, ROWS - 1])}[pull_kind]
    stats = param.step(grad, lr=0.5, pull=pull)
    expect = w0 - 0.5 * _expected(seed)
    tol = TOL[values]
    fresh = touched if pull is None else torch.from_numpy(pull)
    torch.testing.assert_close(weight[fresh], expect[fresh], atol=tol, rtol=tol)
    b = even_boundaries(ROWS, WORLD) if boundaries is None else boundaries
    mine = slice(int(b[rank]), int(b[rank + 1]))
    torch.testing.assert_close(weight[mine], expect[mine], atol=tol, rtol=tol)  # the owner is always current
    assert stats.strategy == "sharded" and stats.bytes_sent >= 0
    return _digest(weight) if pull_kind == "all" else None


def _case_mixed_model(seed):
    """Dense (several buckets) + row-sparse (unused on rank 1) + hash-table parameters in one model."""
    rank = _rank()
    rng = np.random.default_rng(seed)
    dense = [torch.from_numpy(rng.standard_normal(s, np.float32)) for s in [(3, 4), (10,), (2, 2, 2), (7,)]]
    d0 = [t.clone() for t in dense]
    grads = lambda r: [torch.full(t.shape, float(r + 1)) for t in dense]  # noqa: E731
    dstats = DenseParam(dense, bucket_bytes=64).step(grads(rank), lr=0.1)
    for t, t0, k in zip(dense, d0, range(len(dense)), strict=True):
        torch.testing.assert_close(t, t0 - 0.1 * sum(grads(r)[k] for r in range(WORLD)))
    weight = torch.zeros(ROWS, DIM)
    param = RowSparseParam(weight, name="emb")
    stats = param.step(_grad(seed, rank, empty_rank=1), lr=1.0)
    torch.testing.assert_close(weight, -_expected(seed, empty_rank=1), atol=1e-5, rtol=1e-5)
    return dstats.mode, stats.rows, _digest(weight)


def _keyed_grad(seed, rank):
    rng = np.random.default_rng([seed, rank, 7])
    n = 0 if rank == 2 else 30
    keys = rng.choice(np.array([-(2**63), -3, 0, 5, 2**40, 2**63 - 1, 123456789]), n)
    keys = np.concatenate([keys, rng.integers(-(2**62), 2**62, n // 3)])
    return keys, torch.from_numpy(rng.standard_normal((keys.shape[0], DIM), np.float32))


def _case_hash(seed, strategy, values):
    rank = _rank()
    probe = np.array([0, 1, -1, 2**62, -(2**63), 99])
    table = SparseParam(DIM, seed=seed, strategy=strategy, values=values, capacity=4)
    first = table.lookup(probe)
    assert torch.equal(first, initial_rows(probe, DIM, seed, 0.5 / DIM))
    keys, vals = _keyed_grad(seed, rank)
    table.step(keys, vals, lr=1.0)
    expect: dict[int, torch.Tensor] = {}
    for r in range(WORLD):
        k, v = _keyed_grad(seed, r)
        for key, row in zip(k.tolist(), v, strict=True):
            expect[key] = expect.get(key, 0) + row.double()
    tol = TOL[values]
    union = np.array(sorted(expect))
    check = np.unique(keys) if strategy == "sharded" else union  # sharded: a worker is current for what it touched
    if check.shape[0]:
        want = initial_rows(check, DIM, seed, 0.5 / DIM) - torch.stack([expect[k].float() for k in check.tolist()])
        torch.testing.assert_close(table.lookup(check), want, atol=tol, rtol=tol)
    return _digest(first), _digest(table.lookup(union)) if strategy == "replicated" else None


def _case_many_steps(seed):
    """Repeated steps reuse the exchange buffers; sizes shrink and grow between steps."""
    weight = torch.zeros(ROWS, DIM)
    param = RowSparseParam(weight)
    expect = torch.zeros(ROWS, DIM)
    for step, n in enumerate([50, 3, 200, 0, 17]):
        param.step(_grad(seed + step, _rank(), n=n, empty_rank=step % WORLD), lr=1.0)
        expect -= _expected(seed + step, n=n, empty_rank=step % WORLD)
    torch.testing.assert_close(weight, expect, atol=1e-4, rtol=1e-4)
    return _digest(weight)


# -- tests --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rows,values,compress",
    [
        ("auto", "fp32", None),
        ("index", "fp32", "zstd"),
        ("bitmap", "fp16", None),
        ("roaring", "bf16", "lz4"),
        ("complement", "fp32", None),
        ("auto", "fp16", "zstd"),
    ],
)
@pytest.mark.parametrize("mode", ["sparse", "auto", "dense"])
@pytest.mark.parametrize("transport", ["tcp", "auto"])
def test_replicated_equals_dense_all_reduce(pool, rows, values, compress, mode, transport):
    """Over gloo, and through shared memory (``auto``: the test's ranks share this host)."""
    out = pool.run(_case_replicated, 11, rows, values, compress, mode, 40, 2, transport)
    assert len({o[0] for o in out}) == 1, "ranks disagree"  # bit-identical sums everywhere
    assert len({o[1] for o in out}) == 1, "ranks took different paths"
    if mode != "auto":
        assert {o[1] for o in out} == {mode}


def test_replicated_auto_stays_sparse_at_low_density(pool):
    out = pool.run(_case_replicated, 4, "auto", "fp32", None, "auto", 3, 2)
    assert {o[1] for o in out} == {"sparse"} and len({o[0] for o in out}) == 1


def test_replicated_all_ranks_empty(pool):
    out = pool.run(_case_replicated, 3, "auto", "fp32", None, "auto", 0, None)
    assert len({o[0] for o in out}) == 1


def test_replicated_auto_goes_dense_at_full_density(pool):
    # 3 ranks touching nearly every row: an all_gather would move ~2x the matrix, a ring all-reduce 4/3 of it.
    out = pool.run(_case_replicated, 5, "auto", "fp32", None, "auto", 3000, None)
    assert {o[1] for o in out} == {"dense"}
    assert len({o[0] for o in out}) == 1


def _case_dense_shared(seed, n):
    out = _case_replicated(seed, "auto", "fp32", None, "auto", n, 2, "auto")
    _, stats = replicated(_grad(seed, _rank(), n=n, empty_rank=2), transport="auto")
    return (*out, sorted(stats.phases))


def test_replicated_auto_goes_dense_through_shared_memory(pool):
    # Ranks on one host densify into their slots (rows a rank never names are zeros: every row on the empty rank
    # 2, about a quarter on the others) and add the slots in rank order: the dense sum, the same bits everywhere.
    out = pool.run(_case_dense_shared, 9, 400)
    assert {o[1] for o in out} == {"dense"} and len({o[0] for o in out}) == 1
    assert all({"densify", "dense_round", "dense_sum"} <= set(o[-1]) for o in out)


def test_sparse_too_big_counts_what_the_busiest_rank_receives():
    ring = policy.ring_bytes(1000, 4)
    assert ring == 1500  # 2 (P-1)/P of the dense bytes
    # The busiest rank receives every message but its own: at best it owns the smallest.
    assert not policy.sparse_too_big([100, 200, 300, 50], ring, 0.4)  # 600 <= 600
    assert policy.sparse_too_big([100, 200, 301, 50], ring, 0.4)
    assert policy.ring_bytes(1000, 1) == 0 and not policy.sparse_too_big([0], 0, 0.4)


def test_densify_equals_zeroing_then_adding_in_order():
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 50, 120)  # duplicates, and rows nobody names
    vals = rng.standard_normal((120, 7)).astype(np.float32)
    want = np.zeros((50, 7), np.float32)
    for i, row in zip(ids, vals, strict=True):
        want[i] += row
    got = np.full((50, 7), np.nan, np.float32)  # whatever the slot held before
    dense._densify(got, ids, vals, np.zeros(50, np.uint8))
    assert np.array_equal(got, want)


def test_gloo_accepts_short_message(pool):
    out = pool.run(_case_short_receive)
    for rank, got in enumerate(out):
        sender = (rank - 1) % WORLD
        assert got[: sender + 1] == list(range(sender + 1)) and set(got[sender + 1 :]) == {255}


@pytest.mark.parametrize("values,mode", [("fp32", "sparse"), ("fp16", "sparse"), ("fp32", "auto")])
def test_replicated_large_messages_take_two_rounds(pool, values, mode):
    out = pool.run(_case_two_rounds, 61, values, mode)
    assert len({o[0] for o in out}) == 1 and len({o[1] for o in out}) == 1
    assert out[0][1] == ("dense" if mode == "auto" else "sparse")


@pytest.mark.parametrize("pull_kind", ["grad", "all", "few"])
@pytest.mark.parametrize("boundaries", [None, np.array([0, 0, 100, ROWS]), np.array([0, 250, ROWS, ROWS])])
def test_sharded_equals_dense_all_reduce(pool, boundaries, pull_kind):
    out = pool.run(_case_sharded, 21, boundaries, pull_kind, "fp32")
    if pull_kind == "all":
        assert len(set(out)) == 1


def test_sharded_fp16(pool):
    pool.run(_case_sharded, 22, None, "grad", "fp16")


def test_mixed_model_with_unused_parameter(pool):
    out = pool.run(_case_mixed_model, 31)
    assert len({o[2] for o in out}) == 1
    assert out[1][1] == 0 and out[0][1] > 0


@pytest.mark.parametrize("strategy,values", [("replicated", "fp32"), ("sharded", "fp32"), ("replicated", "fp16")])
def test_hash_family_same_rows_everywhere(pool, strategy, values):
    out = pool.run(_case_hash, 41, strategy, values)
    assert len({o[0] for o in out}) == 1, "initial rows differ between ranks"
    if strategy == "replicated":
        assert len({o[1] for o in out}) == 1, "ranks disagree after the exchange"


def test_repeated_steps(pool):
    assert len(set(pool.run(_case_many_steps, 51))) == 1


# -- single process -----------------------------------------------------------------------------------------------
def test_single_process_is_local_coalesce():
    grad = RowSparse(torch.tensor([3, 1, 3]), torch.ones(3, 2), 5)
    summed, stats = replicated(grad)
    assert summed.ids.tolist() == [1, 3] and summed.values[1].tolist() == [2.0, 2.0]
    assert stats.bytes_sent == 0 and stats.as_dict()["strategy"] == "replicated"


def test_bad_arguments():
    grad = RowSparse(torch.tensor([1]), torch.ones(1, 2), 5)
    with pytest.raises(UserError):
        replicated(grad, mode="fast")
    with pytest.raises(UserError):
        sharded(grad, [0, 3], lambda rs: None, lambda ids: ids)
    with pytest.raises(UserError):
        RowSparseParam(torch.zeros(5, 2), strategy="gossip")
    with pytest.raises(UserError):
        SparseParam(0)


def test_initial_rows_are_a_function_of_seed_and_key():
    a = initial_rows([5, -5, 2**63 - 1], 8, seed=1, scale=0.25)
    assert torch.equal(a, initial_rows([5, -5, 2**63 - 1], 8, seed=1, scale=0.25))
    assert not torch.equal(a, initial_rows([5, -5, 2**63 - 1], 8, seed=2, scale=0.25))
    assert float(a.abs().max()) <= 0.25 and len({tuple(r) for r in a.tolist()}) == 3


def test_key_owner_spreads_keys():
    owners = key_owner(np.arange(3000, dtype=np.int64) * 4, 3)
    assert set(np.bincount(owners, minlength=3).tolist()) <= set(range(900, 1100))


@pytest.mark.parametrize("rows", ["auto", "index", "complement", "bitmap", "roaring"])
@pytest.mark.parametrize("values", ["fp32", "fp16"])
def test_predicted_message_size_is_exact(rows, values):
    rng = np.random.default_rng(0)
    for density in [0.0, 0.01, 0.3, 0.7, 1.0]:
        ids = torch.from_numpy(np.flatnonzero(rng.random(ROWS) < density).astype(np.int64))
        rc = RowMessages(ROWS, DIM, rows, values, None)
        assert rc.size(ids) == rc.encode(ids, torch.randn(ids.shape[0], DIM)).shape[0]


@pytest.mark.parametrize("mode", ["auto", "sparse", "dense"])
def test_fused_table_may_go_dense_from_its_ring_bytes_alone(mode):
    """Whether the fused sync needs the sizes first: exactly when a dense path is possible for some sizes, i.e.
    forced, or (auto) when the table's ring all-reduce reaches the minimum."""
    fx = FusedExchange(transport="tcp")
    for num_rows, dim, world, floor in [(0, 4, 2, 0), (1000, 8, 2, 1 << 20), (40000, 16, 3, 1 << 20),
                                        (40000, 16, 2, 0), (10, 1, 8, 64), (10, 1, 8, 63)]:
        fx.dense_path_min_bytes = floor
        table = Segment("t", torch.zeros(0, dtype=torch.int64), torch.zeros(0, dim), num_rows)
        want = mode == "dense" or (mode == "auto" and policy.ring_bytes(num_rows * dim * 4, world) >= floor)
        assert fx._may_go_dense(policy.Mode(mode), table, world) == want
        keys = Segment("k", torch.zeros(0, dtype=torch.int64), torch.zeros(0, dim))
        assert not fx._may_go_dense(policy.Mode(mode), keys, world)  # keys have no dense form
