"""Gradient exchange: sum row-sparse gradients over data-parallel workers, sending only the rows a step touched.

Two strategies, each for row ids in ``[0, num_rows)`` (:class:`~sparsembed.rows.coalesce.RowSparse`, dense storage) and
for arbitrary int64 keys (hash-table storage, "keyed"):

* **replicated** (:func:`replicated`, :func:`replicated_keyed`): every worker coalesces its gradient and encodes
  it once (:mod:`sparsembed.rows.codec`), then sends every peer one frame with ``isend`` / ``irecv``: its message size
  and, up to ``EAGER_BYTES`` per peer, the message itself (receivers post the full capacity; gloo accepts a
  shorter message), so one round, not a size swap plus a message round, moves every message that fits; larger
  ones finish in a second round of known sizes (gloo's ``all_gather`` needs equal sizes, i.e. padding, and its
  ring was 2x slower than direct sends on loopback). Every worker decodes the peers' messages and merges them in
  rank order, so all replicas get bit-identical sums, equal to a dense ``all_reduce`` of the same gradients.
  From the exchanged sizes all workers take the same decision: when the busiest rank would receive more than
  ``SPARSE_BIAS`` times a dense ring all-reduce's ``2 (P-1)/P * num_rows * dim * 4`` bytes, the step falls back
  to a dense ``all_reduce``. A worker whose own distinct rows alone exceed that (counted before coalescing)
  knows the outcome: it sends only its "dense" flag and densifies its raw gradient without coalescing.
* **sharded** (:func:`sharded`, :func:`sharded_keyed`), parameter-server style: row ``i`` is owned by rank ``r``
  with ``boundaries[r] <= i < boundaries[r+1]`` (contiguous ranges, as a ShardMap relabelling produces; keys are
  owned by a hash). Each worker sends each owner the gradient rows it owns with one variable-split
  ``all_to_all_single`` (gloo supports it, splits in bytes after a tiny ``all_to_all`` of the sizes); the owner
  sums them in rank order, applies the update (``apply_owned``), reads the fresh rows (``read_owned``) and sends
  each worker the rows it asked for (by default the rows it sent a gradient for), again with ``all_to_all_single``
  whose sizes both sides already know. Every row crosses the wire at most once each way, so the volume is bounded
  by a ring all-reduce's ``2 (P-1)/P`` of the matrix even at full density; no dense fallback is needed.

Every call returns an :class:`ExchangeStats` for the trainer's log. All calls are collective: every rank of the
group must make the same calls in the same order (an empty gradient is fine).
"""

from __future__ import annotations

import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numba
import numpy as np
import torch
import torch.distributed as dist

from sparsembed.errors import UserError
from sparsembed.rows import codec, rowsets
from sparsembed.rows.coalesce import RowSparse
from sparsembed.rows.keytable import splitmix64

__all__ = [
    "ExchangeStats",
    "replicated",
    "replicated_keyed",
    "sharded",
    "sharded_keyed",
    "dense_all_reduce",
    "even_boundaries",
    "key_owner",
    "coalesce_keyed",
    "ring_bytes",
    "sparse_too_big",
    "MODES",
]

#: Values of the ``mode`` argument: choose by density, or force one path.
MODES = ("auto", "sparse", "dense")
#: Sparse is chosen while its received bytes are at most this fraction of a dense ring all-reduce's: coalescing,
#: encoding, point-to-point sends, decoding and merging cost about 3x more per byte than gloo's dense all-reduce,
#: and the dense fallback pays for densifying (benchmarks/bench_exchange.py --sweep, 2 ranks, 200000 x 128:
#: sparse 35 ms at 20% density, 77 ms at 30%, 114 ms at 40%; the dense fallback ~100-110 ms, bare dense 65-95 ms).
SPARSE_BIAS = 0.35
#: With shared memory (ranks on one host) no byte crosses TCP and decoding reads the peers' slots in place, so
#: sparse stays cheaper up to a higher share of the dense volume, and the dense fallback (densify into the slot,
#: add the slots) beats gloo's all-reduce (`sparsembed bench exchange --sweep`, 2 ranks, 200000 x 128: sparse 22 ms
#: at 20% density, 39-52 ms at 40%, 66-68 ms at 70%; dense through shared memory 57 ms; gloo's dense 62-74 ms).
SHARED_BIAS = 0.55
TRANSPORTS = ("auto", "tcp")
_FRAME = struct.Struct("<qqq")  # sharded message: gradient bytes, pull ids (-1: same as gradient), pull bytes


