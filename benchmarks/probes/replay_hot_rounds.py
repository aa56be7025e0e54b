"""Probe (issue 17, point 3): the trainer's hot-row rounds replayed in one process (the same job order, decay
and generator seeds as ``DataParallelTrainer`` with ``--hot-rows``
tests/test_hot_rows.py checks that replay
against the trainer on a small corpus), on wiki17m, scored like BENCHMARKS.md. Example::

    .venv/bin/python benchmarks/probes/replay_hot_rounds.py --world 8 --step 125000 --hot-tokens 10000
"""
import argparse
import json

import numpy as np
from gensim.test.utils import datapath

from sparsembed import Word2Vec
from sparsembed.dataparallel.options import even_job_tokens
from sparsembed.word2vec import kernels
from sparsembed.word2vec.evaluate import word_analogies, word_pairs
from sparsembed.word2vec.schedule import job_boundaries

p = argparse.ArgumentParser()
p.add_argument("--world", type=int, default=8)
p.add_argument("--step", type=int, default=125000)
p.add_argument("--hot-tokens", type=int, default=10000)
p.add_argument("--hot", type=int, default=1000)
p.add_argument("--deal", default="robin")  # robin | block
p.add_argument("--seed", type=int, default=1)
p.add_argument("--scale", type=float, default=1.0)
a = p.parse_args()
model = Word2Vec(vector_size=100, epochs=5, workers=1, seed=a.seed)
model.settings.job_tokens = a.step
model.build_vocab("/tmp/ab/wiki17m.txt")
world, hot = a.world, a.hot
rounds = max(1, a.step // a.hot_tokens)
s, corpus = model.settings, model.corpus
per_epoch = int(corpus.sentence_starts[-1])
s.job_tokens = even_job_tokens(per_epoch, s.job_tokens // rounds, world * rounds)
schedule = model.schedule()
bounds = job_boundaries(corpus.sentence_starts, s.job_tokens)
n_jobs = len(bounds) - 1
tables = model.kernel_tables()
g0, g1 = model.syn0, model.syn1
work = [(g0.copy(), g1.copy()) for _ in range(world)]
for epoch in range(s.epochs):
    for first in range(0, n_jobs, world * rounds):
        for w in work:
            w[0][:] = g0
            w[1][:] = g1
        for k in range(rounds):
            start = first + k * world
            total, before = schedule.decay(epoch, min(start, n_jobs), world)
            for rank in range(world):
                job = start + rank if a.deal == "robin" else first + rank * rounds + k
                if job >= n_jobs:
                    continue
                kernels.train_job(*work[rank], corpus.ids, corpus.sentence_starts, int(bounds[job]),
                    int(bounds[job + 1]),
                    tables["sample_ints"], s.sample > 0, tables["packed_alias"], s.sg, s.window,
                    s.negative, s.alpha, s.min_alpha, total, before, s.seed, epoch, job,
                    kernels.SIGMOID_TABLE, kernels.LOG_SIGMOID_TABLE)
            for m, g in enumerate((g0, g1)):
                g[:hot] += np.float32(a.scale) * sum(w[m][:hot] - g[:hot] for w in work)
                for w in work:
                    w[m][:hot] = g[:hot]
        for m, g in enumerate((g0, g1)):
            g[hot:] += sum(w[m][hot:] - g[hot:] for w in work)
v = model.wv
acc, _ = word_analogies(v, datapath("questions-words.txt"), restrict_vocab=30000)
ws = word_pairs(v, datapath("wordsim353.tsv"))[1][0]
print(json.dumps(dict(vars(a), rounds=rounds, n_jobs=n_jobs, analogy=round(100 * acc, 2), ws353=round(ws, 3))),
      flush=True)
