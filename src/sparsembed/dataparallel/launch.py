"""Starting data-parallel runs: torchrun's launcher for ``--nproc N``, and joining the group inside a worker.

We do not run processes ourselves: ``sparsembed train --nproc N`` hands the same command line (without
``--nproc``) to torch's elastic launcher (what ``torchrun --standalone --nproc-per-node N`` runs), with
``--max-restarts`` passed through. Inside a worker, torchrun's environment (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``...) says which rank this is; :func:`join` initializes gloo with the run's ``--timeout``.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

from sparsembed.errors import UserError

#: Set for the ranks of ``--nproc N``: how many, so messages can give the command that resumes the same way.
NPROC_ENV = "SPARSEMBED_NPROC"

#: Exit code of a worker that found a user error; the launcher passes it on.
USER_ERROR_EXIT = 2


def under_launcher() -> bool:
    """True inside a process started by torchrun (or ``--nproc``) as one rank of a group."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ and "MASTER_ADDR" in os.environ


def rank() -> int:
    """This process' global rank (0 outside a launcher)."""
    return int(os.environ.get("RANK", "0")) if under_launcher() else 0


def world_size() -> int:
    """Ranks in the group (1 outside a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1")) if under_launcher() else 1


def restart_count() -> int:
    """How many times torchrun has restarted this group (``--max-restarts``); 0 on the first attempt."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def restart_limit() -> int:
    """How many restarts torchrun allows this group (``--max-restarts``); 0 outside a launcher."""
    return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) if under_launcher() else 0


def next_restart() -> tuple[int, int] | None:
    """``(attempt, of)`` of the restart torchrun makes if this attempt fails, or None when none is left."""
    attempt, limit = restart_count() + 1, restart_limit()
    return (attempt, limit) if attempt <= limit else None


def threads_per_rank(cores: int) -> int:
    """Training threads a rank gets by default: its share of the host's cores among the local ranks."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1) if under_launcher() else 1
    return max(1, cores // max(local, 1))


def resume_command(out: object, nproc: int | None = None) -> str:
    """The command that continues the run saved in ``out``, launched the way this process was (as ``nproc``
    ranks, when given: the process that launches them is not one)."""
    if nproc is None:
        nproc = os.environ.get(NPROC_ENV) if under_launcher() else None
    return f"sparsembed train --resume {out}" + (f" --nproc {nproc}" if nproc else "")


def join(timeout: float) -> None:
    """Join the process group described by torchrun's environment (gloo; collectives time out after ``timeout``)."""
    import torch
    import torch.distributed as dist

    if not (timeout > 0):
        raise UserError(f"invalid setting: --timeout must be a positive number of seconds, got {timeout}")
    # Training threads are ours; torch only runs the exchange's small ops and must not compete with them.
    torch.set_num_threads(1)
    if dist.is_initialized():
        return
    # Our own store keys, one namespace per torchrun attempt: a restarted group otherwise shares the agent's store
    # with the attempt that failed, and gloo can read a dead rank's address from it ("connection refused").
    agent_hosts_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size(),
                          is_master=rank() == 0 and not agent_hosts_store, timeout=timedelta(seconds=timeout))
    store = dist.PrefixStore(f"sparsembed/attempt-{restart_count()}/", store)
    dist.init_process_group("gloo", store=store, rank=rank(), world_size=world_size(),
                            timeout=timedelta(seconds=timeout))
    _joined["store"] = store


#: The group's store once :func:`join` made it (kept past :func:`leave`: :func:`report_once` runs after it).
_joined: dict = {"store": None}

#: Seconds a rank other than 0 waits for rank 0 to report an error they both met, before it reports it itself.
REPORT_WAIT_S = 10.0

#: Seconds a rank other than 0 stays after an error met before the group was joined (see :func:`report_once`).
PRE_JOIN_WAIT_S = 2.0


