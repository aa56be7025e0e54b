"""parallel() and the exchange on CUDA tensors (issue 21, part 2): the device helpers, and the NCCL branches.

Without a GPU: the helpers' CPU behaviour, torch's device-side coalescing against the host one, and every NCCL
branch run by a gloo group standing in for NCCL (:func:`sparsembed.comm.device.stand_in_for_nccl`: no shared
memory, padded all-gathers, the count round, the dense sums of the device path) against the CPU path. With a
CUDA device: world 1 over NCCL against a CPU run, and 2 gloo ranks on CUDA tensors against a dense all-reduce.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dist_utils import DistPool, free_port
from sparsembed.comm import device
from sparsembed.comm.device import coalesce_rows, device_wire, to_host, wire_device
from sparsembed.nn.hashembedding import HashEmbedding
from sparsembed.nn.parallel import parallel
from sparsembed.rows.coalesce import RowSparse

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ROWS, DIM = 20, 4


class Tiny(nn.Module):
    """A sparse embedding (small enough for its exchange to go dense under ``auto``) and a dense head."""

    def __init__(self, hashed: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(ROWS, DIM, sparse=True)
        self.head = nn.Linear(DIM, 1)
        self.keyed = HashEmbedding(DIM, seed=3) if hashed else None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        if self.keyed is not None:
            x = x + self.keyed(ids * 1_000_003)
        return self.head(x).pow(2).sum()


def _ids(rank: int, n: int = 12) -> torch.Tensor:
    """Rank ``rank``'s ids: a few hot rows repeated, some rows only this rank touches."""
    g = torch.Generator().manual_seed(rank)
    return torch.cat([torch.randint(0, 6, (n,), generator=g), torch.randint(6, ROWS, (3,), generator=g)])


def _model(hashed: bool = False, dev: str = "cpu") -> Tiny:
    torch.manual_seed(0)
    return Tiny(hashed).to(dev)


def _grads(model: Tiny) -> dict[str, torch.Tensor]:
    """Every gradient as a dense CPU tensor (the HashEmbedding's as its sorted keys and rows)."""
    out = {n: (p.grad.to_dense() if p.grad.is_sparse else p.grad).cpu() for n, p in model.named_parameters()}
    if model.keyed is not None:
        keys, vals = model.keyed.gradient()
        out["keyed.keys"], out["keyed.vals"] = keys.cpu(), vals.cpu()
    return out


