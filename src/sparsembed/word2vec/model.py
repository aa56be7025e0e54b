"""The word2vec model: settings, training state, the single-process job loop, checkpoints, resume.

The model owns everything needed to continue training (both matrices, vocabulary, the schedule position);
the trained vectors are handed out as a separate :class:`~sparsembed.word2vec.vectors.Vectors` (``model.wv``), as in
gensim. Work is cut into *jobs* of whole sentences (:mod:`sparsembed.word2vec.schedule`); ``workers`` threads run
the compiled kernel on jobs side by side while this thread hands out jobs, reports progress and takes checkpoints
between jobs (copies it hands to a writer thread, :meth:`Word2Vec.save_in_background`). The steps of a training
loop are public methods (:meth:`Word2Vec.schedule`, :meth:`~Word2Vec.run_job`, :meth:`~Word2Vec.advance`,
:meth:`~Word2Vec.end_epoch`, :meth:`~Word2Vec.save_state`, :meth:`~Word2Vec.save_in_background`), so another loop, the
data-parallel trainer's, drives the same model.

Over 500 lines: one class whose state (matrices, vocabulary, position, the subword index) its training loop, its
public steps and its checkpoints share; the kernels, the subword rows and the checkpoint files live elsewhere.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sparsembed.errors import UserError
from sparsembed.subword import batched as subword_batched
from sparsembed.subword import kernels as subword_kernels
from sparsembed.subword.index import SubwordIndex
from sparsembed.word2vec import batched, checkpoint, kernels
from sparsembed.word2vec.corpus import (
    EncodedCorpus,
    corpus_fingerprint,
    encode_corpus,
    fingerprint_change,
    scan_corpus,
)
from sparsembed.word2vec.progress import Progress
from sparsembed.word2vec.schedule import Position, Schedule, split_sentences
from sparsembed.word2vec.settings import Settings, default_workers, is_int
from sparsembed.word2vec.vocab import Vocab

if TYPE_CHECKING:
    from collections.abc import Callable

    from sparsembed.gpu.engine import DeviceTrainer
    from sparsembed.subword.parts import SubwordParts
    from sparsembed.word2vec.vectors import Vectors


@dataclass
class TrainingState:
    """What training changes and a checkpoint saves besides the settings, vocabulary and corpus: both matrices,
    the position and the per-epoch history. :meth:`Word2Vec.snapshot` gives the model's own (no copies); a caller
    holding an earlier, agreed state (the data-parallel trainer while an exchange is in flight) builds one."""

    syn0: np.ndarray
    syn1: np.ndarray
    position: Position
    history: list[dict[str, Any]]


@dataclass
class TrainingRun:
    """What the steps of one training call share (:meth:`Word2Vec.train`'s, or another loop's that drives the
    model's public steps): the schedule, the kernel's tables, the reporter, where and how often to checkpoint, and
    the event that asks to stop."""

    schedule: Schedule
    tables: dict[str, np.ndarray]
    reporter: Progress
    out_dir: Path | None
    checkpoint_every: float | None
    stop: threading.Event | None
    last_checkpoint: float
    interrupted: bool = False

    def stop_requested(self) -> bool:
        """Whether ``stop`` is set."""
        return self.stop is not None and self.stop.is_set()

    def checkpoint_due(self) -> bool:
        """Whether ``checkpoint_every`` seconds have passed since the last checkpoint (never without ``out_dir``)."""
        return (self.out_dir is not None and self.checkpoint_every is not None
                and time.perf_counter() - self.last_checkpoint >= self.checkpoint_every)


class Word2Vec:
    """CBOW / skip-gram with negative sampling, gensim-style.

    ``Word2Vec(corpus, vector_size=100, sg=0, ...)`` builds the vocabulary and trains at once when a corpus
    is given (a path to a file or directory, or an iterable of token lists). ``model.wv`` holds the vectors.
    ``keep_checkpoints`` (default 2) is how many checkpoint generations a save in ``out/model`` keeps.
    ``kernel`` picks the job kernel: ``"exact"`` (gensim's updates), ``"batched"`` (pWord2Vec's minibatches,
    :mod:`sparsembed.word2vec.batched`) or ``"auto"`` (the default: batched for skip-gram, exact for CBOW).
    ``subwords=(3, 6)`` trains fastText's model instead (:mod:`sparsembed.subword`): a word's input is the mean of
    its own row and the rows of its character n-grams of 3 to 6 characters, hashed into ``buckets`` buckets, and
    ``model.wv`` composes vectors for words outside the vocabulary too.
    ``device="cuda"`` trains on a GPU (:mod:`sparsembed.gpu`): jobs of ``DEVICE_JOB_TOKENS`` run one after another,
    each a kernel launch over its tokens; checkpoints and outputs are the same files as on the CPU.
    """

    def __init__(
        self,
        sentences: Any = None,
        *,
        corpus_file: str | os.PathLike | None = None,
        vector_size: int = 100,
        sg: int = 0,
        window: int = 5,
        negative: int = 5,
        min_count: int = 5,
        max_vocab: int | None = None,
        sample: float = 1e-3,
        epochs: int = 5,
        alpha: float = 0.025,
        min_alpha: float = 1e-4,
        workers: int | None = None,
        seed: int = 1,
        progress: bool = False,
        out: str | os.PathLike | None = None,
        subwords: tuple[int, int] | None = None,
        buckets: int = 2_000_000,
        kernel: str = Settings.kernel,
        device: str = Settings.device,
    ) -> None:
        minn, maxn = _subword_range(subwords)
        self.settings = Settings(
            sg=sg, vector_size=vector_size, window=window, negative=negative, min_count=min_count,
            max_vocab=max_vocab, sample=sample, epochs=epochs, alpha=alpha, min_alpha=min_alpha,
            workers=default_workers() if workers is None else workers, seed=seed, minn=minn, maxn=maxn,
            buckets=buckets, kernel=kernel, device=device,
        ).validate()
        if device != "cpu":
            from sparsembed.gpu.engine import DEVICE_JOB_TOKENS, check_device

            check_device(device)  # before the corpus scan, not after it
            self.settings.job_tokens = DEVICE_JOB_TOKENS
        self.vocab: Vocab | None = None
        self.corpus: EncodedCorpus | None = None
        self.corpus_source: str | None = None
        self.fingerprint: Any = None
        self.syn0: np.ndarray | None = None
        self.syn1: np.ndarray | None = None
        self.subwords: SubwordIndex | None = None  # each word's input rows, when training subwords
        self.position = Position()
        self.history: list[dict[str, Any]] = []
        self.keep_checkpoints = checkpoint.DEFAULT_KEEP
        self._damaged: tuple[Path, list[int]] | None = None  # (model directory, damaged generations) of a load
        self._device: DeviceTrainer | None = None  # the state on the device while training there
        self._writer = checkpoint.BackgroundWriter()  # checkpoints written while training goes on
        source = corpus_file if corpus_file is not None else sentences
        if source is not None:
            self.build_vocab(source)
            self.train(progress=progress, out=out)

    # ----------------------------------------------------------------------------------------------- setup
    def build_vocab(self, source: Any) -> None:
        """Scan the corpus: vocabulary, encoded token ids, fresh matrices (rows in descending frequency)."""
        s = self.settings
        self.vocab, self.corpus = scan_corpus(source, s.min_count, s.max_vocab, s.max_sentence_len)
        _return_freed_memory()
        if isinstance(source, (str, os.PathLike)):
            self.corpus_source = str(Path(source).resolve())
            self.fingerprint = corpus_fingerprint(source)
        if s.minn:
            self.subwords = SubwordIndex.build(self.vocab.words, s.minn, s.maxn, s.buckets)
            self.syn0 = self.subwords.initial_input_matrix(s.vector_size, s.seed)
        else:
            self.subwords = None
            self.syn0 = kernels.init_input_matrix(len(self.vocab), s.vector_size, s.seed)
        self.syn1 = np.zeros((len(self.vocab), s.vector_size), dtype=np.float32)
        self.position = Position()
        self.history = []

    @property
    def wv(self) -> Vectors:
        """The trained input vectors as :class:`~sparsembed.word2vec.vectors.Vectors` (rows shared, not copied)."""
        from sparsembed.word2vec.vectors import Vectors

        self._require_vocab()
        if self.subwords is not None:
            from sparsembed.subword.vectors import SubwordVectors

            return SubwordVectors(self.vocab.words, self.word_vectors(), self.vocab.counts, self.subwords, self.syn0,
                                  self.settings.seed)
        return Vectors(self.vocab.words, self.syn0, self.vocab.counts)

    def word_vectors(self) -> np.ndarray:
        """Each vocabulary word's vector, in vocabulary order: its ``syn0`` row, or with subwords the mean of its
        own row and its n-grams' rows (fastText's ``getWordVector``; computed anew, from the rows as they are now)."""
        self._require_vocab()
        return self.syn0 if self.subwords is None else self.subwords.word_vectors(self.syn0)

    def fasttext_parts(self) -> SubwordParts:
        """Everything a fastText model file needs (:class:`~sparsembed.subword.parts.SubwordParts`)."""
        from sparsembed.subword.parts import SubwordParts

        self._require_vocab()
        return SubwordParts.of(self)

    @property
    def done(self) -> bool:
        """True once every epoch has been trained."""
        return self.position.epoch >= self.settings.epochs

    def _require_vocab(self) -> None:
        if self.vocab is None or self.syn0 is None:
            raise UserError("the model has no vocabulary yet: call build_vocab(corpus) or pass a corpus")

    # -------------------------------------------------------------------------------------------- training
    def train(
        self,
        progress: bool = True,
        out: str | os.PathLike | None = None,
        checkpoint_every: float | None = None,
        report_every: float = 1.0,
        stop_after_jobs: int | None = None,
        stop: threading.Event | None = None,
        wait_for_checkpoint: bool = True,
    ) -> dict[str, Any]:
        """Train the remaining epochs; return a summary (seconds, words/s, loss per epoch, interrupted).

        With ``out``, ``out/metrics.jsonl`` gets one line per report, and a checkpoint goes to ``out/model``
        every ``checkpoint_every`` seconds and after each epoch. ``stop_after_jobs`` stops early (for tests of
        resumption) after that many jobs, leaving the position where it stopped. Setting ``stop`` (from a
        signal handler, say) ends training at the next job boundary: the running jobs finish, a checkpoint
        goes to ``out``, and the summary has ``interrupted: True``.

        Checkpoints are written in the background (:meth:`save_in_background`); training returns once the last is
        on disk, unless ``wait_for_checkpoint`` is False: then it may still be written when this returns, so that
        the caller writes its outputs meanwhile, and :meth:`finish_saves` waits for it (and raises its error).
        Until then the matrices must not change.
        """
        schedule = self.schedule()
        out_dir = Path(out) if out is not None else None
        if out_dir is not None:
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(f"cannot create {out_dir}: {exc.strerror}; choose a writable --out") from exc
        reporter = self.reporter(schedule, out_dir / "metrics.jsonl" if out_dir else None, report_every,
                                 quiet=not progress)
        tables = self.kernel_tables()
        started = time.perf_counter()
        run = _Run(schedule, tables, reporter, out_dir, checkpoint_every, stop, last_checkpoint=started,
                   stop_after_jobs=stop_after_jobs)
        try:
            self._device = self._device_trainer(schedule, tables)
            with ThreadPoolExecutor(max_workers=self.concurrent_jobs, thread_name_prefix="sparsembed") as pool:
                while not self.done:
                    if self._train_epoch(pool, run):
                        break
                    self.end_epoch(schedule, reporter)
                    if out_dir is not None:
                        self.save_in_background(out_dir)
                        run.last_checkpoint = time.perf_counter()
            if run.interrupted and out_dir is not None:
                self.save(out_dir)
        finally:
            reporter.close()
            if self._device is not None:  # the host matrices are the record; the device's memory goes back
                self._device.pull(self.syn0, self.syn1)
                self._device = None
            if wait_for_checkpoint or sys.exc_info()[1] is not None:
                self.finish_saves(raise_error=sys.exc_info()[1] is None)
        seconds = time.perf_counter() - started
        return {
            "seconds": seconds,
            "words_per_s": reporter.words_per_second(schedule.progress(self.position)),
            "epochs": [dict(h) for h in self.history],
            "interrupted": run.interrupted,
        }

    def _train_epoch(self, pool: ThreadPoolExecutor, run: _Run) -> bool:
        """Run the current epoch's remaining jobs, ``workers`` at a time, checkpointing when due; return whether
        training stops inside the epoch (``stop`` or ``stop_after_jobs``)."""
        epoch, next_job = self.position.epoch, self.position.job
        pending: dict[Future, int] = {}
        finished_early: dict[int, tuple] = {}
        stopping = False
        while True:
            if run.stop_requested():
                run.interrupted = stopping = True
            while not stopping and next_job < run.schedule.n_jobs and len(pending) < self.concurrent_jobs:
                pending[pool.submit(self.run_job, run.schedule, epoch, next_job, run.tables)] = next_job
                next_job += 1
                run.jobs_run += 1
                stopping = run.stop_after_jobs is not None and run.jobs_run >= run.stop_after_jobs
            if not pending:
                return stopping
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            self._collect(done, pending, finished_early, run)
            due = run.checkpoint_due()
            if due or stopping or run.stop_requested():
                # A checkpoint must describe a complete prefix of jobs: let the running ones finish.
                self._collect(wait(pending).done, pending, finished_early, run)
            if due:
                self.save_in_background(run.out_dir)
                run.last_checkpoint = time.perf_counter()

    def _collect(self, done, pending: dict, finished_early: dict, run: _Run) -> None:
        """Account finished jobs in job order, so the position only ever moves over a complete prefix."""
        for future in done:
            job = pending.pop(future)
            finished_early[job] = future.result()
            self.corpus.release(*run.schedule.tokens(job, job + 1))
        while self.position.job in finished_early:
            loss, pairs, _trained = finished_early.pop(self.position.job)
            self.advance(run.schedule, self.position.job + 1, float(loss), int(pairs))
        self.report(run.schedule, run.reporter)

    @property
    def concurrent_jobs(self) -> int:
        """Jobs that train side by side: ``workers`` on the CPU, one on a device (a job fills it)."""
        return self.settings.workers if self.settings.device == "cpu" else 1

    def _device_trainer(self, schedule: Schedule, tables: dict[str, np.ndarray]) -> DeviceTrainer | None:
        """The training state on ``settings.device`` (None on the CPU): matrices, corpus and tables copied there."""
        s = self.settings
        if s.device == "cpu":
            return None
        from sparsembed.gpu.engine import DeviceTrainer, check_device

        return DeviceTrainer(self.syn0, self.syn1, self.corpus.ids, schedule.sentence_starts,
                             tables["sample_ints"] if s.sample > 0 else None,
                             *kernels.unpack_alias(tables["packed_alias"]), check_device(s.device))

    # -------------------------------------------------------------- the steps of a training loop, public
    def require_corpus(self) -> None:
        """Raise UserError unless the model has a vocabulary and a corpus to train on."""
        self._require_vocab()
        if self.corpus is None:
            raise UserError("the model has no corpus loaded; load it with Word2Vec.load(DIR, with_corpus=True)")

    def schedule(self) -> Schedule:
        """The run's :class:`~sparsembed.word2vec.schedule.Schedule` over the loaded corpus (jobs of
        ``settings.job_tokens``), after checking there is something to train and that the position lies within
        its jobs."""
        self.require_corpus()
        starts = self.corpus.sentence_starts
        if int(starts[-1]) == 0:
            raise UserError("the corpus has no token from the vocabulary; nothing to train")
        s = self.settings
        if s.piece_tokens:
            starts = split_sentences(starts, s.piece_tokens)
        schedule = Schedule(starts, s.job_tokens, s.epochs, s.alpha, s.min_alpha)
        if self.position.job > schedule.n_jobs:
            raise UserError(f"the saved position (job {self.position.job}) is past the corpus' {schedule.n_jobs} "
                            "jobs; the checkpoint does not belong to this corpus")
        return schedule

    def kernel_tables(self) -> dict[str, np.ndarray]:
        """What the kernel draws from, built once per training session: ``sample_ints`` (subsampling thresholds)
        and ``packed_alias`` (the noise distribution)."""
        s = self.settings
        threshold, alias = self.vocab.noise_alias(0.75)
        return {
            "sample_ints": np.asarray(self.vocab.sample_ints(s.sample), dtype=np.uint64),
            "packed_alias": kernels.pack_alias(_alias_threshold_u32(threshold), np.asarray(alias)),
        }

    def reporter(self, schedule: Schedule, metrics_path: Path | None = None, every: float = 1.0,
                 quiet: bool = False) -> Progress:
        """A progress reporter for training on from the current position (its words/s count this session's)."""
        return Progress(self.corpus.raw_words, self.settings.epochs, metrics_path=metrics_path, every=every,
                        quiet=quiet, start_fraction=schedule.progress(self.position))

    def run_job(self, schedule: Schedule, epoch: int, job: int, tables: dict[str, np.ndarray],
                decay: tuple[int, int] | None = None,
                touched: tuple[np.ndarray, np.ndarray] = (kernels.NOT_TRACKED, kernels.NOT_TRACKED),
                ) -> tuple[float, int, int]:
        """Train job ``job`` of epoch ``epoch`` in place, without the GIL (threads run jobs side by side); return
        (loss, pairs, trained words). The position does not move (:meth:`advance` does).

        Args:
            schedule: :meth:`schedule`; tables: :meth:`kernel_tables`.
            decay: the kernel's ``(total tokens, tokens before)`` when the job does not run alone in its place of
                the run (:meth:`Schedule.decay` with ``concurrent``); by default its own place.
            touched: per-row marks (uint8) the kernel sets for each matrix's rows it may change.
        """
        s = self.settings
        total, before = schedule.decay(epoch, job) if decay is None else decay
        corpus = self.corpus
        if self._device is not None:
            return self._device.train_job(s.sg, s.window, s.negative, s.alpha, s.min_alpha, total, before, s.seed,
                                          epoch, *schedule.tokens(job, job + 1))
        if self.subwords is not None:  # fastText's model: a word's input rows are its own and its n-grams'
            sub = self.subwords
            return self.subword_job_kernel()(
                self.syn0, self.syn1, sub.offsets, sub.rows, sub.gain, corpus.ids, schedule.sentence_starts,
                int(schedule.bounds[job]), int(schedule.bounds[job + 1]), tables["sample_ints"], s.sample > 0,
                tables["packed_alias"], s.sg, s.window, s.negative, s.alpha, s.min_alpha, total, before, s.seed,
                epoch, job, kernels.SIGMOID_TABLE, kernels.LOG_SIGMOID_TABLE, *touched,
            )
        return self.job_kernel()(
            self.syn0, self.syn1, corpus.ids, schedule.sentence_starts, int(schedule.bounds[job]),
            int(schedule.bounds[job + 1]), tables["sample_ints"], s.sample > 0, tables["packed_alias"], s.sg,
            s.window, s.negative, s.alpha, s.min_alpha, total, before, s.seed, epoch, job,
            kernels.SIGMOID_TABLE, kernels.LOG_SIGMOID_TABLE, *touched,
        )

    def job_kernel(self) -> Callable[..., tuple[float, int, int]]:
        """The compiled job function ``settings.kernel`` names, with :func:`~sparsembed.word2vec.kernels.train_job`'s
        arguments and result: the one place that choice is made (:meth:`run_job`, and through it the data-parallel
        trainer, call it)."""
        return batched.train_job_batched if self.settings.resolved_kernel == "batched" else kernels.train_job

    def subword_job_kernel(self) -> Callable[..., tuple[float, int, int]]:
        """With subwords, the compiled job function: fastText's updates (:func:`sparsembed.subword.kernels.train_job`)
        or, with the batched kernel, each position composed once (:mod:`sparsembed.subword.batched`)."""
        if self.settings.resolved_kernel == "batched":
            return subword_batched.train_job_batched
        return subword_kernels.train_job

    def advance(self, schedule: Schedule, job: int, loss: float, pairs: int) -> None:
        """Move the position to job ``job`` of the current epoch, adding the loss and pairs of the jobs it passes;
        a UserError (raised before moving) when the loss is not finite: training diverged."""
        if not math.isfinite(loss):
            rate = schedule.alpha(schedule.progress(self.position))
            raise UserError(f"training diverged in epoch {self.position.epoch + 1} (loss became {loss}) at learning "
                            f"rate {rate:.4g}; lower --alpha (e.g. {self.settings.alpha / 4:g})")
        self.position.job = job
        self.position.epoch_loss += loss
        self.position.epoch_pairs += pairs

    def report(self, schedule: Schedule, reporter: Progress) -> None:
        """Progress at the current position (``reporter`` decides whether it is time to show it)."""
        fraction = schedule.progress(self.position)
        reporter.update(fraction, schedule.alpha(fraction), self.position.mean_loss, self.position.epoch)

    def end_epoch(self, schedule: Schedule, reporter: Progress) -> None:
        """Close the current epoch: its loss goes to :attr:`history`, the position to the next epoch's start, and
        ``reporter`` reports it at once."""
        epoch = self.position.epoch
        record = {"epoch": epoch + 1, "loss": self.position.epoch_loss, "pairs": self.position.epoch_pairs,
                  "mean_loss": self.position.mean_loss}
        self.history.append(record)
        self.position = Position(epoch=epoch + 1)
        fraction = schedule.fraction(epoch + 1, 0)
        reporter.update(fraction, schedule.alpha(fraction), record["mean_loss"], epoch, force=True,
                        epoch_loss=record["loss"], epoch_pairs=record["pairs"])

    # ------------------------------------------------------------------------------------ saving, resuming
    def snapshot(self) -> TrainingState:
        """The model's own training state: its matrices, position and history themselves, not copies."""
        return TrainingState(self.syn0, self.syn1, self.position, self.history)

    def save(self, out: str | os.PathLike) -> None:
        """Write the full training state to ``out/model`` (atomic; the previous checkpoint survives a crash), after
        any checkpoint still being written in the background."""
        if self._device is not None:
            self._device.pull(self.syn0, self.syn1)
        self.save_state(out, self.snapshot())

    def save_in_background(self, out: str | os.PathLike, state: TrainingState | None = None,
                           on_saved: Callable[[], None] | None = None) -> None:
        """Write ``state`` (default: the model's own, as it is now) as :meth:`save_state` does, on a thread of its
        own: the matrices are copied first, so training may go on changing them while the disk works
        (:class:`~sparsembed.word2vec.checkpoint.BackgroundWriter`). Saves before returning instead when the
        copies would not fit in memory, or training runs on a device. ``on_saved()`` runs once the checkpoint is
        on disk (on the writer's thread), not after a failed write. :meth:`finish_saves` waits for the write and
        raises its error, as does the next save."""
        given = state
        state = self.snapshot() if given is None else given
        if self._device is not None or not self._writer.fits({"syn0": state.syn0, "syn1": state.syn1}):
            if given is None:
                self.save(out)  # a device's matrices come to the host first
            else:
                self.save_state(out, given)
            if on_saved is not None:
                on_saved()
            return
        copy = TrainingState(self._writer.copy("syn0", state.syn0), self._writer.copy("syn1", state.syn1),
                             dataclasses.replace(state.position), [dict(h) for h in state.history])

        def write() -> None:
            self._write_state(out, copy)
            if on_saved is not None:
                on_saved()

        self._writer.start(write)

    def finish_saves(self, raise_error: bool = True) -> None:
        """Wait for a checkpoint being written in the background and free its copies; raise the exception of a
        failed write, unless ``raise_error`` is False (training is failing already, and its error is the one to
        report; the previous checkpoint is then the last complete one)."""
        try:
            self._writer.release()
        except Exception:
            if raise_error:
                raise

    def save_state(self, out: str | os.PathLike, state: TrainingState) -> None:
        """Write ``state`` with this model's settings, vocabulary and corpus as the checkpoint in ``out/model``,
        atomically as :meth:`save` does; ``state`` may be one training has already passed."""
        self._writer.wait()  # one save at a time: generations are numbered and pruned by the save itself
        self._write_state(out, state)

    def _write_state(self, out: str | os.PathLike, state: TrainingState) -> None:
        self._require_vocab()
        vocab_state = self.vocab.to_state()
        arrays = {"syn0": state.syn0, "syn1": state.syn1}
        if self.subwords is not None:
            arrays["subword.bucket_of_row"] = self.subwords.bucket_of_row
        scalars = {}
        for key, value in vocab_state.items():
            if isinstance(value, np.ndarray):
                arrays[f"vocab.{key}"] = value
            else:
                scalars[key] = value
        meta = {
            "settings": dataclasses.asdict(self.settings),
            "position": dataclasses.asdict(state.position),
            "history": state.history,
            "vocab": scalars,
            "corpus": {"source": self.corpus_source, "fingerprint": self.fingerprint,
                       "tokens": int(self.corpus.sentence_starts[-1]) if self.corpus is not None else None,
                       "sentences": len(self.corpus.sentence_starts) - 1 if self.corpus is not None else None},
        }
        model_dir = Path(out) / "model"
        # Damaged generations a load skipped here stay, for inspection (the new state lists them).
        damaged = self._damaged[1] if self._damaged and self._damaged[0] == model_dir.resolve() else []
        checkpoint.save_checkpoint(model_dir, arrays, meta, keep=self.keep_checkpoints, damaged=damaged)

    @classmethod
    def load(cls, out: str | os.PathLike, with_corpus: bool = False, corpus: str | os.PathLike | None = None,
             on_damaged: Callable[[str], None] | None = None) -> Word2Vec:
        """The model saved in ``out/model`` (or ``out`` itself if it is the model directory).

        The newest checkpoint generation that verifies is loaded; ``on_damaged(line)`` hears of each newer one
        that was damaged (default: a line on stderr), see :func:`~sparsembed.word2vec.checkpoint.load_latest`.
        ``with_corpus`` also reads the corpus to go on training (unless training is done): from where it was,
        or from ``corpus`` when it has moved since (the same files, checked by size and modification time).
        """
        model_dir = Path(out) / "model"
        if not checkpoint.present(model_dir) and checkpoint.present(out):
            model_dir = Path(out)
        loaded = checkpoint.load_latest(model_dir, on_damaged)
        arrays, meta = loaded.arrays, loaded.meta
        model = cls.__new__(cls)
        try:
            model._restore(arrays, meta)
        except UserError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            # The checksums held, so this is a checkpoint from another version or one edited by hand.
            raise UserError(f"checkpoint {model_dir} does not describe a model this sparsembed can load "
                            f"({type(exc).__name__}: {exc}); restore it or retrain") from exc
        rows = len(model.vocab) if model.subwords is None else model.subwords.n_rows
        dim = model.settings.vector_size
        if model.syn0.shape != (rows, dim) or model.syn1.shape != (len(model.vocab), dim):
            raise UserError(f"checkpoint {model_dir} is inconsistent: matrices {model.syn0.shape} and "
                            f"{model.syn1.shape} do not match {len(model.vocab)} words × dim {dim}"
                            + (f" with {rows - len(model.vocab)} bucket rows" if model.subwords is not None else ""))
        model._damaged = (model_dir.resolve(), loaded.damaged)
        if with_corpus and not model.done:
            model._reload_corpus(meta["corpus"], out, corpus)
        return model

    def _restore(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Set every attribute from a loaded checkpoint (no corpus yet); KeyError / TypeError if malformed."""
        # A checkpoint from before the kernel setting was trained by the exact kernel, and resumes with it.
        self.settings = Settings(**{"kernel": "exact", **dict(meta["settings"])}).validate()
        vocab_state = dict(meta["vocab"])
        vocab_state.update({k[len("vocab."):]: v for k, v in arrays.items() if k.startswith("vocab.")})
        self.vocab = Vocab.from_state(vocab_state)
        self.syn0, self.syn1 = arrays["syn0"], arrays["syn1"]
        self.subwords = None
        if self.settings.minn:
            s = self.settings
            # The layout it was trained with: checkpoints before first-use order hold their buckets sorted.
            self.subwords = SubwordIndex.build(self.vocab.words, s.minn, s.maxn, s.buckets,
                                               layout=arrays["subword.bucket_of_row"])
        self.position = Position(**meta["position"])
        p = self.position
        if not (is_int(p.epoch) and is_int(p.job) and 0 <= p.epoch <= self.settings.epochs and p.job >= 0):
            raise ValueError(f"position {p} is out of range")
        self.history = list(meta.get("history", []))
        self.keep_checkpoints = checkpoint.DEFAULT_KEEP
        self._damaged = None
        self._device = None
        self._writer = checkpoint.BackgroundWriter()
        self.corpus_source = meta["corpus"]["source"]
        self.fingerprint = meta["corpus"]["fingerprint"]
        self.corpus = None

    def _reload_corpus(self, saved: dict[str, Any], out: str | os.PathLike, moved_to: str | os.PathLike | None) -> None:
        """Encode the checkpoint's corpus, from ``moved_to`` if given, after checking it is the same files."""
        if saved["source"] is None:
            raise UserError("this model was trained from an in-memory corpus; it cannot be resumed from disk")
        source = saved["source"] if moved_to is None else str(Path(moved_to).resolve())
        if not Path(source).exists():
            if moved_to is not None:
                raise UserError(f"corpus path {moved_to} does not exist; check the path")
            raise UserError(f"the corpus {source} of this checkpoint is missing (moved or deleted); put it back, "
                            f"or give its new path: sparsembed train --resume {out} NEW_PATH")
        change = fingerprint_change(self.fingerprint, source)
        if change is not None:
            which = "" if moved_to is None else f" (given for the checkpoint's {saved['source']})"
            raise UserError(f"the corpus {source}{which} changed since the checkpoint was written: {change}; "
                            "restore the original files to resume, or start a new run")
        corpus = encode_corpus(source, self.vocab, self.settings.max_sentence_len)
        if int(corpus.sentence_starts[-1]) != saved.get("tokens") or len(corpus) != saved.get("sentences"):
            raise UserError(f"the corpus {source} no longer matches the checkpoint ({saved['tokens']} tokens "
                            "expected); restore the original files to resume")
        self.corpus = corpus
        # The next checkpoint records where the corpus is now.
        self.corpus_source, self.fingerprint = source, corpus_fingerprint(source)

    def write_outputs(self, out: str | os.PathLike) -> None:
        """``out/vectors.bin`` (word2vec binary, rows by descending frequency) and ``out/vocab.txt``."""
        from sparsembed.word2vec.formats import write_word2vec

        out = Path(out)
        for name in ("vectors.bin", "vocab.txt"):
            # A process killed while writing these leaves atomic_write's temporary file; nobody else writes here.
            for stale in out.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)
        write_word2vec(out / "vectors.bin", self.vocab.words, self.word_vectors(), binary=True)
        self.vocab.save_fvocab(out / "vocab.txt")


@dataclass
class _Run(TrainingRun):
    """One call of :meth:`Word2Vec.train`."""

    stop_after_jobs: int | None = None
    jobs_run: int = 0


def _subword_range(subwords: Any) -> tuple[int, int]:
    """``subwords`` (None, or (minn, maxn)) as Settings' ``(minn, maxn)``, (0, 0) being off."""
    if subwords is None:
        return 0, 0
    try:
        minn, maxn = subwords
    except (TypeError, ValueError):
        raise UserError(f"subwords must be None or (minn, maxn) such as (3, 6), got {subwords!r}") from None
    if not (is_int(minn) and is_int(maxn) and minn >= 1):
        raise UserError(f"subwords must be None or (minn, maxn) with 1 <= minn <= maxn, such as (3, 6); got "
                        f"{subwords!r}")
    return int(minn), int(maxn)


def _alias_threshold_u32(threshold: np.ndarray) -> np.ndarray:
    """Alias thresholds as uint32 comparisons against a uniform 32-bit draw (accepts floats in [0, 1])."""
    threshold = np.asarray(threshold)
    if threshold.dtype.kind == "f":
        return np.minimum(np.round(threshold.astype(np.float64) * 2.0**32), 2.0**32 - 1).astype(np.uint64)
    return threshold.astype(np.uint64)


def _return_freed_memory() -> None:
    """Hand the scan's freed heap back to the OS (glibc keeps it otherwise), so it does not count as peak RSS."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass

