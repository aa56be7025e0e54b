"""sparsembed vs gensim 4.4 Word2Vec on the same corpus, same settings, same cores, in one run.

Each (library, model) pair runs in its own subprocess, so peak RSS is that run's alone, and repeats
``--repeats`` times in alternation (gensim, ours, gensim, ours, ...) so that machine noise hits both alike.
Wall time = vocabulary + training. words/s = raw corpus words x epochs / training seconds. Quality is scored
by one evaluator (ours, equal to gensim's) on both sets of vectors: analogies (questions-words.txt,
restrict_vocab=30000) and wordsim353 Spearman.

    .venv/bin/python benchmarks/bench_word2vec.py --corpus ../shared/data/wiki17m.txt.xz --repeats 3
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
lib, model, corpus, workers, out = sys.argv[1:6]

def peak_rss_kb():
    # VmHWM belongs to this process image; ru_maxrss would carry over the parent's peak across fork + exec.
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))

sg = int(model == "skipgram")
t0 = time.perf_counter()
if lib == "gensim":
    from gensim.models import Word2Vec
    from gensim.models.word2vec import Text8Corpus
    m = Word2Vec(sg=sg, workers=int(workers), seed=1)
    m.build_vocab(Text8Corpus(corpus))
    t1 = time.perf_counter()
    m.train(Text8Corpus(corpus), total_examples=m.corpus_count, epochs=m.epochs)
    t2 = time.perf_counter()
    raw, epochs = m.corpus_total_words, m.epochs
    peak = peak_rss_kb()
    m.wv.save_word2vec_format(out, binary=True)
else:
    from sparsembed import Word2Vec
    m = Word2Vec(sg=sg, workers=int(workers), seed=1)
    m.build_vocab(corpus)
    t1 = time.perf_counter()
    m.train(progress=False)
    t2 = time.perf_counter()
    raw, epochs = m.corpus.raw_words, m.settings.epochs
    peak = peak_rss_kb()
    m.wv.save_word2vec_format(out, binary=True)
print(json.dumps({"vocab_s": t1 - t0, "train_s": t2 - t1, "wall_s": t2 - t0,
                  "words_per_s": raw * epochs / (t2 - t1), "peak_rss_mb": peak / 1024}))
"""


def evaluate(vectors: str) -> dict:
    """Analogies (restrict_vocab 30000) and wordsim353 Spearman on a word2vec binary file.

    Scored with sparsembed's evaluator, which tests/test_vectors.py shows equal to gensim's
    evaluate_word_analogies / evaluate_word_pairs (gensim's own takes minutes for the 19,544 questions here).
    """
    from gensim.test.utils import datapath

    from sparsembed.word2vec.vectors import Vectors

    kv = Vectors.load_word2vec_format(vectors, binary=True)
    result = kv.evaluate(analogies=datapath("questions-words.txt"), pairs=[datapath("wordsim353.tsv")],
                         restrict_vocab=30000)
    ws353 = next(iter(result["pairs"].values()))["spearman"]
    return {"analogy": result["analogies"]["accuracy_pct"] / 100, "ws353": ws353}


def run_once(lib: str, model: str, corpus: Path, workers: int, scratch: Path) -> dict:
    out = scratch / f"{lib}-{model}.bin"
    done = subprocess.run([sys.executable, "-c", CHILD, lib, model, str(corpus), str(workers), str(out)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{lib} {model} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(evaluate(str(out)))
    out.unlink()
    return result


def decompressed(corpus: Path, scratch: Path) -> Path:
    if corpus.suffix != ".xz":
        return corpus
    target = scratch / corpus.stem
    with lzma.open(corpus) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 22)
    return target


def warm_numba_cache(corpus: Path, scratch: Path) -> None:
    """Compile (or load from cache) the kernels once, outside the timed runs, as gensim's are prebuilt."""
    sample = scratch / "warm.txt"
    with open(corpus, "rb") as src:
        sample.write_bytes(src.read(200_000).rsplit(b" ", 1)[0])
    code = ("from sparsembed import Word2Vec\n"
            f"for sg in (0, 1): Word2Vec({str(sample)!r}, sg=sg, epochs=1, workers=1, progress=False)")
    subprocess.run([sys.executable, "-c", code], check=True)


def summarise(runs: list[dict]) -> dict:
    keys = runs[0].keys()
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {"runs": len(runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_corpus = Path(__file__).resolve().parents[2] / "shared/data/wiki17m.txt.xz"
    parser.add_argument("--corpus", default=str(default_corpus))
    parser.add_argument("--models", nargs="+", default=["cbow", "skipgram"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", default="benchmarks/results/word2vec.json")
    parser.add_argument("--markdown", default="BENCHMARKS.md",
                        help="file whose bench_word2vec table is replaced by this run's ('' to leave it)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-w2v-"))
    try:
        corpus = decompressed(Path(args.corpus), scratch)
        warm_numba_cache(corpus, scratch)
        results = {}
        for model in args.models:
            runs: dict[str, list[dict]] = {"gensim": [], "sparsembed": []}
            for repeat in range(args.repeats):
                for lib in ("gensim", "sparsembed"):
                    r = run_once(lib, model, corpus, args.workers, scratch)
                    runs[lib].append(r)
                    print(f"{model} {lib} #{repeat + 1}: " + ", ".join(f"{k} {v:.4g}" for k, v in r.items()),
                          flush=True)
            results[model] = {lib: summarise(r) for lib, r in runs.items()}
        report = {"date": time.strftime("%Y-%m-%d"), "corpus": args.corpus, "workers": args.workers,
                  "cpus": os.cpu_count(), "results": results}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        table = markdown(report)
        print(table)
        if args.markdown:
            update_markdown(Path(args.markdown), table, report)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def update_markdown(path: Path, table: str, report: dict) -> None:
    """Replace the table between this benchmark's markers in ``path`` (the prose around it stays)."""
    start, end = "<!-- bench_word2vec table: start -->", "<!-- bench_word2vec table: end -->"
    text = path.read_text(encoding="utf-8")
    if start not in text or end not in text:
        print(f"{path} has no bench_word2vec markers; table not written there", file=sys.stderr)
        return
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    stamp = f"<!-- {report['date']}, {report['corpus']}, workers {report['workers']} -->"
    path.write_text(f"{head}{start}\n{stamp}\n{table}\n{end}{tail}", encoding="utf-8")


def markdown(report: dict) -> str:
    lines = ["| model | library | wall s (vocab + train) | vocab s | words/s | analogy (30k) | ws353 | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    for model, libs in report["results"].items():
        for lib, r in libs.items():
            lines.append(f"| {model} | {lib} | {r['wall_s']:.1f} | {r['vocab_s']:.1f} | {r['words_per_s'] / 1e6:.2f}M "
                         f"| {100 * r['analogy']:.1f}% | {r['ws353']:.3f} | {r['peak_rss_mb']:.0f} |")
        g, s = libs["gensim"], libs["sparsembed"]
        lines.append(f"| {model} | **ratio** | **{g['wall_s'] / s['wall_s']:.2f}x faster** | | "
                     f"{s['words_per_s'] / g['words_per_s']:.2f}x | {100 * (s['analogy'] - g['analogy']):+.1f} pt "
                     f"| {s['ws353'] - g['ws353']:+.3f} | {s['peak_rss_mb'] / g['peak_rss_mb']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
