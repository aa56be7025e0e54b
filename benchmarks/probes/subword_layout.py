"""Probe (issue 20): how the order of the bucket rows in ``syn0`` changes subword training speed. One model (one
vocabulary scan), trained again and again from the same initial rows, alternating two layouts of the used
buckets' rows: ``sorted`` (by bucket, the layout before first-use order) and ``first-use`` (the order the
vocabulary, most frequent word first, first uses them: :class:`~sparsembed.subword.index.SubwordIndex`'s default).
Only the training loop is timed (no scan, no checkpoint); the same rows either way, so the updates are the same
(up to Hogwild's thread timing with more than one worker). Example::

    .venv/bin/python benchmarks/probes/subword_layout.py --corpus wiki17m.txt --sg 0 --epochs 1 --repeats 5 \
        --json benchmarks/results/subword-layout-cbow.json
"""
import argparse
import json
import statistics
import time

import numpy as np

from sparsembed import Word2Vec
from sparsembed.subword.index import SubwordIndex
from sparsembed.word2vec.schedule import Position

p = argparse.ArgumentParser()
p.add_argument("--corpus", required=True)
p.add_argument("--sg", type=int, default=0)
p.add_argument("--epochs", type=int, default=1)
p.add_argument("--repeats", type=int, default=5)
p.add_argument("--workers", type=int, default=2)
p.add_argument("--json", default=None)
a = p.parse_args()

model = Word2Vec(subwords=(3, 6), buckets=2_000_000, epochs=a.epochs, workers=a.workers, alpha=0.05, sg=a.sg)
model.build_vocab(a.corpus)
first_use = model.subwords
n = first_use.nwords
layouts = {"first-use": (first_use, model.syn0.copy())}
order = np.argsort(first_use.bucket_of_row)
by_bucket = SubwordIndex.build(model.vocab.words, 3, 6, 2_000_000, layout=first_use.bucket_of_row[order])
layouts["sorted"] = (by_bucket, np.concatenate([model.syn0[:n], model.syn0[n + order]]))
syn1 = model.syn1.copy()
seconds: dict[str, list[float]] = {name: [] for name in layouts}
for repeat in range(a.repeats):
    for name in ("sorted", "first-use"):
        index, syn0 = layouts[name]
        model.subwords, model.syn0, model.syn1 = index, syn0.copy(), syn1.copy()
        model.position, model.history = Position(), []
        t0 = time.perf_counter()
        model.train(progress=False)
        seconds[name].append(time.perf_counter() - t0)
        print(f"{name} #{repeat + 1}: {seconds[name][-1]:.2f} s", flush=True)
result = {
    "corpus": a.corpus, "sg": a.sg, "epochs": a.epochs, "workers": a.workers, "repeats": a.repeats,
    "used_buckets": len(first_use.bucket_of_row), "seconds": seconds,
    "median_s": {k: statistics.median(v) for k, v in seconds.items()},
    "min_s": {k: min(v) for k, v in seconds.items()},
    "ratios": [s / f for s, f in zip(seconds["sorted"], seconds["first-use"], strict=True)],
}
result["median_ratio"] = statistics.median(result["ratios"])
print(json.dumps({k: result[k] for k in ("median_s", "min_s", "median_ratio")}))
if a.json:
    with open(a.json, "w") as f:
        json.dump(result, f, indent=1)
