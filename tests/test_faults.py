"""Faults a single-process run survives: SIGKILL, SIGINT / SIGTERM, damaged checkpoints, a changed corpus, a full disk.

Every case checks the promise of RELIABILITY.md: resume is byte-identical to an uninterrupted run, a refused
resume is one line and exit code 2, and the last good checkpoint and outputs are left exactly as they were.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sparsembed import Word2Vec, fsutil
from sparsembed.cli import main
from sparsembed.errors import DiskFull
from sparsembed.word2vec import checkpoint, formats, vocab
from sparsembed.word2vec.demo import generate_corpus
from train_utils import FAST, StopAfter, reference_run, small_corpus, snapshot, train_argv

# The subprocess cases must still be training when the signal comes, and the SIGKILL case wants a checkpoint
# from the middle of an epoch: epochs must outlast --checkpoint-every (an epoch's end restarts its clock).
# Skip-gram with a wide window makes them ~0.3 s here; slower attempts follow in case a machine is much faster.
LONG = {"model": "skipgram", "window": 10, "workers": 1, "min_count": 3, "seed": 11, "checkpoint_every": 0.2}
LONG_ATTEMPTS = ({"dim": 64, "epochs": 5}, {"dim": 200, "epochs": 6}, {"dim": 600, "epochs": 8})


def _position(out: Path) -> tuple[int, int]:
    state = json.loads((out / "model" / "state.json").read_text())
    return state["meta"]["position"]["epoch"], state["meta"]["position"]["job"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return small_corpus(tmp_path_factory.mktemp("faults") / "corpus.txt")


@pytest.fixture(scope="module")
def reference(corpus: Path, tmp_path_factory) -> Path:
    return reference_run(corpus, tmp_path_factory.mktemp("reference") / "run")


@pytest.fixture
def stopped(corpus: Path, tmp_path: Path) -> Path:
    """A run (FAST settings, on its own copy of the corpus) checkpointed part-way through its first epoch."""
    own = tmp_path / "corpus.txt"
    shutil.copy2(corpus, own)
    out = tmp_path / "run"
    model = Word2Vec(vector_size=FAST["dim"], epochs=FAST["epochs"], workers=1, min_count=FAST["min_count"],
                     seed=FAST["seed"])
    model.build_vocab(own)
    model.train(progress=False, out=out, stop_after_jobs=1)
    model.save(out)
    assert _position(out) == (0, 1)
    return out


def _refused(argv: list[str], capsys) -> str:
    """Run the CLI expecting a refusal: exit code 2 and one line on stderr, which is returned."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sparsembed: error: ") and "\n" not in err and "Traceback" not in err
    return err


# ----------------------------------------------------------------------------------- kill and signals
_long_references: dict[int, bytes] = {}


def _long_reference(corpus: Path, attempt: int, tmp_path: Path) -> bytes:
    """vectors.bin of an uninterrupted run of LONG_ATTEMPTS[attempt] (computed once per attempt, in-process)."""
    if attempt not in _long_references:
        out = tmp_path / f"reference-{attempt}"
        argv = ["train", str(corpus), "--out", str(out), *train_argv({**LONG, **LONG_ATTEMPTS[attempt]}), "--quiet"]
        assert main(argv) == 0
        _long_references[attempt] = (out / "vectors.bin").read_bytes()
    return _long_references[attempt]


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("long") / "corpus.txt"
    generate_corpus(path, n_tokens=300_000, seed=5)
    return path


def _wait_for_progress(proc: subprocess.Popen, out: Path, epochs: int, mid_epoch: bool, limit: float = 60.0) -> bool:
    """Wait until ``out`` holds a checkpoint past the start and short of the end (mid-epoch if asked).

    Returns False if the run ended first (too quick for this machine); raises if neither happens in time.
    """
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, KeyError):
            epoch, job = _position(out)  # state.json is replaced atomically: never read half-written
            if epoch < epochs and (job > 0 if mid_epoch else (epoch, job) > (0, 0)):
                return True
        time.sleep(0.005)
    proc.kill()
    raise AssertionError(f"no checkpoint in {out} after {limit} s")


