"""Shared-memory slots of ranks on one host: announcements by flags (or one tiny collective), dead or silent peers."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from datetime import timedelta

import numpy as np
import pytest

from dist_utils import DistPool, free_port


@pytest.fixture(scope="module")
def pool():
    with DistPool(2) as p:
        yield p


def _announce(sync: str, steps: int) -> list[int]:
    """Every step each rank writes a step- and rank-specific message of a varying size, announces it, and checks
    every peer's size and bytes; rank 1 sometimes dawdles, so rank 0 runs ahead into the next announcement."""
    import torch.distributed as dist

    from sparsembed import shm

    os.environ["SPARSEMBED_SHM_SYNC"] = sync
    try:
        slots = shm.HostSlots(4096)
    finally:
        os.environ.pop("SPARSEMBED_SHM_SYNC")
    rank, world = dist.get_rank(), dist.get_world_size()
    rng = np.random.default_rng(rank)
    seen = []
    for step in range(steps):
        size = (step * 37 + rank * 11) % 4000
        slots.slot()[:size] = (step + rank) % 251
        if rank == 1 and rng.random() < 0.3:
            time.sleep(0.002)
        sizes = slots.publish(size)
        for r in range(world):
            assert sizes[r] == (step * 37 + r * 11) % 4000, (step, r, sizes)
            assert np.all(slots.slot(r)[: sizes[r]] == (step + r) % 251), (step, r)
        seen.append(int(sizes.sum()))
        slots.advance()
    return [int(slots.flags), *seen]


@pytest.mark.parametrize("sync", ["auto", "collective"])
def test_announcements_carry_every_size_and_message(pool, sync) -> None:
    out = pool.run(_announce, sync, 60)
    assert out[0] == out[1]
    flags = out[0][0]
    assert flags == (sync == "auto" and os.uname().machine in ("x86_64", "AMD64"))


def _late_peer(timeout: float) -> str:
    """Rank 1 announces only after rank 0 gave up waiting for it."""
    import torch.distributed as dist

    from sparsembed import shm

    slots = shm.HostSlots(64, timeout=timeout)
    if not slots.flags:
        return "no flags"
    if dist.get_rank() == 1:
        time.sleep(4 * timeout)
        slots.publish(1)
        return "published"
    t0 = time.perf_counter()
    try:
        slots.publish(1)
    except RuntimeError as exc:
        return f"{time.perf_counter() - t0:.2f} {exc}"
    return "returned"


def test_silent_peer_times_out(pool) -> None:
    out = pool.run(_late_peer, 0.5)
    if out[0] == "no flags":
        pytest.skip("flag announcements need x86-64")
    waited, message = out[0].split(" ", 1)
    assert 0.5 <= float(waited) < 3.0, out
    assert "timed out" in message and "peer rank 1" in message, out
    assert out[1] == "published"


def _dying_rank(rank: int, port: int, results: mp.Queue) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    import torch.distributed as dist

    from sparsembed import shm

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    slots = shm.HostSlots(64)
    if rank == 1:
        os._exit(0)  # gone without announcing anything
    t0 = time.perf_counter()
    try:
        slots.publish(1)
        results.put("returned")
    except RuntimeError as exc:
        results.put(f"{time.perf_counter() - t0:.2f} {exc}" if slots.flags else "no flags")


def test_dead_peer_is_named_at_once() -> None:
    """A peer whose process is gone ends the wait within a fraction of a second, not after the group's timeout."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_dying_rank, args=(r, port, results), daemon=True) for r in range(2)]
    for p in procs:
        p.start()
    try:
        out = results.get(timeout=120)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    if out == "no flags":
        pytest.skip("flag announcements need x86-64")
    waited, message = out.split(" ", 1)
    assert float(waited) < 2.0, out
    assert "peer rank 1" in message and "exited" in message, out
