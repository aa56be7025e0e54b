"""The scaling model of data-parallel word2vec: what N hosts would train per second over links of a given speed.

It owns three things, each from the package's own parts rather than from assumptions:

* **rows**: which rows each rank of a step touches, simulated on the real corpus (:class:`Workload`, scanned by
  :meth:`~sparsembed.word2vec.model.Word2Vec.build_vocab`, cut into the trainer's steps). :func:`mark_job` follows
  the compiled kernel's random stream draw for draw (subsampling, reduced windows, the noise rows drawn from the
  vocabulary's alias table, one example ahead) without its arithmetic, so it marks exactly the rows
  :func:`~sparsembed.word2vec.kernels.train_job` marks for the exchange: every kept word in both matrices, and every
  drawn noise row in ``syn1``.
* **bytes**: what each rank sends and receives per step and matrix for each strategy (:func:`exchange_traffic`):
  the codec's message sizes (:func:`message_bytes`: header, the row-set encoding "auto" picks, the values), the
  replicated exchange's sparse-or-dense decision (:func:`sparsembed.comm.policy.goes_dense`, from the same sizes
  the trainer gathers), the ring all-reduce's :func:`~sparsembed.comm.policy.ring_bytes`, and the sharded
  exchange's frames to the owners of a load-balanced :class:`~sparsembed.dataparallel.owners.Owners` map and the
  float32 fresh rows back, for fp32, fp16 and int8 values (``dim`` bytes and a 4-byte scale a row). Beyond two
  ranks a config with ``hot`` syncs the hot rows as the trainer does (``ExchangeOptions.hot_rows_for``): rows
  below ``hot`` leave the step's main exchange (:func:`without_hot`) and travel in ``rounds`` float32 all-reduces
  a matrix (:func:`hot_sync`). A config with a byte budget cuts each rank's main exchange as the trainer's
  ``--budget`` (:mod:`sparsembed.dataparallel.budget`) does: at most a limit of rows over both matrices
  (:func:`budget_rows`: ``auto``'s cap of ``ROWS_PER_TOKEN`` rows per token the rank trains in a step, shrunk to
  the rows whose bytes hide behind the step's compute, :func:`auto_budget`, when the whole change does not, and
  by ``SHRINK`` steps while the rows chosen still do not, as when they go dense; bytes: the trainer's megabytes as
  rows), the rest pending (:func:`cut_to_rows`). Over consecutive steps (every step of an epoch, as the validation
  simulates) the rows deferred wait for the next steps as in the trainer, which choose among them with its own
  :class:`~sparsembed.dataparallel.budget.Budget` (their age bound and the surges it makes, :func:`carried`).
* **time** (:mod:`sparsembed.bench.steptime`, re-exported here): a step's compute (tokens / a measured rate),
  exchange (bytes at the link's payload rate, a latency per round of messages, and an optional host cost per byte
  for packing, summing and the TCP stack), added (synchronous) or overlapped, and the hot syncs in the foreground;
  words/s of the group (:func:`predict`).

Tokens per rank and step follow the trainer's default for each ``N`` (``options.step_tokens_for``) unless the
workload fixes them (``Workload(job_tokens=...)``, as the validation against measured runs does). A rank's step is
simulated as one job of those tokens per thread (sentences longer than a job cut into pieces: ``Workload.starts``);
with hot syncs the trainer cuts it into ``rounds`` jobs of about ``hot_tokens`` (pieces of them), spread over a
wider stretch of the corpus, taken here to touch as many rows (not checked).

One module over 500 lines: rows and bytes share the settings types (:class:`Config`, :class:`StepRows`) and are
validated together against measurements, as one model.

Nothing here is a figure of a particular machine: rates, host costs and link speeds come in as arguments;
``benchmarks/bench_scaling.py`` measures them, and BENCHMARKS.md records what it found.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

from sparsembed.bench.steptime import (
    HostCost,
    HotSync,
    Link,
    StepTime,
    _finite,
    auto_budget,
    hot_seconds,
    run_seconds,
    step_time,
)
from sparsembed.comm.policy import Mode, goes_dense, ring_bytes
from sparsembed.comm.transport import EAGER_BYTES
from sparsembed.dataparallel import budget as trainer_budget
from sparsembed.dataparallel.options import STEP_TOKENS, ExchangeOptions, step_tokens_for
from sparsembed.errors import UserError
from sparsembed.rows import codec, rowsets
from sparsembed.rows.values import Values
from sparsembed.word2vec import kernels
from sparsembed.word2vec.schedule import Schedule, job_boundaries, split_sentences

__all__ = ["Workload", "Link", "HostCost", "Config", "CONFIGS", "ACROSS_HOSTS", "ACROSS_HOSTS_UNBUDGETED", "Traffic",
           "flush_seconds", "run_extra_seconds",
           "StepTime", "StepRows", "HotSync", "mark_job", "message_bytes", "row_bytes", "exchange_traffic",
           "budget_rows", "hide_rows", "cut_to_rows", "apply_budget", "step_time",
           "run_seconds", "hot_seconds", "hot_sync", "without_hot", "sample_steps", "SampledWorld", "simulate_world",
           "simulate_worlds", "time_world", "carried", "auto_budget", "predict", "predicted_rows", "measure_rate"]

#: Bytes of the header that sizes each eager message (comm.transport's frame) and of a sharded frame.
_SIZE_BYTES = 8
_FRAME_BYTES = 24
#: The hypothetical value type (a byte a value and a float32 scale per row) beside the trainer's fp32 and fp16.
_STRATEGIES = ("dense", "replicated", "sharded")
#: The value types the trainer sends (``sparsembed train --values``).
_VALUES = ("fp32", "fp16", "int8")


# ----------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Config:
    """One way of exchanging a step: a strategy, a value type, an optional byte budget, and whether the hot rows
    are synced after every round (``hot``: the trainer's ``--hot-rows auto`` across hosts: beyond two ranks, and a
    few at two overlapped ranks; off: ``--hot-rows 0``, the exchange before the hot syncs). ``implemented``:
    whether ``sparsembed train`` can run it today.

    ``budget``: ``None`` (``--budget off``), ``"auto"`` (``--budget auto``) or a number of bytes: what a rank's own
    change may take a step, the trainer's ``--budget`` megabytes x 1e6 (turned into rows as the trainer does,
    :func:`budget_rows`)."""

    name: str
    strategy: str  # "dense" (ring all-reduce of every row), "replicated" (the trainer's default), "sharded"
    values: str = "fp32"  # "fp32", "fp16" or "int8": the trainer's --values
    budget: str | float | None = None
    implemented: bool = True
    hot: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in _STRATEGIES:
            raise UserError(f"invalid setting: strategy must be one of {', '.join(_STRATEGIES)}, got {self.strategy!r}")
        if self.values not in _VALUES:
            raise UserError(f"invalid setting: values must be fp32, fp16 or int8, got {self.values!r}")
        if self.budget is not None and self.budget != "auto" and not (_finite(self.budget) and self.budget > 0):
            raise UserError(f"invalid setting: budget must be 'auto' or a positive byte count, got {self.budget!r}")
        if self.budget is not None and self.strategy != "replicated":
            raise UserError("invalid setting: a byte budget applies to the replicated strategy only")
        if self.hot and self.strategy != "replicated":
            raise UserError("invalid setting: hot-row syncs apply to the replicated strategy only")

    @property
    def overlaps(self) -> bool:
        """Whether the exchange can run behind the next step's compute (``--overlap`` is replicated-only)."""
        return self.strategy != "sharded"


    def hot_rows(self, world: int, num_rows: int) -> int:
        """Rows of each matrix synced after every round at ``world`` ranks (the trainer's rule), 0 without."""
        return _HOT_AUTO.hot_rows_for(world, num_rows) if self.hot else 0