@dataclass
class ExchangeStats:
    """What one exchange of one matrix cost on this rank.

    Byte counts are the payload the algorithm moves per rank (ring all-gather / all-reduce volumes, padding
    included), not counting TCP framing.
    """

    name: str
    strategy: str  # "replicated", "sharded" or "dense"
    mode: str  # "sparse" or "dense": what was sent this step
    encoding: str  # row-set encoding of this rank's message ("index", "bitmap", ...), "keys" or "dense"
    density: float  # distinct rows this rank sent / num_rows (keyed: nan, there is no num_rows)
    rows: int  # distinct rows this rank sent
    bytes_sent: int
    bytes_recv: int
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase on this rank (replicated only)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON logs."""
        return asdict(self)


# -- sparse or dense ----------------------------------------------------------------------------------------------
def ring_bytes(dense_bytes: int, world: int) -> int:
    """Bytes each rank sends (and receives) in a ring all-reduce of ``dense_bytes``: ``2 (P-1)/P`` of them."""
    return 2 * (world - 1) * int(dense_bytes) // max(world, 1)


def sparse_too_big(sizes: Any, ring: int, bias: float) -> bool:
    """The decision every rank takes alike from every rank's message size (bytes): go dense when the busiest rank,
    the one that receives every message but the smallest, would receive more than ``bias`` times ``ring``."""
    sizes = np.asarray(sizes, np.int64)
    return int(sizes.sum()) - int(sizes.min()) > bias * ring


# -- owners -------------------------------------------------------------------------------------------------------
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


# -- keyed coalescing ---------------------------------------------------------------------------------------------
def coalesce_keyed(keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted distinct keys and their summed float32 rows (duplicates summed in order of appearance)."""
    uniq, inverse = np.unique(keys.numpy(), return_inverse=True)
    out = torch.zeros(uniq.shape[0], values.shape[1], dtype=torch.float32)
    out.index_add_(0, torch.from_numpy(inverse.reshape(-1).astype(np.int64)), values.float())
    return torch.from_numpy(uniq.astype(np.int64, copy=False)), out


def _check_keyed(keys: Any, values: Any) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.as_tensor(keys)
    v = torch.as_tensor(values)
    if k.dim() != 1 or k.dtype.is_floating_point or v.dim() != 2 or v.shape[0] != k.shape[0]:
        raise UserError(f"exchange: keyed gradient needs int keys [n] and values [n, dim], got {k.shape}, {v.shape}")
    return k.to(torch.int64), v


# -- message codecs: one for row ids, one for arbitrary keys ------------------------------------------------------
def _as_wire(vals: torch.Tensor, values: str) -> torch.Tensor:
    """This rank's rows exactly as peers decode them from its message (rounded as the codec does), in float32.

    Saves decoding (checksum, conversion) this rank's own message.
    """
    wire = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[values]
    return _to_f32(vals.to(wire))


def _to_f32(vals: torch.Tensor) -> torch.Tensor:
    """Float32 rows of decoded wire values: torch converts half precision ~20x faster than numpy's ``astype``."""
    return vals if vals.dtype == torch.float32 else vals.float()


