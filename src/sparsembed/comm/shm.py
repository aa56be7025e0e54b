"""Shared memory for the ranks of one host: the bytes of an exchange without TCP.

Between ranks on one machine, gloo moves every byte through loopback TCP: copied into the kernel by the sender,
out of it by the receiver, with the CPU doing both. :class:`HostSlots` gives every rank of a group one slot in a
segment of ``/dev/shm`` mapped by all of them: a rank writes its message (a row block, a dense change) into its
slot, says so, and each rank reads its peers' slots in place once every rank has said so.

"Says so" is a sequence number and a size in the rank's own cache line of the segment, which the peers poll
(x86-64 keeps stores in order, so a peer that sees the number sees the message). Even a tiny gloo all-gather
costs about as much as decoding a megabyte-sized message; polling costs microseconds when the ranks arrive
together (measured, see BENCHMARKS.md). torch.distributed still runs the group (launch, rendezvous, every other
collective); the wait is bounded by the group's timeout and ends at once when a peer's process is gone (the
ranks' pids are in the segment), raising an error that :class:`sparsembed.dataparallel.watchdog.PeerWatch` turns
into one line naming the rank. On other architectures (weaker memory ordering), or with
``SPARSEMBED_SHM_SYNC=collective``, the sizes go through one tiny all-gather of torch.distributed instead.

:class:`HostMatrix` goes further for a matrix every rank trains (data-parallel word2vec): the agreed reference
(one copy for the host), each rank's working copy and its marks of touched rows all live in the segment, and an
exchange is an all-reduce in place: each rank sums its part of the rows over all working copies into the
reference and writes the result into every working copy, between two announcements.

Two slots per rank, used alternately (step parity): a rank writes slot ``p`` of step ``s + 2`` only after every
rank has announced step ``s + 1``, which each does after reading step ``s``, so a slot is never overwritten while
read.

Used only when every rank of the group runs on the same host *and* in the same network, mount and pid namespaces
(hostname, boot id and ``/proc/self/ns/{net,mnt,pid}`` agree: ranks in separate network namespaces stand for
separate hosts in our benchmarks), and ``SPARSEMBED_SHM`` is not ``0``. The segment's name is removed as soon
as every rank has mapped it, so nothing is left in ``/dev/shm`` whatever happens to the ranks afterwards.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import platform
import socket
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import numba
import numpy as np
import torch
import torch.distributed as dist

SHM_DIR = "/dev/shm"
LINE = 64  # bytes of one rank's flags: a cache line of its own, holding int64 words at these indices
_SEQ, _SIZES, _PID = 0, 1, 3  # last announcement, its size (two words, by announcement parity), process id
#: Seconds of pure polling before a waiting rank starts yielding its core (ranks sharing cores must not starve
#: the rank they wait for).
SPIN_SECONDS = 2e-4
#: Seconds of yielding before a waiting rank sleeps between polls (a long wait must not burn a core).
YIELD_SECONDS = 5e-3
#: Seconds between checks that the awaited peers' processes still exist.
LIVENESS_EVERY = 0.05


def _host_identity() -> tuple[str, ...]:
    """Equal for two processes that see the same /dev/shm and each other's pids in the same network namespace."""
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()  # noqa: SIM115
        spaces = tuple(os.readlink(f"/proc/self/ns/{ns}") for ns in ("net", "mnt", "pid"))
    except OSError:
        return socket.gethostname(), "", str(uuid.uuid4())  # unknown: never equal to another rank's
    return socket.gethostname(), boot, *spaces


def host_status(group: Any = None, need: int = 0) -> tuple[bool, bool]:
    """``(one host, room)``: whether every rank of ``group`` shares this host's memory (and shared memory is
    allowed), and whether every rank's /dev/shm has ``need`` bytes free. Collective: every rank calls it with the
    same ``need``."""
    if os.environ.get("SPARSEMBED_SHM", "1") == "0" or not os.path.isdir(SHM_DIR):
        identity: Any = None
    else:
        identity = _host_identity()
    everyone: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, (identity, shm_room() >= need), group=group)
    same = identity is not None and all(other == identity for other, _ in everyone)
    return same, all(room for _, room in everyone)


