"""How every rank's byte message reaches every rank of a group: three transports behind one interface, :class:`Link`.

An exchange hands its link this rank's message and gets every rank's back, in steps when it must decide something
on the way: :meth:`Link.announce` gives every rank's size (-1: that rank goes dense) and may already carry the
messages, :meth:`Link.collect` completes them, :meth:`Link.release` frees their buffers; :meth:`Link.gather` does
all three. Three transports remain, each for a reason (measured, see BENCHMARKS.md):

* :class:`EagerSends` (``isend`` / ``irecv`` to every peer; the replicated and keyed exchanges over TCP): no padding,
  and direct sends beat gloo's ring all-gather for the large messages a matrix's rows make;
* :class:`PaddedAllGather` (one all-gather padded to a capacity that grows; the fused sync over TCP): one collective
  round costs less latency than pairwise sends for the small messages of a model's step, and padding costs
  little while ranks send about the same size;
* :class:`SharedSlots` (slots in shared memory, :mod:`sparsembed.comm.shm`; every rank on one host): no byte crosses
  TCP, peers' messages are read in place, and an announcement costs microseconds instead of a gloo round.

:func:`replicated_link` picks the link of a replicated exchange, :func:`collective_link` the one of an exchange
that never uses shared memory; :func:`buffer` keeps byte buffers across steps. Over NCCL (a group whose
collectives need CUDA tensors, :func:`sparsembed.comm.device.device_wire`) every message travels by
:class:`PaddedAllGather`, staged through a CUDA buffer: NCCL's point-to-point receives must match the sent size,
which the eager frames do not, and shared memory announces over gloo.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from sparsembed.comm import shm
from sparsembed.comm.device import device_wire, gather_ints, staged_all_gather
from sparsembed.comm.stats import Clock
from sparsembed.rows import codec

__all__ = ["Link", "EagerSends", "PaddedAllGather", "SharedSlots", "replicated_link", "collective_link", "rank_world",
           "buffer", "EAGER_BYTES"]

#: Per peer, messages up to this many bytes travel in the same round as their size (see :class:`EagerSends`).
EAGER_BYTES = 32 << 20
_EAGER_HEAD = struct.Struct("<qq")  # message size (-1: this rank goes dense), magic
_EAGER_MAGIC = 0x5350_4547_4552_3031  # guards against a message that is not an eager frame


def rank_world(group: Any) -> tuple[int, int]:
    """This rank and the group's size; ``(0, 1)`` without an initialized process group."""
    if not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


_BUFFERS: dict[str, torch.Tensor] = {}


