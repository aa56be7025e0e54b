"""sparsembed.nn.parallel: 2 gloo ranks on half a batch each equal 1 process on the mean loss, for every family."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dist_utils import DistPool
from sparsembed import optim
from sparsembed.errors import UserError
from sparsembed.nn.families import DenseParam, Family, RowSparseParam, SparseParam, families
from sparsembed.nn.hashembedding import HashEmbedding
from sparsembed.nn.parallel import parallel

DIM = 4
BIG = 1 << 40  # user id space


class Net(nn.Module):
    """Every family: two HashEmbeddings, three sparse embedding weights (one a bag), dense layers."""

    def __init__(self) -> None:
        super().__init__()
        self.user = HashEmbedding(DIM, seed=7)
        self.tags = HashEmbedding(DIM, seed=8, init_scale=0.1)
        self.item = nn.Embedding(40, DIM, sparse=True)
        self.bag = nn.EmbeddingBag(6, DIM, mode="sum", sparse=True)  # tiny: its exchange takes the dense path
        self.side = nn.Embedding(12, DIM, sparse=True)
        self.head = nn.Sequential(nn.Linear(DIM, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, b: dict) -> torch.Tensor:
        x = self.user(b["user"]) * self.item(b["item"]) + self.bag(b["bag"])
        # Tags: a variable-length list per example, summed; an empty list on every example -> empty gradient.
        t = torch.zeros(x.shape[0], DIM).index_add(0, b["tag_row"], self.tags(b["tags"]))
        x = x + t
        if "side" in b:  # half 1 never uses this table
            x = x + self.side(b["side"])
        return self.head(x).squeeze(-1)


def _batch(step: int, half: int) -> dict:
    g = torch.Generator().manual_seed(100 * step + half)
    n = 6
    b = {
        "user": torch.randint(0, BIG, (n,), generator=g) % 5 * 1_000_000_007 + (BIG - 5_000_000_000),
        "item": torch.randint(0, 40, (n,), generator=g),
        "bag": torch.randint(0, 6, (n, 3), generator=g),
        "y": torch.randn(n, generator=g),
    }
    if half == 0:
        b["tags"] = torch.randint(0, BIG, (9,), generator=g) % 7
        b["tag_row"] = torch.randint(0, n, (9,), generator=g)
        b["side"] = torch.randint(0, 12, (n,), generator=g)
    else:
        b["tags"] = torch.zeros(0, dtype=torch.int64)
        b["tag_row"] = torch.zeros(0, dtype=torch.int64)
    return b


def _loss(model: nn.Module, b: dict) -> torch.Tensor:
    return (model(b) - b["y"]).pow(2).mean()


OPTS = {
    "sgd": lambda m: optim.SGD(m, lr=0.1),
    "adagrad": lambda m: optim.Adagrad(m, lr=0.1),
    "adam": lambda m: optim.Adam(m, lr=0.05),
}


def _model() -> Net:
    torch.manual_seed(0)
    return Net()


def _state(model: nn.Module) -> dict:
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith("_extra_state"):
            out[k + ".keys"] = v["keys"]
            out[k + ".weight"] = v["weight"]
            out.update({f"{k}.{n}": s for n, s in v["state"].items()})
        else:
            out[k] = v
    return out


def _train_ranks(opt_name: str, steps: int, fuse: str) -> tuple[dict, list]:
    """Runs on each rank: its half of every batch, sync, step."""
    import torch.distributed as dist

    rank = dist.get_rank()
    model = _model()
    tcp = fuse in ("fused-tcp", "fused-overflow", "fused-dense-tcp")
    pm = parallel(model, fuse=fuse != "unfused", transport="tcp" if tcp else "auto")
    pm.fused.dense_path_min_bytes = 0 if fuse.startswith("fused-dense") else 1 << 20  # small tables may go dense
    pm.fused.shared_capacity = 64 if fuse == "fused-shm-grow" else 1 << 20  # too small: all ranks grow their slots
    if fuse == "fused-overflow":
        pm.fused.eager_capacity = 64  # every message overflows the first round: the tails take a second one
    opt = OPTS[opt_name](pm)
    modes = []
    for step in range(steps):
        opt.zero_grad()
        _loss(pm, _batch(step, rank)).backward()
        modes += [(s.name, s.mode) for s in pm.sync()]
        opt.step()
    return _state(model), modes


def _train_reference(opt_name: str, steps: int) -> dict:
    model = _model()
    pm = parallel(model)  # no process group: sync is a world of one
    opt = OPTS[opt_name](pm)
    for step in range(steps):
        opt.zero_grad()
        (0.5 * (_loss(pm, _batch(step, 0)) + _loss(pm, _batch(step, 1)))).backward()
        pm.sync()
        opt.step()
    return _state(model)


@pytest.fixture(scope="module")
def pool():
    with DistPool(2) as p:
        yield p


FUSE_MODES = ["fused", "fused-shm-grow", "fused-tcp", "fused-overflow", "fused-dense", "fused-dense-tcp", "unfused"]


@pytest.mark.parametrize("fuse", FUSE_MODES)
@pytest.mark.parametrize("opt_name", sorted(OPTS))
def test_two_ranks_equal_one_process_on_mean_loss(pool: DistPool, opt_name: str, fuse: str) -> None:
    results = pool.run(_train_ranks, opt_name, 3, fuse)
    ref = _train_reference(opt_name, 3)
    for state, _ in results:
        assert state.keys() == ref.keys()
        for k in ref:
            if k.endswith(".keys"):
                assert torch.equal(state[k], ref[k]), k
            else:
                torch.testing.assert_close(state[k], ref[k], rtol=1e-5, atol=1e-6, msg=k)
    # The replicas agree exactly: every rank applied the same bytes.
    for k in ref:
        assert torch.equal(results[0][0][k], results[1][0][k]), k
    modes = dict(results[0][1])
    assert modes["user"] == "sparse" and modes["item.weight"] == "sparse"
    dense_bag = fuse.startswith("fused-dense") or fuse == "unfused"
    assert modes["bag.weight"] == ("dense" if dense_bag else "sparse")  # 6 rows


def _sums(average: bool, fuse: bool) -> list:
    import torch.distributed as dist

    rank = dist.get_rank()
    model = _model()
    pm = parallel(model, fuse=fuse)
    _loss(pm, _batch(0, rank)).backward()
    pm.sync(average=average)
    keys, vals = model.user.gradient()
    return [keys, vals, model.item.weight.grad.to_dense(), model.side.weight.grad.to_dense(), model.head[0].bias.grad]


@pytest.mark.parametrize("fuse", [True, False])
def test_average_false_sums(pool: DistPool, fuse: bool) -> None:
    avg = pool.run(_sums, True, fuse)[0]
    tot = pool.run(_sums, False, fuse)[0]
    assert torch.equal(avg[0], tot[0])
    for a, t in zip(avg[1:], tot[1:], strict=True):
        torch.testing.assert_close(2 * a, t)
    assert avg[3].abs().sum() > 0  # side: used on rank 0 only, its rows still reach rank 1


def _unfused_phases(transport: str) -> dict:
    import torch.distributed as dist

    model = _model()
    pm = parallel(model, fuse=False, transport=transport)
    _loss(pm, _batch(0, dist.get_rank())).backward()
    return {s.name: sorted(s.phases) for s in pm.sync()}


def test_unfused_tcp_never_uses_shared_memory(pool: DistPool) -> None:
    auto, tcp = (pool.run(_unfused_phases, t)[0] for t in ("auto", "tcp"))
    for name in ("item.weight", "bag.weight", "side.weight"):
        assert any(p.startswith("shm") for p in auto[name]), (name, auto[name])  # the ranks share this host
        assert tcp[name] and not any(p.startswith("shm") for p in tcp[name]), (name, tcp[name])


def test_families_classify_every_parameter() -> None:
    fam = families(Net())
    assert [n for n, _ in fam.hashed] == ["user", "tags"]
    assert [n for n, _ in fam.sparse] == ["item.weight", "bag.weight", "side.weight"]
    assert [n for n, _ in fam.dense] == ["head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"]
    assert fam[Family.HASHED] is fam.hashed and fam["sparse"] is fam.sparse and fam[Family.DENSE] is fam.dense


def test_bad_settings_are_refused_at_construction() -> None:
    for bad in ({"transport": "udp"}, {"mode": "fast"}):
        with pytest.raises(UserError, match="invalid setting: parallel"):
            parallel(Net(), **bad)
    assert parallel(Net(), mode="dense", transport="tcp").mode == "dense"  # strings and members alike


def test_hash_rows_are_a_function_of_seed_and_id() -> None:
    a, b = HashEmbedding(DIM, seed=3), HashEmbedding(DIM, seed=3)
    ids = torch.tensor([BIG - 1, 17, 0])
    b.lookup(torch.tensor([5, 6, 7]))  # a different creation order
    assert torch.equal(a.lookup(ids), b.lookup(ids.flip(0)).flip(0))
    assert not torch.equal(a.lookup(ids), HashEmbedding(DIM, seed=4).lookup(ids))
    assert a(ids.view(3, 1)).shape == (3, 1, DIM)


def test_hashed_family_is_one_table() -> None:
    """HashEmbedding and the standalone SparseParam keep their rows alike: same rows, same creation order."""
    ids = torch.arange(100) * 1_000_003 - 50
    emb, param = HashEmbedding(DIM, seed=5, capacity=4), SparseParam(DIM, seed=5, init_scale=DIM**-0.5, capacity=4)
    assert torch.equal(emb.lookup(ids), param.lookup(ids))
    assert torch.equal(emb.keys(), torch.from_numpy(param.keys()))
    assert [c.family for c in (SparseParam, RowSparseParam, DenseParam)] == [Family.HASHED, Family.SPARSE, Family.DENSE]


def test_forward_past_capacity_grows_storage() -> None:
    emb = HashEmbedding(DIM, seed=1, capacity=16)
    ids = torch.arange(1000) * 1_000_003
    out = emb(ids)
    assert len(emb) == 1000 and torch.equal(out.detach(), HashEmbedding(DIM, seed=1).lookup(ids))


def test_eviction_drops_cold_rows_and_recreates_them_fresh() -> None:
    emb = HashEmbedding(DIM, seed=1, max_idle=2)
    opt = optim.Adagrad(emb, lr=0.5)
    first = emb.lookup(torch.tensor([10])).clone()
    for ids in ([10, 11], [11], [11], [11]):
        opt.zero_grad()
        emb(torch.tensor(ids)).sum().backward()
        opt.step()
    assert sorted(emb.keys().tolist()) == [11]
    assert torch.equal(emb.lookup(torch.tensor([10])), first)  # back at its initial value, state zero
    slot = emb.slots(torch.tensor([10]))  # first: it may replace the storage
    assert float(emb.state_rows("sum")[slot].abs().sum()) == 0.0


def test_checkpoint_resumes_identically() -> None:
    def run(model: Net, opt: optim.Optimizer, steps: range) -> None:
        for step in steps:
            opt.zero_grad()
            _loss(model, _batch(step, 0)).backward()
            opt.step()

    model = _model()
    opt = optim.Adam(model, lr=0.05)
    run(model, opt, range(2))
    msd, osd = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())  # torch's are live views
    run(model, opt, range(2, 4))
    again = Net()
    again.load_state_dict(msd)
    opt2 = optim.Adam(again, lr=0.05)
    opt2.load_state_dict(osd)
    run(again, opt2, range(2, 4))
    a, b = _state(model), _state(again)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_package_exports() -> None:
    import sparsembed

    assert isinstance(sparsembed.parallel(Net()), sparsembed.ParallelModel)
    assert sparsembed.HashEmbedding is HashEmbedding
    assert sparsembed.optim.SGD is optim.SGD
    public = [name for name in dir(sparsembed) if not name.startswith("_")]
    assert {"Word2Vec", "Vectors", "parallel", "ParallelModel", "HashEmbedding", "RowSparse", "optim",
            "UserError"} <= set(public)
    for name in public:
        assert getattr(sparsembed, name) is not None, name


def test_single_process_sync_is_a_local_coalesce() -> None:
    model = _model()
    pm = parallel(model)
    assert pm.world_size == 1
    _loss(pm, _batch(0, 0)).backward()
    local = model.user.local_gradient()
    stats = pm.sync()
    assert all(s.bytes_sent == 0 for s in stats)
    assert torch.equal(model.user.gradient()[1], local[1]) and model.item.weight.grad.is_coalesced()


def _train_fp16(steps: int) -> dict:
    import torch.distributed as dist

    rank = dist.get_rank()
    model = _model()
    pm = parallel(model, values="fp16")  # half-precision rows on the wire: per-table exchanges
    opt = optim.SGD(pm, lr=0.1)
    for step in range(steps):
        opt.zero_grad()
        _loss(pm, _batch(step, rank)).backward()
        pm.sync()
        opt.step()
    return _state(model)


def test_fp16_wire_is_close_and_replicas_identical(pool: DistPool) -> None:
    results = pool.run(_train_fp16, 2)
    ref = _train_reference("sgd", 2)
    for k in ref:
        assert torch.equal(results[0][k], results[1][k]), k
        if not k.endswith(".keys"):
            torch.testing.assert_close(results[0][k], ref[k], rtol=0, atol=1e-3, msg=k)


def _sparse_grad(p: nn.Parameter) -> torch.Tensor:
    return p.grad.to_dense() if p.grad is not None else torch.zeros_like(p)


def _add_keyed(total: dict, keys: torch.Tensor, vals: torch.Tensor) -> None:
    for key, row in zip(keys.tolist(), vals, strict=True):
        total[key] = total.get(key, torch.zeros(DIM, dtype=torch.float64)) + row.double()


def _train_int8_bookkeeping(steps: int, flush: bool) -> dict:
    """Rounded int8 rows with error feedback: this rank's own gradients summed, the exchanged sums summed
    (average=False), and what is still pending at the end (after ``flush_residuals`` when ``flush``)."""
    import torch.distributed as dist

    rank = dist.get_rank()
    model = _model()
    pm = parallel(model, values="int8")
    opt = optim.SGD(pm, lr=0.1)
    own = {"item": torch.zeros(40, DIM, dtype=torch.float64), "user": {}}
    summed = {"item": torch.zeros(40, DIM, dtype=torch.float64), "user": {}}
    for step in range(steps):
        opt.zero_grad()
        _loss(pm, _batch(step, rank)).backward()
        own["item"] += _sparse_grad(model.item.weight).double()
        _add_keyed(own["user"], *model.user.local_gradient())
        pm.sync(average=False)
        summed["item"] += _sparse_grad(model.item.weight).double()
        _add_keyed(summed["user"], *model.user.gradient())
        opt.step()
    if flush:
        opt.zero_grad()
        pm.flush_residuals(average=False)
        summed["item"] += _sparse_grad(model.item.weight).double()
        _add_keyed(summed["user"], *model.user.gradient())
    names = {id(p): name for name, p in pm.families.sparse + pm.families.hashed}
    pending = {"item": torch.zeros(40, DIM, dtype=torch.float64), "user": {}}
    item_name, user_name = names[id(model.item.weight)], names[id(model.user)]
    if item_name in pm.residuals:
        r = pm.residuals[item_name]
        pending["item"][r.ids] = r.values.double()
    if user_name in pm.residuals:
        _add_keyed(pending["user"], pm.residuals[user_name].ids, pm.residuals[user_name].values)
    return {"own": own, "summed": summed, "pending": pending, "state": _state(model)}


@pytest.mark.parametrize("flush", [False, True])
def test_int8_rows_with_error_feedback_lose_nothing(pool: DistPool, flush: bool) -> None:
    """``parallel(model, values="int8")``: over many steps the exchanged sums add up to both ranks' gradients less
    what each still keeps pending (its rounding residual), for a sparse weight and a HashEmbedding; the residual is
    non-zero (int8 rounds) and, after ``flush_residuals``, nothing is pending and the sums are the gradients'."""
    results = pool.run(_train_int8_bookkeeping, 12, flush)
    a, b = results
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k  # replicas identical
    got = a["summed"]["item"]
    expected = a["own"]["item"] + b["own"]["item"] - a["pending"]["item"] - b["pending"]["item"]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    keys = set(a["own"]["user"]) | set(b["own"]["user"])
    zero = torch.zeros(DIM, dtype=torch.float64)
    for key in keys:
        want = sum((r["own"]["user"].get(key, zero) - r["pending"]["user"].get(key, zero)) for r in results)
        torch.testing.assert_close(a["summed"]["user"].get(key, zero), want, rtol=0, atol=1e-5)
    pending = sum(float(r["pending"]["item"].abs().sum()) for r in results)
    pending += sum(float(v.abs().sum()) for r in results for v in r["pending"]["user"].values())
    assert (pending == 0) == flush
    if not flush:  # what int8 dropped is small against the gradients, but there
        assert 0 < a["pending"]["item"].abs().max() < 0.01 * a["own"]["item"].abs().max()


