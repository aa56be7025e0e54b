"""Benchmark the sparse gradient exchange (issue 4) against what PyTorch does, on gloo over loopback.

    .venv/bin/python benchmarks/bench_exchange.py --nproc 2 --rows 200000 --dim 128 --ids 8192 --json
    .venv/bin/python benchmarks/bench_exchange.py --sweep --json

Per step and rank, ``--ids`` row ids are drawn from a Zipf(1) law over the rows after a random permutation,
duplicates included (what one CBOW batch's gradient holds), with ``dim`` random float32 values each. Timed, with a
barrier before each step and the slowest rank's time kept:

* ``ours``: :func:`sparsembed.exchange.replicated` (coalesce, encode, one eager round of sizes and messages,
  decode, merge; sparse or dense by density), with each rank's per-phase medians (``phases_ms``, from
  ``ExchangeStats.phases``);
* ``torch_sparse``: ``dist.all_reduce`` of the uncoalesced int64 COO gradient, as DDP does for
  ``nn.Embedding(sparse=True)``;
* ``dense``: ``dist.all_reduce`` of the full ``rows x dim`` float32 gradient.

``--sweep`` varies the fraction of distinct rows touched (each set drawn by Zipf weight, plus half as many
duplicate ids), up to every row. Medians over ``--steps`` steps after ``--warmup``. Torch uses one thread a rank.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue
import socket
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SWEEP = [0.001, 0.01, 0.03, 0.1, 0.2, 0.4, 0.7, 1.0]


def zipf_ids(rng: np.random.Generator, perm: np.ndarray, n: int) -> np.ndarray:
    """``n`` ids drawn from Zipf(1) over ``len(perm)`` rows, rank k being row ``perm[k]``."""
    cdf = np.cumsum(1.0 / np.arange(1, perm.shape[0] + 1))
    return perm[np.searchsorted(cdf, rng.random(n) * cdf[-1])].astype(np.int64)


def density_ids(rng: np.random.Generator, perm: np.ndarray, density: float) -> np.ndarray:
    """About ``density * rows`` distinct rows (Zipf-weighted, without replacement) plus half as many duplicates."""
    rows = perm.shape[0]
    k = max(1, round(density * rows))
    weights = 1.0 / np.arange(1, rows + 1)
    keys = rng.exponential(size=rows) / weights
    chosen = perm[np.argpartition(keys, k - 1)[:k]] if k < rows else perm.copy()
    dups = chosen[np.minimum(rng.zipf(1.5, k // 2) - 1, k - 1)]
    return rng.permutation(np.concatenate([chosen, dups])).astype(np.int64)


def _time(dist: Any, torch: Any, fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """Seconds the slowest rank spent in ``fn(*args, **kwargs)`` after a barrier, and ``fn``'s result."""
    dist.barrier()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    dist.all_reduce(dt, op=dist.ReduceOp.MAX)  # the step lasts as long as its slowest rank
    return float(dt), out


def _rank_main(rank: int, nproc: int, port: int, cfg: dict, out: Any) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    import torch
    import torch.distributed as dist

    from sparsembed import exchange
    from sparsembed.sparse import RowSparse

    torch.set_num_threads(1)
    url = f"tcp://127.0.0.1:{port}"
    dist.init_process_group("gloo", init_method=url, rank=rank, world_size=nproc, timeout=timedelta(seconds=300))
    rows, dim = cfg["rows"], cfg["dim"]
    perm = np.random.default_rng(cfg["seed"]).permutation(rows)  # the same row ranking on every rank
    rng = np.random.default_rng([cfg["seed"], rank])
    results = []
    dense = torch.zeros(rows, dim)
    for point in cfg["points"]:
        grads = []
        for _ in range(min(4, cfg["steps"])):  # a few different gradients, cycled
            ids = zipf_ids(rng, perm, point["ids"]) if "ids" in point else density_ids(rng, perm, point["density"])
            grads.append((torch.from_numpy(ids), torch.randn(ids.shape[0], dim)))
        times: dict[str, list[float]] = {"ours": [], "torch_sparse": [], "dense": []}
        phases: dict[str, list[float]] = {}
        mode, distinct = "", 0
        for step in range(cfg["warmup"] + cfg["steps"]):
            ids, vals = grads[step % len(grads)]
            rs = RowSparse(ids, vals.clone(), rows, check=False)  # coalescing is in place: a fresh copy a step
            t_ours, (_, stats) = _time(dist, torch, exchange.replicated, rs, values=cfg["values"])
            coo = torch.sparse_coo_tensor(ids[None], vals, (rows, dim))
            t_coo, _ = _time(dist, torch, dist.all_reduce, coo)
            t_dense = _time(dist, torch, dist.all_reduce, dense)[0] if not cfg["skip_dense"] else 0.0
            if step >= cfg["warmup"]:
                times["ours"].append(t_ours)
                times["torch_sparse"].append(t_coo)
                times["dense"].append(t_dense)
                mode, distinct = stats.mode, rs.n
                for k, v in stats.phases.items():
                    phases.setdefault(k, []).append(v)
        res = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        mine = {k: round(1e3 * statistics.median(v), 3) for k, v in phases.items()}
        every: list[Any] = [None] * nproc
        dist.all_gather_object(every, mine)  # each rank's own per-phase medians
        entry = {**point, "distinct_rows": distinct, "mode": mode, **{f"{k}_ms": v for k, v in res.items()}}
        results.append({**entry, "phases_ms": every})
    if rank == 0:
        out.put(results)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(nproc: int, cfg: dict, timeout: float) -> list[dict]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, nproc, port, cfg, out), daemon=True) for r in range(nproc)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    try:
        while True:  # a rank that dies leaves the others blocked in a collective: stop at the first death
            try:
                return out.get(timeout=1.0)
            except queue.Empty:
                failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if failed or time.monotonic() > deadline:
                    raise RuntimeError(f"bench_exchange: ranks failed (exit codes {failed}) or timed out") from None
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()


