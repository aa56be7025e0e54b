"""Dense sums: the fallback of a replicated exchange whose touched rows are too many, and dense parameters.

A step that :func:`sparsembed.comm.policy.goes_dense` sends dense sums the whole matrix instead of its rows:

* over gloo (:func:`sum_all_reduce`): each rank densifies its raw gradient (duplicates summed in order of
  appearance, never coalesced) into a reused zeroed matrix in row blocks, each block's ``all_reduce`` started as
  soon as it is filled, so densifying block k+1 overlaps the all-reduce of block k;
* through shared memory (:func:`sum_shared`): each rank densifies into its slot, one announcement, then every rank
  adds all slots in rank order (the same bits everywhere).

:func:`touched_rows` keeps, after a dense sum, only the rows some rank touched (what lazy optimizers need);
:func:`dense_all_reduce` sums dense parameters in buckets, on whatever device they live (gloo and NCCL both
all-reduce CUDA tensors). Over NCCL (:mod:`sparsembed.comm.device`) the dense fallback densifies and all-reduces on
the device (:func:`sum_on_device`, :func:`dense_rows_on_wire`): the matrix is the size of the parameter, and
NCCL's all-reduce of it costs less than a round trip of it through the host.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numba
import numpy as np
import torch
import torch.distributed as dist

from sparsembed.comm.device import device_wire, wire_device
from sparsembed.comm.policy import ring_bytes
from sparsembed.comm.stats import Clock, ExchangeStats
from sparsembed.comm.transport import rank_world
from sparsembed.errors import UserError
from sparsembed.rows.coalesce import RowSparse

__all__ = ["sum_all_reduce", "sum_shared", "sum_on_device", "dense_rows_on_wire", "touched_rows", "dense_all_reduce",
           "DENSE_BLOCK_BYTES"]

#: Dense fallback: rows are densified and all-reduced in blocks of about this many bytes, so that densifying
#: block k+1 overlaps the all-reduce of block k (gloo runs it on its own thread; the kernel releases the GIL).
DENSE_BLOCK_BYTES = 32 << 20


_DENSE: list[torch.Tensor] = []  # dense fallback matrices, reused once nothing else references them


def _dense_matrix(num_rows: int, dim: int, zero: bool = True) -> torch.Tensor:
    """A zeroed float32 ``num_rows x dim`` matrix, reusing a cached one that no caller still holds.

    A fresh matrix pays its page faults during the all-reduce, and ``torch.zeros`` its memset too; ``zero_()`` on
    a warm one costs less (measured, see BENCHMARKS.md). Two are kept, so a caller that holds the previous result
    until the next step does not force a fresh one every step.
    """
    for buf in _DENSE:
        if buf.shape == (num_rows, dim) and _unshared(buf):
            return buf.zero_() if zero else buf
    buf = torch.from_numpy(np.zeros((num_rows, dim), np.float32))  # calloc: lazily zeroed (huge) pages
    _DENSE.insert(0, buf)
    del _DENSE[2:]
    return buf


def _unshared(buf: torch.Tensor) -> bool:
    """True when only ``_DENSE`` references ``buf``: no other Python reference, no view of its storage."""
    probe = torch.empty(1)
    baseline = torch._C._storage_Use_Count(probe.untyped_storage()._cdata)  # counts the probing storage object
    refs = sys.getrefcount(buf)  # the list, the caller's loop variable and this argument
    return refs <= 4 and torch._C._storage_Use_Count(buf.untyped_storage()._cdata) <= baseline


def sum_all_reduce(grad: RowSparse, group: Any, clock: Clock) -> RowSparse:
    """Every rank's ``grad`` summed densely over gloo: all rows, ``ids = arange(num_rows)``. Collective.

    Over NCCL the sum runs on the device (:func:`sum_on_device`) and is copied back to the host, as this host-side
    API returns it; :func:`sparsembed.comm.replicated.replicated_rows` keeps it on the device."""
    num_rows, dim = grad.num_rows, grad.dim
    if device_wire(group):
        dense = sum_on_device(grad.ids, grad.values, num_rows, group).cpu()
    elif grad.is_coalesced() and grad.n == num_rows and grad.dtype == torch.float32:
        dense = grad.values  # every row present, in row order: already the dense matrix
        dist.all_reduce(dense, group=group)
    else:
        dense = _dense_matrix(num_rows, dim)
        per_block = max(1, DENSE_BLOCK_BYTES // max(4 * dim, 1))
        nblocks = max(1, -(-num_rows // per_block))
        ids = grad.ids.numpy()
        vals = grad.values.float().numpy() if grad.n else np.zeros((0, dim), np.float32)
        order, starts = _block_order(ids, per_block, nblocks)
        works = []
        for k in range(nblocks):
            _scatter_rows(dense.numpy(), ids, vals, order, starts[k], starts[k + 1])
            lo, hi = k * per_block, min(num_rows, (k + 1) * per_block)
            works.append(dist.all_reduce(dense[lo:hi], group=group, async_op=True))
        for w in works:
            w.wait()
    clock.lap("dense_all_reduce")
    return RowSparse.from_sorted(torch.arange(num_rows), dense, num_rows)


def sum_shared(grad: RowSparse, slots: Any, clock: Clock) -> RowSparse:
    """Every rank's ``grad`` summed densely through shared memory (:class:`sparsembed.comm.shm.HostSlots` of at
    least ``num_rows * dim * 4`` bytes): all rows, ``ids = arange(num_rows)``. Collective.

    Uses the slots of the round that decided to go dense (nobody reads those messages), then moves to the
    other parity."""
    num_rows, dim = grad.num_rows, grad.dim
    nbytes = num_rows * dim * 4
    mats = slots.slots()[:, :nbytes].view(np.float32).reshape(slots.world, num_rows, dim)
    mine = mats[slots.rank]
    vals = grad.values.float().numpy() if grad.n else np.zeros((0, dim), np.float32)
    _densify(mine, grad.ids.numpy(), vals, np.zeros(num_rows, np.uint8))  # no zeroing pass first
    clock.lap("densify")
    slots.publish(nbytes)
    clock.lap("dense_round")
    dense = _dense_matrix(num_rows, dim, zero=False)
    _sum_slots(dense.numpy(), mats)
    slots.advance()
    clock.lap("dense_sum")
    return RowSparse.from_sorted(torch.arange(num_rows), dense, num_rows)


def sum_on_device(ids: torch.Tensor, vals: torch.Tensor, num_rows: int, group: Any) -> torch.Tensor:
    """Every rank's rows (``ids`` may repeat) summed densely by one all-reduce on the wire's device
    (:func:`~sparsembed.comm.device.wire_device`): a ``num_rows x dim`` float32 matrix there. Collective."""
    wire = wire_device(group)
    dense = torch.zeros(num_rows, vals.shape[1], dtype=torch.float32, device=wire)
    dense.index_add_(0, ids.to(wire), vals.to(wire, torch.float32))
    dist.all_reduce(dense, group=group)
    return dense


def dense_rows_on_wire(ids: torch.Tensor, vals: torch.Tensor, num_rows: int, group: Any, name: str = ""
                       ) -> tuple[torch.Tensor, torch.Tensor, ExchangeStats]:
    """The dense path over NCCL: every rank's rows (sorted distinct ``ids``, float32 ``vals``) summed on the
    wire's device (:func:`sum_on_device`), then only the rows some rank touched (:func:`touched_rows`), left on
    that device; and the stats. Collective."""
    t0 = time.perf_counter()
    _, world = rank_world(group)
    n = int(ids.shape[0])
    out_ids, out_vals = touched_rows(ids, sum_on_device(ids, vals, num_rows, group), group)
    ring = ring_bytes(num_rows * vals.shape[1] * 4, world)
    stats = ExchangeStats(name, "replicated", "dense", "dense", n / max(num_rows, 1), n, ring, ring, 0.0)
    stats.seconds = time.perf_counter() - t0
    return out_ids, out_vals, stats


def touched_rows(own: torch.Tensor, dense: torch.Tensor, group: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """After a dense sum: only the rows some rank touched (``own``: this rank's row ids), so that lazy optimizers
    update the same rows as with a sparse exchange (an untouched row's Adam moments must not move); costs a byte
    a row. The mask travels on the wire's device; the result is on ``dense``'s. Collective."""
    wire = wire_device(group)
    mask = torch.zeros(dense.shape[0], dtype=torch.uint8, device=wire)
    mask[own.to(wire)] = 1
    dist.all_reduce(mask, op=dist.ReduceOp.MAX, group=group)
    ids = mask.nonzero().squeeze(1).to(dense.device)
    return ids, dense.index_select(0, ids)


def dense_all_reduce(
    tensors: list[torch.Tensor], *, bucket_bytes: int = 25 << 20, group: Any = None, name: str = ""
) -> ExchangeStats:
    """Sum dense float tensors over all ranks in place, packed into buckets of about ``bucket_bytes``.

    Small tensors share one all_reduce (one latency instead of many); a tensor larger than a bucket goes alone.
    """
    t0 = time.perf_counter()
    _, world = rank_world(group)
    total = sum(t.numel() * t.element_size() for t in tensors)
    if world > 1:
        for bucket in _buckets(tensors, bucket_bytes):
            if len(bucket) == 1:
                dist.all_reduce(bucket[0], group=group)
                continue
            flat = torch.cat([t.reshape(-1) for t in bucket])
            dist.all_reduce(flat, group=group)
            offset = 0
            for t in bucket:
                t.view(-1).copy_(flat[offset : offset + t.numel()])
                offset += t.numel()
    ring = ring_bytes(total, world)
    rows = sum(t.shape[0] if t.dim() else 1 for t in tensors)
    return ExchangeStats(name, "dense", "dense", "dense", 1.0, rows, ring, ring, time.perf_counter() - t0)


def _buckets(tensors: list[torch.Tensor], bucket_bytes: int) -> list[list[torch.Tensor]]:
    buckets: list[list[torch.Tensor]] = []
    size = bucket_bytes
    for t in tensors:
        if not t.is_contiguous():
            raise UserError("exchange: dense tensors must be contiguous")
        nbytes = t.numel() * t.element_size()
        same = buckets and buckets[-1][0].dtype == t.dtype
        if size + nbytes > bucket_bytes or not same:
            buckets.append([])
            size = 0
        buckets[-1].append(t)
        size += nbytes
    return buckets


# -- compiled kernels ---------------------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _block_order(ids, per_block, nblocks):  # pragma: no cover - compiled
    """Stable counting sort of positions by row block ``ids // per_block``: (order, nblocks + 1 starts)."""
    starts = np.zeros(nblocks + 1, np.int64)
    for i in range(ids.shape[0]):
        starts[ids[i] // per_block + 1] += 1
    for k in range(nblocks):
        starts[k + 1] += starts[k]
    fill = starts[:-1].copy()
    order = np.empty(ids.shape[0], np.int64)
    for i in range(ids.shape[0]):
        k = ids[i] // per_block
        order[fill[k]] = i
        fill[k] += 1
    return order, starts


@numba.njit(cache=True, nogil=True)
def _scatter_rows(dense, ids, vals, order, start, stop):  # pragma: no cover - compiled
    """``dense[ids[p]] += vals[p]`` for ``p`` in ``order[start:stop]``, in that order."""
    dim = dense.shape[1]
    for k in range(start, stop):
        p = order[k]
        r = ids[p]
        for c in range(dim):
            dense[r, c] += vals[p, c]


@numba.njit(cache=True, nogil=True)
def _densify(dense, ids, vals, seen):  # pragma: no cover - compiled
    """``dense = `` the sum of ``vals[p]`` into row ``ids[p]``, in order of appearance, and 0 in rows no id names;
    ``seen``: zeroed marks, one per row. Writes each row once where a zeroing pass then an add would write it twice
    (measured faster, see BENCHMARKS.md)."""
    dim = dense.shape[1]
    for p in range(ids.shape[0]):
        r = ids[p]
        if seen[r]:
            for c in range(dim):
                dense[r, c] += vals[p, c]
        else:
            seen[r] = 1
            for c in range(dim):
                dense[r, c] = vals[p, c]
    for r in range(dense.shape[0]):
        if not seen[r]:
            for c in range(dim):
                dense[r, c] = 0.0


@numba.njit(cache=True, nogil=True)
def _sum_slots(out, mats):  # pragma: no cover - compiled
    """``out = mats[0] + mats[1] + ...`` (rank order), row by row."""
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            total = mats[0, r, c]
            for q in range(1, mats.shape[0]):
                total += mats[q, r, c]
            out[r, c] = total