def test_parallel_refuses_an_unknown_wire_format() -> None:
    with pytest.raises(UserError, match="parallel: values must be one of fp32, fp16, bf16, int8, got 'int4'"):
        parallel(_model(), values="int4")


def test_docs_call_parallel_the_function() -> None:
    """`sparsembed.parallel` is a function (there is no `sparsembed.parallel` module): the README, the guide and the
    examples name it as the call users write, `sparsembed.parallel(model)`."""
    import re

    import sparsembed

    assert callable(sparsembed.parallel) and sparsembed.parallel is parallel
    root = Path(__file__).resolve().parents[1]
    texts = [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted((root / "examples").glob("*.py"))]
    for path in texts:
        for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
            assert not re.search(r"sparsembed\.parallel(?![(\w])", line), f"{path.name}:{number}: {line}"


def test_sync_leaves_the_callers_ids_as_they_were() -> None:
    """nn.Embedding's sparse gradient can hold a view of the input ids; coalescing must not sort them in place."""
    from sparsembed.nn.parallel import parallel

    emb = torch.nn.Embedding(10, 3, sparse=True)
    ids = torch.from_numpy(np.array([5, 1, 5, 0, 9]))
    pm = parallel(emb)
    (pm(ids) * 2).sum().backward()
    pm.sync()
    assert ids.tolist() == [5, 1, 5, 0, 9]
    assert emb.weight.grad.coalesce().indices()[0].tolist() == [0, 1, 5, 9]
