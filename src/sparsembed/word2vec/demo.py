"""``sparsembed demo``: generate a corpus with planted analogies, train on it, show what was learned.

The corpus and its questions come from :mod:`~sparsembed.word2vec.planted` (no download). :func:`run_demo`
says what the made-up words are, trains (:class:`sparsembed.Word2Vec` by default), prints nearest neighbours and
the planted-analogy accuracy per section, and either keeps everything in ``out_dir`` (the corpus, the questions
and the model as ``sparsembed train`` writes it) with the commands to try next, or keeps nothing.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sparsembed.errors import UserError
from sparsembed.word2vec.planted import generate_corpus, legend, planted_queries, write_analogies

__all__ = ["DEMO_PARAMS", "run_demo", "generate_corpus", "write_analogies", "planted_queries", "legend"]

#: What ``sparsembed train`` writes into its ``--out`` directory, and so the demo's ``out_dir`` beside its corpus.
TRAIN_OUTPUTS = ("vectors.bin", "vocab.txt", "metrics.jsonl", "model")

# Hyperparameters the demo trains with: gensim's defaults, spelled out (the corpus needs nothing special;
# gensim reaches 100% planted-analogy accuracy with them on the default corpus, CBOW and skip-gram).
DEMO_PARAMS: dict[str, Any] = {
    "vector_size": 100,
    "window": 5,
    "negative": 5,
    "min_count": 5,
    "epochs": 5,
}


def _default_train(corpus_path: str, sg: int, workers: int, seed: int, out: str | None = None) -> Any:
    """Train with sparsembed's own trainer on the demo hyperparameters; with ``out``, log ``metrics.jsonl`` and
    checkpoint into it as ``sparsembed train`` does."""
    from sparsembed import Word2Vec

    return Word2Vec(corpus_path, sg=sg, workers=workers, seed=seed, out=out, **DEMO_PARAMS)


def _prepare_out(out: Path, force: bool = False) -> Path:
    """``out``, made ready to keep a demo, or a UserError before anything is written: never over a trained model
    unless ``force``, which removes that model's outputs first (as ``train --force`` does)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"demo --out {out} exists and is not a directory; choose a directory")
    if (out / "model").exists() and not force:
        raise UserError(f"{out} already holds a trained model; pass --force to replace it, or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create demo --out {out}: {exc.strerror}; choose a writable directory") from exc
    if force:
        shutil.rmtree(out / "model", ignore_errors=True)
        for name in TRAIN_OUTPUTS:
            if name != "model":
                (out / name).unlink(missing_ok=True)
    return out


def _keep_model(trained: Any, out: Path) -> list[str]:
    """Write ``trained``'s outputs into ``out`` as ``sparsembed train`` does; return the names now there.

    A model of another library (a test's gensim) has no ``write_outputs``: it is not kept.
    """
    if hasattr(trained, "write_outputs"):
        if not (out / "model").exists():  # the default trainer has checkpointed there already
            trained.save(out)
        trained.write_outputs(out)
    return [name for name in TRAIN_OUTPUTS if (out / name).exists()]


def _program() -> list[str]:
    """The command as the user ran it (``.venv/bin/sparsembed`` after ``make demo``), so the lines paste as they are."""
    argv0 = sys.argv[0] if sys.argv else ""
    return [argv0] if Path(argv0).name == "sparsembed" else ["sparsembed"]


def _next_steps(out: Path | None, sg: int, seed: int, n_tokens: int | None, kept: list[str]) -> list[str]:
    """What to say at the end: what was kept and the commands to try on it, or how to keep it."""
    model, other = ("skipgram", "cbow") if sg else ("cbow", "skipgram")
    if out is None:
        again = [*_program(), "demo", "--out", "sparsembed-demo"]
        again += ["--model", model] if model != "cbow" else []
        again += ["--seed", str(seed)] if seed else []
        again += ["--tokens", str(n_tokens)] if n_tokens is not None else []
        return ["\nnothing was kept: the corpus, questions and model were in a temporary directory, now deleted. "
                "To keep them and try `sparsembed similar`, `eval` and `report` on them:",
                "  " + shlex.join(again)]
    lines = [f"\nkept in {out}: " + ", ".join(["corpus.txt", "questions.txt"] + [
        f"{name}/" if name == "model" else name for name in kept])]
    if "vectors.bin" not in kept:
        return lines
    d, program = str(out), _program()
    lines += ["try next:",
              "  " + shlex.join([*program, "similar", d, planted_queries(seed)[2]]),
              "  " + shlex.join([*program, "eval", d, "--analogies", str(out / "questions.txt")]),
              "  " + shlex.join([*program, "report", d]) + "   # plots loss and words/s (PNG files)",
              "  " + shlex.join([*program, "train", str(out / "corpus.txt"), "--out", f"{d}-{other}", "--model",
                                 other])]
    return lines


def _section_figures(sections: list[dict]) -> tuple[dict[str, float], dict[str, int]]:
    """Accuracy and question count per section of an ``evaluate_word_analogies`` result: gensim's shape, which
    sparsembed's ``Vectors`` returns too, so a model trained by either library is shown the same way."""
    acc, n = {}, {}
    for sec in sections:
        total = len(sec["correct"]) + len(sec["incorrect"])
        acc[sec["section"]] = len(sec["correct"]) / total if total else 0.0
        n[sec["section"]] = total
    return acc, n