class _RowCodec:
    """Messages of rows ``[0, num_rows)`` through :mod:`sparsembed.rows.codec`. ``checked=False``: messages through
    shared memory, which never cross a wire (the announcement protocol guarantees a peer reads a complete
    message), go without a checksum; every other check of :func:`codec.decode` still runs."""

    def __init__(self, num_rows: int, dim: int, rows: str, values: str, compress: str | None,
                 checked: bool = True) -> None:
        self.num_rows, self.dim, self.rows, self.values, self.compress = num_rows, dim, rows, values, compress
        self.checked = checked

    def encode(self, ids: torch.Tensor, vals: torch.Tensor, num_rows: int | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
        rs = RowSparse.from_sorted(ids, vals, self.num_rows if num_rows is None else num_rows)
        return codec.encode_array(rs, self.rows, self.values, self.compress, out=out, checksum=self.checked)

    def decode(self, buf: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rs = codec.decode(buf, dtype="wire", verify=self.checked)
        return rs.ids, _to_f32(rs.values)

    def size(self, ids: torch.Tensor) -> int:
        """Exact size of the uncompressed message of these (strictly increasing) ids, without building it."""
        idn = ids.numpy()
        enc = rowsets.choose(idn, self.num_rows) if self.rows == "auto" else rowsets.get(self.rows)
        value_bytes = {"fp32": 4, "fp16": 2, "bf16": 2}[self.values]
        return codec.HEADER_SIZE + enc.size(idn, self.num_rows) + idn.shape[0] * self.dim * value_bytes

    def coalesce(self, ids: torch.Tensor, vals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rs = RowSparse(ids, vals.float() if vals.dtype != torch.float32 else vals, self.num_rows, check=False)
        rs.coalesce_()
        return rs.ids, rs.values

    @staticmethod
    def encoding(buf: np.ndarray) -> str:
        return codec.header(buf)["rows"]


class _KeyCodec:
    """Messages of arbitrary int64 keys: ``int64 n``, the raw sorted keys, then a codec message of the values.

    Raw keys cost 8 bytes a row against ``dim * 4`` for the values, so compressing them is not worth it.
    """

    def __init__(self, dim: int, values: str) -> None:
        self.dim, self.values = dim, values

    def encode(self, keys: torch.Tensor, vals: torch.Tensor) -> np.ndarray:
        n = keys.shape[0]
        rs = RowSparse.from_sorted(torch.arange(n), vals, n)
        msg = codec.encode_array(rs, "all", self.values)
        out = np.empty(8 + 8 * n + msg.shape[0], np.uint8)
        out[:8] = np.frombuffer(struct.pack("<q", n), np.uint8)
        out[8 : 8 + 8 * n] = keys.numpy().view(np.uint8)
        out[8 + 8 * n :] = msg
        return out

    def decode(self, buf: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if buf.shape[0] < 8:
            raise codec.CodecError("exchange: keyed message shorter than its count")
        n = struct.unpack("<q", buf[:8].tobytes())[0]
        if n < 0 or 8 + 8 * n > buf.shape[0]:
            raise codec.CodecError(f"exchange: keyed message claims {n} keys in {buf.shape[0]} bytes")
        keys = torch.from_numpy(buf[8 : 8 + 8 * n].view(np.int64).copy())
        rs = codec.decode(buf[8 + 8 * n :], dtype="wire")
        if rs.n != n:
            raise codec.CodecError(f"exchange: keyed message has {n} keys and {rs.n} value rows")
        return keys, _to_f32(rs.values)

    @staticmethod
    def coalesce(keys: torch.Tensor, vals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return coalesce_keyed(keys, vals)

    @staticmethod
    def encoding(buf: np.ndarray) -> str:
        return "keys"


# -- reusable buffers ---------------------------------------------------------------------------------------------
_BUFFERS: dict[str, torch.Tensor] = {}


def _buffer(tag: str, nbytes: int) -> torch.Tensor:
    """A uint8 tensor of ``nbytes`` reused across steps: fresh large allocations pay page faults every step."""
    buf = _BUFFERS.get(tag)
    if buf is None or buf.numel() < nbytes:
        buf = torch.empty(max(nbytes, 1 << 12) * 5 // 4, dtype=torch.uint8)
        _BUFFERS[tag] = buf
    return buf[:nbytes]


_ONE_HOST: dict[Any, bool] = {}
_SLOTS: dict[Any, Any] = {}


def _host_slots(group: Any, num_rows: int, dim: int) -> Any:
    """Shared-memory slots for messages of a ``num_rows x dim`` matrix when every rank of ``group`` is on this
    host, else None. Collective on first use per group and shape (every rank reaches it in the same call)."""
    from sparsembed.comm import shm

    key = id(group)
    if key not in _ONE_HOST:
        _ONE_HOST[key] = shm.one_host(group)
    if not _ONE_HOST[key]:
        return None
    if (key, num_rows, dim) not in _SLOTS:
        # Bound of a message of distinct rows: header, ids (no encoding takes 8 bytes an id), fp32 values,
        # and what zstd / lz4 may add to incompressible bytes.
        raw = codec.HEADER_SIZE + num_rows * (8 + 4 * dim)
        _SLOTS[key, num_rows, dim] = shm.HostSlots(raw + raw // 64 + 4096, group)
    return _SLOTS[key, num_rows, dim]


def _world(group: Any) -> tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


# -- replicated ---------------------------------------------------------------------------------------------------
def replicated(
    grad: RowSparse,
    *,
    rows: str = "auto",
    values: str = "fp32",
    compress: str | None = None,
    mode: str = "auto",
    group: Any = None,
    name: str = "",
    transport: str = "auto",
) -> tuple[RowSparse, ExchangeStats]:
    """Sum ``grad`` over all ranks; every rank gets the same coalesced sum.

    Args:
        grad: this rank's gradient, any ids order, duplicates allowed (coalesced in place on the sparse path).
        rows, values, compress: message encoding (see :func:`sparsembed.rows.codec.encode`); ``values="fp16"``
            rounds each rank's rows once.
        mode: ``"auto"`` picks sparse or dense from the exchanged message sizes; ``"sparse"`` / ``"dense"`` force.
        group: process group (default: the world); without an initialized group this is a local coalesce.
        transport: ``"auto"``: when every rank of the group is on this host, messages go through shared memory
            (:mod:`sparsembed.comm.shm`: one tiny collective instead of TCP copies); ``"tcp"``: always gloo.

    Returns:
        The summed gradient (when the dense path ran: every row, ``ids = arange(num_rows)``, values a dense
        ``num_rows x dim`` float32 matrix, reused by a later dense exchange of the same shape once nothing else
        references it) and this rank's :class:`ExchangeStats` (``phases``: seconds per phase).
    """
    if mode not in MODES:
        raise UserError(f"exchange: mode must be one of {MODES}, got {mode!r}")
    clock = _Clock()
    rank, world = _world(group)
    num_rows, dim = grad.num_rows, grad.dim
    if world == 1:
        grad.coalesce_()
        return grad, ExchangeStats(name, "replicated", "sparse", "none", grad.n / max(num_rows, 1), grad.n, 0, 0, 0.0)
    if transport not in TRANSPORTS:
        raise UserError(f"exchange: transport must be one of {TRANSPORTS}, got {transport!r}")
    ring = ring_bytes(num_rows * dim * 4, world)
    slots = _host_slots(group, num_rows, dim) if transport == "auto" and mode != "dense" else None
    bias = SHARED_BIAS if slots is not None else SPARSE_BIAS
    limit = bias * ring
    # A rank whose own message alone would exceed the limit knows the step goes dense (the busiest rank receives
    # at least every other rank's message): it skips coalescing and encoding, and densifies the raw gradient.
    sure_dense = mode == "dense" or (mode == "auto" and _sure_dense(grad, values, limit))
    clock.lap("decide")
    msg, size = None, -1
    if not sure_dense:
        grad.coalesce_()
        clock.lap("coalesce")
        if rows == "auto" and 8 * grad.n < num_rows:
            rows = "index"  # what "auto" would pick below 1/8 density, without sizing the other candidates
        rc = _RowCodec(num_rows, dim, rows, values, compress, checked=slots is None)
        msg = rc.encode(grad.ids, grad.values, out=None if slots is None else slots.slot())  # no copy into a slot
        size = msg.shape[0]
        clock.lap("encode")
    if mode == "dense":  # every rank knows: no round at all
        sizes = np.full(world, -1, np.int64)
    elif slots is not None:
        sizes = slots.publish(size)  # the message, if any, was encoded into this rank's slot
        blocks = [slots.slot(r)[: max(int(sizes[r]), 0)] for r in range(world)]
        clock.lap("shm_round")
    else:
        sizes, blocks = _eager_round(msg, size, rank, world, group, clock)
    use_dense = mode == "dense" or (mode == "auto" and (bool(np.any(sizes < 0)) or sparse_too_big(sizes, ring, bias)))
    density = grad.n / max(num_rows, 1)  # raw rows (duplicates included) when this rank never coalesced
    if use_dense and slots is not None:
        out = _dense_sum_shared(grad, slots, clock)
        stats = ExchangeStats(name, "replicated", "dense", "dense", density, grad.n, ring, ring, 0)
    elif use_dense:
        out = _dense_sum(grad, group)
        clock.lap("dense_all_reduce")
        stats = ExchangeStats(name, "replicated", "dense", "dense", density, grad.n, ring, ring, 0)
    else:
        if slots is None:
            blocks = _finish_messages(msg, sizes, blocks, rank, world, group)
            clock.lap("transfer")
        own = (grad.ids, _as_wire(grad.values, values))
        ids, vals = _decode_merge(rc, blocks, rank, world, own, clock)
        if slots is not None:
            slots.advance()  # the result never points into a slot: _decode_merge copies what aliases a block
        out = RowSparse.from_sorted(ids, vals, num_rows)
        sent, recv = _gathered_bytes(sizes, rank, world)
        stats = ExchangeStats(name, "replicated", "sparse", rc.encoding(msg), density, grad.n, sent, recv, 0)
        clock.lap("finish")
    stats.phases = clock.phases
    stats.seconds = clock.total()
    return out, stats


class _Clock:
    """Per-phase wall times of one exchange on this rank (``time.perf_counter``)."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self.last
        self.last = now

    def total(self) -> float:
        return time.perf_counter() - self.start


def _sure_dense(grad: RowSparse, values: str, limit: float) -> bool:
    """True when this rank's message alone would exceed ``limit`` bytes: its distinct rows' values do.

    Counts distinct ids (a byte mask, well under a millisecond for 300000 ids) only when the raw count could
    exceed the limit.
    """
    row_bytes = grad.dim * {"fp32": 4, "fp16": 2, "bf16": 2}[values]
    if grad.n * row_bytes <= limit:
        return False
    if grad.is_coalesced():
        return True
    mask = np.zeros(grad.num_rows, np.bool_)
    mask[grad.ids.numpy()] = True
    return int(np.count_nonzero(mask)) * row_bytes > limit


def replicated_keyed(
    keys: Any, vals: Any, *, values: str = "fp32", group: Any = None, name: str = ""
) -> tuple[torch.Tensor, torch.Tensor, ExchangeStats]:
    """Sum a keyed gradient (arbitrary int64 ``keys [n]``, ``vals [n, dim]``) over all ranks.

    Returns sorted distinct keys, their summed float32 rows (identical on every rank) and the stats. Always
    sparse: keys have no dense form.
    """
    t0 = time.perf_counter()
    keys, vals = _check_keyed(keys, vals)
    rank, world = _world(group)
    keys, vals = coalesce_keyed(keys, vals)
    if world == 1:
        return keys, vals, ExchangeStats(name, "replicated", "sparse", "keys", float("nan"), keys.shape[0], 0, 0, 0.0)
    clock = _Clock()
    kc = _KeyCodec(vals.shape[1], values)
    msg = kc.encode(keys, vals)
    clock.lap("encode")
    sizes, blocks = _eager_round(msg, msg.shape[0], rank, world, group, clock)
    msgs = _finish_messages(msg, sizes, blocks, rank, world, group)
    clock.lap("transfer")
    own = (keys, _as_wire(vals, values))
    out_keys, out_vals = _decode_merge(kc, msgs, rank, world, own, clock)
    sent, recv = _gathered_bytes(sizes, rank, world)
    stats = ExchangeStats(name, "replicated", "sparse", "keys", float("nan"), keys.shape[0], sent, recv, 0.0)
    stats.phases = clock.phases
    stats.seconds = time.perf_counter() - t0
    return out_keys, out_vals, stats


def _gathered_bytes(sizes: np.ndarray, rank: int, world: int) -> tuple[int, int]:
    """Bytes sent and received by this rank: its message to each peer, every peer's message, sizes included."""
    own = int(sizes[rank])
    return (world - 1) * (own + 8), int(sizes.sum()) - own + 8 * (world - 1)


#: Per peer, messages up to this many bytes travel in the same round as their size (see :func:`_eager_round`).
EAGER_BYTES = 32 << 20
_EAGER_HEAD = struct.Struct("<qq")  # message size (-1: this rank goes dense), magic
_EAGER_MAGIC = 0x5350_4547_4552_3031  # guards against a message that is not an eager frame


def _eager_capacity(world: int) -> int:
    """Bytes of the round-1 frame per peer: the same on every rank, bounded in total receive memory."""
    return _EAGER_HEAD.size + max(64 << 10, EAGER_BYTES // max(world - 1, 1))


def _eager_round(
    msg: np.ndarray | None, size: int, rank: int, world: int, group: Any, clock: _Clock
) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Every rank's message size, and the messages that fit, in one round of ``isend`` / ``irecv``.

    Each rank sends each peer a frame: its size (-1 when it goes dense) then as much of its message as fits in
    :func:`_eager_capacity`. Receivers post the full capacity and read the actual size from the frame: gloo
    accepts a message shorter than the posted buffer (tests/test_exchange.py checks it), so a small message
    costs one latency instead of two (size swap, then message) and nothing is padded. Returns the sizes and,
    per rank, the frame buffer (message from byte 16, possibly partial) or ``None`` for this rank.
    """
    cap = _eager_capacity(world)
    head = _EAGER_HEAD.pack(size, _EAGER_MAGIC)
    first = 0 if msg is None else min(size, cap - _EAGER_HEAD.size)
    frame = _buffer("eager-send", _EAGER_HEAD.size + first).numpy()
    frame[: _EAGER_HEAD.size] = np.frombuffer(head, np.uint8)
    if first:
        frame[_EAGER_HEAD.size :] = msg[:first]
    clock.lap("frame")
    reqs, blocks = [], [None] * world
    for step in range(1, world):  # staggered peers: not everyone talks to rank 0 first
        src = (rank - step) % world
        buf = _buffer(f"recv-{step}", cap)
        reqs.append(dist.irecv(buf, group=group, group_src=src))
        blocks[src] = buf.numpy()
    send = torch.from_numpy(frame)
    for step in range(1, world):
        reqs.append(dist.isend(send, group=group, group_dst=(rank + step) % world))
    for req in reqs:
        req.wait()
    sizes = np.empty(world, np.int64)
    sizes[rank] = size
    for r, b in enumerate(blocks):
        if b is not None:
            sizes[r], magic = _EAGER_HEAD.unpack(b[: _EAGER_HEAD.size].tobytes())
            if magic != _EAGER_MAGIC or sizes[r] < -1:
                raise codec.CodecError(f"exchange: rank {r} sent a malformed eager frame")
    clock.lap("eager_round")
    return sizes, blocks


def _finish_messages(
    msg: np.ndarray, sizes: np.ndarray, blocks: list, rank: int, world: int, group: Any
) -> list[np.ndarray]:
    """Complete every message larger than the eager frame with a second round; returns all ranks' messages."""
    cap = _eager_capacity(world) - _EAGER_HEAD.size
    out: list[np.ndarray] = [msg] * world
    reqs = []
    for step in range(1, world):
        src = (rank - step) % world
        n = int(sizes[src])
        if n > cap:  # grow this peer's buffer, keeping the part that arrived
            head = blocks[src][: _EAGER_HEAD.size + cap].copy()
            full = _buffer(f"recv-{step}", _EAGER_HEAD.size + n)
            full.numpy()[: head.shape[0]] = head
            reqs.append(dist.irecv(full[_EAGER_HEAD.size + cap :], group=group, group_src=src, tag=1))
            blocks[src] = full.numpy()
        out[src] = blocks[src][_EAGER_HEAD.size : _EAGER_HEAD.size + n]
    if msg.shape[0] > cap:
        rest = torch.from_numpy(msg[cap:])
        for step in range(1, world):
            reqs.append(dist.isend(rest, group=group, group_dst=(rank + step) % world, tag=1))
    for req in reqs:
        req.wait()
    return out


def _decode_merge(mc: Any, msgs: list[np.ndarray], rank: int, world: int, own: Any, clock: _Clock) -> tuple:
    """Decode every rank's message and sum them in rank order: (sorted ids, float32 rows), the same everywhere.

    ``own``: this rank's (ids, rows) as its message holds them (:func:`_as_wire`), to skip decoding it.
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


#: Dense fallback: rows are densified and all-reduced in blocks of about this many bytes, so that densifying
#: block k+1 overlaps the all-reduce of block k (gloo runs it on its own thread; the kernel releases the GIL).
DENSE_BLOCK_BYTES = 32 << 20


_DENSE: list[torch.Tensor] = []  # dense fallback matrices, reused once nothing else references them


def _dense_matrix(num_rows: int, dim: int, zero: bool = True) -> torch.Tensor:
    """A zeroed float32 ``num_rows x dim`` matrix, reusing a cached one that no caller still holds.

    A fresh matrix pays its page faults during the all-reduce (~25 ms for 100 MB here, ``torch.zeros`` ~40 ms
    more for its memset); ``zero_()`` on a warm one costs ~8 ms. Two are kept, so a caller that holds the
    previous result until the next step does not force a fresh one every step.
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


def _dense_sum(grad: RowSparse, group: Any) -> RowSparse:
    """All-reduce the densified gradient, raw (duplicates summed in order of appearance) or coalesced."""
    num_rows, dim = grad.num_rows, grad.dim
    if grad.is_coalesced() and grad.n == num_rows and grad.dtype == torch.float32:
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
    out = RowSparse.from_sorted(torch.arange(num_rows), dense, num_rows)
    return out


def _dense_sum_shared(grad: RowSparse, slots: Any, clock: _Clock) -> RowSparse:
    """The dense fallback through shared memory: each rank densifies its raw gradient into its slot, one tiny
    collective, then every rank adds all slots in rank order (the same bits everywhere) into its result.

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
    out = RowSparse.from_sorted(torch.arange(num_rows), dense, num_rows)
    return out


def dense_all_reduce(
    tensors: list[torch.Tensor], *, bucket_bytes: int = 25 << 20, group: Any = None, name: str = ""
) -> ExchangeStats:
    """Sum dense float tensors over all ranks in place, packed into buckets of about ``bucket_bytes``.

    Small tensors share one all_reduce (one latency instead of many); a tensor larger than a bucket goes alone.
    """
    t0 = time.perf_counter()
    _, world = _world(group)
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


# -- sharded ------------------------------------------------------------------------------------------------------
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
    rank, world = _world(group)
    grad.coalesce_()
    num_rows, dim = grad.num_rows, grad.dim
    b = _check_boundaries(boundaries, num_rows, world)
    pull_ids = None if pull is None else _unique_ids(pull, num_rows)
    rc = _RowCodec(num_rows, dim, rows, values, compress)
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
    keys, vals = _check_keyed(keys, vals)
    rank, world = _world(group)
    keys, vals = coalesce_keyed(keys, vals)
    dim = vals.shape[1]
    kc = _KeyCodec(dim, values)
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
    rank, world = _world(group)
    send_sizes = torch.tensor([m.shape[0] for m in msgs], dtype=torch.int64)
    if world > 1:
        recv_sizes = torch.empty(world, dtype=torch.int64)
        dist.all_to_all_single(recv_sizes, send_sizes, group=group)
    else:
        recv_sizes = send_sizes.clone()
    ss, rs = send_sizes.tolist(), recv_sizes.tolist()
    send = _buffer("a2a-send", sum(ss))
    offset = 0
    for m in msgs:
        send.numpy()[offset : offset + m.shape[0]] = m
        offset += m.shape[0]
    recv = _buffer("a2a-recv", sum(rs))
    if world > 1:
        dist.all_to_all_single(recv, send, rs, ss, group=group)
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
        dist.all_to_all_single(fresh_in, fresh_out.contiguous(), in_counts, out_counts, group=group)
    else:
        fresh_in.copy_(fresh_out)
    sent = sum(ss) - ss[rank] + 4 * (sum(out_counts) - out_counts[rank]) + 8 * world
    received = sum(rs) - rs[rank] + 4 * (sum(in_counts) - in_counts[rank]) + 8 * world
    return fresh_in.reshape(-1, dim), sent, received


# -- compiled kernels ---------------------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _merge_kernel(ids_a, vals_a, ids_b, vals_b, out_ids, out_vals):  # pragma: no cover - compiled
    """Merge two strictly increasing id lists; equal ids get ``vals_a + vals_b``. Returns the output length.

    Rows are copied with explicit loops: numba's slice assignment ``out[m, :] = a[i, :]`` measured 3.4x slower.
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
    (2 ranks, 300000 raw rows into 200000 x 128: 30-39 ms against 42-44 ms a rank, BENCHMARKS.md)."""
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
