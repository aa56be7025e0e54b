"""Data-parallel word2vec over torch.distributed: every rank trains its own jobs, only touched rows travel.

Training is cut into *steps*. In a step each of the ``world`` ranks runs ``threads`` jobs (consecutive jobs of
the single-process job order, rank ``r`` taking the ``r``-th group of ``threads``) on its own working copy of
both matrices, starting from the same *reference* matrices, and the kernel marks every row it may change. Then,
per matrix, each rank sends the change of its touched rows (``work - reference``) and every rank adds the sum of
all ranks' changes to the reference and copies it into its working rows:

* ``replicated``: every rank gets the sum of all changes, so all replicas hold bit-identical references. Ranks
  on one host keep one reference and their working copies in shared memory (:class:`sparsembed.comm.shm.HostMatrix`)
  and each sums its part of the rows, in rank order, into the reference and every working copy (with
  ``overlap``: each writes its change into a slot, :class:`~sparsembed.comm.shm.HostSlots`, and merges all slots);
  otherwise :func:`sparsembed.comm.exchange.replicated` (sparse codec messages) or, when the touched rows would make
  that dearer, one dense all-reduce of the change (``transport="tcp"`` forces this gloo path);
* ``sharded``: :func:`sparsembed.comm.exchange.sharded` sends each change to the row's owner (a load-balanced
  :class:`~sparsembed.comm.sharding.ShardMap`, ranges of relabelled rows), the owner adds it to its authoritative
  rows and sends every rank the fresh values of the rows it touched; rows a rank did not touch stay as it last
  saw them until it touches them again (parameter-server staleness). Checkpoints and the final vectors gather
  every owner's rows.

A step therefore equals, on one process, running the step's jobs each from the same start and summing their
changes: what the deterministic test checks. With ``overlap`` (replicated only) each step's exchange runs in a
background thread (on its own gloo group, or through shared memory) while the next step trains; its sum lands
after that step, as ``work += sum - own change`` (:meth:`_Replica.add`), so a rank sees the others' changes one
step late and its own at once. Only the end of training (or a stop) waits for the exchange in flight: an epoch
end or a checkpoint saves the reference, the state before the last step, while that step's exchange goes on.

With ``balance="dynamic"`` (ranks on one host, synchronous) a step covers the same tokens in ``DYNAMIC_ROUNDS``
times as many jobs, and the ranks draw them from a shared counter (:class:`~sparsembed.comm.shm.HostCounter`) as each
becomes free, so a rank slowed by a busy core runs fewer: a rank runs its jobs one after another on its working
copy, each with the learning rate of its round of ``world x threads`` jobs. The sum is no longer the static
replay's, since which rank runs which job depends on timing.

Because the step's jobs are a prefix of the global job order, a checkpoint is the single-process one (epoch, next
job), so a run resumes with any number of ranks. The learning rate follows the global position: a job of a step of
``k`` concurrent jobs decays ``k`` times as fast as alone.

Every collective goes through the process group with its timeout, inside a :class:`~sparsembed.dataparallel.watchdog.PeerWatch`
guard, so a rank that died or hung is named in the error.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch
import torch.distributed as dist

from sparsembed.comm import exchange
from sparsembed.comm.sharding import ShardMap
from sparsembed.comm.shm import HostCounter, HostMatrix, HostSlots, group_timeout, host_status, shm_room
from sparsembed.dataparallel.watchdog import PeerWatch
from sparsembed.errors import UserError
from sparsembed.rows.coalesce import RowSparse
from sparsembed.word2vec.model import Word2Vec
from sparsembed.word2vec.progress import Progress

STRATEGIES = ("replicated", "sharded")
ROW_ENCODINGS = ("auto", "index", "bitmap", "roaring")
VALUE_ENCODINGS = ("fp32", "fp16")
TRANSPORTS = ("auto", "tcp")
BALANCES = ("static", "dynamic")
#: Jobs per thread and rank in a step with ``balance="dynamic"``: a rank that finishes early draws more of them.
#: Small jobs keep short the wait for the other rank's last job (at J = 250k a job is one 10k-token sentence of
#: wiki17m); with 4 the step's end waited longer than static steps did (BENCHMARKS.md).
DYNAMIC_ROUNDS = 25


@dataclass
class ExchangeOptions:
    """How a data-parallel step sends its rows (``sparsembed train --strategy/--rows/--values``)."""

    strategy: str = "replicated"
    rows: str = "auto"
    values: str = "fp32"
    mode: str = "auto"  # replicated only: "auto" picks sparse or dense per step and matrix, or force one
    transport: str = "auto"  # "auto": shared memory for dense steps when every rank is on this host; "tcp": gloo
    overlap: bool = False  # replicated only: train the next step while this step's changes travel
    balance: str = "static"  # "dynamic": ranks on one host draw a step's jobs as each becomes free

    def validate(self) -> ExchangeOptions:
        """Raise UserError naming the first invalid option; return self."""
        for value, allowed, flag in ((self.strategy, STRATEGIES, "--strategy"), (self.rows, ROW_ENCODINGS, "--rows"),
                                     (self.values, VALUE_ENCODINGS, "--values"), (self.mode, exchange.MODES, "mode"),
                                     (self.transport, TRANSPORTS, "--transport"), (self.balance, BALANCES,
                                                                                    "--balance")):
            if value not in allowed:
                raise UserError(f"invalid setting: {flag} must be one of {', '.join(allowed)}, got {value!r}")
        if self.overlap and self.strategy != "replicated":
            raise UserError("invalid setting: --overlap needs --strategy replicated (owners of the sharded strategy "
                            "send fresh rows back within the step)")
        if self.balance == "dynamic" and (self.overlap or self.strategy != "replicated" or self.transport != "auto"):
            raise UserError("invalid setting: --balance dynamic needs --strategy replicated, --transport auto and no "
                            "--overlap (the ranks draw jobs from a counter in shared memory)")
        return self


def step_jobs(first_job: int, n_jobs: int, world: int, threads: int, rank: int) -> list[int]:
    """The jobs ``rank`` runs in the step that starts at ``first_job``: its group of ``threads`` consecutive jobs."""
    start = first_job + rank * threads
    return [j for j in range(start, start + threads) if j < n_jobs]


def concurrent_schedule(total_tokens: int, tokens_before: int, concurrent: int) -> tuple[int, int]:
    """``(total_tokens, tokens_before)`` for the kernel so that ``concurrent`` jobs running side by side, each
    counting only its own tokens, decay the learning rate at the pace of the whole step."""
    return max(total_tokens // concurrent, 1), tokens_before // concurrent


def even_job_tokens(tokens_per_epoch: int, job_tokens: int, per_step: int) -> int:
    """Job size near ``job_tokens`` that cuts an epoch into a multiple of ``per_step`` jobs, so the last step of
    an epoch keeps every rank busy instead of leaving some idle while the others train."""
    steps = max(1, -(-tokens_per_epoch // (per_step * job_tokens)))
    return max(1, -(-tokens_per_epoch // (steps * per_step)))


class _Replica:
    """One matrix of one rank: the working copy the kernel trains, the reference all ranks agree on, the
    rows touched since the last exchange."""

    def __init__(self, name: str, work: np.ndarray, host: HostMatrix | None = None) -> None:
        self.name = name
        self.work = work
        self.host = host  # ranks on one host: the reference and the marks live in shared memory, one reference
        self.ref = work.copy() if host is None else host.ref
        self.touched = np.zeros(work.shape[0], dtype=np.uint8) if host is None else host.touched
        self.dense: torch.Tensor | None = None
        self.dense_half: torch.Tensor | None = None

    def change(self) -> RowSparse:
        """This rank's change since the last exchange, as sorted distinct rows; clears the touched marks."""
        ids = np.flatnonzero(self.touched)
        self.touched[:] = 0
        values = np.empty((ids.shape[0], self.work.shape[1]), dtype=np.float32)
        _gather_change(self.work, self.ref, ids, values)
        rs = RowSparse.from_sorted(torch.from_numpy(ids), torch.from_numpy(values), self.work.shape[0])
        return rs

    def add(self, total: RowSparse | torch.Tensor, own: RowSparse | None = None) -> None:
        """Add the summed change of all ranks (sparse rows, or a dense matrix) to the reference.

        Rows untouched since the change was taken take the new reference; with ``own`` (the change this rank
        sent, when it went on training while the exchange ran, see ``overlap``) a row touched since keeps its
        newer change: ``work += total - own``."""
        if own is not None:
            _retract(self.work, self.touched, own.ids.numpy(), own.values.numpy())
        if isinstance(total, torch.Tensor):
            _apply_dense(self.ref, self.work, self.touched, total.numpy())
        else:
            _add_rows(self.ref, self.work, self.touched, total.ids.numpy(), total.values.numpy())

    def exchange_dense(self, group: Any, half: bool = False) -> None:
        """Sum every rank's change of every row with one dense all-reduce, in buffers kept between steps;
        ``half``: the all-reduce runs in float16 (half the bytes; each rank's change rounded once)."""
        _dense_change(self.work, self.ref, self._dense_buffer().numpy())
        self.touched[:] = 0
        self.add(self._all_reduce_dense(group, half))

    def sum_dense(self, own: RowSparse, group: Any, half: bool = False) -> torch.Tensor:
        """The dense sum over all ranks of their changes, this rank's given as sorted distinct rows."""
        buf = self._dense_buffer().numpy()
        buf[:] = 0
        buf[own.ids.numpy()] = own.values.numpy()
        return self._all_reduce_dense(group, half)

    def _dense_buffer(self) -> torch.Tensor:
        if self.dense is None:
            self.dense = torch.empty(self.work.shape, dtype=torch.float32)
        return self.dense

    def _all_reduce_dense(self, group: Any, half: bool) -> torch.Tensor:
        if half:
            if self.dense_half is None:
                self.dense_half = torch.empty(self.work.shape, dtype=torch.float16)
            self.dense_half.copy_(self.dense)
            dist.all_reduce(self.dense_half, group=group)
            self.dense.copy_(self.dense_half)
        else:
            dist.all_reduce(self.dense, group=group)
        return self.dense

    def put_shared(self, slots: HostSlots) -> RowSparse:
        """Write this rank's change into its slot (``overlap`` through shared memory: the working copy goes on
        training while the peers read); returns it (views of the slot, valid until the next put)."""
        rows, dim = self.work.shape
        ids = np.flatnonzero(self.touched)
        n = ids.shape[0]
        self.touched[:] = 0
        ids_at, values_at = _slot_layout(rows)
        mine = slots.slot()
        own_ids = mine[ids_at:ids_at + 8 * n].view(np.int64)
        own_ids[:] = ids
        values = mine[values_at:values_at + 4 * n * dim].view(np.float32).reshape(n, dim)
        _gather_change(self.work, self.ref, ids, values)
        own = RowSparse.from_sorted(torch.from_numpy(own_ids), torch.from_numpy(values), rows)
        return own

    def add_shared(self, slots: HostSlots, counts: np.ndarray, own: RowSparse | None = None) -> None:
        """:meth:`add` for the rows every rank announced in its slot (``counts``, from ``slots.publish``), in one
        pass that merges the slots' sorted ids; then the slots may be written again (``slots.advance``).

        ``own``: as in :meth:`add` (rows this rank touched since its change was taken keep their newer
        change)."""
        rows, dim = self.work.shape
        ids_at, values_at = _slot_layout(rows)
        every = slots.slots()
        ids = every[:, ids_at:ids_at + 8 * rows].view(np.int64)
        values = every[:, values_at:values_at + 4 * rows * dim].view(np.float32).reshape(slots.world, rows, dim)
        _merge_add(self.ref, self.work, self.touched, ids, values, counts, slots.rank if own is not None else -1)
        slots.advance()

    def refresh(self, ids: np.ndarray, fresh: np.ndarray) -> None:
        """Rows whose owner sent their current value (sharded): both copies take it."""
        _set_rows(self.ref, self.work, ids, fresh)


