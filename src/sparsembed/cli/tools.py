"""The commands around training: export, eval, similar, report, bench, demo.

Each loads what it needs when it runs, so the command line starts fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsembed.errors import UserError

if TYPE_CHECKING:
    from sparsembed.word2vec.vectors import Vectors


def load_vectors(path: str) -> Vectors:
    """Vectors from a word2vec file, or from a training directory: its ``vectors.bin``, else its saved model.

    A directory that holds only ``model/`` (``model.save(DIR)`` from Python, or a run stopped before its
    end) is read from the model, so every command that takes a training directory works on it.
    """
    from sparsembed.word2vec.vectors import Vectors

    target = Path(path)
    if target.is_dir() and not (target / "vectors.bin").is_file() and holds_model(target):
        return _vectors_of_saved_model(target)
    if target.is_dir():
        target = target / "vectors.bin"
    if not target.is_file():
        raise UserError(f"no vectors at {path}: give a word2vec file, or a directory written by `sparsembed train` "
                        "or by model.save(DIR)")
    return Vectors.load_word2vec_format(target)


def holds_model(directory: Path) -> bool:
    """Whether ``directory`` holds a saved model: a ``model/`` checkpoint, or is that checkpoint itself."""
    from sparsembed.word2vec.checkpoint import STATE_FILE

    return (directory / "model").is_dir() or (directory / STATE_FILE).is_file()


def _vectors_of_saved_model(directory: Path) -> Vectors:
    from sparsembed.word2vec.model import Word2Vec

    model = Word2Vec.load(directory)
    if not model.done:  # the checkpoint of an unfinished run: say so, or its figures would pass for final ones
        print(f"sparsembed: note: {directory} holds no vectors.bin; using the vectors of its checkpoint, "
              f"{model.position.epoch} of {model.settings.epochs} epochs trained", file=sys.stderr)
    return model.wv


def cmd_export(args: argparse.Namespace) -> int:
    """``sparsembed export DIR --format text|binary|npy|fasttext|vec``."""
    from sparsembed.subword.fasttext_bin import write_bin, write_vec
    from sparsembed.word2vec.formats import write_npy, write_word2vec
    from sparsembed.word2vec.model import Word2Vec

    directory = Path(args.dir)
    model = Word2Vec.load(directory)
    default = {"text": "vectors.txt", "binary": "vectors.bin", "npy": "vectors.npy", "fasttext": "model.fasttext.bin",
               "vec": "vectors.vec"}[args.format]
    target = Path(args.output) if args.output else directory / default
    if args.format == "fasttext":  # the parts say what is wrong first (no subwords), before a file is opened
        write_bin(target, model.fasttext_parts())
    elif args.format == "vec":
        write_vec(target, model.vocab.words, model.word_vectors())
    elif args.format == "npy":
        write_npy(target.with_suffix("") if target.suffix == ".npy" else target, model.vocab.words,
                  model.word_vectors())
    else:
        write_word2vec(target, model.vocab.words, model.word_vectors(), binary=args.format == "binary")
    print(target)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``sparsembed eval VECTORS --analogies FILE --pairs FILE...`` → JSON on stdout."""
    if not args.analogies and not args.pairs:
        raise UserError("eval needs --analogies FILE and/or --pairs FILE...")
    if args.restrict_vocab < 1:
        raise UserError("--restrict-vocab must be >= 1")
    vectors = load_vectors(args.vectors)
    result: dict[str, Any] = vectors.evaluate(analogies=args.analogies, pairs=args.pairs,
                                              restrict_vocab=args.restrict_vocab)
    print(json.dumps(result, indent=2))
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    """``sparsembed similar VECTORS WORD -n 10``."""
    if args.n < 1:
        raise UserError("-n must be >= 1")
    vectors = load_vectors(args.vectors)
    if args.word not in vectors:
        vectors = _subword_vectors(Path(args.vectors))
        if vectors is None:
            raise UserError(f"'{args.word}' is not in the vocabulary of {args.vectors}")
        neighbours = vectors.most_similar(args.word, topn=args.n)  # UnknownWordError: no trained n-gram either
        s = vectors.subwords
        print(f"sparsembed: note: '{args.word}' is not in the vocabulary; its vector is the mean of its "
              f"{s.minn}-{s.maxn} character n-grams' rows", file=sys.stderr)
    else:
        neighbours = vectors.most_similar(args.word, topn=args.n)
    for word, score in neighbours:
        print(f"{word}\t{score:.4f}")
    return 0


