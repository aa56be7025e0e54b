"""Recommender benchmark: ``sparsembed.nn.parallel`` against PyTorch DDP on the same model, data and batches.

Ours: users in a HashEmbedding over 2^40 ids, items ``nn.Embedding(sparse=True)``, ``pm.sync()``, sparsembed's
lazy Adam. DDP: users in an ``nn.Embedding`` over compact indices (DDP cannot hold a 2^40 table), items the
same; ``sparse=True`` (gloo all-reduces sparse gradients; torch's SparseAdam + Adam) and ``sparse=False``
(dense all-reduce of both tables; torch Adam). Every run uses the same global batches, split over the workers,
and one thread per worker.

    python benchmarks/bench_ddp.py --workers 1 2 --json benchmarks/results/ddp.json

``--systems sparsembed-int8`` (or ``-fp16``, ``-bf16``) runs ours with rounded rows on the wire, per-table
exchanges and error feedback (``parallel(model, values=...)``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import recommender  # noqa: E402
from recommender import MF, Config, batches, launch, make_data, rmse  # noqa: E402


def train_ddp(cfg: Config, sparse: bool) -> dict[str, Any]:
    """The recommender under DDP; bytes per step are the payload of gloo's sparse all-gather or dense ring."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    data = make_data(cfg)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    torch.manual_seed(cfg.seed)
    model = MF(cfg, hashed_users=False)
    if not sparse:
        model.user.sparse = model.item.sparse = False
    net: nn.Module = DDP(model) if world > 1 else model
    emb = [model.user.weight, model.item.weight]
    opts = [torch.optim.SparseAdam(emb, lr=cfg.lr), torch.optim.Adam([model.bias], lr=cfg.lr)] if sparse else [
        torch.optim.Adam(model.parameters(), lr=cfg.lr)
    ]
    tr = data["train"]
    plan = [batches(tr["y"].shape[0], cfg, epoch) for epoch in range(cfg.epochs)]
    total = sum(len(p) for p in plan)
    dense_bytes = sum(p.numel() * 4 for p in model.parameters())
    steps, step_s, sent = 0, 0.0, 0
    for epoch_batches in plan:
        for b in epoch_batches:
            t0 = time.perf_counter()
            mine = b.chunk(world)[rank]
            for o in opts:
                o.zero_grad()
                for g in o.param_groups:
                    g["lr"] = cfg.lr * (1.0 - steps / total)
            pred, sq = net(tr["user_index"][mine], tr["item"][mine])
            ((pred - tr["y"][mine]).pow(2) + cfg.l2 * sq).mean().backward()
            for o in opts:
                o.step()
            step_s += time.perf_counter() - t0
            steps += 1
            if world > 1 and sparse:  # coalesced rows (8-byte index + dim floats) to each peer, plus the bias
                rows = tr["user_index"][mine].unique().numel() + tr["item"][mine].unique().numel()
                sent += (world - 1) * rows * (8 + 4 * cfg.dim) + 4
            elif world > 1:
                sent += 2 * (world - 1) * dense_bytes // world
    return {
        "system": "ddp-sparse" if sparse else "ddp-dense",
        "workers": world,
        "rmse": rmse(model, data["test"], "user_index"),
        "noise_floor": data["noise_floor"],
        "steps": steps,
        "step_ms": 1e3 * step_s / steps,
        "bytes_per_step": sent / steps,
    }


def train_ours(cfg: Config) -> dict[str, Any]:
    res = recommender.train(cfg)
    res.pop("state")
    return {"system": "sparsembed" if cfg.values == "fp32" else f"sparsembed-{cfg.values}", **res}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--users", type=int, default=Config.users)
    ap.add_argument("--items", type=int, default=Config.items)
    ap.add_argument("--interactions", type=int, default=Config.interactions)
    ap.add_argument("--epochs", type=int, default=Config.epochs)
    ap.add_argument("--systems", nargs="+", default=["sparsembed", "ddp-sparse", "ddp-dense"])
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    cfg = replace(Config(), users=a.users, items=a.items, interactions=a.interactions, epochs=a.epochs)
    runs = []
    for w in a.workers:
        for system in a.systems:
            if system.startswith("sparsembed"):  # sparsembed-fp16, -bf16, -int8: rounded rows, error feedback
                fn, args = train_ours, (replace(cfg, values=system.partition("-")[2] or "fp32"),)
            else:
                fn, args = train_ddp, (cfg, system == "ddp-sparse")
            crashes = []
            while True:  # torch's sparse all-reduce on gloo sometimes aborts a worker (heap corruption): count it
                t0 = time.perf_counter()
                try:
                    res = launch(fn, args, w)
                    break
                except RuntimeError as exc:
                    crashes.append(str(exc))
                    print(f"{system} x {w}: {exc}; retrying", file=sys.stderr, flush=True)
                    if len(crashes) >= 3:
                        raise
            res["wall_s"] = time.perf_counter() - t0
            res["crashes"] = crashes
            res["rmse_over_floor"] = res["rmse"] / res["noise_floor"]
            runs.append(res)
            print(json.dumps(res), flush=True)
    print("\n| system | workers | step ms | bytes/step sent | test RMSE / noise floor |\n|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r['system']} | {r['workers']} | {r['step_ms']:.2f} | {r['bytes_per_step']:,.0f} | "
            f"{r['rmse_over_floor']:.3f} |"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"config": asdict(cfg), "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