#: The trainer's hot-row rules across hosts (``--hot-rows auto --hot-tokens auto``, replicated, static balance,
#: ``--overlap`` as across hosts by default: two ranks sync a few hot rows, each round's sum behind the next round).
_HOT_AUTO = ExchangeOptions().validate().across_hosts(True)

#: The config whose overlapped column is what ``sparsembed train`` does across hosts by default
#: (``ExchangeOptions.across_hosts``: replicated, int8 values, ``--overlap``, hot-row syncs (beyond two ranks, and
#: a few at two), ``--budget auto``).
ACROSS_HOSTS = "replicated-int8-hot-budget"
#: The default across hosts before the byte budget (int8, overlap, hot syncs, every touched row): earlier tables.
ACROSS_HOSTS_UNBUDGETED = "replicated-int8-hot"

#: The strategies the model compares, all of them implemented by the trainer (``implemented=False``, and a ``*``
#: in the name, would mark one that is not). The configs without ``-hot`` leave the hot rows in the main exchange
#: (``--hot-rows 0``: the earlier tables).
CONFIGS = (
    Config("dense", "dense"),
    Config("replicated", "replicated"),
    Config("replicated-fp16", "replicated", "fp16"),
    Config("sharded", "sharded"),
    Config("sharded-fp16", "sharded", "fp16"),
    Config("replicated-int8", "replicated", "int8"),
    Config("replicated-int8-budget", "replicated", "int8", budget="auto"),
    Config("replicated-hot", "replicated", hot=True),
    Config(ACROSS_HOSTS_UNBUDGETED, "replicated", "int8", hot=True),
    Config(ACROSS_HOSTS, "replicated", "int8", budget="auto", hot=True),
)


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserError(f"invalid setting: {what} must be an integer >= 1, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------------------------- rows
@numba.njit(nogil=True, cache=True)
def _mark_negatives(packed, n_rows, negative, state, touched1):  # pragma: no cover - compiled
    for _ in range(negative):
        state, bits = kernels.next_bits(state)
        touched1[kernels.draw_negative(packed, n_rows, bits)] = 1
    return state


@numba.njit(nogil=True, cache=True)
def mark_job(ids, starts, first_sentence, last_sentence, sample_ints, use_sample, packed_alias, sg, window,
             negative, seed, epoch, job, touched0, touched1):  # pragma: no cover - compiled
    """Mark the rows :func:`~sparsembed.word2vec.kernels.train_job` marks for this job (same arguments, no
    matrices): the kernel's random stream replayed without its arithmetic. Returns the examples (pairs)."""
    n_rows = touched1.shape[0]
    max_len = 1
    for s in range(first_sentence, last_sentence):
        max_len = max(max_len, starts[s + 1] - starts[s])
    kept = np.empty(max_len, dtype=np.int32)
    state = kernels.job_seed(seed, epoch, job)
    state = _mark_negatives(packed_alias, n_rows, negative, state, touched1)  # the kernel draws one example ahead
    examples = 0
    for s in range(first_sentence, last_sentence):
        n = 0
        for t in range(starts[s], starts[s + 1]):
            w = ids[t]
            if use_sample:
                state, bits = kernels.next_bits(state)
                if sample_ints[w] < (bits >> np.uint64(32)):
                    continue
            kept[n] = w
            n += 1
            touched0[w] = 1
            touched1[w] = 1
        for i in range(n):
            state, bits = kernels.next_bits(state)
            reduced = int((bits >> np.uint64(32)) % np.uint64(window))
            lo = max(0, i - window + reduced)
            hi = min(n, i + window + 1 - reduced)
            draws = (hi - lo - 1) if sg else min(hi - lo - 1, 1)  # skip-gram: one example per pair; CBOW: one
            for _ in range(draws):
                state = _mark_negatives(packed_alias, n_rows, negative, state, touched1)
                examples += 1
    return examples


def _model_like(model: Any, settings: Any, copy: bool = False) -> Any:
    """A Word2Vec with ``model``'s vocabulary and corpus under ``settings`` (matrices shared, or copied)."""
    from sparsembed.word2vec.model import Word2Vec

    other = Word2Vec(workers=1)
    other.settings = settings
    other.vocab, other.corpus = model.vocab, model.corpus
    other.syn0, other.syn1 = (model.syn0.copy(), model.syn1.copy()) if copy else (model.syn0, model.syn1)
    return other


class Workload:
    """A corpus scanned as ``sparsembed train`` scans it, with the settings of the run to model.

    Args:
        model: a :class:`~sparsembed.word2vec.model.Word2Vec` with its vocabulary and corpus (its ``settings``
            give sg, window, negative, sample, seed, dim).
        job_tokens: tokens of a job, each thread's share of a rank's step (the trainer's ``--job-tokens``);
            ``None``: the trainer's default for each ``N`` (:meth:`job_tokens_for`). threads: training threads per
            rank.
    """

    def __init__(self, model: Any, job_tokens: int | None = None, threads: int = 1) -> None:
        model.require_corpus()
        self.model = model
        self.fixed_job_tokens = None if job_tokens is None else _positive_int(job_tokens, "job tokens")
        #: Tokens of a job where no ``N`` decides them (timing the kernel): the fixed ones, else the trainer's
        #: default up to four ranks.
        self.job_tokens = self.fixed_job_tokens or STEP_TOKENS
        self.threads = _positive_int(threads, "threads")
        self.tokens = int(model.corpus.sentence_starts[-1])
        if self.tokens == 0:
            raise UserError("the corpus has no token from the vocabulary; nothing to model")
        self.tables = model.kernel_tables()
        self._bounds: dict[int, np.ndarray] = {}
        self._starts: dict[int, np.ndarray] = {}
        self._marks = (np.zeros(self.num_rows, np.uint8), np.zeros(self.num_rows, np.uint8))

    @classmethod
    def scan(cls, corpus: Any, *, job_tokens: int | None = None, threads: int = 1, **settings: Any) -> Workload:
        """Scan ``corpus`` (a path, or token lists) with ``Word2Vec`` settings (gensim's defaults otherwise)."""
        from sparsembed.word2vec.model import Word2Vec

        # mark_job replays the exact kernel's draws (one noise set per pair), so the model trains with that kernel.
        model = Word2Vec(workers=1, **{"kernel": "exact", **settings})
        model.build_vocab(corpus)
        return cls(model, job_tokens, threads)

    def with_settings(self, job_tokens: int | None = None, threads: int | None = None, **settings: Any) -> Workload:
        """The same scan with other settings (e.g. ``sg=1``): no second pass over the corpus."""
        model = _model_like(self.model, dataclasses.replace(self.model.settings, **settings).validate())
        return Workload(model, job_tokens or self.fixed_job_tokens, threads or self.threads)

    def job_tokens_for(self, world: int) -> int:
        """Tokens of a job at ``world`` ranks: the fixed ones, else the trainer's default
        (:func:`~sparsembed.dataparallel.options.step_tokens_for`: 250000 up to four ranks, 1000000 / N beyond)."""
        return self.fixed_job_tokens or step_tokens_for(world)

    @property
    def num_rows(self) -> int:
        """Rows of each matrix (the vocabulary)."""
        return len(self.model.vocab)

    @property
    def dim(self) -> int:
        """Values per row."""
        return int(self.model.settings.vector_size)

    @property
    def raw_per_token(self) -> float:
        """Raw words (out-of-vocabulary ones too, as the trainer's words/s counts them) per in-vocabulary token."""
        return self.model.corpus.raw_words / self.tokens

    def starts(self, job_tokens: int | None = None) -> np.ndarray:
        """Starts of the units jobs of ``job_tokens`` are cut from: the sentences, or where one is longer than a
        job, the sentences cut into pieces of a job (:func:`~sparsembed.word2vec.schedule.split_sentences`), so
        that a job holds about its tokens, as the trainer's pieces do with hot syncs (pieces of ``hot_tokens``)."""
        size = job_tokens or self.job_tokens
        if size not in self._starts:
            starts = self.model.corpus.sentence_starts
            self._starts[size] = split_sentences(starts, size) if int(np.diff(starts).max(initial=0)) > size \
                else starts
        return self._starts[size]

    def bounds(self, job_tokens: int | None = None) -> np.ndarray:
        """Bounds of the jobs of ``job_tokens`` (default: the workload's) in :meth:`starts`' units, as the
        schedule cuts them."""
        size = job_tokens or self.job_tokens
        if size not in self._bounds:
            self._bounds[size] = job_boundaries(self.starts(size), size)
        return self._bounds[size]

    def touched(self, jobs: Sequence[tuple[int, int]], job_tokens: int | None = None) -> tuple[np.ndarray, ...]:
        """Sorted distinct rows of ``syn0`` and ``syn1`` that the ``(epoch, job)`` jobs mark, and their tokens."""
        s, corpus, bounds = self.model.settings, self.model.corpus, self.bounds(job_tokens)
        starts = self.starts(job_tokens)
        mark0, mark1 = self._marks
        tokens = 0
        for epoch, job in jobs:
            first, last = int(bounds[job]), int(bounds[job + 1])
            tokens += int(starts[last] - starts[first])
            mark_job(corpus.ids, starts, first, last, self.tables["sample_ints"], s.sample > 0,
                     self.tables["packed_alias"], s.sg, s.window, s.negative, s.seed, epoch, job, mark0, mark1)
        rows0, rows1 = np.flatnonzero(mark0), np.flatnonzero(mark1)
        mark0[rows0] = 0  # clear only what was set: a step touches a fraction of the rows
        mark1[rows1] = 0
        return rows0, rows1, np.int64(tokens)


@dataclass
class StepRows:
    """What the sampled ranks of one simulated step touch: ``rows[m][i]`` are rank ``ranks[i]``'s distinct rows of
    matrix ``m`` (0: syn0, 1: syn1); ``tokens[i]`` its tokens."""

    world: int
    step: int
    ranks: np.ndarray
    rows: tuple[list[np.ndarray], list[np.ndarray]]
    tokens: np.ndarray


def sample_steps(work: Workload, world: int, steps: int | None = 4, max_ranks: int = 16,
                 job_tokens: int | None = None) -> Iterator[StepRows]:
    """Simulated steps of ``world`` ranks: each covers ``world x threads`` consecutive jobs of the global job order
    (epoch after epoch, as the trainer runs them), rank ``r`` the ``r``-th group of ``threads``.

    ``steps`` of them, spread over the first epoch (continuing into the next ones when an epoch holds fewer
    steps; ``None``: every step of the first epoch), and of each at most ``max_ranks`` ranks, evenly spaced
    (a rank's rows depend only on its own jobs: the others are taken to touch what the sampled ones do).
    ``job_tokens``: default :meth:`Workload.job_tokens_for` this ``world``.
    """
    world = _positive_int(world, "hosts (N)")
    max_ranks = _positive_int(max_ranks, "sampled ranks")
    job_tokens = job_tokens or work.job_tokens_for(world)
    per_step = world * work.threads
    n_jobs = len(work.bounds(job_tokens)) - 1
    in_epoch = -(-n_jobs // per_step)
    if steps is None:
        chosen = np.arange(in_epoch)
    else:
        steps = _positive_int(steps, "sampled steps")
        chosen = (np.arange(steps) * in_epoch) // steps if in_epoch >= steps else np.arange(steps)
    ranks = np.unique((np.arange(min(world, max_ranks)) * world) // min(world, max_ranks))
    for k in chosen.tolist():
        rows0, rows1, tokens = [], [], []
        for r in ranks.tolist():
            first = k * per_step + r * work.threads
            jobs = [((g // n_jobs), g % n_jobs) for g in range(first, first + work.threads)
                    if steps is not None or g < n_jobs]  # every step of an epoch: its last step may be short
            got = work.touched(jobs, job_tokens)
            rows0.append(got[0])
            rows1.append(got[1])
            tokens.append(got[2])
        yield StepRows(world, k, ranks, (rows0, rows1), np.asarray(tokens, np.int64))


# ----------------------------------------------------------------------------------------------- bytes
def row_bytes(dim: int, values: str) -> int:
    """Bytes of one row's values on the wire (:meth:`sparsembed.rows.values.Values.row_bytes`: int8 adds its
    float32 scale)."""
    return Values(values).row_bytes(dim)


def message_bytes(ids: np.ndarray, num_rows: int, dim: int, values: str, sparse_shortcut: bool = True) -> int:
    """Bytes of the codec message of these sorted distinct rows (:func:`sparsembed.rows.codec.encode`'s length):
    header, the smallest row-set encoding ("auto"), values. ``sparse_shortcut``: below 1/8 density ``index``
    without sizing the others, as :func:`sparsembed.comm.replicated.replicated` does (the sharded exchange
    always sizes them)."""
    n = int(ids.shape[0])
    if sparse_shortcut and 8 * n < num_rows:
        enc = rowsets.get("index")
    else:
        enc = rowsets.choose(ids, num_rows)
    return codec.HEADER_SIZE + enc.size(ids, num_rows) + n * row_bytes(dim, values)


@dataclass
class Traffic:
    """One matrix's exchange in one step, per sampled rank: its distinct rows, its own message, the bytes it sends
    and receives (payload and sizes, as :class:`~sparsembed.comm.stats.ExchangeStats` counts them), the bytes its
    host works on, and the rounds of messages the exchange waits for.

    Host bytes count values as float32 whatever the wire's type: packing, summing and merging work per value (and
    a narrower type adds its conversions), so halving the bytes on the wire does not halve the host's work."""

    matrix: str
    mode: str  # "none" (one rank), "sparse", "dense" or "sharded"
    rows: np.ndarray  # per sampled rank: its distinct rows (under a budget's cut, the rows it sends)
    message: np.ndarray
    sent: np.ndarray
    recv: np.ndarray
    host_bytes: np.ndarray
    host_kind: str  # "sparse" or "dense": which HostCost rate applies
    rounds: int
    rows_sent_share: float = 1.0  # under a budget's cut: the rows sent over the rows touched (sampled ranks)
    message_fp32: np.ndarray | None = None  # sparse: each rank's message with float32 values (the host's share)
    unbudgeted: Traffic | None = None  # under a budget: what the trainer's own rule would send (maybe dense)


def exchange_traffic(config: Config, step: StepRows, matrix: int, num_rows: int, dim: int,
                     owners: Any = None) -> Traffic:
    """Bytes of matrix ``matrix`` (0: syn0, 1: syn1) in this step under ``config`` (``owners``: the sharded
    strategy's :class:`~sparsembed.dataparallel.owners.Owners` for this world)."""
    name = ("syn0", "syn1")[matrix]
    ids = step.rows[matrix]
    counts = np.array([a.shape[0] for a in ids], np.int64)
    if step.world == 1:
        zero = np.zeros_like(counts)
        return Traffic(name, "none", counts, zero, zero, zero, zero, "sparse", 0)
    if config.strategy == "dense":
        return _dense(name, counts, step.world, num_rows, dim, config.values, size_round=False)
    if config.strategy == "sharded":
        if owners is None:
            raise UserError("the sharded strategy needs its owners map (Owners for this world)")
        return _sharded(name, ids, step, owners, num_rows, dim, config.values)
    dense = None
    if _goes_dense(counts, step.world, num_rows, dim, config.values):
        dense = _dense(name, counts, step.world, num_rows, dim, config.values, size_round=True)
        if config.budget is None:
            return dense
    message = np.array([message_bytes(a, num_rows, dim, config.values) for a in ids], np.int64)
    sparse = _sparse(name, counts, message, message + counts * (4 * dim - row_bytes(dim, config.values)), step.world)
    if config.budget is not None:  # a budget cuts the sparse messages, when the trainer's own way does not fit
        sparse.unbudgeted = dense or sparse
    return sparse


def _goes_dense(counts: np.ndarray, world: int, num_rows: int, dim: int, values: str) -> bool:
    """The trainer's decision: every rank's rows x the row width (sampled ranks repeated to ``world``), against
    the float32 ring's bytes (:func:`~sparsembed.comm.policy.goes_dense`)."""
    sizes = np.resize(counts * row_bytes(dim, values), world)
    return goes_dense(Mode.AUTO, sizes, num_rows * dim * 4, world)


def _dense(name: str, counts: np.ndarray, world: int, num_rows: int, dim: int, values: str,
           size_round: bool) -> Traffic:
    """A ring all-reduce of the whole change, in float16 for fp16 (and for int8: gloo sums no int8 rows)."""
    width = 4 if values == "fp32" else 2
    ring = ring_bytes(num_rows * dim * 4, world) * width // 4
    each = np.full(counts.shape, ring, np.int64)
    rounds = 2 * (world - 1) + (world - 1 if size_round else 0)  # ring steps, and the all-gather of the sizes
    return Traffic(name, "dense", counts, each, each, each, each + num_rows * dim * 4, "dense", rounds)


def _sparse(name: str, counts: np.ndarray, message: np.ndarray, message_fp32: np.ndarray, world: int) -> Traffic:
    """Every rank's message to every peer (eager sends): sent ``(N-1)(m + 8)``, received every other message
    (``message_fp32``: the same messages with float32 values, for the host's work)."""

    def sent_recv(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (world - 1) * (m + _SIZE_BYTES), int(np.resize(m, world).sum()) - m + _SIZE_BYTES * (world - 1)

    sent, recv = sent_recv(message)
    capacity = max(64 << 10, EAGER_BYTES // (world - 1))
    rounds = (world - 1) + 1 + int(np.max(message) > capacity)  # sizes all-gather, eager round, the rest if large
    return Traffic(name, "sparse", counts, message, sent, recv, sum(sent_recv(message_fp32)), "sparse", rounds,
                   message_fp32=message_fp32)


def _sharded(name: str, ids: list[np.ndarray], step: StepRows, owners: Any, num_rows: int, dim: int,
             values: str) -> Traffic:
    """Each rank's frame to each owner (its rows there, relabelled) and each owner's float32 fresh rows back, as
    :func:`sparsembed.comm.sharded.sharded` sends them. Frames to and rows from unsampled ranks are estimated by
    the sampled ranks' mean."""
    world, bounds = step.world, np.asarray(owners.boundaries, np.int64)
    frames = np.zeros((len(ids), world), np.int64)
    rows = np.zeros((len(ids), world), np.int64)
    for i, a in enumerate(ids):
        new = np.sort(owners.map.relabel(a))
        cuts = np.searchsorted(new, bounds)
        for o in range(world):
            part = new[cuts[o]:cuts[o + 1]] - bounds[o]
            span = int(bounds[o + 1] - bounds[o])
            rows[i, o] = part.shape[0]
            frames[i, o] = _FRAME_BYTES + message_bytes(part, max(span, 1), dim, values, sparse_shortcut=False)
    me = step.ranks
    own = np.arange(len(ids))
    others = (np.ones((len(ids), len(ids)), bool) & (me[:, None] != me[None, :]))
    fresh_row = 4 * dim  # the owners send fresh float32 rows, whatever the gradients' value type
    into = rows[:, me]  # into[i, j]: rows sampled rank i sends to owner ranks[j]
    frames_into = frames[:, me]
    scale = (world - 1) / np.maximum(others.sum(axis=0), 1)
    rows_to_me = (into * others).sum(axis=0) * scale
    frames_to_me = (frames_into * others).sum(axis=0) * scale
    frames_out = frames.sum(axis=1) - frames[own, me]
    rows_out = rows.sum(axis=1) - rows[own, me]
    sent = (frames_out + fresh_row * rows_to_me + _SIZE_BYTES * world).astype(np.int64)
    recv = (frames_to_me + fresh_row * rows_out + _SIZE_BYTES * world).astype(np.int64)
    counts = np.array([a.shape[0] for a in ids], np.int64)
    widen = (rows_out + rows_to_me) * (4 * dim - row_bytes(dim, values))  # the gradients' values as float32
    return Traffic(name, "sharded", counts, frames_out, sent, recv, sent + recv + widen, "sparse", 3)  # 3 all-to-alls


def hot_sync(config: Config, world: int, num_rows: int, dim: int, job_tokens: int) -> HotSync | None:
    """A step's hot syncs under ``config`` at ``world`` ranks (``None``: none, as at one rank or without ``hot``):
    the trainer's ``hot_rows_for`` rows across hosts, in ``rounds = job_tokens // hot_tokens_for(world)`` rounds
    (at least one), both matrices after every round, the last one included; in float16 where the values are
    rounded (fp16, int8), as the trainer's error feedback does them; ``behind`` where the trainer runs a round's
    sum behind the next round when overlapped (two ranks)."""
    rows = config.hot_rows(world, num_rows)
    if not rows:
        return None
    rounds = max(1, int(job_tokens) // _HOT_AUTO.hot_tokens_for(world))
    return HotSync(rows, rounds, dim, world, width=4 if config.values == "fp32" else 2,
                   behind=_HOT_AUTO.hot_behind(world))


def without_hot(step: StepRows, hot: int) -> StepRows:
    """The step's rows without rows ``[0, hot)`` (their marks cleared by the hot syncs: the main exchange leaves
    them out)."""
    if hot <= 0:
        return step
    rows = tuple([a[np.searchsorted(a, hot):] for a in m] for m in step.rows)
    return StepRows(step.world, step.step, step.ranks, (rows[0], rows[1]), step.tokens)


def budget_rows(config: Config, dim: int, step_tokens: int) -> int:
    """The most rows (both matrices) a rank sends a step under ``config``'s budget, as the trainer's
    :class:`~sparsembed.dataparallel.budget.Budget` sets it: ``auto``: its cap,
    :data:`~sparsembed.dataparallel.budget.ROWS_PER_TOKEN` rows per token of ``step_tokens`` (the rank's tokens a
    step; at least ``MIN_ROWS``); bytes: as many rows of values and a 4-byte index as fit (the trainer's
    ``--budget`` in megabytes, x 1e6). Raises UserError for a config without a budget."""
    if config.budget is None:
        raise UserError(f"config {config.name!r} has no byte budget")
    return _trainer_budget(config, dim, step_tokens).limit()


def _trainer_budget(config: Config, dim: int, step_tokens: int, num_rows: int = 0) -> trainer_budget.Budget:
    """The trainer's :class:`~sparsembed.dataparallel.budget.Budget` for ``config`` (its megabytes from the
    config's bytes), its rows sized as the trainer sizes them; ``num_rows``: rows of each matrix, for the rows'
    ages (0: none kept)."""
    setting = "auto" if config.budget == "auto" else float(config.budget) / 1e6
    matrices = {"syn0": num_rows, "syn1": num_rows} if num_rows else {}
    return trainer_budget.Budget(setting, trainer_budget.wire_row_bytes(config.values, dim), matrices,
                                 int(step_tokens))


def _cuttable(traffic: list[Traffic], world: int) -> bool:
    """Whether a budget has anything to cut (False: one rank, nothing exchanged); raises UserError for traffic
    other than replicated sparse messages."""
    if world == 1 or not traffic or traffic[0].mode == "none":
        return False
    if any(t.mode != "sparse" for t in traffic):
        raise UserError("a byte budget applies to the replicated sparse exchange only")
    return True


def hide_rows(traffic: list[Traffic], world: int, budget: float) -> np.ndarray:
    """Rows each sampled rank may send (both matrices) for its messages to stay within ``budget`` bytes a step on
    its busier direction: ``budget / (N - 1)`` bytes of messages, their headers and the rest at the rank's own
    bytes per row (values and row set)."""
    rows = sum(t.rows for t in traffic)
    headers = codec.HEADER_SIZE * len(traffic)
    per_row = (sum(t.message for t in traffic) - headers) / np.maximum(rows, 1)
    return np.floor(max(budget / (world - 1) - headers, 0.0) / np.maximum(per_row, 1.0)).astype(np.int64)


def cut_to_rows(traffic: list[Traffic], world: int, limit: int | np.ndarray) -> list[Traffic]:
    """Replicated sparse traffic with each rank's rows over both matrices cut to ``limit`` (one for every rank, or
    one per sampled rank), as the trainer's budget cuts them; the other rows stay pending (error feedback).

    Each matrix keeps the same share of its rows (rounded so that a rank's rows sum to its limit); a message keeps
    its header, its values shrink with its rows and so does its row-set encoding (in proportion: the index
    encoding's bytes per row grow by about a bit each time the rows halve, neglected). The result's ``rows``
    are the rows sent, ``rows_sent_share`` their share of the rows touched."""
    if not _cuttable(traffic, world):
        return traffic
    touched = np.stack([t.rows for t in traffic])
    share = np.minimum(touched.sum(axis=0), np.maximum(np.asarray(limit, np.int64), 0)) \
        / np.maximum(touched.sum(axis=0), 1)
    upto = np.rint(np.cumsum(touched, axis=0) * share).astype(np.int64)  # rounded as a running total
    sent = np.diff(upto, axis=0, prepend=0)
    out = []
    for t, rows in zip(traffic, sent, strict=True):
        kept = rows / np.maximum(t.rows, 1)
        capped = _sparse(t.matrix, rows, _shrunk(t.message, kept), _shrunk(t.message_fp32, kept), world)
        capped.rows_sent_share = float(rows.sum() / max(int(t.rows.sum()), 1))
        out.append(capped)
    return out


def _shrunk(message: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Messages with ``kept`` of their rows: the header whole, the rest in proportion."""
    return codec.HEADER_SIZE + np.floor((message - codec.HEADER_SIZE) * kept).astype(np.int64)


def apply_budget(traffic: list[Traffic], world: int, budget: float) -> list[Traffic]:
    """Replicated sparse traffic within ``budget`` bytes a rank and step on its busier direction: each rank's rows
    cut to those whose messages fit in ``budget / (N - 1)`` (:func:`hide_rows`, :func:`cut_to_rows`), the most
    significant go, the rest stay pending. ``rows_sent_share`` says how much went."""
    if not _cuttable(traffic, world):
        return traffic
    if not (_finite(budget) and budget > 0):
        raise UserError(f"invalid setting: budget must be a positive number of bytes, got {budget!r}")
    return cut_to_rows(traffic, world, hide_rows(traffic, world, budget))


def flush_seconds(config: Config, world: int, num_rows: int, dim: int, link: Link, host: HostCost | None) -> float:
    """Seconds of a run's last exchange, which sends exactly (float32) every row that still holds a rounding
    residual or a change a budget deferred. By then nearly every row of both matrices does (on 2 hosts the trainer's
    last exchange was the whole 68.6 MB, dense: BENCHMARKS.md), so: one float32 ring all-reduce of each matrix.
    A config that neither rounds its values nor defers rows leaves nothing to flush."""
    if world < 2 or (config.values == "fp32" and config.budget is None):
        return 0.0
    counts = np.array([num_rows], np.int64)
    traffic = [_dense(m, counts, world, num_rows, dim, "fp32", size_round=False) for m in ("syn0", "syn1")]
    return step_time(traffic, 0.0, world, link, host).exchange_s


def run_extra_seconds(config: Config, world: int, num_rows: int, dim: int, epochs: int, link: Link,
                      host: HostCost | None) -> float:
    """What a whole run spends beyond its steps: every epoch end (:attr:`HostCost.epoch_s`) and the last
    exchange (:func:`flush_seconds`). The steady-state predictions leave it out; a measured run's words/s holds it."""
    return epochs * (host.epoch_s if host else 0.0) + flush_seconds(config, world, num_rows, dim, link, host)


# ----------------------------------------------------------------------------------------------- prediction
@dataclass
class SampledWorld:
    """The traffic of every sampled step of one world, per config: what the time model needs. ``hot``: each
    config's hot syncs a step (``None``: none); ``job_tokens``: the job size simulated; ``num_rows``, ``dim``: the
    matrices' shape (a budget's rows may go as a dense all-reduce; 0: unknown, they stay sparse)."""

    world: int
    tokens: list[float] = field(default_factory=list)  # mean tokens per rank, per step
    traffic: dict[str, list[list[Traffic]]] = field(default_factory=dict)
    hot: dict[str, HotSync | None] = field(default_factory=dict)
    job_tokens: int = 0
    num_rows: int = 0
    dim: int = 0
    #: Budgeted configs, when the steps are consecutive (every step of an epoch): each step's rows (without the
    #: hot ones), so that the rows a budget defers can wait for later steps as in the trainer (:func:`carried`).
    rows: dict[str, list[StepRows]] = field(default_factory=dict)
    #: What ranks the rows a budget chooses (the trainer weighs each change's squared norm): a row's word count.
    weights: np.ndarray | None = None


def simulate_world(work: Workload, world: int, configs: Sequence[Config] = CONFIGS, steps: int | None = 4,
                   max_ranks: int = 16, job_tokens: int | None = None) -> SampledWorld:
    """Simulate ``steps`` steps of ``world`` ranks and size every config's exchange of each (the main exchange
    without the hot rows where the config syncs them). ``job_tokens``: default :meth:`Workload.job_tokens_for`."""
    from sparsembed.dataparallel.owners import Owners

    job_tokens = job_tokens or work.job_tokens_for(world)
    owners = None
    if world > 1 and any(c.strategy == "sharded" for c in configs):
        owners = Owners(work.model.vocab.counts, world, job_tokens * work.threads)
    hot = {c.name: hot_sync(c, world, work.num_rows, work.dim, job_tokens) for c in configs}
    out = SampledWorld(world, traffic={c.name: [] for c in configs}, hot=hot, job_tokens=job_tokens,
                       num_rows=work.num_rows, dim=work.dim, weights=np.asarray(work.model.vocab.counts, np.float64))
    consecutive = steps is None and world > 1
    for step in sample_steps(work, world, steps, max_ranks, job_tokens):
        out.tokens.append(float(step.tokens.mean()))
        cut: dict[int, StepRows] = {}  # the step without its hot rows, once per count of them
        for c in configs:
            rows = hot[c.name].rows if hot[c.name] is not None else 0
            if rows not in cut:
                cut[rows] = without_hot(step, rows)
            out.traffic[c.name].append([exchange_traffic(c, cut[rows], m, work.num_rows, work.dim, owners)
                                        for m in (0, 1)])
            if consecutive and c.budget is not None:
                out.rows.setdefault(c.name, []).append(cut[rows])
    return out


def time_world(sampled: SampledWorld, config: Config, rate: float, threads: int, link: Link, host: HostCost | None,
               overlap: bool, shared_cores: bool = False) -> tuple[list[StepTime], list[list[Traffic]]]:
    """Step times of a simulated world under ``config`` (budget applied per step, hot syncs added), and the
    traffic as sent. A rank's step trains ``sampled.job_tokens x threads`` tokens (what a budget's cap counts)."""
    times, sent = [], []
    hot = sampled.hot.get(config.name)
    steps = sampled.traffic[config.name]
    cut_each = config.budget is not None  # step by step, unless the steps are consecutive: then carried over
    if cut_each and sampled.rows.get(config.name):
        steps, cut_each = carried(config, sampled, rate, threads, link, host), False
    for tokens, traffic in zip(sampled.tokens, steps, strict=True):
        compute_s = tokens / (rate * threads)
        if cut_each:
            traffic = _within_budget(config, traffic, compute_s, sampled, sampled.job_tokens * threads, link, host)
        times.append(step_time(traffic, compute_s, sampled.world, link, host, overlap=overlap,
                               shared_cores=shared_cores, hot=hot))
        sent.append(traffic)
    return times, sent


def carried(config: Config, sampled: SampledWorld, rate: float, threads: int, link: Link,
            host: HostCost | None) -> list[list[Traffic]]:
    """What a budgeted config sends in each of consecutive steps when, as in the trainer, the rows a step defers
    stay touched: each sampled rank has its own :class:`~sparsembed.dataparallel.budget.Budget`, which chooses
    among the step's rows and those still pending (rows :data:`~sparsembed.dataparallel.budget.MAX_AGE` steps
    old first, then the heaviest, weighed here by their word's count for the change's norm) within the limit
    :func:`_within_budget` sets; the rows chosen go as the trainer's own exchange would send them (sparse, or
    one dense all-reduce). A run's last exchange, which sends whatever still waits, is not modelled."""
    world, num_rows, dim = sampled.world, sampled.num_rows, sampled.dim
    plain = dataclasses.replace(config, budget=None)
    step_tokens = sampled.job_tokens * threads
    weights = sampled.weights if sampled.weights is not None else np.ones(num_rows)
    ranks = len(sampled.rows[config.name][0].ranks)
    budgets = [_trainer_budget(config, dim, step_tokens, num_rows) for _ in range(ranks)]
    pending = [[np.zeros(0, np.int64), np.zeros(0, np.int64)] for _ in range(ranks)]
    out = []
    for tokens, step in zip(sampled.tokens, sampled.rows[config.name], strict=True):
        touched = StepRows(world, step.step, step.ranks, tuple(  # type: ignore[arg-type]
            [np.union1d(step.rows[m][i], pending[i][m]) for i in range(ranks)] for m in (0, 1)), step.tokens)
        traffic = [exchange_traffic(config, touched, m, num_rows, dim) for m in (0, 1)]
        cut = _within_budget(config, traffic, tokens / (rate * threads), sampled, step_tokens, link, host)
        limit = np.broadcast_to(np.asarray(sum(t.rows for t in cut)), (ranks,))
        chosen: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
        for i, budget in enumerate(budgets):
            budget.rows = max(1, int(limit[i]))
            goes = budget.choose({"syn0": touched.rows[0][i], "syn1": touched.rows[1][i]},
                                 lambda _name, ids: weights[ids])
            for m, name in enumerate(("syn0", "syn1")):
                chosen[m].append(goes[name])
                pending[i][m] = np.setdiff1d(touched.rows[m][i], goes[name], assume_unique=True)
        sent = StepRows(world, step.step, step.ranks, chosen, step.tokens)
        step_traffic = []
        for m in (0, 1):
            t = exchange_traffic(plain, sent, m, num_rows, dim)
            t.rows_sent_share = float(sum(a.shape[0] for a in chosen[m]) / max(sum(touched.rows[m][i].shape[0]
                                                                                 for i in range(ranks)), 1))
            step_traffic.append(t)
        out.append(step_traffic)
    return out


def _within_budget(config: Config, traffic: list[Traffic], compute_s: float, sampled: SampledWorld,
                   step_tokens: int, link: Link, host: HostCost | None) -> list[Traffic]:
    """What a budgeted step sends, as the trainer's budget would: at most :func:`budget_rows` rows a rank. With
    ``auto``, when the trainer's whole change would not hide behind the compute, no more than the rows that do
    (:func:`auto_budget` in rows, :func:`hide_rows`), and fewer (by ``SHRINK``, as ``auto`` steers) while the step's
    exchange still does not hide (the rows chosen may go as a dense all-reduce); never below ``MIN_ROWS``."""
    world = sampled.world
    plain = [t.unbudgeted or t for t in traffic]
    limit: int | np.ndarray = budget_rows(config, sampled.dim, step_tokens)

    def hides(sent: list[Traffic]) -> bool:
        return step_time(sent, compute_s, world, link, host).exchange_s <= compute_s

    if config.budget != "auto" or hides(plain):
        return _cut_as_trainer(config, traffic, plain, sampled, limit)
    limit = np.clip(hide_rows(traffic, world, auto_budget(traffic, compute_s, world, link, host)),
                    trainer_budget.MIN_ROWS, limit)
    sent = _cut_as_trainer(config, traffic, plain, sampled, limit)
    while not hides(sent) and np.any(limit > trainer_budget.MIN_ROWS):
        limit = np.maximum(trainer_budget.MIN_ROWS, (limit * trainer_budget.SHRINK).astype(np.int64))
        sent = _cut_as_trainer(config, traffic, plain, sampled, limit)
    return sent


def _cut_as_trainer(config: Config, traffic: list[Traffic], plain: list[Traffic], sampled: SampledWorld,
                    limit: int | np.ndarray) -> list[Traffic]:
    """A step under a limit of rows a rank: the trainer's own exchange (``plain``) where every rank's touched rows
    fit, else the rows cut (:func:`cut_to_rows`), each matrix sent sparse or, as the trainer decides from the rows
    chosen, as one dense all-reduce."""
    if np.all(sum(t.rows for t in traffic) <= limit):
        return plain
    world, num_rows, dim = sampled.world, sampled.num_rows, sampled.dim
    out = []
    for t in cut_to_rows(traffic, world, limit):
        if num_rows and _goes_dense(t.rows, world, num_rows, dim, config.values):
            t = dataclasses.replace(_dense(t.matrix, t.rows, world, num_rows, dim, config.values, size_round=True),
                                    rows_sent_share=t.rows_sent_share)
        out.append(t)
    return out


def predict(work: Workload, rate: float, worlds: Sequence[int], links: Sequence[Link], host: HostCost | None = None,
            configs: Sequence[Config] = CONFIGS, steps: int = 4, max_ranks: int = 16,
            progress: Any = None) -> list[dict[str, Any]]:
    """Words/s of ``N`` hosts (one rank each, ``work.threads`` threads at ``rate`` tokens/s each) for every
    ``N`` in ``worlds``, link and config, synchronous and (where the trainer allows) overlapped, with the
    scaling efficiency ``words/s(N) / (N x words/s(1))``: :func:`simulate_worlds`, then :func:`predicted_rows`."""
    sampled = simulate_worlds(work, worlds, configs, steps, max_ranks, progress)
    return predicted_rows(work, sampled, rate, links, host, configs)


def simulate_worlds(work: Workload, worlds: Sequence[int], configs: Sequence[Config] = CONFIGS, steps: int = 4,
                    max_ranks: int = 16, progress: Any = None) -> list[SampledWorld]:
    """:func:`simulate_world` for each ``N`` (``progress(line)`` hears how long each took)."""
    worlds = [_positive_int(n, "hosts (N)") for n in worlds]
    out = []
    for world in worlds:
        started = time.perf_counter()
        out.append(simulate_world(work, world, configs, steps, max_ranks))
        if progress is not None:
            progress(f"N = {world}: {len(out[-1].tokens)} steps x {min(world, max_ranks)} ranks simulated in "
                     f"{time.perf_counter() - started:.1f} s")
    return out


def predicted_rows(work: Workload, sampled: Sequence[SampledWorld], rate: float, links: Sequence[Link],
                   host: HostCost | None = None, configs: Sequence[Config] = CONFIGS) -> list[dict[str, Any]]:
    """The prediction for every simulated world, link and config (one JSON-able dict each). Steady state: the
    mean sampled step."""
    if not (_finite(rate) and rate > 0):
        raise UserError(f"invalid setting: the compute rate must be a positive number of tokens/s, got {rate!r}")
    single = rate * work.threads * work.raw_per_token  # words/s of one host: no exchange
    return [_predicted_row(work, one, c, lk, host, rate, single) for one in sampled for c in configs for lk in links]


def _predicted_row(work: Workload, sampled: SampledWorld, config: Config, link: Link, host: HostCost | None,
                   rate: float, single: float) -> dict[str, Any]:
    """One prediction: sync and overlapped figures (``exchange_s``: the main exchange; ``hot_s``: the hot syncs,
    in the foreground), bytes a rank sends and receives a step (``mb_hot_per_step`` of them in the hot syncs)."""
    world, hot = sampled.world, sampled.hot.get(config.name)
    row: dict[str, Any] = {"hosts": world, "gbit_s": link.gbit_s, "config": config.name,
                           "implemented": config.implemented, "sampled_steps": len(sampled.tokens),
                           "sampled_ranks": min(world, len(sampled.traffic[config.name][0][0].rows)),
                           "job_tokens": sampled.job_tokens, "hot_rows": hot.rows if hot else 0,
                           "hot_rounds": hot.rounds if hot else 0,
                           "mb_hot_per_step": (hot.bytes_per_step if hot else 0) / 1e6}
    for overlap in (False, True):
        if overlap and not config.overlaps:
            row["overlap"] = None
            continue
        times, sent = time_world(sampled, config, rate, work.threads, link, host, overlap)
        step_s = float(np.mean([t.step_s for t in times]))
        tokens = float(np.mean(sampled.tokens))
        words = world * tokens * work.raw_per_token / step_s
        row["overlap" if overlap else "sync"] = {
            "step_s": step_s, "compute_s": float(np.mean([t.compute_s for t in times])),
            "exchange_s": float(np.mean([t.exchange_s for t in times])),
            "link_s": float(np.mean([t.link_s for t in times])), "host_s": float(np.mean([t.host_s for t in times])),
            "latency_s": float(np.mean([t.latency_s for t in times])),
            "hot_s": float(np.mean([t.hot_s for t in times])),
            "words_per_s": words, "efficiency": words / (world * single)}
        if not overlap:
            row["mb_sent_per_step"] = float(np.mean([sum(t.sent.mean() for t in s) for s in sent])) / 1e6 \
                + row["mb_hot_per_step"]
            row["mb_recv_per_step"] = float(np.mean([sum(t.recv.mean() for t in s) for s in sent])) / 1e6 \
                + row["mb_hot_per_step"]
            row["modes"] = {m: sorted({s[i].mode for s in sent}) for i, m in enumerate(("syn0", "syn1"))}
            row["rows_sent_share"] = float(np.mean([np.mean([t.rows_sent_share for t in s]) for s in sent]))
    return row


# ----------------------------------------------------------------------------------------------- compute
def measure_rate(work: Workload, seconds: float = 3.0, job_tokens: int | None = None) -> dict[str, float]:
    """Tokens/s of one thread of the real kernel (:meth:`~sparsembed.word2vec.model.Word2Vec.run_job`, a single
    process, the workload's settings) over jobs drawn from all over the corpus, for about ``seconds`` (at least
    one job, after one short warm-up job). Returns the median per-job rate and what was timed."""
    if not (_finite(seconds) and seconds > 0):
        raise UserError(f"invalid setting: rate seconds must be positive, got {seconds!r}")
    m = work.model
    s = m.settings
    model = _model_like(m, s, copy=True)  # train a copy: the workload's matrices stay as scanned
    size = job_tokens or work.job_tokens
    schedule = Schedule(work.starts(size), size, s.epochs, s.alpha, s.min_alpha)
    warm = Schedule(m.corpus.sentence_starts, min(size, 1000), s.epochs, s.alpha, s.min_alpha)
    model.run_job(warm, 0, 0, work.tables)  # the kernel's compiled code loads from numba's cache once
    rates, total_tokens, total_s = [], 0, 0.0
    for job in np.random.default_rng(0).permutation(schedule.n_jobs).tolist():  # jobs from all over the corpus
        start, stop = schedule.tokens(job, job + 1)
        tokens = stop - start
        started = time.perf_counter()
        model.run_job(schedule, 0, job, work.tables)
        took = time.perf_counter() - started
        rates.append(tokens / max(took, 1e-9))
        total_tokens += tokens
        total_s += took
        if total_s >= seconds:
            break
    return {"tokens_per_s": float(np.median(rates)), "jobs": len(rates), "tokens": total_tokens,
            "seconds": total_s, "sg": int(s.sg)}
