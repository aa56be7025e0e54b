"""Faults of a data-parallel run on loopback: a rank killed with and without torchrun restarts, a hung rank.

Each run is ``sparsembed train --nproc 2`` (torch's elastic launcher, 2 ranks, 1 thread each, checkpoints
every 0.05 s). With ``--workers 1`` a data-parallel run is deterministic, so "the job completed as if undisturbed"
is checked byte for byte against an undisturbed run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparsembed.word2vec.demo import generate_corpus

INTERVAL = 0.05  # seconds between checkpoints: several in every epoch, however fast this machine trains
ARGS = ["--nproc", "2", "--workers", "1", "--dim", "24", "--epochs", "3", "--min-count", "2", "--seed", "3",
        "--job-tokens", "4000", "--checkpoint-every", str(INTERVAL), "--quiet"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("elastic") / "corpus.txt"
    generate_corpus(path, n_tokens=1_000_000, seed=9)
    return path


@pytest.fixture(scope="module")
def undisturbed(corpus: Path, tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("undisturbed") / "run"
    result = _run(["train", str(corpus), "--out", str(out), *ARGS])
    assert result.returncode == 0, result.stderr
    return (out / "vectors.bin").read_bytes()


def _run(argv: list[str], timeout: float = 240.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparsembed", *argv], capture_output=True, text=True,
                          timeout=timeout)


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (the ranks the launcher started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry.name))
    return found


def _rank_pid(launcher: int, rank: int) -> int | None:
    for pid in _children(launcher):
        with contextlib.suppress(OSError):
            env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
            cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes()
            if f"RANK={rank}".encode() in env and b"-m\0sparsembed" in cmdline:
                return pid
    return None


def _position(out: Path) -> tuple[int, int] | None:
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, KeyError):
        state = json.loads((out / "model" / "state.json").read_text())
        return state["meta"]["position"]["epoch"], state["meta"]["position"]["job"]
    return None


def _start_and_hit(corpus: Path, out: Path, extra: list[str], signum: int, rank: int = 1) -> subprocess.Popen:
    """Start a 2-rank run; once a mid-epoch checkpoint exists, send ``signum`` to rank ``rank``."""
    proc = subprocess.Popen([sys.executable, "-m", "sparsembed", "train", str(corpus), "--out", str(out), *ARGS,
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"the run ended before it could be hit (exit {proc.returncode}): {err}")
        position = _position(out)
        if position is not None and position[1] > 0:  # a checkpoint from the middle of an epoch
            pid = _rank_pid(proc.pid, rank)
            if pid is not None:
                os.kill(pid, signum)
                return proc
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("no mid-epoch checkpoint within 120 s")


@contextlib.contextmanager
def _reaped(proc: subprocess.Popen):
    """Whatever happens in the block, the launcher and its ranks are gone after it."""
    try:
        yield
    finally:
        if proc.poll() is None:
            for pid in _children(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.communicate()


def _restarts(out: Path) -> int:
    """How many times rank 0 started logging steps afresh (a session's steps count from 1), and checks that each
    restart went back at most to where the run had been."""
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"step"' in line]
    pairs = [(a, b) for a, b in zip(steps, steps[1:], strict=False) if b["step"] > a["step"]]
    increments = [b["progress"] - a["progress"] for a, b in pairs]
    seconds = [b["time"] - a["time"] for a, b in pairs]
    per_step, step_seconds = sorted(increments)[len(increments) // 2], sorted(seconds)[len(seconds) // 2]
    restarts = 0
    for a, b in zip(steps, steps[1:], strict=False):
        if b["step"] <= a["step"]:
            restarts += 1
            # The restart resumed at b's progress minus one step; the work lost is what a had done past that.
            lost_steps = (a["progress"] - (b["progress"] - per_step)) / per_step
            assert -0.5 < lost_steps, "resumed past the last step logged"
            # At most one checkpoint interval of steps, plus the step the kill cut short and the time a
            # checkpoint takes to write (slack for a loaded machine).
            assert lost_steps * step_seconds <= INTERVAL + 2 * step_seconds + 0.5, (lost_steps, step_seconds)
    return restarts


def test_killed_rank_restarts_from_checkpoint_and_completes(corpus: Path, undisturbed: bytes, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _start_and_hit(corpus, out, ["--max-restarts", "3"], signal.SIGKILL)
    with _reaped(proc):
        _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert _restarts(out) >= 1  # it really went back to a checkpoint
    # What the user reads is the restart, not an error after which the run goes on anyway.
    assert "restarting (attempt 1 of 3) from the checkpoint of step " in err, err
    assert "sparsembed: error" not in err and "cannot continue" not in err, err
    # The ranks exchanged through shared memory; a killed rank leaves no segment behind (names go once mapped).
    assert not [p for p in os.listdir("/dev/shm") if p.startswith("sparsembed-")]
    # Restarted at a step boundary, the run retraces the same steps: the result is the undisturbed one.
    assert (out / "vectors.bin").read_bytes() == undisturbed


def test_killed_rank_without_restarts_stops_cleanly_and_resumes(corpus: Path, undisturbed: bytes,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _start_and_hit(corpus, out, [], signal.SIGKILL)
    with _reaped(proc):
        _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    errors = [line for line in err.splitlines() if line.startswith("sparsembed: error:")]
    # Rank 0 names the lost rank (its heartbeat stopped), or the launcher does (it saw the rank die first).
    assert errors and any("rank 1 of 2 stopped responding" in e or "rank 1 failed (killed by SIGKILL)" in e
                          for e in errors), err
    # The advice is the command that resumes this run, as Ctrl-C gives it, not torchrun's options.
    assert any(e.endswith(f"resume with: sparsembed train --resume {out} --nproc 2") for e in errors), err
    assert not any("torchrun" in e for e in errors), err
    assert not (out / "vectors.bin").exists()  # outputs untouched; the last checkpoint stays
    assert _position(out) is not None
    resumed = _run(["train", "--resume", str(out), "--nproc", "2", "--workers", "1", "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "vectors.bin").read_bytes() == undisturbed


def test_hung_rank_is_named_within_the_timeout(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _start_and_hit(corpus, out, ["--timeout", "4"], signal.SIGSTOP)
    hung_at = time.monotonic()
    with _reaped(proc):
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    errors = [line for line in err.splitlines() if line.startswith("sparsembed: error:")]
    assert errors and "rank 1 of 2 stopped responding" in errors[0], err
    assert not (out / "vectors.bin").exists() and _position(out) is not None
    # Rank 0 gave up after the 4 s timeout; the launcher then needs a while to reap the stopped rank.
    assert time.monotonic() - hung_at < 60


def test_ctrl_c_checkpoints_every_rank_then_resumes_byte_identical(corpus: Path, undisturbed: bytes,
                                                                   tmp_path: Path) -> None:
    """Ctrl-C at a terminal reaches the launcher and every rank (one process group): the ranks agree to stop
    after the current step, rank 0 checkpoints and prints one line with the command that resumes."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "sparsembed", "train", str(corpus), "--out", str(out), *ARGS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    with _reaped(proc):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            position = _position(out)
            if position is not None and position[1] > 0:
                os.killpg(proc.pid, signal.SIGINT)
                break
            time.sleep(0.01)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.startswith("sparsembed:")]
    assert lines == [f"sparsembed: interrupted; resume with: sparsembed train --resume {out} --nproc 2"], err
    assert "Traceback" not in err and not (out / "vectors.bin").exists()
    resumed = _run(["train", "--resume", str(out), "--nproc", "2", "--workers", "1", "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "vectors.bin").read_bytes() == undisturbed


@pytest.mark.parametrize("launcher", ["torchrun", "--nproc"])
@pytest.mark.parametrize("content", [None, b""], ids=["missing corpus", "empty corpus"])
def test_failed_start_is_one_line_and_leaves_no_out(tmp_path: Path, launcher: str, content: bytes | None) -> None:
    """A start that fails on bad input behaves alike under torchrun and --nproc: our one line, exit code 2 from
    the ranks, and no --out directory left behind (under torchrun no parent of ours is there to remove it)."""
    if content is not None:
        (tmp_path / "corpus.txt").write_bytes(content)
    train = ["-m", "sparsembed", "train", "corpus.txt", "--out", "run", "--workers", "1", "--quiet"]
    if launcher == "torchrun":
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *train]
    else:
        argv = [sys.executable, *train, "--nproc", "2"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    ours = [line for line in done.stderr.splitlines() if line.startswith("sparsembed:")]
    assert len(ours) == 1 and ours[0].startswith("sparsembed: error: "), done.stderr
    assert ("does not exist" if content is None else "empty") in ours[0]
    assert not (tmp_path / "run").exists(), done.stderr
    if launcher == "--nproc":
        assert done.returncode == 2 and done.stderr.strip() == ours[0], done.stderr
    else:  # torchrun reports the failed ranks its own way (its exit code 1), with the ranks' exit code 2
        assert done.returncode != 0 and "exitcode  : 2" in done.stderr, done.stderr


# One line for an error every rank meets: rank 0 prints, then marks it in the group's store; the others wait for the
# mark (a rank that ended at once could let the launcher stop rank 0 before it had printed). Each rank joins as
# torchrun would start it, leaves the group (as the train command does before its error is reported), then reports.
_REPORT = r"""
import sys, time
from sparsembed.dataparallel import launch
both, wait_s = sys.argv[1] == "both", float(sys.argv[2])
launch.join(30)
launch.leave()
if launch.rank() == 0:
    if both:
        time.sleep(1.5)  # rank 0 comes late to the error the other rank met at once
        launch.report_once("sparsembed: error: rank 0: bad input")
        print(f"printed {time.time()}", flush=True)
    else:
        time.sleep(2 * wait_s + 2)  # rank 0 never meets the error (and keeps the store alive meanwhile)
else:
    launch.report_once(f"sparsembed: error: rank {launch.rank()}: bad input", wait_s=wait_s)
    print(f"left {time.time()}", flush=True)
"""


@pytest.mark.parametrize("both", [True, False], ids=["every rank met it", "only rank 1 met it"])
def test_an_error_is_reported_once_and_rank_0_prints_before_the_others_leave(both: bool) -> None:
    from sparsembed.dataparallel.launch import free_port

    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2",
           "GLOO_SOCKET_IFNAME": "lo"}
    wait_s = 2.0
    ranks = [subprocess.Popen([sys.executable, "-c", _REPORT, "both" if both else "one", str(wait_s)],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    started = time.time()
    (out0, err0), (out1, err1) = (p.communicate(timeout=60) for p in ranks)
    assert [p.returncode for p in ranks] == [0, 0], (err0, err1)
    lines0 = [line for line in err0.splitlines() if line.startswith("sparsembed:")]
    lines1 = [line for line in err1.splitlines() if line.startswith("sparsembed:")]
    left = float(out1.split()[1])
    if both:
        assert lines0 == ["sparsembed: error: rank 0: bad input"] and lines1 == [], (err0, err1)
        assert left >= float(out0.split()[1]) - 0.05  # rank 1 stayed until rank 0 had printed
    else:
        assert lines0 == [] and lines1 == ["sparsembed: error: rank 1: bad input"], (err0, err1)
        assert left - started >= wait_s  # it waited for rank 0's line first
