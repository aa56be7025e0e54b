"""Data-parallel word2vec end to end: 1 process x 2 threads against 2 ranks x 1 thread on the same cores.

    .venv/bin/python benchmarks/bench_dataparallel.py --corpus ../shared/data/wiki17m.txt.xz --repeats 2 \
        [--job-tokens 250000 1000000] [--transports auto tcp] [--variants sync overlap] [--balances static dynamic] \
        [--seeds 1 2 3]

Every run is the real command line (``sparsembed train``, CBOW, gensim's defaults, 5 epochs), in alternation
(single, ranks, single, ranks, ...) so machine noise hits both alike. words/s is rank 0's figure for the whole
training session (raw corpus words x epochs / training seconds, as the progress bar reports it); the exchange
share is exchange seconds / (compute + exchange) summed over rank 0's steps in metrics.jsonl. Quality: analogy
accuracy on gensim's questions-words.txt with restrict_vocab=30000 (as word2vec's compute-accuracy) and
wordsim353 Spearman, scored by ``sparsembed eval``. Prints one JSON object; medians over repeats.
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _eval(out: Path) -> dict:
    from gensim.test.utils import datapath

    result = subprocess.run([sys.executable, "-m", "sparsembed", "eval", str(out), "--analogies",
                             datapath("questions-words.txt"), "--pairs", datapath("wordsim353.tsv"),
                             "--restrict-vocab", "30000"], capture_output=True, text=True, check=True)
    scores = json.loads(result.stdout)
    ws353 = next(iter(scores["pairs"].values()))["spearman"]
    return {"analogy": scores["analogies"]["accuracy_pct"] / 100, "ws353": ws353}


def _run(corpus: Path, out: Path, extra: list[str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "sparsembed", "train", str(corpus), "--out", str(out), "--quiet", *extra]
    subprocess.run(cmd, check=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    progress = [r for r in records if "words_per_s" in r]
    steps = [r for r in records if "step" in r]
    row = {"words_per_s": progress[-1]["words_per_s"], **_eval(out)}
    if steps:
        exchange = sum(r["exchange_s"] for r in steps)
        compute = sum(r["compute_s"] for r in steps)
        row.update(steps=len(steps), exchange_share=exchange / (exchange + compute),
                   mb_sent_per_step=statistics.median(r["bytes_sent"] for r in steps) / 1e6)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "wiki17m.txt.xz"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--job-tokens", type=int, nargs="+", default=[1_000_000],
                        help="tokens per job (a data-parallel step = one job per rank)")
    parser.add_argument("--strategy", default="replicated")
    parser.add_argument("--transports", nargs="+", default=["auto"], choices=["auto", "tcp"],
                        help="auto: shared memory between ranks of one host; tcp: gloo over loopback")
    parser.add_argument("--variants", nargs="+", default=["sync"], choices=["sync", "overlap"],
                        help="overlap: the ranks run with --overlap (exchange behind the next step)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1],
                        help="seeds (--seed) each repeat trains every configuration with: accuracy over seeds")
    parser.add_argument("--balances", nargs="+", default=["static"], choices=["static", "dynamic"],
                        help="dynamic: ranks on one host draw a step's jobs as each becomes free (--balance)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sparsembed-dp-") as tmp:
        corpus = Path(args.corpus)
        if corpus.suffix == ".xz":  # both sides read the same plain file
            plain = Path(tmp) / corpus.stem
            with lzma.open(corpus, "rb") as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            corpus = plain
        configs = {"1 process x 2 threads": ["--workers", "2"]}
        for jt in args.job_tokens:
            for transport in args.transports:
                for variant in args.variants:
                    for balance in args.balances:
                        name = f"2 ranks x 1 thread, {args.strategy}, job {jt}, transport {transport}"
                        name += (", overlap" if variant == "overlap" else "") + (
                            ", dynamic balance" if balance == "dynamic" else "")
                        configs[name] = [
                            "--nproc", "2", "--workers", "1", "--job-tokens", str(jt), "--strategy", args.strategy,
                            "--transport", transport, "--balance", balance] + (
                            ["--overlap"] if variant == "overlap" else [])
        runs: dict[str, list[dict]] = {name: [] for name in configs}
        for _ in range(args.repeats):
            for seed in args.seeds:
                for name, extra in configs.items():
                    row = {"seed": seed, **_run(corpus, Path(tmp) / "out", [*extra, "--seed", str(seed)])}
                    runs[name].append(row)
                    print(name, json.dumps(row), file=sys.stderr, flush=True)
    summary = {}
    for name, rows in runs.items():
        summary[name] = {key: statistics.median(r[key] for r in rows) for key in rows[0] if key != "seed"}
        summary[name]["runs"] = rows
    base = summary["1 process x 2 threads"]
    for row in summary.values():
        row["words_per_s_vs_single"] = row["words_per_s"] / base["words_per_s"]
        row["analogy_points_vs_single"] = 100 * (row["analogy"] - base["analogy"])
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
