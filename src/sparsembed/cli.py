"""The ``sparsembed`` command: train, export, eval, similar, demo.

Every user error (bad corpus, bad setting, unwritable output, damaged checkpoint, full disk) ends as one line
on stderr, ``sparsembed: error: ...``, and exit code 2. Ctrl-C or SIGTERM during training finishes the running
jobs, writes a checkpoint and exits 130 / 143 with the command that resumes it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sparsembed.dataparallel import launch
from sparsembed.errors import DiskFull, UserError

SINGLE_JOB_TOKENS = 50_000
DATA_PARALLEL_JOB_TOKENS = 250_000
DEFAULTS = {"dim": 100, "window": 5, "negative": 5, "min_count": 5, "sample": 1e-3, "epochs": 5,
            "alpha": 0.025, "min_alpha": 1e-4, "seed": 1}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="sparsembed", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train word2vec (CBOW or skip-gram) on a corpus")
    train.add_argument("corpus", nargs="?", help="a text file or directory (.gz/.bz2/.xz read as streams)")
    train.add_argument("--out", help="output directory: vectors.bin, vocab.txt, metrics.jsonl, model/")
    train.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR (settings come from it)")
    train.add_argument("--model", choices=["cbow", "skipgram"], default="cbow")
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
    train.add_argument("--checkpoint-every", type=float, default=600.0, metavar="SECONDS",
                       help="also checkpoint every SECONDS, besides each epoch end (600)")
    train.add_argument("--force", action="store_true", help="overwrite a model already in --out")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--job-tokens", type=int, default=None,
                       help="tokens per job (50000); a data-parallel step runs one job per thread on every rank, "
                       "so there it sets how often ranks exchange (default with several ranks: 250000)")
    dp = train.add_argument_group("data-parallel (see `sparsembed train --nproc`; under torchrun, one rank each)")
    dp.add_argument("--nproc", type=int, default=None,
                    help="run N ranks on this host (gloo over loopback) under torch's elastic launcher")
    dp.add_argument("--max-restarts", type=int, default=0,
                    help="with --nproc: restart all ranks from the last checkpoint up to this many times (0)")
    dp.add_argument("--strategy", choices=["replicated", "sharded"], default="replicated",
                    help="replicated: every rank sums all changes; sharded: owners sum and send rows back")
    dp.add_argument("--rows", choices=["auto", "index", "bitmap", "roaring"], default="auto",
                    help="how a message names its rows (auto: the smallest)")
    dp.add_argument("--values", choices=["fp32", "fp16"], default="fp32", help="row values on the wire (fp32)")
    dp.add_argument("--transport", choices=["auto", "tcp"], default="auto",
                    help="auto: dense steps of ranks on one host go through shared memory; tcp: always gloo")
    dp.add_argument("--overlap", action="store_true",
                    help="train the next step while this step's rows travel (ranks see each other's changes one "
                    "step late); for slow links")
    dp.add_argument("--balance", choices=["static", "dynamic"], default="static",
                    help="static: each rank trains its own jobs of a step (deterministic); dynamic (ranks on one "
                    "host): a step's jobs, 25 times smaller, go to whichever rank is free (a slow core holds the "
                    "others up less; not reproducible)")
    dp.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                    help="a rank that does not answer for SECONDS stops the run, naming it (300)")

    export = sub.add_parser("export", help="write the vectors of a trained DIR as text, binary or npy")
    export.add_argument("dir", help="a directory written by `sparsembed train`")
    export.add_argument("--format", choices=["text", "binary", "npy"], default="text")
    export.add_argument("--output", help="target path (default: DIR/vectors.txt, DIR/vectors.bin, DIR/vectors.npy)")

    evaluate = sub.add_parser("eval", help="analogy accuracy and word-pair correlations, as JSON")
    evaluate.add_argument("vectors", help="a word2vec file (binary or text) or a training directory")
    evaluate.add_argument("--analogies", help="questions in word2vec's questions-words.txt format")
    evaluate.add_argument("--restrict-vocab", type=int, default=30000,
                          help="only the N most frequent words answer analogies (30000, as compute-accuracy)")
    evaluate.add_argument("--pairs", nargs="*", default=[], help="word-pair files: word1<TAB>word2<TAB>score")

    similar = sub.add_parser("similar", help="nearest neighbours of a word")
    similar.add_argument("vectors", help="a word2vec file (binary or text) or a training directory")
    similar.add_argument("word")
    similar.add_argument("-n", type=int, default=10, help="how many neighbours (10)")

    report = sub.add_parser("report", help="PNG plots of a run: loss and words/s over time (and exchange bytes)")
    report.add_argument("dir", help="a directory written by `sparsembed train`")
    report.add_argument("--output", help="where the PNGs go (default: DIR)")

    bench = sub.add_parser("bench", help="measurements: shard balance under Zipf, sparse gradient exchange")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    shards = bench_sub.add_parser("shards", help="max/mean shard load: contiguous, permuted, balanced")
    shards.add_argument("corpus")
    shards.add_argument("--shards", type=int, default=8)
    shards.add_argument("--step-tokens", type=int, default=8192, help="tokens per training step (8192)")
    shards.add_argument("--min-count", type=int, default=5)
    shards.add_argument("--replicate-top", type=int, default=0, help="replicate this many hottest rows")
    shards.add_argument("--seed", type=int, default=0, help="seed of the random permutation")
    shards.add_argument("--json", action="store_true", help="print the full result as JSON")
    exch = bench_sub.add_parser("exchange", help="sparse gradient exchange vs torch's sparse and dense all_reduce",
                                description="Spawns --nproc gloo ranks on this host; under torchrun (RANK, "
                                "WORLD_SIZE, MASTER_ADDR set) this process is one rank and rank 0 prints.")
    exch.add_argument("--nproc", type=int, default=None, help="ranks to spawn (2; under torchrun: WORLD_SIZE)")
    exch.add_argument("--rows", type=int, default=200000, help="rows of the matrix (200000)")
    exch.add_argument("--dim", type=int, default=128, help="values per row (128)")
    exch.add_argument("--ids", type=int, default=8192, help="Zipf row ids a rank per step, duplicates kept (8192)")
    exch.add_argument("--steps", type=int, default=25, help="timed steps (25)")
    exch.add_argument("--warmup", type=int, default=5, help="untimed steps first (5)")
    exch.add_argument("--values", default="fp32", choices=["fp32", "fp16", "bf16"], help="wire dtype (fp32)")
    exch.add_argument("--rows-encoding", default="auto", choices=["auto", "index", "bitmap", "roaring"],
                      help="row-set encoding of our messages (auto)")
    exch.add_argument("--transport", default="auto", choices=["auto", "tcp"],
                      help="ours: shared memory when every rank is on this host (auto), or gloo always (tcp)")
    exch.add_argument("--inputs", default="fresh", choices=["fresh", "settled"],
                      help="make each method's gradient right before its timed call, in cache as a backward pass "
                      "leaves it (fresh), or before the barrier and pause (settled)")
    exch.add_argument("--align", default="auto", choices=["auto", "barrier"],
                      help="line up the ranks' starts through shared-memory flags when on one host (auto), or "
                      "start each rank when its gloo barrier returns (barrier)")
    exch.add_argument("--sweep", action="store_true", help="also vary the density of distinct rows up to 100%%")
    exch.add_argument("--densities", help="comma-separated densities in (0, 1] for the sweep (implies --sweep)")
    exch.add_argument("--seed", type=int, default=0)
    exch.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the ranks (1800)")
    exch.add_argument("--json", action="store_true", help="print the full result as JSON")

    demo = sub.add_parser("demo", help="train on a generated corpus with planted analogies (no download)")
    demo.add_argument("--model", choices=["cbow", "skipgram"], default="cbow")
    demo.add_argument("--out", help="where the corpus, questions and model go (default: a temporary directory)")
    demo.add_argument("--workers", type=int, default=None)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--tokens", type=int, default=None, help="corpus size (3M for cbow, 1.5M for skipgram)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    handler = {"train": cmd_train, "export": cmd_export, "eval": cmd_eval, "similar": cmd_similar,
               "demo": cmd_demo, "bench": cmd_bench,
               "report": cmd_report}[args.command]
    try:
        return handler(args) or 0
    except UserError as exc:
        # Every rank of a data-parallel run meets the same bad input; rank 0 says it once. A rank that lost a
        # peer speaks for itself (rank 0 may be the one that is gone).
        if launch.rank() == 0 or getattr(exc, "every_rank_reports", False):
            who = f"rank {launch.rank()}: " if launch.world_size() > 1 else ""
            print(f"sparsembed: error: {who}{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        resume = getattr(exc, "resume_dir", None)
        hint = f"; resume with: {launch.resume_command(resume)}" if resume is not None else ""
        if launch.rank() == 0:  # every rank of a data-parallel run got the signal; one says so
            print(f"sparsembed: interrupted{hint}", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)


class Interrupted(KeyboardInterrupt):
    """Stopped by SIGINT or SIGTERM; ``resume_dir`` is set when a checkpoint there can continue the run."""

    def __init__(self, signum: int, resume_dir: Path | None = None) -> None:
        super().__init__(signum)
        self.signum = int(signum)
        self.resume_dir = resume_dir


class StopSignals:
    """SIGINT / SIGTERM handling for ``train``: while armed, a signal asks the trainer to stop at a job boundary.

    Outside the training loop (scanning the corpus, writing outputs), or on a second signal, it raises
    :class:`Interrupted` at once: every file is written atomically, so stopping anywhere damages nothing.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self.armed = False

    def handle(self, signum: int, _frame: Any) -> None:
        """The signal handler (runs in the main thread, between bytecodes)."""
        first = self.signum is None
        self.signum = signum
        if self.armed and first:
            self.event.set()
            return
        raise Interrupted(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """Handle SIGINT and SIGTERM inside the block (only the main thread may; elsewhere, do nothing)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


# ------------------------------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    """``sparsembed train``: a fresh run into --out, or --resume DIR."""
    from sparsembed.word2vec.model import Word2Vec

    if args.nproc is not None and not launch.under_launcher():
        return _spawn_ranks(args)
    if launch.under_launcher() and launch.world_size() > 1:
        return _train_rank(args)
    _check_run_args(args)
    signals = StopSignals()
    if args.resume:
        out = Path(args.resume)
        with signals.installed(), _fault_advice(out):
            model = Word2Vec.load(out, with_corpus=True)
            if args.workers is not None:
                model.settings.workers = args.workers
                model.settings.validate()
            finished_before = model.done
            if not finished_before:
                _train_and_report(model, out, args, signals)
            model.write_outputs(out)
        if finished_before:  # said only once it is true: a failed write must leave one line, the error
            print(f"{out}: training already complete; outputs rewritten", file=sys.stderr)
        return 0

    model = _new_model(args, args.workers, SINGLE_JOB_TOKENS)
    out = Path(args.out)
    created = prepare_out_dir(out, force=args.force)
    try:
        with signals.installed(), _fault_advice(out):
            model.build_vocab(args.corpus)
            _train_and_report(model, out, args, signals)
            model.write_outputs(out)
    except BaseException:
        # A directory this run created goes away unless it holds a checkpoint worth resuming from.
        if created and not _has_checkpoint(out):
            shutil.rmtree(out, ignore_errors=True)
        raise
    return 0


def _check_run_args(args: argparse.Namespace) -> None:
    """A run is either ``--resume DIR`` alone or ``CORPUS --out DIR``."""
    if args.resume and (args.corpus or args.out):
        raise UserError("--resume DIR takes its corpus and settings from DIR; drop CORPUS and --out")
    if not args.resume and (not args.corpus or not args.out):
        raise UserError("train needs a CORPUS and --out DIR (or --resume DIR)")


def _exchange_options(args: argparse.Namespace):
    """The data-parallel options of the command line, validated (UserError naming the bad one)."""
    from sparsembed.dataparallel.trainer import ExchangeOptions

    return ExchangeOptions(args.strategy, args.rows, args.values, transport=args.transport,
                           overlap=args.overlap, balance=args.balance).validate()


def _new_model(args: argparse.Namespace, workers: int | None, default_job_tokens: int):
    """A fresh Word2Vec with the command line's settings (validated), not yet given its corpus."""
    from sparsembed.word2vec.model import Word2Vec

    model = Word2Vec(
        vector_size=args.dim, sg=int(args.model == "skipgram"), window=args.window, negative=args.negative,
        min_count=args.min_count, max_vocab=args.max_vocab, sample=args.sample, epochs=args.epochs,
        alpha=args.alpha, min_alpha=args.min_alpha, workers=workers, seed=args.seed,
    )
    model.settings.job_tokens = args.job_tokens or default_job_tokens
    model.settings.validate()
    return model


def _spawn_ranks(args: argparse.Namespace) -> int:
    """``train --nproc N``: check what can be checked once, then run the same command as N ranks."""
    _check_run_args(args)
    _exchange_options(args)
    if args.resume:
        out, created = Path(args.resume), False
        if not _has_checkpoint(out):
            raise UserError(f"{out} holds no checkpoint to resume (no {out / 'model' / 'state.json'})")
    else:
        if not Path(args.corpus).exists():
            raise UserError(f"corpus {args.corpus} does not exist")
        out = Path(args.out)
        created = prepare_out_dir(out, force=args.force)
    code = 1
    try:
        code = launch.spawn(args.nproc, _without_launch_flags(args.argv), max_restarts=args.max_restarts)
    finally:
        if code != 0 and created and not _has_checkpoint(out):
            shutil.rmtree(out, ignore_errors=True)
    return code


def _without_launch_flags(argv: list[str]) -> list[str]:
    """The command line a rank runs: ours minus the launcher's own flags."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--nproc", "--max-restarts"):
            skip = True
            continue
        if arg.startswith(("--nproc=", "--max-restarts=")):
            continue
        kept.append(arg)
    return kept


def _train_rank(args: argparse.Namespace) -> int:
    """One rank of a data-parallel run (under torchrun or --nproc): same model everywhere, own jobs."""
    import faulthandler

    import torch.distributed as dist

    from sparsembed.dataparallel.trainer import DataParallelTrainer
    from sparsembed.word2vec.model import Word2Vec, default_workers

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints where a rank is (a hung run's first question)
    options = _exchange_options(args)
    _check_run_args(args)
    launch.join(args.timeout)
    lead = launch.rank() == 0
    signals = StopSignals()
    try:
        resume_dir = Path(args.resume) if args.resume else None
        if resume_dir is None and launch.restart_count() > 0 and args.out and _has_checkpoint(Path(args.out)):
            resume_dir = Path(args.out)  # torchrun restarted the group: continue from the last checkpoint
        if resume_dir is not None:
            out = resume_dir
            with _fault_advice(out):
                model = Word2Vec.load(out, with_corpus=True)
        else:
            out = Path(args.out)
            # Each step exchanges nearly every output row (negative sampling touches most of them): 250k tokens a
            # rank keeps the exchange at 11-16% of the step on one host (shared memory) and stays within a point of
            # 1 process x 2 threads in analogy accuracy; 500k was faster and 1.2-1.3 points worse (BENCHMARKS.md).
            model = _new_model(args, 1, DATA_PARALLEL_JOB_TOKENS)
            _agree_on(lambda: prepare_out_dir(out, force=args.force) if lead else None)
            with _fault_advice(out):
                model.build_vocab(args.corpus)
        model.settings.workers = args.workers or launch.threads_per_rank(default_workers())
        model.settings.validate()
        if lead and not args.quiet:
            print(f"vocabulary: {len(model.vocab)} words from {model.corpus.raw_words} tokens; training "
                  f"{'skip-gram' if model.settings.sg else 'CBOW'} on {launch.world_size()} ranks x "
                  f"{model.settings.workers} threads, {options.strategy} exchange", file=sys.stderr)
        with signals.installed(), _fault_advice(out):
            signals.armed = True
            trainer = DataParallelTrainer(model, options)
            summary = trainer.train(progress=not args.quiet, out=out, checkpoint_every=args.checkpoint_every,
                                    stop=signals.event)
            signals.armed = False
            if summary["interrupted"]:
                raise Interrupted(signals.signum or signal.SIGINT, out)
            if lead:
                model.write_outputs(out)
                if not args.quiet:
                    share = summary["exchange_s"] / max(summary["exchange_s"] + summary["compute_s"], 1e-9)
                    print(f"trained in {summary['seconds']:.1f} s at {summary['words_per_s'] / 1e6:.2f}M words/s "
                          f"({summary['steps']} steps, exchange {100 * share:.1f}% of step time, "
                          f"{summary['bytes_sent'] / 1e6:.1f} MB sent by rank 0); vectors in {out / 'vectors.bin'}",
                          file=sys.stderr)
            dist.barrier()
    finally:
        launch.leave()
    return 0


def _agree_on(action: Any) -> None:
    """Run ``action`` (on whichever ranks it does something) and make every rank fail if any rank's failed."""
    import torch
    import torch.distributed as dist

    error = None
    try:
        action()
    except UserError as exc:
        error = exc
    failed = torch.tensor([0.0 if error is None else 1.0])
    dist.all_reduce(failed)
    if error is not None:
        raise error
    if failed.item() > 0:
        raise UserError("another rank could not start (see its message)")


def _has_checkpoint(out: Path) -> bool:
    return (out / "model" / "state.json").exists()


@contextlib.contextmanager
def _fault_advice(out: Path) -> Iterator[None]:
    """Say how to go on after a full disk or an interrupt: resume from ``out`` if it holds a checkpoint."""
    try:
        yield
    except DiskFull as exc:
        advice = f"resume with: sparsembed train --resume {out}" if _has_checkpoint(out) else "run again"
        raise DiskFull(f"{exc}; free space and {advice}") from exc
    except OSError as exc:
        # A write outside atomic_write (metrics.jsonl, a temporary file) that hit a full disk.
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        advice = f"resume with: sparsembed train --resume {out}" if _has_checkpoint(out) else "run again"
        where = exc.filename or f"into {out}"
        raise DiskFull(f"no space left on device while writing {where}; free space and {advice}") from exc
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        raise Interrupted(signum, out if _has_checkpoint(out) else None) from None


def _train_and_report(model, out: Path, args: argparse.Namespace, signals: StopSignals) -> None:
    import time

    if not args.quiet:
        vocab, corpus = model.vocab, model.corpus
        print(f"vocabulary: {len(vocab)} words (min_count {model.settings.min_count}) from "
              f"{corpus.raw_words} tokens; training {'skip-gram' if model.settings.sg else 'CBOW'} "
              f"with {model.settings.workers} threads", file=sys.stderr)
    started = time.perf_counter()
    signals.armed = True
    try:
        summary = model.train(progress=not args.quiet, out=out, checkpoint_every=args.checkpoint_every,
                              stop=signals.event)
    finally:
        signals.armed = False
    if summary["interrupted"]:
        raise Interrupted(signals.signum or signal.SIGINT, out)
    if not args.quiet:
        print(f"trained in {time.perf_counter() - started:.1f} s at {summary['words_per_s'] / 1e6:.2f}M words/s; "
              f"vectors in {out / 'vectors.bin'}", file=sys.stderr)


def prepare_out_dir(out: Path, force: bool) -> bool:
    """Make sure ``out`` can take a new run; return True if this call created it."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if (out / "model").exists() and not force:
        raise UserError(f"{out} already holds a trained model; continue it with --resume {out}, "
                        "pass --force to overwrite it, or choose another --out")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write to --out {out}: {exc.strerror}; choose a writable directory") from exc
    if force:
        shutil.rmtree(out / "model", ignore_errors=True)
        (out / "metrics.jsonl").unlink(missing_ok=True)
    return created


# ------------------------------------------------------------------------------------------ vector tools
def load_vectors(path: str):
    """Vectors from a word2vec file, or from ``DIR/vectors.bin`` of a training directory."""
    from sparsembed.word2vec.vectors import Vectors

    target = Path(path)
    if target.is_dir():
        target = target / "vectors.bin"
    if not target.is_file():
        raise UserError(f"no vectors at {path}: give a word2vec file or a directory written by `sparsembed train`")
    return Vectors.load_word2vec_format(target)


def cmd_export(args: argparse.Namespace) -> int:
    """``sparsembed export DIR --format text|binary|npy``."""
    from sparsembed.word2vec.formats import write_npy, write_word2vec
    from sparsembed.word2vec.model import Word2Vec

    directory = Path(args.dir)
    model = Word2Vec.load(directory)
    suffix = {"text": ".txt", "binary": ".bin", "npy": ".npy"}[args.format]
    target = Path(args.output) if args.output else directory / f"vectors{suffix}"
    if args.format == "npy":
        write_npy(target.with_suffix("") if target.suffix == ".npy" else target, model.vocab.words, model.syn0)
    else:
        write_word2vec(target, model.vocab.words, model.syn0, binary=args.format == "binary")
    print(target)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``sparsembed eval VECTORS --analogies FILE --pairs FILE...`` → JSON on stdout."""
    if not args.analogies and not args.pairs:
        raise UserError("eval needs --analogies FILE and/or --pairs FILE...")
    if args.restrict_vocab < 1:
        raise UserError("--restrict-vocab must be >= 1")
    vectors = load_vectors(args.vectors)
    result: dict[str, Any] = vectors.evaluate(analogies=args.analogies, pairs=args.pairs,
                                              restrict_vocab=args.restrict_vocab)
    print(json.dumps(result, indent=2))
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    """``sparsembed similar VECTORS WORD -n 10``."""
    if args.n < 1:
        raise UserError("-n must be >= 1")
    vectors = load_vectors(args.vectors)
    if args.word not in vectors:
        raise UserError(f"'{args.word}' is not in the vocabulary of {args.vectors}")
    for word, score in vectors.most_similar(args.word, topn=args.n):
        print(f"{word}\t{score:.4f}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``sparsembed report DIR``: plots from DIR/metrics.jsonl."""
    from sparsembed.word2vec.report import render

    for path in render(args.dir, args.output):
        print(path)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``sparsembed bench shards CORPUS --shards S --step-tokens T [--json]``, ``sparsembed bench exchange ...``."""
    if args.bench == "exchange":  # also one rank under torchrun (RANK, WORLD_SIZE, MASTER_ADDR): rank 0 prints
        import os

        from sparsembed.bench.exchange import format_text, run_exchange_bench

        try:
            densities = [float(d) for d in args.densities.split(",")] if args.densities else None
        except ValueError:
            raise UserError(f"bench exchange: --densities takes numbers separated by commas, got {args.densities!r}"
                            ) from None
        res = run_exchange_bench(args.nproc, args.rows, args.dim, args.ids, steps=args.steps, warmup=args.warmup,
                                 values=args.values, rows_encoding=args.rows_encoding, sweep=args.sweep,
                                 transport=args.transport, inputs=args.inputs, align=args.align,
                                 densities=densities, seed=args.seed, timeout=args.timeout)
        if res["launcher"] != "torchrun" or os.environ.get("RANK") == "0":  # every rank has the same figures
            print(json.dumps(res, indent=1) if args.json else format_text(res))
        return 0
    from sparsembed.comm.sharding import SCHEMES, bench_shards

    result = bench_shards(args.corpus, args.shards, args.step_tokens, seed=args.seed, min_count=args.min_count,
                          replicate_top=args.replicate_top)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for scheme in SCHEMES:
            print(f"{scheme:>10}: max/mean load {result[scheme]['max_over_mean']:.4f}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``sparsembed demo``: generated corpus with planted analogies, trained and evaluated."""
    from sparsembed.word2vec.demo import run_demo
    from sparsembed.word2vec.model import default_workers

    workers = args.workers or default_workers()
    run_demo(out_dir=args.out, model=args.model, workers=workers, seed=args.seed, n_tokens=args.tokens)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
