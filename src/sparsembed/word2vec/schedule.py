"""The schedule of a word2vec run: its jobs, where training stands in them, and the learning rate along the way.

A run is ``epochs`` passes over the corpus, each cut into *jobs* of whole sentences (:func:`job_boundaries`): the
unit a thread trains at once and a checkpoint ends on. :class:`Position` says where training stands (the next
job of the current epoch, the loss summed so far in it); a checkpoint saves it, so a resumed run goes on with the
very job it had left. The learning rate decays linearly from ``alpha`` to ``min_alpha`` over the run's tokens, as
gensim's does: the kernel computes it per sentence from ``(tokens of the run, tokens before the job)``
(:meth:`Schedule.decay`), the progress reports from :meth:`Schedule.progress`.

Jobs that run side by side each count only their own tokens. When ``k`` of them share a step (the data-parallel
trainer), each decays ``k`` times as fast (:func:`concurrent_schedule`), so the step as a whole keeps the pace
of the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


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


def split_sentences(sentence_starts: np.ndarray, max_tokens: int) -> np.ndarray:
    """Sentence starts with every sentence longer than ``max_tokens`` cut into pieces of ``max_tokens`` (the last
    piece of each keeps the rest): finer units for jobs, at the price of context windows that stop at a cut.

    The data-parallel trainer cuts a text8-style corpus (sentences of 10000 tokens) this way when its ranks must
    sync after fewer tokens than a sentence holds."""
    lengths = np.diff(sentence_starts)
    pieces = np.maximum(1, -(-lengths // max_tokens))
    if int(pieces.max(initial=1)) == 1:
        return sentence_starts
    first = np.repeat(sentence_starts[:-1], pieces)
    within = np.arange(len(first)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    return np.append(first + within * max_tokens, sentence_starts[-1]).astype(np.int64)


def concurrent_schedule(total_tokens: int, tokens_before: int, concurrent: int) -> tuple[int, int]:
    """``(total_tokens, tokens_before)`` for the kernel so that ``concurrent`` jobs running side by side, each
    counting only its own tokens, decay the learning rate at the pace of the whole step."""
    return max(total_tokens // concurrent, 1), tokens_before // concurrent


@dataclass
class Position:
    """Where training stands: the next job to run, and the loss summed so far in the current epoch."""

    epoch: int = 0
    job: int = 0
    epoch_loss: float = 0.0
    epoch_pairs: int = 0

    @property
    def mean_loss(self) -> float:
        """Mean loss per trained pair so far in this epoch (NaN before the first pair)."""
        return self.epoch_loss / self.epoch_pairs if self.epoch_pairs else math.nan


class Schedule:
    """The jobs of a corpus and the learning rate along a run of ``epochs`` passes over it.

    Args:
        sentence_starts: the encoded corpus' sentence starts (token offsets, ``n_sentences + 1`` of them).
        job_tokens: about how many tokens a job holds.
        epochs, alpha, min_alpha: the run's passes and its first and last learning rate.
    """

    def __init__(self, sentence_starts: np.ndarray, job_tokens: int, epochs: int, alpha: float,
                 min_alpha: float) -> None:
        self.sentence_starts = sentence_starts
        self.bounds = job_boundaries(sentence_starts, job_tokens)
        self.tokens_per_epoch = int(sentence_starts[-1])
        self.epochs = epochs
        self.start_alpha = alpha
        self.min_alpha = min_alpha

    @property
    def n_jobs(self) -> int:
        """Jobs in an epoch."""
        return len(self.bounds) - 1

    def job_start(self, job: int) -> int:
        """Tokens of the epoch before job ``job`` (``job == n_jobs``: all of them)."""
        return int(self.sentence_starts[self.bounds[job]])

    def tokens(self, first_job: int, last_job: int) -> tuple[int, int]:
        """The token range ``[start, stop)`` of jobs ``first_job`` up to (excluding) ``last_job``."""
        return self.job_start(first_job), self.job_start(last_job)

    def tokens_done(self, position: Position) -> int:
        """Tokens of the current epoch before ``position``."""
        return self.job_start(min(position.job, self.n_jobs))

    def fraction(self, epoch: int, tokens_in_epoch: int) -> float:
        """Share of the run's tokens trained at ``tokens_in_epoch`` into epoch ``epoch`` (0-based), at most 1."""
        per_epoch = max(self.tokens_per_epoch, 1)
        return min((epoch * per_epoch + tokens_in_epoch) / (per_epoch * self.epochs), 1.0)

    def progress(self, position: Position) -> float:
        """Share of the run trained at ``position``."""
        return self.fraction(position.epoch, self.tokens_done(position))

    def alpha(self, fraction: float) -> float:
        """The learning rate once ``fraction`` of the run is trained."""
        return max(self.start_alpha - (self.start_alpha - self.min_alpha) * fraction, self.min_alpha)

    def decay(self, epoch: int, job: int, concurrent: int = 1) -> tuple[int, int]:
        """The kernel's ``(total tokens, tokens before)`` for job ``job`` of epoch ``epoch``, run alone or as the
        first of ``concurrent`` jobs side by side (:func:`concurrent_schedule`)."""
        before = epoch * self.tokens_per_epoch + self.job_start(job)
        return concurrent_schedule(self.tokens_per_epoch * self.epochs, before, concurrent)
