"""Checkpoints written in the background while training goes on (:class:`checkpoint.BackgroundWriter`).

What a background save must keep from a save in the training thread: the checkpoint is the state at the moment
it was asked for (bit for bit, with ``workers=1``), a failed write is reported (and the previous checkpoint stays
the one to resume from), and a model whose copies would not fit in memory is saved in the training thread.
"""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from sparsembed import Word2Vec
from sparsembed.cli import main
from sparsembed.word2vec import checkpoint
from train_utils import FAST, small_corpus, train_argv

SETTINGS = {"vector_size": 16, "epochs": 3, "workers": 1, "min_count": 3, "seed": 7}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return small_corpus(tmp_path_factory.mktemp("background") / "corpus.txt")


def _recording_saves(monkeypatch, delay: float = 0.0, fail_at: int | None = None) -> list[str]:
    """Patch ``save_checkpoint`` to record the thread of each save, wait ``delay`` s before writing (training goes
    on meanwhile), and fail with a full disk at save number ``fail_at`` (1-based)."""
    real = checkpoint.save_checkpoint
    threads: list[str] = []

    def save(*args, **kwargs):
        threads.append(threading.current_thread().name)
        if fail_at is not None and len(threads) == fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        time.sleep(delay)
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_checkpoint", save)
    return threads


def test_background_checkpoint_holds_the_state_of_its_epoch_end(corpus: Path, tmp_path: Path, monkeypatch) -> None:
    threads = _recording_saves(monkeypatch, delay=0.3)
    model = Word2Vec(**SETTINGS)
    model.keep_checkpoints = 3
    model.build_vocab(str(corpus))
    model.train(progress=False, out=tmp_path / "run")
    assert threads == ["sparsembed-checkpoint"] * 3  # every epoch's save left the training thread
    # The same run stopped at the first epoch's end: its matrices are what generation 1 must hold, though the
    # background run had trained on for the 0.3 s its write waited.
    stopped = Word2Vec(**SETTINGS)
    stopped.build_vocab(str(corpus))
    stopped.train(progress=False, stop_after_jobs=stopped.schedule().n_jobs)
    for name, live in (("syn0", stopped.syn0), ("syn1", stopped.syn1)):
        saved = np.load(tmp_path / "run" / "model" / f"{name}.000001.npy")
        assert np.array_equal(saved, live)
        assert not np.array_equal(saved, getattr(model, name))  # training did move on after it
    assert checkpoint.load_checkpoint(tmp_path / "run" / "model")[1]["position"]["epoch"] == 3


