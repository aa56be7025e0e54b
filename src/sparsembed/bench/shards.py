"""Benchmark of shard maps on a corpus: ``sparsembed bench shards``.

Max/mean shard load of the ``contiguous``, ``permuted`` and ``balanced`` maps of
:mod:`sparsembed.comm.sharding`, measured on the corpus's own steps, under the independent-token model, and held
out (fitted on one half of the steps, measured on the other).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from sparsembed.comm.sharding import (
    ShardMap,
    check_step_tokens,
    expected_loads,
    load_summary,
    max_over_mean,
    measure_loads,
    observed_loads,
)
from sparsembed.word2vec.corpus import scan_corpus

__all__ = ["bench_shards", "HOT_LOAD"]

HOT_LOAD = 0.99  # a row touched by at least this fraction of steps is a replication candidate
_HELDOUT_BLOCK_STEPS = 64  # held-out check: fit on even blocks of this many steps, measure on odd ones (and back)


def bench_shards(corpus_path: str | os.PathLike, shards: int, step_tokens: int, seed: int = 0,
                 min_count: int = 5, replicate_top: int = 0) -> dict[str, Any]:
    """Max/mean shard load for the ``contiguous``, ``permuted`` and ``balanced`` maps of a corpus (JSON-able).

    Every scheme is measured on the same steps (``measure_loads`` at offset 0) and also under the independent-
    token model (``model_max_over_mean``, the figure expected loads predict). ``balanced`` is fitted
    by ``observed_loads`` on the steps shifted by half a step (so fit and measurement steps do not coincide);
    it also reports ``heldout_max_over_mean`` (fit on even blocks of 64 steps, measured on the odd ones and the
    other way round; the worse of the two) and ``counts_only_max_over_mean`` (LPT by ``expected_loads``, no corpus
    pass). ``replicate_top`` rows are replicated in ``balanced`` only.
    """
    step_tokens = check_step_tokens(step_tokens)
    vocab, corpus = scan_corpus(corpus_path, min_count=min_count)
    ids, counts = np.ascontiguousarray(corpus.ids), vocab.counts
    num_rows = len(counts)
    fit_offset = step_tokens // 2 if len(ids) >= 2 * step_tokens else 0
    model = expected_loads(counts, step_tokens)
    maps = {
        "contiguous": ShardMap.contiguous(num_rows, shards),
        "permuted": ShardMap.permuted(num_rows, shards, seed),
        "balanced": ShardMap.from_loads(observed_loads(ids, counts, step_tokens, fit_offset), shards, replicate_top),
    }
    result: dict[str, Any] = {}
    for name, shard_map in maps.items():
        loads, replicated = measure_loads(shard_map, ids, step_tokens)
        rows = shard_map.rows_per_shard()
        result[name] = {**load_summary(loads),
                        "model_max_over_mean": max_over_mean(shard_map.per_shard(model)),
                        "rows_max_over_mean": max_over_mean(rows),
                        "rows_min": int(rows.min()), "rows_max": int(rows.max()),
                        "replicated_rows": shard_map.replicated,
                        "replicated_rows_per_step": float(replicated.mean())}
    counts_only = ShardMap.from_loads(model, shards, replicate_top)
    result["balanced"]["counts_only_max_over_mean"] = load_summary(measure_loads(counts_only, ids, step_tokens)[0])[
        "max_over_mean"]
    result["balanced"]["heldout_max_over_mean"] = _heldout(ids, counts, shards, step_tokens, replicate_top)
    result["balanced"]["hot_rows"] = int((observed_loads(ids, counts, step_tokens) >= HOT_LOAD).sum())
    result.update({"corpus": str(corpus_path), "shards": int(shards), "step_tokens": step_tokens, "seed": int(seed),
                   "min_count": int(min_count), "replicate_top": int(replicate_top), "rows": num_rows,
                   "tokens": int(len(ids)), "steps": int(len(ids) // step_tokens),
                   "distinct_rows_per_step": float(result["contiguous"]["mean_rows_per_step"] * shards),
                   "model_distinct_rows_per_step": float(model.sum())})
    return result


def _heldout(ids: np.ndarray, counts: np.ndarray, shards: int, step_tokens: int,
             replicate_top: int) -> float | None:
    """Worst max/mean of a balanced map fitted on one half of the blocks of steps and measured on the other."""
    block = _HELDOUT_BLOCK_STEPS * step_tokens
    blocks = len(ids) // block
    if blocks < 2:
        return None  # too short a corpus for two halves of whole blocks
    stacked = ids[: blocks * block].reshape(blocks, block)
    worst = 0.0
    for fit, held in ((0, 1), (1, 0)):
        shard_map = ShardMap.from_loads(observed_loads(stacked[fit::2].ravel(), counts, step_tokens), shards,
                                        replicate_top)
        loads, _ = measure_loads(shard_map, stacked[held::2].ravel(), step_tokens)
        worst = max(worst, load_summary(loads)["max_over_mean"])
    return worst
