"""Resuming as a user types it: relative paths from any directory, a moved corpus, settings a resume cannot
change, and the kept checkpoint generations a damaged newest one falls back to.

Every CLI call runs in a temporary working directory with relative paths (`train corpus.txt --out run`), and
every run is stopped as Ctrl-C stops it (the stop event set mid-epoch: a checkpoint, exit 130). With
``--workers 1`` a resumed run is byte-identical to an uninterrupted one, which is what most cases check.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from sparsembed.cli import main
from sparsembed.word2vec import checkpoint
from train_utils import FAST, interrupt_after, reference_run, small_corpus, snapshot, train_argv


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return small_corpus(tmp_path_factory.mktemp("resume") / "corpus.txt")


@pytest.fixture(scope="module")
def reference(corpus: Path, tmp_path_factory) -> Path:
    return reference_run(corpus, tmp_path_factory.mktemp("reference") / "run")



def _refused(argv: list[str], capsys) -> str:
    """Run the CLI expecting a refusal: exit code 2 and one line on stderr, which is returned."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sparsembed: error: ") and "\n" not in err and "Traceback" not in err
    return err


def _corpus_of(out: Path) -> Path:
    return Path(json.loads((out / "model" / "state.json").read_text())["meta"]["corpus"]["source"])


def _rewrite_checkpoint(out: Path, change) -> None:
    """The checkpoint in ``out`` saved again (valid checksums) after ``change(arrays, meta)``."""
    arrays, meta = checkpoint.load_checkpoint(out / "model")
    change(arrays, meta)
    checkpoint.save_checkpoint(out / "model", arrays, meta)


# ------------------------------------------------------------------ relative paths, a moved corpus, settings
def _stop_in(home: Path, corpus: Path, monkeypatch, capsys, extra: tuple[str, ...] = (), questions: int = 3) -> None:
    """In ``home`` (the working directory from now on), `train corpus.txt --out run`, stopped as Ctrl-C stops it."""
    home.mkdir(exist_ok=True)
    shutil.copy2(corpus, home / "corpus.txt")
    monkeypatch.chdir(home)
    with monkeypatch.context() as patch:
        interrupt_after(patch, questions)
        code = main(["train", "corpus.txt", "--out", "run", *train_argv(FAST), *extra, "--quiet"])
    assert code == 128 + signal.SIGINT
    assert capsys.readouterr().err.strip() == "sparsembed: interrupted; resume with: sparsembed train --resume run"


@pytest.mark.parametrize("where", ["same directory", "another directory"])
def test_resume_with_relative_paths(corpus: Path, reference: Path, tmp_path: Path, where: str, monkeypatch,
                                    capsys) -> None:
    """The README's form, `train corpus.txt --out run`, then the command its interrupt message prints."""
    _stop_in(tmp_path / "home", corpus, monkeypatch, capsys)
    run = "run"
    if where == "another directory":
        (tmp_path / "elsewhere").mkdir()
        monkeypatch.chdir(tmp_path / "elsewhere")
        run = "../home/run"
    assert main(["train", "--resume", run, "--quiet"]) == 0, capsys.readouterr().err
    assert (tmp_path / "home" / "run" / "vectors.bin").read_bytes() == (reference / "vectors.bin").read_bytes()


def test_checkpoint_with_the_corpus_path_as_typed_still_resumes(corpus: Path, reference: Path, tmp_path: Path,
                                                                monkeypatch, capsys) -> None:
    """Checkpoints written before paths were resolved hold the corpus path relative to where the run began."""
    _stop_in(tmp_path / "home", corpus, monkeypatch, capsys)

    def as_typed(_arrays, meta):
        fingerprint = meta["corpus"]["fingerprint"]
        fingerprint["path"] = "corpus.txt"
        fingerprint["files"] = [{**f, "path": "corpus.txt"} for f in fingerprint["files"]]

    _rewrite_checkpoint(Path("run"), as_typed)
    assert main(["train", "--resume", "run", "--quiet"]) == 0, capsys.readouterr().err
    assert Path("run/vectors.bin").read_bytes() == (reference / "vectors.bin").read_bytes()


def test_moved_corpus_is_named_and_its_new_path_accepted(corpus: Path, reference: Path, tmp_path: Path, monkeypatch,
                                                        capsys) -> None:
    _stop_in(tmp_path / "home", corpus, monkeypatch, capsys)
    Path("data").mkdir()
    os.rename("corpus.txt", "data/corpus.txt")  # as `mv` does: same bytes, same modification time
    err = _refused(["train", "--resume", "run", "--quiet"], capsys)
    assert f"the corpus {(tmp_path / 'home' / 'corpus.txt').resolve()} of this checkpoint is missing (moved or " \
           "deleted)" in err
    assert err.endswith("put it back, or give its new path: sparsembed train --resume run NEW_PATH")
    assert "does not exist" in _refused(["train", "--resume", "run", "nowhere.txt", "--quiet"], capsys)
    assert main(["train", "--resume", "run", "data/corpus.txt", "--quiet"]) == 0, capsys.readouterr().err
    assert Path("run/vectors.bin").read_bytes() == (reference / "vectors.bin").read_bytes()
    assert _corpus_of(Path("run")) == (tmp_path / "home" / "data" / "corpus.txt").resolve()  # looked for there next


