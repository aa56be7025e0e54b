"""Quality of sparsembed's word2vec kernels over several seeds (issue 19: "the default kernel's quality is reported
over at least 3 seeds"), with each run's training time beside it.

For each seed, model and kernel: train on the corpus with gensim's defaults and ``--threads`` threads (in this
process, one run after another, so that a run has the machine alone), then score the vectors with the evaluator
of ``bench_word2vec.py`` (analogies restrict_vocab 30000, wordsim353, simlex999). Prints a table per model: per
seed, and the mean, min and max over seeds; ``--json`` keeps every run.

    .venv/bin/python benchmarks/bench_seeds.py --corpus ../shared/data/wiki17m.txt.xz --seeds 1 2 3

``--alphas 0.025 0.05`` repeats every run at each starting learning rate (default: the library's own, gensim's
0.025), one table row group per (model, kernel, alpha).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_word2vec import decompressed, evaluate  # noqa: E402  (one evaluator and .xz handling for all benchmarks)
from sparsembed import Word2Vec  # noqa: E402


def run(corpus: Path, sg: int, kernel: str, seed: int, threads: int, scratch: Path,
        alpha: float | None = None) -> dict:
    """One training run and its scores (``alpha``: the starting learning rate; None: the library's default)."""
    model = Word2Vec(sg=sg, kernel=kernel, seed=seed, workers=threads, **({} if alpha is None else {"alpha": alpha}))
    model.build_vocab(corpus)
    t0 = time.perf_counter()
    model.train(progress=False)
    train_s = time.perf_counter() - t0
    vectors = scratch / "vectors.bin"
    model.wv.save_word2vec_format(vectors)
    return {"model": "skipgram" if sg else "cbow", "kernel": kernel, "alpha": model.settings.alpha, "seed": seed,
            "train_s": train_s, **evaluate(str(vectors))}


def table(runs: list[dict]) -> str:
    """Per model and kernel: each seed's figures, then mean / min / max over the seeds."""
    lines = ["| model | kernel | alpha | seed | train s | analogy (30k) | ws353 | simlex999 |",
             "|---|---|---|---|---|---|---|---|"]
    for key in sorted({(r["model"], r["kernel"], r.get("alpha", 0.025)) for r in runs}):
        mine = [r for r in runs if (r["model"], r["kernel"], r.get("alpha", 0.025)) == key]
        head = f"| {key[0]} | {key[1]} | {key[2]:g}"
        for r in mine:
            lines.append(f"{head} | {r['seed']} | {r['train_s']:.1f} | {100 * r['analogy']:.2f}% "
                         f"| {r['ws353']:.3f} | {r['simlex999']:.3f} |")
        for name, fn in (("mean", statistics.fmean), ("min", min), ("max", max)):
            lines.append(f"{head} | **{name}** | {fn(r['train_s'] for r in mine):.1f} "
                         f"| {100 * fn(r['analogy'] for r in mine):.2f}% | {fn(r['ws353'] for r in mine):.3f} "
                         f"| {fn(r['simlex999'] for r in mine):.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="../shared/data/wiki17m.txt.xz")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--models", default="cbow,skipgram")
    ap.add_argument("--kernels", default="exact,batched")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--alphas", type=float, nargs="+", default=[None], help="starting learning rates to run each at")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as scratch:
        corpus = decompressed(Path(args.corpus), Path(scratch))
        for seed in args.seeds:
            for model in args.models.split(","):
                for kernel, alpha in ((k, a) for k in args.kernels.split(",") for a in args.alphas):
                    runs.append(run(corpus, int(model == "skipgram"), kernel, seed, args.threads, Path(scratch), alpha))
                    r = runs[-1]
                    print(f"{model} {kernel} alpha {r['alpha']:g} seed {seed}: {r['train_s']:.1f} s, "
                          f"analogy {100 * r['analogy']:.2f}%, ws353 {r['ws353']:.3f}", flush=True)
                    if args.json:
                        Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"),
                                                               "corpus": args.corpus, "threads": args.threads,
                                                               "runs": runs}, indent=1))
    print(table(runs))


if __name__ == "__main__":
    main()
