"""Shared memory for the ranks of one host: the bytes of an exchange without TCP.

Between ranks on one machine, gloo moves every byte through loopback TCP: copied into the kernel by the sender,
out of it by the receiver, with the CPU doing both. :class:`HostSlots` gives every rank of a group one slot in a
segment of ``/dev/shm`` mapped by all of them: a rank writes its message (a row block, a dense change) into its
slot, one tiny collective of ``torch.distributed`` (an all-gather of the sizes, with the group's timeout) says
that every slot is written, and each rank reads its peers' slots in place. torch.distributed still runs the
group (launch, rendezvous, timeouts, failure detection); only the payload takes the shorter path.

Two slots per rank, used alternately (step parity): a rank writes slot ``p`` of step ``s + 2`` only after the
collective of step ``s + 1``, which every rank enters after reading step ``s``, so a slot is never overwritten
while read, with one collective per exchange.

Used only when every rank of the group runs on the same host *and* in the same network namespace (hostname, boot
id and ``/proc/self/ns/net`` agree: ranks in separate namespaces stand for separate hosts in our benchmarks), and
``SPARSEMBED_SHM`` is not ``0``. The segment's name is removed as soon as every rank has mapped it, so nothing is
left in ``/dev/shm`` whatever happens to the ranks afterwards.
"""

from __future__ import annotations

import mmap
import os
import socket
import uuid
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

SHM_DIR = "/dev/shm"


def _host_identity() -> tuple[str, str, str]:
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()  # noqa: SIM115
        netns = os.readlink("/proc/self/ns/net")
    except OSError:
        return socket.gethostname(), "", str(uuid.uuid4())  # unknown: never equal to another rank's
    return socket.gethostname(), boot, netns


def one_host(group: Any = None) -> bool:
    """True when every rank of ``group`` shares this host's memory (collective: every rank must call it)."""
    if os.environ.get("SPARSEMBED_SHM", "1") == "0" or not os.path.isdir(SHM_DIR):
        identity: Any = None
    else:
        identity = _host_identity()
    everyone: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, identity, group=group)
    return identity is not None and all(other == identity for other in everyone)


class HostSlots:
    """``world`` ranks x 2 parities x ``capacity`` bytes in one shared segment (see the module docstring), mapped
    until the process ends (the exchange keeps its slots for the life of the group).

    Collective to create: every rank of ``group`` constructs it with the same ``capacity``.
    """

    def __init__(self, capacity: int, group: Any = None) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.capacity = (int(capacity) + 63) // 64 * 64  # every slot starts on a cache line
        size = 2 * self.world * self.capacity
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
            os.close(fd)
        dist.barrier(group=group)  # everyone has it mapped: the name can go
        if self.rank == 0:
            os.unlink(path)
        self._all = np.frombuffer(self._map, dtype=np.uint8).reshape(2, self.world, self.capacity)
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
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([nbytes], dtype=torch.int64), group=self.group)
        return np.array([int(s) for s in sizes], dtype=np.int64)

    def advance(self) -> None:
        """Switch to the other parity: call once per exchange, after reading the peers' slots."""
        self.parity ^= 1
