"""The replica of one matrix on one rank: the working copy the kernel trains, the agreed reference, the touched rows.

A data-parallel step trains every rank's working copy from the same reference; the kernel marks each row it may
change. :meth:`Replica.change` takes the change of the touched rows (``work - reference``) as sorted distinct
rows; :meth:`Replica.add` adds the sum of all ranks' changes to the reference and gives every working row the new
value, or, for a row touched since the change was taken (``overlap``), adds the others' part to its newer value.
Ranks on one host keep the reference and marks in shared memory (:class:`~sparsembed.comm.shm.HostMatrix`), or
put their change into a slot the peers read in place (:class:`~sparsembed.comm.shm.HostSlots`,
:meth:`Replica.put_shared` / :meth:`Replica.add_shared`).

Error feedback: where a rank's change travels rounded (fp16, int8), :meth:`Replica.keep_residual` puts what the
rounding dropped back into the rank's working rows and keeps them touched, so it is part of the next change: no
update is lost, and a row's pending residual stays within one rounding step of its last change. The reference
stays the agreed sum. The row loops are compiled (numba, no GIL).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import torch
import torch.distributed as dist

from sparsembed.comm.shm import HostMatrix, HostSlots
from sparsembed.rows.coalesce import RowSparse

__all__ = ["HotInFlight", "Replica", "slot_bytes"]


#: Values of a row whose change a byte budget weighs (:meth:`Replica.weigh`): the whole row's norm would read every
#: touched row of both matrices twice over, the largest pass of a step's exchange on the training thread.
WEIGH_VALUES = 16


@dataclass
class HotInFlight:
    """A sum of the hot rows under way (:meth:`Replica.start_hot`): the rows, the reference each matrix had when its
    change was taken, what this rank contributed (float32; rounded where the sum runs in float16), which rows kept
    a residual of that rounding, the buffer the sum lands in and torch's handle of the all-reduce."""

    rows: int
    old: list[np.ndarray]
    sent: np.ndarray
    rounded: np.ndarray
    total: torch.Tensor
    handle: Any


