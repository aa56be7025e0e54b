"""Subword (fastText) models: sparsembed vs fastText vs gensim FastText, same corpus, settings and cores (issue 20).

    .venv/bin/python benchmarks/bench_fasttext.py --corpus ../shared/data/wiki17m.txt.xz --models cbow skipgram \
        --repeats 3 --threads 2 --libraries sparsembed,fasttext,gensim

Settings everywhere: character n-grams 3-6, 2,000,000 buckets, dim 100, window 5, negative 5, min_count 5,
sample 1e-3, ``--epochs`` (5), ``--threads`` (2). Learning rate: one per model, the same in all three libraries:
fastText's default, 0.05, for CBOW and for skip-gram (``--lr`` sets another for all): fastText is the model's
reference implementation and the issue's yardstick, and its rate was tuned for the subword model; gensim's 0.025
is word2vec skip-gram's. Each library decays it linearly to (about) zero: fastText to 0, gensim and sparsembed to
1e-4.

Who runs (``--libraries``, a comma list):

* ``sparsembed``: the command ``sparsembed train CORPUS --subwords 3-6 --buckets 2000000 ...`` in a subprocess;
  vectors afterwards (untimed) from ``Word2Vec.load(DIR).wv``: ``wv[word]`` for any word;
* ``fasttext``: ``fasttext.train_unsupervised`` (the ``fasttext-numpy2`` bindings) in a fresh process, on the
  decompressed text as it is (one line here: fastText reads it in chunks of 1024 words, whole); vectors from
  ``get_word_vector``; its ``</s>`` token is left out of the vocabulary scored;
* ``gensim``: gensim 4.4 ``FastText`` in ``corpus_file`` mode, on the text cut into lines of 1,000 words (see
  :data:`GENSIM_LINE_WORDS`: lines of 10,000 words, the mode's limit, make it skip ~15% of the training words);
  ``gensim_iter``: the same over a ``Text8Corpus`` iterable (10,000-word sentences; not faster with 2 threads,
  not run by default); vectors from ``model.wv``.

Each (library, model) runs in its own process, ``--repeats`` times, the libraries alternating within each repeat;
the figures are medians. wall s = from starting the process to the trained model (interpreter start, imports,
vocabulary scan and training; for sparsembed the whole command, which also writes its vectors and checkpoint).
words/s = raw corpus words x epochs / wall s. Peak RSS = the training process's own high-water mark (VmHWM right
after training; for the command, its rusage, started from a small wrapper process so no parent's pages count).

Quality, scored the same way for every library by :func:`score` from the vocabulary (frequency order) and a
``lookup(word) -> vector``: analogies (gensim's questions-words.txt, restrict_vocab 30000, over a sparsembed
``Vectors`` of the in-vocabulary words); wordsim353 and simlex999 Spearman over the pairs whose words are both in
the vocabulary (case-insensitive as gensim's ``evaluate_word_pairs``, whole vocabulary); the share of the files'
distinct words outside the vocabulary (min_count 5); Spearman over all pairs, a word outside the vocabulary
getting its subword vector (looked up lower-cased, as the corpora are), and over the pairs with at least one
such word. A word that gets no vector (sparsembed: none of its n-grams trained) scores similarity 0 in its pairs
and is counted (``*_no_vector``).

Found on the way (fastText-numpy2 0.9.3, gensim 4.4): fastText initialises only the first ``thread`` tenths of its
input matrix at random (``DenseMatrix::uniform`` runs one of its ten blocks per thread), the rest of the 2M bucket
rows start at zero and stay untouched pages until trained: hence its peak RSS below the 767 MiB of a full
2.0M x 100 matrix, and zero (no) vectors for unseen words whose n-grams all fall in such untrained buckets.
gensim's corpus_file mode skips words on 10,000-word lines: see :data:`GENSIM_LINE_WORDS`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_word2vec import decompressed  # noqa: E402  (the same .xz handling as the word2vec benchmark)

LIBRARIES = ("sparsembed", "fasttext", "gensim", "gensim_iter")
DEFAULT_LIBRARIES = "sparsembed,fasttext,gensim"
MINN, MAXN, BUCKETS, DIM, WINDOW, NEGATIVE, MIN_COUNT, SAMPLE = 3, 6, 2_000_000, 100, 5, 5, 5, 1e-3
#: fastText's default learning rate, for both models (see the docstring).
DEFAULT_LR = 0.05
PAIR_FILES = {"ws353": "wordsim353.tsv", "simlex999": "simlex999.txt"}
ANALOGY_FILE = "questions-words.txt"
RESTRICT_VOCAB = 30_000
#: Words per line of gensim's corpus_file input. Its reader (``CythonLineSentence.next_batch``) fills a batch past
#: 10,000 words by up to one whole line, and the trainer keeps only the first 10,000 words of a batch that survive
#: vocabulary and subsampling, silently: with lines of 10,000 words a batch is two lines, and on wiki1m 15% of the
#: words that should train are dropped (538k of 635k per epoch; 5,000-word lines: 634k). 1,000-word lines bound a
#: batch by 11,000 words, more than 10,000 of which survive only if subsampling and min_count keep over 91%.
GENSIM_LINE_WORDS = 1_000

# fastText and gensim: train, read the high-water mark, then (untimed) write the vocabulary's vectors and the
# evaluation words' vectors to an .npz for the parent to score.
CHILD = r"""
import json, sys, time
lib, model, corpus, threads, lr, epochs, out, eval_words, settings = sys.argv[1:10]
threads, lr, epochs = int(threads), float(lr), int(epochs)
minn, maxn, buckets, dim, window, negative, min_count, sample = json.loads(settings)

