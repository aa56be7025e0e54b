"""Benchmark the sparse-row codec (issue 3): id-section size against the information bound, encode / decode
throughput, and in-place coalescing against ``torch.sparse_coo_tensor(...).coalesce()``.

    .venv/bin/python benchmarks/bench_codec.py --out benchmarks/results

Writes ``codec.json`` and ``codec.png`` under ``--out`` and prints markdown tables. Single-threaded torch.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import lzma
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sparsembed.rows import codec, rowsets  # noqa: E402
from sparsembed.rows.coalesce import RowSparse  # noqa: E402

DENSITIES = [1e-5, 1e-4, 1e-3, 1e-2, 0.03, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 0.9, 0.99, 1.0]


def word_counts(path: Path, min_count: int) -> np.ndarray:
    """Frequencies of words seen at least ``min_count`` times, most frequent first (row order of a vocab)."""
    counts: collections.Counter[str] = collections.Counter()
    tail = ""
    with lzma.open(path, "rt") as f:
        while chunk := f.read(1 << 24):
            words = (tail + chunk).split(" ")
            tail = words.pop()
            counts.update(words)
    counts.update([tail])
    freq = np.array(sorted((c for w, c in counts.items() if w and c >= min_count), reverse=True), np.float64)
    return freq


def info_bound_bytes(num_rows: int, n: int) -> float:
    bits = (math.lgamma(num_rows + 1) - math.lgamma(n + 1) - math.lgamma(num_rows - n + 1)) / math.log(2)
    return math.ceil(bits - 1e-9) / 8


def weighted_rows(freq: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct rows drawn without replacement proportionally to freq (exponential-keys trick)."""
    keys = rng.exponential(size=freq.shape[0]) / freq
    return np.argpartition(keys, k - 1)[:k] if k < freq.shape[0] else np.arange(freq.shape[0])


def bench_sizes(freq: np.ndarray, rng: np.random.Generator) -> list[dict]:
    num_rows = freq.shape[0]
    perm = rng.permutation(num_rows)
    out = []
    for kind in ("uniform", "zipf-permuted", "zipf-freq-order"):
        for d in DENSITIES:
            n = max(1, round(d * num_rows))
            if kind == "uniform":
                rows = rng.choice(num_rows, n, replace=False)
            else:
                rows = weighted_rows(freq, n, rng)
                if kind == "zipf-permuted":
                    rows = perm[rows]
            ids = np.sort(rows).astype(np.int64)
            sizes = rowsets.candidate_sizes(ids, num_rows)
            best = rowsets.choose(ids, num_rows).name
            bound = info_bound_bytes(num_rows, n)
            total = sizes[best] + codec.HEADER_SIZE
            out.append(
                dict(
                    kind=kind,
                    density=d,
                    n=n,
                    num_rows=num_rows,
                    bound=bound,
                    sizes=sizes,
                    auto=best,
                    auto_bytes=sizes[best],
                    ratio=sizes[best] / bound if bound else None,
                    met=total <= 1.15 * bound + 64,
                )
            )
    return out


def crossover(num_rows: int, rng: np.random.Generator) -> float:
    """Smallest uniform density where the bitmap is no larger than the Rice index."""
    for d in np.arange(0.20, 0.50, 0.005):
        ids = np.sort(rng.choice(num_rows, round(d * num_rows), replace=False)).astype(np.int64)
        if rowsets.Bitmap.size(ids, num_rows) <= rowsets.Index.size(ids, num_rows):
            return float(d)
    return 0.5