def run_exchange_bench(
    nproc: int = 2,
    rows: int = 200000,
    dim: int = 128,
    ids: int = 8192,
    *,
    steps: int = 25,
    warmup: int = 5,
    values: str = "fp32",
    sweep: bool = False,
    densities: list[float] | None = None,
    seed: int = 0,
    timeout: float = 1800.0,
) -> dict:
    """Time our exchange, torch's sparse all_reduce and a dense all_reduce; returns a JSON-ready dict.

    The headline figures (``ours_ms``, ``torch_sparse_ms``, ``dense_ms``, speed-ups) are for ``ids`` Zipf ids a
    rank; with ``sweep`` the dict also holds ``sweep``: one entry per density of distinct rows.
    """
    points: list[dict] = [{"ids": ids}]
    if sweep:
        points += [{"density": d} for d in (densities or SWEEP)]
    cfg = {"rows": rows, "dim": dim, "seed": seed, "steps": steps, "warmup": warmup, "values": values}
    cfg.update(points=points, skip_dense=False)
    t0 = time.time()
    results = _spawn(nproc, cfg, timeout)
    main = results[0]
    out = {
        "nproc": nproc,
        "rows": rows,
        "dim": dim,
        "ids": ids,
        "values": values,
        "steps": steps,
        "distinct_rows": main["distinct_rows"],
        "mode": main["mode"],
        "ours_ms": main["ours_ms"],
        "torch_sparse_ms": main["torch_sparse_ms"],
        "dense_ms": main["dense_ms"],
        "phases_ms": main["phases_ms"],
        "speedup_vs_torch_sparse": main["torch_sparse_ms"] / main["ours_ms"],
        "speedup_vs_dense": main["dense_ms"] / main["ours_ms"],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "seconds": round(time.time() - t0, 1),
    }
    out["targets_met"] = out["speedup_vs_torch_sparse"] >= 4 and out["speedup_vs_dense"] >= 30
    if sweep:
        for r in results[1:]:
            r["never_slower"] = r["ours_ms"] <= min(r["torch_sparse_ms"], r["dense_ms"])
        out["sweep"] = results[1:]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--rows", type=int, default=200000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--ids", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--values", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--sweep", action="store_true", help="also vary the density of distinct rows up to 100%%")
    ap.add_argument("--densities", help=f"comma-separated densities for --sweep (default: {SWEEP})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    res = run_exchange_bench(
        args.nproc, args.rows, args.dim, args.ids, steps=args.steps, warmup=args.warmup, values=args.values,
        sweep=args.sweep, seed=args.seed,
        densities=[float(d) for d in args.densities.split(",")] if args.densities else None,
    )
    if args.json:
        print(json.dumps(res, indent=1))
        return
    print(f"ours {res['ours_ms']:.2f} ms  torch sparse {res['torch_sparse_ms']:.2f} ms  dense {res['dense_ms']:.2f} ms")
    print(f"speed-up: {res['speedup_vs_torch_sparse']:.1f}x vs torch sparse, {res['speedup_vs_dense']:.1f}x vs dense")
    for rank, ph in enumerate(res["phases_ms"]):
        print(f"rank {rank} phases (ms, medians): " + ", ".join(f"{k} {v:.2f}" for k, v in ph.items()))
    for r in res.get("sweep", []):
        print(
            f"density {r['density']:<6} distinct {r['distinct_rows']:>7} {r['mode']:<6} ours {r['ours_ms']:8.2f}"
            f"  torch {r['torch_sparse_ms']:8.2f}  dense {r['dense_ms']:8.2f}  never slower: {r['never_slower']}"
        )


if __name__ == "__main__":
    main()
