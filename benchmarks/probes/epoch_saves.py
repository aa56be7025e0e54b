"""Probe (issues 17 and 19): how long training stops for each epoch's checkpoint, in an older tree and in this one.

Each tree's ``src/`` (the base from ``git archive``) trains the same model in a fresh process (CBOW, gensim's
defaults, ``--workers`` threads, 5 epochs, a checkpoint at each epoch's end into a temporary ``out``), the trees in
turn, ``--repeats`` rounds. The child times every call of the model's save at an epoch's end: ``save`` in a tree
that writes in the training thread, ``save_in_background`` in one that copies and writes on a thread of its own,
plus the wait for the last write at the end of ``train`` (``finish_saves``). Reported per tree: the seconds
training stood still for checkpoints (medians over runs of the per-run sums), and training's seconds. Example::

    .venv/bin/python benchmarks/probes/epoch_saves.py --base f3ef3e3 --corpus wiki17m.txt --repeats 3 \\
        --json benchmarks/results/epoch-saves.json
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
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_commits import extract_tree  # noqa: E402  (one way to take an older commit's src/)

CHILD = r"""
import json, sys, tempfile, time
from sparsembed import Word2Vec
from sparsembed.word2vec import checkpoint

background = hasattr(Word2Vec, "save_in_background")
stops = []

def timed(name):
    real = getattr(Word2Vec, name)
    def call(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return real(self, *args, **kwargs)
        finally:
            stops.append(time.perf_counter() - started)
    setattr(Word2Vec, name, call)

timed("save_in_background" if background else "save")
if background:
    timed("finish_saves")
model = Word2Vec(sg=0, seed=1, workers=int(sys.argv[2]), epochs=5)
model.build_vocab(sys.argv[1])
with tempfile.TemporaryDirectory(dir=sys.argv[3]) as out:
    summary = model.train(progress=False, out=out)
print(json.dumps({"background": background, "stops_s": stops, "train_s": summary["seconds"]}))
"""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True, help="the older commit")
    p.add_argument("--corpus", required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    runs: dict[str, list[dict]] = {"base": [], "this": []}
    with tempfile.TemporaryDirectory(prefix="epoch_saves_") as tmp:
        scratch = Path(tmp)
        trees = {"base": extract_tree(a.base, scratch / "base"), "this": ROOT / "src"}

        def run(tree: str) -> dict:
            done = subprocess.run([sys.executable, "-c", CHILD, a.corpus, str(a.workers), str(scratch)],
                                  capture_output=True, text=True, check=True,
                                  env={**os.environ, "PYTHONPATH": str(trees[tree])})
            return json.loads(done.stdout.strip().splitlines()[-1])

        for tree in trees:  # compile each tree's kernels once, untimed
            run(tree)
        for repeat in range(a.repeats):
            for tree in trees:
                result = run(tree)
                runs[tree].append(result)
                print(f"{tree} #{repeat + 1}: stopped {sum(result['stops_s']):.3f} s for checkpoints "
                      f"({', '.join(f'{s:.3f}' for s in result['stops_s'])}), trained {result['train_s']:.2f} s",
                      flush=True)
    summary = {tree: {"stopped_s": statistics.median(sum(r["stops_s"]) for r in rs),
                      "train_s": statistics.median(r["train_s"] for r in rs)} for tree, rs in runs.items()}
    for tree, s in summary.items():
        print(f"{tree}: median {s['stopped_s']:.3f} s stopped for checkpoints, {s['train_s']:.2f} s of training")
    if a.json:
        Path(a.json).write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "base": a.base, "corpus": a.corpus,
            "workers": a.workers, "repeats": a.repeats, "command": " ".join(sys.argv), "runs": runs,
            "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
