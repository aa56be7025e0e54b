"""Probe (issue 19): where the exact CBOW kernel's time goes, by taking one part out at a time.

Copies of this tree's ``src/`` go to a temporary directory, and in each copy ``word2vec/kernels.py``'s CBOW branch
is edited to leave one part out: ``no-output`` (no scores against the target and noise rows, no update of them: the
context's mean becomes the error), ``no-context-update`` (the error is not added to the context rows), ``no-sum``
(the hidden vector is one context row, not the sum of all), ``draws-only`` (subsampling, window and noise draws,
prefetches: nothing trained). Each edit is an exact text replacement, so the probe fails loudly, rather than
measuring something else, once the kernel changes. Each variant trains the same model (one thread, one epoch,
the corpus's first ``--mbytes`` megabytes) in a fresh process with its copy first on ``PYTHONPATH``, the variants
in turn, ``--repeats`` rounds; a part's share is (full - without it) / full, from the medians. Indicative: a part
taken out also changes what the others find in the caches. Example::

    .venv/bin/python benchmarks/probes/cbow_parts.py --corpus wiki17m.txt --repeats 3 \\
        --json benchmarks/results/cbow-parts.json
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KERNELS = Path("sparsembed/word2vec/kernels.py")

NEGATIVE = """                loss += negative_pass(syn1, hidden, word, work, alpha, negs[example & 1], sig, logsig,
                                      np.float32(1.0) / np.float32(count))
"""
UPDATE = """                add_to_rows(syn0, ctx_rows, count, work)
    return loss, pairs, trained
"""
SUM = """                sum_context(syn0, kept, lo, hi, i, ctx_rows, hidden)
"""

#: Each variant: (text to find in the CBOW branch, its replacement); several edits apply in order.
VARIANTS: dict[str, list[tuple[str, str]]] = {
    "full": [],
    "no-output": [(NEGATIVE, """                for k in range(dim):
                    work[k] = hidden[k] * np.float32(0.001)
""")],
    "no-context-update": [(UPDATE, "    return loss, pairs, trained\n")],
    # the context's ids are still gathered (the update walks them); its first row becomes the hidden vector
    "no-sum": [(SUM, """                n_ctx = 0
                for j in range(lo, hi):
                    if j != i:
                        ctx_rows[n_ctx] = kept[j]
                        n_ctx += 1
                hidden[:] = syn0[ctx_rows[0]]
""")],
    "draws-only": [(NEGATIVE, ""), (UPDATE, "    return loss, pairs, trained\n"), (SUM, "")],
}

CHILD = r"""
import sys, time
from sparsembed import Word2Vec
model = Word2Vec(sg=0, kernel="exact", seed=1, workers=1, epochs=1)
model.build_vocab(sys.argv[1])
started = time.perf_counter()
model.train(progress=False)
print(time.perf_counter() - started)
"""


def tree(variant: str, into: Path) -> Path:
    """A copy of ``src/`` with ``variant``'s edits; returns its path."""
    src = into / variant / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    path = src / KERNELS
    text = path.read_text()
    branch = text.index("            else:\n                count = hi - lo - 1")  # the CBOW branch of train_job
    head, body = text[:branch], text[branch:]
    for old, new in VARIANTS[variant]:
        if old not in body:
            raise SystemExit(f"cbow_parts: the kernel changed; {variant!r} no longer finds:\n{old}")
        body = body.replace(old, new, 1)
    path.write_text(head + body)
    return src


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--corpus", required=True)
    p.add_argument("--mbytes", type=int, default=50, help="train on the corpus's first MB megabytes")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="cbow_parts_") as tmp:
        scratch = Path(tmp)
        corpus = scratch / "corpus.txt"
        with open(a.corpus, "rb") as src, open(corpus, "wb") as dst:
            dst.write(src.read(a.mbytes << 20))
        trees = {v: tree(v, scratch) for v in VARIANTS}

        def run(variant: str) -> float:
            done = subprocess.run([sys.executable, "-c", CHILD, str(corpus)], capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": str(trees[variant])}, check=True)
            return float(done.stdout.strip().splitlines()[-1])

        for variant in VARIANTS:  # compile each copy's kernel once, untimed
            run(variant)
        for repeat in range(a.repeats):
            for variant in VARIANTS:
                seconds[variant].append(run(variant))
                print(f"{variant} #{repeat + 1}: {seconds[variant][-1]:.3f} s", flush=True)
    median = {v: statistics.median(s) for v, s in seconds.items()}
    full = median["full"]
    shares = {"output rows (scores and updates)": (full - median["no-output"]) / full,
              "adding the error to the context rows": (full - median["no-context-update"]) / full,
              "summing the context": (full - median["no-sum"]) / full,
              "the rest (subsampling, draws, prefetches)": median["draws-only"] / full}
    for part, share in shares.items():
        print(f"{part}: {100 * share:.0f}%")
    if a.json:
        Path(a.json).write_text(json.dumps({"corpus": a.corpus, "mbytes": a.mbytes, "repeats": a.repeats,
                                            "seconds": seconds, "median_s": median, "shares": shares}, indent=1))


if __name__ == "__main__":
    main()
