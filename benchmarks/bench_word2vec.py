"""sparsembed's kernels vs the other CPU word2vecs on the same corpus, same settings, same cores, in one run.

Each (library, model) pair runs in its own subprocess, so peak RSS is that run's alone, and repeats
``--repeats`` times in alternation (gensim, ours, gensim, ours, ...) so that machine noise hits all alike.
Settings everywhere: dim 100, window 5, negative 5, min_count 5, sample 1e-3, 5 epochs, alpha 0.025, ``--workers``
threads. Wall time = vocabulary + training (for the C programs and fastText, the whole command or call).
words/s = raw corpus words x epochs / training seconds (wall seconds where training is not timed apart). Quality is
scored by one evaluator (ours, equal to gensim's) on every set of vectors: analogies (questions-words.txt,
restrict_vocab=30000), wordsim353 and simlex999 Spearman.

Who runs: ``--kernels`` (sparsembed's job kernels, default all) and ``--peers``, a comma list of
``gensim`` (4.4, iterable mode; the default), ``gensim_file`` (its ``corpus_file`` mode, on the text cut into lines
of 1,000 words: on one line it trains a fraction, and on 10,000-word lines it still drops about 15% of the words,
since its reader lets a batch grow past 10,000 words by a line and the trainer keeps the first 10,000),
``fasttext`` (the ``fasttext-numpy2`` bindings,
``minn=0 maxn=0``: plain word2vec), ``pword2vec`` (Intel's HogBatch skip-gram) and ``word2vec_c`` (the original
word2vec.c); the last two are built by ``../shared/peers/build.sh`` into this run's scratch directory (never into
the package). pWord2Vec has no CBOW.

    .venv/bin/python benchmarks/bench_word2vec.py --corpus ../shared/data/wiki17m.txt.xz --repeats 3 \
        --peers gensim,gensim_file,fasttext,pword2vec,word2vec_c --kernels exact,batched
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sparsembed.word2vec.settings import KERNELS, Settings

#: The kernels run by default: each of the two (``auto`` is one of them, by model).
RUN_KERNELS = [k for k in KERNELS if k != "auto"]

CHILD = r"""
import json, sys, time
lib, model, corpus, workers, out = sys.argv[1:6]

def peak_rss_kb():
    # VmHWM belongs to this process image; ru_maxrss would carry over the parent's peak across fork + exec.
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))

sg = int(model == "skipgram")
t0 = time.perf_counter()
if lib == "gensim_file":
    from gensim.models import Word2Vec
    m = Word2Vec(sg=sg, workers=int(workers), seed=1)
    m.build_vocab(corpus_file=corpus)
    t1 = time.perf_counter()
    m.train(corpus_file=corpus, total_examples=m.corpus_count, total_words=m.corpus_total_words, epochs=m.epochs)
    t2 = time.perf_counter()
    raw, epochs = m.corpus_total_words, m.epochs
    peak = peak_rss_kb()
    m.wv.save_word2vec_format(out, binary=True)
elif lib == "fasttext":
    import fasttext
    import numpy as np
    from sparsembed.word2vec.formats import write_word2vec
    m = fasttext.train_unsupervised(corpus, model=model, dim=100, ws=5, neg=5, minCount=5, t=1e-3, epoch=5,
                                    lr=0.025, thread=int(workers), minn=0, maxn=0, wordNgrams=1, loss="ns",
                                    verbose=0)
    t1 = t0
    t2 = time.perf_counter()
    words, counts = m.get_words(include_freq=True)
    raw, epochs = int(sum(counts)), 5  # the kept words (fastText reports no raw count); see words_per_s below
    peak = peak_rss_kb()
    write_word2vec(out, list(words), np.stack([m.get_word_vector(w) for w in words]), binary=True)
elif lib == "gensim":
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
    m = Word2Vec(sg=sg, workers=int(workers), seed=1, kernel=lib.split("-", 1)[1])
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


#: The peers --peers may name; the first two are built from ../shared/peers, pWord2Vec trains skip-gram only.
PEERS = ("gensim", "gensim_file", "fasttext", "pword2vec", "word2vec_c")
PEER_SOURCES = Path(__file__).resolve().parents[2] / "shared/peers"
C_SETTINGS = ["-size", "100", "-window", "5", "-negative", "5", "-sample", "1e-3", "-min-count", "5", "-iter", "5",
              "-alpha", "0.025", "-binary", "1"]


