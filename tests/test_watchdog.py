"""PeerWatch names the rank that hung or died, with real gloo processes (process-group timeout 3 s).

Each multi-process test spawns a fresh pair of ranks (a broken group cannot be reused), bounds every wait, and
kills and reaps whatever is still running before it returns. The single-process tests use a ``HashStore``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
import traceback
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from dist_utils import free_port
from sparsembed.dataparallel.watchdog import STORE_ANSWER_S, CollectiveFailed, PeerLost, PeerWatch, summarize_error
from sparsembed.errors import UserError

pytestmark = [pytest.mark.dist, pytest.mark.timeout(90)]

PG_TIMEOUT = 3.0  # seconds: how long gloo waits for a hung peer
GRACE = 1.0  # seconds PeerWatch.guard waits for late beats


# -- ranks --------------------------------------------------------------------------------------------------------
def _rank_main(rank: int, world: int, port: int, scenario: str, results: mp.Queue) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=PG_TIMEOUT),
        )
        watch = PeerWatch(grace=GRACE)
        warm = torch.ones(2)
        with watch.guard(1, "warm-up"):
            dist.all_reduce(warm)
        if scenario == "hung" and rank == 1:
            time.sleep(120)  # alive but silent, past the group's timeout; the parent kills it
        if scenario == "dead" and rank == 1 or scenario == "store host dead" and rank == 0:
            os._exit(17)
        t0 = time.monotonic()
        x = torch.full((3,), float(rank + 1))
        try:
            with watch.guard(2, "exchange of syn0") as w:
                dist.all_reduce(x)
            results.put((rank, "ok", (x.tolist(), w is watch, warm.tolist()), time.monotonic() - t0))
        except CollectiveFailed as e:
            info = (str(e), getattr(e, "ranks", None), getattr(e, "last", None), e.exit_code, e.step, e.what)
            results.put((rank, type(e).__name__, info, time.monotonic() - t0))
    except BaseException:
        results.put((rank, "error", traceback.format_exc(), 0.0))
    results.close()
    results.join_thread()  # flush the queue's feeder thread: os._exit would drop what it holds
    os._exit(0)  # no destroy_process_group: with a broken group it could wait for the lost peer


SCENARIOS = {"hung": [0], "dead": [0], "store host dead": [1], "healthy": [0, 1]}  # scenario: ranks that report


def _run_all(deadline: float = 50.0) -> dict[str, dict[int, tuple] | str]:
    """Run every scenario at once, each on its own pair of spawned ranks (2 cores: spawning is most of the time).

    Returns, per scenario, the results of its reporting ranks (rank -> (kind, info, seconds)) or why there are
    none. Every process is killed and reaped before this returns.
    """
    ctx = mp.get_context("spawn")
    runs = {}
    try:
        for scenario in SCENARIOS:
            results = ctx.Queue()
            port = free_port()
            procs = [
                ctx.Process(target=_rank_main, args=(r, 2, port, scenario, results), daemon=True) for r in range(2)
            ]
            runs[scenario] = (procs, results)
            for p in procs:
                p.start()
        end = time.monotonic() + deadline
        out: dict[str, dict[int, tuple] | str] = {}
        for scenario, want in SCENARIOS.items():
            got: dict[int, tuple] = {}
            results = runs[scenario][1]
            while not set(want) <= set(got):
                try:
                    rank, kind, info, seconds = results.get(timeout=max(0.05, end - time.monotonic()))
                except queue.Empty:
                    got = f"{scenario}: no result from ranks {sorted(set(want) - set(got))} in {deadline:.0f} s"
                    break
                if kind == "error":
                    got = f"{scenario}: rank {rank} failed:\n{info}"
                    break
                got[rank] = (kind, info, seconds)
            out[scenario] = got
    finally:
        procs = [p for ps, _ in runs.values() for p in ps]
        for p in procs:
            if p.is_alive():
                p.kill()
        for p in procs:
            p.join(5.0)
        for _, results in runs.values():
            results.close()
            results.join_thread()
    assert not any(p.is_alive() for p in procs), "a rank is still running"
    return out


@pytest.fixture(scope="module")
def runs():
    return _run_all()


def _results(runs: dict, scenario: str) -> dict[int, tuple]:
    got = runs[scenario]
    if isinstance(got, str):
        raise AssertionError(got)
    return got


# -- multi-process ------------------------------------------------------------------------------------------------
def test_hung_peer_is_named_after_the_group_timeout(runs):
    kind, (msg, ranks, last, code, step, what), seconds = _results(runs, "hung")[0]
    assert kind == "PeerLost", msg
    assert ranks == [1] and step == 2 and what == "exchange of syn0" and code != 0
    assert last[1][0] == 1 and last[1][1] >= PG_TIMEOUT - 0.5  # its beat of step 1, about PG_TIMEOUT ago
    assert msg.startswith("rank 1 of 2 stopped responding at step 2 (last seen at step 1, "), msg
    assert " s ago) during exchange of syn0; the run cannot continue without it: restart the run" in msg
    assert "\n" not in msg
    assert PG_TIMEOUT - 0.5 <= seconds <= PG_TIMEOUT + GRACE + 3.0, seconds


def test_dead_peer_is_named_at_once(runs):
    kind, (msg, ranks, last, code, step, _), seconds = _results(runs, "dead")[0]
    assert kind == "PeerLost", msg
    assert ranks == [1] and last[1][0] == 1 and code != 0 and step == 2
    assert msg.startswith("rank 1 of 2 stopped responding at step 2 (last seen at step 1, "), msg
    assert seconds <= GRACE + 2.0, seconds  # the connection closes: no group timeout to wait for


def test_lost_store_host_is_reported(runs):
    """With init_method tcp://, rank 0 hosts the store: rank 1 can only say that the store went with it."""
    kind, (msg, ranks, *_), seconds = _results(runs, "store host dead")[1]
    assert kind in ("CollectiveFailed", "PeerLost"), msg
    if kind == "CollectiveFailed":
        assert "store is unreachable" in msg and "exchange of syn0 failed at step 2 on rank 1 of 2" in msg, msg
    else:  # the store answered from its closing socket's buffers: rank 0 is then behind
        assert ranks == [0], msg
    assert "\n" not in msg and seconds <= PG_TIMEOUT + GRACE + 3.0


