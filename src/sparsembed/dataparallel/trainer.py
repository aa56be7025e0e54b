"""Data-parallel word2vec over torch.distributed: every rank trains its own jobs, only touched rows travel.

Training is cut into *steps*. In a step each of the ``world`` ranks runs ``threads`` jobs (consecutive jobs of
the single-process job order, rank ``r`` taking the ``r``-th group of ``threads``,
:func:`~sparsembed.dataparallel.options.step_jobs`) on its own working copy of both matrices, starting from the
same *reference* matrices, and the kernel marks every row it may change (a
:class:`~sparsembed.dataparallel.replica.Replica` per matrix). Then, per matrix, each rank sends the change of its
touched rows (``work - reference``) and every rank adds the sum of all ranks' changes to the reference and copies
it into its working rows:

* ``replicated``: every rank gets the sum of all changes, so all replicas hold bit-identical references. Ranks
  on one host keep one reference and their working copies in shared memory (:class:`sparsembed.comm.shm.HostMatrix`)
  and each sums its part of the rows, in rank order, into the reference and every working copy (with
  ``overlap``: each writes its change into a slot, :class:`~sparsembed.comm.shm.HostSlots`, and merges all slots);
  otherwise :func:`sparsembed.comm.replicated.replicated` (sparse codec messages) or, when the touched rows would make
  that dearer (:func:`sparsembed.comm.policy.goes_dense`), one dense all-reduce of the change
  (``transport="tcp"`` forces this gloo path);
  Why the trainer keeps these paths of its own beside :func:`~sparsembed.comm.replicated.replicated`, which it
  uses for the sparse change over gloo: on one host every rank's working copy already lies in shared memory, so
  the sum reads the copies in place and writes the result into all of them, and no message is made at all; with
  ``overlap`` the slot holds the change as raw sorted rows that one compiled pass merges straight into the
  reference and the working copy (a codec message would add an encode, a decode and a copy); and the dense
  fallback computes the change of every row into a buffer kept across steps and can all-reduce it in float16,
  where comm's dense fallback sums given gradient rows;
* ``sharded``: :func:`sparsembed.comm.sharded.sharded` sends each change to the row's owner
  (:class:`~sparsembed.dataparallel.owners.Owners`: ranges of relabelled rows), the owner adds it to its authoritative
  rows and sends every rank the fresh values of the rows it touched; rows a rank did not touch stay as it last
  saw them until it touches them again (parameter-server staleness). Checkpoints and the final vectors gather
  every owner's rows.

A step therefore equals, on one process, running the step's jobs each from the same start and summing their
changes: what the deterministic test checks. With ``overlap`` (replicated only) each step's exchange runs in a
background thread (on its own gloo group, or through shared memory) while the next step trains; its sum lands
after that step, as ``work += sum - own change`` (:meth:`Replica.add
<sparsembed.dataparallel.replica.Replica.add>`), so a rank sees the others' changes one step late and its own at
once. Only the end of training (or a stop) waits for the exchange in flight: an epoch
end or a checkpoint saves the reference, the state before the last step, while that step's exchange goes on.

Error feedback (``values`` fp16 or int8, over gloo): a rank's change travels rounded, and what the rounding dropped
goes back into its working rows, marked pending, so it travels with the row's next change
(:meth:`Replica.keep_residual <sparsembed.dataparallel.replica.Replica.keep_residual>`); the last step (or a stop)
sends what is still pending in float32. The reference is the agreed sum, the same bits on every rank, and it is
what checkpoints save; a run resumed from a checkpoint taken mid-run starts without the residuals pending then (at
most one rounding step per row). Through shared memory the sum is exact and ``values`` does not apply.

A byte budget (``budget``, over gloo; :mod:`~sparsembed.dataparallel.budget`) lets a step send only the touched
rows with the largest changes that fit; the others stay touched in the working copy, where later updates add to
them, and go in a later step (at most ``MAX_AGE`` steps later) or in the run's last, exact exchange. A checkpoint
saves the reference, without the changes still waiting, as it does without the residuals pending.

With ``balance="dynamic"`` (ranks on one host, synchronous) a step covers the same tokens in ``DYNAMIC_ROUNDS``
times as many jobs, and the ranks draw them from a shared counter (:class:`~sparsembed.comm.shm.HostCounter`) as each
becomes free, so a rank slowed by a busy core runs fewer: a rank runs its jobs one after another on its working
copy, each with the learning rate of its round of ``world x threads`` jobs. The sum is no longer the static
replay's, since which rank runs which job depends on timing.

Because the step's jobs are a prefix of the global job order, a checkpoint is the single-process one (epoch, next
job), so a run resumes with any number of ranks. The learning rate follows the global position
(:mod:`sparsembed.word2vec.schedule`): a job of a step of ``k`` concurrent jobs decays ``k`` times as fast as alone.
The trainer drives the model through its public training steps (:meth:`~sparsembed.word2vec.model.Word2Vec.run_job`,
``advance``, ``end_epoch``, ``save_state``).

Over 500 lines, a tenth of them this docstring: the step loop, its exchange paths (which share the replicas, the
watchdog and the overlap state) and the agreement between ranks are one object's state.

Every collective goes through the process group with its timeout, inside a
:class:`~sparsembed.dataparallel.watchdog.PeerWatch` guard, so a rank that died or hung is named in the error.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from sparsembed.comm import policy
from sparsembed.comm.messages import as_wire
from sparsembed.comm.policy import Mode, Strategy, Transport
from sparsembed.comm.replicated import replicated
from sparsembed.comm.shm import (
    HostCounter,
    HostMatrix,
    HostSlots,
    group_timeout,
    host_status,
    shm_room,
    spans_hosts,
)
from sparsembed.comm.stats import ExchangeStats
from sparsembed.dataparallel.budget import Budget, wire_row_bytes
from sparsembed.dataparallel.options import (
    DYNAMIC_ROUNDS,
    Balance,
    ExchangeOptions,
    even_job_tokens,
    step_jobs,
    step_tokens_for,
)
from sparsembed.dataparallel.owners import Owners
from sparsembed.dataparallel.replica import HotInFlight, Replica, slot_bytes
from sparsembed.dataparallel.watchdog import PeerWatch
from sparsembed.errors import UserError
from sparsembed.rows.coalesce import RowSparse
from sparsembed.rows.values import Values
from sparsembed.word2vec.model import TrainingRun, TrainingState, Word2Vec
from sparsembed.word2vec.schedule import Schedule

__all__ = ["DataParallelTrainer"]


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
        model.require_corpus()
        self.model = model
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.options = (options or ExchangeOptions()).validate().across_hosts(spans_hosts(group))
        self.replicas = self._place_matrices()
        self.slots: dict[str, HostSlots] = {}
        # dynamic: a step is the same tokens in DYNAMIC_ROUNDS times as many jobs, drawn by whichever rank is free
        dynamic = self.options.balance is Balance.DYNAMIC
        self.counter = HostCounter(group) if dynamic and self.shared else None
        if dynamic and self.counter is None and self.rank == 0:
            print("sparsembed: --balance dynamic needs every rank on this host with shared memory: each rank runs "
                  "its own jobs", file=sys.stderr)
        # hot rows: the most frequent words' rows, summed after every round of a step (beyond two ranks, and at two
        # overlapped ones)
        self.hot = self.options.hot_rows_for(self.world, len(model.vocab)) if self.counter is None else 0
        fresh = (model.position.epoch, model.position.job) == (0, 0)  # a fresh run; a resumed one keeps its jobs
        self.rounds = DYNAMIC_ROUNDS if self.counter is not None else 1
        if self.hot and fresh:
            # a step of job_tokens per rank and thread, in rounds of about hot_tokens each; a round may be shorter
            # than a sentence, so sentences are trained in pieces
            hot_tokens = self.options.hot_tokens_for(self.world)
            self.rounds = max(1, model.settings.job_tokens // hot_tokens)
            model.settings.piece_tokens = hot_tokens
        elif self.hot:  # resumed: the checkpoint's jobs, as many a round as make up the default step
            self.rounds = max(1, step_tokens_for(self.world) // model.settings.job_tokens)
        self.drawn = 0  # numbers drawn from the counter in this session's steps (every rank counts them alike)
        if fresh:
            per_epoch = int(model.corpus.sentence_starts[-1])
            per_step = self.world * model.settings.workers * self.rounds
            model.settings.job_tokens = even_job_tokens(per_epoch, max(1, model.settings.job_tokens // self.rounds),
                                                        per_step)
        self.timeout = group_timeout(group)  # the group's own, as launched (--timeout), not torch's default
        self.watch = PeerWatch(grace=min(2.0, 0.1 * self.timeout))
        self.watch.start_pulse(interval=min(0.5, 0.05 * self.timeout))
        # Where a restarted group would resume, for the watchdog's message; checkpoint() moves it on.
        untrained = fresh and not model.history
        self.watch.resume_point = "the start (no checkpoint yet)" if untrained else "the checkpoint it started from"
        self.step = 0  # steps of this session: the same count on every rank, for the watchdog's beats
        # overlap: the exchange of step k runs on its own group, in one background thread, during step k + 1
        self.async_group = dist.new_group(
            dist.get_process_group_ranks(group) if group is not None else None, backend="gloo",
            timeout=timedelta(seconds=self.timeout)) if self.options.overlap else None
        self.mailer: ThreadPoolExecutor | None = None
        self.in_flight: list[tuple] = []  # (replica, own change, future, seconds to start it) of the last step
        self.vote_in_flight: tuple | None = None  # overlap: the last step's vote (loss, pairs, stop, checkpoint)
        # and the asynchronous all-reduce it travels in
        self.wants = [False, False]  # votes landed and not yet acted on: [stop, checkpoint]
        self.schedule: Schedule | None = None
        self.agreed: TrainingState | None = None  # where the reference stands while an exchange is in flight
        self.owners = None
        if self.options.strategy is Strategy.SHARDED:
            step_tokens = model.settings.job_tokens * model.settings.workers
            self.owners = Owners(model.vocab.counts, self.world, step_tokens)
        self._exchange_cpu = 0.0
        self.hot_s = 0.0  # seconds of this step's hot-row syncs (inside the training of the step's rounds)
        self.hot_flight: HotInFlight | None = None  # the last round's sum of the hot rows, under way
        self.hot_agreed: list[np.ndarray] | None = None  # overlap: the hot rows' reference before this step
        self.hot_behind = self.options.hot_behind(self.world)  # a round's sum behind the next round's training
        # error feedback: rounded values over gloo (shared memory sums float32 in place; sharded owners keep none)
        self.feedback = (Values(self.options.values) is not Values.FP32 and not self.shared
                         and self.options.strategy is Strategy.REPLICATED)
        self.budget = self._make_budget()
        self.choose_s = 0.0  # seconds the last step took to choose its rows under the budget
        self._check_same_model()

    def _make_budget(self) -> Budget | None:
        """The byte budget of this rank's messages over gloo (``options.budget``); None without one, and through
        shared memory (the sum is made in place, nothing travels)."""
        setting = self.options.budget
        if setting in (None, "off") or self.shared or self.options.strategy is not Strategy.REPLICATED:
            return None
        row_bytes = wire_row_bytes(self.options.values, self.model.syn0.shape[1])
        step_tokens = self.model.settings.job_tokens * self.model.settings.workers * self.rounds
        return Budget(setting, row_bytes, {r.name: r.work.shape[0] for r in self.replicas}, step_tokens)

    def _place_matrices(self) -> list[Replica]:
        """Decide whether the exchange goes through shared memory (:attr:`shared`) and make the two replicas; with
        every rank on this host (and no ``overlap``) the model trains working copies in shared memory from now on."""
        model, o = self.model, self.options
        hosted = o.strategy is Strategy.REPLICATED and not o.overlap  # one host: the matrices live in shared memory
        shapes = [model.syn0.shape, model.syn1.shape]
        need = sum(HostMatrix.footprint(*shape, self.world) if hosted else 2 * self.world * slot_bytes(*shape)
                   for shape in shapes)
        same_host, room = host_status(self.group, need) if o.transport is Transport.AUTO else (False, False)
        self.shared = same_host and room
        if same_host and not room and self.rank == 0:
            print(f"sparsembed: /dev/shm has {shm_room() / 1e6:.0f} MB free, the shared-memory exchange needs "
                  f"{need / 1e6:.0f} MB: exchanging over gloo instead (give /dev/shm more room, e.g. docker "
                  "--shm-size, for the faster path)", file=sys.stderr)
        if self.shared and hosted:
            hosts = [HostMatrix(model.syn0, self.group), HostMatrix(model.syn1, self.group)]
            model.syn0, model.syn1 = hosts[0].work, hosts[1].work
            return [Replica("syn0", model.syn0, hosts[0]), Replica("syn1", model.syn1, hosts[1])]
        return [Replica("syn0", model.syn0), Replica("syn1", model.syn1)]

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
        wait_for_checkpoint: bool = True,
    ) -> dict[str, Any]:
        """Train the remaining epochs; return the single-process summary plus exchange totals.

        ``stop`` set on any rank ends training on every rank after the current step (then rank 0 checkpoints);
        ``stop_after_steps`` does the same after that many steps (tests of resumption). ``wait_for_checkpoint``:
        as :meth:`Word2Vec.train`'s (rank 0's last checkpoint may still be written on return; the model's
        ``finish_saves`` waits for it).
        """
        m = self.model
        schedule = m.schedule()
        lead = self.rank == 0
        out_dir = Path(out) if out is not None else None
        if out_dir is not None and lead:
            out_dir.mkdir(parents=True, exist_ok=True)
        reporter = m.reporter(schedule, out_dir / "metrics.jsonl" if (out_dir is not None and lead) else None,
                              report_every, quiet=not (progress and lead))
        tables = m.kernel_tables()
        self.schedule = schedule
        started = time.perf_counter()
        run = _Run(schedule, tables, reporter, out_dir, checkpoint_every, stop, last_checkpoint=started,
                   stop_after_steps=stop_after_steps, per_step=self.world * m.settings.workers * self.rounds,
                   lead=lead)
        try:
            with ThreadPoolExecutor(max_workers=m.settings.workers, thread_name_prefix="sparsembed") as pool:
                while not m.done:
                    if m.position.job >= schedule.n_jobs:
                        self._end_epoch(run)
                        continue
                    if self._step(pool, run):
                        run.interrupted = not m.done
                        break
            if run.interrupted and out_dir is not None:
                self.checkpoint(out_dir)
            with self.watch.guard(self.step, "gathering the shards"):
                self._consolidate()
        finally:
            if self.mailer is not None:  # after an error a collective may still be blocked: do not wait for it
                self.mailer.shutdown(wait=False, cancel_futures=True)
                self.mailer, self.in_flight, self.vote_in_flight = None, [], None
            self.watch.stop_pulse()
            reporter.close()
            if wait_for_checkpoint or sys.exc_info()[1] is not None:
                m.finish_saves(raise_error=sys.exc_info()[1] is None)
        return {
            "seconds": time.perf_counter() - started,
            "words_per_s": reporter.words_per_second(schedule.progress(m.position)),
            "epochs": [dict(h) for h in m.history],
            "interrupted": run.interrupted,
            **run.totals,
        }

    def _step(self, pool: ThreadPoolExecutor, run: _Run) -> bool:
        """One step: train this rank's jobs, exchange, agree on the loss and on stopping, advance, report, end the
        epoch or checkpoint when due; return whether training stops now.

        With ``overlap`` the vote (loss, pairs, stop, checkpoint) is an asynchronous all-reduce that lands with the
        step's exchange, a step later, so no step waits for the slowest rank at its end: a stop or a checkpoint
        asked in step ``k`` happens in step ``k + 1`` on every rank, and an epoch's end waits for its last vote, so
        that its loss is whole."""
        m, totals = self.model, run.totals
        first = m.position.job
        self.step += 1
        t0, self.hot_s = time.perf_counter(), 0.0
        if self.hot and self.async_group is not None:  # the hot rows as agreed before the step (see checkpoint)
            self.hot_agreed = [r.ref[:self.hot].copy() for r in self.replicas]
        results = self._run_jobs(pool, run, first)
        t1, cpu1 = time.perf_counter(), time.process_time()
        vote = self._vote(results, run.stop_requested(), run.lead and run.checkpoint_due())
        if self.async_group is not None:
            stats = self._exchange_overlapped(vote)
        else:
            stats = self._exchange()
            self._agree(vote)
        t2, self._exchange_cpu = time.perf_counter(), time.process_time() - cpu1
        if self.budget is not None:  # with overlap: the last step's exchange, as long as it ran in the background
            self.budget.observe(sum(st.phases.get("wait", st.seconds) for st in stats),
                                sum(st.phases.get("background", st.seconds) for st in stats), t1 - t0 - self.hot_s)
        if self.hot:  # the hot syncs ran between the rounds: exchange time, not compute
            t1 -= self.hot_s
            stats += [self._hot_stats(replica) for replica in self.replicas]
        stop_now, due = self.wants
        self.wants = [False, False]
        # every rank counts the steps alike: a stop after so many steps needs no vote
        stop_now |= run.stop_after_steps is not None and totals["steps"] + 1 >= run.stop_after_steps
        if self.async_group is not None:  # with this step's exchange in flight, the reference stands where
            refs = [r.ref for r in self.replicas]  # training stood before the step
            self.agreed = TrainingState(refs[0], refs[1], replace(m.position), list(m.history))
        self._advance(run.schedule, first, run.per_step)
        epoch_end = m.position.job >= run.schedule.n_jobs
        last = epoch_end and m.position.epoch + 1 >= m.settings.epochs
        if last or stop_now or epoch_end:
            # the end: this step's sums land now and what rounding or the budget held back goes exactly, so every
            # rank holds the final matrices; an epoch's end waits for the step's vote, for the epoch's whole loss
            # (its sums land with the next step; checkpoints do not wait: they save the reference, see checkpoint)
            t3 = time.perf_counter()
            if last or stop_now:
                stats += self._land() + self._flush()
            else:
                self._land_vote()
            t2 += time.perf_counter() - t3
        totals["steps"] += 1
        totals["jobs"] += len(results)
        totals["compute_s"] += t1 - t0
        totals["exchange_s"] += t2 - t1
        totals["bytes_sent"] += sum(st.bytes_sent for st in stats)
        totals["bytes_recv"] += sum(st.bytes_recv for st in stats)
        self._log_step(run, t1 - t0, t2 - t1, stats, len(results))
        if m.position.job >= run.schedule.n_jobs:
            self._end_epoch(run)
            self.wants[1] = False  # a checkpoint asked for in the step now landed: the epoch's end just took one
        elif due and run.out_dir is not None:
            self.checkpoint(run.out_dir, background=True)
            run.last_checkpoint = time.perf_counter()
        return stop_now

    def _run_jobs(self, pool: ThreadPoolExecutor, run: _Run, first: int) -> list[tuple]:
        """Run this rank's jobs of the step that starts at job ``first``: its own group (static), or as many as
        its threads draw (dynamic). A job's learning rate starts where the step's round of ``world x threads``
        concurrent jobs starts, whoever runs it."""
        m, schedule = self.model, run.schedule
        threads = m.settings.workers
        epoch = m.position.epoch
        concurrent = self.world * threads
        touched = tuple(r.touched for r in self.replicas)  # the replicas' working copies are the model's matrices

        def run_job(job: int) -> tuple:
            round_first = first + (job - first) // concurrent * concurrent
            return m.run_job(schedule, epoch, job, run.tables, schedule.decay(epoch, round_first, concurrent),
                             touched)

        if self.counter is None:
            results = []
            for k in range(self.rounds):  # every rank runs every round, jobs or not: the hot sync is collective
                results += pool.map(run_job, step_jobs(first + k * concurrent, schedule.n_jobs, threads, self.rank))
                self._sync_hot(last=k == self.rounds - 1)
            return results
        base, count = self.drawn, min(run.per_step, schedule.n_jobs - first)
        self.drawn += count

        def draw_and_run(_: int) -> list[tuple]:
            done = []
            while (number := self.counter.draw(base + count)) is not None:
                done.append(run_job(first + number - base))
            return done

        return [r for thread in pool.map(draw_and_run, range(threads)) for r in thread]

    # ------------------------------------------------------------------------------------------- exchange
    def _sync_hot(self, last: bool = True) -> None:
        """After a round: sum the hot rows of both matrices over all ranks (where there are hot rows, see
        :meth:`ExchangeOptions.hot_rows_for`). At two ranks with ``--overlap`` a round's sum runs behind the next
        round's training and lands after it (a round staler; the slower rank is waited for only where it is more
        than a round behind); the step's last round is summed at once, so that no sum is under way between steps
        (checkpoints, epoch ends, the end)."""
        if not self.hot:
            return
        t0 = time.perf_counter()
        with self.watch.guard(self.step, "the hot rows"):
            if self.hot_flight is not None:
                Replica.finish_hot(self.replicas, self.hot_flight)
                self.hot_flight = None
            if self.hot_behind and not last:
                self.hot_flight = Replica.start_hot(self.replicas, self.hot, self.group, half=self.feedback)
            else:
                Replica.sync_hot(self.replicas, self.hot, self.group, half=self.feedback)
        self.hot_s += time.perf_counter() - t0

    def _choose(self) -> dict[str, np.ndarray]:
        """The rows of each matrix that go this step under the byte budget (all touched rows without one: {})."""
        if self.budget is None:
            return {}
        t0 = time.perf_counter()
        replicas = {replica.name: replica for replica in self.replicas}
        chosen = self.budget.choose({name: replica.touched_rows() for name, replica in replicas.items()},
                                    lambda name, ids: replicas[name].weigh(ids))
        self.choose_s = time.perf_counter() - t0
        return chosen

    def _exchange(self) -> list[ExchangeStats]:
        stats = []
        chosen = self._choose()
        for replica in self.replicas:
            with self.watch.guard(self.step, f"the exchange of {replica.name}"):
                if self.owners is None:
                    stats.append(self._replicated(replica, ids=chosen.get(replica.name)))
                    continue
                if replica is self.replicas[0]:
                    self.owners.loads[:] = 0
                stats.append(self.owners.exchange(replica, self.options, self.group))
        return stats

    def _exchange_overlapped(self, vote: torch.Tensor) -> list[ExchangeStats]:
        """Land the previous step's exchange (wait for it, add the sums) and vote, then start this step's in the
        background: the next step trains while these changes travel. A rank's model therefore lags the other
        ranks' changes by one step (never its own); every rank adds the same sums to the same reference."""
        stats = self._land()
        if self.mailer is None:
            self.mailer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sparsembed-exchange")
        chosen = self._choose()
        for replica in self.replicas:  # in the same order on every rank: the mailer runs them one by one
            t0 = time.perf_counter()
            if self.shared:
                own = replica.put_shared(self._slots(replica))
                job = self.mailer.submit(self._slots(replica).publish, own.n)  # announce, wait for the peers
            else:
                own = replica.change(chosen.get(replica.name))
                job = self.mailer.submit(self._send, replica, own)
            self.in_flight.append((replica, own, job, time.perf_counter() - t0))
        # on the step's own group, beside the mailer's exchanges (not behind them: on a slow link each collective
        # costs round trips, and the vote need not wait for the rows)
        self.vote_in_flight = (vote, dist.all_reduce(vote, group=self.group, async_op=True))
        return stats

    def _land(self) -> list[ExchangeStats]:
        """Wait for the exchanges in flight and add their sums; [] when none is."""
        stats = []
        for replica, own, job, put_s in self.in_flight:
            t0 = time.perf_counter()
            with self.watch.guard(self.step, f"the exchange of {replica.name}"):
                result = job.result()
            waited = time.perf_counter() - t0
            if self.shared:
                replica.add_shared(self._slots(replica), result, own)
                st = _shm_stats(replica, own.n)
            else:
                total, st, sent = result
                replica.add(total, RowSparse.from_sorted(own.ids, sent, own.num_rows))
                replica.keep_residual(own, sent)
            st.seconds = put_s + time.perf_counter() - t0  # what the step waited for, not the background work
            st.phases.update(take=put_s, wait=waited, land=st.seconds - put_s - waited)
            stats.append(st)
        self.in_flight = []
        self._land_vote()
        return stats

    def _land_vote(self) -> None:
        """Wait for the vote in flight, if any, and count it (its step's exchange may still be travelling)."""
        if self.vote_in_flight is not None:
            vote, job = self.vote_in_flight
            self.vote_in_flight = None
            with self.watch.guard(self.step, "the end of the step"):
                job.wait()
            self._count(vote)

    def _send(self, replica: Replica, own: RowSparse) -> tuple[Any, ExchangeStats, torch.Tensor]:
        """Background thread: the sum over all ranks of their changes, sparse or dense as :meth:`_replicated`, and
        this rank's rows as the sum received them (:meth:`_sent`: rounding them here keeps it off the training
        thread)."""
        o = self.options
        t0 = time.perf_counter()
        num_rows, dim = replica.work.shape
        if self._goes_dense(own.n, num_rows, dim, self.async_group):
            total = replica.sum_dense(own, self.async_group, half=self.feedback)
            st = self._dense_stats(replica, own.n, self.feedback)
        else:
            total, st = replicated(own, rows=o.rows, values=o.values, mode="sparse", group=self.async_group,
                                   name=replica.name, transport="tcp")
        sent = self._sent(own, st.mode == "dense")
        st.phases["background"] = time.perf_counter() - t0
        return total, st, sent

    def _slots(self, replica: Replica) -> HostSlots:
        if replica.name not in self.slots:  # collective: every rank creates its slots in the first step
            num_rows, dim = replica.work.shape
            self.slots[replica.name] = HostSlots(slot_bytes(num_rows, dim), self.group)
        return self.slots[replica.name]

    def _hot_stats(self, replica: Replica) -> ExchangeStats:
        """Stats of a step's hot-row syncs of a matrix: ``rounds`` all-reduces of ``hot`` rows (float32, float16
        with error feedback)."""
        moved = self.rounds * self._ring_bytes(self.hot, replica.work.shape[1]) // (2 if self.feedback else 1)
        return ExchangeStats(f"{replica.name}[:{self.hot}]", "replicated", "dense", "dense", 1.0, self.hot, moved,
                             moved, self.hot_s / len(self.replicas))

    def _ring_bytes(self, num_rows: int, dim: int) -> int:
        return policy.ring_bytes(num_rows * dim * 4, self.world)

    def _dense_stats(self, replica: Replica, touched: int, half: bool) -> ExchangeStats:
        """Stats of a dense all-reduce of a matrix's change (ring bytes: float32, or float16 for rounded values)."""
        num_rows, dim = replica.work.shape
        moved = self._ring_bytes(num_rows, dim) * (2 if half else 4) // 4
        return ExchangeStats(replica.name, "replicated", "dense", "dense", touched / max(num_rows, 1), touched, moved,
                             moved, 0.0)

    def _goes_dense(self, touched: int, num_rows: int, dim: int, group: Any, values: Values | None = None) -> bool:
        """Whether this step's change of a matrix goes as one dense all-reduce: :func:`policy.goes_dense
        <sparsembed.comm.policy.goes_dense>` from every rank's message size (gathered only when ``mode`` is
        ``auto``), so all ranks agree."""
        o = self.options
        values = Values(o.values) if values is None else values
        sizes = self._message_sizes(touched, dim, group, values) if o.mode is Mode.AUTO else []
        return policy.goes_dense(o.mode, sizes, num_rows * dim * 4, self.world)

    def _message_sizes(self, touched: int, dim: int, group: Any, values: Values) -> list[int]:
        """Every rank's sparse message size in bytes (its touched rows' values), the same list on every rank."""
        counts = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(counts, torch.tensor([touched], dtype=torch.int64), group=group)
        row_bytes = values.row_bytes(dim)
        return [int(c) * row_bytes for c in counts]

    def _replicated(self, replica: Replica, exact: bool = False, ids: np.ndarray | None = None) -> ExchangeStats:
        """Sparse through :func:`~sparsembed.comm.replicated.replicated`, or one dense all-reduce of the change
        (:meth:`_goes_dense`); through shared memory when every rank is on this host. With rounded values, what
        the rounding dropped stays in the working copy (:meth:`Replica.keep_residual`); ``exact``: float32 values
        whatever the options say (the last exchange of a run, which leaves nothing pending); ``ids``: only these
        touched rows go (the byte budget's choice), the others wait in the working copy."""
        o = self.options
        t0 = time.perf_counter()
        num_rows, dim = replica.work.shape
        values = Values.FP32 if exact else Values(o.values)
        half = self.feedback and not exact
        if replica.host is not None:  # summed in place in shared memory
            st = _shm_stats(replica, replica.host.exchange(), ids=False)
        elif ids is None and self._goes_dense(touched := int(np.count_nonzero(replica.touched)), num_rows, dim,
                                              self.group, values):
            replica.exchange_dense(self.group, half=half)
            st = self._dense_stats(replica, touched, half)
        else:
            own = replica.change(ids)
            if ids is not None and self._goes_dense(own.n, num_rows, dim, self.group, values):
                total, st = replica.sum_dense(own, self.group, half=half), self._dense_stats(replica, own.n, half)
            else:
                total, st = replicated(own, rows=o.rows, values=values.value, mode="sparse", group=self.group,
                                       name=replica.name, transport="tcp")
            replica.add(total)
            if half:
                replica.keep_residual(own, self._sent(own, st.mode == "dense"))
        st.seconds = time.perf_counter() - t0
        return st

    def _sent(self, own: RowSparse, dense: bool) -> torch.Tensor:
        """This rank's change as the sum received it: as the codec rounds it in a message, or rounded to float16
        by a dense all-reduce; ``own``'s own rows without error feedback."""
        if not self.feedback:
            return own.values
        return as_wire(own.values, Values.FP16.value if dense else self.options.values)

    def _flush(self) -> list[ExchangeStats]:
        """Send every rank's pending residual, and the rows a byte budget held back, in float32, so that no update
        is lost at the end of training and every rank's working copy is the agreed reference; [] without error
        feedback or budget. Collective."""
        if not (self.feedback or self.budget is not None):
            return []
        stats = []
        for replica in self.replicas:
            replica.send_pending()
            with self.watch.guard(self.step, f"the last exchange of {replica.name}"):
                stats.append(self._replicated(replica, exact=True))
        return stats

    # ----------------------------------------------------------------------------- agreeing and accounting
    @staticmethod
    def _vote(results: list[tuple], want_stop: bool, due: bool) -> torch.Tensor:
        """This rank's part of the step's agreement: its loss and pairs, whether it wants to stop, whether it
        (rank 0) wants a checkpoint; summed over the ranks."""
        return torch.tensor([sum(r[0] for r in results), sum(r[1] for r in results), float(want_stop), float(due)],
                            dtype=torch.float64)

    def _agree(self, vote: torch.Tensor) -> None:
        """Sum the step's votes over all ranks now (one small all-reduce, synchronous steps) and count them."""
        with self.watch.guard(self.step, "the end of the step"):
            dist.all_reduce(vote, group=self.group)
        self._count(vote)

    def _count(self, vote: torch.Tensor) -> None:
        """A step's summed votes: its loss and pairs join the model's epoch (a UserError when the loss is not
        finite), a stop or checkpoint any rank asked for is acted on by the next decision (:attr:`wants`)."""
        loss, pairs, stop, due = vote.tolist()
        self.model.advance(self.schedule, self.model.position.job, loss, int(pairs))
        self.wants = [self.wants[0] or stop > 0, self.wants[1] or due > 0]

    def _advance(self, schedule: Schedule, first: int, per_step: int) -> None:
        """Move the model past the step's jobs (their loss is counted when their vote lands); drop their corpus
        pages."""
        last = min(first + per_step, schedule.n_jobs)
        self.model.advance(schedule, last, 0.0, 0)
        self.model.corpus.release(*schedule.tokens(first, last))

    def _log_step(self, run: _Run, compute_s: float, exchange_s: float, stats: list[ExchangeStats],
                  jobs: int) -> None:
        m, reporter = self.model, run.reporter
        if reporter.metrics is not None:
            dense = sum(self._ring_bytes(*r.work.shape) for r in self.replicas)
            record = {
                "step": run.totals["steps"], "time": round(time.time(), 3), "epoch": m.position.epoch,
                "progress": round(run.schedule.progress(m.position), 6), "rank": self.rank, "world": self.world,
                "strategy": self.options.strategy.value, "jobs": jobs,
                "compute_s": round(compute_s, 6), "exchange_s": round(exchange_s, 6),
                "exchange_cpu_s": round(self._exchange_cpu, 6), "choose_s": round(self.choose_s, 6),
                "bytes_sent": sum(st.bytes_sent for st in stats), "bytes_recv": sum(st.bytes_recv for st in stats),
                "dense_bytes": dense,
                "matrices": {st.name: {"mode": st.mode, "encoding": st.encoding, "density": round(st.density, 6),
                                       "rows": st.rows, "bytes_sent": st.bytes_sent, "bytes_recv": st.bytes_recv,
                                       "seconds": round(st.seconds, 6),
                                       "phases": {k: round(v, 6) for k, v in st.phases.items()}} for st in stats},
            }
            if self.owners is not None:
                record["shard_loads"] = [int(x) for x in self.owners.loads]
            reporter.metrics.write(json.dumps(record) + "\n")
        m.report(run.schedule, reporter)

    def _end_epoch(self, run: _Run) -> None:
        self.model.end_epoch(run.schedule, run.reporter)
        if run.out_dir is not None:
            self.checkpoint(run.out_dir, background=True)
        run.last_checkpoint = time.perf_counter()

    def checkpoint(self, out_dir: Path, background: bool = False) -> None:
        """Rank 0 saves the agreed matrices (the reference; sharded: every owner's rows) as a single-process
        checkpoint; collective (every rank must call it). With ``background`` rank 0 copies them and writes the
        copies while training goes on (:meth:`Word2Vec.save_in_background`; :meth:`train` waits for the write
        before it returns).

        With an exchange in flight (``overlap``) the reference lacks the last step's changes, so the checkpoint
        is the state before that step (its position and history, :attr:`agreed`): a run resumed from it trains
        that step again. Saving it does not wait for the exchange, which goes on in the background."""
        saved_after = self.step - (1 if self.in_flight else 0)  # in flight: the state before this step

        def saved() -> None:  # rank 0 names it once it is on disk; a failure before then resumes from the one before
            if saved_after > 0:
                self.watch.resume_point = f"the checkpoint of step {saved_after}"

        with self.watch.guard(self.step, "a checkpoint"):
            self._consolidate()
            if self.rank == 0:  # the reference, not a working copy holding this rank's residuals
                state = self._before_step() if self.in_flight else self._agreed_state()
                if background:
                    self.model.save_in_background(out_dir, state, on_saved=saved)
                else:
                    self.model.save_state(out_dir, state)
            dist.barrier(group=self.group)
        if self.rank != 0 or not background:
            saved()

    def _before_step(self) -> TrainingState:
        """With this step's exchange in flight: the state before the step (:attr:`agreed`), its hot rows as they
        were then too (their syncs during the step already moved the reference on; a run resumed from the state
        trains the step again)."""
        state = self.agreed
        if self.hot_agreed is None:
            return state
        syn = [state.syn0.copy(), state.syn1.copy()]
        for matrix, hot in zip(syn, self.hot_agreed, strict=True):
            matrix[:hot.shape[0]] = hot
        return replace(state, syn0=syn[0], syn1=syn[1])

    def _agreed_state(self) -> TrainingState:
        """The state every rank agrees on now: the references (replicated; the same bits on every rank, and
        equal to the working copies except for residuals of error feedback) or, sharded, the consolidated model."""
        if self.owners is not None:
            return self.model.snapshot()
        m = self.model
        return TrainingState(self.replicas[0].ref, self.replicas[1].ref, m.position, m.history)

    def _consolidate(self) -> None:
        if self.owners is not None:
            for replica in self.replicas:
                self.owners.consolidate(replica, self.group)


@dataclass
class _Run(TrainingRun):
    """One call of :meth:`DataParallelTrainer.train`."""

    stop_after_steps: int | None = None
    per_step: int = 1
    lead: bool = False
    totals: dict[str, Any] = field(default_factory=lambda: {"steps": 0, "jobs": 0, "bytes_sent": 0, "bytes_recv": 0,
                                                            "exchange_s": 0.0, "compute_s": 0.0})


def _shm_stats(replica: Replica, n: int, ids: bool = True) -> ExchangeStats:
    """Stats of an exchange through shared memory of ``n`` rows (float32 values, and their ids with ``ids``; the
    same bytes in and out)."""
    num_rows, dim = replica.work.shape
    nbytes = n * (8 * ids + 4 * dim)
    return ExchangeStats(replica.name, "replicated", "shm", "shm", n / max(num_rows, 1), n, nbytes, nbytes, 0.0)