@numba.njit(nogil=True, cache=True)
def _gather_change(work, ref, ids, out):  # pragma: no cover - compiled
    for i in range(ids.shape[0]):
        r = ids[i]
        for k in range(work.shape[1]):
            out[i, k] = work[r, k] - ref[r, k]


@numba.njit(nogil=True, cache=True)
def _dense_change(work, ref, out):  # pragma: no cover - compiled
    for r in range(work.shape[0]):
        for k in range(work.shape[1]):
            out[r, k] = work[r, k] - ref[r, k]


@numba.njit(nogil=True, cache=True)
def _apply_dense(ref, work, touched, total):  # pragma: no cover - compiled
    for r in range(ref.shape[0]):
        for k in range(ref.shape[1]):
            v = ref[r, k] + total[r, k]
            ref[r, k] = v
            work[r, k] = work[r, k] + total[r, k] if touched[r] else v


@numba.njit(nogil=True, cache=True)
def _retract(work, touched, ids, values):  # pragma: no cover - compiled
    """Take a change this rank sent back out of the rows it touched since: the sum brings it back."""
    for i in range(ids.shape[0]):
        r = ids[i]
        if touched[r]:
            for k in range(work.shape[1]):
                work[r, k] -= values[i, k]


def _slot_layout(rows: int) -> tuple[int, int]:
    """Byte offsets of the ids and of the values in a shared-memory slot of a matrix with ``rows`` rows."""
    return 64, 64 + (8 * rows + 63) // 64 * 64