class Replica:
    """One matrix of one rank: the working copy the kernel trains, the reference all ranks agree on, the
    rows touched since the last exchange."""

    def __init__(self, name: str, work: np.ndarray, host: HostMatrix | None = None) -> None:
        self.name = name
        self.work = work
        self.host = host  # ranks on one host: the reference and the marks live in shared memory, one reference
        self.ref = work.copy() if host is None else host.ref
        self.touched = np.zeros(work.shape[0], dtype=np.uint8) if host is None else host.touched
        # error feedback: rows whose working copy holds a residual the last message rounded away; it travels the
        # next time training touches the row (or in the run's last, exact exchange), not in every step's message
        self.pending = np.zeros(work.shape[0], dtype=np.uint8)
        self.dense: torch.Tensor | None = None
        self.dense_half: torch.Tensor | None = None

    def change(self, ids: np.ndarray | None = None) -> RowSparse:
        """This rank's change since the last exchange, as sorted distinct rows (a pending residual of a touched
        row included); clears the touched marks, and the pending marks of the rows taken. ``ids``: only these
        touched rows (sorted; a byte budget's choice, :mod:`~sparsembed.dataparallel.budget`), the others stay
        touched and keep their change for a later step."""
        if ids is None:
            ids = np.flatnonzero(self.touched)
            self.touched[:] = 0
        else:
            self.touched[ids] = 0
        self.pending[ids] = 0
        values = np.empty((ids.shape[0], self.work.shape[1]), dtype=np.float32)
        _gather_change(self.work, self.ref, ids, values)
        return RowSparse.from_sorted(torch.from_numpy(ids), torch.from_numpy(values), self.work.shape[0])

    def touched_rows(self) -> np.ndarray:
        """The rows touched since the last exchange, sorted."""
        return np.flatnonzero(self.touched)

    def weigh(self, ids: np.ndarray) -> np.ndarray:
        """What a byte budget ranks the rows of ``ids`` by: the squared norm of each row's change over its first
        :data:`WEIGH_VALUES` values, an estimate of the whole row's (an embedding's coordinates are alike) read
        from one or two cache lines of each row instead of all of them."""
        weights = np.empty(ids.shape[0], dtype=np.float64)
        _weights(self.work, self.ref, ids, weights, min(WEIGH_VALUES, self.work.shape[1]))
        return weights

    def add(self, total: RowSparse | torch.Tensor, own: RowSparse | None = None) -> None:
        """Add the summed change of all ranks (sparse rows, or a dense matrix) to the reference.

        Rows untouched since the change was taken take the new reference; with ``own`` (the change this rank
        sent, when it went on training while the exchange ran, see ``overlap``) a row touched since keeps its
        newer change: ``work += total - own``; a row holding a pending residual keeps it: ``work += total``."""
        if own is not None:
            _retract(self.work, self.touched, own.ids.numpy(), own.values.numpy())
        if isinstance(total, torch.Tensor):
            _apply_dense(self.ref, self.work, self.touched, self.pending, total.numpy())
        else:
            _add_rows(self.ref, self.work, self.touched, self.pending, total.ids.numpy(), total.values.numpy())

    @staticmethod
    def _hot_change(replicas: Sequence[Replica], rows: int, half: bool) -> tuple[list[np.ndarray], np.ndarray,
                                                                                   torch.Tensor]:
        """What a sum of the hot rows starts from: each replica's reference of rows ``[0, rows)`` (a copy: one in
        shared memory changes under it), this rank's change of them, all replicas' in one array (residuals too),
        and the buffer to all-reduce (the change rounded to float16 where ``half``, else a float32 copy of it)."""
        old = [r.ref[:rows].copy() for r in replicas]
        change = np.concatenate([r.work[:rows] - o for r, o in zip(replicas, old, strict=True)])
        total = torch.from_numpy(change).half() if half else torch.from_numpy(change.copy())
        return old, change, total

    @staticmethod
    def sync_hot(replicas: Sequence[Replica], rows: int, group: Any, half: bool = False) -> None:
        """Sum every rank's change of rows ``[0, rows)`` of each replica now, all of them in one float32
        all-reduce, and start every rank's working copy of them from the new reference (the most frequent words'
        rows, synced after each round of a step so that no rank moves them far on its own; see
        :mod:`sparsembed.dataparallel.options`). Collective. One all-reduce for all matrices, not one each: beyond
        a few hosts a step's hot syncs are dozens of small all-reduces, each a ring of ``2 (N - 1)`` messages, and
        their latency is most of the step.

        ``half``: the all-reduce runs in float16 (half the bytes, the hot syncs being most of what ranks on
        different hosts send beyond two); what rounding a rank's change dropped stays in its working rows, marked
        pending, and goes with the next sync (or the run's last, exact exchange).

        Their marks are cleared: the step's exchange leaves these rows to this sync. A reference in shared memory is
        written by every rank with the same values, after every rank has read it (each reads before the
        all-reduce, which no rank leaves before all have entered it)."""
        old, change, total = Replica._hot_change(replicas, rows, half)
        residual = change - total.float().numpy() if half else None
        dist.all_reduce(total, group=group)
        summed = total.float().numpy()
        for k, (replica, before) in enumerate(zip(replicas, old, strict=True)):
            part = slice(k * rows, (k + 1) * rows)
            fresh = before + summed[part]
            replica.ref[:rows] = fresh
            replica.work[:rows] = fresh
            replica.touched[:rows] = 0
            replica.pending[:rows] = 0
            if residual is not None:
                replica.work[:rows] += residual[part]
                replica.pending[:rows] = np.any(residual[part] != 0, axis=1)

    @staticmethod
    def start_hot(replicas: Sequence[Replica], rows: int, group: Any, half: bool = False) -> HotInFlight:
        """Like :meth:`sync_hot`, but the all-reduce runs in the background while training goes on (``--overlap``):
        this takes every rank's change of rows ``[0, rows)`` and starts summing it; :meth:`finish_hot` waits for
        the sum and lands it. Collective, in the same order on every rank, and nothing else may use ``group``
        until it is finished. The marks are cleared as :meth:`sync_hot` clears them."""
        old, change, total = Replica._hot_change(replicas, rows, half)
        sent = total.float().numpy() if half else change
        rounded = np.any(sent != change, axis=1) if half else np.zeros(change.shape[0], dtype=bool)
        for replica in replicas:
            replica.touched[:rows] = 0
        handle = dist.all_reduce(total, group=group, async_op=True)
        return HotInFlight(rows, old, sent, rounded, total, handle)

    @staticmethod
    def finish_hot(replicas: Sequence[Replica], flight: HotInFlight) -> None:
        """Wait for a sum :meth:`start_hot` started and land it: the reference becomes the agreed rows plus the sum,
        and each working row gets the other ranks' part of it on top of whatever it trained since (``work += sum -
        own``: its own change, a rounding's residual and newer changes stay in it, to go with the next sync)."""
        flight.handle.wait()
        summed = flight.total.float().numpy()
        rows = flight.rows
        for k, (replica, before) in enumerate(zip(replicas, flight.old, strict=True)):
            part = slice(k * rows, (k + 1) * rows)
            replica.ref[:rows] = before + summed[part]
            replica.work[:rows] += summed[part] - flight.sent[part]
            replica.pending[:rows] = flight.rounded[part]

    def send_pending(self) -> None:
        """Mark every row holding a pending residual touched, so that the next change takes it (the run's last,
        exact exchange: nothing may stay behind)."""
        self.touched |= self.pending

    def exchange_dense(self, group: Any, half: bool = False) -> None:
        """Sum every rank's change of every row with one dense all-reduce, in buffers kept between steps;
        ``half``: the all-reduce runs in float16 (half the bytes; each rank's change rounded once, what the
        rounding dropped kept for the next change, :meth:`keep_residual`)."""
        own = None
        if half:  # the rows that changed, as sent before the buffer becomes the sum
            ids = np.flatnonzero(self.touched)
            values = np.empty((ids.shape[0], self.work.shape[1]), dtype=np.float32)
            _gather_change(self.work, self.ref, ids, values)
            own = RowSparse.from_sorted(torch.from_numpy(ids), torch.from_numpy(values), self.work.shape[0])
        _dense_change(self.work, self.ref, self._dense_buffer().numpy())
        self.touched[:] = 0
        self.pending[:] = 0  # every row's change went, residuals included
        self.add(self._all_reduce_dense(group, half))
        if own is not None:
            self.keep_residual(own, own.values.half().float())  # the float16 all-reduce's rounding of own rows

    def keep_residual(self, own: RowSparse, sent: torch.Tensor) -> None:
        """Error feedback, after :meth:`add`: ``own`` is this rank's change as it was taken, ``sent`` its rows as
        the sum received them (rounded). Each row not touched since gets ``own - sent`` back into its working copy
        and is marked pending: the residual goes out with the row's next change (marking it touched instead would
        send nearly every row every step); a row touched since already holds it (``add`` took ``sent``, not
        ``own``, out of it). The reference is not changed."""
        _keep_residual(self.work, self.touched, self.pending, own.ids.numpy(), own.values.numpy(), sent.numpy())

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
        return RowSparse.from_sorted(torch.from_numpy(own_ids), torch.from_numpy(values), rows)

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