def test_no_failure_passes_results_through(runs):
    out = _results(runs, "healthy")
    for rank in (0, 1):
        kind, (summed, same_watch, warm), _ = out[rank]
        assert kind == "ok" and summed == [3.0, 3.0, 3.0] and same_watch and warm == [2.0, 2.0]


# -- single process -----------------------------------------------------------------------------------------------
GLOO_RESET = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:64174: "
    "Connection reset by peer. This is typically caused by a remote worker hanging or bugs in the application."
)


def _watches(world: int = 3) -> list[PeerWatch]:
    store = dist.HashStore()
    return [PeerWatch(store, r, world, prefix="t/", grace=0.0) for r in range(world)]


def test_missing_reads_the_beats_without_blocking():
    w0, w1, w2 = _watches()
    t0 = time.monotonic()
    assert w0.missing(1) == [1, 2]  # never beat: missing, and no wait on absent keys
    w1.beat(4)
    w2.beat(2)
    assert w0.missing(3) == [2] and w0.missing(2) == [] and w2.missing(5) == [0, 1]
    seen = w0.seen()
    assert seen[0] is None and seen[1][0] == 4 and abs(seen[1][1] - time.time()) < 5
    assert time.monotonic() - t0 < 1.0
    t0 = time.monotonic()
    assert w0.missing(9, wait=0.3) == [1, 2] and 0.25 <= time.monotonic() - t0 < 2.0  # waits for late beats


def test_missing_sees_a_late_beat_within_wait():
    import threading

    w0, w1 = _watches(2)
    timer = threading.Timer(0.2, w1.beat, args=(7,))
    timer.start()
    try:
        assert w0.missing(7, wait=5.0) == []
    finally:
        timer.join()