def buffer(tag: str, nbytes: int) -> torch.Tensor:
    """A uint8 tensor of ``nbytes`` reused across steps: fresh large allocations pay page faults every step."""
    buf = _BUFFERS.get(tag)
    if buf is None or buf.numel() < nbytes:
        buf = torch.empty(max(nbytes, 1 << 12) * 5 // 4, dtype=torch.uint8)
        _BUFFERS[tag] = buf
    return buf[:nbytes]


def _lap(clock: Clock | None, phase: str) -> None:
    if clock is not None:
        clock.lap(phase)


class Link:
    """How one exchange's messages travel (see the module docstring). ``shared``: the ranks share memory."""

    shared = False

    def __init__(self, group: Any) -> None:
        self.group = group
        self.rank, self.world = rank_world(group)

    def out(self) -> np.ndarray | None:
        """Where this rank may encode its message in place (a shared slot), or None."""
        return None

    def announce(self, msg: np.ndarray | None, size: int, clock: Clock | None = None) -> np.ndarray:
        """Every rank's message size (``msg`` is None and ``size`` -1 on a rank that goes dense). Collective."""
        raise NotImplementedError

    def collect(self, clock: Clock | None = None) -> list[np.ndarray]:
        """Every rank's message after :meth:`announce` (views valid until :meth:`release`). Collective."""
        raise NotImplementedError

    def release(self) -> None:
        """The collected messages are read: their buffers may be reused."""

    def gather(self, msg: np.ndarray, clock: Clock | None = None) -> list[np.ndarray]:
        """Every rank's message, in rank order. Collective."""
        self.announce(msg, msg.shape[0], clock)
        out = self.collect(clock)
        self.release()
        return out


class EagerSends(Link):
    """Each rank sends each peer a frame: its size then as much of its message as fits in the eager capacity.

    Receivers post the full capacity and read the actual size from the frame: gloo accepts a message shorter than
    the posted buffer (tests/test_exchange.py checks it), so a small message costs one latency instead of two (size
    swap, then message) and nothing is padded. Larger messages finish in a second round of known sizes.
    """

    def __init__(self, group: Any) -> None:
        super().__init__(group)
        self._msg: np.ndarray | None = None
        self._sizes = np.empty(0, np.int64)
        self._blocks: list[np.ndarray | None] = []

    def _capacity(self) -> int:
        """Bytes of the round-1 frame per peer: the same on every rank, bounded in total receive memory."""
        return _EAGER_HEAD.size + max(64 << 10, EAGER_BYTES // max(self.world - 1, 1))

    def announce(self, msg: np.ndarray | None, size: int, clock: Clock | None = None) -> np.ndarray:
        """One round of ``isend`` / ``irecv``: every rank's size and the messages that fit the frame."""
        rank, world = self.rank, self.world
        cap = self._capacity()
        head = _EAGER_HEAD.pack(size, _EAGER_MAGIC)
        first = 0 if msg is None else min(size, cap - _EAGER_HEAD.size)
        frame = buffer("eager-send", _EAGER_HEAD.size + first).numpy()
        frame[: _EAGER_HEAD.size] = np.frombuffer(head, np.uint8)
        if first:
            frame[_EAGER_HEAD.size :] = msg[:first]
        _lap(clock, "frame")
        reqs, blocks = [], [None] * world
        for step in range(1, world):  # staggered peers: not everyone talks to rank 0 first
            src = (rank - step) % world
            buf = buffer(f"recv-{step}", cap)
            reqs.append(dist.irecv(buf, group=self.group, group_src=src))
            blocks[src] = buf.numpy()
        send = torch.from_numpy(frame)
        for step in range(1, world):
            reqs.append(dist.isend(send, group=self.group, group_dst=(rank + step) % world))
        for req in reqs:
            req.wait()
        sizes = np.empty(world, np.int64)
        sizes[rank] = size
        for r, b in enumerate(blocks):
            if b is not None:
                sizes[r], magic = _EAGER_HEAD.unpack(b[: _EAGER_HEAD.size].tobytes())
                if magic != _EAGER_MAGIC or sizes[r] < -1:
                    raise codec.CodecError(f"exchange: rank {r} sent a malformed eager frame")
        _lap(clock, "eager_round")
        self._msg, self._sizes, self._blocks = msg, sizes, blocks
        return sizes

    def collect(self, clock: Clock | None = None) -> list[np.ndarray]:
        """Complete every message larger than the eager frame with a second round; returns all ranks' messages."""
        rank, world, msg, sizes, blocks = self.rank, self.world, self._msg, self._sizes, self._blocks
        cap = self._capacity() - _EAGER_HEAD.size
        out: list[np.ndarray] = [msg] * world
        reqs = []
        for step in range(1, world):
            src = (rank - step) % world
            n = int(sizes[src])
            if n > cap:  # grow this peer's buffer, keeping the part that arrived
                head = blocks[src][: _EAGER_HEAD.size + cap].copy()
                full = buffer(f"recv-{step}", _EAGER_HEAD.size + n)
                full.numpy()[: head.shape[0]] = head
                reqs.append(dist.irecv(full[_EAGER_HEAD.size + cap :], group=self.group, group_src=src, tag=1))
                blocks[src] = full.numpy()
            out[src] = blocks[src][_EAGER_HEAD.size : _EAGER_HEAD.size + n]
        if msg.shape[0] > cap:
            rest = torch.from_numpy(msg[cap:])
            for step in range(1, world):
                reqs.append(dist.isend(rest, group=self.group, group_dst=(rank + step) % world, tag=1))
        for req in reqs:
            req.wait()
        _lap(clock, "transfer")
        return out


class PaddedAllGather(Link):
    """Every rank's message by ``all_gather``: a first round of ``capacity`` bytes a rank (padded) holds each
    message's length and its head; a rank whose message is longer says so, and a second all-gather moves the
    tails. The capacity then grows, identically on every rank, to 5/4 of the longest message seen. Messages are
    host arrays; over NCCL each all-gather is staged through a CUDA buffer
    (:func:`~sparsembed.comm.device.staged_all_gather`).
    """

    def __init__(self, group: Any, capacity: int = 64 << 10) -> None:
        super().__init__(group)
        self.capacity = capacity
        self._msg: np.ndarray | None = None
        self._total = np.empty(0, np.int64)
        self._blocks: list[np.ndarray] = []

    def announce(self, msg: np.ndarray | None, size: int, clock: Clock | None = None) -> np.ndarray:
        """The first all-gather: every rank's size and the first ``capacity`` bytes of its message."""
        world, cap = self.world, self.capacity
        first = np.zeros(cap + 8, np.uint8)
        first[:8].view(np.int64)[0] = size
        if msg is not None:
            first[8 : 8 + min(cap, size)] = msg[:cap]
        out = torch.empty(world * (cap + 8), dtype=torch.uint8)
        staged_all_gather(out, torch.from_numpy(first), self.group)
        got = out.numpy().reshape(world, cap + 8)
        total = got[:, :8].copy().view(np.int64)[:, 0]
        self._msg, self._total = msg, total
        self._blocks = [got[r, 8 : 8 + min(cap, int(total[r]))] for r in range(world)]
        return total

    def collect(self, clock: Clock | None = None) -> list[np.ndarray]:
        """The tails of messages longer than the capacity, by a second all-gather (and a larger capacity)."""
        world, cap, msg, total, blocks = self.world, self.capacity, self._msg, self._total, self._blocks
        longest = int(total.max())
        if longest > cap:
            tail = np.zeros(longest - cap, np.uint8)
            if msg is not None:
                tail[: max(0, msg.shape[0] - cap)] = msg[cap:]
            out2 = torch.empty(world * tail.shape[0], dtype=torch.uint8)
            staged_all_gather(out2, torch.from_numpy(tail), self.group)
            got2 = out2.numpy().reshape(world, tail.shape[0])
            blocks = [np.concatenate([blocks[r], got2[r, : max(0, int(total[r]) - cap)]]) for r in range(world)]
            self.capacity = (longest * 5 // 4 + 4095) // 4096 * 4096
        return blocks

    def gather_ints(self, values: list[int]) -> np.ndarray:
        """Every rank's int vector, ``[world, len(values)]``, by one all-gather."""
        return gather_ints(values, self.group)

    def gather_sized(self, msg: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
        """Every rank's message when every rank knows every size: one all-gather padded to the largest."""
        width = int(sizes.max())
        padded = torch.zeros(width, dtype=torch.uint8)
        padded[: msg.shape[0]] = torch.from_numpy(msg)
        out = torch.empty(self.world * width, dtype=torch.uint8)
        staged_all_gather(out, padded, self.group)
        return [out.numpy()[r * width : r * width + int(sizes[r])] for r in range(self.world)]


class SharedSlots(Link):
    """Messages through shared-memory slots (:class:`sparsembed.comm.shm.HostSlots`): each rank writes its message
    into its slot and announces it (:meth:`shm.HostSlots.publish`); peers read the slots in place. Collective to
    create: every rank of ``group`` passes the same ``capacity``.
    """

    shared = True

    def __init__(self, group: Any, capacity: int) -> None:
        super().__init__(group)
        self.slots = shm.HostSlots(capacity, group)
        self._blocks: list[np.ndarray] = []

    def out(self) -> np.ndarray:
        """This rank's slot: a message encoded there needs no copy."""
        return self.slots.slot()

    def announce(self, msg: np.ndarray | None, size: int, clock: Clock | None = None) -> np.ndarray:
        """Announce this rank's slot (``msg`` is copied in unless it was encoded there) and read every size."""
        slot = self.slots.slot()
        if msg is not None and msg.ctypes.data != slot.ctypes.data:
            slot[:size] = msg
        sizes = self.slots.publish(size)
        self._blocks = [self.slots.slot(r)[: max(int(sizes[r]), 0)] for r in range(self.world)]
        _lap(clock, "shm_round")
        return sizes

    def collect(self, clock: Clock | None = None) -> list[np.ndarray]:
        """Views of every rank's slot, valid until :meth:`release`."""
        return self._blocks

    def release(self) -> None:
        """Move to the other parity of slots (see :mod:`sparsembed.comm.shm`)."""
        self.slots.advance()

    def gather(self, msg: np.ndarray, clock: Clock | None = None) -> list[np.ndarray]:
        """Every rank's message; the views stay valid until this rank's next announcement (no peer writes these
        slots again before it).

        A message larger than the slots is announced as ``-2 - size`` instead; every rank then sees who needs how
        much, and all replace their slots by larger ones together and announce again.
        """
        fits = msg.shape[0] <= self.slots.capacity
        if fits:
            self.slots.slot()[: msg.shape[0]] = msg
        sizes = self.slots.publish(msg.shape[0] if fits else -2 - msg.shape[0])
        if np.any(sizes < -1):
            self.slots.advance()
            needed = int(np.where(sizes < -1, -2 - sizes, sizes).max())
            self.slots = shm.HostSlots(needed * 5 // 4, self.group)
            return self.gather(msg, clock)
        blocks = [self.slots.slot(r)[: int(sizes[r])] for r in range(self.world)]
        self.slots.advance()
        return blocks


_ONE_HOST: dict[Any, bool] = {}
_SLOTS: dict[Any, SharedSlots] = {}
_GATHERS: dict[Any, PaddedAllGather] = {}


def collective_link(group: Any) -> Link:
    """The link of an exchange without shared memory: eager sends over gloo; over NCCL a padded all-gather (kept
    per group: its capacity adapts to the messages)."""
    if not device_wire(group):
        return EagerSends(group)
    key = (id(group), *rank_world(group))  # a group made again after destroy_process_group may differ in size
    if key not in _GATHERS:
        _GATHERS[key] = PaddedAllGather(group)
    return _GATHERS[key]


def replicated_link(group: Any, num_rows: int, dim: int, shared: bool) -> Link:
    """The link of a replicated exchange of a ``num_rows x dim`` matrix: shared-memory slots when ``shared`` is
    allowed, the group carries host tensors (gloo) and every rank of ``group`` is on this host (slots kept per
    group and shape), else :func:`collective_link`. Collective on first use per group and shape (every rank
    reaches it in the same call)."""
    if not shared or device_wire(group):
        return collective_link(group)
    key = id(group)
    if key not in _ONE_HOST:
        _ONE_HOST[key] = shm.one_host(group)
    if not _ONE_HOST[key]:
        return EagerSends(group)
    if (key, num_rows, dim) not in _SLOTS:
        # Bound of a message of distinct rows: header, ids (no encoding takes 8 bytes an id), fp32 values,
        # and what zstd / lz4 may add to incompressible bytes.
        raw = codec.HEADER_SIZE + num_rows * (8 + 4 * dim)
        _SLOTS[key, num_rows, dim] = SharedSlots(group, raw + raw // 64 + 4096)
    return _SLOTS[key, num_rows, dim]
