"""Probe (issue 17): what a data-parallel command spends outside training, against one process.

A whole command is the seconds before training (interpreter, imports, joining the group, the corpus scan), the
training, and the seconds after it (the run's last exchange is inside training; the outputs, the ends of the
processes after). This probe times, in fresh processes:

* the imports each process pays: ``import torch`` (every rank), ``torch.distributed.launcher.api`` (the launcher:
  ``torchrun``, or ``sparsembed train --nproc``), ``sparsembed.dataparallel.trainer`` (a rank, torch included) and
  ``sparsembed.word2vec.model`` (one process: no torch);
* the corpus scan (``Word2Vec.build_vocab``) alone;
* the same training as one process (``--workers 1``) and as 2 ranks of one thread on this host (``--nproc 2
  --transport tcp`` with today's settings across hosts named: ``--overlap --values int8 --budget auto``), split
  into before / training / after from the command's wall time and rank 0's ``metrics.jsonl`` (its first progress
  record's ``elapsed_s`` marks the start of training, its last record the end).

Medians over ``--repeats`` rounds, the two commands alternating. Example::

    .venv/bin/python benchmarks/probes/launch_costs.py --corpus wiki17m.txt --epochs 1 --repeats 3 \\
        --json benchmarks/results/launch-costs.json
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

ROOT = Path(__file__).resolve().parents[2]
IMPORTS = {"torch": "import torch", "launcher": "import torch.distributed.launcher.api",
           "rank": "import sparsembed.dataparallel.trainer", "one process": "import sparsembed.word2vec.model"}
SCAN = """
import sys, time
from sparsembed import Word2Vec
model = Word2Vec(workers=1)
started = time.perf_counter()
model.build_vocab(sys.argv[1])
print(time.perf_counter() - started)
"""
PAIR = ["--nproc", "2", "--workers", "1", "--transport", "tcp", "--overlap", "--values", "int8", "--budget", "auto"]


def timed(cmd: list[str], timeout: float = 900.0) -> tuple[float, str]:
    """Wall seconds of ``cmd`` (run from the repository root) and its stdout; fails loudly on a failed command."""
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"launch_costs: {' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return time.perf_counter() - started, done.stdout


def phases(out: Path, wall_s: float, started_at: float) -> dict[str, float]:
    """Before / training / after of one command from its wall time and rank 0's metrics.jsonl."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    progress = [r for r in records if "elapsed_s" in r]
    if not progress:
        raise SystemExit(f"launch_costs: no progress record in {out / 'metrics.jsonl'}")
    start = progress[0]["time"] - progress[0]["elapsed_s"]
    end = max(r["time"] for r in records)
    return {"wall_s": wall_s, "before_s": start - started_at, "training_s": end - start,
            "after_s": started_at + wall_s - end}


def train(corpus: str, out: Path, epochs: int, extra: list[str]) -> dict[str, float]:
    cmd = [sys.executable, "-m", "sparsembed", "train", corpus, "--out", str(out), "--epochs", str(epochs),
           "--seed", "1", "--quiet", *extra]
    started_at = time.time()
    wall_s, _ = timed(cmd)
    return phases(out, wall_s, started_at)


def probe_args(doc: str, epochs: int, argv: list[str] | None) -> argparse.Namespace:
    """The options of a probe that times whole commands on a corpus: ``--corpus``, ``--epochs``, ``--repeats``,
    ``--json``; a bad one is argparse's one line, exit 2."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--corpus", required=True)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    if not Path(a.corpus).is_file():
        p.error(f"--corpus {a.corpus}: no such file")
    if a.epochs < 1 or a.repeats < 1:
        p.error("--epochs and --repeats must be >= 1")
    return a


def write_report(a: argparse.Namespace, summary: dict, rounds: list[dict]) -> None:
    """Print the summary; with ``--json``, write it with the rounds, the command, date and this machine's cores."""
    print(json.dumps(summary, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "cores": len(os.sched_getaffinity(0)), "corpus": a.corpus, "epochs": a.epochs, "repeats": a.repeats,
            "pair_flags": PAIR, "summary": summary, "rounds": rounds}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    a = probe_args(__doc__, 1, argv)
    corpus = str(Path(a.corpus).resolve())
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="launch_costs_") as scratch:
        for r in range(a.repeats):
            row: dict = {"imports_s": {k: timed([sys.executable, "-c", code])[0] for k, code in IMPORTS.items()}}
            row["scan_s"] = float(timed([sys.executable, "-c", SCAN, corpus])[1].strip())
            row["one process"] = train(corpus, Path(scratch) / f"single-{r}", a.epochs, ["--workers", "1"])
            row["2 ranks"] = train(corpus, Path(scratch) / f"pair-{r}", a.epochs, PAIR)
            rounds.append(row)
            print(json.dumps(row), flush=True)

    def med(get) -> float:  # noqa: ANN001
        return round(statistics.median(get(row) for row in rounds), 3)

    summary = {"imports_s": {k: med(lambda row, k=k: row["imports_s"][k]) for k in IMPORTS},
               "scan_s": med(lambda row: row["scan_s"]),
               **{run: {k: med(lambda row, run=run, k=k: row[run][k]) for k in ("wall_s", "before_s", "training_s",
                                                                                 "after_s")}
                  for run in ("one process", "2 ranks")}}
    write_report(a, summary, rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