def median_time(fn, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def bench_throughput(freq: np.ndarray, rng: np.random.Generator) -> list[dict]:
    num_rows = freq.shape[0]
    out = []
    for n, dim in ((8192, 64), (65536, 64), (65536, 128), (65536, 300), (1 << 20, 64)):
        if n <= num_rows // 2:  # rows a Zipf batch touches
            ids, rows_total = np.sort(weighted_rows(freq, n, rng)).astype(np.int64), num_rows
        else:  # larger than the vocabulary: uniform rows of a 4M-row table
            rows_total = 4 * n
            ids = np.sort(rng.choice(rows_total, n, replace=False)).astype(np.int64)
        rs = RowSparse(torch.from_numpy(ids), torch.randn(ids.shape[0], dim), rows_total)
        rs.is_coalesced()
        reps = 9 if n <= 65536 else 5
        msg = codec.encode(rs)
        arr = codec.encode_array(rs)
        r = dict(n=int(ids.shape[0]), dim=dim, bytes=len(msg))
        r["encode_bytes_s"] = median_time(lambda: codec.encode(rs), reps)  # noqa: B023
        r["encode_array_s"] = median_time(lambda: codec.encode_array(rs), reps)  # noqa: B023
        r["decode_bytes_s"] = median_time(lambda: codec.decode(msg), reps)  # noqa: B023
        r["decode_array_s"] = median_time(lambda: codec.decode(arr), reps)  # noqa: B023
        for k in [k for k in r if k.endswith("_s")]:
            r[k.replace("_s", "_gbps")] = len(msg) / r[k] / 1e9
        r["roundtrip_bytes_gbps"] = len(msg) / (r["encode_bytes_s"] + r["decode_bytes_s"]) / 1e9
        r["roundtrip_array_gbps"] = len(msg) / (r["encode_array_s"] + r["decode_array_s"]) / 1e9
        out.append(r)
        gc.collect()
    return out


def _rss_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def peak_extra_bytes(fn) -> int:
    """Peak resident memory above the current level while fn runs (resets VmHWM via clear_refs)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _rss_kib("VmRSS")
    fn()
    return (_rss_kib("VmHWM") - base) * 1024


def _child_peak(method: str, n: int, dim: int, num_rows: int) -> int:
    """Peak extra memory of one coalesce, in a fresh process where large blocks are always mmapped (so freed
    memory is returned and the peak resident size is honest)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, __file__, "--mem-child", method, str(n), str(dim), str(num_rows)]
    return int(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.split()[-1])


def mem_child(method: str, n: int, dim: int, num_rows: int) -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    ids = torch.from_numpy(np.minimum(rng.zipf(1.1, n) - 1, num_rows - 1).astype(np.int64))
    values = torch.randn(n, dim)
    warm = RowSparse(torch.tensor([2, 1, 2]), torch.ones(3, 4), 5)
    warm.coalesce_()
    torch.sparse_coo_tensor(warm.ids[None], warm.values, (5, 4), check_invariants=False).coalesce()
    if method == "ours":
        rs = RowSparse(ids, values, num_rows)
        print(peak_extra_bytes(rs.coalesce_))
    else:
        coo = torch.sparse_coo_tensor(ids[None], values, (num_rows, dim), check_invariants=False)
        print(peak_extra_bytes(coo.coalesce))


def bench_coalesce(freq: np.ndarray, rng: np.random.Generator, dim: int = 64) -> list[dict]:
    num_rows = freq.shape[0]
    cdf = np.cumsum(freq) / freq.sum()
    out = []
    for n in (8192, 65536, 262144, 1 << 20):
        ids = torch.from_numpy(np.searchsorted(cdf, rng.random(n)).astype(np.int64))  # a Zipf batch of tokens
        values = torch.randn(n, dim)
        reps = 15 if n <= 65536 else 5
        ours, theirs = [], []
        for _ in range(reps):
            rs = RowSparse(ids.clone(), values.clone(), num_rows)
            t = time.perf_counter()
            rs.coalesce_()
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            torch.sparse_coo_tensor(ids[None], values, (num_rows, dim), check_invariants=False).coalesce()
            theirs.append(time.perf_counter() - t)
        rs = RowSparse(ids.clone(), values.clone(), num_rows).coalesce_()
        mem_ours, mem_torch = (_child_peak(method, n, dim, num_rows) for method in ("ours", "torch"))
        block = n * dim * 4
        out.append(
            dict(
                n=n,
                dim=dim,
                unique=rs.n,
                ours_s=float(np.median(ours)),
                torch_s=float(np.median(theirs)),
                speedup=float(np.median(theirs) / np.median(ours)),
                values_block=block,
                ours_extra=mem_ours,
                torch_extra=mem_torch,
                ours_extra_frac=mem_ours / block,
                torch_extra_frac=mem_torch / block,
            )
        )
        del rs
        gc.collect()
    return out


