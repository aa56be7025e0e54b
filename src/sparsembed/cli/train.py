"""``sparsembed train``: a fresh run or ``--resume``, in one process or as one rank of several, and its output.

One process trains with :meth:`Word2Vec.train <sparsembed.word2vec.model.Word2Vec.train>`; ``--nproc N`` hands the
command line to torch's launcher (:mod:`sparsembed.dataparallel.launch`), and each rank it starts trains with the
:class:`~sparsembed.dataparallel.trainer.DataParallelTrainer`. :class:`StopSignals` turns Ctrl-C or SIGTERM into a
stop at the next job boundary and a checkpoint; :func:`prepare_out_dir` and the fault advice make sure a failed run
leaves either nothing or a checkpoint to resume from.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sparsembed.dataparallel import launch
from sparsembed.dataparallel.options import ExchangeOptions, step_tokens_for
from sparsembed.errors import DiskFull, UserError

#: Options whose values a checkpoint fixes: ``--resume`` refuses them rather than silently ignore them.
FIXED_BY_CHECKPOINT = ("--model", "--dim", "--window", "--negative", "--min-count", "--max-vocab", "--sample",
                       "--epochs", "--alpha", "--min-alpha", "--seed", "--job-tokens", "--kernel", "--subwords",
                       "--buckets")
SINGLE_JOB_TOKENS = 50_000
#: Each step exchanges nearly every output row (negative sampling touches most of them): fewer, larger steps keep
#: the exchange a small share of the step, and larger still cost analogy accuracy (measured, see BENCHMARKS.md).


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


def cmd_train(args: argparse.Namespace) -> int:
    """``sparsembed train``: a fresh run into --out, or --resume DIR."""

    if args.nproc is not None and not launch.under_launcher():
        return _spawn_ranks(args)
    if launch.under_launcher() and launch.world_size() > 1:
        return _train_rank(args)
    _check_run_args(args)
    signals = StopSignals()
    if args.resume:
        out = Path(args.resume)
        with signals.installed(), _fault_advice(out):
            model = _load_to_resume(args, out)
            finished_before = model.done
            if not finished_before:
                _train_and_report(model, out, args, signals)
            _write_outputs(model, out)
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
            _write_outputs(model, out)
    except BaseException:
        # A directory this run created goes away unless it holds a checkpoint worth resuming from.
        if created and not _has_checkpoint(out):
            shutil.rmtree(out, ignore_errors=True)
        raise
    return 0


def _load_to_resume(args: argparse.Namespace, out: Path):
    """The checkpoint in ``out`` with its corpus, and this command's run-time options (``--workers``,
    ``--device``, ``--keep-checkpoints``), checked: a device that cannot train before the corpus is read."""
    from sparsembed.word2vec.model import Word2Vec

    if args.device not in (None, "cpu"):
        _check_device(args.device)
    model = Word2Vec.load(out, with_corpus=True, corpus=args.corpus)
    model.keep_checkpoints = args.keep_checkpoints
    if args.workers is not None:
        model.settings.workers = args.workers
    if args.device is not None:
        model.settings.device = args.device
    model.settings.validate()
    if model.settings.device != "cpu" and not model.done:  # the checkpoint's own device
        _check_device(model.settings.device)
    return model


def _check_device(device: str) -> None:
    from sparsembed.gpu.engine import check_device

    check_device(device)


def _check_run_args(args: argparse.Namespace) -> None:
    """A run is either ``--resume DIR [CORPUS]`` (CORPUS: where the checkpoint's corpus is now, if it moved) or
    ``CORPUS --out DIR``; a resume takes no option whose value the checkpoint fixes."""
    from sparsembed.word2vec import checkpoint

    checkpoint.check_keep(args.keep_checkpoints)
    _exchange_options(args)  # the data-parallel flags are checked on one process too: a bad one is no silent no-op
    if not args.resume:
        if not args.corpus or not args.out:
            raise UserError("train needs a CORPUS and --out DIR (or --resume DIR)")
        return
    if args.out:
        raise UserError(f"--resume DIR continues the run saved in DIR; drop --out {args.out}")
    fixed = _fixed_options_given(getattr(args, "argv", []))
    if fixed:
        them = "it" if len(fixed) == 1 else "them"
        raise UserError(f"{', '.join(fixed)}: a resumed run keeps the settings of its checkpoint in {args.resume} "
                        f"and cannot change {them}; drop {them}, or start a new run with CORPUS --out DIR")


def _fixed_options_given(argv: list[str]) -> list[str]:
    """The options of :data:`FIXED_BY_CHECKPOINT` on the command line, as argparse reads them (``--dim=50``,
    and unique prefixes such as ``--di``: argparse has already refused ambiguous ones)."""
    given: list[str] = []
    for arg in argv:
        if arg == "--":  # what follows is positional
            break
        name = arg.split("=", 1)[0]
        if not name.startswith("--") or name == "--":
            continue
        matches = [flag for flag in FIXED_BY_CHECKPOINT if flag == name] or [
            flag for flag in FIXED_BY_CHECKPOINT if flag.startswith(name)]
        if len(matches) == 1 and matches[0] not in given:
            given.append(matches[0])
    return given


def _exchange_options(args: argparse.Namespace) -> ExchangeOptions:
    """The data-parallel options of the command line, validated (UserError naming the bad one)."""
    return ExchangeOptions(args.strategy, args.rows, args.values, transport=args.transport,
                           overlap=args.overlap, balance=args.balance, hot_rows=args.hot_rows,
                           hot_tokens=args.hot_tokens, budget=args.budget).validate()


def _new_model(args: argparse.Namespace, workers: int | None, default_job_tokens: int):
    """A fresh Word2Vec with the command line's settings (validated), not yet given its corpus."""
    from sparsembed.subword.ngrams import parse_subwords
    from sparsembed.word2vec.model import Word2Vec
    from sparsembed.word2vec.settings import Settings

    model = Word2Vec(
        vector_size=args.dim, sg=int(args.model == "skipgram"), window=args.window, negative=args.negative,
        min_count=args.min_count, max_vocab=args.max_vocab, sample=args.sample, epochs=args.epochs,
        alpha=args.alpha, min_alpha=args.min_alpha, workers=workers, seed=args.seed,
        kernel=args.kernel if args.kernel is not None else Settings.kernel,
        subwords=parse_subwords(args.subwords), buckets=args.buckets, device=args.device or Settings.device,
    )
    if args.job_tokens or model.settings.device == "cpu":  # a device's own default is larger
        model.settings.job_tokens = args.job_tokens or default_job_tokens
    model.settings.validate()
    model.keep_checkpoints = args.keep_checkpoints
    return model


def _check_subword_strategy(subwords: bool, options: ExchangeOptions) -> None:
    """Subword models exchange replicated only: the sharded owners split the word rows alone, not the bucket rows."""
    from sparsembed.comm.policy import Strategy

    if subwords and options.strategy is Strategy.SHARDED:
        raise UserError("--strategy sharded does not support subword models (--subwords) yet; use the default "
                        "--strategy replicated")


def _check_cpu_ranks(args: argparse.Namespace) -> None:
    """Data-parallel word2vec trains on CPUs (the exchange of ``parallel(model)`` takes CUDA tensors; the word2vec
    ranks do not yet)."""
    if args.device not in (None, "cpu"):
        raise UserError(f"--device {args.device} trains in one process; data-parallel word2vec (--nproc, torchrun) "
                        "runs on CPUs only for now: drop --device, or train on one GPU without --nproc")


def _spawn_ranks(args: argparse.Namespace) -> int:
    """``train --nproc N``: check what can be checked once, then run the same command as N ranks."""
    _check_cpu_ranks(args)
    _check_run_args(args)
    options = _exchange_options(args)
    if not args.resume:
        from sparsembed.subword.ngrams import parse_subwords

        _check_subword_strategy(parse_subwords(args.subwords) is not None, options)
    if args.resume:
        out, created = Path(args.resume), False
        if not _has_checkpoint(out):
            raise UserError(f"{out} holds no checkpoint to resume (no {out / 'model' / 'state.json'})")
        if args.corpus and not Path(args.corpus).exists():
            raise UserError(f"corpus {args.corpus} does not exist")
    else:
        if not Path(args.corpus).exists():
            raise UserError(f"corpus {args.corpus} does not exist")
        out = Path(args.out)
        created = prepare_out_dir(out, force=args.force)
    code = 1
    try:
        code = launch.spawn(args.nproc, _without_launch_flags(args.argv), max_restarts=args.max_restarts,
                            advice=lambda: _after_failure(out, args.nproc))
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

    from sparsembed.dataparallel.watchdog import CollectiveFailed

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints where a rank is (a hung run's first question)
    options = _exchange_options(args)
    _check_cpu_ranks(args)
    _check_run_args(args)
    launch.join(args.timeout)
    lead = launch.rank() == 0
    out = Path(args.resume or args.out)
    created = False
    try:
        # torchrun restarted the group (--max-restarts): continue from the last checkpoint.
        if args.resume or (launch.restart_count() > 0 and _has_checkpoint(out)):
            with _fault_advice(out):
                model = _load_for_rank(out, args.corpus if args.resume else None, lead)
        else:
            model = _new_model(args, 1, step_tokens_for(launch.world_size()))
            created = _agree_on(lambda: prepare_out_dir(out, force=args.force) if lead else False)
            with _fault_advice(out):
                model.build_vocab(args.corpus)
        model.keep_checkpoints = args.keep_checkpoints
        _train_ranks_model(model, out, args, options, lead)
    except BaseException as exc:
        # Under torchrun no parent process cleans up: a failed start removes the --out that rank 0 created.
        if created and not _has_checkpoint(out):
            shutil.rmtree(out, ignore_errors=True)
        if not isinstance(exc, CollectiveFailed):
            raise
        if exc.restart is not None:  # the launcher restarts the group now: say so, it is no error of the run
            print(f"sparsembed: rank {launch.rank()}: {exc}", file=sys.stderr)
            return exc.exit_code
        exc.advise(_after_failure(out))
        raise
    finally:
        launch.leave()
    return 0


def _load_for_rank(out: Path, corpus: str | None, lead: bool):
    """The checkpoint in ``out`` with its corpus; only rank 0 reports a damaged generation it skipped."""
    from sparsembed.word2vec.model import Word2Vec

    return Word2Vec.load(out, with_corpus=True, corpus=corpus, on_damaged=None if lead else (lambda _line: None))


def _train_ranks_model(model, out: Path, args: argparse.Namespace, options: ExchangeOptions, lead: bool) -> None:
    """Train this rank's share of ``model`` with the others; rank 0 writes the outputs into ``out``."""
    import torch.distributed as dist

    from sparsembed.dataparallel.trainer import DataParallelTrainer
    from sparsembed.word2vec.settings import default_workers

    _check_subword_strategy(model.subwords is not None, options)
    model.settings.workers = args.workers or launch.threads_per_rank(default_workers())
    model.settings.validate()
    if lead and not args.quiet:
        print(f"vocabulary: {len(model.vocab)} words from {model.corpus.raw_words} tokens"
              f"{_subword_note(model)}; training "
              f"{'skip-gram' if model.settings.sg else 'CBOW'} on {launch.world_size()} ranks x "
              f"{model.settings.workers} threads, {options.strategy.value} exchange", file=sys.stderr)
    signals = StopSignals()
    with signals.installed(), _fault_advice(out):
        signals.armed = True
        trainer = DataParallelTrainer(model, options)
        summary = trainer.train(progress=not args.quiet, out=out, checkpoint_every=args.checkpoint_every,
                                stop=signals.event, wait_for_checkpoint=False)
        signals.armed = False
        if summary["interrupted"]:
            raise Interrupted(signals.signum or signal.SIGINT, out)
        if lead:
            _write_outputs(model, out)
            if not args.quiet:
                share = summary["exchange_s"] / max(summary["exchange_s"] + summary["compute_s"], 1e-9)
                print(f"trained in {summary['seconds']:.1f} s at {summary['words_per_s'] / 1e6:.2f}M words/s "
                      f"({summary['steps']} steps, exchange {100 * share:.1f}% of step time, "
                      f"{summary['bytes_sent'] / 1e6:.1f} MB sent by rank 0); vectors in {out / 'vectors.bin'}",
                      file=sys.stderr)
        dist.barrier()


def _agree_on(action: Any) -> Any:
    """Run ``action`` (on whichever ranks it does something) and make every rank fail if any rank's failed;
    return what it returned."""
    import torch
    import torch.distributed as dist

    error, result = None, None
    try:
        result = action()
    except UserError as exc:
        error = exc
    failed = torch.tensor([0.0 if error is None else 1.0])
    dist.all_reduce(failed)
    if error is not None:
        raise error
    if failed.item() > 0:
        raise UserError("another rank could not start (see its message)")
    return result


def _has_checkpoint(out: Path) -> bool:
    from sparsembed.word2vec import checkpoint

    return checkpoint.present(out / "model")


def _after_failure(out: Path, nproc: int | None = None) -> str:
    """What to do once a run has failed: resume from ``out`` if it holds a checkpoint, else run again."""
    return f"resume with: {launch.resume_command(out, nproc)}" if _has_checkpoint(out) else "run again"


@contextlib.contextmanager
def _fault_advice(out: Path) -> Iterator[None]:
    """Say how to go on after a full disk or an interrupt: resume from ``out`` if it holds a checkpoint."""
    try:
        yield
    except DiskFull as exc:
        raise DiskFull(f"{exc}; free space and {_after_failure(out)}") from exc
    except OSError as exc:
        # A write outside atomic_write (metrics.jsonl, a temporary file) that hit a full disk.
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = exc.filename or f"into {out}"
        raise DiskFull(f"no space left on device while writing {where}; free space and {_after_failure(out)}") from exc
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        raise Interrupted(signum, out if _has_checkpoint(out) else None) from None


def _train_and_report(model, out: Path, args: argparse.Namespace, signals: StopSignals) -> None:
    import time

    if not args.quiet:
        vocab, corpus = model.vocab, model.corpus
        print(f"vocabulary: {len(vocab)} words (min_count {model.settings.min_count}) from "
              f"{corpus.raw_words} tokens{_subword_note(model)}; training "
              f"{'skip-gram' if model.settings.sg else 'CBOW'} {_where(model.settings)}", file=sys.stderr)
    started = time.perf_counter()
    signals.armed = True
    try:
        summary = model.train(progress=not args.quiet, out=out, checkpoint_every=args.checkpoint_every,
                              stop=signals.event, wait_for_checkpoint=False)
    finally:
        signals.armed = False
    if summary["interrupted"]:
        raise Interrupted(signals.signum or signal.SIGINT, out)
    if not args.quiet:
        print(f"trained in {time.perf_counter() - started:.1f} s at {summary['words_per_s'] / 1e6:.2f}M words/s; "
              f"vectors in {out / 'vectors.bin'}", file=sys.stderr)


def _write_outputs(model, out: Path) -> None:
    """``out``'s vectors and vocabulary, written while the run's last checkpoint may still be going to disk
    (:func:`_train_and_report` does not wait for it); returns once both are there, raising a failure of either."""
    try:
        model.write_outputs(out)
    finally:
        model.finish_saves(raise_error=sys.exc_info()[1] is None)


def _where(settings) -> str:
    """Where a run trains, for its first line."""
    return f"with {settings.workers} threads" if settings.device == "cpu" else f"on {settings.device}"


def _subword_note(model) -> str:
    """How many buckets the vocabulary's n-grams use, when training subwords."""
    index, s = model.subwords, model.settings
    if index is None:
        return ""
    return f", its {s.minn}-{s.maxn} character n-grams in {len(index.bucket_of_row)} of {s.buckets} buckets"


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


