"""The same training command from an older commit's tree and from this one, interleaved on one machine.

Issue 19's CBOW target is a speed-up over the code as it was when the issue was filed, and this machine's speed
drifts by 20-50% between hours, so a figure from another day is no baseline. This script extracts the older
commit's ``src/`` (``git archive``, into a temporary directory) and runs, in alternation, ``python -m sparsembed
train CORPUS --out DIR --model M --workers W --seed S --quiet`` with each tree first on ``PYTHONPATH`` (same venv,
same corpus file). Wall time is the whole command as a user sees it (interpreter start, vocabulary scan, training,
output). Each repeat uses its own seed, the same for both trees, so the quality columns (analogies restrict_vocab
30000, wordsim353, simlex999, scored by ``bench_word2vec.evaluate``) compare like with like. Before the timed
runs each tree trains once on the corpus's first megabyte, so that numba's on-disk cache holds both trees'
kernels (gensim's Cython is prebuilt too).

    .venv/bin/python benchmarks/bench_commits.py --base 07b350a --corpus ../shared/data/wiki17m.txt.xz \\
        --models cbow --repeats 3 --json benchmarks/results/commits-cbow.json

``--new-args`` adds options to this tree's command only (``--new-args=--kernel=batched``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_word2vec import decompressed, evaluate  # noqa: E402  (one evaluator and .xz handling for all benchmarks)

ROOT = Path(__file__).resolve().parent.parent


def extract_tree(rev: str, into: Path) -> Path:
    """``src/`` of commit ``rev`` under ``into`` (``git archive``: no worktree to clean up); returns its src path."""
    into.mkdir(parents=True, exist_ok=True)
    archive = into / "tree.tar"
    with open(archive, "wb") as out:
        subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    archive.unlink()
    return into / "src"


def tree_commit() -> tuple[str, bool]:
    """The commit this repository's ``src/`` comes from (short hash, "unknown" outside git) and whether ``src/``
    differs from it: what a result file records of the code that ran."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""
    head = git("rev-parse", "--short", "HEAD")
    return (head, bool(git("status", "--porcelain", "--", "src"))) if head else ("unknown", False)


def _fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2, nothing run."""
    print(f"bench_commits: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def train(src: Path, corpus: Path, out: Path, model: str, workers: int, seed: int, extra: list[str]) -> float:
    """Wall seconds of one ``sparsembed train`` command run with ``src`` first on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-m", "sparsembed", "train", str(corpus), "--out", str(out), "--model", model,
           "--workers", str(workers), "--seed", str(seed), "--quiet", *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the older commit (e.g. the one an issue was filed against)")
    ap.add_argument("--corpus", default="../shared/data/wiki17m.txt.xz")
    ap.add_argument("--models", default="cbow", help="comma list of cbow, skipgram")
    ap.add_argument("--repeats", type=int, default=3, help="pairs of runs per model; repeat r uses seed r")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--new-args", default="", help="extra options for this tree's command (space separated)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    extra = args.new_args.split()
    bad = [m for m in args.models.split(",") if m not in ("cbow", "skipgram")]
    if bad:
        _fail(f"--models takes a comma list of cbow, skipgram; got {', '.join(bad)}")
    if not Path(args.corpus).is_file():
        _fail(f"--corpus {args.corpus} is not a file (wiki17m.txt.xz is in ../shared/data)")
    if args.repeats < 1:
        _fail(f"--repeats must be at least 1, got {args.repeats}")
    found = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "--verify", "--quiet",
                            f"{args.base}^{{commit}}"], capture_output=True, text=True)
    if found.returncode != 0:
        _fail(f"--base {args.base!r} is no commit of {ROOT}; give a hash or a ref")
    base_rev = found.stdout.strip()
    new_rev, dirty = tree_commit()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_commits_") as tmp:
        scratch = Path(tmp)
        trees = {"base": extract_tree(base_rev, scratch / "base"), "new": ROOT / "src"}
        corpus = decompressed(Path(args.corpus), scratch)
        sample = scratch / "warm.txt"
        with open(corpus, "rb") as src, open(sample, "wb") as dst:
            dst.write(src.read(1 << 20))
        for model in args.models.split(","):
            for name, src in trees.items():
                own = extra if name == "new" else []
                train(src, sample, scratch / f"warm-{name}-{model}", model, args.workers, 1, own)
            for seed in range(1, args.repeats + 1):
                for name, src in trees.items():
                    out = scratch / f"{name}-{model}-{seed}"
                    wall = train(src, corpus, out, model, args.workers, seed, extra if name == "new" else [])
                    scores = evaluate(str(out / "vectors.bin"))
                    run = {"tree": name, "model": model, "seed": seed, "wall_s": wall, **scores}
                    runs.append(run)
                    print(json.dumps(run), flush=True)
    print(f"\nbase {base_rev} against {new_rev}{' (+ uncommitted changes)' if dirty else ''}, "
          f"{args.workers} workers{', new tree with ' + args.new_args if extra else ''}")
    print("| model | tree | wall s per seed | median wall s | analogy mean | ws353 mean | simlex999 mean |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for model in args.models.split(","):
        for name in ("base", "new"):
            mine = [r for r in runs if r["model"] == model and r["tree"] == name]
            walls = [r["wall_s"] for r in mine]
            summary[(model, name)] = statistics.median(walls)
            print(f"| {model} | {name} | {', '.join(f'{w:.1f}' for w in walls)} | {statistics.median(walls):.1f} "
                  f"| {100 * statistics.fmean(r['analogy'] for r in mine):.2f}% "
                  f"| {statistics.fmean(r['ws353'] for r in mine):.3f} "
                  f"| {statistics.fmean(r['simlex999'] for r in mine):.3f} |")
        pairs = [b["wall_s"] / n["wall_s"] for b, n in zip(
            [r for r in runs if r["model"] == model and r["tree"] == "base"],
            [r for r in runs if r["model"] == model and r["tree"] == "new"], strict=True)]
        print(f"| {model} | **speed-up** | pairs {', '.join(f'{p:.2f}x' for p in pairs)} "
              f"| **{summary[(model, 'base')] / summary[(model, 'new')]:.2f}x** (medians) | | | |")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "base_commit": base_rev,
            "new_commit": new_rev, "uncommitted_changes": dirty, "corpus": args.corpus, "workers": args.workers,
            "new_args": args.new_args, "command": " ".join(sys.argv), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