@numba.njit(nogil=True, cache=True, fastmath=True)
def _weights(work, ref, ids, out, values):  # pragma: no cover - compiled
    # float32 sums in any order (fastmath): they only rank rows, and vectorised they cost a third
    for i in range(ids.shape[0]):
        r = ids[i]
        s = np.float32(0.0)
        for k in range(values):
            d = work[r, k] - ref[r, k]
            s += d * d
        out[i] = s


@numba.njit(nogil=True, cache=True)
def _dense_change(work, ref, out):  # pragma: no cover - compiled
    for r in range(work.shape[0]):
        for k in range(work.shape[1]):
            out[r, k] = work[r, k] - ref[r, k]


@numba.njit(nogil=True, cache=True)
def _apply_dense(ref, work, touched, pending, total):  # pragma: no cover - compiled
    for r in range(ref.shape[0]):
        keep = touched[r] or pending[r]
        for k in range(ref.shape[1]):
            v = ref[r, k] + total[r, k]
            ref[r, k] = v
            work[r, k] = work[r, k] + total[r, k] if keep else v


@numba.njit(nogil=True, cache=True)
def _keep_residual(work, touched, pending, ids, own, sent):  # pragma: no cover - compiled
    # A select rather than a branch per value, so that LLVM vectorises the row (3x faster); a zero difference
    # leaves the value as it was (a -0.0 stays -0.0), as the branch did.
    for i in range(ids.shape[0]):
        r = ids[i]
        if touched[r]:  # touched since the change was taken: the working row still holds own - sent
            continue
        row, mine, went = work[r], own[i], sent[i]
        differs = 0
        for k in range(row.shape[0]):
            d = mine[k] - went[k]
            x = row[k]
            row[k] = x + d if d != 0 else x
            differs += d != 0
        if differs:
            pending[r] = 1


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


def slot_bytes(rows: int, dim: int) -> int:
    """Bytes of one rank's shared-memory slot for a matrix of ``rows x dim`` (its ids, then its values)."""
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
def _add_rows(ref, work, touched, pending, ids, values):  # pragma: no cover - compiled
    for i in range(ids.shape[0]):
        r = ids[i]
        keep = touched[r] or pending[r]
        for k in range(ref.shape[1]):
            v = ref[r, k] + values[i, k]
            ref[r, k] = v
            work[r, k] = work[r, k] + values[i, k] if keep else v


@numba.njit(nogil=True, cache=True)
def _set_rows(ref, work, ids, values):  # pragma: no cover - compiled
    for i in range(ids.shape[0]):
        r = ids[i]
        for k in range(ref.shape[1]):
            ref[r, k] = values[i, k]
            work[r, k] = values[i, k]