# -- helpers, on the CPU ----------------------------------------------------------------------------------------
def test_helpers_on_the_cpu_copy_nothing() -> None:
    t = torch.arange(6.0)
    assert to_host(t) is t  # the CPU path gets no copy
    assert not device_wire() and wire_device() == torch.device("cpu")  # no process group: the host


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.integers(0, 400), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_device_coalescing_equals_the_host_one(num_rows: int, n: int, dim: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ids = torch.from_numpy(rng.integers(0, num_rows, n))  # duplicates whenever n > a few rows
    vals = torch.from_numpy(rng.standard_normal((n, dim)).astype(np.float32))
    got_ids, got_vals = coalesce_rows(ids, vals, num_rows)
    ref = RowSparse(ids.clone(), vals.clone(), num_rows).coalesce_()
    assert torch.equal(got_ids, ref.ids) and got_vals.dtype == torch.float32
    torch.testing.assert_close(got_vals, ref.values, rtol=1e-5, atol=1e-4)  # sums in another order


# -- the NCCL branches, on gloo standing in for NCCL -----------------------------------------------------------
@pytest.fixture(scope="module")
def pool():
    with DistPool(2, timeout=120) as p:
        yield p


def _stand_in_case(fuse: bool, mode: str) -> list[tuple[str, float]]:
    """Two identical models on this rank's batch: one synced by the CPU path, one with every group treated as
    NCCL; returns the largest difference per gradient."""
    import torch.distributed as dist

    models = [_model(hashed=True), _model(hashed=True)]
    for m in models:  # ids of their own: the CPU path coalesces the gradient's ids (a view of them) in place
        m(_ids(dist.get_rank())).backward()
    stats = []
    try:
        for standing_in, m in zip((False, True), models, strict=True):
            device.stand_in_for_nccl(standing_in)
            pm = parallel(m, fuse=fuse, mode=mode)
            pm.fused.dense_path_min_bytes = 0  # the tiny table may go dense in the fused sync too
            stats.append([(s.name, s.mode) for s in pm.sync()])
    finally:
        device.stand_in_for_nccl(False)
    want, got = _grads(models[0]), _grads(models[1])
    assert want.keys() == got.keys()
    if mode != "auto":  # auto decides from other sizes over NCCL (row counts, no shared-memory bias)
        assert stats[0] == stats[1]
    return [(k, float((want[k].float() - got[k].float()).abs().max())) for k in want if want[k].numel()]


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("mode", ["auto", "sparse", "dense"])
def test_nccl_branches_equal_the_cpu_path(pool: DistPool, fuse: bool, mode: str) -> None:
    for diffs in pool.run(_stand_in_case, fuse, mode):
        for name, diff in diffs:
            assert diff <= 1e-6, (name, diff)


def _replicated_rows_case(mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """replicated_rows over the stand-in wire: the sum at the touched rows, and a dense all-reduce for reference."""
    import torch.distributed as dist

    from sparsembed.comm.replicated import replicated_rows

    ids = _ids(dist.get_rank())
    vals = torch.randn(ids.shape[0], DIM, generator=torch.Generator().manual_seed(dist.get_rank()))
    ref = torch.zeros(ROWS, DIM).index_add_(0, ids, vals)
    dist.all_reduce(ref)
    device.stand_in_for_nccl(True)
    try:
        out_ids, out_vals, stats = replicated_rows(*coalesce_rows(ids, vals, ROWS), ROWS, mode=mode)
    finally:
        device.stand_in_for_nccl(False)
    return out_ids, out_vals, ref, stats.mode


@pytest.mark.parametrize("mode", ["auto", "sparse", "dense"])
def test_replicated_rows_on_a_device_wire_equals_a_dense_all_reduce(pool: DistPool, mode: str) -> None:
    results = pool.run(_replicated_rows_case, mode)
    touched = torch.unique(torch.cat([_ids(0), _ids(1)]))
    for ids, vals, ref, path in results:
        assert torch.equal(ids, touched)  # the dense path too keeps only the rows some rank touched
        torch.testing.assert_close(vals, ref[touched])
        assert path == ("sparse" if mode == "sparse" else "dense")  # 20 rows, half touched: auto goes dense
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=0)  # replicas agree bit for bit


# -- CUDA ----------------------------------------------------------------------------------------------------------
@needs_cuda
def test_world_one_over_nccl_equals_a_cpu_run() -> None:
    import torch.distributed as dist

    from sparsembed.comm.dense import dense_rows_on_wire
    from sparsembed.comm.device import staged_all_to_all
    from sparsembed.comm.fused import FusedExchange, Segment

    want = _model()
    want(_ids(0)).backward()
    parallel(want).sync()
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                            timeout=timedelta(seconds=60))
    try:
        assert device_wire() and wire_device().type == "cuda"
        m = _model(dev="cuda")
        m(_ids(0).cuda()).backward()
        parallel(m).sync()
        for k, v in _grads(want).items():
            torch.testing.assert_close(_grads(m)[k], v)
        assert m.emb.weight.grad.is_sparse and m.emb.weight.grad.device.type == "cuda"
        # what a world of one skips in sync(): the dense sum on the device, the staged collectives
        ids, vals = coalesce_rows(_ids(0).cuda(), torch.ones(15, DIM, device="cuda"), ROWS)
        out_ids, out_vals, _ = dense_rows_on_wire(ids, vals, ROWS, None)
        assert out_ids.device.type == "cuda" and torch.equal(out_ids, ids) and torch.equal(out_vals, vals)
        out = torch.empty(4, dtype=torch.uint8)
        staged_all_to_all(out, torch.arange(4, dtype=torch.uint8))
        assert torch.equal(out, torch.arange(4, dtype=torch.uint8))
        seg = Segment("emb", ids.cpu(), vals.cpu(), ROWS)
        sums = FusedExchange().exchange([seg], "sparse", [torch.ones(3, device="cuda")])
        assert torch.equal(sums.rows[0][0], seg.ids) and torch.equal(sums.rows[0][1], seg.values)
        assert torch.equal(sums.dense[0], torch.ones(3))
    finally:
        dist.destroy_process_group()


