"""Sharded exchange, parameter-server style: each row's owner sums its gradient and sends the fresh row back.

Row ``i`` is owned by rank ``r`` with ``boundaries[r] <= i < boundaries[r+1]`` (contiguous ranges, as a
:class:`~sparsembed.comm.sharding.ShardMap` relabelling produces, or :func:`even_boundaries`); keys are owned by a
hash (:func:`key_owner`). Each worker sends each owner one frame (:func:`_frame`): the gradient rows it owns
(:mod:`sparsembed.comm.messages`) and the ids whose fresh rows it wants, with one variable-split
``all_to_all_single`` (gloo supports it, splits in bytes after a tiny ``all_to_all`` of the sizes; over NCCL
staged through CUDA buffers, :func:`~sparsembed.comm.device.staged_all_to_all`). The owner sums them in rank
order, applies the update (``apply_owned``), reads the fresh rows (``read_owned``) and sends each worker the rows
it asked for (by default the rows it sent a gradient for), again with ``all_to_all_single`` whose sizes both sides
already know. Every row crosses the wire at most once each way, so the volume is bounded
by a ring all-reduce's ``2 (P-1)/P`` of the matrix even at full density: no dense fallback is needed.

Every call returns an :class:`~sparsembed.comm.stats.ExchangeStats`. All calls are collective: every rank of the
group makes the same calls in the same order (an empty gradient is fine).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from sparsembed.comm.device import staged_all_to_all
from sparsembed.comm.messages import KeyMessages, RowMessages, check_keyed, coalesce_keyed
from sparsembed.comm.stats import ExchangeStats
from sparsembed.comm.transport import buffer, rank_world
from sparsembed.errors import UserError
from sparsembed.rows import codec, rowsets
from sparsembed.rows.coalesce import RowSparse
from sparsembed.rows.keytable import splitmix64

__all__ = ["sharded", "sharded_keyed", "even_boundaries", "key_owner"]

_FRAME = struct.Struct("<qqq")  # sharded message: gradient bytes, pull ids (-1: same as gradient), pull bytes


def even_boundaries(num_rows: int, world: int) -> np.ndarray:
    """``world + 1`` increasing row boundaries splitting ``[0, num_rows)`` into near-equal contiguous shards."""
    return (np.arange(world + 1, dtype=np.int64) * num_rows) // world


def key_owner(keys: np.ndarray, world: int) -> np.ndarray:
    """Owner rank of each int64 key: a splitmix64 hash mod ``world`` (spreads sequential and strided keys)."""
    z = splitmix64(keys)
    return (z % np.uint64(world)).astype(np.int64)


def _check_boundaries(boundaries: Any, num_rows: int, world: int) -> np.ndarray:
    b = np.asarray(boundaries, dtype=np.int64)
    if b.shape != (world + 1,) or b[0] != 0 or b[-1] != num_rows or np.any(np.diff(b) < 0):
        raise UserError(
            f"exchange: boundaries must be {world + 1} non-decreasing ints from 0 to num_rows={num_rows}, got {b!r}"
        )
    return b


def sharded(
    grad: RowSparse,
    boundaries: Any,
    apply_owned: Callable[[RowSparse], None],
    read_owned: Callable[[torch.Tensor], torch.Tensor],
    *,
    pull: Any = None,
    rows: str = "auto",
    values: str = "fp32",
    compress: str | None = None,
    group: Any = None,
    name: str = "",
) -> tuple[RowSparse, ExchangeStats]:
    """Owner-computes exchange: gradients to owners, owners update, fresh rows back.

    Args:
        grad: this rank's gradient (coalesced in place); may be empty.
        boundaries: ``world + 1`` ints, rank ``r`` owns rows ``[boundaries[r], boundaries[r+1])``
            (:func:`even_boundaries`, or a ShardMap's).
        apply_owned: called once on this rank with the summed gradient of the rows it owns (global ids,
            coalesced, possibly empty); updates the owner's storage.
        read_owned: given global ids this rank owns, returns their current ``[k, dim]`` rows (after the update).
        pull: row ids whose fresh values this rank wants back; default: the rows of ``grad``.

    Returns:
        The fresh rows ``pull`` (coalesced, float32) and this rank's stats.
    """
    t0 = time.perf_counter()
    rank, world = rank_world(group)
    grad.coalesce_()
    num_rows, dim = grad.num_rows, grad.dim
    b = _check_boundaries(boundaries, num_rows, world)
    pull_ids = None if pull is None else _unique_ids(pull, num_rows)
    rc = RowMessages(num_rows, dim, rows, values, compress)
    cuts = np.searchsorted(grad.ids.numpy(), b)
    pcuts = None if pull_ids is None else np.searchsorted(pull_ids.numpy(), b)
    msgs, pulled, enc, biggest = [], [], "none", -1
    for r in range(world):
        lo, hi = int(b[r]), int(b[r + 1])
        sl = slice(int(cuts[r]), int(cuts[r + 1]))
        body = rc.encode(grad.ids[sl] - lo, grad.values[sl], hi - lo)
        psel = None if pcuts is None else pull_ids[int(pcuts[r]) : int(pcuts[r + 1])] - lo
        msgs.append(_frame(body, psel, hi - lo))
        pulled.append(sl.stop - sl.start if psel is None else psel.shape[0])
        if body.shape[0] > biggest:  # report the encoding of the largest message
            enc, biggest = rc.encoding(body), body.shape[0]

    def owned(local: tuple[torch.Tensor, torch.Tensor]) -> None:
        ids, vals = rc.coalesce(*local) if local[0].numel() else local
        owned_rs = RowSparse.from_sorted(ids + int(b[rank]), vals, num_rows)
        apply_owned(owned_rs)

    def unframe(buf: np.ndarray) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        return _unframe(rc, buf, int(b[rank + 1] - b[rank]))

    read = lambda i: read_owned(i + int(b[rank]))  # noqa: E731
    fresh, sent, recv = _owner_round(msgs, pulled, unframe, owned, read, dim, group)
    fresh_ids = grad.ids if pull_ids is None else pull_ids
    out = RowSparse.from_sorted(fresh_ids, fresh, num_rows)
    stats = ExchangeStats(name, "sharded", "sparse", enc, grad.n / max(num_rows, 1), grad.n, sent, recv, 0.0)
    stats.seconds = time.perf_counter() - t0
    return out, stats


def sharded_keyed(
    keys: Any,
    vals: Any,
    apply_owned: Callable[[torch.Tensor, torch.Tensor], None],
    read_owned: Callable[[torch.Tensor], torch.Tensor],
    *,
    pull: Any = None,
    values: str = "fp32",
    group: Any = None,
    name: str = "",
) -> tuple[torch.Tensor, torch.Tensor, ExchangeStats]:
    """:func:`sharded` for arbitrary int64 keys, owned by :func:`key_owner`.

    ``apply_owned(keys, summed_rows)`` gets the sorted distinct keys this rank owns; returns the sorted distinct
    ``pull`` keys (default: the gradient's) with their fresh rows, and the stats.
    """
    t0 = time.perf_counter()
    keys, vals = check_keyed(keys, vals)
    rank, world = rank_world(group)
    keys, vals = coalesce_keyed(keys, vals)
    dim = vals.shape[1]
    kc = KeyMessages(dim, values)
    pull_keys = None if pull is None else torch.from_numpy(np.unique(np.asarray(pull, np.int64)))
    own = key_owner(keys.numpy(), world)
    pown = None if pull_keys is None else key_owner(pull_keys.numpy(), world)
    msgs, pulled = [], []
    # Per owner, keys stay sorted: boolean selection keeps order.
    for r in range(world):
        sel = torch.from_numpy(own == r)
        psel = None if pown is None else pull_keys[torch.from_numpy(pown == r)]
        msgs.append(_frame(kc.encode(keys[sel], vals[sel]), psel, None))
        pulled.append(int(sel.sum()) if psel is None else psel.shape[0])

    def owned(local: tuple[torch.Tensor, torch.Tensor]) -> None:
        apply_owned(*coalesce_keyed(*local))

    unframe = lambda buf: _unframe(kc, buf, None)  # noqa: E731
    fresh, sent, recv = _owner_round(msgs, pulled, unframe, owned, read_owned, dim, group)
    # Fresh rows come back grouped by owner; put them back in key order.
    want = keys if pull_keys is None else pull_keys
    wown = own if pull_keys is None else pown
    order = torch.from_numpy(np.argsort(wown, kind="stable"))
    out = torch.empty_like(fresh)
    out[order] = fresh
    stats = ExchangeStats(name, "sharded", "sparse", "keys", float("nan"), keys.shape[0], sent, recv, 0.0)
    stats.seconds = time.perf_counter() - t0
    return want, out, stats


def _unique_ids(pull: Any, num_rows: int) -> torch.Tensor:
    ids = np.unique(np.asarray(pull, dtype=np.int64))
    if ids.shape[0] and (ids[0] < 0 or ids[-1] >= num_rows):
        raise UserError(f"exchange: pull ids must be in [0, {num_rows})")
    return torch.from_numpy(ids)


def _frame(body: np.ndarray, pull: torch.Tensor | None, num_rows: int | None) -> np.ndarray:
    """Gradient message plus the ids whose fresh rows the sender wants (row-set coded, or raw keys)."""
    if pull is None:
        pull_bytes, n = b"", -1
    elif num_rows is None:
        pull_bytes, n = pull.numpy().tobytes(), pull.shape[0]
    else:
        ids = pull.numpy()
        enc = rowsets.choose(ids, num_rows)
        pull_bytes, n = bytes([enc.code]) + enc.encode(ids, num_rows), ids.shape[0]
    out = np.empty(_FRAME.size + body.shape[0] + len(pull_bytes), np.uint8)
    out[: _FRAME.size] = np.frombuffer(_FRAME.pack(body.shape[0], n, len(pull_bytes)), np.uint8)
    out[_FRAME.size : _FRAME.size + body.shape[0]] = body
    out[_FRAME.size + body.shape[0] :] = np.frombuffer(pull_bytes, np.uint8)
    return out


def _unframe(mc: Any, buf: np.ndarray, num_rows: int | None) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(gradient ids, values) and the pulled ids of one sharded message."""
    if buf.shape[0] < _FRAME.size:
        raise codec.CodecError("exchange: sharded message shorter than its frame")
    body_len, n, pull_len = _FRAME.unpack(buf[: _FRAME.size].tobytes())
    if body_len < 0 or pull_len < 0 or _FRAME.size + body_len + pull_len != buf.shape[0]:
        raise codec.CodecError("exchange: sharded message sizes do not add up")
    grad = mc.decode(buf[_FRAME.size : _FRAME.size + body_len])
    tail = buf[_FRAME.size + body_len :]
    if n < 0:
        return grad, grad[0]
    if num_rows is None:
        if pull_len != 8 * n:
            raise codec.CodecError("exchange: pulled keys do not fill their section")
        return grad, torch.from_numpy(tail.view(np.int64).copy())
    try:
        ids = rowsets.get(int(tail[0])).decode(tail[1:].tobytes(), n, num_rows)
    except (rowsets.RowSetError, IndexError, KeyError) as e:
        raise codec.CodecError(f"exchange: pulled row ids: {e}") from None
    return grad, torch.from_numpy(ids)


def _owner_round(
    msgs: list[np.ndarray],
    pulled: list[int],
    unframe: Callable[[np.ndarray], tuple],
    apply_owned: Callable[[tuple[torch.Tensor, torch.Tensor]], None],
    read_owned: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    group: Any,
) -> tuple[torch.Tensor, int, int]:
    """Push framed gradients to their owners, apply, pull fresh rows; returns (fresh rows, bytes sent, received)."""
    rank, world = rank_world(group)
    send_sizes = torch.tensor([m.shape[0] for m in msgs], dtype=torch.int64)
    if world > 1:
        recv_sizes = torch.empty(world, dtype=torch.int64)
        staged_all_to_all(recv_sizes, send_sizes, group=group)
    else:
        recv_sizes = send_sizes.clone()
    ss, rs = send_sizes.tolist(), recv_sizes.tolist()
    send = buffer("a2a-send", sum(ss))
    offset = 0
    for m in msgs:
        send.numpy()[offset : offset + m.shape[0]] = m
        offset += m.shape[0]
    recv = buffer("a2a-recv", sum(rs))
    if world > 1:
        staged_all_to_all(recv, send, rs, ss, group=group)
    else:
        recv.copy_(send)
    starts = np.concatenate([[0], np.cumsum(rs)])
    parts = [unframe(recv.numpy()[starts[r] : starts[r + 1]]) for r in range(world)]
    grad_ids = torch.cat([p[0][0] for p in parts])
    grad_vals = torch.cat([p[0][1].float() for p in parts]) if grad_ids.numel() else torch.zeros(0, dim)
    apply_owned((grad_ids, grad_vals))
    # Fresh rows, in the order each requester listed them; both sides know every count, so no size round.
    asked = [p[1] for p in parts]
    fresh_out = torch.cat([read_owned(a).float().reshape(-1, dim) for a in asked]).reshape(-1)
    out_counts = [a.shape[0] * dim for a in asked]
    in_counts = [k * dim for k in pulled]
    fresh_in = torch.empty(sum(in_counts), dtype=torch.float32)
    if world > 1:
        staged_all_to_all(fresh_in, fresh_out.contiguous(), in_counts, out_counts, group=group)
    else:
        fresh_in.copy_(fresh_out)
    sent = sum(ss) - ss[rank] + 4 * (sum(out_counts) - out_counts[rank]) + 8 * world
    received = sum(rs) - rs[rank] + 4 * (sum(in_counts) - in_counts[rank]) + 8 * world
    return fresh_in.reshape(-1, dim), sent, received

