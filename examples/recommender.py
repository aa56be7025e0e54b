"""Recommender on a synthetic interaction log, trained data-parallel with ``sparsembed.parallel(model)``.

The log is generated: users and items drawn from shifted Zipf laws (a few heavy users and blockbuster items, a
long tail), ratings ``<p_u, q_i> + noise`` with planted rank-``rank`` factors and Gaussian noise of known
standard deviation, so the best achievable test RMSE (the noise floor) is known. User ids are scattered over a
2^40 id space and embedded by a :class:`sparsembed.HashEmbedding` (the hashed family: no vocabulary pass, no dense
table); items by an ``nn.Embedding(sparse=True)`` (the sparse family); a global bias is the dense family.

Each worker takes its half of every global batch, so 1 and 2 workers see the same batches and end with the same
parameters (up to float rounding)::

    python examples/recommender.py --workers 1 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import socket
import time
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from sparsembed import HashEmbedding, optim, parallel

ID_SPACE = 1 << 40


@dataclass
class Config:
    """Problem size and training schedule (defaults: the BENCHMARKS run)."""

    users: int = 2000
    items: int = 1000
    rank: int = 4  # planted factor rank
    dim: int = 8  # model factor width (over-parameterized: the L2 penalty shrinks the extra columns)
    interactions: int = 400_000
    noise: float = 0.5  # standard deviation of the planted noise
    shift: float = 20.0  # Zipf-Mandelbrot shift: popularity of the k-th user/item ~ 1 / (k + shift)
    test_frac: float = 0.1
    epochs: int = 10
    batch: int = 2048  # global batch, split over workers
    lr: float = 0.03
    l2: float = 0.02  # per-example L2 penalty on the rows used
    seed: int = 0
    values: str = "fp32"  # sparse rows on the wire: fp32, fp16, bf16, int8 (rounded ones with error feedback)


# -- data -------------------------------------------------------------------------------------------------------
def make_data(cfg: Config) -> dict[str, Any]:
    """Train/test interaction arrays, the planted factors' noise-free ratings and the noise floor."""
    rng = np.random.default_rng(cfg.seed)

    def zipf(n: int, size: int) -> np.ndarray:
        p = 1.0 / (np.arange(n) + cfg.shift)
        return rng.choice(n, size=size, p=p / p.sum())

    scale = cfg.rank**-0.25  # <p, q> has unit variance
    p_true = rng.normal(0, scale, (cfg.users, cfg.rank))
    q_true = rng.normal(0, scale, (cfg.items, cfg.rank))
    u = zipf(cfg.users, cfg.interactions)
    i = zipf(cfg.items, cfg.interactions)
    clean = np.einsum("nr,nr->n", p_true[u], q_true[i])
    y = clean + rng.normal(0, cfg.noise, cfg.interactions)
    # Users are named by scattered 40-bit ids: an odd multiplier is a bijection mod 2^40.
    ids = (u.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15 & (ID_SPACE - 1)) + np.uint64(12345)) % np.uint64(
        ID_SPACE
    )
    n_test = int(cfg.interactions * cfg.test_frac)
    tensors = {
        "user": torch.from_numpy(ids.astype(np.int64)),
        "user_index": torch.from_numpy(u.astype(np.int64)),
        "item": torch.from_numpy(i.astype(np.int64)),
        "y": torch.from_numpy(y.astype(np.float32)),
    }
    train = {k: v[n_test:] for k, v in tensors.items()}
    test = {k: v[:n_test] for k, v in tensors.items()}
    floor = float(np.sqrt(np.mean((y[:n_test] - clean[:n_test]) ** 2)))  # the planted model's own test RMSE
    return {"train": train, "test": test, "noise_floor": floor}


# -- model ------------------------------------------------------------------------------------------------------
class MF(nn.Module):
    """Matrix factorization: ``<user(u), item(i)> + bias``."""

    def __init__(self, cfg: Config, *, hashed_users: bool = True) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        if hashed_users:
            self.user: nn.Module = HashEmbedding(cfg.dim, seed=cfg.seed + 2, init_scale=0.1)
        else:  # the DDP baseline: a dense table over compact user indices
            self.user = nn.Embedding(cfg.users, cfg.dim, sparse=True)
            with torch.no_grad():
                self.user.weight.uniform_(-0.1, 0.1, generator=gen)
        self.item = nn.Embedding(cfg.items, cfg.dim, sparse=True)
        with torch.no_grad():
            self.item.weight.uniform_(-0.1, 0.1, generator=gen)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions and the per-example squared norm of the rows used (for the L2 penalty)."""
        pu, qi = self.user(user), self.item(item)
        return (pu * qi).sum(-1) + self.bias, (pu * pu).sum(-1) + (qi * qi).sum(-1)


def batches(n: int, cfg: Config, epoch: int) -> list[torch.Tensor]:
    """The global batches of one epoch: a permutation seeded by (seed, epoch), the same on every worker."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
    return [order[s : s + cfg.batch] for s in range(0, n - cfg.batch + 1, cfg.batch)]