def _signal_mid_run(corpus: Path, tmp_path: Path, signum: int, mid_epoch: bool) -> tuple[Path, int, str, int]:
    """Start a LONG run, send ``signum`` once a checkpoint shows progress; (out, returncode, stderr, attempt).

    If the run finishes before the signal can reach it, try the next, slower, attempt.
    """
    for attempt, config in enumerate(LONG_ATTEMPTS):
        out = tmp_path / f"run-{attempt}"
        argv = [sys.executable, "-m", "sparsembed", "train", str(corpus), "--out", str(out),
                *train_argv({**LONG, **config}), "--quiet"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            reached = _wait_for_progress(proc, out, config["epochs"], mid_epoch)
            if reached:
                proc.send_signal(signum)
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if reached and proc.returncode != 0:
            return out, proc.returncode, err, attempt
        assert proc.returncode == 0, err  # it finished on its own: fine, but it must have succeeded
    raise AssertionError(f"every run finished before the signal reached it (attempts: {LONG_ATTEMPTS})")


def test_sigkill_then_resume_is_byte_identical(long_corpus: Path, tmp_path: Path) -> None:
    out, code, _, attempt = _signal_mid_run(long_corpus, tmp_path, signal.SIGKILL, mid_epoch=True)
    assert code == -signal.SIGKILL
    assert main(["train", "--resume", str(out), "--workers", "1", "--quiet"]) == 0
    assert (out / "vectors.bin").read_bytes() == _long_reference(long_corpus, attempt, tmp_path)
    # Whatever a save cut short by the kill left behind is gone after the next good save.
    assert not [p.name for p in (out / "model").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_then_resume_is_byte_identical(long_corpus: Path, tmp_path: Path, signum: int) -> None:
    out, code, err, attempt = _signal_mid_run(long_corpus, tmp_path, signum, mid_epoch=False)
    assert code == 128 + signum, err
    assert err.strip().splitlines() == [f"sparsembed: interrupted; resume with: sparsembed train --resume {out}"]
    assert main(["train", "--resume", str(out), "--workers", "1", "--quiet"]) == 0
    assert (out / "vectors.bin").read_bytes() == _long_reference(long_corpus, attempt, tmp_path)


def test_signal_before_training_leaves_nothing(corpus: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """SIGTERM while the corpus is scanned: stop at once, exit 143, and remove the --out this run created."""
    real = Word2Vec.build_vocab

    def scan_then_signal(model, source):
        real(model, source)
        os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode: our handler raises at once
        time.sleep(5)  # not reached; a bound in case delivery lags

    monkeypatch.setattr(Word2Vec, "build_vocab", scan_then_signal)
    out = tmp_path / "run"
    handler_before = signal.getsignal(signal.SIGTERM)
    capsys.readouterr()
    assert main(["train", str(corpus), "--out", str(out), *train_argv(FAST), "--quiet"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip() == "sparsembed: interrupted"
    assert not out.exists()
    assert signal.getsignal(signal.SIGTERM) == handler_before  # our handler is uninstalled again


def test_stop_event_drains_and_checkpoints(corpus: Path, reference: Path, tmp_path: Path) -> None:
    """The trainer's side of an interrupt, in-process: stop at a job boundary, checkpoint, resume exactly."""

    out = tmp_path / "run"
    model = Word2Vec(vector_size=FAST["dim"], epochs=FAST["epochs"], workers=2, min_count=FAST["min_count"],
                     seed=FAST["seed"])
    model.build_vocab(corpus)
    summary = model.train(progress=False, out=out, stop=StopAfter(3))
    assert summary["interrupted"] and not model.done
    epoch, job = _position(out)
    assert (epoch, job) == (model.position.epoch, model.position.job) and (epoch, job) > (0, 0)
    resumed = Word2Vec.load(out, with_corpus=True)
    np.testing.assert_array_equal(resumed.syn0, model.syn0)
    np.testing.assert_array_equal(resumed.syn1, model.syn1)


def test_leftovers_of_a_killed_save_are_removed(stopped: Path, reference: Path) -> None:
    """What SIGKILL during a save leaves (temporary files, arrays of a generation never adopted) is cleared."""
    model_dir = stopped / "model"
    for array in list(model_dir.glob("*.000001.npy")):
        shutil.copy(array, model_dir / array.name.replace("000001", "000007"))  # complete, but never adopted
    leftovers = [model_dir / ".syn1.000007.npy.k1ll3d.tmp", model_dir / ".state.json.k1ll3d.tmp",
                 model_dir / ".state.000007.json.k1ll3d.tmp", stopped / ".vectors.bin.k1ll3d.tmp",
                 stopped / ".vocab.txt.k1ll3d.tmp"]
    for path in leftovers:
        path.write_bytes(b"half-written")
    assert Word2Vec.load(stopped).position.job == 1  # state.json still names generation 1
    assert main(["train", "--resume", str(stopped), "--quiet"]) == 0
    assert (stopped / "vectors.bin").read_bytes() == (reference / "vectors.bin").read_bytes()
    assert not [p for p in leftovers if p.exists()]
    generations = {int(p.name.split(".")[-2]) for p in model_dir.glob("*.npy")}
    # New numbers (nothing half-made is reused), and the two newest generations kept (--keep-checkpoints 2).
    assert len(generations) == 2 and min(generations) > 7
    assert {int(p.name.split(".")[1]) for p in model_dir.glob("state.*.json")} == generations


# --------------------------------------------------------------------------------- damaged state, bad input
def _flip_array_byte(out: Path) -> None:
    target = next((out / "model").glob("syn0.*.npy"))
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x40
    target.write_bytes(bytes(data))


def _state_files(out: Path) -> list[Path]:
    """``state.json`` and every generation's own state file: damage to all of them leaves nothing to fall back to."""
    return [out / "model" / "state.json", *sorted((out / "model").glob("state.*.json"))]


def _flip_state_digit(out: Path) -> None:
    for state in _state_files(out):
        text = state.read_text()
        at = text.index('"job": 1')
        state.write_text(text[:at] + '"job": 2' + text[at + len('"job": 1'):])


def _damage_states(change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def damage(out: Path) -> None:
        for state in _state_files(out):
            state.write_bytes(change(state.read_bytes()))

    return damage


def _rewrite_checkpoint(out: Path, change) -> None:
    """A checkpoint with valid checksums whose content ``change`` made inconsistent."""
    arrays, meta = checkpoint.load_checkpoint(out / "model")
    change(arrays, meta)
    checkpoint.save_checkpoint(out / "model", arrays, meta)


def _wrong_dim(out: Path) -> None:
    _rewrite_checkpoint(out, lambda arrays, meta: meta["settings"].update(vector_size=FAST["dim"] + 1))


def _wrong_rows(out: Path) -> None:
    def drop_row(arrays, _meta):
        arrays["syn0"], arrays["syn1"] = arrays["syn0"][:-1], arrays["syn1"][:-1]

    _rewrite_checkpoint(out, drop_row)


def _corpus_of(out: Path) -> Path:
    return Path(json.loads((out / "model" / "state.json").read_text())["meta"]["corpus"]["source"])


def _grow_corpus(out: Path) -> None:
    with open(_corpus_of(out), "a") as handle:
        handle.write("one more line\n")


def _touch_corpus(out: Path) -> None:
    path = _corpus_of(out)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


DAMAGE = {
    "array byte flipped": (_flip_array_byte, "corrupt (checksum mismatch)", False),
    "state files truncated": (_damage_states(lambda data: data[:100]), "is damaged", False),
    "state files garbage": (_damage_states(lambda _data: bytes(range(256)) * 4), "is damaged", False),
    "state files digit changed": (_flip_state_digit, "corrupt (checksum mismatch)", False),
    "array file missing": (lambda out: next((out / "model").glob("syn1.*.npy")).unlink(), "is missing", False),
    "matrices disagree with dim": (_wrong_dim, "inconsistent", False),
    "matrices disagree with vocabulary": (_wrong_rows, "inconsistent", False),
    "corpus grew": (_grow_corpus, "changed since the checkpoint", True),
    "corpus touched": (_touch_corpus, "changed since the checkpoint", True),
    "corpus vanished": (lambda out: _corpus_of(out).unlink(), "is missing (moved or deleted)", True),
    "no checkpoint": (lambda out: shutil.rmtree(out / "model"), "no checkpoint", False),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_bad_state_is_refused_and_left_as_is(stopped: Path, case: str, capsys) -> None:
    damage, fragment, checkpoint_intact = DAMAGE[case]
    damage(stopped)
    before = snapshot(stopped)
    err = _refused(["train", "--resume", str(stopped), "--workers", "1", "--quiet"], capsys)
    assert fragment in err
    assert snapshot(stopped) == before
    if checkpoint_intact:  # the corpus was at fault: the checkpoint itself still loads, at its position
        model = Word2Vec.load(stopped)
        assert (model.position.epoch, model.position.job) == (0, 1)


def test_resume_of_a_missing_directory(tmp_path: Path, capsys) -> None:
    assert "no checkpoint" in _refused(["train", "--resume", str(tmp_path / "nowhere")], capsys)
    assert not (tmp_path / "nowhere").exists()


# ------------------------------------------------------------------------------------------------ full disk
def test_atomic_write_full_disk_at_fsync(tmp_path: Path, monkeypatch) -> None:
    """ENOSPC can surface only when buffered data is flushed: the old file and no temporary must remain."""
    target = tmp_path / "vectors.bin"
    target.write_bytes(b"old")

    def full(_fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fsutil.os, "fsync", full)
    with pytest.raises(DiskFull, match=f"no space left on device while writing {target}"):
        with fsutil.atomic_write(target) as handle:
            handle.write(b"new")
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]


class _FullDisk:
    """A file on a device that fills up after the first write: the next write fails with ENOSPC."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.writes = 0

    def write(self, data) -> int:
        if self.writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.writes += 1
        return self.handle.write(data)

    def __getattr__(self, name: str):
        return getattr(self.handle, name)


def _fill_disk_on(monkeypatch, name_part: str) -> None:
    """From now on, atomic writes of files whose name contains ``name_part`` run out of space half-way."""
    real = fsutil.atomic_write

    @contextlib.contextmanager
    def filling(path):
        with real(path) as handle:
            yield _FullDisk(handle) if name_part in Path(path).name else handle

    for module in (checkpoint, formats, vocab):
        monkeypatch.setattr(module, "atomic_write", filling)


def test_full_disk_while_checkpointing_keeps_the_last_checkpoint(
        stopped: Path, reference: Path, monkeypatch, capsys) -> None:
    model_dir = stopped / "model"
    before = snapshot(model_dir)
    with monkeypatch.context() as patch:
        _fill_disk_on(patch, "syn1")
        err = _refused(["train", "--resume", str(stopped), "--quiet"], capsys)
    assert "no space left on device while writing" in err and "syn1." in err
    assert err.endswith(f"free space and resume with: sparsembed train --resume {stopped}")
    # The half-made generation is gone (no space held by it), the last good one untouched.
    assert snapshot(model_dir) == before
    assert (Word2Vec.load(stopped).position.epoch, Word2Vec.load(stopped).position.job) == (0, 1)
    assert main(["train", "--resume", str(stopped), "--quiet"]) == 0
    assert (stopped / "vectors.bin").read_bytes() == (reference / "vectors.bin").read_bytes()


def test_full_disk_while_writing_vectors(corpus: Path, reference: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _fill_disk_on(patch, "vectors.bin")
        err = _refused(["train", str(corpus), "--out", str(out), *train_argv(FAST), "--quiet"], capsys)
    assert f"no space left on device while writing {out / 'vectors.bin'}" in err
    assert err.endswith(f"free space and resume with: sparsembed train --resume {out}")
    assert not (out / "vectors.bin").exists() and not list(out.glob(".*.tmp"))
    assert Word2Vec.load(out).done  # training finished and was checkpointed: resuming only writes outputs
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert (out / "vectors.bin").read_bytes() == (reference / "vectors.bin").read_bytes()
    # Rewriting the outputs of a finished run onto a full disk leaves the previous ones as they were.
    before = snapshot(out)
    with monkeypatch.context() as patch:
        _fill_disk_on(patch, "vectors.bin")
        _refused(["train", "--resume", str(out), "--quiet"], capsys)
    assert snapshot(out) == before


def test_full_disk_before_any_checkpoint(corpus: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _fill_disk_on(patch, "syn0")
        err = _refused(["train", str(corpus), "--out", str(out), *train_argv(FAST), "--quiet"], capsys)
    assert "no space left on device" in err and err.endswith("free space and run again")
    assert not out.exists()  # this run made the directory and left nothing worth resuming in it


def test_full_disk_while_logging_metrics(stopped: Path, monkeypatch, capsys) -> None:
    from sparsembed.word2vec import progress

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    before = snapshot(stopped / "model")
    monkeypatch.setattr(progress.Progress, "update", full)
    err = _refused(["train", "--resume", str(stopped), "--quiet"], capsys)
    assert "no space left on device" in err and "--resume" in err
    assert snapshot(stopped / "model") == before