def _subword_vectors(directory: Path) -> Vectors | None:
    """The vectors of the saved model in ``directory`` if it was trained with subwords (they give vectors to words
    outside the vocabulary), else None."""
    from sparsembed.word2vec import checkpoint
    from sparsembed.word2vec.model import Word2Vec

    if not (directory.is_dir() and holds_model(directory)):
        return None
    model_dir = directory / "model" if (directory / "model").is_dir() else directory
    try:
        settings = checkpoint.read_state(model_dir)["meta"]["settings"]
    except (UserError, KeyError, TypeError):
        return None  # no readable state.json: the load below would say why, for a model worth loading
    if not settings.get("minn"):
        return None
    return Word2Vec.load(directory).wv


def cmd_report(args: argparse.Namespace) -> int:
    """``sparsembed report DIR``: plots from DIR/metrics.jsonl."""
    from sparsembed.word2vec.report import render

    directory = Path(args.dir)
    if not (directory / "metrics.jsonl").exists() and holds_model(directory):
        raise UserError(f"{args.dir} has no metrics.jsonl to plot: it holds a saved model, and metrics are "
                        "logged only while training writes to a directory (`sparsembed train CORPUS --out DIR`, "
                        "or Word2Vec(..., out=DIR) / model.train(out=DIR) in Python), not by model.save")
    for path in render(args.dir, args.output):
        print(path)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``sparsembed bench shards CORPUS --shards S --step-tokens T [--json]``, ``sparsembed bench exchange ...``."""
    if args.bench == "exchange":  # also one rank under torchrun (RANK, WORLD_SIZE, MASTER_ADDR): rank 0 prints
        import os

        from sparsembed.bench.exchange import format_text, run_exchange_bench

        try:
            densities = [float(d) for d in args.densities.split(",")] if args.densities else None
        except ValueError:
            raise UserError(f"bench exchange: --densities takes numbers separated by commas, got {args.densities!r}"
                            ) from None
        res = run_exchange_bench(args.nproc, args.rows, args.dim, args.ids, steps=args.steps, warmup=args.warmup,
                                 values=args.values, rows_encoding=args.rows_encoding, sweep=args.sweep,
                                 transport=args.transport, inputs=args.inputs, align=args.align,
                                 device=args.device, backend=args.backend,
                                 densities=densities, seed=args.seed, timeout=args.timeout)
        if res["launcher"] != "torchrun" or os.environ.get("RANK") == "0":  # every rank has the same figures
            print(json.dumps(res, indent=1) if args.json else format_text(res))
        return 0
    from sparsembed.bench.shards import bench_shards
    from sparsembed.comm.sharding import SCHEMES

    result = bench_shards(args.corpus, args.shards, args.step_tokens, seed=args.seed, min_count=args.min_count,
                          replicate_top=args.replicate_top)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for scheme in SCHEMES:
            print(f"{scheme:>10}: max/mean load {result[scheme]['max_over_mean']:.4f}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``sparsembed demo``: generated corpus with planted analogies, trained and evaluated."""
    from sparsembed.word2vec.demo import run_demo
    from sparsembed.word2vec.settings import default_workers

    workers = args.workers or default_workers()
    run_demo(out_dir=args.out, model=args.model, workers=workers, seed=args.seed, n_tokens=args.tokens,
             force=args.force)
    return 0

