"""Benchmark the sparse gradient exchange against what PyTorch does, on gloo: ``sparsembed bench exchange``.

    sparsembed bench exchange --nproc 2 --rows 200000 --dim 128 --ids 8192 --json
    sparsembed bench exchange --sweep --json
    sparsembed bench exchange --device cuda --backend nccl --nproc 1 --json
    sparsembed bench exchange --device cuda --nproc 2 --json
    torchrun --nnodes 2 --nproc-per-node 1 --node-rank I --master-addr A --master-port P \\
        -m sparsembed bench exchange --json

Per step and rank, ``ids`` row ids are drawn from a Zipf(1) law over the rows after a random permutation,
duplicates included (what one CBOW batch's gradient holds), with ``dim`` random float32 values each. Timed, with a
barrier, a short pause (:data:`SETTLE`) and, on one host, a shared-memory barrier (:data:`ALIGN`) before each call
and the slowest rank's time kept (spawned ranks share one clock, so they also report ``start_skew_ms``, from the
first rank's start to the last's, and ``from_last_arrival_ms``: from the last rank's start to the last rank's end,
leaving out the time a rank waits for a peer still starting); each method's input is made after the pause,
untimed, once the rank has pushed out of its caches what the previous call left (``inputs="fresh"``, the
default: only the input in cache, as a backward pass leaves it; :data:`EVICT_BYTES`), or before the barrier
(``"settled"``):

* ``ours``: :func:`sparsembed.comm.replicated.replicated` (coalesce, encode, one eager round of sizes and messages,
  decode, merge; sparse or dense by density), with each rank's per-phase medians (``phases_ms``, from
  ``ExchangeStats.phases``);
* ``torch_sparse``: ``dist.all_reduce`` of the uncoalesced int64 COO gradient, as DDP does for
  ``nn.Embedding(sparse=True)``;
* ``dense``: ``dist.all_reduce`` of the full ``rows x dim`` float32 gradient.

``--device cuda`` puts every gradient on a CUDA device (rank ``r`` on device ``r`` mod the devices, ``LOCAL_RANK``
under torchrun) and waits for the device before stopping each clock: ``ours`` is then torch's coalesce on the
device and :func:`sparsembed.comm.replicated.replicated_rows` (the rows through the host for the codec, the sum
back on the device); over ``--backend nccl`` (CUDA tensors only; NCCL cannot put two ranks on one GPU) torch has
no sparse all-reduce (pytorch/pytorch#22400), so ``torch_sparse_ms`` is null and the comparison is ``dense``.

``sweep`` varies the fraction of distinct rows touched (each set drawn by Zipf weight, plus half as many
duplicate ids), up to every row. Medians over ``steps`` steps after ``warmup``. Torch uses one thread a rank.

Two ways to run the ranks: by default :func:`run_exchange_bench` spawns ``nproc`` processes on this host (gloo over
127.0.0.1, ``GLOO_SOCKET_IFNAME=lo`` unless set); started by ``torchrun`` (``RANK``, ``WORLD_SIZE`` and
``MASTER_ADDR`` in the environment) this process is one rank: it joins the group with ``env://`` and runs the
benchmark itself, so ranks can sit on different hosts (set ``GLOO_SOCKET_IFNAME`` to the interface between them).

Just over 500 lines: one harness whose timing discipline (barriers, pauses, cache eviction, device waits) every
method shares; the methods themselves are the comm package's.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import queue
import statistics
import time
from datetime import timedelta
from functools import partial
from typing import Any

import numpy as np

from sparsembed.comm.policy import Transport
from sparsembed.dataparallel.launch import free_port
from sparsembed.errors import UserError
from sparsembed.rows.values import Values

__all__ = ["SWEEP", "INPUTS", "ALIGN", "ROWS_ENCODINGS", "DEVICES", "BACKENDS", "run_exchange_bench", "rank_main",
           "under_torchrun", "zipf_ids", "density_ids", "format_text"]

#: Densities of distinct rows that ``sweep`` measures (fractions of ``rows``).
SWEEP = [0.001, 0.01, 0.03, 0.1, 0.2, 0.4, 0.7, 1.0]
#: Row-set encodings ``ours`` may be forced to (``auto``: the codec's choice).
ROWS_ENCODINGS = ("auto", "index", "bitmap", "roaring")
#: ``--device``: where the gradients live; ``--backend``: the process group's (NCCL needs ``--device cuda``).
DEVICES = ("cpu", "cuda")
BACKENDS = ("gloo", "nccl")
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR")


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


def under_torchrun(environ: Any = None) -> bool:
    """True when ``torchrun`` (or any launcher setting ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``) started us."""
    environ = os.environ if environ is None else environ
    return all(environ.get(k) for k in _TORCHRUN_VARS)


#: Seconds every rank sleeps between the barrier and a timed call. Right after a large all-reduce, one rank of
#: a gloo barrier returns well after the other, and this pause absorbs the lag (measured, see BENCHMARKS.md):
#: without it every method's time would include it.
SETTLE = 2e-3


#: ``--align``: how ranks line up their starts right before a timed call. ``auto``: through shared-memory flags
#: (:class:`sparsembed.comm.shm.HostBarrier`) when every rank is on this host, else nothing more than the barrier;
#: ``barrier``: never (each rank starts when its barrier, pause and input are done). With ``barrier``, ranks on
#: shared cores start apart by a good part of a sparse exchange's time, more before torch's calls than before ours,
#: and every method's slowest-rank time includes that wait: a property of the harness, not of the exchange (which
#: ``from_last_arrival_ms`` leaves out after the fact); the flags line them up far closer (measured, see
#: BENCHMARKS.md).
ALIGN = ("auto", "barrier")


#: Bytes each rank writes to push out of the caches what the previous timed call left, larger than the
#: last-level cache of common servers. Without it, each method
#: would inherit the caches of the one before: ours ran after the dense all-reduce, whose 100 MB leave every
#: buffer cold, and torch's sparse all-reduce after ours, which leaves them warm.
EVICT_BYTES = 64 << 20


def _evict(buf: np.ndarray) -> None:
    buf += 1.0


#: ``--inputs``: when each method's gradient is made, untimed: right before the timed call (``fresh``, as a
#: backward pass leaves it) or before the barrier and the settling pause (``settled``).
INPUTS = ("fresh", "settled")


def _time(dist: Any, torch: Any, dev: Any, make: Any, evict: Any, align: Any, fn: Any, **kwargs: Any
          ) -> tuple[float, float, float, Any]:
    """Seconds the slowest rank spent in ``fn(make(), **kwargs)`` after a barrier, :data:`SETTLE` and ``align()``
    (see :data:`ALIGN`); seconds from the last rank's start to the last rank's end and from the first rank's start
    to the last rank's start (clocks of one host); and ``fn``'s result. ``evict`` (``inputs="fresh"``): after the
    pause, ``evict()`` then ``make()`` run untimed, so the caches hold the input, as a backward pass leaves a
    gradient, and none of what the previous call left (its buffers, its peers' bytes); else (``settled``)
    ``make()`` runs before the barrier. On a CUDA ``dev`` the input is ready before the clock starts, and the
    clock stops once the device has finished ``fn``'s work."""
    sync = torch.cuda.synchronize if dev.type == "cuda" else _nothing
    arg = None if evict else make()
    sync()
    dist.barrier()
    time.sleep(SETTLE)
    if evict:
        evict()
        arg = make()
        sync()
    align()
    t0 = time.perf_counter()
    out = fn(arg, **kwargs)
    sync()
    t1 = time.perf_counter()
    every = [torch.zeros(2, dtype=torch.float64, device=dev) for _ in range(dist.get_world_size())]
    dist.all_gather(every, torch.tensor([t0, t1], dtype=torch.float64, device=dev))  # NCCL: device tensors
    starts, ends = [float(e[0]) for e in every], [float(e[1]) for e in every]
    slowest = max(end - start for start, end in zip(starts, ends, strict=True))  # as long as its slowest rank
    return slowest, max(ends) - max(starts), max(starts) - min(starts), out


def rank_main(rank: int, world: int, init_method: str, cfg: dict) -> list[dict]:
    """One rank of the benchmark: join the group (``cfg["backend"]``, gloo by default), time every point of
    ``cfg``, leave the group.

    Returns one entry per point (``cfg["points"]``); the timings are the slowest rank's, so every rank returns
    the same figures (``phases_ms`` holds every rank's own per-phase medians).
    """
    import torch
    import torch.distributed as dist

    from sparsembed.comm.replicated import replicated
    from sparsembed.rows.coalesce import RowSparse

    torch.set_num_threads(1)
    if cfg.get("device", "cpu") == "cuda":  # before joining: NCCL binds this rank to the current device
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    timeout = timedelta(seconds=cfg.get("collective_timeout", 300))
    dist.init_process_group(cfg.get("backend", "gloo"), init_method=init_method, rank=rank, world_size=world,
                            timeout=timeout)
    try:
        return _run_points(rank, world, cfg, torch, dist, replicated, RowSparse)
    finally:
        dist.destroy_process_group()


def _run_points(rank: int, world: int, cfg: dict, torch: Any, dist: Any, replicated: Any, RowSparse: Any) -> list:
    rows, dim = cfg["rows"], cfg["dim"]
    on_device = cfg.get("device", "cpu") == "cuda"
    dev = torch.device("cuda", torch.cuda.current_device()) if on_device else torch.device("cpu")
    nccl = cfg.get("backend", "gloo") == "nccl"
    # shared-memory flags announce over gloo; NCCL lines ranks up by its barrier alone
    align, aligned_by = _aligner("barrier" if nccl else cfg.get("align", "auto"))
    timed = partial(_time, dist, torch, dev)
    perm = np.random.default_rng(cfg["seed"]).permutation(rows)  # the same row ranking on every rank
    rng = np.random.default_rng([cfg["seed"], rank])
    results = []
    dense = torch.zeros(rows, dim, device=dev)
    # one buffer for every point and step: a fresh 64 MiB each point would pay its page faults again
    evict = partial(_evict, np.ones(EVICT_BYTES // 4, np.float32)) if cfg.get("inputs", "fresh") == "fresh" else None
    for point in cfg["points"]:
        grads = []
        for _ in range(min(4, cfg["steps"])):  # a few different gradients, cycled
            ids = zipf_ids(rng, perm, point["ids"]) if "ids" in point else density_ids(rng, perm, point["density"])
            grads.append((torch.from_numpy(ids).to(dev), torch.randn(ids.shape[0], dim).to(dev)))
        times: dict[str, list[float]] = {"ours": [], "torch_sparse": [], "dense": []}
        spans: dict[str, list[float]] = {"ours": [], "torch_sparse": [], "dense": []}
        skews: dict[str, list[float]] = {"ours": [], "torch_sparse": [], "dense": []}
        phases: dict[str, list[float]] = {}
        mode, encoding, distinct = "", "", 0
        for step in range(cfg["warmup"] + cfg["steps"]):
            ids, vals = grads[step % len(grads)]
            options = {"rows": cfg["rows_encoding"], "values": cfg["values"], "transport": cfg.get("transport", "auto")}
            if on_device:
                *t_ours, (_, stats) = timed(partial(_pair, ids, vals), evict, align, _ours_on_device, num_rows=rows,
                                            **options)
            else:
                *t_ours, (_, stats) = timed(partial(_row_sparse, RowSparse, ids, vals, rows), evict, align,
                                            replicated, **options)
            t_coo = None if nccl else timed(partial(_coo, torch, ids, vals, rows), evict, align, dist.all_reduce)[:3]
            *t_dense, _ = timed(partial(_same, dense), evict, align, dist.all_reduce)
            if step >= cfg["warmup"]:
                for key, measured in (("ours", t_ours), ("torch_sparse", t_coo), ("dense", t_dense)):
                    if measured is None:  # torch has no sparse all-reduce over NCCL
                        continue
                    slowest, span, skew = measured
                    times[key].append(slowest)
                    spans[key].append(span)
                    skews[key].append(skew)
                mode, encoding, distinct = stats.mode, stats.encoding, stats.rows
                for k, v in {**stats.phases, "total": stats.seconds}.items():
                    phases.setdefault(k, []).append(v)
        res = {k: _median_ms(v) for k, v in times.items()}
        mine = {k: round(1e3 * statistics.median(v), 3) for k, v in phases.items()}
        every: list[Any] = [None] * world
        dist.all_gather_object(every, mine)  # each rank's own per-phase medians
        entry = {**point, "aligned_by": aligned_by, "distinct_rows": distinct, "mode": mode, "encoding": encoding,
                 **{f"{k}_ms": v for k, v in res.items()},
                 "from_last_arrival_ms": {k: _median_ms(v) for k, v in spans.items()},
                 "start_skew_ms": {k: _median_ms(v) for k, v in skews.items()}}
        results.append({**entry, "phases_ms": every})
    return results


def _median_ms(seconds: list[float]) -> float | None:
    """Milliseconds of the median, None for a method not measured (torch's sparse all-reduce over NCCL)."""
    return 1e3 * statistics.median(seconds) if seconds else None


def _aligner(mode: str) -> tuple[Any, str]:
    """What :func:`_time` calls right before starting the clock (see :data:`ALIGN`), and its name for the output.
    Collective."""
    from sparsembed.comm import shm

    if mode == "auto" and shm.one_host():
        return shm.HostBarrier().wait, "shared-memory flags"
    return _nothing, "barrier"


def _nothing() -> None:
    return None


def _row_sparse(cls: Any, ids: Any, vals: Any, rows: int) -> Any:
    """Our input: a new copy of the values (coalescing is in place)."""
    return cls(ids, vals.clone(), rows, check=False)


def _coo(torch: Any, ids: Any, vals: Any, rows: int) -> Any:
    """torch's input: the same new copy, as a sparse COO gradient (``nn.Embedding(sparse=True)``'s)."""
    return torch.sparse_coo_tensor(ids[None], vals.clone(), (rows, vals.shape[1]), check_invariants=False)


def _same(x: Any) -> Any:
    return x


def _pair(ids: Any, vals: Any) -> tuple[Any, Any]:
    """Our input on a device: the ids and a new copy of the values, as a backward pass leaves them."""
    return ids, vals.clone()


def _ours_on_device(grad: tuple[Any, Any], num_rows: int, **options: Any) -> tuple[None, Any]:
    """Ours on device tensors: torch's coalesce there (its seconds added to the phases as ``coalesce_device``),
    then :func:`sparsembed.comm.replicated.replicated_rows`; returns (None, its stats)."""
    from sparsembed.comm.device import coalesce_rows
    from sparsembed.comm.replicated import replicated_rows

    t0 = time.perf_counter()
    ids, vals = coalesce_rows(*grad, num_rows)  # waits for the device: its output size is data-dependent
    t1 = time.perf_counter()
    *_, stats = replicated_rows(ids, vals, num_rows, **options)
    stats.phases = {"coalesce_device": t1 - t0, **stats.phases}
    return None, stats


def _spawned_rank(rank: int, world: int, port: int, cfg: dict, out: Any) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")  # spawned ranks share this host
    results = rank_main(rank, world, f"tcp://127.0.0.1:{port}", cfg)
    if rank == 0:
        out.put(results)


def _spawn(nproc: int, cfg: dict, timeout: float) -> list[dict]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_spawned_rank, args=(r, nproc, port, cfg, out), daemon=True) for r in range(nproc)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    try:
        while True:  # a rank that dies leaves the others blocked in a collective: stop at the first death
            try:
                return out.get(timeout=1.0)
            except queue.Empty:
                failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if failed:
                    raise RuntimeError(f"bench exchange: a rank failed (exit codes {failed})") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"bench exchange: no result after {timeout:g} s") from None
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()


def _check(nproc: int | None, rows: int, dim: int, ids: int, steps: int, warmup: int, values: str,
           rows_encoding: str, densities: list[float] | None, timeout: float) -> None:
    for name, value, low in (("--rows", rows, 1), ("--dim", dim, 1), ("--ids", ids, 0), ("--steps", steps, 1),
                             ("--warmup", warmup, 0)):
        if value < low:
            raise UserError(f"bench exchange: {name} must be >= {low}, got {value}")
    if nproc is not None and nproc < 1:
        raise UserError(f"bench exchange: --nproc must be >= 1, got {nproc}")
    allowed = [v.value for v in Values]
    if values not in allowed:
        raise UserError(f"bench exchange: --values must be one of {', '.join(allowed)}, got {values!r}")
    if rows_encoding not in ROWS_ENCODINGS:
        raise UserError(f"bench exchange: --rows-encoding must be one of {', '.join(ROWS_ENCODINGS)}, "
                        f"got {rows_encoding!r}")
    for d in densities or ():
        if not 0 < d <= 1:
            raise UserError(f"bench exchange: each density must be in (0, 1], got {d}")
    if not timeout > 0:
        raise UserError(f"bench exchange: --timeout must be > 0, got {timeout}")


def run_exchange_bench(
    nproc: int | None = 2,
    rows: int = 200000,
    dim: int = 128,
    ids: int = 8192,
    *,
    steps: int = 25,
    warmup: int = 5,
    values: str = "fp32",
    rows_encoding: str = "auto",
    sweep: bool = False,
    densities: list[float] | None = None,
    seed: int = 0,
    timeout: float = 1800.0,
    distributed: bool | None = None,
    transport: str = "auto",
    inputs: str = "fresh",
    align: str = "auto",
    device: str = "cpu",
    backend: str = "gloo",
) -> dict:
    """Time our exchange, torch's sparse all_reduce and a dense all_reduce; returns a JSON-ready dict.

    The headline figures (``ours_ms``, ``torch_sparse_ms``, ``dense_ms``: medians over steps of the slowest rank,
    and the speed-ups) are for ``ids`` Zipf ids a rank; with ``sweep`` (or ``densities``) the dict also holds
    ``sweep``: one entry per density of distinct rows.

    ``distributed`` (default: :func:`under_torchrun`): this process is one rank of a group launched by torchrun
    and joins it with ``env://`` (``nproc``, if given, must equal ``WORLD_SIZE``); every rank returns the same
    dict. Otherwise ``nproc`` ranks (default 2) are spawned on this host and waited for at most ``timeout`` s.
    ``device="cuda"``: the gradients on CUDA devices; ``backend``: the group's, ``gloo`` or ``nccl`` (``nccl``
    needs ``device="cuda"``; ``torch_sparse_ms`` is then None).

    Raises:
        UserError: a setting out of range, or ``device="cuda"`` without a visible CUDA device.
    """
    _check(nproc, rows, dim, ids, steps, warmup, values, rows_encoding, densities, timeout)
    if distributed is None:
        distributed = under_torchrun()
    points: list[dict] = [{"ids": ids}]
    if sweep or densities:
        points += [{"density": d} for d in (densities or SWEEP)]
    _check_choices(transport, inputs, align, device, backend)
    cfg = {"rows": rows, "dim": dim, "seed": seed, "steps": steps, "warmup": warmup, "values": values,
           "rows_encoding": rows_encoding, "points": points, "transport": transport, "inputs": inputs,
           "align": align, "device": device, "backend": backend}
    t0 = time.time()
    if distributed:
        world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        if nproc is not None and nproc != world:
            raise UserError(f"bench exchange: --nproc {nproc} but torchrun started WORLD_SIZE={world} ranks; "
                            "drop --nproc under torchrun")
        cfg["collective_timeout"] = timeout
        results = rank_main(rank, world, "env://", cfg)
        launcher = "torchrun"
    else:
        world = 2 if nproc is None else nproc
        results = _spawn(world, cfg, timeout)
        launcher = "spawn"
    return _summary(results, cfg, world, launcher, ids, t0)


def _check_choices(transport: str, inputs: str, align: str, device: str = "cpu", backend: str = "gloo") -> None:
    if transport not in [t.value for t in Transport]:
        raise UserError(f"bench exchange: --transport must be {' or '.join(t.value for t in Transport)}, "
                        f"got {transport!r}")
    if inputs not in INPUTS:
        raise UserError(f"bench exchange: --inputs must be one of {', '.join(INPUTS)}, got {inputs!r}")
    if align not in ALIGN:
        raise UserError(f"bench exchange: --align must be one of {', '.join(ALIGN)}, got {align!r}")
    if device not in DEVICES:
        raise UserError(f"bench exchange: --device must be one of {', '.join(DEVICES)}, got {device!r}")
    if backend not in BACKENDS:
        raise UserError(f"bench exchange: --backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "nccl" and device != "cuda":
        raise UserError("bench exchange: --backend nccl needs --device cuda (NCCL carries CUDA tensors only)")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("bench exchange: --device cuda but no CUDA device is visible")


def _summary(results: list[dict], cfg: dict, world: int, launcher: str, ids: int, t0: float) -> dict:
    """:func:`run_exchange_bench`'s dict from every point's results (the headline point first)."""
    main = results[0]
    out = {
        "nproc": world,
        "launcher": launcher,
        "rows": cfg["rows"],
        "dim": cfg["dim"],
        "ids": ids,
        "values": cfg["values"],
        "rows_encoding": cfg["rows_encoding"],
        "transport": cfg["transport"],
        "inputs": cfg["inputs"],
        "align": cfg["align"],
        "device": cfg["device"],
        "backend": cfg["backend"],
        "aligned_by": main["aligned_by"],
        "steps": cfg["steps"],
        "warmup": cfg["warmup"],
        "distinct_rows": main["distinct_rows"],
        "mode": main["mode"],
        "encoding": main["encoding"],
        "ours_ms": main["ours_ms"],
        "torch_sparse_ms": main["torch_sparse_ms"],
        "dense_ms": main["dense_ms"],
        "phases_ms": main["phases_ms"],
        "start_skew_ms": main["start_skew_ms"],
        "speedup_vs_torch_sparse": _ratio(main["torch_sparse_ms"], main["ours_ms"]),
        "speedup_vs_dense": main["dense_ms"] / main["ours_ms"],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "seconds": round(time.time() - t0, 1),
    }
    out["targets_met"] = (out["speedup_vs_torch_sparse"] or 0.0) >= 4 and out["speedup_vs_dense"] >= 30
    if launcher == "spawn":  # one host, one clock: also the time from the last rank's arrival to the last end
        span = main["from_last_arrival_ms"]
        out["from_last_arrival_ms"] = span
        out["from_last_arrival_speedup"] = {"vs_torch_sparse": _ratio(span["torch_sparse"], span["ours"]),
                                            "vs_dense": span["dense"] / span["ours"]}
    if len(results) > 1:
        for r in results[1:]:
            others = [t for t in (r["torch_sparse_ms"], r["dense_ms"]) if t is not None]
            r["never_slower"] = r["ours_ms"] <= min(others)
        out["sweep"] = results[1:]
    return out


def _ratio(num: float | None, den: float) -> float | None:
    return None if num is None else num / den


def _f(x: float | None, spec: str) -> str:
    """``x`` formatted, or ``n/a`` for a method not measured (torch's sparse all-reduce over NCCL)."""
    return "n/a" if x is None else format(x, spec)


def format_text(res: dict) -> str:
    """The human-readable summary of :func:`run_exchange_bench`'s result."""
    lines = [
        f"ours {res['ours_ms']:.2f} ms  torch sparse {_f(res['torch_sparse_ms'], '.2f')} ms  "
        f"dense {res['dense_ms']:.2f} ms",
        f"speed-up: {_f(res['speedup_vs_torch_sparse'], '.1f')}x vs torch sparse, {res['speedup_vs_dense']:.1f}x "
        "vs dense",
    ]
    if res.get("device", "cpu") != "cpu":
        lines.insert(0, f"gradients on {res['device']}, {res['backend']} group of {res['nproc']}")
    skew = res["start_skew_ms"]
    lines.append(f"starts aligned by {res['aligned_by']}: first to last start {skew['ours']:.3f} ms (ours), "
                 f"{_f(skew['torch_sparse'], '.3f')} ms (torch sparse), {skew['dense']:.3f} ms (dense), medians")
    if "from_last_arrival_ms" in res:
        span, up = res["from_last_arrival_ms"], res["from_last_arrival_speedup"]
        lines.append(f"from the last rank's arrival: ours {span['ours']:.2f} ms  torch sparse "
                     f"{_f(span['torch_sparse'], '.2f')} ms  dense {span['dense']:.2f} ms "
                     f"({_f(up['vs_torch_sparse'], '.1f')}x, {up['vs_dense']:.1f}x)")
    for rank, ph in enumerate(res["phases_ms"]):
        lines.append(f"rank {rank} phases (ms, medians): " + ", ".join(f"{k} {v:.2f}" for k, v in ph.items()))
    for r in res.get("sweep", []):
        lines.append(
            f"density {r['density']:<6} distinct {r['distinct_rows']:>7} {r['mode']:<6} ours {r['ours_ms']:8.2f}"
            f"  torch {_f(r['torch_sparse_ms'], '8.2f')}  dense {r['dense_ms']:8.2f}  never slower: {r['never_slower']}"
        )
    return "\n".join(lines)