def _shm_stats(replica: _Replica, n: int, ids: bool = True) -> exchange.ExchangeStats:
    """Stats of an exchange through shared memory of ``n`` rows (float32 values, and their ids with ``ids``; the
    same bytes in and out)."""
    num_rows, dim = replica.work.shape
    nbytes = n * (8 * ids + 4 * dim)
    return exchange.ExchangeStats(replica.name, "replicated", "shm", "shm", n / max(num_rows, 1), n, nbytes, nbytes,
                                  0.0)


def _slot_bytes(rows: int, dim: int) -> int:
    return _slot_layout(rows)[1] + 4 * rows * dim


@numba.njit(nogil=True, cache=True)
def _merge_add(ref, work, touched, ids, values, counts, own):  # pragma: no cover - compiled
    """Merge the ranks' sorted rows (``ids[q, :counts[q]]``, ``values[q]``); add each row's sum, in rank order,
    to ``ref``; ``work`` takes the new reference, or for a row touched since adds the sum less rank ``own``'s
    part (-1: none), as :func:`_retract` then :func:`_add_rows` would."""
    world, dim = ids.shape[0], ref.shape[1]
    pos = np.zeros(world, np.int64)
    total = np.empty(dim, np.float32)
    end = ref.shape[0]
    while True:
        r = end
        for q in range(world):
            if pos[q] < counts[q] and ids[q, pos[q]] < r:
                r = ids[q, pos[q]]
        if r == end:
            return
        first, mine = True, -1
        for q in range(world):
            p = pos[q]
            if p < counts[q] and ids[q, p] == r:
                if first:
                    total[:] = values[q, p]
                    first = False
                else:
                    for k in range(dim):
                        total[k] += values[q, p, k]
                if q == own:
                    mine = p
                pos[q] = p + 1
        if touched[r]:
            if mine >= 0:
                for k in range(dim):
                    work[r, k] -= values[own, mine, k]
            for k in range(dim):
                ref[r, k] += total[k]
                work[r, k] += total[k]
        else:
            for k in range(dim):
                v = ref[r, k] + total[k]
                ref[r, k] = v
                work[r, k] = v


