"""What a synchronous data-parallel step costs beyond the single process's Hogwild, measured inside one process.

    .venv/bin/python benchmarks/bench_step_costs.py --corpus ../shared/data/wiki17m.txt.xz \
        [--job-tokens 250000] [--steps 20] [--repeats 5]

On the corpus's real model (vocabulary from a scan, dim 100, CBOW, gensim's defaults), ``--steps`` steps of 2 jobs
of ``--job-tokens`` tokens, trained three ways on 2 threads, in alternation (so machine noise hits all alike):

* ``hogwild``: both threads train one model, each taking the next job as it becomes free: what
  ``sparsembed train --workers 2`` does;
* ``replicas``: each thread trains its own copy with touched-row marks, and the threads wait for each other at the
  end of each step: a rank's compute in ``--nproc 2 --workers 1``, without the exchange;
* ``replicas + sum``: the same, then after each step the in-place sum of both copies' changes
  (:func:`sparsembed.comm.shm.reduce_part` on each thread's half of the rows, the copies laid out as
  :class:`~sparsembed.comm.shm.HostMatrix` lays them out): what a step of 2 ranks on one host computes, without process
  boundaries or waiting on flags.

``hogwild / (replicas + sum)`` is then the words/s ratio the synchronous replicated step could reach on these
cores if two processes cost nothing more than two threads. Also printed: the sum's bytes per second (3 reads and
3 writes of a row both threads marked, 2 reads and 3 writes of a row one marked) against numpy copying a buffer
of the same size on the same 2 threads. Prints one JSON object: per-repeat seconds and medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sparsembed.comm.shm import BLOCK_ROWS, reduce_part  # noqa: E402
from sparsembed.word2vec import kernels  # noqa: E402
from sparsembed.word2vec.model import Word2Vec  # noqa: E402
from sparsembed.word2vec.schedule import job_boundaries  # noqa: E402


class _Steps:
    """The first ``steps`` x 2 jobs of an epoch of ``model``, and ways to train them."""

    def __init__(self, model: Word2Vec, steps: int) -> None:
        self.model = model
        bounds = model.schedule().bounds
        self.steps = min(steps, (len(bounds) - 1) // 2)
        self.step_bounds = bounds[:2 * self.steps + 1:2]  # sentences: step k is [step_bounds[k], step_bounds[k+1])
        self.tables = model.kernel_tables()
        self.tokens = int(model.corpus.sentence_starts[self.step_bounds[-1]])
        self.base = (model.syn0.copy(), model.syn1.copy())
        self.pool = ThreadPoolExecutor(2)

    def pieces(self, step: int, count: int) -> list[tuple[int, int]]:
        """Step ``step`` cut into ``count`` runs of whole sentences of about equal tokens."""
        starts = self.model.corpus.sentence_starts
        first, last = int(self.step_bounds[step]), int(self.step_bounds[step + 1])
        local = starts[first:last + 1] - starts[first]
        cuts = job_boundaries(local, max(1, int(local[-1]) // count)) + first
        return list(zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True))

    def _train(self, syn0: np.ndarray, syn1: np.ndarray, piece: tuple[int, int], step: int, job: int,
               marks: tuple = (kernels.NOT_TRACKED,) * 2) -> None:
        m, s = self.model, self.model.settings
        before = int(m.corpus.sentence_starts[self.step_bounds[step]])
        total, first_token = self.tokens * s.epochs // 2, before // 2  # 2 jobs side by side: the step's pace
        kernels.train_job(syn0, syn1, m.corpus.ids, m.corpus.sentence_starts, piece[0], piece[1],
                          self.tables["sample_ints"], s.sample > 0, self.tables["packed_alias"], s.sg, s.window,
                          s.negative, s.alpha, s.min_alpha, total, first_token, s.seed, 0, job,
                          kernels.SIGMOID_TABLE, kernels.LOG_SIGMOID_TABLE, *marks)

    def hogwild(self) -> dict:
        """Both threads on one model, each taking the next job as it becomes free (no step boundaries)."""
        syn0, syn1 = (a.copy() for a in self.base)
        jobs = [(piece, step) for step in range(self.steps) for piece in self.pieces(step, 2)]
        t0 = time.perf_counter()
        list(self.pool.map(lambda job: self._train(syn0, syn1, job[1][0], job[1][1], job[0]), enumerate(jobs)))
        return {"seconds": time.perf_counter() - t0}

    def _draw_and_train(self, mats: list, queue: list, lock: threading.Lock, step: int, thread: int) -> None:
        (_, works0, marks0), (_, works1, marks1) = mats
        while True:
            with lock:
                if not queue:
                    return
                job, piece = queue.pop()
            self._train(works0[thread], works1[thread], piece, step, job, (marks0[thread], marks1[thread]))

    def replicas(self, summed: bool, rounds: int = 1) -> dict:
        """Per step: each thread trains its own copy, the step's half of it (``rounds`` = 1, static) or, cut into
        ``2 x rounds`` pieces, the next piece as it becomes free (dynamic); with ``summed``, then the in-place sum
        of both copies' changes."""
        mats = []
        for base in self.base:
            ref = base.copy()
            works = np.empty((2, *base.shape), dtype=np.float32)
            works[:] = base
            mats.append((ref, works, np.zeros((2, base.shape[0]), dtype=np.uint8)))
        lock = threading.Lock()
        compute = summing = 0.0
        marked = []
        for step in range(self.steps):
            pieces = self.pieces(step, 2 * rounds)
            if rounds == 1:  # static: thread t takes piece t, whatever the other does
                queues = [[(0, pieces[0])], [(1, pieces[1])]]
            else:  # dynamic: one queue both threads draw from, first piece first
                shared = [(j, p) for j, p in enumerate(pieces)][::-1]
                queues = [shared, shared]
            t0 = time.perf_counter()
            list(self.pool.map(self._draw_and_train, [mats] * 2, queues, [lock] * 2, [step] * 2, range(2)))
            t1 = time.perf_counter()
            compute += t1 - t0
            marked.append([(int(np.count_nonzero(marks.any(axis=0))), int(np.count_nonzero(marks.all(axis=0))))
                           for _, _, marks in mats])
            if summed:
                for ref, works, marks in mats:
                    list(self.pool.map(reduce_part, [ref] * 2, [works] * 2, [marks] * 2, range(2), [2] * 2,
                                       [BLOCK_ROWS] * 2))
                summing += time.perf_counter() - t1
            else:
                for _, _, marks in mats:
                    marks[:] = 0
        rows, dim = self.base[0].shape
        # the sum reads the reference and each marking copy, writes the reference and both copies
        moved = sum(4 * dim * (6 * both + 5 * (either - both)) for step in marked for either, both in step)
        return {"seconds": compute + summing, "compute_s": compute, "sum_s": summing,
                "sum_bytes": moved if summed else 0,
                **{f"density_{name}": statistics.median(step[i][0] for step in marked) / rows
                   for i, name in enumerate(("syn0", "syn1"))}}

    def copy_bandwidth(self) -> float:
        """Bytes per second of numpy copying ~1.5 matrices per thread on 2 threads (the sum's bytes for syn1)."""
        n = 3 * self.base[1].size // 2
        src, dst = np.ones((2, n), dtype=np.float32), np.empty((2, n), dtype=np.float32)
        list(self.pool.map(lambda t: np.copyto(dst[t], src[t]), range(2)))
        t0 = time.perf_counter()
        for _ in range(10):
            list(self.pool.map(lambda t: np.copyto(dst[t], src[t]), range(2)))
        return 10 * 2 * src.nbytes / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "wiki17m.txt.xz"))
    parser.add_argument("--job-tokens", type=int, default=250_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, nargs="*", default=[5, 25],
                        help="also time dynamic steps cut into 2 x ROUNDS pieces the threads draw as they become free")
    args = parser.parse_args(argv)
    model = Word2Vec(workers=2)
    model.build_vocab(args.corpus)  # one untimed scan: the corpus reader streams .xz itself
    model.settings.job_tokens = args.job_tokens
    steps = _Steps(model, args.steps)
    ways = {"hogwild": steps.hogwild, "replicas": lambda: steps.replicas(False),
            "replicas + sum": lambda: steps.replicas(True)}
    for rounds in args.rounds:
        ways[f"replicas, dynamic {rounds} + sum"] = partial(steps.replicas, True, rounds)
    for way in ways.values():  # compile and warm up
        way()
    runs: dict[str, list[dict]] = {name: [] for name in ways}
    bandwidth = []
    for _ in range(args.repeats):
        for name, way in ways.items():
            runs[name].append(way())
            print(name, json.dumps(runs[name][-1]), file=sys.stderr, flush=True)
        bandwidth.append(steps.copy_bandwidth())
    med = {name: {key: statistics.median(r[key] for r in rows) for key in rows[0]} for name, rows in runs.items()}
    hogwild = [r["seconds"] for r in runs["hogwild"]]
    # per repeat, hogwild's time over each way's: the words/s ratio, paired within a repeat
    vs_hogwild = {name: statistics.median(h / r["seconds"] for h, r in zip(hogwild, rows, strict=True))
                  for name, rows in runs.items() if name != "hogwild"}
    summed = med["replicas + sum"]
    rows, dim = model.syn1.shape
    result = {
        "vocabulary": rows, "dim": dim, "job_tokens": args.job_tokens, "steps": steps.steps,
        "tokens": steps.tokens, "repeats": args.repeats, "medians": med,
        "words_per_s_vs_hogwild": vs_hogwild,
        "sum_share": summed["sum_s"] / summed["seconds"],
        "sum_ms_per_step": 1e3 * summed["sum_s"] / steps.steps,
        "sum_gb_per_s": summed["sum_bytes"] / summed["sum_s"] / 1e9,
        "copy_gb_per_s": statistics.median(bandwidth) / 1e9,
        "runs": runs,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