def peak_rss_kb():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))

info = {}
t0 = time.perf_counter()
if lib == "fasttext":
    import fasttext
    m = fasttext.train_unsupervised(corpus, model=model, dim=dim, ws=window, neg=negative, minCount=min_count,
                                    t=sample, epoch=epochs, lr=lr, thread=threads, minn=minn, maxn=maxn,
                                    bucket=buckets, wordNgrams=1, loss="ns", verbose=0)
    done_at = time.time()
    t1 = time.perf_counter()
    peak = peak_rss_kb()
    import numpy as np
    words, counts = m.get_words(include_freq=True)
    keep = [i for i, w in enumerate(words) if w != "</s>"]
    vocab, counts = [words[i] for i in keep], np.asarray(counts)[keep]
    info["vocab_tokens"] = int(np.asarray(m.get_words(include_freq=True)[1]).sum())
    lookup = m.get_word_vector
    matrix = np.stack([lookup(w) for w in vocab]) if vocab else np.zeros((0, dim), np.float32)
else:
    from gensim.models import FastText
    m = FastText(sg=int(model == "skipgram"), vector_size=dim, window=window, negative=negative, hs=0,
                 min_count=min_count, sample=sample, epochs=epochs, alpha=lr, min_n=minn, max_n=maxn,
                 bucket=buckets, workers=threads, seed=1)
    if lib == "gensim":
        m.build_vocab(corpus_file=corpus)
        trained, raw = m.train(corpus_file=corpus, total_examples=m.corpus_count,
                               total_words=m.corpus_total_words, epochs=epochs)
    else:
        from gensim.models.word2vec import Text8Corpus
        m.build_vocab(Text8Corpus(corpus))
        trained, raw = m.train(Text8Corpus(corpus), total_examples=m.corpus_count, epochs=epochs)
    done_at = time.time()
    t1 = time.perf_counter()
    peak = peak_rss_kb()
    import numpy as np
    info.update(scanned_words=int(m.corpus_total_words), trained_raw_words=int(raw), trained_words=int(trained))
    vocab, counts, matrix = list(m.wv.index_to_key), None, m.wv.vectors
    lookup = m.wv.__getitem__
eval_list = [w for w in open(eval_words, encoding="utf-8").read().split("\n") if w]
eval_matrix = np.zeros((len(eval_list), dim), np.float32)
has = np.zeros(len(eval_list), bool)
for i, w in enumerate(eval_list):
    try:
        eval_matrix[i] = lookup(w)
        has[i] = bool(np.any(eval_matrix[i]))
    except KeyError:
        pass
np.savez(out, vocab=np.array(vocab, dtype=str), matrix=np.asarray(matrix, np.float32),
         eval_words=np.array(eval_list, dtype=str), eval_matrix=eval_matrix, eval_has=has)
print(json.dumps({"done_at": done_at, "call_s": t1 - t0, "peak_rss_mb": peak / 1024, **info}))
"""

# sparsembed: the command under a small wrapper, whose wait4 gives the command's own peak RSS.
WRAPPER = r"""
import json, os, subprocess, sys, time
t0 = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
_, status, usage = os.wait4(child.pid, 0)
wall = time.perf_counter() - t0
err = child.stderr.read().decode(errors="replace")
print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024,
                  "stderr": err[-3000:]}))