def report_once(line: str, wait_s: float = REPORT_WAIT_S) -> None:
    """Print ``line`` on stderr once for the group, for an error every rank meets alike (bad input).

    Rank 0 prints and then marks it in the group's store. Every other rank waits for that mark before it goes
    on to exit: a rank that ended at once let the launcher stop rank 0 before it had printed, and the run ended
    without a word. A rank that sees no mark within ``wait_s`` (rank 0 did not meet this error) prints its own
    line; one that finds the store gone (rank 0 ended, having printed or not) adds nothing. Before a group was
    joined (a bad setting, which every rank checks alike) there is no store to mark: only rank 0 prints, and the
    others wait ``PRE_JOIN_WAIT_S`` before they exit, which gives rank 0 that long to print first.
    """
    store = _joined["store"]
    if rank() == 0:
        print(line, file=sys.stderr, flush=True)
        if store is not None and world_size() > 1:
            try:
                store.set("reported", b"1")
            except Exception:  # noqa: BLE001  (the store went away: nobody is left waiting for the mark)
                pass
        return
    if store is None:
        if world_size() > 1:
            time.sleep(PRE_JOIN_WAIT_S)
        return
    import torch.distributed as dist

    try:
        store.wait(["reported"], timedelta(seconds=wait_s))
    except dist.DistNetworkError:
        return
    except (dist.DistStoreError, RuntimeError):  # no mark in time: rank 0 is elsewhere, this rank speaks
        print(line, file=sys.stderr, flush=True)


#: Seconds leaving the process group may take before the process exits without waiting for it.
LEAVE_S = 10.0


def leave() -> None:
    """Leave the process group (no-op when not in one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # After a lost peer or a cut link the teardown may wait on a dead connection: give it a few seconds in a
        # daemon thread, then leave anyway (the process is about to exit).
        import threading

        thread = threading.Thread(target=dist.destroy_process_group, name="sparsembed-leave", daemon=True)
        thread.start()
        thread.join(LEAVE_S)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(nproc: int, argv: list[str], max_restarts: int = 0, advice: Callable[[], str] | None = None) -> int:
    """Run ``python -m sparsembed ARGV`` as ``nproc`` ranks on this host under torch's elastic launcher.

    Returns the exit code for the command line: 0, :data:`USER_ERROR_EXIT` when a rank reported a user error
    (it printed the message), else the first failed rank's code, after one line naming that rank and ending
    with ``advice()`` (what to do now, e.g. the command that resumes; default: read the rank's messages).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1 or nproc > 1024:
        raise UserError(f"invalid setting: --nproc must be an integer in 1..1024, got {nproc}")
    if max_restarts < 0:
        raise UserError(f"invalid setting: --max-restarts must be >= 0, got {max_restarts}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the launcher would set it too, with a warning
    os.environ[NPROC_ENV] = str(nproc)  # so a rank's advice to resume names the same launch
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    for name in list(logging.Logger.manager.loggerDict):  # torch's modules set up their own loggers at import
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)  # our one line says which rank failed and how
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"sparsembed-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{free_port()}", max_restarts=max_restarts,
        monitor_interval=0.2, start_method="spawn",
    )
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "sparsembed", *argv)
    except SignalException as exc:
        # Ctrl-C / SIGTERM reached the ranks too: they checkpoint and rank 0 says how to resume; the launcher
        # stopped them and exits as a signalled command does.
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        codes = [failure.exitcode for failure in exc.failures.values()]
        if USER_ERROR_EXIT in codes:
            return USER_ERROR_EXIT
        # The first rank to fail is the cause; ranks the launcher then stopped with SIGTERM are its consequence.
        ordered = sorted(exc.failures.items(), key=lambda item: (item[1].exitcode == -15, item[1].timestamp, item[0]))
        first, failure = ordered[0]
        signal_name = failure.signal_name() if failure.exitcode < 0 else ""
        reason = f"killed by {signal_name}" if signal_name else f"exit code {failure.exitcode}"
        print(f"sparsembed: error: rank {first} failed ({reason}) and the run stopped"
              + (f" after {max_restarts} restarts" if max_restarts else "")
              + f"; {advice() if advice else 'see its messages above'}", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0
