"""Shard maps: ownership and relabelling invariants, split by boundaries, LPT balance under Zipf, state, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsembed.bench.shards import bench_shards
from sparsembed.comm.sharding import (
    SCHEMES,
    ShardMap,
    expected_loads,
    load_summary,
    measure_loads,
    observed_loads,
)
from sparsembed.errors import UserError


def _zipf_counts(num_rows: int, s: float = 1.0) -> np.ndarray:
    return np.maximum((1e6 / np.arange(1, num_rows + 1) ** s).astype(np.int64), 1)


def _zipf_stream(counts: np.ndarray, tokens: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).choice(len(counts), tokens, p=counts / counts.sum()).astype(np.int32)


@st.composite
def shard_maps(draw):
    num_rows = draw(st.integers(1, 300))
    shards = draw(st.integers(1, min(num_rows, 12)))
    how = draw(st.sampled_from(["contiguous", "permuted", "balanced", "owners"]))
    seed = draw(st.integers(0, 2**32 - 1))
    if how == "contiguous":
        return ShardMap.contiguous(num_rows, shards)
    if how == "permuted":
        return ShardMap.permuted(num_rows, shards, seed)
    if how == "balanced":
        replicate = draw(st.integers(0, num_rows - shards))
        counts = np.random.default_rng(seed).zipf(1.5, num_rows)
        return ShardMap.balanced(counts, shards, draw(st.integers(1, 5000)), replicate_top=replicate)
    owners = np.random.default_rng(seed).integers(-1, shards, num_rows)
    return ShardMap.from_owners(owners, shards)


@settings(max_examples=150, deadline=None)
@given(shard_maps())
def test_owner_relabel_and_local_index_invariants(m):
    rows = np.arange(m.num_rows)
    owner = m.owner(rows)
    assert owner.min() >= -1 and owner.max() < m.shards  # exactly one owner (-1: replicated)
    new = m.relabel(rows)
    assert np.array_equal(np.sort(new), rows)  # a permutation
    assert np.array_equal(m.restore(new), rows)
    # each shard's rows are exactly its contiguous range of new ids, in original (frequency) order
    assert np.array_equal(np.searchsorted(m.bounds, new, side="right") - 1, owner)
    for s in range(-1, m.shards):
        mine = m.shard_rows(s)
        assert np.array_equal(mine, np.flatnonzero(owner == s))
        assert np.array_equal(m.local_index(mine), np.arange(len(mine)))
    assert m.rows_per_shard().sum() + m.replicated == m.num_rows


@settings(max_examples=150, deadline=None)
@given(shard_maps(), st.data())
def test_split_equals_mask_reference(m, data):
    density = data.draw(st.sampled_from([0.0, 0.05, 0.5, 1.0]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    ids = np.flatnonzero(rng.random(m.num_rows) < density)  # sorted unique new ids
    offsets = m.split(ids)
    assert offsets.shape == (m.shards + 1,)
    owner_of_new = m.owner(m.restore(ids))
    assert np.array_equal(ids[:offsets[0]], ids[owner_of_new == -1])
    for s in range(m.shards):
        assert np.array_equal(ids[offsets[s]:offsets[s + 1]], ids[owner_of_new == s])
    assert offsets[-1] == len(ids)


@settings(max_examples=50, deadline=None)
@given(shard_maps())
def test_state_round_trip(m):
    state = json.loads(json.dumps({k: v.tolist() if isinstance(v, np.ndarray) else v
                                   for k, v in m.to_state().items()}))  # survives a JSON-ish store too
    back = ShardMap.from_state(state)
    assert back == m and back.kind == m.kind
    assert np.array_equal(back.owner(np.arange(m.num_rows)), m.owner(np.arange(m.num_rows)))


def test_sizes_differ_by_at_most_one():
    for m in (ShardMap.contiguous(1003, 10), ShardMap.permuted(1003, 10, 1),
              ShardMap.balanced(_zipf_counts(1003), 10, 4096)):
        sizes = m.rows_per_shard()
        assert sizes.max() - sizes.min() <= 1, m
    assert np.array_equal(ShardMap.contiguous(10, 3).shard_rows(0), np.arange(4))  # sizes 4, 3, 3


def test_lpt_beats_permuted_on_zipf():
    counts = _zipf_counts(20_000)
    shards, step = 16, 2048
    model = expected_loads(counts, step)
    balanced = ShardMap.balanced(counts, shards, step)
    permuted = ShardMap.permuted(len(counts), shards, 0)
    ratio = {name: m.per_shard(model).max() / m.per_shard(model).mean()
             for name, m in (("balanced", balanced), ("permuted", permuted))}
    assert ratio["balanced"] < 1.001 < 1.05 < ratio["permuted"]
    # measured on an iid Zipf stream too
    ids = _zipf_stream(counts, 200 * step)
    measured = {name: load_summary(measure_loads(m, ids, step)[0])["max_over_mean"]
                for name, m in (("balanced", balanced), ("permuted", permuted))}
    assert measured["balanced"] < 1.02 < measured["permuted"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.001, 0.25, 0.5, 1.0, 3.0]), min_size=1, max_size=60), st.integers(1, 9))
def test_lpt_heap_matches_linear_scan_reference(loads, shards):
    loads = np.array(loads)
    shards = min(shards, len(loads))
    cap = -(-len(loads) // shards)
    total, rows, owners = np.zeros(shards), np.zeros(shards, int), np.empty(len(loads), int)
    for r in np.argsort(-loads, kind="stable"):
        s = min((total[k], k) for k in range(shards) if rows[k] < cap)[1]
        owners[r], total[s], rows[s] = s, total[s] + loads[r], rows[s] + 1
    m = ShardMap.from_loads(loads, shards)
    assert np.array_equal(m.owner(np.arange(len(loads))), owners)


def test_replicated_rows_are_the_hottest_and_not_counted():
    counts = _zipf_counts(5000)
    m = ShardMap.balanced(counts, 4, 1024, replicate_top=7)
    assert m.replicated == 7
    assert np.array_equal(m.shard_rows(-1), np.arange(7))  # the 7 most frequent rows
    assert (m.owner(np.arange(7)) == -1).all()
    ids = _zipf_stream(counts, 20 * 1024)
    loads, replicated = measure_loads(m, ids, 1024)
    assert np.array_equal(loads.sum(axis=1) + replicated,
                          [len(np.unique(ids[t * 1024:(t + 1) * 1024])) for t in range(20)])


def test_measure_loads_matches_unique_per_step():
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 500, 10_000).astype(np.int32)
    m = ShardMap.permuted(500, 7, 2)
    loads, replicated = measure_loads(m, ids, 999, offset=5)
    assert loads.shape == (10, 7) and not replicated.any()
    for t in range(10):
        step = np.unique(ids[5 + t * 999: 5 + (t + 1) * 999])
        assert np.array_equal(loads[t], np.bincount(m.owner(step), minlength=7))


def test_expected_and_observed_loads():
    counts = np.array([1_000_000, 1000, 10, 0])
    model = expected_loads(counts, 1000)
    assert model[0] == pytest.approx(1.0) and model[3] == 0.0
    assert model[2] == pytest.approx(1 - (1 - 10 / counts.sum()) ** 1000)
    ids = np.repeat(np.arange(3, dtype=np.int32), [900, 90, 10])
    observed = observed_loads(ids, [900, 90, 10, 0], 100, prior_steps=0.0)
    assert np.allclose(observed, [0.9, 0.1, 0.1, 0.0])  # row 0 in 9 of 10 steps, rows 1 and 2 in step 9


def test_load_summary_definitions():
    loads = np.array([[4, 2], [2, 4]])
    summary = load_summary(loads)
    assert summary["max_over_mean"] == 1.0  # over the run both shards carry 3 rows per step
    assert summary["step_max_over_mean"] == pytest.approx(4 / 3)  # but every step has a 4-vs-2 straggler


@pytest.mark.parametrize("call, message", [
    (lambda: ShardMap.contiguous(10, 0), "at least 1"),
    (lambda: ShardMap.permuted(10, -2), "at least 1"),
    (lambda: ShardMap.contiguous(5, 8), "cannot split 5 rows into 8 shards"),
    (lambda: ShardMap.balanced([5, 4, 3], 4, 100), "cannot split 3 rows into 4 shards"),
    (lambda: ShardMap.balanced([5, 4, 3], 2, 100, replicate_top=2), "cannot split 1 rows into 2 shards"),
    (lambda: ShardMap.balanced([5, 4, 3], 1, 100, replicate_top=3), "leaves none"),
    (lambda: ShardMap.balanced([5, 4, 3], 1, 100, replicate_top=-1), "replicate_top"),
    (lambda: ShardMap.balanced([5, 4, 3], 1, 0), "step_tokens"),
    (lambda: ShardMap.balanced([5, -4, 3], 1, 10), "non-negative"),
    (lambda: ShardMap.contiguous(10, 2.5), "integer"),
    (lambda: ShardMap.from_owners([0, 1, 2], 2), r"\[-1, 2\)"),
    (lambda: ShardMap.contiguous(10, 2).owner([10]), r"\[0, 10\)"),
    (lambda: ShardMap.contiguous(10, 2).shard_rows(2), "shard must lie"),
    (lambda: measure_loads(ShardMap.contiguous(10, 2), np.arange(5), 8), "fewer than one step"),
    (lambda: ShardMap.from_state({"order": [0, 0], "bounds": [0, 2], "num_rows": 2, "shards": 1, "kind": "x"}),
     "not a permutation"),
    (lambda: ShardMap.from_state({"order": [0, 1], "bounds": [0, 1], "num_rows": 2, "shards": 1, "kind": "x"}),
     "bounds"),
    (lambda: ShardMap.from_state({"order": [0, 1]}), "damaged"),
])
def test_bad_arguments_raise_user_error(call, message):
    with pytest.raises(UserError, match=message):
        call()


def test_bench_shards_on_a_small_corpus(tmp_path):
    counts = _zipf_counts(400, 1.1)
    words = np.array([f"w{i}" for i in range(400)])
    path = tmp_path / "zipf.txt"
    path.write_text(" ".join(words[_zipf_stream(counts, 150_000, seed=1)]) + "\n")
    result = bench_shards(path, shards=4, step_tokens=512, replicate_top=2)
    assert set(SCHEMES) <= set(result) and SCHEMES == ("contiguous", "permuted", "balanced")
    json.dumps(result)
    assert result["shards"] == 4 and result["step_tokens"] == 512 and result["steps"] == result["tokens"] // 512
    assert result["contiguous"]["max_over_mean"] > result["permuted"]["max_over_mean"] > \
        result["balanced"]["max_over_mean"]
    assert result["balanced"]["replicated_rows"] == 2 and result["permuted"]["replicated_rows"] == 0
    assert result["balanced"]["heldout_max_over_mean"] < 1.05
