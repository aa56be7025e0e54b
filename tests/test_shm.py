"""Shared-memory slots of ranks on one host: announcements by flags (or one tiny collective), dead or silent peers."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from datetime import timedelta
from typing import Any

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

    from sparsembed.comm import shm

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

    from sparsembed.comm import shm

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

    from sparsembed.comm import shm

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


def _survivor_report(rank_main: Any) -> str:
    """Run ``rank_main(rank, port, results)`` on 2 spawned ranks whose rank 1 exits; returns rank 0's report, the
    seconds it waited then its error (skips where announcements are not by flags)."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=rank_main, args=(r, port, results), daemon=True) for r in range(2)]
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
    return out


def test_dead_peer_is_named_at_once() -> None:
    """A peer whose process is gone ends the wait within a fraction of a second, not after the group's timeout."""
    out = _survivor_report(_dying_rank)
    waited, message = out.split(" ", 1)
    assert float(waited) < 2.0, out
    assert "peer rank 1" in message and "exited" in message, out


def _host_matrix_steps(rows: int, dim: int, steps: int, sync: str) -> list:
    """Every step each rank changes some rows of its working copy (a rank may touch none, a row may be touched
    by one rank, several, or none) and the exchange sums them; returns, per step, the matrices it saw."""
    import torch.distributed as dist

    from sparsembed.comm import shm

    rank = dist.get_rank()
    start = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32)
    os.environ["SPARSEMBED_SHM_SYNC"] = sync
    try:
        host = shm.HostMatrix(start, timeout=60)
    finally:
        os.environ.pop("SPARSEMBED_SHM_SYNC")
    out = []
    for step in range(steps):
        rng = np.random.default_rng(100 * step + rank)
        density = [0.0, 0.02, 0.5, 1.0][(step + rank) % 4]
        rows_touched = np.flatnonzero(rng.random(rows) < density)
        host.touched[rows_touched] = 1
        host.work[rows_touched] += rng.standard_normal((rows_touched.size, dim)).astype(np.float32)
        mine = (host.work.copy(), host.touched.copy())
        n = host.exchange()
        # Only this rank's copy and marks: a peer may already be training its next step.
        out.append((n, *mine, host.ref.copy(), host.work.copy(), host.touched.copy()))
    return out


def _sum_in_rank_order(ref: np.ndarray, ranks: list) -> np.ndarray:
    """The reference plus, per row, the changes of the ranks that marked it, added in rank order in float32."""
    new = ref.copy()
    for r in range(ref.shape[0]):
        changes = [work[r] - ref[r] for work, marks in ranks if marks[r]]
        if changes:
            total = changes[0].copy()
            for change in changes[1:]:
                total += change
            new[r] = ref[r] + total
    return new


@pytest.mark.parametrize(("world", "rows", "sync"), [(2, 1000, "auto"), (2, 130, "collective"), (3, 333, "auto")])
def test_host_matrix_sums_in_place_like_gloo_in_rank_order(pool, world: int, rows: int, sync: str) -> None:
    """The sum of every rank's change lands bit for bit (float32, rank order, only ranks that marked the row)
    in the reference and in every rank's working copy; marks are cleared; blocks of rows summed by different
    ranks (rows not a multiple of the block, a block count not a multiple of the ranks)."""
    if world == pool.world_size:
        results = pool.run(_host_matrix_steps, rows, 5, 6, sync)
    else:
        with DistPool(world) as other:
            results = other.run(_host_matrix_steps, rows, 5, 6, sync)
    ref = np.random.default_rng(0).standard_normal((rows, 5)).astype(np.float32)
    for step in range(6):
        seen = [r[step] for r in results]
        assert [s[0] for s in seen] == [int(np.count_nonzero(s[2])) for s in seen]
        expected = _sum_in_rank_order(ref, [(s[1], s[2]) for s in seen])
        for _, _, _, new_ref, work, marks in seen:
            np.testing.assert_array_equal(new_ref, expected)
            np.testing.assert_array_equal(work, expected)
            assert not marks.any()
        ref = expected
    assert any(s[0] == 0 for r in results for s in r) and any(s[0] == rows for r in results for s in r)


