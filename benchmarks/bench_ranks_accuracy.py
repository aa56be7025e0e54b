"""Accuracy of data-parallel word2vec at 2, 4 and 8 ranks against one process with the same settings.

    .venv/bin/python benchmarks/bench_ranks_accuracy.py --corpus ../shared/data/wiki17m.txt.xz --ranks 2 4 8 \
        --seeds 1 2 --json benchmarks/results/ranks-accuracy.json

Every run is the real command line: ``sparsembed train CORPUS --out DIR --workers 1 --seed S`` for one process and
the same with ``--nproc N`` for N ranks (one training thread each, every rank on this host, default exchange
settings), CBOW with gensim's defaults, 5 epochs. Only accuracy is compared here: ranks share this machine's cores,
so their speed says nothing about hosts of their own. Quality as everywhere in BENCHMARKS.md: analogy accuracy on
gensim's questions-words.txt with restrict_vocab=30000 and wordsim353 Spearman, scored by ``sparsembed eval``.
Prints a table and one JSON object (every run, and per N the median difference to the single process of the same
seed).
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dataparallel import _run  # noqa: E402  (the same run-and-score helper as the speed benchmark)

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "wiki17m.txt.xz"))
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8], help="rank counts to compare")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="each configuration trained per seed")
    parser.add_argument("--extra", default="", help="more train options for every run, e.g. '--epochs 1'")
    parser.add_argument("--json", help="write the result here too")
    args = parser.parse_args(argv)
    extra = args.extra.split()
    with tempfile.TemporaryDirectory(prefix="sparsembed-ranks-") as tmp:
        corpus = Path(args.corpus)
        if corpus.suffix == ".xz":  # decompressed once: every run reads the same plain file
            plain = Path(tmp) / corpus.stem
            with lzma.open(corpus, "rb") as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
            corpus = plain
        runs = []
        for seed in args.seeds:
            for n in [1, *args.ranks]:
                launch = ["--nproc", str(n)] if n > 1 else []
                t0 = time.perf_counter()
                row = _run(corpus, Path(tmp) / f"r{n}-s{seed}", ["--workers", "1", "--seed", str(seed), *launch,
                                                                  *extra])
                row.update(ranks=n, seed=seed, wall_s=round(time.perf_counter() - t0, 1))
                runs.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    single = {r["seed"]: r for r in runs if r["ranks"] == 1}
    summary = {}
    for n in args.ranks:
        mine = [r for r in runs if r["ranks"] == n]
        summary[n] = {
            "analogy_pt": statistics.median(100 * (r["analogy"] - single[r["seed"]]["analogy"]) for r in mine),
            "ws353": statistics.median(r["ws353"] - single[r["seed"]]["ws353"] for r in mine),
        }
    print("| ranks | seed | analogy | ws353 | vs one process (analogy pt / ws353) |")
    print("|---|---|---|---|---|")
    for r in runs:
        one = single[r["seed"]]
        print(f"| {r['ranks']} | {r['seed']} | {100 * r['analogy']:.2f}% | {r['ws353']:.3f} | "
              f"{100 * (r['analogy'] - one['analogy']):+.2f} / {r['ws353'] - one['ws353']:+.3f} |")
    result = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "runs": runs, "median_vs_single": summary}
    print(json.dumps(result["median_vs_single"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
