"""Name the peer that died or hung, instead of gloo's anonymous "Connection reset by peer" / "Timed out".

When a rank dies, its peers' gloo collectives fail at once ("Read error ...: Connection reset by peer"); when it
hangs, they fail after the process-group timeout ("Timed out waiting 3000ms for recv operation to complete").
Neither message says which rank is gone. :class:`PeerWatch` keeps, in the process group's key-value store, the
last step each rank reached (:meth:`PeerWatch.beat`), and :meth:`PeerWatch.guard` turns a failed collective into a
one-line :class:`PeerLost` that names the ranks behind::

    watch = PeerWatch()  # the default group's store, rank and world size
    for step in ...:
        with watch.guard(step, "exchange of syn0"):  # beats `step`, then runs the collectives
            summed, stats = replicated(grad, name="syn0")

Under ``torchrun`` the store is the elastic agent's, so it outlives a rank; with ``init_method="tcp://..."`` it is
hosted by rank 0, and when rank 0 is the one lost the others report that the store went with it. A beat is one
``store.set`` of a few bytes, made at most once per step.

The end of the message says what follows: when ``torchrun`` (or ``--nproc --max-restarts``) has a restart left,
``restarting (attempt k of N) from the checkpoint of step S`` (the trainer keeps :attr:`PeerWatch.resume_point`);
otherwise that the run cannot continue, and what to do (:meth:`CollectiveFailed.advise` lets the command line
name the exact resume command).

Limits: a peer that died *after* beating the step (inside the collective) is not behind, so the error is then a
:class:`CollectiveFailed` that quotes gloo's message; reads of a store whose host is stopped (not dead) wait up to
the store's own timeout, the process-group timeout unless changed.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from typing import Any

from sparsembed.dataparallel import launch
from sparsembed.errors import UserError

__all__ = ["PeerWatch", "PeerLost", "CollectiveFailed", "summarize_error"]

#: What to tell the user once the group is broken: no collective can go on without every rank.
RESTART_ADVICE = "restart the run (torchrun --max-restarts resumes from the last checkpoint)"

# Words of communication failures (gloo, NCCL, the TCP store), as opposed to a bug inside the guarded block.
_COMM_WORDS = re.compile(
    r"gloo|nccl|connection|timed out|timeout|reset by peer|broken pipe|closed|socket|store|peer|rendezvous",
    re.IGNORECASE,
)
_SOURCE_PREFIX = re.compile(r"^\s*\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*")  # "[.../gloo/.../pair.cc:537] "


class CollectiveFailed(UserError):
    """A collective failed and the group cannot go on; the message is one line saying what to do.

    A :class:`~sparsembed.errors.UserError`, so the command line prints it as ``sparsembed: error: ...`` and exits
    with :attr:`exit_code` (2); under ``torchrun`` any non-zero exit lets ``--max-restarts`` restart the job.
    """

    exit_code = 2
    every_rank_reports = True  # unlike a bad input, which every rank meets alike, each rank says what it saw

    def __init__(self, message: str, *, step: int, what: str, detail: str = "", situation: str = "",
                 lost: str = "", restart: tuple[int, int] | None = None) -> None:
        super().__init__(message)
        self.step, self.what, self.detail = step, what, detail
        #: What happened, without what follows from it; ``lost``: who the run cannot continue without ("it").
        self.situation, self.lost = situation or message, lost
        #: ``(attempt, of)`` of the restart the launcher makes next, or None when the run stops here.
        self.restart = restart

    def advise(self, advice: str) -> None:
        """End the message with ``advice`` (what to do now that the run has stopped); no change while the
        launcher restarts the run, whose message says so instead."""
        if self.restart is None:
            self.args = (f"{self.situation}; {_stop_ending(self.lost, advice)}",)


class PeerLost(CollectiveFailed):
    """A collective failed while ranks :attr:`ranks` had not reached the step: they died or hung.

    :attr:`last` maps each of them to ``(step, seconds since)`` of its latest beat, or ``None`` if it never beat.
    """

    def __init__(
        self,
        message: str,
        *,
        ranks: list[int],
        world: int,
        step: int,
        what: str,
        last: dict[int, tuple[int, float] | None],
        detail: str = "",
        **ending: Any,
    ) -> None:
        super().__init__(message, step=step, what=what, detail=detail, **ending)
        self.ranks, self.world, self.last = list(ranks), world, dict(last)


def _stop_ending(lost: str, advice: str) -> str:
    return f"the run cannot continue without {lost}: {advice}" if lost else advice


def summarize_error(exc: BaseException, limit: int = 200) -> str:
    """The first sentence of an exception's first line, without gloo's ``[file.cc:line]`` prefix."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = _SOURCE_PREFIX.sub("", text)
    cut = text.find(". ")  # gloo goes on with "This is typically caused by ... GLHF!"
    if cut > 0:
        text = text[:cut]
    text = text.rstrip(" .")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class PeerWatch:
    """Per-rank heartbeats (the last step reached) in a key-value store shared by all ranks.

    Args:
        store: a ``torch.distributed.Store`` every rank reaches (default: the default process group's).
        rank, world: this rank and the number of ranks (default: the default process group's).
        prefix: key prefix; keys are ``{prefix}{attempt}/beat/{rank}``, ``attempt`` being ``torchrun``'s restart
            count (``TORCHELASTIC_RESTART_COUNT``, else 0), so beats of a failed attempt never count in the next.
        grace: seconds :meth:`guard` waits for late beats before calling a rank missing.
    """

    def __init__(
        self,
        store: Any = None,
        rank: int | None = None,
        world: int | None = None,
        prefix: str = "sparsembed/",
        *,
        grace: float = 2.0,
    ) -> None:
        if store is None or rank is None or world is None:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                raise UserError("PeerWatch: give store, rank and world, or initialize torch.distributed first")
            store = dist.distributed_c10d._get_default_store() if store is None else store
            rank = dist.get_rank() if rank is None else rank
            world = dist.get_world_size() if world is None else world
        if not 0 <= rank < world:
            raise UserError(f"PeerWatch: rank must be in [0, {world}), got {rank}")
        if grace < 0:
            raise UserError(f"PeerWatch: grace must be >= 0 seconds, got {grace}")
        self.store, self.rank, self.world, self.grace = store, int(rank), int(world), float(grace)
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self.prefix = f"{prefix}{attempt}/beat/"
        self.last_beat: int | None = None
        self._pulse: Any = None
        self.pulse_interval = 0.5
        #: Where an automatic restart resumes from, for the message (the trainer updates it at each checkpoint).
        self.resume_point = "the last checkpoint"

    def _key(self, rank: int) -> str:
        return f"{self.prefix}{rank}"

    # -- writing ------------------------------------------------------------------------------------------------
    def beat(self, step: int) -> None:
        """Record that this rank reached ``step`` (with the wall-clock time)."""
        self.store.set(self._key(self.rank), f"{int(step)} {time.time():.3f}")
        self.last_beat = int(step)

    def start_pulse(self, interval: float = 0.5) -> None:
        """Beat a counter every ``interval`` seconds from a daemon thread, until :meth:`stop_pulse`.

        The step beats cannot tell a peer that died *inside* a collective (it had reached the step) from one that
        is alive and waiting like us; the pulse can: a dead or stopped process stops counting, while a live rank's
        thread goes on while its main thread waits in gloo (which releases the GIL).
        """
        import threading

        if self._pulse is not None:
            return
        self.pulse_interval = float(interval)
        stop = threading.Event()

        def run() -> None:
            count = 0
            while not stop.wait(self.pulse_interval):
                count += 1
                try:
                    self.store.set(self._pulse_key(self.rank), str(count))
                except Exception:  # the store went away: the diagnosis will say so
                    return

        self.store.set(self._pulse_key(self.rank), "0")
        thread = threading.Thread(target=run, name="sparsembed-pulse", daemon=True)
        thread.start()
        self._pulse = (stop, thread)

    def stop_pulse(self) -> None:
        """Stop the pulse thread (no-op if none)."""
        if self._pulse is not None:
            stop, thread = self._pulse
            stop.set()
            thread.join(timeout=5.0)
            self._pulse = None

    def _pulse_key(self, rank: int) -> str:
        return f"{self.prefix}pulse/{rank}"

    def silent(self) -> list[int]:
        """Other ranks whose pulse did not move over 3 pulse intervals (dead or stopped); [] without a pulse."""
        if self._pulse is None:
            return []
        others = [r for r in range(self.world) if r != self.rank]

        def read() -> dict[int, bytes | None]:
            return {r: bytes(self.store.get(self._pulse_key(r))) if self.store.check([self._pulse_key(r)]) else None
                    for r in others}

        before = read()
        time.sleep(3 * self.pulse_interval)
        after = read()
        return [r for r in others if after[r] is None or after[r] == before[r]]

    # -- reading ------------------------------------------------------------------------------------------------
    def seen(self) -> dict[int, tuple[int, float] | None]:
        """Every rank's latest beat as ``(step, unix time)``, or ``None`` for a rank that never beat.

        Never waits for a key: ``store.check`` first, then ``get`` of keys that exist (keys are never deleted).
        A store that cannot be reached raises its own error (RuntimeError / DistStoreError).
        """
        keys = [self._key(r) for r in range(self.world)]
        present = [r for r, k in enumerate(keys) if self.store.check([k])]
        values: list[bytes] = []
        if present:
            wanted = [keys[r] for r in present]
            if hasattr(self.store, "multi_get"):
                values = self.store.multi_get(wanted)
            else:  # pragma: no cover - torch < 2.4
                values = [self.store.get(k) for k in wanted]
        out: dict[int, tuple[int, float] | None] = dict.fromkeys(range(self.world))
        for r, raw in zip(present, values, strict=True):
            try:
                step, when = bytes(raw).decode().split()
                out[r] = (int(step), float(when))
            except (ValueError, UnicodeDecodeError):
                out[r] = None  # not ours: treat as never seen
        return out

    def missing(self, step: int, wait: float = 0.0) -> list[int]:
        """Other ranks whose latest beat is below ``step``, waiting up to ``wait`` seconds for them to catch up."""
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            seen = self.seen()
            behind = [r for r, s in seen.items() if r != self.rank and (s is None or s[0] < step)]
            if not behind or time.monotonic() >= deadline:
                return behind
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    # -- guarding -----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def guard(self, step: int, what: str, *, wait: float | None = None) -> Iterator[PeerWatch]:
        """Beat ``step`` (once per step), run the block; a communication failure in it becomes :class:`PeerLost`.

        A RuntimeError (``DistBackendError``, gloo's plain RuntimeError, a store error) that looks like a
        communication failure is checked against the beats: ranks below ``step`` after ``wait`` seconds (default
        :attr:`grace`) are named in a :class:`PeerLost`; if none is behind, a :class:`CollectiveFailed` quotes the
        original error's first sentence. Other exceptions pass through unchanged.
        """
        try:
            if self.last_beat != step:
                self.beat(step)
            yield self
        except RuntimeError as exc:
            if not _is_comm_error(exc):
                raise
            raise self.diagnose(exc, step, what, self.grace if wait is None else wait) from exc

    def diagnose(self, exc: BaseException, step: int, what: str, wait: float) -> CollectiveFailed:
        """The one-line error for ``exc``, raised by a collective of ``step`` during ``what``."""
        detail = summarize_error(exc)
        fields = {"step": step, "what": what, "detail": detail}
        # Behind a cut link a store read waits for TCP to give up (many minutes): each read gets a deadline.
        deadline = wait + 3 * self.pulse_interval + STORE_ANSWER_S
        try:
            behind, seen = _within(deadline, lambda: (self.missing(step, wait), self.seen()))
            quiet = [] if behind else _within(deadline, self.silent)
        except Exception as store_exc:  # the store is gone too: its host died, or the network to it
            return self._failure(
                CollectiveFailed,
                f"{what} failed at step {step} on rank {self.rank} of {self.world} ({detail}) and the rendezvous "
                f"store{_store_address()} is unreachable too ({summarize_error(store_exc)}): the host running "
                "it (rank 0's unless under torchrun) died or the network to it is down", "", **fields)
        if not behind:
            if quiet:
                who = f"rank {quiet[0]}" if len(quiet) == 1 else "ranks " + ", ".join(map(str, quiet))
                return self._failure(
                    PeerLost,
                    f"{who} of {self.world} stopped responding during {what} at step {step} (no heartbeat for "
                    f"{3 * self.pulse_interval:g} s: the process died or hung, or the network to its host is down)",
                    "it" if len(quiet) == 1 else "them",
                    ranks=quiet, world=self.world, last={r: seen[r] for r in quiet}, **fields)
            return self._failure(
                CollectiveFailed,
                f"{what} failed at step {step} on rank {self.rank} of {self.world} although every rank reached "
                f"that step (a peer may have died or stalled inside it): {detail}", "", **fields)
        now = time.time()
        last = {r: None if seen[r] is None else (seen[r][0], max(0.0, now - seen[r][1])) for r in behind}
        notes = []
        for r in behind:
            where = "never seen" if last[r] is None else f"last seen at step {last[r][0]}, {last[r][1]:.0f} s ago"
            notes.append(where if len(behind) == 1 else f"rank {r} {where}")
        who = f"rank {behind[0]}" if len(behind) == 1 else "ranks " + ", ".join(map(str, behind))
        return self._failure(
            PeerLost, f"{who} of {self.world} stopped responding at step {step} ({'; '.join(notes)}) during {what}",
            "it" if len(behind) == 1 else "them", ranks=behind, world=self.world, last=last, **fields)

    def _failure(self, kind: type[CollectiveFailed], situation: str, lost: str, **fields: Any) -> CollectiveFailed:
        """``kind`` with the message ``situation; ending``: the launcher's next restart, or that the run stops."""
        restart = launch.next_restart()
        if restart is not None:
            ending = f"restarting (attempt {restart[0]} of {restart[1]}) from {self.resume_point}"
        else:
            ending = _stop_ending(lost, RESTART_ADVICE)
        return kind(f"{situation}; {ending}", situation=situation, lost=lost, restart=restart, **fields)


#: Seconds a diagnosis waits for the rendezvous store beyond the beats' own wait before calling it unreachable.
STORE_ANSWER_S = 5.0


def _within(seconds: float, read: Any) -> Any:
    """``read()``, or TimeoutError when it has not returned after ``seconds`` (it goes on in a daemon thread, which
    the process does not wait for at exit)."""
    import threading

    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = read()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="sparsembed-store-read", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer in {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _store_address() -> str:
    """`` (MASTER_ADDR:MASTER_PORT)``, the rendezvous store's address as the launcher gave it, or ``""``."""
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    return f" ({host}:{port})" if host and port else ""


def _is_comm_error(exc: BaseException) -> bool:
    """True for errors of the collectives or the store, not for a bug in the guarded code."""
    try:
        import torch.distributed as dist

        if isinstance(exc, dist.DistError):
            return True
    except (ImportError, AttributeError):  # pragma: no cover - torch without distributed
        pass
    return bool(_COMM_WORDS.search(str(exc)))
