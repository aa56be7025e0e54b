"""The arguments of every ``sparsembed`` subcommand.

The closed sets come from their owners (:mod:`sparsembed.comm.policy`, :mod:`sparsembed.dataparallel.options`),
which load no torch: parsing stays cheap for the commands that never touch it.
"""

from __future__ import annotations

import argparse
from typing import Any

from sparsembed import __version__
from sparsembed.comm.policy import Strategy, Transport
from sparsembed.dataparallel.options import DYNAMIC_ROUNDS, HOT_TOKENS, HOT_TOKENS_PAIR, ROWS, VALUES, Balance
from sparsembed.rows.values import Values

#: Plain text: argparse prints it as is.
DESCRIPTION = ("Train word2vec (CBOW or skip-gram) on one machine or data-parallel, and work with the vectors. "
               "Commands: train, export, eval, similar, report, demo, bench; "
               "'sparsembed COMMAND --help' lists a command's options.")
DEFAULTS = {"dim": 100, "window": 5, "negative": 5, "min_count": 5, "sample": 1e-3, "epochs": 5,
            "alpha": 0.025, "min_alpha": 1e-4, "seed": 1}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="sparsembed", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_vector_tools(sub)
    _add_bench(sub)
    demo = sub.add_parser("demo", help="train on a generated corpus with planted analogies (no download)")
    demo.add_argument("--model", choices=["cbow", "skipgram"], default="cbow", help="what to train (cbow)")
    demo.add_argument("--out", help="keep corpus.txt, questions.txt and the trained model there (vectors.bin, "
                      "vocab.txt, metrics.jsonl, model/, as train writes them); default: nothing is kept")
    demo.add_argument("--workers", type=int, default=None, help="training threads (all cores)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated words, corpus and training (0)")
    demo.add_argument("--force", action="store_true", help="with --out: replace a model already there")
    demo.add_argument("--tokens", type=int, default=None, help="corpus size (3M for cbow, 1.5M for skipgram)")
    return parser


def _values(kind: type) -> list[str]:
    return [member.value for member in kind]


def _add_train(sub: Any) -> None:
    train = sub.add_parser("train", help="train word2vec (CBOW or skip-gram) on a corpus")
    train.add_argument("corpus", nargs="?", help="a text file or directory (.gz/.bz2/.xz read as streams); with "
                       "--resume, only if the checkpoint's corpus has moved: where it is now")
    train.add_argument("--out", help="output directory: vectors.bin, vocab.txt, metrics.jsonl, model/")
    train.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR (its settings come from DIR: "
                       "--model, --dim, ... are refused; --workers, --quiet, --checkpoint-every, --keep-checkpoints "
                       "and the data-parallel options may change)")
    train.add_argument("--model", choices=["cbow", "skipgram"], default="cbow",
                       help="cbow: predict a word from its averaged context; skipgram: each context word from the "
                       "word (cbow)")
    train.add_argument("--dim", type=int, default=DEFAULTS["dim"], help="vector size (100)")
    train.add_argument("--window", type=int, default=DEFAULTS["window"], help="max context window (5)")
    train.add_argument("--negative", type=int, default=DEFAULTS["negative"], help="negative samples (5)")
    train.add_argument("--min-count", type=int, default=DEFAULTS["min_count"], help="drop rarer words (5)")
    train.add_argument("--max-vocab", type=int, default=None, help="prune while counting above this many words")
    train.add_argument("--sample", type=float, default=DEFAULTS["sample"], help="subsampling threshold (1e-3)")
    train.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="passes over the corpus (5)")
    train.add_argument("--alpha", type=float, default=DEFAULTS["alpha"], help="initial learning rate (0.025)")
    train.add_argument("--min-alpha", type=float, default=DEFAULTS["min_alpha"], help="final learning rate (1e-4)")
    train.add_argument("--workers", type=int, default=None, help="training threads (all cores)")
    train.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="random seed (1)")
    train.add_argument("--kernel", default=None, metavar="auto|exact|batched",
                       help="exact: gensim's updates, pair by pair; batched: pWord2Vec's minibatches, one set of "
                       "negatives shared by a window and updated as small matrices; auto: batched for skipgram, "
                       "exact for cbow (auto)")
    train.add_argument("--device", default=None, metavar="cpu|cuda|cuda:N",
                       help="where to train: cpu (the compiled kernels on --workers threads) or a CUDA GPU "
                       "(Triton kernels: CBOW with the exact kernel's updates, skip-gram with the batched one's; "
                       "one process); a resumed run may move (cpu)")
    train.add_argument("--checkpoint-every", type=float, default=600.0, metavar="SECONDS",
                       help="also checkpoint every SECONDS, besides each epoch end (600)")
    train.add_argument("--keep-checkpoints", type=int, default=2, metavar="K",
                       help="keep the K newest checkpoint generations in DIR/model; --resume falls back to an older "
                       "one when the newest is damaged (2)")
    train.add_argument("--force", action="store_true", help="overwrite a model already in --out")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--job-tokens", type=int, default=None,
                       help="tokens per job (50000); a data-parallel step runs one job per thread on every rank, "
                       "so there it sets how often ranks exchange (default with several ranks: 250000, at most "
                       "1000000 over all ranks: 125000 at 8)")
    train.add_argument("--subwords", default="0", metavar="MINN-MAXN",
                       help="fastText's model: a word's vector also averages its character n-grams of MINN to MAXN "
                       "characters, so words outside the vocabulary get vectors too (e.g. 3-6; 0: off, the default)")
    train.add_argument("--buckets", type=int, default=2_000_000,
                       help="with --subwords: hash buckets the n-grams share (2000000, fastText's default)")
    _add_data_parallel(train)


