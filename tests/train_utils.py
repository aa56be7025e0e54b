"""What the single-process fault and resume tests share: quick settings, their command line, a small corpus,
an uninterrupted reference run, a directory's bytes, and a stop event that fires mid-epoch (and the patch that
hands it to the next training run)."""

from __future__ import annotations

from pathlib import Path

from sparsembed import Word2Vec
from sparsembed.cli import main
from sparsembed.word2vec.demo import generate_corpus

# Quick settings for the in-process cases (a few tenths of a second per run).
FAST = {"dim": 16, "epochs": 2, "workers": 1, "min_count": 3, "seed": 7}


def train_argv(settings: dict) -> list[str]:
    """``--key value`` options of ``sparsembed train`` for ``settings`` (underscores become dashes)."""
    return [item for key, value in settings.items() for item in (f"--{key.replace('_', '-')}", str(value))]


def snapshot(directory: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path → bytes), except those named in ``skip``."""
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name not in skip}


def small_corpus(path: Path) -> Path:
    """The generated corpus these tests train on, written to ``path``."""
    generate_corpus(path, n_tokens=120_000, seed=4)
    return path


def reference_run(corpus: Path, out: Path) -> Path:
    """An uninterrupted run with FAST settings into ``out``."""
    assert main(["train", str(corpus), "--out", str(out), *train_argv(FAST), "--quiet"]) == 0
    return out


class StopAfter:
    """An Event whose is_set() turns true at the n-th question: a Ctrl-C arriving mid-epoch."""

    def __init__(self, n: int) -> None:
        self.calls, self.n = 0, n

    def is_set(self) -> bool:
        self.calls += 1
        return self.calls > self.n


def interrupt_after(monkeypatch, questions: int) -> None:
    """The next training run stops as Ctrl-C stops it (checkpoint, exit 130), after ``questions`` questions."""
    real = Word2Vec.train

    def train(model, *args, **kwargs):
        kwargs["stop"] = StopAfter(questions)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(Word2Vec, "train", train)
