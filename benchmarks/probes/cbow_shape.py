"""Probe (issue 19): does the exact CBOW kernel lose time to its rows' length or to its threads sharing rows?

Two questions about where a faster CBOW could come from, each answered by training the same model (exact kernel,
one epoch of the corpus's first ``--mbytes`` megabytes, gensim's other defaults) in fresh processes, training loop
timed alone:

* **the rows' length**: ``--dims`` (default 96, 100, 112, 128), one thread. Rows padded to a multiple of 16 floats
  only pay if a loop's tail costs more than the padding: then 112 or 128 would train faster than 100.
* **the threads**: one process with one thread, one process with two (Hogwild on shared rows), and two processes of
  one thread each at the same time (the same cores, nothing shared). If sharing the rows cost much, the two
  threads would scale worse than the two processes.

Medians over ``--repeats`` rounds, the variants in turn. Example::

    .venv/bin/python benchmarks/probes/cbow_shape.py --corpus wiki17m.txt --repeats 3 \\
        --json benchmarks/results/cbow-shape.json
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

CHILD = r"""
import sys, time
from sparsembed import Word2Vec
model = Word2Vec(sg=0, kernel="exact", seed=1, workers=int(sys.argv[2]), epochs=1, vector_size=int(sys.argv[3]))
model.build_vocab(sys.argv[1])
started = time.perf_counter()
model.train(progress=False)
print(time.perf_counter() - started)
"""


def child(corpus: Path, workers: int, dim: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(corpus), str(workers), str(dim)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def seconds(*procs: subprocess.Popen) -> list[float]:
    """Each process's training seconds; fails loudly on a failed one."""
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=900)
        if p.returncode != 0:
            raise SystemExit(f"cbow_shape: a training process failed: {stderr.strip()[-400:]}")
        out.append(float(stdout.strip().splitlines()[-1]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", required=True)
    p.add_argument("--mbytes", type=int, default=50, help="train on the corpus's first MB megabytes")
    p.add_argument("--dims", type=int, nargs="+", default=[96, 100, 112, 128])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    if not Path(a.corpus).is_file():
        p.error(f"--corpus {a.corpus}: no such file")
    if a.repeats < 1 or a.mbytes < 1 or min(a.dims) < 1:
        p.error("--repeats, --mbytes and every --dims must be >= 1")
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="cbow_shape_") as scratch:
        corpus = Path(scratch) / "corpus.txt"
        with open(a.corpus, "rb") as src, open(corpus, "wb") as dst:
            dst.write(src.read(a.mbytes << 20))
        for _ in range(a.repeats):
            row = {f"dim {d}, 1 thread": seconds(child(corpus, 1, d))[0] for d in a.dims}
            row["dim 100, 2 threads"] = seconds(child(corpus, 2, 100))[0]
            row["dim 100, 2 processes of 1 thread (each)"] = max(seconds(child(corpus, 1, 100), child(corpus, 1, 100)))
            rounds.append(row)
            print(json.dumps(row), flush=True)
    summary = {k: round(statistics.median(r[k] for r in rounds), 3) for k in rounds[0]}
    one = summary["dim 100, 1 thread"]
    summary["2 threads: speed-up over 1"] = round(one / summary["dim 100, 2 threads"], 2)
    summary["2 processes: speed-up over 1 (work done twice over)"] = round(
        2 * one / summary["dim 100, 2 processes of 1 thread (each)"], 2)
    print(json.dumps(summary, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "cores": len(os.sched_getaffinity(0)), "mbytes": a.mbytes, "summary": summary, "rounds": rounds},
            indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