def test_guard_names_ranks_behind():
    w0, w1, w2 = _watches()
    w1.beat(16)
    with pytest.raises(PeerLost) as info:
        with w0.guard(17, "exchange of syn0"):
            raise RuntimeError(GLOO_RESET)
    e = info.value
    assert e.ranks == [1, 2] and e.step == 17 and e.exit_code != 0 and isinstance(e, UserError)
    assert str(e).startswith(
        "ranks 1, 2 of 3 stopped responding at step 17 (rank 1 last seen at step 16, 0 s ago;"
        " rank 2 never seen) during exchange of syn0; the run cannot continue without them: "
    )
    assert e.detail == "Read error [127.0.0.1]:64174: Connection reset by peer"
    assert isinstance(e.__cause__, RuntimeError)
    assert w0.seen()[0][0] == 17  # guard beat the step on entry


def test_guard_without_missing_rank_summarizes_the_error():
    w0, w1 = _watches(2)
    w1.beat(3)
    with pytest.raises(CollectiveFailed) as info:
        with w0.guard(3, "exchange of syn1"):
            raise dist.DistBackendError("[x/unbound_buffer.cc:78] Timed out waiting 3000ms for recv operation")
    assert not isinstance(info.value, PeerLost)
    assert str(info.value) == (
        "exchange of syn1 failed at step 3 on rank 0 of 2 although every rank reached that step (a peer may have "
        "died or stalled inside it): Timed out waiting 3000ms for recv operation; restart the run (torchrun "
        "--max-restarts resumes from the last checkpoint)"
    )


def test_guard_leaves_other_errors_alone():
    (w0,) = _watches(1)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with w0.guard(1, "x"):
            raise RuntimeError("shape mismatch: [3] vs [4]")
    with pytest.raises(KeyError):
        with w0.guard(1, "x"):
            raise KeyError("k")
    with w0.guard(2, "x") as w:
        assert w is w0
    assert w0.last_beat == 2


def test_bad_arguments_and_summaries():
    with pytest.raises(UserError):
        PeerWatch(dist.HashStore(), 2, 2)
    with pytest.raises(UserError):
        PeerWatch(dist.HashStore(), 0, 2, grace=-1)
    if not dist.is_initialized():
        with pytest.raises(UserError, match="initialize torch.distributed"):
            PeerWatch()
    assert summarize_error(RuntimeError(GLOO_RESET)) == "Read error [127.0.0.1]:64174: Connection reset by peer"
    assert summarize_error(RuntimeError("")) == "RuntimeError"
    assert summarize_error(RuntimeError("x" * 500), limit=20) == "x" * 17 + "..."


def test_restart_attempts_do_not_share_beats(monkeypatch):
    store = dist.HashStore()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    PeerWatch(store, 1, 2).beat(50)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert PeerWatch(store, 0, 2).missing(3) == [1]  # the first attempt's beat of step 50 does not count


class _CutStore:
    """A store behind a cut link: writes pass until the cut, then every read and write waits (as TCP does for
    minutes before it gives up)."""

    def __init__(self) -> None:
        import threading

        self.inner, self.cut = dist.HashStore(), threading.Event()

    def _wait(self) -> None:
        if self.cut.is_set():
            time.sleep(3600)

    def set(self, key, value):
        self._wait()
        return self.inner.set(key, value)

    def check(self, keys):
        self._wait()
        return self.inner.check(keys)

    def get(self, key):
        self._wait()
        return self.inner.get(key)


def test_a_store_behind_a_cut_link_is_named_within_the_deadline(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "10.77.0.1")
    monkeypatch.setenv("MASTER_PORT", "29511")
    store = _CutStore()
    watch = PeerWatch(store, 1, 2, prefix="cut/", grace=0.0)
    watch.beat(5)
    store.cut.set()
    t0 = time.monotonic()
    failure = watch.diagnose(RuntimeError(GLOO_RESET), 6, "the exchange of syn0", 0.0)
    assert time.monotonic() - t0 < STORE_ANSWER_S + 2  # not the minutes TCP would take to give up
    assert isinstance(failure, CollectiveFailed) and not isinstance(failure, PeerLost)
    message = str(failure)
    assert "the rendezvous store (10.77.0.1:29511) is unreachable too (no answer in" in message
    assert "died or the network to it is down" in message and "\n" not in message