def evaluate(vectors: str) -> dict:
    """Analogies (restrict_vocab 30000), wordsim353 and simlex999 Spearman on a word2vec binary file.

    Scored with sparsembed's evaluator, which tests/test_vectors.py shows equal to gensim's
    evaluate_word_analogies / evaluate_word_pairs (gensim's own takes minutes for the 19,544 questions here).
    """
    from gensim.test.utils import datapath

    from sparsembed.word2vec.vectors import Vectors

    kv = Vectors.load_word2vec_format(vectors, binary=True)
    ws353, simlex = datapath("wordsim353.tsv"), datapath("simlex999.txt")
    result = kv.evaluate(analogies=datapath("questions-words.txt"), pairs=[ws353, simlex], restrict_vocab=30000)
    return {"analogy": result["analogies"]["accuracy_pct"] / 100,
            "ws353": result["pairs"][os.fspath(ws353)]["spearman"],
            "simlex999": result["pairs"][os.fspath(simlex)]["spearman"]}


def run_once(lib: str, model: str, corpus: Path, workers: int, scratch: Path, inputs: dict) -> dict:
    """One timed run of ``lib`` (a peer, or ``sparsembed-KERNEL``) in its own process, then its vectors scored."""
    out = scratch / f"{lib}-{model}.bin"
    if lib in ("pword2vec", "word2vec_c"):
        result = run_program(lib, model, inputs["text"], workers, out, inputs)
    else:
        source = inputs["lines"] if lib == "gensim_file" else corpus
        done = subprocess.run([sys.executable, "-c", CHILD, lib, model, str(source), str(workers), str(out)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{lib} {model} failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        if lib == "fasttext":  # one call builds and trains; it counts kept words only: words/s over the raw corpus
            result["vocab_s"] = float("nan")
            result["words_per_s"] = inputs["raw_words"] * 5 / result["train_s"]
    result.update(evaluate(str(out)))
    out.unlink()
    return result


def run_program(lib: str, model: str, text: Path, workers: int, out: Path, inputs: dict) -> dict:
    """pWord2Vec or word2vec.c as a child process: wall = the whole command, peak RSS from its own rusage."""
    binary = inputs["binaries"][lib]
    argv = [str(binary), "-train", str(text), "-output", str(out), *C_SETTINGS, "-threads", str(workers)]
    if lib == "word2vec_c":
        argv += ["-cbow", str(int(model == "cbow")), "-hs", "0"]
    t0 = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t0
    stderr = child.stderr.read().decode(errors="replace") if child.stderr else ""
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0 or not out.exists():
        raise RuntimeError(f"{lib} {model} failed ({child.returncode}):\n{stderr[-3000:]}")
    return {"vocab_s": float("nan"), "train_s": wall, "wall_s": wall,
            "words_per_s": inputs["raw_words"] * 5 / wall, "peak_rss_mb": usage.ru_maxrss / 1024}


def build_programs(wanted: list[str], scratch: Path) -> dict[str, Path]:
    """Build pWord2Vec and word2vec.c with ../shared/peers/build.sh into ``scratch`` (needs g++ and OpenBLAS)."""
    if not any(p in wanted for p in ("pword2vec", "word2vec_c")):
        return {}
    target = scratch / "peers"
    subprocess.run(["bash", str(PEER_SOURCES / "build.sh"), str(target)], check=True, stdout=subprocess.DEVNULL)
    return {"pword2vec": target / "pWord2Vec", "word2vec_c": target / "word2vec"}


def cut_lines(text: Path, target: Path, words_per_line: int = 1_000) -> int:
    """``text``'s words, lines of at most ``words_per_line`` (gensim's corpus_file mode caps a batch at 10,000 words
    and drops the rest, and a batch grows by whole lines: short lines lose nearly nothing); returns the word count."""
    count = 0
    with open(text, "rb") as src, open(target, "wb") as dst:
        carry = b""
        while True:
            block = src.read(1 << 24)
            if not block:
                break
            words = (carry + block).split()
            carry = b"" if block[-1:].isspace() else words.pop() if words else b""
            for i in range(0, len(words), words_per_line):
                dst.write(b" ".join(words[i:i + words_per_line]) + b"\n")
            count += len(words)
        if carry:
            dst.write(carry + b"\n")
            count += 1
    return count


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
    """The median of each figure over the repeats."""
    keys = runs[0].keys()
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {"runs": len(runs), "each": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_corpus = Path(__file__).resolve().parents[2] / "shared/data/wiki17m.txt.xz"
    parser.add_argument("--corpus", default=str(default_corpus))
    parser.add_argument("--models", nargs="+", default=["cbow", "skipgram"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--kernels", default=",".join(RUN_KERNELS),
                        help=f"sparsembed's job kernels to run, comma-separated, of {','.join(KERNELS)} "
                        f"({','.join(RUN_KERNELS)})")
    parser.add_argument("--peers", default="gensim", help=f"others to run, comma-separated, of {','.join(PEERS)} "
                        "(gensim); '' for none")
    parser.add_argument("--json", default="benchmarks/results/word2vec.json")
    parser.add_argument("--markdown", default="BENCHMARKS.md",
                        help="file whose bench_word2vec table is replaced by this run's ('' to leave it)")
    args = parser.parse_args()
    kernels = [k for k in args.kernels.split(",") if k]
    peers = [p for p in args.peers.split(",") if p]
    unknown = [k for k in kernels if k not in KERNELS] + [p for p in peers if p not in PEERS]
    if unknown:
        parser.error(f"unknown kernel or peer: {', '.join(unknown)} (kernels: {', '.join(KERNELS)}; "
                     f"peers: {', '.join(PEERS)})")
    scratch = Path(tempfile.mkdtemp(prefix="bench-w2v-"))
    try:
        corpus = decompressed(Path(args.corpus), scratch)
        warm_numba_cache(corpus, scratch)
        inputs = {"binaries": build_programs(peers, scratch), "text": corpus}
        inputs["raw_words"] = cut_lines(corpus, scratch / "lines.txt")
        inputs["lines"] = scratch / "lines.txt"
        results = {}
        for model in args.models:
            libs = [p for p in peers if not (p == "pword2vec" and model == "cbow")]
            libs += [f"sparsembed-{k}" for k in kernels]
            runs: dict[str, list[dict]] = {lib: [] for lib in libs}
            for repeat in range(args.repeats):
                for lib in libs:
                    r = run_once(lib, model, corpus, args.workers, scratch, inputs)
                    runs[lib].append(r)
                    print(f"{model} {lib} #{repeat + 1}: " + ", ".join(f"{k} {v:.4g}" for k, v in r.items()),
                          flush=True)
            results[model] = {lib: summarise(r) for lib, r in runs.items()}
        report = {"date": time.strftime("%Y-%m-%d"), "corpus": args.corpus, "workers": args.workers,
                  "cpus": os.cpu_count(), "repeats": args.repeats, "results": results}
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
    text = path.read_text(encoding="utf-8") if path.exists() else f"{start}\n{end}\n"  # a new file: just the table
    if start not in text or end not in text:
        print(f"{path} has no bench_word2vec markers; table not written there", file=sys.stderr)
        return
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    stamp = f"<!-- {report['date']}, {report['corpus']}, workers {report['workers']} -->"
    path.write_text(f"{head}{start}\n{stamp}\n{table}\n{end}{tail}", encoding="utf-8")


def markdown(report: dict) -> str:
    """The table: one row per library and model (medians), then each peer against our default kernel (``auto``:
    the one it picks for the model)."""
    lines = ["| model | library | wall s (vocab + train) | vocab s | words/s | analogy (30k) | ws353 | simlex999 "
             "| peak RSS MB |", "|---|---|---|---|---|---|---|---|---|"]
    for model, libs in report["results"].items():
        ours = f"sparsembed-{Settings(sg=int(model == 'skipgram')).resolved_kernel}"
        if ours not in libs:
            ours = "sparsembed-auto"
        for lib, r in libs.items():
            vocab = "" if math.isnan(r["vocab_s"]) else f"{r['vocab_s']:.1f}"
            lines.append(f"| {model} | {lib} | {r['wall_s']:.1f} | {vocab} | {r['words_per_s'] / 1e6:.2f}M "
                         f"| {100 * r['analogy']:.1f}% | {r['ws353']:.3f} | {r['simlex999']:.3f} "
                         f"| {r['peak_rss_mb']:.0f} |")
        if ours not in libs:
            continue
        s = libs[ours]
        for lib, g in libs.items():
            if lib == ours:
                continue
            lines.append(f"| {model} | **{ours} vs {lib}** | **{g['wall_s'] / s['wall_s']:.2f}x faster** | | "
                         f"{s['words_per_s'] / g['words_per_s']:.2f}x | {100 * (s['analogy'] - g['analogy']):+.1f} pt "
                         f"| {s['ws353'] - g['ws353']:+.3f} | {s['simlex999'] - g['simlex999']:+.3f} "
                         f"| {s['peak_rss_mb'] / g['peak_rss_mb']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