def rmse(model: MF, data: dict[str, torch.Tensor], user_key: str = "user") -> float:
    """Test RMSE (no gradient; every worker evaluates the same rows, so replicas stay identical)."""
    with torch.no_grad():
        pred, _ = model(data[user_key], data["item"])
        return float((pred - data["y"]).pow(2).mean().sqrt())


def train(cfg: Config, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train on this process's share of every batch (all of it without a process group); returns metrics."""
    data = make_data(cfg) if data is None else data
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    torch.manual_seed(cfg.seed)
    model = MF(cfg)
    pm = parallel(model, values=cfg.values)
    opt = optim.Adam(pm, lr=cfg.lr)
    tr = data["train"]
    steps, sync_s, step_s, sent = 0, 0.0, 0.0, 0
    plan = [batches(tr["y"].shape[0], cfg, epoch) for epoch in range(cfg.epochs)]
    total = sum(len(p) for p in plan)
    for epoch_batches in plan:
        for b in epoch_batches:
            t0 = time.perf_counter()
            opt.lr = cfg.lr * (1.0 - steps / total)  # linear decay: Adam's step noise would sit above the floor
            mine = b.chunk(world)[rank]
            opt.zero_grad()
            pred, sq = pm(tr["user"][mine], tr["item"][mine])
            loss = ((pred - tr["y"][mine]).pow(2) + cfg.l2 * sq).mean()
            loss.backward()
            t1 = time.perf_counter()
            stats = pm.sync()
            sync_s += time.perf_counter() - t1
            sent += sum(s.bytes_sent for s in stats)
            opt.step()
            step_s += time.perf_counter() - t0
            steps += 1
    return {
        "workers": world,
        "rmse": rmse(model, data["test"]),
        "noise_floor": data["noise_floor"],
        "steps": steps,
        "step_ms": 1e3 * step_s / max(steps, 1),
        "sync_ms": 1e3 * sync_s / max(steps, 1),
        "bytes_per_step": sent / max(steps, 1),
        "user_rows": len(model.user),
        "state": {k: v for k, v in _flat_state(model).items()},
    }


def _flat_state(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith("_extra_state"):
            out[k + ".keys"], out[k + ".weight"] = v["keys"], v["weight"]
        else:
            out[k] = v.clone()
    return out


# -- launching workers ------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, fn: Any, args: tuple, out: Any) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        res = fn(*args)
        out.put((rank, res if rank == 0 else None))
    finally:
        dist.destroy_process_group()


def launch(fn: Any, args: tuple, workers: int) -> Any:
    """Run ``fn(*args)`` on ``workers`` gloo processes (in this process for 1); returns rank 0's result."""
    if workers == 1:
        torch.set_num_threads(1)  # the same per-worker compute as the multi-process runs
        return fn(*args)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, workers, port, fn, args, out)) for r in range(workers)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    while len(results) < workers:
        try:
            rank, res = out.get(timeout=1.0)
            results[rank] = res
        except queue.Empty:
            failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if failed:  # a worker died: the others may wait forever in a collective
                for p in procs:
                    p.kill()
                raise RuntimeError(f"recommender: a worker failed (exit codes {failed})") from None
    for p in procs:
        p.join(60)
    return results[0]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--epochs", type=int, default=Config.epochs)
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    cfg = replace(Config(), epochs=a.epochs)
    rows = []
    for w in a.workers:
        t0 = time.perf_counter()
        res = launch(train, (cfg,), w)
        res.pop("state")
        res["wall_s"] = time.perf_counter() - t0
        res["rmse_over_floor"] = res["rmse"] / res["noise_floor"]
        rows.append(res)
        print(json.dumps(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"config": asdict(cfg), "runs": rows}, f, indent=1)


if __name__ == "__main__":
    main()
