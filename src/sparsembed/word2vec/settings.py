"""The hyper-parameters of a word2vec run: gensim's defaults, checked with messages that name the command's flags."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparsembed.errors import UserError

__all__ = ["KERNELS", "Settings", "default_workers", "is_int"]

#: The job kernels ``kernel`` names: gensim-exact updates (:mod:`sparsembed.word2vec.kernels`), minibatched ones with
#: negatives shared per window (:mod:`sparsembed.word2vec.batched`), or ``auto``: batched for skip-gram (1.9x the
#: exact kernel's speed at +2 analogy points on wiki17m), exact for CBOW (the exact CBOW kernel is now the faster
#: of the two on wiki17m, and batched CBOW scores about 1 analogy point lower; BENCHMARKS.md).
#: With subwords: ``exact`` is fastText's arithmetic (:mod:`sparsembed.subword.kernels`), ``batched`` composes each
#: position once (:mod:`sparsembed.subword.batched`), ``auto`` is batched.
#: On a CUDA device the GPU's kernels train (:mod:`sparsembed.gpu`): CBOW exact, skip-gram batched.
KERNELS = ("auto", "exact", "batched")

#: The longest character n-gram ``--subwords`` accepts (:data:`sparsembed.subword.ngrams.MAX_N`).
MAX_SUBWORD_N = 20


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
    #: Which job kernel trains (one of :data:`KERNELS`, see there for subwords and devices).
    kernel: str = "auto"
    max_sentence_len: int = 10_000
    job_tokens: int = 50_000
    #: Sentences longer than this are trained as pieces of it (0: as read); set by the data-parallel trainer when
    #: its ranks sync more often than a sentence is long (:func:`sparsembed.word2vec.schedule.split_sentences`).
    piece_tokens: int = 0
    #: fastText's subwords: character n-grams of minn..maxn characters hashed into ``buckets`` (0, 0: off).
    minn: int = 0
    maxn: int = 0
    buckets: int = 2_000_000
    #: Where jobs train: ``cpu`` (the compiled kernels, ``workers`` threads) or ``cuda`` / ``cuda:N``
    #: (:mod:`sparsembed.gpu`: CBOW with the exact kernel's updates, skip-gram with the batched kernel's).
    device: str = "cpu"

    @property
    def resolved_kernel(self) -> str:
        """The kernel that trains: ``kernel``, with ``auto`` resolved (see :data:`KERNELS`) and a device's own."""
        if self.device != "cpu":
            return "batched" if self.sg else "exact"
        if self.kernel != "auto":
            return self.kernel
        if self.minn:  # subwords: the batched kernels compose each position once
            return "batched"
        return "batched" if self.sg else "exact"

    def validate(self) -> Settings:
        """Raise UserError naming the first invalid setting; return self."""
        checks = [
            (self.sg in (0, 1), "sg (model) must be 0 (cbow) or 1 (skipgram)"),
            (is_int(self.vector_size) and 1 <= self.vector_size <= 100_000, "--dim must be an integer in 1..100000"),
            (is_int(self.window) and 1 <= self.window <= 1000, "--window must be an integer in 1..1000"),
            (is_int(self.negative) and 1 <= self.negative <= 1000,
             "--negative must be an integer in 1..1000 (only negative sampling is supported)"),
            (is_int(self.min_count) and self.min_count >= 1, "--min-count must be an integer >= 1"),
            (self.max_vocab is None or (is_int(self.max_vocab) and self.max_vocab >= 1),
             "--max-vocab must be an integer >= 1"),
            (_finite(self.sample) and 0 <= self.sample < 1, "--sample must be in [0, 1) (0 disables subsampling)"),
            (is_int(self.epochs) and 1 <= self.epochs <= 100_000, "--epochs must be an integer >= 1"),
            (_finite(self.alpha) and 0 < self.alpha <= 10, "--alpha must be a number in (0, 10]"),
            (_finite(self.min_alpha) and 0 <= self.min_alpha <= self.alpha, "--min-alpha must be in [0, alpha]"),
            (is_int(self.workers) and 1 <= self.workers <= 1024, "--workers must be an integer in 1..1024"),
            (is_int(self.seed) and 0 <= self.seed < 2**63, "--seed must be an integer in 0..2^63-1"),
            (self.kernel in KERNELS, f"--kernel must be one of {', '.join(KERNELS)} (got {self.kernel!r})"),
            (is_int(self.max_sentence_len) and self.max_sentence_len >= 1, "max_sentence_len must be >= 1"),
            (is_int(self.job_tokens) and self.job_tokens >= 1, "job_tokens must be >= 1"),
            (is_int(self.piece_tokens) and self.piece_tokens >= 0, "piece_tokens must be >= 0"),
            (is_int(self.minn) and is_int(self.maxn)
             and ((self.minn, self.maxn) == (0, 0) or 1 <= self.minn <= self.maxn <= MAX_SUBWORD_N),
             f"--subwords must be MINN-MAXN with 1 <= MINN <= MAXN <= {MAX_SUBWORD_N} (e.g. 3-6), or 0 for none"),
            (is_int(self.buckets) and 1 <= self.buckets <= 2**31 - 1,
             "--buckets must be an integer in 1..2147483647 (fastText's default: 2000000)"),
            (isinstance(self.device, str) and re.fullmatch(r"cpu|cuda(:\d+)?", self.device) is not None,
             f"--device must be cpu, cuda or cuda:N (got {self.device!r})"),
        ]
        if self.device != "cpu":
            gpu_kernel = "batched" if self.sg else "exact"
            checks += [
                (self.kernel in ("auto", gpu_kernel),
                 f"--kernel {self.kernel}: on --device {self.device} {'skip-gram' if self.sg else 'CBOW'} trains "
                 f"with the {gpu_kernel} kernel's updates only; use --kernel auto or {gpu_kernel}"),
                (self.minn == 0, f"--subwords is not available on --device {self.device} yet; train subwords on the "
                 "CPU (drop --device)"),
            ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"invalid setting: {message}")
        return self


def is_int(value: Any) -> bool:
    """An integer (numpy's too), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value)
