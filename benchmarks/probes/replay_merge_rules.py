"""Probe (issue 17, point 3): a single-process replay of N-rank data-parallel CBOW with merge rules and hot-row
sub-steps, used to find why accuracy collapsed beyond two ranks. Not the trainer: each rank's job is cut into
``--sub`` sentence ranges (with their own generator seeds)
after each, the first ``--hot`` rows take the sum
(or ``--rule``) of all ranks' changes. Ranks whose job has fewer sentences than ``--sub`` sit some sub-steps out,
which staggers them (what made ``--sub 50`` work at 8 ranks, see BENCHMARKS.md). Example::

    .venv/bin/python benchmarks/probes/replay_merge_rules.py --world 4 --rule rowmean
"""
import argparse
import json
import time

import numpy as np
from gensim.test.utils import datapath

from sparsembed import Word2Vec
from sparsembed.dataparallel.options import even_job_tokens
from sparsembed.word2vec import kernels
from sparsembed.word2vec.evaluate import word_analogies, word_pairs
from sparsembed.word2vec.schedule import concurrent_schedule, job_boundaries

p = argparse.ArgumentParser()
p.add_argument("--world", type=int, default=4)
p.add_argument("--job", type=int, default=250_000)
p.add_argument("--rule", default="sum")  # sum | mean | hotmean | rowmean | align
p.add_argument("--sub", type=int, default=1, help="sub-steps per step (hot rows merged after each)")
p.add_argument("--hot", type=int, default=0, help="rows (most frequent) merged every sub-step")
p.add_argument("--hot1", type=int, default=-1, help="syn1 hot rows (default = --hot)")
p.add_argument("--meanrows", type=int, default=1000)
p.add_argument("--epochs", type=int, default=5)
p.add_argument("--corpus", default="/tmp/ab/wiki17m.txt")
p.add_argument("--sg", type=int, default=0)
p.add_argument("--seed", type=int, default=1)
a = p.parse_args()
hot1 = a.hot if a.hot1 < 0 else a.hot1
model = Word2Vec(vector_size=100, epochs=a.epochs, workers=1, seed=a.seed, sg=a.sg)
model.build_vocab(a.corpus)
s = model.settings
corpus = model.corpus
W = a.world
per_epoch = int(corpus.sentence_starts[-1])
job_tokens = even_job_tokens(per_epoch, a.job, W)
bounds = job_boundaries(corpus.sentence_starts, job_tokens)
n_jobs = len(bounds) - 1
tables = model.kernel_tables()
G0, G1 = model.syn0, model.syn1

def merge(changes, rows=None):
    d = [c if rows is None else c[rows] for c in changes]
    tot = sum(d)
    if a.rule == "sum":
        return tot
    if a.rule == "mean":
        return tot / W
    if a.rule == "hotmean":
        k = a.meanrows
        tot[:k] /= W
        return tot
    if a.rule == "rowmean":
        cnt = sum((np.abs(x).sum(axis=1) > 0).astype(np.float32) for x in d)
        return tot / np.maximum(cnt, 1)[:, None]
    if a.rule == "align":  # per row: the sum where the ranks' changes disagree, the mean where they all agree
        sq = sum((x * x).sum(axis=1) for x in d)
        ss = (tot * tot).sum(axis=1)
        return tot * np.clip(sq / np.maximum(ss, 1e-30), 1.0 / W, 1.0)[:, None]
    raise SystemExit(a.rule)

t0 = time.time()
W0 = [G0.copy() for _ in range(W)]
W1 = [G1.copy() for _ in range(W)]
for epoch in range(s.epochs):
    for first in range(0, n_jobs, W):
        before = epoch * per_epoch + int(corpus.sentence_starts[bounds[first]])
        total, bef = concurrent_schedule(per_epoch * s.epochs, before, W)
        for r in range(W):
            W0[r][:] = G0
            W1[r][:] = G1
        # split every rank's job into `sub` sentence ranges
        ranges = []
        for r in range(W):
            job = first + r
            if job >= n_jobs:
                ranges.append([])
                continue
            lo, hi = int(bounds[job]), int(bounds[job + 1])
            cuts = np.linspace(lo, hi, a.sub + 1).round().astype(int)
            ranges.append([(job, k, cuts[k], cuts[k + 1]) for k in range(a.sub)])
        done_tokens = [0] * W
        for k in range(a.sub):
            for r in range(W):
                if k >= len(ranges[r]) or ranges[r][k][2] >= ranges[r][k][3]:
                    continue
                job, kk, lo, hi = ranges[r][k]
                kernels.train_job(W0[r], W1[r], corpus.ids, corpus.sentence_starts, lo, hi,
                    tables["sample_ints"], s.sample > 0, tables["packed_alias"], s.sg, s.window, s.negative,
                    s.alpha, s.min_alpha, total, bef + done_tokens[r], s.seed, epoch, job * 64 + kk,
                    kernels.SIGMOID_TABLE, kernels.LOG_SIGMOID_TABLE)
                done_tokens[r] += int(corpus.sentence_starts[hi] - corpus.sentence_starts[lo])
            if k < a.sub - 1 and (a.hot or hot1):
                for Ws, G, h in ((W0, G0, a.hot), (W1, G1, hot1)):
                    if not h:
                        continue
                    m = merge([w[:h] - G[:h] for w in Ws])
                    G[:h] += m
                    for w in Ws:
                        w[:h] = G[:h]
        for Ws, G in ((W0, G0), (W1, G1)):
            G += merge([w - G for w in Ws])
train_s = time.time() - t0
vec = model.wv
acc, _ = word_analogies(vec, datapath("questions-words.txt"), restrict_vocab=30000)
ws = word_pairs(vec, datapath("wordsim353.tsv"))[1][0]
print(json.dumps(dict(vars(a), analogy=round(100 * acc, 2), ws353=round(ws, 3), train_s=round(train_s, 1))), flush=True)