def test_moved_corpus_that_changed_is_refused(corpus: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    _stop_in(tmp_path / "home", corpus, monkeypatch, capsys)
    shutil.copy(corpus, "copy.txt")  # same bytes, but a new modification time: not provably the same files
    with open("copy.txt", "a") as handle:
        handle.write("one more line\n")
    before = snapshot(Path("run"))
    err = _refused(["train", "--resume", "run", "copy.txt", "--quiet"], capsys)
    assert "changed since the checkpoint was written: copy.txt has" in err and "bytes, was" in err
    assert snapshot(Path("run")) == before


def test_resume_refuses_settings_its_checkpoint_fixes(corpus: Path, reference: Path, tmp_path: Path, monkeypatch,
                                                      capsys) -> None:
    """`--resume run --dim 50` used to ignore --dim silently; the options a resume may change still pass."""
    _stop_in(tmp_path / "home", corpus, monkeypatch, capsys)
    before = snapshot(Path("run"))
    err = _refused(["train", "--resume", "run", "--dim", "50", "--epochs=9", "--quiet"], capsys)
    assert err == ("sparsembed: error: --dim, --epochs: a resumed run keeps the settings of its checkpoint in run and "
                   "cannot change them; drop them, or start a new run with CORPUS --out DIR")
    assert "--seed: " in _refused(["train", "--resume", "run", "--se", "4"], capsys)  # argparse's abbreviation
    assert "--model: " in _refused(["train", "--resume", "run", "--model", "skipgram"], capsys)
    assert "drop --out" in _refused(["train", "--resume", "run", "--out", "other"], capsys)
    assert snapshot(Path("run")) == before
    assert main(["train", "--resume", "run", "--workers", "1", "--checkpoint-every", "5", "--keep-checkpoints", "3",
                 "--quiet"]) == 0
    assert Path("run/vectors.bin").read_bytes() == (reference / "vectors.bin").read_bytes()


# ------------------------------------------------------------------------------ kept checkpoint generations
# A checkpoint after every job, of many small jobs: a run stopped after 9 of 48 jobs holds many generations.
EVERY_JOB = ("--checkpoint-every", "0", "--job-tokens", "5000")


def _generations(model_dir: Path) -> list[int]:
    return sorted(int(p.name.split(".")[1]) for p in model_dir.glob("state.*.json"))


def _whole_run(capsys) -> bytes:
    """vectors.bin of an uninterrupted EVERY_JOB run on ./corpus.txt."""
    assert main(["train", "corpus.txt", "--out", "whole", *train_argv(FAST), *EVERY_JOB, "--quiet"]) == 0
    capsys.readouterr()
    return Path("whole/vectors.bin").read_bytes()


def test_keep_checkpoints_sets_how_many_generations_stay(corpus: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    _stop_in(tmp_path / "home", corpus, monkeypatch, capsys, EVERY_JOB, questions=9)
    assert len(_generations(Path("run/model"))) == 2  # the default
    assert "--keep-checkpoints must be an integer >= 1" in _refused(
        ["train", "--resume", "run", "--keep-checkpoints", "0"], capsys)
    with monkeypatch.context() as patch:
        interrupt_after(patch, 9)
        code = main(["train", "--resume", "run", "--checkpoint-every", "0", "--keep-checkpoints", "3", "--quiet"])
    assert code == 128 + signal.SIGINT
    assert len(_generations(Path("run/model"))) == 3
    assert len({p.name.split(".")[-2] for p in Path("run/model").glob("*.npy")}) == 3


def _flip_byte(path: Path) -> bytes:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    return bytes(data)


def test_damaged_newest_generation_falls_back_to_the_previous(corpus: Path, tmp_path: Path, monkeypatch,
                                                              capsys) -> None:
    _stop_in(tmp_path / "home", corpus, monkeypatch, capsys, EVERY_JOB, questions=9)
    model_dir = Path("run/model")
    previous, newest = _generations(model_dir)
    damaged = model_dir / f"syn0.{newest:06d}.npy"
    damaged_bytes = _flip_byte(damaged)
    assert main(["train", "--resume", "run", "--quiet"]) == 0
    assert capsys.readouterr().err.strip().splitlines() == [
        f"sparsembed: checkpoint file {damaged} is corrupt (checksum mismatch); falling back to generation "
        f"{previous} ({model_dir / f'state.{previous:06d}.json'}); the damaged files are left in place"]
    assert Path("run/vectors.bin").read_bytes() == _whole_run(capsys)  # one checkpoint further back: exact
    # The damaged generation outlives the saves since (for inspection), beside the 2 newest.
    assert damaged.read_bytes() == damaged_bytes and len(_generations(model_dir)) == 3
    assert json.loads((model_dir / "state.json").read_text())["damaged"] == [newest]


def test_damaged_state_json_falls_back_to_its_generations_own(corpus: Path, reference: Path, tmp_path: Path,
                                                            monkeypatch, capsys) -> None:
    _stop_in(tmp_path / "home", corpus, monkeypatch, capsys)  # one checkpoint: the stop's, generation 1
    state = Path("run/model/state.json")
    state.write_bytes(state.read_bytes()[:100])
    assert main(["train", "--resume", "run", "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sparsembed: checkpoint {state} is damaged (")
    assert err[0].endswith("falling back to generation 1 (run/model/state.000001.json); the damaged files are left "
                           "in place")
    assert Path("run/vectors.bin").read_bytes() == (reference / "vectors.bin").read_bytes()


def test_every_generation_damaged_is_one_line(corpus: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    _stop_in(tmp_path / "home", corpus, monkeypatch, capsys, EVERY_JOB, questions=9)
    model_dir = Path("run/model")
    previous, newest = _generations(model_dir)
    for generation in (previous, newest):
        _flip_byte(model_dir / f"syn1.{generation:06d}.npy")
    before = snapshot(Path("run"))
    err = _refused(["train", "--resume", "run", "--quiet"], capsys)
    assert err == (f"sparsembed: error: checkpoint file {model_dir / f'syn1.{newest:06d}.npy'} is corrupt "
                   "(checksum mismatch); restore it or retrain")
    assert snapshot(Path("run")) == before
