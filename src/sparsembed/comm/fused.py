"""The fused exchange: every sparse gradient of a model's step and its small dense ones in one message per rank.

Per rank, one message: a header of sizes (int64: the dense part's bytes, then each segment's), the small dense
gradients as raw float32, then per table a segment ``n, ids [n] int64, rows [n, dim] float32``
(:func:`~sparsembed.comm.messages.pack_raw`), each 8-byte aligned. Every rank sums all messages in rank order, so
replicas stay bit-identical. How the messages travel, one round in the steady state:

* ranks on one host: :class:`~sparsembed.comm.transport.SharedSlots` (grown together when a message outgrows
  them); a table the sizes send dense (:func:`~sparsembed.comm.policy.goes_dense`, shared) is then summed by a
  dense exchange of its own;
* otherwise, while no table is large enough for a dense path: the sizes ride in the header of a
  :class:`~sparsembed.comm.transport.PaddedAllGather`;
* otherwise every rank first learns every segment's size (one small all-gather), all take the same per-table
  decisions, and the dense part and the sparse tables travel in one all-gather padded to the largest message.

Messages are host bytes whatever device the gradients are on. Over NCCL (:mod:`sparsembed.comm.device`) the
all-gathers are staged through a CUDA buffer, shared memory is never used (its slots announce over gloo), and a
table that goes dense is summed on the device.

This module knows nothing of ``nn.Module``: :func:`sparsembed.nn.parallel.parallel`'s sync hands it plain tensors
and applies the sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from sparsembed.comm import shm
from sparsembed.comm.dense import dense_rows_on_wire, touched_rows
from sparsembed.comm.device import device_wire, to_host
from sparsembed.comm.messages import coalesce_keyed, pack_raw, unpack_raw
from sparsembed.comm.policy import Mode, Transport, goes_dense, parse
from sparsembed.comm.replicated import replicated
from sparsembed.comm.stats import ExchangeStats
from sparsembed.comm.transport import Link, PaddedAllGather, SharedSlots, rank_world
from sparsembed.rows.coalesce import RowSparse

__all__ = ["FusedExchange", "Segment", "FusedSums", "EAGER_CAPACITY", "SHARED_CAPACITY", "DENSE_PATH_MIN_BYTES"]

#: Bytes each rank sends in the first all-gather round at first (grows to fit the messages seen).
EAGER_CAPACITY = 64 << 10
#: Initial bytes of a rank's shared-memory slot (grown to 5/4 of a larger message).
SHARED_CAPACITY = 1 << 20
#: A row-sparse table takes the dense path only when that moves at least this many bytes; below it the extra
#: round trip costs more than the bytes saved.
DENSE_PATH_MIN_BYTES = 1 << 20


class Segment(NamedTuple):
    """One table's gradient on this rank: sorted distinct ``ids`` (row ids, or keys when ``num_rows`` is None)
    and their float32 ``values [n, dim]``; ``name`` labels its stats. Only tables with ``num_rows`` may go dense."""

    name: str
    ids: torch.Tensor
    values: torch.Tensor
    num_rows: int | None = None


@dataclass
class FusedSums:
    """What :meth:`FusedExchange.exchange` returns: per segment (input order) the sorted distinct ids or keys
    some rank sent and their summed float32 rows (on the host; over NCCL, a table that went dense on the device);
    the summed dense tensors (input order and shapes, on the host); the stats."""

    rows: list[tuple[torch.Tensor, torch.Tensor]]
    dense: list[torch.Tensor]
    stats: list[ExchangeStats] = field(default_factory=list)


@dataclass
class _Received:
    """Every rank's message (``blocks``) and where its parts lie: part ``k`` of rank ``r`` is ``lengths[r, k]``
    bytes at ``starts[r, k]``; part 0 is the dense part, ``column[f]`` the part of segment ``f - 1``."""

    blocks: list[np.ndarray]
    starts: np.ndarray
    lengths: np.ndarray
    column: dict[int, int]
    dense_path: list[bool]

    def part(self, r: int, k: int) -> np.ndarray:
        return self.blocks[r][self.starts[r, k] : self.starts[r, k] + self.lengths[r, k]]


class FusedExchange:
    """The fused exchange of one process group; its link is chosen on first use (collectively).

    Args:
        group: process group (default: the world).
        transport: ``"auto"``: shared memory when every rank is on this host; ``"tcp"``: always gloo.

    Attributes:
        eager_capacity: first-round bytes of the all-gather, at first (it grows with the messages).
        shared_capacity: initial bytes of a shared-memory slot.
        dense_path_min_bytes: ring bytes below which a table stays sparse whatever its density.
    """

    def __init__(self, group: Any = None, transport: Transport | str = Transport.AUTO) -> None:
        self.group = group
        self.transport = parse(transport, Transport, "transport")
        self.eager_capacity = EAGER_CAPACITY
        self.shared_capacity = SHARED_CAPACITY
        self.dense_path_min_bytes = DENSE_PATH_MIN_BYTES
        self._link: Link | None = None

    def link(self) -> Link:
        """Shared-memory slots when allowed, the group carries host tensors (gloo) and every rank is on this host,
        else a padded all-gather (decided once, collectively, on first use)."""
        if self._link is None:
            if self.transport is Transport.AUTO and not device_wire(self.group) and shm.one_host(self.group):
                self._link = SharedSlots(self.group, self.shared_capacity)
            else:
                self._link = PaddedAllGather(self.group, self.eager_capacity)
        return self._link

    def exchange(self, segments: list[Segment], mode: Mode | str, dense: Sequence[torch.Tensor] = ()) -> FusedSums:
        """Sum every rank's ``segments`` (host tensors) and float32 ``dense`` tensors (any device; the sums are
        on the host) (world > 1). Collective: every rank passes the same tables in the same order, and ``mode``
        (``auto``, ``sparse``, ``dense``) for the row tables."""
        mode = parse(mode, Mode, "mode")
        rank, world = rank_world(self.group)
        flat = to_host(torch.cat([t.reshape(-1).float() for t in dense])) if dense else torch.zeros(0)
        packed = [pack_raw(s.ids, s.values) for s in segments]
        mine = [flat.numel() * 4] + [m.shape[0] for m in packed]
        link = self.link()
        if not link.shared and any(self._may_go_dense(mode, s, world) for s in segments):
            got = self._sizes_first(link, mode, segments, flat, packed, mine)
        else:
            got = self._sizes_in_header(link, mode, segments, flat, packed, mine)
        sums: list[Any] = [None] * len(segments)
        stats = []
        for f in got.column:
            if f:  # part 0 is the dense part
                sums[f - 1], st = _sum_segment(got, f, segments[f - 1], rank, world)
                stats.append(st)
        for j, seg in enumerate(segments):  # tables dense enough for a dense all-reduce: a second round, these only
            if got.dense_path[j]:
                sums[j], st = self._dense_table(seg)
                stats.append(st)
        out = FusedSums(sums, [], stats)
        if dense:
            total = torch.zeros(flat.numel())
            for r in range(world):
                total += torch.from_numpy(got.part(r, 0).view(np.float32))
            offset = 0
            for t in dense:
                out.dense.append(total[offset : offset + t.numel()].view_as(t))
                offset += t.numel()
            sent = (world - 1) * int(got.lengths[rank, 0])
            stats.append(ExchangeStats("dense", "fused", "dense", "dense", 1.0, len(dense), sent, sent, 0.0))
        return out

    def _dense_table(self, seg: Segment) -> tuple[tuple[torch.Tensor, torch.Tensor], ExchangeStats]:
        """A table the sizes send dense: one dense sum, then only the rows some rank touched; over NCCL on the
        device (the result stays there: the matrix never crosses to the host)."""
        if device_wire(self.group):
            ids, vals, st = dense_rows_on_wire(seg.ids, seg.values, seg.num_rows, self.group, seg.name)
            return (ids, vals), st
        rs = RowSparse.from_sorted(seg.ids, seg.values, seg.num_rows)
        summed, st = replicated(rs, mode="dense", group=self.group, name=seg.name)
        return touched_rows(rs.ids, summed.values, self.group), st

    def _may_go_dense(self, mode: Mode, seg: Segment, world: int) -> bool:
        """Whether :meth:`_goes_dense` could say yes for this table whatever the sizes: asked with the largest
        segment the table can make (every row) on every rank."""
        if seg.num_rows is None:
            return False
        largest = 8 + seg.num_rows * (8 + 4 * seg.values.shape[1])
        return self._goes_dense(mode, np.full(world, largest, np.int64), seg, world, False)

    def _goes_dense(self, mode: Mode, sizes: np.ndarray, seg: Segment, world: int, shared: bool) -> bool:
        """The policy's decision for a row table from every rank's segment size (keys never go dense)."""
        if seg.num_rows is None:
            return False
        dense_bytes = seg.num_rows * seg.values.shape[1] * 4
        return goes_dense(mode, sizes, dense_bytes, world, shared=shared, min_ring_bytes=self.dense_path_min_bytes)

    def _sizes_first(self, link: PaddedAllGather, mode: Mode, segments: list[Segment], flat: torch.Tensor,
                     packed: list[np.ndarray], mine: list[int]) -> _Received:
        """Sizes first, then only the dense part and the tables that stay sparse, in one padded all-gather."""
        rank, world = link.rank, link.world
        sizes = link.gather_ints(mine)
        dense_path = [self._goes_dense(mode, sizes[:, 1 + f], s, world, False) for f, s in enumerate(segments)]
        include = [0] + [1 + f for f in range(len(segments)) if not dense_path[f]]
        lengths = sizes[:, include]
        padded = (lengths + 7) // 8 * 8
        starts = np.concatenate([np.zeros((world, 1), np.int64), np.cumsum(padded, axis=1)], axis=1)
        msg = _layout([flat.numpy().view(np.uint8)] + [packed[f - 1] for f in include[1:]], starts[rank])
        blocks = link.gather_sized(msg, padded.sum(axis=1))
        return _Received(blocks, starts, lengths, {f: k for k, f in enumerate(include)}, dense_path)

    def _sizes_in_header(self, link: Link, mode: Mode, segments: list[Segment], flat: torch.Tensor,
                         packed: list[np.ndarray], mine: list[int]) -> _Received:
        """Everything at once, the sizes in each message's header; through shared memory, the tables the sizes
        send dense are then left out of the sum (they go by a dense exchange of their own)."""
        world = link.world
        head = 8 * len(mine)
        own_starts = head + np.concatenate([[0], np.cumsum([(m + 7) // 8 * 8 for m in mine])])
        msg = _layout([np.asarray(mine, np.int64).view(np.uint8), flat.numpy().view(np.uint8), *packed],
                      [0, *own_starts])
        blocks = link.gather(msg)
        lengths = np.stack([b[:head].view(np.int64) for b in blocks])
        padded = (lengths + 7) // 8 * 8
        starts = head + np.concatenate([np.zeros((world, 1), np.int64), np.cumsum(padded, axis=1)], axis=1)
        dense_path = [link.shared and self._goes_dense(mode, lengths[:, 1 + f], s, world, True)
                      for f, s in enumerate(segments)]
        include = [0] + [1 + f for f in range(len(segments)) if not dense_path[f]]
        return _Received(blocks, starts, lengths, {f: f for f in include}, dense_path)


def _sum_segment(got: _Received, f: int, seg: Segment, rank: int, world: int
                 ) -> tuple[tuple[torch.Tensor, torch.Tensor], ExchangeStats]:
    """Part ``f`` (segment ``seg``) of every rank's message, summed in rank order, and its stats."""
    k = got.column[f]
    dim = seg.values.shape[1]
    parts = [unpack_raw(got.part(r, k), dim) for r in range(world)]
    summed = coalesce_keyed(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    n_own = int(seg.ids.shape[0])
    sent, recv = (world - 1) * int(got.lengths[rank, k]), int(got.lengths[:, k].sum() - got.lengths[rank, k])
    density = float("nan") if seg.num_rows is None else n_own / max(seg.num_rows, 1)
    return summed, ExchangeStats(seg.name, "fused", "sparse", "keys", density, n_own, sent, recv, 0.0)


def _layout(segments: list[np.ndarray], starts: Any) -> np.ndarray:
    """One message: segment ``k`` at byte ``starts[k]`` (8-byte aligned offsets), zero padding between."""
    end = int(starts[len(segments) - 1]) + segments[-1].shape[0]
    msg = np.zeros((end + 7) // 8 * 8, np.uint8)
    for k, seg in enumerate(segments):
        msg[int(starts[k]) : int(starts[k]) + seg.shape[0]] = seg
    return msg