def spans_hosts(group: Any = None) -> bool:
    """Whether the ranks of ``group`` run on more than one host (machine, or network namespace), whatever shared
    memory allows: whether their traffic crosses a network. Collective."""
    everyone: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, _host_identity(), group=group)
    return any(other != everyone[0] for other in everyone)


def one_host(group: Any = None, need: int = 0) -> bool:
    """True when every rank of ``group`` shares this host's memory, and /dev/shm has ``need`` bytes free
    (collective: every rank must call it, with the same ``need``)."""
    return all(host_status(group, need))


def _flag_sync() -> bool:
    """Whether ranks may announce their slots by polling flags (see the module docstring)."""
    mode = os.environ.get("SPARSEMBED_SHM_SYNC", "auto")
    return mode != "collective" and platform.machine().lower() in ("x86_64", "amd64")


def group_timeout(group: Any) -> float:
    """Seconds the group's collectives wait before failing (the default 30 minutes if torch does not say)."""
    try:
        pg = group if group is not None else dist.distributed_c10d._get_default_group()
        return pg._get_backend(torch.device("cpu")).options._timeout.total_seconds()
    except Exception:  # private API: fall back to torch's documented default
        return timedelta(minutes=30).total_seconds()


def _alive(pid: int) -> bool:
    """False once process ``pid`` has exited (a zombie not yet reaped by its launcher counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def _align(nbytes: int) -> int:
    return (int(nbytes) + LINE - 1) // LINE * LINE


def shm_room() -> int:
    """Bytes free in /dev/shm (0 when it cannot be read): a segment larger than this would fault when written."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


