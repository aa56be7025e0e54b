"""Probe (issue 17): the most any pair of one-thread ranks could gain on this machine, against what the pair gains.

Two ranks of one training thread each, on a machine of two cores, can at best train like two independent
one-thread processes that each train half the corpus at the same time: no exchange, no torch, no group to join.
This probe times, the three alternating in each round (all ``--workers 1``, same epochs and seed):

* **one process** on the whole corpus (``sparsembed train CORPUS --workers 1``);
* **two halves**: two such processes started together, each on one half of the corpus (split at the whitespace
  nearest the middle byte, written once to a scratch directory); the wall time is until the later one ends;
* **the pair**: ``--nproc 2`` with today's settings across hosts named (as ``launch_costs.py``), on loopback.

Each command is split into before / training / after from rank 0's (each process's) ``metrics.jsonl``. The
summary gives medians and the speedups against the one process: the halves' whole command and training (the
ceiling) and the pair's. Example::

    .venv/bin/python benchmarks/probes/pair_ceiling.py --corpus wiki17m.txt --epochs 5 --repeats 3 \\
        --json benchmarks/results/pair-ceiling.json
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from launch_costs import PAIR, ROOT, phases, probe_args, train, write_report  # noqa: E402


def split_halves(corpus: Path, scratch: Path) -> list[Path]:
    """The corpus cut in two at the whitespace nearest its middle byte, streamed into two files."""
    size = corpus.stat().st_size
    with corpus.open("rb") as f:
        f.seek(size // 2)
        tail = f.read(1 << 20)
    cut = size // 2 + next((i for i, b in enumerate(tail) if b in b" \n\t"), len(tail))
    halves = [scratch / "half-1.txt", scratch / "half-2.txt"]
    with corpus.open("rb") as src:
        for path, length in zip(halves, (cut, size - cut), strict=True):
            with path.open("wb") as dst:
                left = length
                while left:
                    chunk = src.read(min(left, 16 << 20))
                    dst.write(chunk)
                    left -= len(chunk)
    return halves


def two_halves(halves: list[Path], outs: list[Path], epochs: int) -> dict[str, float]:
    """Two one-thread processes started together, one per half: wall until both end; training from the first
    start of training to the last end (each process's metrics)."""
    started_at = time.time()
    began = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "sparsembed", "train", str(h), "--out", str(o), "--epochs",
                               str(epochs), "--seed", "1", "--quiet", "--workers", "1"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for h, o in zip(halves, outs, strict=True)]
    for p in procs:
        _, err = p.communicate(timeout=900)
        if p.returncode != 0:
            raise SystemExit(f"pair_ceiling: a half's training failed ({p.returncode}): {err.strip()[-500:]}")
    wall_s = time.perf_counter() - began
    each = [phases(o, wall_s, started_at) for o in outs]
    start = started_at + min(e["before_s"] for e in each)
    end = started_at + wall_s - min(e["after_s"] for e in each)
    return {"wall_s": wall_s, "before_s": start - started_at, "training_s": end - start,
            "after_s": started_at + wall_s - end, "each_training_s": [e["training_s"] for e in each]}


def main(argv: list[str] | None = None) -> int:
    a = probe_args(__doc__, 5, argv)
    corpus = Path(a.corpus).resolve()
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="pair_ceiling_") as tmp:
        scratch = Path(tmp)
        halves = split_halves(corpus, scratch)
        for r in range(a.repeats):
            outs = {name: scratch / f"{name}-{r}" for name in ("one", "half-1", "half-2", "pair")}
            row = {"one process": train(str(corpus), outs["one"], a.epochs, ["--workers", "1"]),
                   "two halves": two_halves(halves, [outs["half-1"], outs["half-2"]], a.epochs),
                   "2 ranks": train(str(corpus), outs["pair"], a.epochs, PAIR)}
            rounds.append(row)
            print(json.dumps(row), flush=True)
            for out in outs.values():
                shutil.rmtree(out, ignore_errors=True)

    def med(run: str, key: str) -> float:
        return round(statistics.median(row[run][key] for row in rounds), 3)

    runs = ("one process", "two halves", "2 ranks")
    summary: dict = {run: {k: med(run, k) for k in ("wall_s", "before_s", "training_s", "after_s")} for run in runs}
    for run in runs[1:]:
        summary[run]["speedup_whole"] = round(statistics.median(
            row["one process"]["wall_s"] / row[run]["wall_s"] for row in rounds), 3)
        summary[run]["speedup_training"] = round(statistics.median(
            row["one process"]["training_s"] / row[run]["training_s"] for row in rounds), 3)
    write_report(a, summary, rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