def _show_neighbours(wv: Any, seed: int, say: Callable[[str], None]) -> dict[str, list[tuple[str, float]]]:
    """Say and return the nearest neighbours of a few planted words."""
    neighbours: dict[str, list[tuple[str, float]]] = {}
    say("\nnearest neighbours:")
    for word in planted_queries(seed):
        near = [(str(w), float(s)) for w, s in wv.most_similar(word, topn=6)]
        neighbours[word] = near
        say(f"  {word:>14}: " + ", ".join(f"{w} {s:.2f}" for w, s in near))
    return neighbours


def _show_analogies(wv: Any, questions: Path, say: Callable[[str], None]
                    ) -> tuple[float, dict[str, float], dict[str, int]]:
    """Say and return the planted-analogy accuracy: in total, and per section with its question count."""
    score, sections = wv.evaluate_word_analogies(str(questions))
    acc, sizes = _section_figures([s for s in sections if s["section"] != "Total accuracy"])
    say("\nplanted-analogy accuracy:")
    for name in acc:
        say(f"  {name:<30} {acc[name]:7.1%}  ({sizes[name]} questions)")
    say(f"  {'total':<30} {float(score):7.1%}")
    return score, acc, sizes


def run_demo(
    out_dir: str | os.PathLike | None = None,
    model: str = "cbow",
    workers: int = 2,
    seed: int = 0,
    train: Callable[[str, int, int, int], Any] | None = None,
    n_tokens: int | None = None,
    log: Callable[[str], None] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Generate the corpus and questions, say what their words are, train, print neighbours and planted-analogy
    accuracy, then what to try next.

    ``out_dir``: where everything is kept: corpus.txt, questions.txt and the trained model as ``sparsembed train``
    writes it (:data:`TRAIN_OUTPUTS`; a UserError, before anything is written, if it already holds a model and
    not ``force``);
    ``None`` works in a temporary directory that is removed afterwards, and says so. ``model``: ``"cbow"`` or
    ``"skipgram"``. ``train(corpus_path, sg, workers, seed)`` returns a model with ``.wv`` (gensim-compatible
    ``most_similar`` / ``evaluate_word_analogies``); ``None`` means :class:`sparsembed.Word2Vec` with
    :data:`DEMO_PARAMS` (a model without ``write_outputs`` is not kept). ``n_tokens``: corpus size,
    default 3 M for CBOW and 1.5 M for skip-gram (which costs more per token and needs fewer tokens for the
    same accuracy), so both train in about the same time. ``log`` receives each
    printed line (default: print to stdout).

    Returns ``{"model", "n_tokens", "n_questions", "generate_seconds", "train_seconds", "accuracy",
    "sections": {name: accuracy}, "section_sizes": {name: n}, "neighbours": {word: [(word, sim), ...]},
    "out_dir", "kept": [names in out_dir]}``.
    """
    if model not in ("cbow", "skipgram", "sg"):
        raise UserError(f"unknown model {model!r}; use 'cbow' or 'skipgram'")
    sg = 0 if model == "cbow" else 1
    tokens_asked = n_tokens
    if n_tokens is None:
        n_tokens = 3_000_000 if sg == 0 else 1_500_000
    say = log or (lambda line: print(line, file=sys.stdout, flush=True))
    keep = out_dir is not None
    out = _prepare_out(Path(out_dir), force) if keep else Path(tempfile.mkdtemp(prefix="sparsembed-demo-"))
    # A kept demo's model is logged and checkpointed as `sparsembed train` would, so `report` works on it too.
    train = train or functools.partial(_default_train, out=str(out) if keep else None)
    try:
        corpus, questions = out / "corpus.txt", out / "questions.txt"
        t0 = time.perf_counter()
        generate_corpus(corpus, n_tokens=n_tokens, seed=seed)
        n_questions = write_analogies(questions, seed=seed)
        t_gen = time.perf_counter() - t0
        where = f"in {out}" if keep else "in a temporary directory, deleted at the end"
        say(f"generated {n_tokens:,} tokens and {n_questions:,} planted analogies in {t_gen:.1f} s ({where})")
        say("the words:")
        for line in legend(seed):
            say(f"  {line}")

        say(f"training {model} on {workers} worker(s) ...")
        t0 = time.perf_counter()
        trained = train(str(corpus), sg, workers, seed)
        t_train = time.perf_counter() - t0
        say(f"trained in {t_train:.1f} s")
        wv = trained.wv
        kept = _keep_model(trained, out) if keep else []

        neighbours = _show_neighbours(wv, seed, say)
        score, acc, sizes = _show_analogies(wv, questions, say)
        for line in _next_steps(out if keep else None, sg, seed, tokens_asked, kept):
            say(line)
        return {
            "model": model,
            "n_tokens": n_tokens,
            "n_questions": n_questions,
            "generate_seconds": t_gen,
            "train_seconds": t_train,
            "accuracy": float(score),
            "sections": acc,
            "section_sizes": sizes,
            "neighbours": neighbours,
            "out_dir": str(out) if keep else None,
            "kept": ["corpus.txt", "questions.txt", *kept] if keep else [],
        }
    finally:
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
