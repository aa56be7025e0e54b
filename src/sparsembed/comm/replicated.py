"""Replicated exchange: every rank gets the sum of every rank's row-sparse gradient.

:func:`replicated` (row ids in ``[0, num_rows)``, :class:`~sparsembed.rows.coalesce.RowSparse`) and
:func:`replicated_keyed` (arbitrary int64 keys) take one step the same way:

1. **decide**: a rank whose own distinct rows alone make :func:`~sparsembed.comm.policy.goes_dense` say yes knows
   the step goes dense (the busiest rank receives at least every other rank's message): it skips coalescing and
   encoding and announces "dense";
2. **coalesce and encode** its gradient once (:mod:`sparsembed.comm.messages`);
3. **announce**: every rank learns every message's size through its link (:mod:`sparsembed.comm.transport`: eager
   sends over TCP, shared-memory slots on one host), small messages riding along; from the sizes every rank takes
   the same sparse-or-dense decision (:func:`~sparsembed.comm.policy.goes_dense`);
4. **sparse**: collect the messages, decode the peers' and merge them in rank order, so all replicas get
   bit-identical sums, equal to a dense ``all_reduce`` of the same gradients; **dense**: one dense sum
   (:mod:`sparsembed.comm.dense`).

:func:`replicated_rows` takes coalesced rows on any device (what :func:`sparsembed.nn.parallel.parallel` sends for
a sparse weight): on a CUDA device they cross to the host once for the codec and the sums come back once; over NCCL
the decision is taken from every rank's row count first, so that a dense step sums on the device.

Every call returns an :class:`~sparsembed.comm.stats.ExchangeStats`. All calls are collective: every rank of the
group makes the same calls in the same order (an empty gradient is fine).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
import torch

from sparsembed.comm import dense
from sparsembed.comm.device import device_wire, gather_ints, to_host
from sparsembed.comm.messages import KeyMessages, RowMessages, as_wire, check_keyed, coalesce_keyed
from sparsembed.comm.policy import Mode, Transport, goes_dense, parse, ring_bytes
from sparsembed.comm.stats import Clock, ExchangeStats
from sparsembed.comm.transport import Link, collective_link, rank_world, replicated_link
from sparsembed.rows import codec
from sparsembed.rows.coalesce import RowSparse

__all__ = ["replicated", "replicated_rows", "replicated_keyed"]


def replicated(
    grad: RowSparse,
    *,
    rows: str = "auto",
    values: str = "fp32",
    compress: str | None = None,
    mode: Mode | str = Mode.AUTO,
    group: Any = None,
    name: str = "",
    transport: Transport | str = Transport.AUTO,
) -> tuple[RowSparse, ExchangeStats]:
    """Sum ``grad`` over all ranks; every rank gets the same coalesced sum.

    Args:
        grad: this rank's gradient, any ids order, duplicates allowed (coalesced in place on the sparse path).
        rows, values, compress: message encoding (see :func:`sparsembed.rows.codec.encode`); ``values="fp16"``
            rounds each rank's rows once, ``"int8"`` quantizes them per row.
        mode: ``"auto"`` picks sparse or dense from the exchanged message sizes; ``"sparse"`` / ``"dense"`` force.
        group: process group (default: the world); without an initialized group this is a local coalesce.
        transport: ``"auto"``: when every rank of the group is on this host, messages go through shared memory
            (:mod:`sparsembed.comm.shm`: an announcement instead of TCP copies); ``"tcp"``: always gloo.

    Returns:
        The summed gradient (when the dense path ran: every row, ``ids = arange(num_rows)``, values a dense
        ``num_rows x dim`` float32 matrix, reused by a later dense exchange of the same shape once nothing else
        references it) and this rank's :class:`ExchangeStats` (``phases``: seconds per phase).
    """
    mode = parse(mode, Mode, "mode")
    clock = Clock()
    rank, world = rank_world(group)
    num_rows, dim = grad.num_rows, grad.dim
    if world == 1:
        grad.coalesce_()
        return grad, ExchangeStats(name, "replicated", "sparse", "none", grad.n / max(num_rows, 1), grad.n, 0, 0, 0.0)
    transport = parse(transport, Transport, "transport")
    link = replicated_link(group, num_rows, dim, transport is Transport.AUTO and mode is not Mode.DENSE)
    dense_bytes = num_rows * dim * 4

    def too_big(own_bytes: int) -> bool:  # the sizes' lower bound: this rank's bytes, nothing from the others
        return goes_dense(Mode.AUTO, [own_bytes, 0], dense_bytes, world, shared=link.shared)

    sure_dense = mode is Mode.DENSE or (mode is Mode.AUTO and _sure_dense(grad, codec.value_type(values).row_bytes(dim),
                                                                           too_big))
    clock.lap("decide")
    rc, msg, size = None, None, -1
    if not sure_dense:
        grad.coalesce_()
        clock.lap("coalesce")
        if rows == "auto" and 8 * grad.n < num_rows:
            rows = "index"  # what "auto" would pick below 1/8 density, without sizing the other candidates
        rc = RowMessages(num_rows, dim, rows, values, compress, checked=not link.shared)
        msg = rc.encode(grad.ids, grad.values, out=link.out())  # into a shared slot: no copy
        size = msg.shape[0]
        clock.lap("encode")
    # forced dense: every rank knows, no round at all
    sizes = np.full(world, -1, np.int64) if mode is Mode.DENSE else link.announce(msg, size, clock)
    use_dense = bool(np.any(sizes < 0)) or goes_dense(mode, sizes, dense_bytes, world, shared=link.shared)
    density = grad.n / max(num_rows, 1)  # raw rows (duplicates included) when this rank never coalesced
    if use_dense:
        out = dense.sum_shared(grad, link.slots, clock) if link.shared else dense.sum_all_reduce(grad, group, clock)
        ring = ring_bytes(dense_bytes, world)
        stats = ExchangeStats(name, "replicated", "dense", "dense", density, grad.n, ring, ring, 0)
    else:
        out, sent, recv = _sum_sparse(grad, rc, sizes, link, values, clock)
        stats = ExchangeStats(name, "replicated", "sparse", rc.encoding(msg), density, grad.n, sent, recv, 0)
        clock.lap("finish")
    stats.phases = clock.phases
    stats.seconds = clock.total()
    return out, stats


def _sure_dense(grad: RowSparse, row_bytes: int, too_big: Callable[[int], bool]) -> bool:
    """True when this rank's message alone makes ``too_big`` say yes: its distinct rows' values do.

    Counts distinct ids (a byte mask) only when the raw count could be too big.
    """
    if not too_big(grad.n * row_bytes):
        return False
    if grad.is_coalesced():
        return True
    mask = np.zeros(grad.num_rows, np.bool_)
    mask[grad.ids.numpy()] = True
    return too_big(int(np.count_nonzero(mask)) * row_bytes)


def _sum_sparse(grad: RowSparse, rc: RowMessages, sizes: np.ndarray, link: Link, values: str,
                clock: Clock) -> tuple[RowSparse, int, int]:
    """The sparse path after the announcement: every message, decoded and merged in rank order; the sum and the
    bytes this rank sent and received."""
    msgs = link.collect(clock)
    own = (grad.ids, as_wire(grad.values, values))
    ids, vals = _decode_merge(rc, msgs, link.rank, link.world, own, clock)
    link.release()  # the result never points into a received block: _decode_merge copies what aliases one
    out = RowSparse.from_sorted(ids, vals, grad.num_rows)
    return out, *_gathered_bytes(sizes, link.rank, link.world)


def replicated_rows(
    ids: torch.Tensor,
    vals: torch.Tensor,
    num_rows: int,
    *,
    rows: str = "auto",
    values: str = "fp32",
    compress: str | None = None,
    mode: Mode | str = Mode.AUTO,
    group: Any = None,
    name: str = "",
    transport: Transport | str = Transport.AUTO,
) -> tuple[torch.Tensor, torch.Tensor, ExchangeStats]:
    """:func:`replicated` of sorted distinct row ``ids`` and their float32 rows ``vals`` on any one device: every
    rank gets the sum at the rows some rank touched (after a dense sum too:
    :func:`~sparsembed.comm.dense.touched_rows`), on the device of ``vals``. Options as for :func:`replicated`.
    Collective.

    On the CPU this is :func:`replicated` without a copy. Rows on a CUDA device are copied to the host once for
    the codec (numba on host arrays) and the sum copied back once. Over NCCL every rank first learns every rank's
    row count (one all-gather of an int) and takes the sparse-or-dense decision from it, messages sized by their
    values (the ids add a few percent): a dense step then sums on the device
    (:func:`~sparsembed.comm.dense.dense_rows_on_wire`), and nothing the size of the matrix crosses to the host.
    """
    mode = parse(mode, Mode, "mode")
    _, world = rank_world(group)
    if world == 1:
        n = int(ids.shape[0])
        return ids, vals, ExchangeStats(name, "replicated", "sparse", "none", n / max(num_rows, 1), n, 0, 0, 0.0)
    if device_wire(group):
        if _dense_by_counts(mode, int(ids.shape[0]), num_rows, int(vals.shape[1]), values, group):
            return dense.dense_rows_on_wire(ids, vals, num_rows, group, name)
        mode = Mode.SPARSE  # every rank took the same decision
    grad = RowSparse.from_sorted(to_host(ids), to_host(vals), num_rows)
    summed, stats = replicated(grad, rows=rows, values=values, compress=compress, mode=mode, group=group, name=name,
                               transport=transport)
    out_ids, out_vals = summed.ids, summed.values
    if stats.mode == "dense":
        out_ids, out_vals = dense.touched_rows(grad.ids, out_vals, group)
    return out_ids.to(vals.device), out_vals.to(vals.device), stats


def _dense_by_counts(mode: Mode, n: int, num_rows: int, dim: int, values: str, group: Any) -> bool:
    """Over NCCL, before any message is encoded: :func:`~sparsembed.comm.policy.goes_dense` from every rank's
    row count (``auto``: one all-gather of ``n``). Collective."""
    if mode is not Mode.AUTO:
        return mode is Mode.DENSE
    counts = gather_ints([n], group)[:, 0]
    world = counts.shape[0]
    return goes_dense(mode, counts * codec.value_type(values).row_bytes(dim), num_rows * dim * 4, world)


def replicated_keyed(
    keys: Any, vals: Any, *, values: str = "fp32", group: Any = None, name: str = ""
) -> tuple[torch.Tensor, torch.Tensor, ExchangeStats]:
    """Sum a keyed gradient (arbitrary int64 ``keys [n]``, ``vals [n, dim]``) over all ranks.

    Returns sorted distinct keys, their summed float32 rows (identical on every rank) and the stats. Always
    sparse (keys have no dense form) and over TCP (:func:`~sparsembed.comm.transport.collective_link`).
    """
    t0 = time.perf_counter()
    keys, vals = check_keyed(keys, vals)
    rank, world = rank_world(group)
    keys, vals = coalesce_keyed(keys, vals)
    if world == 1:
        return keys, vals, ExchangeStats(name, "replicated", "sparse", "keys", float("nan"), keys.shape[0], 0, 0, 0.0)
    clock = Clock()
    kc = KeyMessages(vals.shape[1], values)
    msg = kc.encode(keys, vals)
    clock.lap("encode")
    msgs = collective_link(group).gather(msg, clock)
    own = (keys, as_wire(vals, values))
    out_keys, out_vals = _decode_merge(kc, msgs, rank, world, own, clock)
    sent, recv = _gathered_bytes(np.array([m.shape[0] for m in msgs], np.int64), rank, world)
    stats = ExchangeStats(name, "replicated", "sparse", "keys", float("nan"), keys.shape[0], sent, recv, 0.0)
    stats.phases = clock.phases
    stats.seconds = time.perf_counter() - t0
    return out_keys, out_vals, stats


def _gathered_bytes(sizes: np.ndarray, rank: int, world: int) -> tuple[int, int]:
    """Bytes sent and received by this rank: its message to each peer, every peer's message, sizes included."""
    own = int(sizes[rank])
    return (world - 1) * (own + 8), int(sizes.sum()) - own + 8 * (world - 1)