def _gloo_cuda_case(fuse: bool) -> tuple[dict, dict]:
    """This rank's synced gradients on its CUDA device, and a dense all-reduce of the same gradients."""
    import torch.distributed as dist

    torch.cuda.set_device(dist.get_rank() % torch.cuda.device_count())
    m = _model(dev="cuda")
    m(_ids(dist.get_rank()).cuda()).backward()
    ref = {}
    for n, p in m.named_parameters():
        ref[n] = (p.grad.to_dense() if p.grad.is_sparse else p.grad).clone()
        dist.all_reduce(ref[n])  # gloo all-reduces CUDA tensors
        ref[n] /= dist.get_world_size()
    parallel(m, fuse=fuse).sync()
    assert m.emb.weight.grad.device.type == "cuda" and m.emb.weight.grad.is_sparse
    return _grads(m), {n: v.cpu() for n, v in ref.items()}


@needs_cuda
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_two_gloo_ranks_on_cuda_tensors_equal_a_dense_all_reduce(pool: DistPool, fuse: bool) -> None:
    for got, want in pool.run(_gloo_cuda_case, fuse):
        for k, v in want.items():
            torch.testing.assert_close(got[k], v)


# -- bench exchange --device cuda ------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no CUDA device is visible")
def test_bench_exchange_on_cuda_without_a_device_is_one_line_exit_2(capsys) -> None:
    from sparsembed.cli import main

    assert main(["bench", "exchange", "--device", "cuda", "--nproc", "1"]) == 2  # refused before spawning
    err = capsys.readouterr().err
    assert err == "sparsembed: error: bench exchange: --device cuda but no CUDA device is visible\n"


def test_bench_exchange_nccl_needs_cuda_and_reports_no_torch_sparse() -> None:
    from sparsembed.bench.exchange import _summary, format_text, run_exchange_bench
    from sparsembed.errors import UserError

    with pytest.raises(UserError, match="--backend nccl needs --device cuda"):
        run_exchange_bench(1, backend="nccl", distributed=False)
    every = {"ours": 1.0, "torch_sparse": None, "dense": 4.0}  # what an NCCL run's ranks return
    point = {"ids": 8, "aligned_by": "barrier", "distinct_rows": 5, "mode": "sparse", "encoding": "index",
             "ours_ms": 1.0, "torch_sparse_ms": None, "dense_ms": 4.0, "phases_ms": [{"total": 1.0}],
             "from_last_arrival_ms": every, "start_skew_ms": every}
    cfg = {"rows": 10, "dim": 2, "values": "fp32", "rows_encoding": "auto", "transport": "auto", "inputs": "fresh",
           "align": "auto", "device": "cuda", "backend": "nccl", "steps": 1, "warmup": 0}
    res = _summary([point, {**point, "density": 0.5}], cfg, 1, "spawn", 8, 0.0)
    assert res["speedup_vs_torch_sparse"] is None and res["speedup_vs_dense"] == 4.0
    assert res["sweep"][0]["never_slower"]
    text = format_text(res)
    assert text.startswith("gradients on cuda, nccl group of 1\n") and "torch sparse n/a ms" in text
