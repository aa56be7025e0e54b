"""Probe (issue 17): the hot-row syncs of an older commit's tree against this one's, same command, interleaved.

Beyond two ranks a step syncs the most frequent words' rows after every round of small jobs (``dataparallel/
options.py``): dozens of small all-reduces a step, whose latency, not their bytes, is their cost. This probe
extracts ``--base``'s ``src/`` (as ``bench_commits.py`` does) and runs, alternating, with each tree first on
``PYTHONPATH``::

    python -m sparsembed train CORPUS --out DIR --nproc R --workers 1 --epochs 1 --transport tcp --seed 1 --quiet

on the corpus's first ``--mbytes`` megabytes, and reads rank 0's ``metrics.jsonl``: the hot syncs' seconds a step
(the step records' ``NAME[:ROWS]`` entries), compute and exchange seconds a step (medians), and the wall time.
Example::

    .venv/bin/python benchmarks/probes/hot_syncs.py --base 72278d7 --corpus wiki17m.txt --ranks 4 --repeats 3 \\
        --json benchmarks/results/hot-syncs.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_commits import extract_tree  # noqa: E402  (one way to take an older commit's src/)


def run(src: Path, corpus: Path, out: Path, ranks: int) -> dict[str, float]:
    """One command with ``src`` first on PYTHONPATH: wall seconds and the step medians of rank 0's records."""
    cmd = [sys.executable, "-m", "sparsembed", "train", str(corpus), "--out", str(out), "--nproc", str(ranks),
           "--workers", "1", "--epochs", "1", "--transport", "tcp", "--seed", "1", "--quiet"]
    started = time.perf_counter()
    done = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(src)}, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"hot_syncs: {' '.join(cmd)} failed: {done.stderr.strip()[-400:]}")
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"step"' in line]
    hot = [sum(m["seconds"] for name, m in s["matrices"].items() if "[:" in name) for s in steps]
    return {"wall_s": wall, "steps": len(steps), "hot_ms": 1e3 * statistics.median(hot),
            "compute_ms": 1e3 * statistics.median(s["compute_s"] for s in steps),
            "exchange_ms": 1e3 * statistics.median(s["exchange_s"] for s in steps)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="the older commit")
    p.add_argument("--corpus", required=True)
    p.add_argument("--mbytes", type=int, default=20, help="train on the corpus's first MB megabytes")
    p.add_argument("--ranks", type=int, default=4, help="ranks on this host (hot syncs need 3 or more)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    if not Path(a.corpus).is_file():
        p.error(f"--corpus {a.corpus}: no such file")
    if a.ranks < 3 or a.repeats < 1 or a.mbytes < 1:
        p.error("--ranks must be >= 3 (no hot syncs below), --repeats and --mbytes >= 1")
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="hot_syncs_") as scratch:
        work = Path(scratch)
        corpus = work / "corpus.txt"
        with open(a.corpus, "rb") as src, open(corpus, "wb") as dst:
            dst.write(src.read(a.mbytes << 20))
        trees = {a.base: extract_tree(a.base, work / "base"), "this tree": Path(__file__).resolve().parents[2] / "src"}
        for r in range(a.repeats):
            row = {name: run(src, corpus, work / f"out-{r}-{k}", a.ranks)
                   for k, (name, src) in enumerate(trees.items())}
            rounds.append(row)
            print(json.dumps(row), flush=True)
    summary = {name: {k: round(statistics.median(row[name][k] for row in rounds), 2)
                      for k in ("wall_s", "hot_ms", "compute_ms", "exchange_ms")} for name in rounds[0]}
    summary["hot_ms ratio (base / this)"] = round(statistics.median(
        row[a.base]["hot_ms"] / row["this tree"]["hot_ms"] for row in rounds), 2)
    print(json.dumps(summary, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "cores": len(os.sched_getaffinity(0)), "summary": summary, "rounds": rounds}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
