"""Shared base for multi-process tests: a pool of gloo ranks, spawned once, that runs many cases.

Spawning a rank costs seconds (a fresh interpreter imports torch), so a test module makes one :class:`DistPool`
(usually a module-scoped fixture) and sends it any number of cases::

    @pytest.fixture(scope="module")
    def pool():
        with DistPool(2) as p:
            yield p

    def test_something(pool):
        results = pool.run(_case, arg)  # _case(arg) runs on every rank, results[rank] is its return value

``_case`` must be a module-level function (it is pickled by reference); inside it ``torch.distributed`` is
initialized on gloo over 127.0.0.1. Everything is bounded: collectives time out (``collective_timeout``), each
call waits at most ``timeout`` seconds, and a pool whose case failed or hung is killed and respawned for the next
call, so one bad case never blocks the rest.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sparsembed.dataparallel.launch import free_port

__all__ = ["DistPool", "free_port"]


def _rank_main(rank: int, world: int, port: int, jobs: Any, results: Any, collective_timeout: float) -> None:
    """One rank: join the gloo group, then run jobs until told to stop."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # ranks share 2 cores with everything else
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=collective_timeout),
        )
    except Exception:
        results.put((rank, -1, False, traceback.format_exc()))
        return
    results.put((rank, -1, True, None))
    while True:
        job = jobs.get()
        if job is None:
            break
        seq, fn, args, kwargs = job
        try:
            results.put((rank, seq, True, fn(*args, **kwargs)))
        except BaseException:
            results.put((rank, seq, False, traceback.format_exc()))
    dist.destroy_process_group()


class DistPool:
    """``world_size`` spawned ranks in one gloo group; :meth:`run` executes a function on all of them."""

    def __init__(self, world_size: int, *, timeout: float = 60.0, collective_timeout: float = 20.0) -> None:
        self.world_size = world_size
        self.timeout = timeout
        self.collective_timeout = collective_timeout
        self._procs: list[Any] = []
        self._seq = 0

    def __enter__(self) -> DistPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self._results = ctx.Queue()
        self._jobs = [ctx.Queue() for _ in range(self.world_size)]
        port = free_port()
        args = (self.world_size, port)
        self._procs = [
            ctx.Process(
                target=_rank_main,
                args=(r, *args, self._jobs[r], self._results, self.collective_timeout),
                daemon=True,
            )
            for r in range(self.world_size)
        ]
        for p in self._procs:
            p.start()
        self._collect(-1, self.timeout)

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None, **kwargs: Any) -> list[Any]:
        """Run ``fn(*args, **kwargs)`` on every rank; returns the per-rank results, rank order.

        Raises:
            AssertionError: a rank raised (its traceback is in the message) or the call took over ``timeout``.
        """
        if not self._procs:
            self._start()
        self._seq += 1
        for q in self._jobs:
            q.put((self._seq, fn, args, kwargs))
        return self._collect(self._seq, self.timeout if timeout is None else timeout)

    def _collect(self, seq: int, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        out: dict[int, Any] = {}
        errors: list[str] = []
        while len(out) + len(errors) < self.world_size:
            if errors:  # the others are likely stuck in a collective the failed rank never joined
                deadline = min(deadline, time.monotonic() + 3.0)
            left = deadline - time.monotonic()
            try:
                rank, got_seq, ok, value = self._results.get(timeout=max(0.05, min(left, 1.0)))
            except queue.Empty:
                dead = [p.pid for p in self._procs if not p.is_alive()]
                if left <= 0 or dead:
                    self.close()
                    if errors:
                        raise AssertionError("DistPool: case failed\n" + "\n".join(errors)) from None
                    why = f"ranks exited ({dead})" if dead else f"timed out after {timeout:.0f}s"
                    raise AssertionError(f"DistPool: {why}; errors so far: {errors}") from None
                continue
            if got_seq != seq:
                continue  # a late reply from an earlier, failed call
            if ok:
                out[rank] = value
            else:
                errors.append(f"rank {rank}:\n{value}")
        if errors:
            self.close()  # the group may be mid-collective: start afresh next time
            raise AssertionError("DistPool: case failed\n" + "\n".join(errors))
        return [out[r] for r in range(self.world_size)]

    def close(self) -> None:
        """Stop the ranks: politely, then by force after a few seconds."""
        procs, self._procs = self._procs, []
        for q in getattr(self, "_jobs", []):
            try:
                q.put(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 5.0
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(2.0)