def _room_check(need: int) -> bool:
    from sparsembed.comm.shm import one_host

    return one_host(need=need)


def test_no_shared_memory_when_dev_shm_lacks_room(pool) -> None:
    from sparsembed.comm.shm import shm_room

    assert pool.run(_room_check, 1 << 20) == [True, True]
    assert pool.run(_room_check, shm_room() + (1 << 40)) == [False, False]


def _draw_all(limits: list[int]) -> list[list[int]]:
    """Two threads per rank draw from one counter until each limit is reached; returns the numbers drawn."""
    from concurrent.futures import ThreadPoolExecutor

    import torch.distributed as dist

    from sparsembed.comm import shm

    counter = shm.HostCounter()
    drawn = []
    for limit in limits:
        def draw(_: int, limit: int = limit) -> list[int]:
            got = []
            while (number := counter.draw(limit)) is not None:
                got.append(number)
            return got

        with ThreadPoolExecutor(2) as pool:
            drawn.append(sorted(n for got in pool.map(draw, range(2)) for n in got))
        dist.barrier()  # every rank is done with this limit before anyone draws towards the next
    return drawn


def test_counter_hands_out_each_number_once(pool) -> None:
    """4 drawers (2 ranks x 2 threads) race for the same numbers: each is drawn exactly once, in every round."""
    out = pool.run(_draw_all, [3000, 3001, 5000])
    for i, (low, high) in enumerate([(0, 3000), (3000, 3001), (3001, 5000)]):
        together = sorted(out[0][i] + out[1][i])
        assert together == list(range(low, high)), i
    assert all(out[r][0] for r in range(2))  # both ranks won some draws of the long round


def _barrier_times(rounds: int) -> list[tuple[float, float]]:
    """Each round one rank (in turn) dawdles 1-3 ms before the barrier; returns (arrival, departure) per round."""
    import torch.distributed as dist

    from sparsembed.comm import shm

    barrier = shm.HostBarrier()
    rank = dist.get_rank()
    times = []
    for i in range(rounds):
        dist.barrier()
        if i % 2 == rank:
            time.sleep(0.001 * (1 + i % 3))
        arrived = time.perf_counter()  # one host: every rank reads the same clock
        barrier.wait()
        times.append((arrived, time.perf_counter()))
    return times


def test_host_barrier_lets_no_rank_go_before_the_last_arrives(pool) -> None:
    out = pool.run(_barrier_times, 30)
    gaps = []
    for i in range(30):
        last_arrival = max(out[r][i][0] for r in range(2))
        departures = [out[r][i][1] for r in range(2)]
        assert min(departures) >= last_arrival, i
        gaps.append(max(departures) - min(departures))
    # Ranks leave together: a gloo barrier on loopback lets them go ~1 ms apart; polled flags, microseconds (the
    # bound leaves room for a busy test machine descheduling a rank now and then).
    assert sorted(gaps)[len(gaps) // 2] < 2e-4, gaps


def _rank_dying_mid_sum(rank: int, port: int, results: mp.Queue) -> None:
    """Rank 1 announces that it finished training, then exits before announcing its part of the sum."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    import torch.distributed as dist

    from sparsembed.comm import shm

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    host = shm.HostMatrix(np.zeros((256, 4), np.float32))
    host.touched[:] = 1
    if rank == 1:
        host.publish(256)
        os._exit(0)
    t0 = time.perf_counter()
    try:
        host.exchange()
        results.put("returned")
    except RuntimeError as exc:
        results.put(f"{time.perf_counter() - t0:.2f} {exc}" if host.flags else "no flags")


def test_peer_dying_during_the_in_place_sum_is_named_at_once() -> None:
    out = _survivor_report(_rank_dying_mid_sum)
    waited, message = out.split(" ", 1)
    assert float(waited) < 2.0, out
    assert "peer rank 1" in message and "exited" in message and "message 2" in message, out