def _decode_merge(mc: Any, msgs: list[np.ndarray], rank: int, world: int, own: Any, clock: Clock) -> tuple:
    """Decode every rank's message and sum them in rank order: (sorted ids, float32 rows), the same everywhere.

    ``own``: this rank's (ids, rows) as its message holds them (:func:`~sparsembed.comm.messages.as_wire`), to
    skip decoding it.
    """
    parts = [own if r == rank else mc.decode(msgs[r]) for r in range(world)]
    clock.lap("decode")
    ids, vals = parts[0]
    for r in range(1, world):
        ids, vals = _merge_sum(ids, vals, *parts[r])
    if _aliases(vals, [b for r, b in enumerate(msgs) if r != rank]):
        vals = vals.clone()
    clock.lap("merge")
    return ids, vals


def _aliases(vals: torch.Tensor, blocks: list[np.ndarray]) -> bool:
    """True when ``vals`` is a zero-copy view of a (reused) receive buffer."""
    ptr = vals.data_ptr()
    return any(b.ctypes.data <= ptr < b.ctypes.data + b.nbytes for b in blocks)


def _merge_sum(
    ids_a: torch.Tensor, vals_a: torch.Tensor, ids_b: torch.Tensor, vals_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Union of two sorted distinct id lists with their rows, rows of shared ids summed as ``a + b``."""
    if ids_b.numel() == 0:
        return ids_a, vals_a
    if ids_a.numel() == 0:
        return ids_b, vals_b
    dim = vals_a.shape[1]
    out_ids = np.empty(ids_a.shape[0] + ids_b.shape[0], np.int64)
    out_vals = np.empty((out_ids.shape[0], dim), np.float32)
    args = (ids_a.numpy(), vals_a.float().numpy(), ids_b.numpy(), vals_b.float().numpy(), out_ids, out_vals)
    m = _merge_kernel(*args)
    return torch.from_numpy(out_ids[:m]), torch.from_numpy(out_vals[:m])


# -- compiled kernels ---------------------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _merge_kernel(ids_a, vals_a, ids_b, vals_b, out_ids, out_vals):  # pragma: no cover - compiled
    """Merge two strictly increasing id lists; equal ids get ``vals_a + vals_b``. Returns the output length.

    Rows are copied with explicit loops: numba's slice assignment measured slower (see BENCHMARKS.md).
    """
    na, nb, dim = ids_a.shape[0], ids_b.shape[0], vals_a.shape[1]
    i = j = m = 0
    while i < na or j < nb:
        if j >= nb or (i < na and ids_a[i] < ids_b[j]):
            out_ids[m] = ids_a[i]
            for c in range(dim):
                out_vals[m, c] = vals_a[i, c]
            i += 1
        elif i >= na or ids_b[j] < ids_a[i]:
            out_ids[m] = ids_b[j]
            for c in range(dim):
                out_vals[m, c] = vals_b[j, c]
            j += 1
        else:
            out_ids[m] = ids_a[i]
            for c in range(dim):
                out_vals[m, c] = vals_a[i, c] + vals_b[j, c]
            i += 1
            j += 1
        m += 1
    return m