def test_failed_background_write_is_a_full_disk_and_the_previous_checkpoint_resumes(corpus: Path, tmp_path: Path,
                                                                                    monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_bytes(corpus.read_bytes())
    settings = {**FAST, "epochs": 3}
    with monkeypatch.context() as patch:
        _recording_saves(patch, fail_at=2)
        code = main(["train", "corpus.txt", "--out", "run", *train_argv(settings), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert "no space left" in err.lower() and "resume with: sparsembed train --resume run" in err, err
    assert checkpoint.read_state(tmp_path / "run" / "model")["meta"]["position"]["epoch"] == 1
    assert main(["train", "--resume", "run", "--quiet"]) == 0
    assert checkpoint.read_state(tmp_path / "run" / "model")["meta"]["position"]["epoch"] == 3


@pytest.mark.parametrize("available", [None, 1024])
def test_copies_that_do_not_fit_are_saved_in_the_training_thread(corpus: Path, tmp_path: Path, monkeypatch,
                                                                 available: int | None) -> None:
    threads = _recording_saves(monkeypatch)
    monkeypatch.setattr(checkpoint, "memory_available", lambda: available)
    model = Word2Vec(**SETTINGS)
    model.build_vocab(str(corpus))
    model.train(progress=False, out=tmp_path / "run")
    assert threads == [threading.current_thread().name] * 3


def test_writer_runs_one_save_at_a_time_and_raises_a_failure_once() -> None:
    writer = checkpoint.BackgroundWriter()
    order: list[str] = []
    release = threading.Event()

    def first() -> None:
        release.wait(5)
        order.append("first")

    writer.start(first)
    assert writer.busy
    copy = np.arange(6.0)
    threading.Timer(0.2, release.set).start()
    buffer = writer.copy("a", copy)  # waits for the save that may still read its buffer
    assert order == ["first"] and np.array_equal(buffer, copy) and buffer is not copy
    assert writer.copy("a", copy + 1) is buffer  # the buffer is kept for the next save

    def failing() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    writer.start(failing)
    with pytest.raises(OSError, match="No space"):
        writer.wait()
    writer.wait()  # reported once
    writer.release()
    assert writer.copy("a", copy) is not buffer  # released: a new buffer


def test_copies_fit_in_a_quarter_of_the_available_memory(monkeypatch) -> None:
    writer = checkpoint.BackgroundWriter()
    arrays = {"a": np.zeros(1000, dtype=np.float32), "b": np.zeros(1000, dtype=np.float32)}  # 8000 bytes
    monkeypatch.setattr(checkpoint, "memory_available", lambda: 32_000)
    assert writer.fits(arrays)
    monkeypatch.setattr(checkpoint, "memory_available", lambda: 31_999)
    assert not writer.fits(arrays)
    writer.copy("a", arrays["a"])
    monkeypatch.setattr(checkpoint, "memory_available", lambda: 16_000)
    assert writer.fits(arrays)  # the buffer already held for "a" needs no more memory: 4000 bytes of 4000
    monkeypatch.setattr(checkpoint, "memory_available", lambda: 15_999)
    assert not writer.fits(arrays)


def test_a_save_waits_for_the_background_one_before_it(corpus: Path, tmp_path: Path, monkeypatch) -> None:
    threads = _recording_saves(monkeypatch, delay=0.3)
    model = Word2Vec(**{**SETTINGS, "epochs": 1})
    model.build_vocab(str(corpus))
    model.train(progress=False)
    model.save_in_background(tmp_path)
    model.syn0[0] += 1.0  # after the copy: not in generation 1
    model.save(tmp_path)  # generation 2, numbered and written after generation 1 is complete
    assert threads == ["sparsembed-checkpoint", threading.current_thread().name]
    state = checkpoint.read_state(tmp_path / "model")
    assert state["generation"] == 2
    first = np.load(tmp_path / "model" / "syn0.000001.npy")
    assert np.array_equal(first[0] + 1.0, model.syn0[0]) and np.array_equal(first[1:], model.syn0[1:])
    assert np.array_equal(Word2Vec.load(tmp_path).syn0, model.syn0)


def test_cli_writes_its_outputs_while_the_last_checkpoint_goes_to_disk(corpus: Path, tmp_path: Path,
                                                                       monkeypatch) -> None:
    from sparsembed.word2vec import formats

    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_bytes(corpus.read_bytes())
    threads = _recording_saves(monkeypatch, delay=0.5)
    real_write = formats.write_word2vec
    seen: list[bool] = []

    def write(*args, **kwargs):
        seen.append(threads[-1] == "sparsembed-checkpoint" and any(
            t.name == "sparsembed-checkpoint" for t in threading.enumerate()))
        return real_write(*args, **kwargs)

    monkeypatch.setattr(formats, "write_word2vec", write)
    assert main(["train", "corpus.txt", "--out", "run", *train_argv(FAST), "--quiet"]) == 0
    assert seen == [True]  # the vectors were written while the last checkpoint was still being written
    assert checkpoint.read_state(tmp_path / "run" / "model")["meta"]["position"]["epoch"] == FAST["epochs"]
    assert (tmp_path / "run" / "vectors.bin").stat().st_size > 0


def test_cli_last_checkpoint_failing_after_the_outputs_is_one_line(corpus: Path, tmp_path: Path, monkeypatch,
                                                                   capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_bytes(corpus.read_bytes())
    with monkeypatch.context() as patch:
        _recording_saves(patch, fail_at=FAST["epochs"])
        code = main(["train", "corpus.txt", "--out", "run", *train_argv(FAST), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "no space left" in err.lower(), err
    state = checkpoint.read_state(tmp_path / "run" / "model")  # the epoch before stays the one to resume
    assert state["meta"]["position"]["epoch"] == FAST["epochs"] - 1
    assert main(["train", "--resume", "run", "--quiet"]) == 0


@pytest.mark.parametrize("available", [None, 1 << 40])
def test_on_saved_runs_once_the_checkpoint_is_on_disk(corpus: Path, tmp_path: Path, monkeypatch,
                                                       available: int | None) -> None:
    _recording_saves(monkeypatch, delay=0.2)
    monkeypatch.setattr(checkpoint, "memory_available", lambda: available)
    model = Word2Vec(**{**SETTINGS, "epochs": 1})
    model.build_vocab(str(corpus))
    model.train(progress=False)
    on_disk: list[bool] = []
    model.save_in_background(tmp_path, on_saved=lambda: on_disk.append(checkpoint.present(tmp_path / "model")))
    model.finish_saves()
    assert on_disk == [True]  # in the background (copies fit) or in this thread (they do not, or unknown)
    monkeypatch.setattr(checkpoint, "save_checkpoint", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "full")))
    failed: list[bool] = []
    with pytest.raises(OSError):
        model.save_in_background(tmp_path, on_saved=lambda: failed.append(True))
        model.finish_saves()
    assert failed == []  # not called for a write that failed
