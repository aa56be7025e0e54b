"""What a data-parallel command's end costs: ``torchrun -m sparsembed train`` against the same command through an
entry that lets the interpreter tear torch down as usual (``sparsembed.entry``'s reason to exist). Both train the
same small corpus with ``--nproc-per-node`` ranks of one thread; the two entries alternate; wall = torchrun's whole
command. Example::

    .venv/bin/python benchmarks/bench_process_end.py --corpus wiki17m.txt --megabytes 2 --repeats 5 \
        --json benchmarks/results/process_end.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

#: The entry before sparsembed.entry: the command's code as SystemExit, then the interpreter's usual teardown.
USUAL_EXIT = "from sparsembed.cli import main\nraise SystemExit(main())\n"


def run(entry: list[str], corpus: Path, out: Path, nproc: int) -> float:
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([torchrun, "--nproc-per-node", str(nproc), *entry, "train", str(corpus), "--out", str(out),
                    "--workers", "1", "--quiet"], check=True, capture_output=True, timeout=600)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", required=True, help="text corpus; its first --megabytes are trained")
    p.add_argument("--megabytes", type=float, default=2.0)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.txt"
        with open(a.corpus, "rb") as src:
            corpus.write_bytes(src.read(int(a.megabytes * 1e6)))
        usual = tmp / "usual_exit.py"
        usual.write_text(USUAL_EXIT)
        entries = {"python -m sparsembed": ["-m", "sparsembed"], "usual teardown": [str(usual)]}
        walls: dict[str, list[float]] = {name: [] for name in entries}
        for repeat in range(a.repeats):
            for name, entry in entries.items():
                walls[name].append(run(entry, corpus, tmp / "out", a.nproc))
                print(f"{name} #{repeat + 1}: {walls[name][-1]:.2f} s", flush=True)
    medians = {name: statistics.median(w) for name, w in walls.items()}
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "corpus": a.corpus,
              "megabytes": a.megabytes, "nproc": a.nproc, "repeats": a.repeats, "wall_s": walls,
              "median_wall_s": medians,
              "median_saved_s": statistics.median(u - m for u, m in zip(walls["usual teardown"],
                                                                          walls["python -m sparsembed"],
                                                                          strict=True))}
    print(json.dumps({k: result[k] for k in ("median_wall_s", "median_saved_s")}))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