@numba.njit(nogil=True, cache=True)
def _add_rows(ref, work, touched, ids, values):  # pragma: no cover - compiled
    for i in range(ids.shape[0]):
        r = ids[i]
        for k in range(ref.shape[1]):
            v = ref[r, k] + values[i, k]
            ref[r, k] = v
            work[r, k] = work[r, k] + values[i, k] if touched[r] else v


@numba.njit(nogil=True, cache=True)
def _set_rows(ref, work, ids, values):  # pragma: no cover - compiled
    for i in range(ids.shape[0]):
        r = ids[i]
        for k in range(ref.shape[1]):
            ref[r, k] = values[i, k]
            work[r, k] = values[i, k]


class _Owners:
    """Sharded strategy: which rank owns which row, as contiguous ranges of relabelled row ids."""

    def __init__(self, counts: np.ndarray, world: int, step_tokens: int) -> None:
        self.map = ShardMap.balanced(np.asarray(counts, dtype=np.float64), world, max(step_tokens, 1))
        self.boundaries = np.asarray(self.map.bounds, dtype=np.int64)
        self.loads = np.zeros(world, dtype=np.int64)  # rows this rank sent each owner, last step, both matrices

    def exchange(self, replica: _Replica, options: ExchangeOptions, group: Any) -> exchange.ExchangeStats:
        change = replica.change()
        rows = change.ids.numpy()
        new_ids = self.map.relabel(rows)
        self.loads += np.bincount(self.map.owner(rows), minlength=len(self.loads))
        order = np.argsort(new_ids, kind="stable")
        grad = RowSparse.from_sorted(torch.from_numpy(new_ids[order]), change.values[torch.from_numpy(order)],
                         change.num_rows)

        def apply_owned(owned: RowSparse) -> None:
            if owned.n:
                _add_rows_ref(replica.ref, self.map.restore(owned.ids.numpy()), owned.values.numpy())

        def read_owned(new: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(replica.ref[self.map.restore(new.numpy())])

        fresh, stats = exchange.sharded(grad, self.boundaries, apply_owned, read_owned, rows=options.rows,
                                        values=options.values, group=group, name=replica.name)
        replica.refresh(self.map.restore(fresh.ids.numpy()), fresh.values.numpy())
        return stats

    def consolidate(self, replica: _Replica, group: Any) -> None:
        """Every rank gets every owner's current rows (a dense all-reduce of the owned parts)."""
        rank = dist.get_rank(group)
        mine = self.map.restore(np.arange(self.boundaries[rank], self.boundaries[rank + 1], dtype=np.int64))
        full = torch.zeros(replica.ref.shape, dtype=torch.float32)
        full[torch.from_numpy(mine)] = torch.from_numpy(replica.ref[mine])
        dist.all_reduce(full, group=group)
        replica.ref[:] = full.numpy()
        replica.work[:] = replica.ref


@numba.njit(nogil=True, cache=True)
def _add_rows_ref(ref, ids, values):  # pragma: no cover - compiled
    for i in range(ids.shape[0]):
        r = ids[i]
        for k in range(ref.shape[1]):
            ref[r, k] += values[i, k]


class DataParallelTrainer:
    """Trains a :class:`~sparsembed.word2vec.model.Word2Vec` whose vocabulary is built, on every rank of ``group``.

    Every rank must hold the same model (vocabulary, matrices, position): the same corpus scanned with the same
    settings, or the same checkpoint loaded. ``model.settings.workers`` threads run per rank. Rank 0 writes
    ``out`` (metrics, checkpoints); the caller writes the outputs from rank 0 after :meth:`train`.
    """

    def __init__(self, model: Word2Vec, options: ExchangeOptions | None = None, group: Any = None) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise UserError("data-parallel training needs torch.distributed initialized (run under torchrun or "
                            "sparsembed train --nproc N)")
        model._require_corpus()
        self.model = model
        self.options = (options or ExchangeOptions()).validate()
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.owners = None
        o = self.options
        hosted = o.strategy == "replicated" and not o.overlap  # one host: the matrices live in shared memory
        shapes = [model.syn0.shape, model.syn1.shape]
        need = sum(HostMatrix.footprint(*shape, self.world) if hosted else 2 * self.world * _slot_bytes(*shape)
                   for shape in shapes)
        same_host, room = host_status(group, need) if o.transport == "auto" else (False, False)
        self.shared = same_host and room
        if same_host and not room and self.rank == 0:
            print(f"sparsembed: /dev/shm has {shm_room() / 1e6:.0f} MB free, the shared-memory exchange needs "
                  f"{need / 1e6:.0f} MB: exchanging over gloo instead (give /dev/shm more room, e.g. docker "
                  "--shm-size, for the faster path)", file=sys.stderr)
        if self.shared and hosted:  # the model trains the working copies in shared memory from now on
            hosts = [HostMatrix(model.syn0, group), HostMatrix(model.syn1, group)]
            model.syn0, model.syn1 = hosts[0].work, hosts[1].work
            self.replicas = [_Replica("syn0", model.syn0, hosts[0]), _Replica("syn1", model.syn1, hosts[1])]
        else:
            self.replicas = [_Replica("syn0", model.syn0), _Replica("syn1", model.syn1)]
        self.slots: dict[str, HostSlots] = {}
        # dynamic: a step is the same tokens in DYNAMIC_ROUNDS times as many jobs, drawn by whichever rank is free
        self.counter = HostCounter(group) if o.balance == "dynamic" and self.shared else None
        if o.balance == "dynamic" and self.counter is None and self.rank == 0:
            print("sparsembed: --balance dynamic needs every rank on this host with shared memory: each rank runs "
                  "its own jobs", file=sys.stderr)
        self.rounds = DYNAMIC_ROUNDS if self.counter is not None else 1
        self.drawn = 0  # numbers drawn from the counter in this session's steps (every rank counts them alike)
        if (model.position.epoch, model.position.job) == (0, 0):  # a fresh run; a resumed one keeps its jobs
            per_epoch = int(model.corpus.sentence_starts[-1])
            per_step = self.world * model.settings.workers * self.rounds
            model.settings.job_tokens = even_job_tokens(per_epoch, max(1, model.settings.job_tokens // self.rounds),
                                                        per_step)
        self.timeout = group_timeout(group)  # the group's own, as launched (--timeout), not torch's default
        self.watch = PeerWatch(grace=min(2.0, 0.1 * self.timeout))
        self.watch.start_pulse(interval=min(0.5, 0.05 * self.timeout))
        self.step = 0  # steps of this session: the same count on every rank, for the watchdog's beats
        # overlap: the exchange of step k runs on its own group, in one background thread, during step k + 1
        self.async_group = dist.new_group(
            dist.get_process_group_ranks(group) if group is not None else None, backend="gloo",
            timeout=timedelta(seconds=self.timeout)) if self.options.overlap else None
        self.mailer: ThreadPoolExecutor | None = None
        self.in_flight: list[tuple] = []  # (replica, own change, future, seconds to start it) of the last step
        self.agreed: tuple = ()  # (position, history) where the reference stands while an exchange is in flight
        if self.options.strategy == "sharded":
            step_tokens = model.settings.job_tokens * model.settings.workers
            self.owners = _Owners(model.vocab.counts, self.world, step_tokens)
        self._check_same_model()

    def _check_same_model(self) -> None:
        """Fail early, on every rank, when the ranks do not hold the same model."""
        m = self.model
        local = torch.tensor([len(m.vocab), m.settings.vector_size, m.position.epoch, m.position.job,
                              int(m.corpus.sentence_starts[-1]), float(np.float64(m.syn0[:64].sum()))],
                             dtype=torch.float64)
        low, high = local.clone(), local.clone()
        with self.watch.guard(0, "the start of training"):
            dist.all_reduce(low, op=dist.ReduceOp.MIN, group=self.group)
            dist.all_reduce(high, op=dist.ReduceOp.MAX, group=self.group)
        if not torch.equal(low, high):
            raise UserError("the ranks do not hold the same model (vocabulary size, dim, position, corpus tokens or "
                            f"initial rows differ: {low.tolist()} vs {high.tolist()}); give every rank the same "
                            "corpus, settings and checkpoint")

    # ------------------------------------------------------------------------------------------- training
    def train(
        self,
        progress: bool = True,
        out: str | Path | None = None,
        checkpoint_every: float | None = None,
        report_every: float = 1.0,
        stop: threading.Event | None = None,
        stop_after_steps: int | None = None,
    ) -> dict[str, Any]:
        """Train the remaining epochs; return the single-process summary plus exchange totals.

        ``stop`` set on any rank ends training on every rank after the current step (then rank 0 checkpoints);
        ``stop_after_steps`` does the same after that many steps (tests of resumption).
        """
        m, s = self.model, self.model.settings
        bounds = m._job_bounds()
        corpus = m.corpus
        n_jobs = len(bounds) - 1
        lead = self.rank == 0
        out_dir = Path(out) if out is not None else None
        if out_dir is not None and lead:
            out_dir.mkdir(parents=True, exist_ok=True)
        start_fraction = m._fraction(m.position.epoch, int(corpus.sentence_starts[bounds[m.position.job]]))
        reporter = Progress(corpus.raw_words, s.epochs,
                            metrics_path=out_dir / "metrics.jsonl" if (out_dir is not None and lead) else None,
                            every=report_every, quiet=not (progress and lead), start_fraction=start_fraction)
        tables = m._kernel_tables()
        per_step = self.world * s.workers * self.rounds
        started = last_checkpoint = time.perf_counter()
        totals = {"steps": 0, "jobs": 0, "bytes_sent": 0, "bytes_recv": 0, "exchange_s": 0.0, "compute_s": 0.0}
        interrupted = False
        try:
            with ThreadPoolExecutor(max_workers=s.workers, thread_name_prefix="sparsembed") as pool:
                while not m.done:
                    if m.position.job >= n_jobs:
                        self._end_epoch(reporter, out_dir)
                        last_checkpoint = time.perf_counter()
                        continue
                    first = m.position.job
                    self.step += 1
                    t0 = time.perf_counter()
                    results = self._run_jobs(pool, bounds, first, n_jobs, per_step, tables)
                    t1, cpu1 = time.perf_counter(), time.process_time()
                    stats = self._exchange_overlapped() if self.async_group is not None else self._exchange()
                    t2, self._exchange_cpu = time.perf_counter(), time.process_time() - cpu1
                    want_stop = (stop is not None and stop.is_set()) or (
                        stop_after_steps is not None and totals["steps"] + 1 >= stop_after_steps)
                    due = (lead and out_dir is not None and checkpoint_every is not None
                           and time.perf_counter() - last_checkpoint >= checkpoint_every)
                    loss, pairs, stop_now, due = self._agree(results, want_stop, due)
                    if self.async_group is not None:  # with this step's exchange in flight, the reference
                        self.agreed = (replace(m.position), list(m.history))  # stands where training stood before it
                    self._advance(first, per_step, n_jobs, bounds, loss, pairs)
                    last = m.position.job >= n_jobs and m.position.epoch + 1 >= s.epochs
                    if self.in_flight and (last or stop_now):
                        # the end: this step's sums land now, so every rank holds the final matrices (epoch ends
                        # and checkpoints do not wait: they save the reference, see checkpoint)
                        t3 = time.perf_counter()
                        stats += self._land()
                        t2 += time.perf_counter() - t3
                    totals["steps"] += 1
                    totals["jobs"] += len(results)
                    totals["compute_s"] += t1 - t0
                    totals["exchange_s"] += t2 - t1
                    totals["bytes_sent"] += sum(st.bytes_sent for st in stats)
                    totals["bytes_recv"] += sum(st.bytes_recv for st in stats)
                    self._log_step(reporter, totals["steps"], t1 - t0, t2 - t1, stats, bounds, len(results))
                    if m.position.job >= n_jobs:
                        self._end_epoch(reporter, out_dir)
                        last_checkpoint = time.perf_counter()
                    elif due and out_dir is not None:
                        self.checkpoint(out_dir)
                        last_checkpoint = time.perf_counter()
                    if stop_now:
                        interrupted = not m.done
                        break
            if interrupted and out_dir is not None:
                self.checkpoint(out_dir)
            with self.watch.guard(self.step, "gathering the shards"):
                self._consolidate()
        finally:
            if self.mailer is not None:  # after an error a collective may still be blocked: do not wait for it
                self.mailer.shutdown(wait=False, cancel_futures=True)
                self.mailer, self.in_flight = None, []
            self.watch.stop_pulse()
            reporter.close()
        fraction = m._fraction(m.position.epoch, m._tokens_done(bounds))
        return {
            "seconds": time.perf_counter() - started,
            "words_per_s": reporter.words_per_second(fraction),
            "epochs": [dict(h) for h in m.history],
            "interrupted": interrupted,
            **totals,
        }

    def _run_jobs(self, pool: ThreadPoolExecutor, bounds: np.ndarray, first: int, n_jobs: int, per_step: int,
                  tables: dict) -> list[tuple]:
        """Run this rank's jobs of the step that starts at job ``first``: its own group (static), or as many as
        its threads draw (dynamic). A job's learning rate starts where the step's round of ``world x threads``
        concurrent jobs starts, whoever runs it."""
        m, s = self.model, self.model.settings
        corpus = m.corpus
        per_epoch = int(corpus.sentence_starts[-1])
        epoch = m.position.epoch
        concurrent = self.world * s.workers
        touched = tuple(r.touched for r in self.replicas)  # the replicas' working copies are the model's matrices

        def run(job: int) -> tuple:
            round_first = first + (job - first) // concurrent * concurrent
            before = epoch * per_epoch + int(corpus.sentence_starts[bounds[round_first]])
            return m._run_job(corpus, bounds, epoch, job, tables,
                              concurrent_schedule(per_epoch * s.epochs, before, concurrent), touched)

        if self.counter is None:
            return list(pool.map(run, step_jobs(first, n_jobs, self.world, s.workers, self.rank)))
        base, count = self.drawn, min(per_step, n_jobs - first)
        self.drawn += count

        def draw_and_run(_: int) -> list[tuple]:
            done = []
            while (number := self.counter.draw(base + count)) is not None:
                done.append(run(first + number - base))
            return done

        return [r for thread in pool.map(draw_and_run, range(s.workers)) for r in thread]

    def _exchange(self) -> list[exchange.ExchangeStats]:
        o = self.options
        stats = []
        for replica in self.replicas:
            with self.watch.guard(self.step, f"the exchange of {replica.name}"):
                if self.owners is None:
                    stats.append(self._replicated(replica))
                    continue
                if replica is self.replicas[0]:
                    self.owners.loads[:] = 0
                stats.append(self.owners.exchange(replica, o, self.group))
        return stats

    def _exchange_overlapped(self) -> list[exchange.ExchangeStats]:
        """Land the previous step's exchange (wait for it, add the sums), then start this step's in the
        background: the next step trains while these changes travel. A rank's model therefore lags the other
        ranks' changes by one step (never its own); every rank adds the same sums to the same reference."""
        stats = self._land()
        if self.mailer is None:
            self.mailer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sparsembed-exchange")
        for replica in self.replicas:  # in the same order on every rank: the mailer runs them one by one
            t0 = time.perf_counter()
            if self.shared:
                own = replica.put_shared(self._slots(replica))
                job = self.mailer.submit(self._slots(replica).publish, own.n)  # announce, wait for the peers
            else:
                own = replica.change()
                job = self.mailer.submit(self._send, replica, own)
            self.in_flight.append((replica, own, job, time.perf_counter() - t0))
        return stats

    def _land(self) -> list[exchange.ExchangeStats]:
        """Wait for the exchanges in flight and add their sums; [] when none is."""
        stats = []
        for replica, own, job, put_s in self.in_flight:
            t0 = time.perf_counter()
            with self.watch.guard(self.step, f"the exchange of {replica.name}"):
                result = job.result()
            if self.shared:
                replica.add_shared(self._slots(replica), result, own)
                st = _shm_stats(replica, own.n)
            else:
                total, st = result
                replica.add(total, own)
            st.seconds = put_s + time.perf_counter() - t0  # what the step waited for, not the background work
            stats.append(st)
        self.in_flight = []
        return stats

    def _send(self, replica: _Replica, own: RowSparse) -> tuple[Any, exchange.ExchangeStats]:
        """Background thread: the sum over all ranks of their changes, sparse or dense as :meth:`_replicated`."""
        o = self.options
        t0 = time.perf_counter()
        num_rows, dim = replica.work.shape
        if self._goes_dense(own.n, num_rows, dim, self.async_group):
            total = replica.sum_dense(own, self.async_group, half=o.values == "fp16")
            st = self._dense_stats(replica, own.n)
        else:
            total, st = exchange.replicated(own, rows=o.rows, values=o.values, mode="sparse",
                                            group=self.async_group, name=replica.name, transport="tcp")
        st.phases["background"] = time.perf_counter() - t0
        return total, st

    def _slots(self, replica: _Replica) -> HostSlots:
        if replica.name not in self.slots:  # collective: every rank creates its slots in the first step
            num_rows, dim = replica.work.shape
            self.slots[replica.name] = HostSlots(_slot_bytes(num_rows, dim), self.group)
        return self.slots[replica.name]

    def _ring_bytes(self, num_rows: int, dim: int) -> int:
        return exchange.ring_bytes(num_rows * dim * 4, self.world)

    def _dense_stats(self, replica: _Replica, touched: int) -> exchange.ExchangeStats:
        """Stats of a dense all-reduce of a matrix's change (ring bytes, halved for fp16 values)."""
        num_rows, dim = replica.work.shape
        moved = self._ring_bytes(num_rows, dim) // (2 if self.options.values == "fp16" else 1)
        return exchange.ExchangeStats(replica.name, "replicated", "dense", "dense", touched / max(num_rows, 1),
                                      touched, moved, moved, 0.0)

    def _goes_dense(self, touched: int, num_rows: int, dim: int, group: Any) -> bool:
        """Whether this step's change of a matrix goes as one dense all-reduce: forced by ``mode``, or when the
        rows the ranks touched would make the busiest rank receive more than ``exchange.SPARSE_BIAS`` of a dense
        ring all-reduce (decided from every rank's touched-row count, so all ranks agree)."""
        o = self.options
        if o.mode != "auto":
            return o.mode == "dense"
        counts = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(counts, torch.tensor([touched], dtype=torch.int64), group=group)
        row_bytes = dim * (2 if o.values == "fp16" else 4)
        sizes = [int(c) * row_bytes for c in counts]
        return exchange.sparse_too_big(sizes, self._ring_bytes(num_rows, dim), exchange.SPARSE_BIAS)

    def _replicated(self, replica: _Replica) -> exchange.ExchangeStats:
        """Sparse through :func:`exchange.replicated`, or one dense all-reduce of the change (:meth:`_goes_dense`);
        through shared memory when every rank is on this host."""
        o = self.options
        t0 = time.perf_counter()
        num_rows, dim = replica.work.shape
        touched = 0 if replica.host is not None else int(np.count_nonzero(replica.touched))
        if replica.host is not None:  # summed in place in shared memory
            st = _shm_stats(replica, replica.host.exchange(), ids=False)
        elif self._goes_dense(touched, num_rows, dim, self.group):
            replica.exchange_dense(self.group, half=o.values == "fp16")
            st = self._dense_stats(replica, touched)
        else:
            total, st = exchange.replicated(replica.change(), rows=o.rows, values=o.values, mode="sparse",
                                            group=self.group, name=replica.name, transport="tcp")
            replica.add(total)
        st.seconds = time.perf_counter() - t0
        return st

    def _agree(self, results: list[tuple], want_stop: bool, due: bool) -> tuple[float, int, bool, bool]:
        """One small all-reduce: the step's loss and pairs over all ranks, and whether any rank wants to stop or
        rank 0 wants a checkpoint (so every rank takes the same decision)."""
        vec = torch.tensor([sum(r[0] for r in results), sum(r[1] for r in results), float(want_stop), float(due)],
                           dtype=torch.float64)
        with self.watch.guard(self.step, "the end of the step"):
            dist.all_reduce(vec, group=self.group)
        loss, pairs, stop_now, due_now = vec.tolist()
        return loss, int(pairs), stop_now > 0, due_now > 0

    def _advance(self, first: int, per_step: int, n_jobs: int, bounds: np.ndarray, loss: float, pairs: int) -> None:
        m = self.model
        if not math.isfinite(loss):
            fraction = m._fraction(m.position.epoch, m._tokens_done(bounds))
            raise UserError(f"training diverged in epoch {m.position.epoch + 1} (loss became {loss}) at learning "
                            f"rate {m._alpha(fraction):.4g}; lower --alpha (e.g. {m.settings.alpha / 4:g})")
        last = min(first + per_step, n_jobs)
        starts = m.corpus.sentence_starts
        m.corpus.release(int(starts[bounds[first]]), int(starts[bounds[last]]))
        m.position.job = last
        m.position.epoch_loss += loss
        m.position.epoch_pairs += pairs

    def _log_step(self, reporter: Progress, step: int, compute_s: float, exchange_s: float,
                  stats: list[exchange.ExchangeStats], bounds: np.ndarray, jobs: int) -> None:
        m = self.model
        fraction = m._fraction(m.position.epoch, m._tokens_done(bounds))
        if reporter.metrics is not None:
            dense = sum(self._ring_bytes(*r.work.shape) for r in self.replicas)
            record = {
                "step": step, "time": round(time.time(), 3), "epoch": m.position.epoch, "progress": round(fraction, 6),
                "rank": self.rank, "world": self.world, "strategy": self.options.strategy, "jobs": jobs,
                "compute_s": round(compute_s, 6), "exchange_s": round(exchange_s, 6),
                "exchange_cpu_s": round(self._exchange_cpu, 6),
                "bytes_sent": sum(st.bytes_sent for st in stats), "bytes_recv": sum(st.bytes_recv for st in stats),
                "dense_bytes": dense,
                "matrices": {st.name: {"mode": st.mode, "encoding": st.encoding, "density": round(st.density, 6),
                                       "rows": st.rows, "bytes_sent": st.bytes_sent, "bytes_recv": st.bytes_recv,
                                       "seconds": round(st.seconds, 6)} for st in stats},
            }
            if self.owners is not None:
                record["shard_loads"] = [int(x) for x in self.owners.loads]
            reporter.metrics.write(json.dumps(record) + "\n")
        reporter.update(fraction, m._alpha(fraction), m._mean_loss(), m.position.epoch)

    def _end_epoch(self, reporter: Progress, out_dir: Path | None) -> None:
        self.model._end_epoch(reporter)
        if out_dir is not None:
            self.checkpoint(out_dir)

    def checkpoint(self, out_dir: Path) -> None:
        """Rank 0 saves the agreed matrices (the reference; sharded: every owner's rows) as a single-process
        checkpoint; collective (every rank must call it).

        With an exchange in flight (``overlap``) the reference lacks the last step's changes, so the checkpoint
        is the state before that step (its position and history, :attr:`agreed`): a run resumed from it trains
        that step again. Saving it does not wait for the exchange, which goes on in the background."""
        with self.watch.guard(self.step, "a checkpoint"):
            self._consolidate()
            if self.rank == 0 and self.in_flight:
                position, history = self.agreed
                self.model.save(out_dir, agreed=(self.replicas[0].ref, self.replicas[1].ref, position, history))
            elif self.rank == 0:  # after an exchange every working row equals the agreed reference
                self.model.save(out_dir)
            dist.barrier(group=self.group)

    def _consolidate(self) -> None:
        if self.owners is not None:
            for replica in self.replicas:
                self.owners.consolidate(replica, self.group)