def _add_data_parallel(train: argparse.ArgumentParser) -> None:
    dp = train.add_argument_group("data-parallel (see `sparsembed train --nproc`; under torchrun, one rank each)")
    dp.add_argument("--nproc", type=int, default=None,
                    help="run N ranks on this host (gloo over loopback) under torch's elastic launcher")
    dp.add_argument("--max-restarts", type=int, default=0,
                    help="with --nproc: restart all ranks from the last checkpoint up to this many times (0)")
    dp.add_argument("--strategy", choices=_values(Strategy), default=Strategy.REPLICATED.value,
                    help="replicated: every rank sums all changes; sharded: owners sum and send rows back")
    dp.add_argument("--rows", choices=list(ROWS), default="auto",
                    help="how a message names its rows (auto: the smallest)")
    dp.add_argument("--values", choices=["auto", *_values(VALUES)], default="auto",
                    help="row values on the wire (auto: int8 when the ranks span hosts, else fp32); fp16 and int8 "
                    "(a scale per row) round each rank's change, and what the rounding drops stays in the rank's "
                    "working copy for its next change (error feedback, nothing lost); ranks on one host with shared "
                    "memory sum float32 in place and ignore it")
    dp.add_argument("--budget", default=None, metavar="off|auto|MB",
                    help="megabytes a rank's change may take on the wire a step: the rows with the largest change "
                    "go first, the others wait in the rank's working copy (none is lost; none waits more than "
                    "8 steps); auto: what the measured exchange gets through in a step's training time, at most 7.5 "
                    "rows per 100 tokens; off: every touched row (default: auto when the ranks span hosts, else off; "
                    "ranks on one host with shared memory ignore it)")
    dp.add_argument("--transport", choices=_values(Transport), default=Transport.AUTO.value,
                    help="auto: dense steps of ranks on one host go through shared memory; tcp: always gloo")
    dp.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=None,
                    help="train the next step while this step's rows travel (ranks see each other's changes one "
                    "step late); by default on when the ranks span hosts, off on one host")
    dp.add_argument("--balance", choices=_values(Balance), default=Balance.STATIC.value,
                    help="static: each rank trains its own jobs of a step (deterministic); dynamic (ranks on one "
                    f"host): a step's jobs, {DYNAMIC_ROUNDS} times smaller, go to whichever rank is free (a slow "
                    "core holds the others up less; not reproducible)")
    dp.add_argument("--hot-rows", default="auto", metavar="N",
                    help="rows of the most frequent words summed over all ranks after every round of --hot-tokens "
                    "(auto: 1000 beyond two ranks, 100 at two ranks with --overlap, else 0): summed only once a "
                    "step, they drift apart and ruin accuracy from four ranks on")
    dp.add_argument("--hot-tokens", default="auto", metavar="TOKENS",
                    help=f"tokens a rank trains between two syncs of the hot rows (auto: {HOT_TOKENS} over all "
                    f"ranks; {HOT_TOKENS_PAIR} a rank at two ranks)")
    dp.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                    help="a rank that does not answer for SECONDS stops the run, naming it (300)")