class _Segment:
    """One flag line per rank, then ``body`` bytes, in a segment of /dev/shm mapped by every rank of ``group``
    until the process ends; :meth:`publish` announces and waits (see the module docstring). Collective to
    create."""

    def __init__(self, body: int, group: Any = None, timeout: float | None = None, lockable: bool = False) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.timeout = group_timeout(group) if timeout is None else float(timeout)
        self.flags = _flag_sync()
        self.head = self.world * LINE
        size = self.head + int(body)
        name = [f"sparsembed-{uuid.uuid4().hex}" if self.rank == 0 else None]
        dist.broadcast_object_list(name, group=group, group_src=0)
        path = os.path.join(SHM_DIR, name[0])
        if self.rank == 0:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.ftruncate(fd, size)
            os.close(fd)
        dist.barrier(group=group)
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, size)
        finally:
            if not lockable:
                os.close(fd)
        self._fd = fd if lockable else -1  # each rank's own open file: flock on it excludes the other ranks
        dist.barrier(group=group)  # everyone has it mapped: the name can go
        if self.rank == 0:
            os.unlink(path)
        self._lines = np.frombuffer(self._map, dtype=np.int64, count=self.head // 8).reshape(self.world, LINE // 8)
        self._lines[self.rank, _PID] = os.getpid()
        self.seq = 0
        dist.barrier(group=group)  # every pid is written before anyone waits on it

    def _view(self, shape: tuple[int, ...], dtype: Any, offset: int, strides: tuple[int, ...]) -> np.ndarray:
        """An array over the body's bytes from ``offset`` on."""
        return np.ndarray(shape, dtype=dtype, buffer=self._map, offset=self.head + offset, strides=strides)

    def publish(self, nbytes: int) -> np.ndarray:
        """Say this rank's part holds ``nbytes`` (-1: nothing usable) and wait until every rank has said so;
        returns every rank's count. Collective."""
        if not self.flags:
            sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
            dist.all_gather(sizes, torch.tensor([nbytes], dtype=torch.int64), group=self.group)
            return np.array([int(s) for s in sizes], dtype=np.int64)
        self.seq += 1
        # Sizes alternate between two words by announcement: a peer may announce the next one (never two
        # ahead: that waits for us) before we have read this one.
        size = _SIZES + self.seq % 2
        mine = self._lines[self.rank]
        mine[size] = nbytes
        mine[_SEQ] = self.seq  # after the size and the message: x86-64 makes stores visible in program order
        self._wait(self.seq)
        return self._lines[:, size].copy()

    def _wait(self, seq: int) -> None:
        """Poll until every rank has announced ``seq``: spin briefly, then yield the core, then sleep between
        polls."""
        seqs = self._lines[:, _SEQ]
        start = time.perf_counter()
        while int(seqs.min()) < seq:
            if time.perf_counter() - start > SPIN_SECONDS:
                self._wait_yielding(seq, start)
                return

    def _wait_yielding(self, seq: int, start: float) -> None:
        seqs = self._lines[:, _SEQ]
        checked = start
        while int(seqs.min()) < seq:
            now = time.perf_counter()
            if now - start < YIELD_SECONDS:
                os.sched_yield()
            else:
                time.sleep(5e-5)
            if now - checked < LIVENESS_EVERY:
                continue
            checked = now
            late = [r for r in range(self.world) if seqs[r] < seq]
            gone = [r for r in late if not _alive(int(self._lines[r, _PID]))]
            if gone:
                raise RuntimeError(
                    f"shared-memory exchange: peer rank {gone[0]} (pid {int(self._lines[gone[0], _PID])}) exited "
                    f"before announcing its message {seq}"
                )
            if now - start > self.timeout:
                raise RuntimeError(
                    f"shared-memory exchange: timed out after {self.timeout:g} s waiting for peer rank {late[0]} "
                    f"to announce its message {seq}"
                )


class HostSlots(_Segment):
    """``world`` ranks x 2 parities x ``capacity`` bytes (see the module docstring). Collective to create: every
    rank of ``group`` constructs it with the same ``capacity``. ``timeout``: seconds :meth:`publish` waits for
    the peers (default: the group's timeout)."""

    def __init__(self, capacity: int, group: Any = None, timeout: float | None = None) -> None:
        self.capacity = _align(capacity)  # every slot starts on a cache line
        world = dist.get_world_size(group)
        super().__init__(2 * world * self.capacity, group, timeout)
        self._all = self._view((2, world, self.capacity), np.uint8, 0, (world * self.capacity, self.capacity, 1))
        self.parity = 0

    def slot(self, rank: int | None = None) -> np.ndarray:
        """The current step's slot of ``rank`` (default: this rank's, the one to write) as ``capacity`` bytes."""
        return self._all[self.parity, self.rank if rank is None else rank]

    def slots(self) -> np.ndarray:
        """Every rank's current slot, ``[world, capacity]`` bytes (rank order)."""
        return self._all[self.parity]

    def publish(self, nbytes: int) -> np.ndarray:
        """Say this rank's slot holds ``nbytes`` (-1: nothing usable) and wait until every rank has said so;
        returns every rank's count. Collective."""
        if nbytes > self.capacity:
            raise ValueError(f"message of {nbytes} bytes exceeds the slot's {self.capacity}")
        return super().publish(nbytes)

    def advance(self) -> None:
        """Switch to the other parity: call once per exchange, after reading the peers' slots."""
        self.parity ^= 1


class HostCounter(_Segment):
    """A counter every rank of one host draws from, each number once (a lock on the segment's file serialises
    the draws of processes, and a thread lock those of this process's threads): ranks share out work as each
    becomes free. Collective to create."""

    def __init__(self, group: Any = None) -> None:
        super().__init__(LINE, group, lockable=True)
        self._value = self._view((1,), np.int64, 0, (8,))
        self._threads = threading.Lock()

    def draw(self, limit: int) -> int | None:
        """The next number, below ``limit``; None when every number below ``limit`` was drawn."""
        with self._threads:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                value = int(self._value[0])
                if value >= limit:
                    return None
                self._value[0] = value + 1
                return value
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)


class HostBarrier(_Segment):
    """A barrier for the ranks of one host through their flag lines: once the last rank arrives, every rank
    leaves within microseconds (the waiting ranks poll, :data:`SPIN_SECONDS` then yielding), where a gloo barrier
    on loopback lets one rank go much later than the other (measured, see BENCHMARKS.md). Collective to create."""

    def __init__(self, group: Any = None, timeout: float | None = None) -> None:
        super().__init__(0, group, timeout)

    def wait(self) -> None:
        """Return once every rank of the group has called :meth:`wait` as often as this one. Collective."""
        self.publish(0)


