"""The word2vec trainer: settings, training state, the job loop, checkpoints, resume.

The trainer owns everything needed to continue training (both matrices, vocabulary, the schedule position);
the trained vectors are handed out as a separate :class:`~sparsembed.word2vec.vectors.Vectors` (``model.wv``), as in
gensim. Work is cut into *jobs* of whole sentences; ``workers`` threads run the compiled kernel on jobs
side by side while this thread hands out jobs, reports progress and writes checkpoints between jobs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparsembed.errors import UserError
from sparsembed.word2vec import checkpoint, kernels
from sparsembed.word2vec.corpus import EncodedCorpus, corpus_fingerprint, encode_corpus, scan_corpus
from sparsembed.word2vec.progress import Progress
from sparsembed.word2vec.vocab import Vocab


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class Settings:
    """Hyper-parameters; the defaults are gensim's (``Word2Vec()``), negative sampling only."""

    sg: int = 0
    vector_size: int = 100
    window: int = 5
    negative: int = 5
    min_count: int = 5
    max_vocab: int | None = None
    sample: float = 1e-3
    epochs: int = 5
    alpha: float = 0.025
    min_alpha: float = 1e-4
    workers: int = dataclasses.field(default_factory=default_workers)
    seed: int = 1
    max_sentence_len: int = 10_000
    job_tokens: int = 50_000

    def validate(self) -> Settings:
        """Raise UserError naming the first invalid setting; return self."""
        checks = [
            (self.sg in (0, 1), "sg (model) must be 0 (cbow) or 1 (skipgram)"),
            (_is_int(self.vector_size) and 1 <= self.vector_size <= 100_000, "--dim must be an integer in 1..100000"),
            (_is_int(self.window) and 1 <= self.window <= 1000, "--window must be an integer in 1..1000"),
            (_is_int(self.negative) and 1 <= self.negative <= 1000,
             "--negative must be an integer in 1..1000 (only negative sampling is supported)"),
            (_is_int(self.min_count) and self.min_count >= 1, "--min-count must be an integer >= 1"),
            (self.max_vocab is None or (_is_int(self.max_vocab) and self.max_vocab >= 1),
             "--max-vocab must be an integer >= 1"),
            (_finite(self.sample) and 0 <= self.sample < 1, "--sample must be in [0, 1) (0 disables subsampling)"),
            (_is_int(self.epochs) and 1 <= self.epochs <= 100_000, "--epochs must be an integer >= 1"),
            (_finite(self.alpha) and 0 < self.alpha <= 10, "--alpha must be a number in (0, 10]"),
            (_finite(self.min_alpha) and 0 <= self.min_alpha <= self.alpha, "--min-alpha must be in [0, alpha]"),
            (_is_int(self.workers) and 1 <= self.workers <= 1024, "--workers must be an integer in 1..1024"),
            (_is_int(self.seed) and 0 <= self.seed < 2**63, "--seed must be an integer in 0..2^63-1"),
            (_is_int(self.max_sentence_len) and self.max_sentence_len >= 1, "max_sentence_len must be >= 1"),
            (_is_int(self.job_tokens) and self.job_tokens >= 1, "job_tokens must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"invalid setting: {message}")
        return self


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value)


def job_boundaries(sentence_starts: np.ndarray, job_tokens: int) -> np.ndarray:
    """Sentence indices cutting the corpus into jobs of about ``job_tokens`` tokens (whole sentences).

    Job ``k`` is sentences ``[b[k], b[k+1])``. The cut depends on the corpus alone, never on the number of
    threads, so a run and its resumption see the same jobs.
    """
    n_sentences = len(sentence_starts) - 1
    if n_sentences <= 0:
        return np.zeros(1, dtype=np.int64)
    targets = np.arange(job_tokens, int(sentence_starts[-1]), job_tokens, dtype=np.int64)
    cuts = np.searchsorted(sentence_starts, targets, side="left")
    inner = np.unique(cuts[(cuts > 0) & (cuts < n_sentences)])
    return np.concatenate(([0], inner, [n_sentences])).astype(np.int64)


@dataclass
class Position:
    """Where training stands: the next job to run, and the loss summed so far in the current epoch."""

    epoch: int = 0
    job: int = 0
    epoch_loss: float = 0.0
    epoch_pairs: int = 0


class Word2Vec:
    """CBOW / skip-gram with negative sampling, gensim-style.

    ``Word2Vec(corpus, vector_size=100, sg=0, ...)`` builds the vocabulary and trains at once when a corpus
    is given (a path to a file or directory, or an iterable of token lists). ``model.wv`` holds the vectors.
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
    ) -> None:
        self.settings = Settings(
            sg=sg, vector_size=vector_size, window=window, negative=negative, min_count=min_count,
            max_vocab=max_vocab, sample=sample, epochs=epochs, alpha=alpha, min_alpha=min_alpha,
            workers=default_workers() if workers is None else workers, seed=seed,
        ).validate()
        self.vocab: Vocab | None = None
        self.corpus: EncodedCorpus | None = None
        self.corpus_source: str | None = None
        self.fingerprint: Any = None
        self.syn0: np.ndarray | None = None
        self.syn1: np.ndarray | None = None
        self.position = Position()
        self.history: list[dict[str, Any]] = []
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
        self.syn0 = kernels.init_input_matrix(len(self.vocab), s.vector_size, s.seed)
        self.syn1 = np.zeros_like(self.syn0)
        self.position = Position()
        self.history = []

    @property
    def wv(self):
        """The trained input vectors as :class:`~sparsembed.word2vec.vectors.Vectors` (rows shared, not copied)."""
        from sparsembed.word2vec.vectors import Vectors

        self._require_vocab()
        return Vectors(self.vocab.words, self.syn0, self.vocab.counts)

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
    ) -> dict[str, Any]:
        """Train the remaining epochs; return a summary (seconds, words/s, loss per epoch, interrupted).

        With ``out``, ``out/metrics.jsonl`` gets one line per report, and a checkpoint goes to ``out/model``
        every ``checkpoint_every`` seconds and after each epoch. ``stop_after_jobs`` stops early (for tests of
        resumption) after that many jobs, leaving the position where it stopped. Setting ``stop`` (from a
        signal handler, say) ends training at the next job boundary: the running jobs finish, a checkpoint
        goes to ``out``, and the summary has ``interrupted: True``.
        """
        s = self.settings
        bounds = self._job_bounds()
        corpus = self.corpus
        n_jobs = len(bounds) - 1
        out_dir = Path(out) if out is not None else None
        if out_dir is not None:
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(f"cannot create {out_dir}: {exc.strerror}; choose a writable --out") from exc
        reporter = Progress(
            corpus.raw_words, s.epochs, metrics_path=out_dir / "metrics.jsonl" if out_dir else None,
            every=report_every, quiet=not progress,
            start_fraction=self._fraction(self.position.epoch, int(corpus.sentence_starts[bounds[self.position.job]])),
        )
        tables = self._kernel_tables()
        started = time.perf_counter()
        last_checkpoint = started
        jobs_run = 0
        interrupted = False
        try:
            with ThreadPoolExecutor(max_workers=s.workers, thread_name_prefix="sparsembed") as pool:
                while not self.done:
                    epoch = self.position.epoch
                    next_job = self.position.job
                    pending: dict[Future, int] = {}
                    finished_early: dict[int, tuple] = {}
                    stopping = False
                    while True:
                        if stop is not None and stop.is_set():
                            interrupted = stopping = True
                        while not stopping and next_job < n_jobs and len(pending) < s.workers:
                            future = pool.submit(self._run_job, corpus, bounds, epoch, next_job, tables)
                            pending[future] = next_job
                            next_job += 1
                            jobs_run += 1
                            stopping = stop_after_jobs is not None and jobs_run >= stop_after_jobs
                        if not pending:
                            break
                        done, _ = wait(pending, return_when=FIRST_COMPLETED)
                        self._collect(done, pending, finished_early, bounds, epoch, reporter)
                        due = (out_dir is not None and checkpoint_every is not None
                               and time.perf_counter() - last_checkpoint >= checkpoint_every)
                        if due or stopping or (stop is not None and stop.is_set()):
                            # A checkpoint must describe a complete prefix of jobs: let the running ones finish.
                            self._collect(wait(pending).done, pending, finished_early, bounds, epoch, reporter)
                        if due:
                            self.save(out_dir)
                            last_checkpoint = time.perf_counter()
                    if stopping:
                        break
                    self._end_epoch(reporter)
                    if out_dir is not None:
                        self.save(out_dir)
                        last_checkpoint = time.perf_counter()
            if interrupted and out_dir is not None:
                self.save(out_dir)
        finally:
            reporter.close()
        seconds = time.perf_counter() - started
        return {
            "seconds": seconds,
            "words_per_s": reporter.words_per_second(self._fraction(self.position.epoch, self._tokens_done(bounds))),
            "epochs": [dict(h) for h in self.history],
            "interrupted": interrupted,
        }

    def _kernel_tables(self) -> dict[str, Any]:
        s = self.settings
        threshold, alias = self.vocab.noise_alias(0.75)
        return {
            "sample_ints": np.asarray(self.vocab.sample_ints(s.sample), dtype=np.uint64),
            "packed_alias": kernels.pack_alias(_alias_threshold_u32(threshold), np.asarray(alias)),
        }

    def _require_corpus(self) -> None:
        self._require_vocab()
        if self.corpus is None:
            raise UserError("the model has no corpus loaded; load it with Word2Vec.load(DIR, with_corpus=True)")

    def _job_bounds(self) -> np.ndarray:
        """The corpus' job boundaries (:func:`job_boundaries`), after checking there is something to train and
        that the saved position lies within them."""
        self._require_corpus()
        starts = self.corpus.sentence_starts
        if int(starts[-1]) == 0:
            raise UserError("the corpus has no token from the vocabulary; nothing to train")
        bounds = job_boundaries(starts, self.settings.job_tokens)
        n_jobs = len(bounds) - 1
        if self.position.job > n_jobs:
            raise UserError(f"the saved position (job {self.position.job}) is past the corpus' {n_jobs} jobs; "
                            "the checkpoint does not belong to this corpus")
        return bounds

    def _run_job(self, corpus: EncodedCorpus, bounds: np.ndarray, epoch: int, job: int, tables: dict,
                 schedule: tuple[int, int] | None = None,
                 touched: tuple[np.ndarray, np.ndarray] = (kernels.NOT_TRACKED, kernels.NOT_TRACKED)) -> tuple:
        """Train job ``job`` in place. ``schedule``: the kernel's (total tokens, tokens before) when not this
        job's own place in the run (data-parallel steps); ``touched``: per-row marks the kernel sets."""
        s = self.settings
        first, last = int(bounds[job]), int(bounds[job + 1])
        if schedule is None:
            tokens_per_epoch = int(corpus.sentence_starts[-1])
            schedule = (tokens_per_epoch * s.epochs, epoch * tokens_per_epoch + int(corpus.sentence_starts[first]))
        total, before = schedule
        return kernels.train_job(
            self.syn0, self.syn1, corpus.ids, corpus.sentence_starts, first, last,
            tables["sample_ints"], s.sample > 0, tables["packed_alias"], s.sg, s.window, s.negative,
            s.alpha, s.min_alpha, total, before, s.seed, epoch, job,
            kernels.SIGMOID_TABLE, kernels.LOG_SIGMOID_TABLE, *touched,
        )

    def _collect(self, done, pending: dict, finished_early: dict, bounds, epoch: int, reporter: Progress) -> None:
        """Account finished jobs in job order, so the position only ever moves over a complete prefix."""
        starts = self.corpus.sentence_starts
        for future in done:
            job = pending.pop(future)
            finished_early[job] = future.result()
            self.corpus.release(int(starts[bounds[job]]), int(starts[bounds[job + 1]]))
        while self.position.job in finished_early:
            loss, pairs, _trained = finished_early.pop(self.position.job)
            if not math.isfinite(loss):
                raise UserError(
                    f"training diverged in epoch {epoch + 1} (loss became {loss}) at learning rate "
                    f"{self._alpha(self._fraction(epoch, self._tokens_done(bounds))):.4g}; "
                    f"lower --alpha (e.g. {self.settings.alpha / 4:g})"
                )
            self.position.epoch_loss += float(loss)
            self.position.epoch_pairs += int(pairs)
            self.position.job += 1
        fraction = self._fraction(epoch, self._tokens_done(bounds))
        reporter.update(fraction, self._alpha(fraction), self._mean_loss(), epoch)

    def _end_epoch(self, reporter: Progress) -> None:
        epoch = self.position.epoch
        record = {"epoch": epoch + 1, "loss": self.position.epoch_loss, "pairs": self.position.epoch_pairs,
                  "mean_loss": self._mean_loss()}
        self.history.append(record)
        self.position = Position(epoch=epoch + 1)
        fraction = self._fraction(epoch + 1, 0)
        reporter.update(fraction, self._alpha(fraction), record["mean_loss"], epoch, force=True,
                        epoch_loss=record["loss"], epoch_pairs=record["pairs"])

    def _tokens_done(self, bounds: np.ndarray) -> int:
        return int(self.corpus.sentence_starts[bounds[min(self.position.job, len(bounds) - 1)]])

    def _fraction(self, epoch: int, tokens_in_epoch: int) -> float:
        per_epoch = max(int(self.corpus.sentence_starts[-1]), 1)
        return min((epoch * per_epoch + tokens_in_epoch) / (per_epoch * self.settings.epochs), 1.0)

    def _alpha(self, fraction: float) -> float:
        s = self.settings
        return max(s.alpha - (s.alpha - s.min_alpha) * fraction, s.min_alpha)

    def _mean_loss(self) -> float:
        return self.position.epoch_loss / self.position.epoch_pairs if self.position.epoch_pairs else math.nan

    # ------------------------------------------------------------------------------------ saving, resuming
    def save(self, out: str | os.PathLike, agreed: tuple | None = None) -> None:
        """Write the full training state to ``out/model`` (atomic; the previous checkpoint survives a crash).

        ``agreed``: ``(syn0, syn1, position, history)`` to save instead of the model's own, a state training
        has already passed (data-parallel training with an exchange in flight saves the matrices every rank
        agrees on, one step behind its working copies)."""
        self._require_vocab()
        vocab_state = self.vocab.to_state()
        syn0, syn1, position, history = agreed or (self.syn0, self.syn1, self.position, self.history)
        arrays = {"syn0": syn0, "syn1": syn1}
        scalars = {}
        for key, value in vocab_state.items():
            if isinstance(value, np.ndarray):
                arrays[f"vocab.{key}"] = value
            else:
                scalars[key] = value
        meta = {
            "settings": dataclasses.asdict(self.settings),
            "position": dataclasses.asdict(position),
            "history": history,
            "vocab": scalars,
            "corpus": {"source": self.corpus_source, "fingerprint": self.fingerprint,
                       "tokens": int(self.corpus.sentence_starts[-1]) if self.corpus is not None else None,
                       "sentences": len(self.corpus.sentence_starts) - 1 if self.corpus is not None else None},
        }
        checkpoint.save_checkpoint(Path(out) / "model", arrays, meta)

    @classmethod
    def load(cls, out: str | os.PathLike, with_corpus: bool = False) -> Word2Vec:
        """The model saved in ``out/model`` (or ``out`` itself if it is the model directory)."""
        model_dir = Path(out) / "model"
        if not (model_dir / checkpoint.STATE_FILE).exists() and (Path(out) / checkpoint.STATE_FILE).exists():
            model_dir = Path(out)
        arrays, meta = checkpoint.load_checkpoint(model_dir)
        model = cls.__new__(cls)
        try:
            model._restore(arrays, meta)
        except UserError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            # The checksums held, so this is a checkpoint from another version or one edited by hand.
            raise UserError(f"checkpoint {model_dir} does not describe a model this sparsembed can load "
                            f"({type(exc).__name__}: {exc}); restore it or retrain") from exc
        if model.syn0.shape != (len(model.vocab), model.settings.vector_size) or model.syn1.shape != model.syn0.shape:
            raise UserError(f"checkpoint {model_dir} is inconsistent: matrices {model.syn0.shape} do not match "
                            f"{len(model.vocab)} words × dim {model.settings.vector_size}")
        if with_corpus and not model.done:
            model._reload_corpus(meta["corpus"])
        return model

    def _restore(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Set every attribute from a loaded checkpoint (no corpus yet); KeyError / TypeError if malformed."""
        self.settings = Settings(**dict(meta["settings"])).validate()
        vocab_state = dict(meta["vocab"])
        vocab_state.update({k[len("vocab."):]: v for k, v in arrays.items() if k.startswith("vocab.")})
        self.vocab = Vocab.from_state(vocab_state)
        self.syn0, self.syn1 = arrays["syn0"], arrays["syn1"]
        self.position = Position(**meta["position"])
        p = self.position
        if not (_is_int(p.epoch) and _is_int(p.job) and 0 <= p.epoch <= self.settings.epochs and p.job >= 0):
            raise ValueError(f"position {p} is out of range")
        self.history = list(meta.get("history", []))
        self.corpus_source = meta["corpus"]["source"]
        self.fingerprint = meta["corpus"]["fingerprint"]
        self.corpus = None

    def _reload_corpus(self, saved: dict[str, Any]) -> None:
        source = saved["source"]
        if source is None:
            raise UserError("this model was trained from an in-memory corpus; it cannot be resumed from disk")
        if not Path(source).exists():
            raise UserError(f"the corpus {source} of this checkpoint is gone; restore it to resume")
        if corpus_fingerprint(source) != self.fingerprint:
            raise UserError(f"the corpus {source} changed since the checkpoint was written; "
                            "restore the original files to resume, or start a new run")
        corpus = encode_corpus(source, self.vocab, self.settings.max_sentence_len)
        if int(corpus.sentence_starts[-1]) != saved.get("tokens") or len(corpus) != saved.get("sentences"):
            raise UserError(f"the corpus {source} no longer matches the checkpoint ({saved['tokens']} tokens "
                            "expected); restore the original files to resume")
        self.corpus = corpus

    def write_outputs(self, out: str | os.PathLike) -> None:
        """``out/vectors.bin`` (word2vec binary, rows by descending frequency) and ``out/vocab.txt``."""
        from sparsembed.word2vec.formats import write_word2vec

        out = Path(out)
        for name in ("vectors.bin", "vocab.txt"):
            # A process killed while writing these leaves atomic_write's temporary file; nobody else writes here.
            for stale in out.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)
        write_word2vec(out / "vectors.bin", self.vocab.words, self.syn0, binary=True)
        self.vocab.save_fvocab(out / "vocab.txt")


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

