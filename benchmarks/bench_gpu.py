"""word2vec on one GPU (``--device cuda``) against the CPU run of the same settings, in one run (issue 21).

For CBOW and skip-gram on the corpus (gensim's default settings: dim 100, window 5, negative 5, min_count 5,
sample 1e-3, alpha 0.025, ``--epochs``): a short sweep of the kernels' launch shape (kept tokens per program,
warps per program) over one epoch, then the whole run with the fastest shape; the same settings on the CPU
(all cores); analogies (restrict_vocab 30000), wordsim353 and simlex999 of both. words/s = raw corpus words x
epochs / training seconds, as in BENCHMARKS.md (the vocabulary scan and the one-off upload are outside).

The floor: each trained word reads and writes its context rows (``window + 1`` on average: the window shrinks by
a uniform ``b``) and its ``1 + negative`` output rows, ``4 * dim`` bytes each; over the device's copy bandwidth
(measured here) and the kept share of raw words (subsampling), that is the speed a kernel bound by memory traffic
could reach if no row were ever found in cache. The matrices of a 71k-word vocabulary (2 x 28 MB) fit in an H200's
L2, so a kernel can beat that floor; the table states where each run stands against it.

    python3 benchmarks/bench_gpu.py --corpus ../shared/data/wiki17m.txt.xz --json gpu.json

Without a CUDA device it runs through Triton's interpreter (``TRITON_INTERPRET=1``) on a tiny corpus only: that
is how the tests check this script.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_word2vec import decompressed  # noqa: E402  (the same .xz handling as the word2vec benchmark)
from sparsembed import Word2Vec  # noqa: E402
from sparsembed.gpu import engine  # noqa: E402

SETTINGS = {"vector_size": 100, "window": 5, "negative": 5, "min_count": 5, "sample": 1e-3, "alpha": 0.025}
EVAL_FILES = ("questions-words.txt", "wordsim353.tsv", "simlex999.txt")


def eval_dir(given: str | None) -> Path:
    """Where the evaluation files are: ``given``, else gensim's test data."""
    if given:
        return Path(given)
    from gensim.test.utils import datapath

    return Path(datapath("questions-words.txt")).parent


def evaluate(model: Word2Vec, files: Path) -> dict:
    """Analogies (restrict_vocab 30000) and word-pair Spearman of ``model``'s vectors."""
    pairs = [files / name for name in EVAL_FILES[1:] if (files / name).exists()]
    result = model.wv.evaluate(analogies=files / EVAL_FILES[0], pairs=pairs, restrict_vocab=30000)
    scores = {"analogy": result["analogies"]["accuracy_pct"] / 100}
    for path in pairs:
        scores[path.stem] = result["pairs"][os.fspath(path)]["spearman"]
    return scores


def copy_bandwidth(device: torch.device) -> float:
    """Bytes read + written per second by a device-to-device copy of 1 GiB (median of 5)."""
    if device.type != "cuda":
        return float("nan")
    src = torch.empty(1 << 28, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(6):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / float(np.median(times[1:]))


def kept_share(model: Word2Vec) -> float:
    """Expected kept tokens per in-vocabulary token under subsampling (the thresholds' mean, weighted by counts)."""
    counts = model.vocab.counts.astype(np.float64)
    keep = np.minimum(np.asarray(model.vocab.sample_ints(model.settings.sample), np.float64) / 2**32, 1.0)
    return float((counts * keep).sum() / counts.sum())


def floor_words_per_s(model: Word2Vec, bandwidth: float) -> float:
    """Raw words/s if every row access of a trained word went to memory at ``bandwidth``."""
    s = model.settings
    rows = (s.window + 1) + (1 + s.negative)
    bytes_per_trained = 2 * rows * 4 * s.vector_size
    trained_per_raw = kept_share(model) * len(model.corpus.ids) / model.corpus.raw_words
    return bandwidth / (bytes_per_trained * trained_per_raw)


def train(corpus: Path, sg: int, epochs: int, device: str, workers: int | None = None) -> tuple[Word2Vec, dict]:
    """A model trained on ``corpus``; its summary with ``train_s`` and ``words_per_s`` (raw words x epochs)."""
    model = Word2Vec(sg=sg, epochs=epochs, device=device, workers=workers, **SETTINGS)
    t0 = time.perf_counter()
    model.build_vocab(corpus)
    vocab_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    summary = model.train(progress=False)
    train_s = time.perf_counter() - t1
    words = model.corpus.raw_words * epochs
    return model, {"vocab_s": vocab_s, "train_s": train_s, "words_per_s": words / train_s,
                   "loss": [h["mean_loss"] for h in summary["epochs"]]}


def sweep(corpus: Path, warm: Path, files: Path, sg: int, shapes: list[tuple[int, int]]) -> list[dict]:
    """One epoch per launch shape (chunk, warps), each compiled first on the small ``warm`` corpus; with its
    analogy score, since more programs side by side also means more of them racing on the frequent rows."""
    rows = []
    for chunk, warps in shapes:
        engine.DEFAULT_CHUNK, engine.NUM_WARPS = chunk, warps
        train(warm, sg, 1, "cuda")  # compiles this shape's kernel outside the timed run
        model, got = train(corpus, sg, 1, "cuda")
        analogy = evaluate(model, files)["analogy"]
        rows.append({"chunk": chunk, "warps": warps, "words_per_s": got["words_per_s"], "train_s": got["train_s"],
                     "analogy_1_epoch": analogy})
        print(f"  sweep {'skipgram' if sg else 'cbow'} chunk {chunk:4d} warps {warps}: "
              f"{got['words_per_s'] / 1e6:8.2f}M words/s, analogy after 1 epoch {100 * analogy:.1f}%", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="../shared/data/wiki17m.txt.xz")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--models", default="cbow,skipgram")
    ap.add_argument("--shapes", default="16:2,64:4,256:4", help="CHUNK:WARPS launch shapes to sweep")
    ap.add_argument("--cpu", action=argparse.BooleanOptionalAction, default=True,
                    help="also train on the CPU (all cores) for the quality comparison")
    ap.add_argument("--eval-dir", default=None, help="folder of questions-words.txt, wordsim353.tsv, simlex999.txt "
                    "(default: gensim's test data)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    files = eval_dir(args.eval_dir)
    device = engine.check_device("cuda")
    info = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "Triton interpreter (CPU)",
            "cpu_cores": os.cpu_count(), "epochs": args.epochs, "settings": SETTINGS}
    import triton

    info["triton"] = triton.__version__
    bandwidth = copy_bandwidth(device)
    info["copy_bandwidth_GBps"] = bandwidth / 1e9
    shapes = [tuple(int(v) for v in shape.split(":")) for shape in args.shapes.split(",")]
    results = []
    report = {"info": info, "results": results}

    def save() -> None:  # after every run: a device check cut short still brings back what it measured
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))

    with tempfile.TemporaryDirectory() as scratch:
        corpus = decompressed(Path(args.corpus), Path(scratch))
        warm = Path(scratch) / "warm.txt"
        with open(corpus, "rb") as src:
            warm.write_bytes(src.read(300_000).rsplit(b" ", 1)[0])
        for name in args.models.split(","):
            sg = int(name == "skipgram")
            row: dict = {"model": name}
            results.append(row)
            row["sweep"] = sweep(corpus, warm, files, sg, shapes)
            best = max(row["sweep"], key=lambda r: r["words_per_s"])
            engine.DEFAULT_CHUNK, engine.NUM_WARPS = best["chunk"], best["warps"]
            model, gpu = train(corpus, sg, args.epochs, "cuda")
            row.update({"chunk": best["chunk"], "warps": best["warps"], "gpu": gpu,
                        "gpu_scores": evaluate(model, files), "kept_share": kept_share(model),
                        "floor_words_per_s": floor_words_per_s(model, bandwidth)})
            save()
            print(f"{name}: GPU {gpu['words_per_s'] / 1e6:.1f}M words/s ({gpu['train_s']:.1f} s), "
                  f"{row['gpu_scores']}", flush=True)
            if args.cpu:
                model, cpu = train(corpus, sg, args.epochs, "cpu")
                row["cpu"], row["cpu_scores"] = cpu, evaluate(model, files)
                save()
                print(f"{name}: CPU {cpu['words_per_s'] / 1e6:.1f}M words/s ({cpu['train_s']:.1f} s), "
                      f"{row['cpu_scores']}", flush=True)
    print(table(report))


def table(report: dict) -> str:
    """The Markdown table of BENCHMARKS.md."""
    lines = ["| model | where | train s | words/s | of floor | analogy (30k) | ws353 | simlex999 |",
             "|---|---|---|---|---|---|---|---|"]
    for row in report["results"]:
        for where in ("gpu", "cpu"):
            if where not in row:
                continue
            run, scores = row[where], row[f"{where}_scores"]
            floor = (f"{run['words_per_s'] / row['floor_words_per_s']:.2f}x" if where == "gpu"
                     and np.isfinite(row["floor_words_per_s"]) else "")
            lines.append(f"| {row['model']} | {where} | {run['train_s']:.1f} | {run['words_per_s'] / 1e6:.1f}M "
                         f"| {floor} | {100 * scores['analogy']:.1f}% | {scores.get('wordsim353', float('nan')):.3f} "
                         f"| {scores.get('simlex999', float('nan')):.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