#: Rows per block of :class:`HostMatrix`'s parts: 64 rows are a whole number of cache lines of marks and of
#: float32 rows, so two ranks never write the same line, and blocks dealt in turn balance frequency-sorted rows.
BLOCK_ROWS = 64


class HostMatrix(_Segment):
    """One matrix trained data-parallel by the ranks of one host: the reference they all agree on (one copy),
    each rank's working copy and the marks of the rows it touched, all in shared memory.

    :meth:`exchange` is an all-reduce in place: each rank sums every rank's change (``work - reference``) of
    its part of the rows (blocks of :data:`BLOCK_ROWS`, dealt in turn) in rank order, adds it to the reference
    and writes the new row into every rank's working copy. Each row is read and written once per rank, instead
    of every rank copying its change out and merging all of them into its own reference and working copy.
    Collective to create: every rank passes the same ``matrix`` (this rank's working copy starts as it).
    """

    def __init__(self, matrix: np.ndarray, group: Any = None, timeout: float | None = None) -> None:
        rows, dim = matrix.shape
        world = dist.get_world_size(group)
        plane, marks, total = HostMatrix._layout(rows, dim, world)
        super().__init__(total, group, timeout)
        row = (4 * dim, 4)
        self.ref = self._view((rows, dim), np.float32, 0, row)
        self.works = self._view((world, rows, dim), np.float32, plane, (plane, *row))
        self.marks = self._view((world, rows), np.uint8, (world + 1) * plane, (marks, 1))
        self.work, self.touched = self.works[self.rank], self.marks[self.rank]
        self.work[:] = matrix
        if self.rank == 0:
            self.ref[:] = matrix
        dist.barrier(group=group)

    @staticmethod
    def footprint(rows: int, dim: int, world: int) -> int:
        """Bytes of shared memory a ``rows x dim`` matrix takes for ``world`` ranks."""
        return HostMatrix._layout(rows, dim, world)[2]

    @staticmethod
    def _layout(rows: int, dim: int, world: int) -> tuple[int, int, int]:
        """``(plane, marks, total)``: bytes of one matrix (the reference, then each working copy), of one rank's
        marks (after the matrices), and of the whole segment."""
        plane, marks = _align(4 * rows * dim), _align(rows)
        return plane, marks, (world + 1) * plane + world * marks

    def exchange(self) -> int:
        """Sum every rank's change of its touched rows into the reference and every working copy (the bits of a
        gloo sum in rank order); clears the marks. Returns how many rows this rank touched. Collective."""
        n = int(np.count_nonzero(self.touched))
        self.publish(n)  # every rank has finished training its copy
        reduce_part(self.ref, self.works, self.marks, self.rank, self.world, BLOCK_ROWS)
        self.publish(n)  # every part is summed: every working copy holds the new reference
        return n


@numba.njit(nogil=True, cache=True)
def reduce_part(ref, works, marks, part, parts, block):  # pragma: no cover - compiled
    """For the rows of blocks ``part``, ``part + parts``, ...: the sum, in rank order, of the changes of the ranks
    that marked the row, added to ``ref`` and written into every rank's working copy."""
    world, rows, dim = works.shape
    total = np.empty(dim, np.float32)
    for start in range(part * block, rows, parts * block):
        for r in range(start, min(start + block, rows)):
            first = True
            for q in range(world):
                if marks[q, r]:
                    marks[q, r] = 0
                    if first:
                        for k in range(dim):
                            total[k] = works[q, r, k] - ref[r, k]
                        first = False
                    else:
                        for k in range(dim):
                            total[k] += works[q, r, k] - ref[r, k]
            if first:
                continue
            for k in range(dim):
                ref[r, k] += total[k]
            for q in range(world):
                for k in range(dim):
                    works[q, r, k] = ref[r, k]