def plot(sizes: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=80)
    for kind, style in (("uniform", "o-"), ("zipf-permuted", "s--"), ("zipf-freq-order", "^:")):
        rows = [r for r in sizes if r["kind"] == kind and r["bound"] > 0]
        d = [r["density"] for r in rows]
        axes[0].loglog(d, [r["auto_bytes"] + codec.HEADER_SIZE for r in rows], style, label=f"auto+header, {kind}")
        axes[1].semilogx(d, [r["auto_bytes"] / r["bound"] for r in rows], style, label=kind)
    rows = [r for r in sizes if r["kind"] == "uniform" and r["bound"] > 0]
    axes[0].loglog([r["density"] for r in rows], [r["bound"] for r in rows], "k-", lw=0.8, label="bound")
    axes[0].set(xlabel="density n/num_rows", ylabel="bytes", title="row-id section")
    axes[0].legend(fontsize=7)
    axes[1].axhline(1.15, color="r", lw=0.8, label="1.15x target")
    axes[1].set(xlabel="density", ylabel="id bytes / bound", title="ratio to information bound (no header)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--corpus", type=Path, default=Path("/work/shared/data/wiki17m.txt.xz"))
    ap.add_argument("--min-count", type=int, default=5)
    ap.add_argument("--mem-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mem_child:
        method, *nums = args.mem_child
        mem_child(method, *map(int, nums))
        return
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    freq = word_counts(args.corpus, args.min_count)
    print(f"vocabulary: {freq.shape[0]} rows (min_count {args.min_count}), read in {time.time() - t0:.0f}s")
    warm = RowSparse(torch.tensor([2, 1, 2]), torch.ones(3, 4), 5)  # compile / load numba kernels
    codec.decode(codec.encode(warm.clone().coalesce_()))
    sizes = bench_sizes(freq, rng)
    cross = crossover(freq.shape[0], rng)
    throughput = bench_throughput(freq, rng)
    coalesce = bench_coalesce(freq, rng)
    result = dict(
        command="python benchmarks/bench_codec.py --out benchmarks/results",
        date=time.strftime("%Y-%m-%d"),
        machine=f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), {platform.python_version()}",
        num_rows=int(freq.shape[0]),
        header_bytes=codec.HEADER_SIZE,
        index_bitmap_crossover=cross,
        sizes=sizes,
        throughput=throughput,
        coalesce=coalesce,
    )
    (args.out / "codec.json").write_text(json.dumps(result, indent=1))
    plot(sizes, args.out / "codec.png")
    print_tables(result)


def print_tables(r: dict) -> None:
    print(f"\n### Row-id section vs information bound (num_rows = {r['num_rows']}, header {r['header_bytes']} B)\n")
    print("| rows | density | n | bound B | auto | auto B | ratio | index | bitmap | roaring | met |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in r["sizes"]:
        z = s["sizes"]
        ratio = f"{s['ratio']:.3f}" if s["ratio"] is not None else "-"
        print(
            f"| {s['kind']} | {s['density']:g} | {s['n']} | {s['bound']:.0f} | {s['auto']} | {s['auto_bytes']} "
            f"| {ratio} | {z['index']} | {z['bitmap']} | {z.get('roaring', '-')} | {'yes' if s['met'] else 'NO'} |"
        )
    print(f"\nindex/bitmap crossover (uniform): density {r['index_bitmap_crossover']:.3f}")
    print("\n### Encode / decode throughput (GB/s of message, 1 thread, medians)\n")
    print(
        "| n | dim | MB | encode bytes | encode_array | decode bytes | decode array | round trip bytes "
        "| round trip array |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for t in r["throughput"]:
        print(
            f"| {t['n']} | {t['dim']} | {t['bytes'] / 1e6:.1f} | {t['encode_bytes_gbps']:.2f} | "
            f"{t['encode_array_gbps']:.2f} | {t['decode_bytes_gbps']:.2f} | {t['decode_array_gbps']:.2f} | "
            f"{t['roundtrip_bytes_gbps']:.2f} | {t['roundtrip_array_gbps']:.2f} |"
        )
    print("\n### Coalesce (Zipf batch from wiki17m frequencies, dim 64 float32, medians)\n")
    print("| n | unique | ours ms | torch ms | speedup | ours extra mem | torch extra mem |")
    print("|---|---|---|---|---|---|---|")
    for c in r["coalesce"]:
        print(
            f"| {c['n']} | {c['unique']} | {c['ours_s'] * 1e3:.2f} | {c['torch_s'] * 1e3:.2f} | {c['speedup']:.2f}x "
            f"| {c['ours_extra_frac']:.1%} | {c['torch_extra_frac']:.1%} |"
        )


if __name__ == "__main__":
    main()