"""

# sparsembed, afterwards and untimed: the same .npz from the saved model.
EXPORT = r"""
import json, sys
import numpy as np
from sparsembed import Word2Vec
out_dir, eval_words, out = sys.argv[1:4]
wv = Word2Vec.load(out_dir).wv
eval_list = [w for w in open(eval_words, encoding="utf-8").read().split("\n") if w]
eval_matrix = np.zeros((len(eval_list), wv.vector_size), np.float32)
has = np.zeros(len(eval_list), bool)
for i, w in enumerate(eval_list):
    try:
        eval_matrix[i] = wv[w]
        has[i] = bool(np.any(eval_matrix[i]))
    except KeyError:
        pass
np.savez(out, vocab=np.array(wv.index_to_key, dtype=str), matrix=wv.vectors, eval_words=np.array(eval_list, dtype=str),
         eval_matrix=eval_matrix, eval_has=has)
state = json.load(open(f"{out_dir}/model/state.json"))["meta"]
print(json.dumps({"scanned_words": int(state["vocab"].get("vocab_raw_words", -1)),
                  "vocab_tokens": state["corpus"]["tokens"]}))
"""


# ------------------------------------------------------------------------------------------------ scoring


def read_pairs(path: str | os.PathLike) -> tuple[list[tuple[str, str]], np.ndarray]:
    """``word1<TAB>word2<TAB>score`` lines (``#`` comments and blank lines skipped): the pairs and gold scores."""
    pairs, gold = [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        a, b, s = line.rstrip("\r").split("\t")
        pairs.append((a, b))
        gold.append(float(s))
    return pairs, np.array(gold, dtype=np.float64)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho with average ranks for ties (scipy's ``spearmanr``); NaN below 3 values."""
    if len(x) < 3:
        return float("nan")
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def cosine(u: np.ndarray | None, v: np.ndarray | None) -> float:
    """Cosine similarity; 0 where a side has no vector (None or all zero), as gensim's ``dummy4unknown``."""
    if u is None or v is None:
        return 0.0
    nu, nv = float(np.linalg.norm(u)), float(np.linalg.norm(v))
    return float(np.dot(u, v) / (nu * nv)) if nu > 0 and nv > 0 else 0.0


def score(vocab: Sequence[str], lookup: Callable[[str], np.ndarray], pair_files: dict[str, str | os.PathLike],
          analogy_file: str | os.PathLike | None, restrict_vocab: int = RESTRICT_VOCAB) -> dict:
    """Score one model from its vocabulary (most frequent first) and ``lookup(word) -> vector`` (any word; a
    KeyError or an all-zero vector: the word has no vector).

    Analogies: accuracy over a sparsembed ``Vectors`` of the vocabulary (``restrict_vocab``, case-insensitive,
    as gensim). For each pair file NAME: ``NAME`` Spearman over the pairs with both words in the vocabulary
    (case-insensitive: a word stands for the most frequent vocabulary word that upper-cases as it does);
    ``NAME_oov_words`` the share of the file's distinct words outside the vocabulary; ``NAME_all`` Spearman over
    every pair, a word outside the vocabulary looked up lower-cased (its subword vector); ``NAME_oov`` over the
    pairs with at least one such word; ``NAME_no_vector`` the distinct words that got no vector (similarity 0).
    """
    from sparsembed.word2vec.evaluate import word_analogies
    from sparsembed.word2vec.vectors import Vectors

    canon: dict[str, str] = {}
    for word in vocab:
        canon.setdefault(word.upper(), word)
    cache: dict[str, np.ndarray | None] = {}

    def vector(word: str) -> np.ndarray | None:
        key = canon.get(word.upper(), word.lower())
        if key not in cache:
            try:
                v = np.asarray(lookup(key), dtype=np.float32)
                cache[key] = v if v.any() else None
            except KeyError:
                cache[key] = None
        return cache[key]

    result: dict = {}
    if analogy_file is not None:
        head = list(vocab[:restrict_vocab])  # the rows the analogies use; the rest would change nothing
        matrix = np.stack([np.asarray(lookup(w), dtype=np.float32) for w in head])
        result["analogy"] = word_analogies(Vectors(head, matrix), analogy_file, restrict_vocab=restrict_vocab)[0]
    for name, path in pair_files.items():
        pairs, gold = read_pairs(path)
        known = np.array([a.upper() in canon and b.upper() in canon for a, b in pairs], dtype=bool)
        sims = np.array([cosine(vector(a), vector(b)) for a, b in pairs], dtype=np.float64)
        distinct = {w.upper(): w for pair in pairs for w in pair}
        outside = [w for key, w in distinct.items() if key not in canon]
        result[name] = spearman(gold[known], sims[known])
        result[f"{name}_oov_words"] = len(outside) / len(distinct)
        result[f"{name}_all"] = spearman(gold, sims)
        result[f"{name}_oov"] = spearman(gold[~known], sims[~known])
        result[f"{name}_oov_pairs"] = int((~known).sum())
        result[f"{name}_no_vector"] = sum(vector(w) is None for w in distinct.values())
    return result


def eval_words(pair_files: dict[str, str | os.PathLike]) -> list[str]:
    """Every pair file word, lower-cased: what each model is asked for beyond its vocabulary."""
    return sorted({w.lower() for path in pair_files.values() for pair in read_pairs(path)[0] for w in pair})


def npz_lookup(path: str | os.PathLike) -> tuple[list[str], Callable[[str], np.ndarray]]:
    """The vocabulary and a lookup over an .npz a child wrote (vocabulary rows, then the evaluation words)."""
    data = np.load(path)
    vocab = data["vocab"].tolist()
    table = dict(zip(vocab, data["matrix"], strict=True))
    for word, row, has in zip(data["eval_words"].tolist(), data["eval_matrix"], data["eval_has"], strict=True):
        if word not in table and has:
            table[word] = row
    return vocab, table.__getitem__


# ------------------------------------------------------------------------------------------------- runs


def settings_argv() -> str:
    return json.dumps([MINN, MAXN, BUCKETS, DIM, WINDOW, NEGATIVE, MIN_COUNT, SAMPLE])


def run_once(lib: str, model: str, args: argparse.Namespace, inputs: dict, scratch: Path, pair_files: dict,
             analogy: str) -> dict:
    """One timed run of ``lib`` in its own process, then its vectors scored."""
    npz = scratch / f"{lib}-{model}.npz"
    lr = str(args.lr)
    if lib == "sparsembed":
        out = scratch / f"sparsembed-{model}"
        command = [str(Path(sys.executable).with_name("sparsembed")), "train", str(inputs["text"]), "--out", str(out),
                   "--force", "--quiet", "--model", model, "--subwords", f"{MINN}-{MAXN}", "--buckets", str(BUCKETS),
                   "--dim", str(DIM), "--window", str(WINDOW), "--negative", str(NEGATIVE), "--min-count",
                   str(MIN_COUNT), "--sample", str(SAMPLE), "--epochs", str(args.epochs), "--alpha", lr,
                   "--workers", str(args.threads)]
        result = child_json([sys.executable, "-c", WRAPPER, *command], f"{lib} {model}")
        if result.pop("rc") != 0:
            raise RuntimeError(f"{lib} {model} failed:\n{result['stderr']}")
        del result["stderr"]
        result.update(child_json([sys.executable, "-c", EXPORT, str(out), str(inputs["eval_words"]), str(npz)],
                                 f"{lib} {model} export"))
        shutil.rmtree(out, ignore_errors=True)
    else:
        source = inputs["lines"] if lib == "gensim" else inputs["text"]
        started = time.time()
        result = child_json([sys.executable, "-c", CHILD, lib, model, str(source), str(args.threads), lr,
                             str(args.epochs), str(npz), str(inputs["eval_words"]), settings_argv()], f"{lib} {model}")
        result["wall_s"] = result.pop("done_at") - started
    result["words_per_s"] = inputs["raw_words"] * args.epochs / result["wall_s"]
    vocab, lookup = npz_lookup(npz)
    result["vocab_size"] = len(vocab)
    result.update(score(vocab, lookup, pair_files, analogy))
    npz.unlink()
    return result


def child_json(argv: list[str], what: str) -> dict:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cut_lines(text: Path, target: Path, words_per_line: int = GENSIM_LINE_WORDS, block_size: int = 1 << 24) -> Counter:
    """``text``'s words in lines of at most ``words_per_line`` (for gensim's corpus_file mode: see
    :data:`GENSIM_LINE_WORDS`); returns each word's count."""
    counts: Counter = Counter()
    with open(text, "rb") as src, open(target, "wb") as dst:
        pending: list[bytes] = []  # words not yet written: fewer than a line, or a word the block cut
        carry = b""
        while True:
            block = src.read(block_size)
            words = (carry + block).split()
            carry = words.pop() if block and words and not block[-1:].isspace() else b""
            counts.update(words)
            pending += words
            whole = len(pending) if not block else len(pending) - len(pending) % words_per_line
            for i in range(0, whole, words_per_line):
                dst.write(b" ".join(pending[i:i + words_per_line]) + b"\n")
            pending = pending[whole:]
            if not block:
                return counts


def warm_numba_cache(text: Path, scratch: Path, threads: int) -> None:
    """Compile (or load from the cache) sparsembed's subword kernels once, outside the timed runs, with the
    timed runs' settings on a small sample (as gensim's and fastText's code is compiled ahead)."""
    sample = scratch / "warm.txt"
    with open(text, "rb") as src:
        sample.write_bytes(src.read(200_000).rsplit(b" ", 1)[0])
    sparsembed = str(Path(sys.executable).with_name("sparsembed"))
    for model in ("cbow", "skipgram"):
        out = scratch / f"warm-{model}"
        subprocess.run([sparsembed, "train", str(sample), "--out", str(out), "--force", "--quiet", "--model", model,
                        "--subwords", f"{MINN}-{MAXN}", "--buckets", str(BUCKETS), "--epochs", "1",
                        "--workers", str(threads), "--min-count", "1"], check=True, stdout=subprocess.DEVNULL)
        code = "import sys; from sparsembed import Word2Vec; Word2Vec.load(sys.argv[1]).wv['zzqxj']"
        subprocess.run([sys.executable, "-c", code, str(out)], check=False, capture_output=True)
        shutil.rmtree(out, ignore_errors=True)


def summarise(runs: list[dict]) -> dict:
    """The median of each number over the repeats (NaN-free ones; a figure NaN in all runs stays NaN)."""
    out: dict = {}
    for key in runs[0]:
        values = [r[key] for r in runs if isinstance(r.get(key), int | float) and not math.isnan(r[key])]
        out[key] = statistics.median(values) if values else float("nan")
    return out | {"runs": len(runs)}


# ------------------------------------------------------------------------------------------------ report


def fmt(value: float, spec: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def markdown(report: dict) -> str:
    """One row per model and library (medians), then sparsembed against each other library."""
    lines = ["| model | library | wall s | words/s | peak RSS MB | analogy (30k) | ws353 | simlex999 "
             "| OOV words ws353 / simlex | ws353 all / OOV pairs | simlex999 all / OOV pairs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, libs in report["results"].items():
        for lib, r in libs.items():
            lines.append(
                f"| {model} | {lib} | {r['wall_s']:.1f} | {r['words_per_s'] / 1e6:.2f}M | {r['peak_rss_mb']:.0f} "
                f"| {100 * r['analogy']:.1f}% | {fmt(r['ws353'], '.3f')} | {fmt(r['simlex999'], '.3f')} "
                f"| {100 * r['ws353_oov_words']:.1f}% / {100 * r['simlex999_oov_words']:.1f}% "
                f"| {fmt(r['ws353_all'], '.3f')} / {fmt(r['ws353_oov'], '.3f')} "
                f"| {fmt(r['simlex999_all'], '.3f')} / {fmt(r['simlex999_oov'], '.3f')} |")
        s = libs.get("sparsembed")
        if s is None:
            continue
        for lib, g in libs.items():
            if lib == "sparsembed":
                continue
            lines.append(
                f"| {model} | **sparsembed vs {lib}** | **{g['wall_s'] / s['wall_s']:.2f}x faster** "
                f"| {s['words_per_s'] / g['words_per_s']:.2f}x | {s['peak_rss_mb'] / g['peak_rss_mb']:.2f}x "
                f"| {100 * (s['analogy'] - g['analogy']):+.1f} pt | {fmt(s['ws353'] - g['ws353'], '+.3f')} "
                f"| {fmt(s['simlex999'] - g['simlex999'], '+.3f')} | "
                f"| {fmt(s['ws353_all'] - g['ws353_all'], '+.3f')} / {fmt(s['ws353_oov'] - g['ws353_oov'], '+.3f')} "
                f"| {fmt(s['simlex999_all'] - g['simlex999_all'], '+.3f')} / "
                f"{fmt(s['simlex999_oov'] - g['simlex999_oov'], '+.3f')} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_corpus = Path(__file__).resolve().parents[2] / "shared/data/wiki17m.txt.xz"
    parser.add_argument("--corpus", default=str(default_corpus))
    parser.add_argument("--models", nargs="+", default=["cbow", "skipgram"], choices=["cbow", "skipgram"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lr", type=float, default=DEFAULT_LR,
                        help=f"initial learning rate of every library and model ({DEFAULT_LR}, fastText's)")
    parser.add_argument("--libraries", default=DEFAULT_LIBRARIES,
                        help=f"comma list of {','.join(LIBRARIES)} ({DEFAULT_LIBRARIES})")
    parser.add_argument("--json", default="benchmarks/results/fasttext.json")
    args = parser.parse_args(argv)
    libs = [lib for lib in args.libraries.split(",") if lib]
    unknown = [lib for lib in libs if lib not in LIBRARIES]
    if unknown or not libs:
        parser.error(f"unknown library {', '.join(unknown) or '(none)'}; of {', '.join(LIBRARIES)}")
    from gensim.test.utils import datapath

    pair_files = {name: datapath(file) for name, file in PAIR_FILES.items()}
    analogy = datapath(ANALOGY_FILE)
    scratch = Path(tempfile.mkdtemp(prefix="bench-ft-"))
    try:
        text = decompressed(Path(args.corpus), scratch)
        counts = cut_lines(text, scratch / "lines.txt", GENSIM_LINE_WORDS)
        words_file = scratch / "eval_words.txt"
        words_file.write_text("\n".join(eval_words(pair_files)) + "\n", encoding="utf-8")
        inputs = {"text": text, "lines": scratch / "lines.txt", "eval_words": words_file,
                  "raw_words": sum(counts.values()),
                  "kept_tokens": sum(c for c in counts.values() if c >= MIN_COUNT),
                  "vocab_size": sum(c >= MIN_COUNT for c in counts.values())}
        del counts
        if "sparsembed" in libs:
            warm_numba_cache(text, scratch, args.threads)
        results = {}
        for model in args.models:
            runs: dict[str, list[dict]] = {lib: [] for lib in libs}
            for repeat in range(args.repeats):
                order = libs if repeat % 2 == 0 else libs[::-1]
                for lib in order:
                    r = run_once(lib, model, args, inputs, scratch, pair_files, analogy)
                    runs[lib].append(r)
                    print(f"{model} {lib} #{repeat + 1}: " + ", ".join(f"{k} {v:.4g}" for k, v in r.items()),
                          flush=True)
            results[model] = {lib: summarise(r) for lib, r in runs.items()}
        report = {"date": time.strftime("%Y-%m-%d"), "corpus": args.corpus, "threads": args.threads,
                  "epochs": args.epochs, "lr": args.lr, "cpus": os.cpu_count(), "repeats": args.repeats,
                  "settings": {"minn": MINN, "maxn": MAXN, "buckets": BUCKETS, "dim": DIM, "window": WINDOW,
                               "negative": NEGATIVE, "min_count": MIN_COUNT, "sample": SAMPLE},
                  "corpus_raw_words": inputs["raw_words"], "corpus_kept_tokens": inputs["kept_tokens"],
                  "corpus_vocab_size": inputs["vocab_size"], "results": results}
        for warning in coverage_warnings(report):
            print(f"warning: {warning}", file=sys.stderr)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(markdown(report))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def coverage_warnings(report: dict) -> list[str]:
    """Signs that a library did not read or train the whole corpus: its vocabulary or word counts fall short of
    the corpus's (words of at least min_count occurrences; raw words x epochs)."""
    out = []
    raw, kept, size = report["corpus_raw_words"], report["corpus_kept_tokens"], report["corpus_vocab_size"]
    for model, libs in report["results"].items():
        for lib, r in libs.items():
            if abs(r["vocab_size"] - size) > 0.01 * size:
                out.append(f"{model} {lib}: vocabulary of {r['vocab_size']:.0f} words, the corpus has {size} "
                           f"words of count >= {MIN_COUNT}")
            if not math.isnan(r.get("scanned_words", math.nan)) and r["scanned_words"] != raw:
                out.append(f"{model} {lib}: scanned {r['scanned_words']:.0f} words of the corpus's {raw}")
            trained = r.get("trained_raw_words", math.nan)
            if not math.isnan(trained) and trained < 0.99 * raw * report["epochs"]:
                out.append(f"{model} {lib}: trained on {trained:.0f} raw words, not {raw} x {report['epochs']}")
            tokens = r.get("vocab_tokens", math.nan)
            if not math.isnan(tokens) and abs(tokens - kept) > 0.01 * kept:
                out.append(f"{model} {lib}: its vocabulary holds {tokens:.0f} tokens, the corpus {kept}")
    return out


if __name__ == "__main__":
    main()