def _add_vector_tools(sub: Any) -> None:
    export = sub.add_parser("export", help="write the vectors of a trained DIR as text, binary, npy or fastText")
    export.add_argument("dir", help="a directory written by `sparsembed train`")
    export.add_argument("--format", choices=["text", "binary", "npy", "fasttext", "vec"], default="text",
                        help="word2vec text, word2vec binary, a .npy matrix with a word list, fastText's .bin model "
                        "(a --subwords model; loads in fastText and gensim's load_facebook_model, vectors for any "
                        "word) or fastText's .vec text (text)")
    export.add_argument("--output", help="target path (default: DIR/vectors.txt, DIR/vectors.bin, DIR/vectors.npy, "
                        "DIR/model.fasttext.bin, DIR/vectors.vec)")

    evaluate = sub.add_parser("eval", help="analogy accuracy and word-pair correlations, as JSON")
    evaluate.add_argument("vectors", help="a word2vec file (binary or text) or a training directory")
    evaluate.add_argument("--analogies", help="questions in word2vec's questions-words.txt format")
    evaluate.add_argument("--restrict-vocab", type=int, default=30000,
                          help="only the N most frequent words answer analogies (30000, as compute-accuracy)")
    evaluate.add_argument("--pairs", nargs="*", default=[], help="word-pair files: word1<TAB>word2<TAB>score")

    similar = sub.add_parser("similar", help="nearest neighbours of a word")
    similar.add_argument("vectors", help="a word2vec file (binary or text) or a training directory")
    similar.add_argument("word", help="the word whose neighbours to list")
    similar.add_argument("-n", type=int, default=10, help="how many neighbours (10)")

    report = sub.add_parser("report", help="PNG plots of a run: loss and words/s over time (and exchange bytes)")
    report.add_argument("dir", help="a directory written by `sparsembed train`")
    report.add_argument("--output", help="where the PNGs go (default: DIR)")


def _add_bench(sub: Any) -> None:
    bench = sub.add_parser("bench", help="measurements: shard balance under Zipf, sparse gradient exchange")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    shards = bench_sub.add_parser("shards", help="max/mean shard load: contiguous, permuted, balanced")
    shards.add_argument("corpus", help="a text file or directory, as train reads it")
    shards.add_argument("--shards", type=int, default=8, help="how many shards the rows are split into (8)")
    shards.add_argument("--step-tokens", type=int, default=8192, help="tokens per training step (8192)")
    shards.add_argument("--min-count", type=int, default=5, help="drop rarer words, as train does (5)")
    shards.add_argument("--replicate-top", type=int, default=0, help="replicate this many hottest rows")
    shards.add_argument("--seed", type=int, default=0, help="seed of the random permutation")
    shards.add_argument("--json", action="store_true", help="print the full result as JSON")
    exch = bench_sub.add_parser("exchange", help="sparse gradient exchange vs torch's sparse and dense all_reduce",
                                description="Spawns --nproc ranks on this host; under torchrun (RANK, "
                                "WORLD_SIZE, MASTER_ADDR set) this process is one rank and rank 0 prints.")
    exch.add_argument("--nproc", type=int, default=None, help="ranks to spawn (2; under torchrun: WORLD_SIZE)")
    exch.add_argument("--rows", type=int, default=200000, help="rows of the matrix (200000)")
    exch.add_argument("--dim", type=int, default=128, help="values per row (128)")
    exch.add_argument("--ids", type=int, default=8192, help="Zipf row ids a rank per step, duplicates kept (8192)")
    exch.add_argument("--steps", type=int, default=25, help="timed steps (25)")
    exch.add_argument("--warmup", type=int, default=5, help="untimed steps first (5)")
    exch.add_argument("--values", default="fp32", choices=_values(Values), help="wire dtype (fp32)")
    exch.add_argument("--rows-encoding", default="auto", choices=list(ROWS),
                      help="row-set encoding of our messages (auto)")
    exch.add_argument("--transport", default=Transport.AUTO.value, choices=_values(Transport),
                      help="ours: shared memory when every rank is on this host (auto), or gloo always (tcp)")
    exch.add_argument("--inputs", default="fresh", choices=["fresh", "settled"],
                      help="make each method's gradient right before its timed call, in cache as a backward pass "
                      "leaves it (fresh), or before the barrier and pause (settled)")
    exch.add_argument("--align", default="auto", choices=["auto", "barrier"],
                      help="line up the ranks' starts through shared-memory flags when on one host (auto), or "
                      "start each rank when its gloo barrier returns (barrier)")
    exch.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                      help="where the gradients live (cpu); cuda: rank r on CUDA device r mod the devices")
    exch.add_argument("--backend", default="gloo", choices=["gloo", "nccl"],
                      help="the ranks' process group (gloo); nccl needs --device cuda and one GPU a rank")
    exch.add_argument("--sweep", action="store_true", help="also vary the density of distinct rows up to 100%%")
    exch.add_argument("--densities", help="comma-separated densities in (0, 1] for the sweep (implies --sweep)")
    exch.add_argument("--seed", type=int, default=0, help="seed of the row ranking and of the ids each rank draws (0)")
    exch.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the ranks (1800)")
    exch.add_argument("--json", action="store_true", help="print the full result as JSON")
