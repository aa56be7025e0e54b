"""The scaling model (sparsembed.bench.scaling, its time model sparsembed.bench.steptime): its simulated rows against
the kernel and a plain-Python count, its byte rules against the package's own, the hot-row syncs, the default
tokens per step and the byte budget (auto's cap, the rows that go) as the trainer has them, and its time model's
edge cases."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sparsembed.bench.scaling import (
    ACROSS_HOSTS,
    ACROSS_HOSTS_UNBUDGETED,
    CONFIGS,
    Config,
    SampledWorld,
    StepRows,
    Workload,
    apply_budget,
    budget_rows,
    carried,
    cut_to_rows,
    exchange_traffic,
    flush_seconds,
    hot_sync,
    message_bytes,
    predict,
    run_extra_seconds,
    sample_steps,
    simulate_world,
    time_world,
    without_hot,
)
from sparsembed.bench.steptime import HostCost, HotSync, Link, StepTime, hot_seconds, run_seconds, step_time
from sparsembed.comm.policy import Mode, goes_dense, ring_bytes
from sparsembed.dataparallel import budget as trainer_budget
from sparsembed.dataparallel.options import HOT_ROWS, HOT_ROWS_PAIR, HOT_TOKENS_PAIR, ExchangeOptions, step_tokens_for
from sparsembed.errors import UserError
from sparsembed.rows import codec
from sparsembed.rows.coalesce import RowSparse
from sparsembed.word2vec import kernels
from sparsembed.word2vec.schedule import Schedule, split_sentences

MASK = (1 << 64) - 1


def _sentences(n_sentences: int = 30, length: int = 60, vocab: int = 80, seed: int = 0) -> list[list[str]]:
    """Zipf-like token lists: a few frequent words (subsampled) and a long tail."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, vocab + 1)
    words = rng.choice(vocab, size=(n_sentences, length), p=weights / weights.sum())
    return [[f"w{k}" for k in row] for row in words]


@pytest.fixture(scope="module", params=[0, 1], ids=["cbow", "sg"])
def work(request) -> Workload:
    return Workload.scan(_sentences(), sg=request.param, min_count=1, window=3, negative=4, vector_size=8,
                         job_tokens=400)


def _next(state: int) -> tuple[int, int]:
    state ^= state >> 12
    state = (state ^ (state << 25)) & MASK
    state ^= state >> 27
    return state, (state * 2685821657736338717) & MASK


def _brute_force(work: Workload, epoch: int, job: int) -> tuple[set[int], set[int]]:
    """Rows a job marks, one token at a time in plain Python: every kept word (both matrices) and every noise row
    drawn (syn1), from the kernel's generator seeded alike; the noise of each example is drawn one ahead."""
    s, corpus = work.model.settings, work.model.corpus
    packed, sample_ints = work.tables["packed_alias"], work.tables["sample_ints"]
    bounds, n_rows = work.bounds(), work.num_rows
    state = int(kernels.job_seed(s.seed, epoch, job))
    rows0: set[int] = set()
    rows1: set[int] = set()

    def draw() -> None:
        nonlocal state
        for _ in range(s.negative):
            state, bits = _next(state)
            row = ((bits >> 32) * n_rows) >> 32
            entry = int(packed[row])
            rows1.add(row if (bits & 0xFFFFFFFF) < (entry >> 32) else entry & 0xFFFFFFFF)

    draw()
    for sentence in range(int(bounds[job]), int(bounds[job + 1])):
        kept = []
        for t in range(int(corpus.sentence_starts[sentence]), int(corpus.sentence_starts[sentence + 1])):
            w = int(corpus.ids[t])
            state, bits = _next(state)
            if int(sample_ints[w]) >= (bits >> 32):
                kept.append(w)
        rows0.update(kept)
        rows1.update(kept)
        for i in range(len(kept)):
            state, bits = _next(state)
            reduced = (bits >> 32) % s.window
            lo, hi = max(0, i - s.window + reduced), min(len(kept), i + s.window + 1 - reduced)
            for _ in range(hi - lo - 1 if s.sg else min(hi - lo - 1, 1)):
                draw()
    return rows0, rows1


def test_simulated_rows_equal_brute_force_and_kernel(work: Workload) -> None:
    m, s = work.model, work.model.settings
    schedule = Schedule(m.corpus.sentence_starts, work.job_tokens, s.epochs, s.alpha, s.min_alpha)
    assert schedule.n_jobs >= 3
    for epoch, job in [(0, 0), (0, 2), (3, 1)]:
        rows0, rows1, tokens = work.touched([(epoch, job)])
        brute0, brute1 = _brute_force(work, epoch, job)
        assert (rows0.shape[0], rows1.shape[0]) == (len(brute0), len(brute1))
        assert set(rows0.tolist()) == brute0 and set(rows1.tolist()) == brute1
        assert 0 < rows0.shape[0] < rows1.shape[0] <= work.num_rows  # noise rows come on top of the kept words
        marks = np.zeros(work.num_rows, np.uint8), np.zeros(work.num_rows, np.uint8)
        m.run_job(schedule, epoch, job, work.tables, None, marks)  # the real kernel marks what it may change
        assert np.array_equal(rows0, np.flatnonzero(marks[0])) and np.array_equal(rows1, np.flatnonzero(marks[1]))
        assert tokens == np.subtract(*schedule.tokens(job, job + 1)[::-1])


def test_sentences_longer_than_a_job_are_cut_into_pieces_as_the_kernel_runs_them() -> None:
    work = Workload.scan(_sentences(4, 900), min_count=1, window=3, negative=4, vector_size=8)
    m, s = work.model, work.model.settings
    starts = split_sentences(m.corpus.sentence_starts, 200)
    assert np.array_equal(work.starts(200), starts) and work.starts(1000) is m.corpus.sentence_starts
    schedule = Schedule(starts, 200, s.epochs, s.alpha, s.min_alpha)
    assert schedule.n_jobs == len(work.bounds(200)) - 1 >= 18
    for job in (0, 5, 17):
        rows0, rows1, tokens = work.touched([(0, job)], 200)
        assert 0 < tokens <= 200
        marks = np.zeros(work.num_rows, np.uint8), np.zeros(work.num_rows, np.uint8)
        m.run_job(schedule, 0, job, work.tables, None, marks)
        assert np.array_equal(rows0, np.flatnonzero(marks[0])) and np.array_equal(rows1, np.flatnonzero(marks[1]))


@pytest.mark.parametrize("values", ["fp32", "fp16"])
@pytest.mark.parametrize("density", [0.01, 0.2, 0.7, 1.0])
def test_message_bytes_equal_the_codec(values: str, density: float) -> None:
    rng = np.random.default_rng(1)
    num_rows, dim = 5000, 16
    ids = np.sort(rng.choice(num_rows, size=int(density * num_rows), replace=False)).astype(np.int64)
    rs = RowSparse.from_sorted(torch.from_numpy(ids), torch.ones(ids.shape[0], dim), num_rows)
    assert message_bytes(ids, num_rows, dim, values, sparse_shortcut=False) == len(codec.encode(rs, "auto", values))
    assert message_bytes(ids, num_rows, dim, "int8") == message_bytes(ids, num_rows, dim, "fp32") - ids.shape[0] * (
        4 * dim - dim - 4)


def _step(world: int, densities: list[float], num_rows: int = 2000, seed: int = 0) -> StepRows:
    rng = np.random.default_rng(seed)
    rows = [np.sort(rng.choice(num_rows, size=int(d * num_rows), replace=False)).astype(np.int64) for d in densities]
    return StepRows(world, 0, np.arange(len(densities)), (rows, rows), np.full(len(densities), 1000))


def test_dense_bytes_equal_ring_bytes() -> None:
    num_rows, dim = 2000, 10
    for world in (2, 3, 8):
        step = _step(world, [0.1] * world)
        for values, width in (("fp32", 4), ("fp16", 2)):
            t = exchange_traffic(Config("d", "dense", values), step, 0, num_rows, dim)
            assert t.mode == "dense"
            assert np.all(t.sent == ring_bytes(num_rows * dim * 4, world) * width // 4)
            assert np.all(t.recv == t.sent)


@pytest.mark.parametrize("values", ["fp32", "fp16"])
def test_replicated_follows_goes_dense(values: str) -> None:
    num_rows, dim, world = 2000, 10, 4
    modes = set()
    for density in (0.02, 0.1, 0.2, 0.4, 0.9):
        step = _step(world, [density] * world, num_rows)
        t = exchange_traffic(Config("r", "replicated", values), step, 1, num_rows, dim)
        sizes = [a.shape[0] * dim * (4 if values == "fp32" else 2) for a in step.rows[1]]
        dense = goes_dense(Mode.AUTO, sizes, num_rows * dim * 4, world)
        assert t.mode == ("dense" if dense else "sparse")
        modes.add(t.mode)
        if not dense:
            messages = np.array([message_bytes(a, num_rows, dim, values) for a in step.rows[1]])
            assert np.array_equal(t.sent, (world - 1) * (messages + 8))
            assert np.array_equal(t.recv, messages.sum() - messages + 8 * (world - 1))
    assert modes == {"sparse", "dense"}


def test_bytes_are_conserved_when_every_rank_is_simulated(work: Workload) -> None:
    from sparsembed.dataparallel.owners import Owners

    world = 3
    owners = Owners(work.model.vocab.counts, world, work.job_tokens)
    for step in sample_steps(work, world, steps=2, max_ranks=world):
        for config in CONFIGS:
            for m in (0, 1):
                t = exchange_traffic(config, step, m, work.num_rows, work.dim, owners)
                assert t.sent.sum() == pytest.approx(t.recv.sum(), rel=1e-9), (config.name, m)


def test_one_host_predicts_no_exchange_and_efficiency_at_most_one(work: Workload) -> None:
    links = [Link(0.001), Link(1.0, latency_s=1e-3), Link(100.0, latency_s=0.0)]
    rows = predict(work, 1e6, [1, 2, 5], links, HostCost(1e-9, 1e-9), steps=2, max_ranks=3)
    for r in rows:
        for mode in ("sync", "overlap"):
            if r[mode] is None:
                continue
            assert 0 < r[mode]["efficiency"] <= 1 + 1e-12
            if r["hosts"] == 1:
                assert r[mode]["exchange_s"] == 0 and r[mode]["efficiency"] == pytest.approx(1.0)
        if r["hosts"] == 1:
            assert r["mb_sent_per_step"] == 0 and r["mb_recv_per_step"] == 0
    slow = [r for r in rows if r["hosts"] == 5 and r["gbit_s"] == 0.001 and r["config"] == "replicated"]
    assert slow[0]["sync"]["efficiency"] < 0.1  # a link this slow leaves nothing of the compute's share


def test_budget_caps_the_bytes_and_says_what_waits() -> None:
    world, num_rows, dim = 4, 2000, 10
    step = _step(world, [0.3] * world, num_rows)
    config = Config("b", "replicated", "int8", budget="auto")
    traffic = [exchange_traffic(config, step, m, num_rows, dim) for m in (0, 1)]
    assert all(t.mode == "sparse" and t.unbudgeted is not None for t in traffic)  # cut sparse, or the plain way
    capped = apply_budget(traffic, world, 10_000.0)
    sent = sum(t.sent for t in capped)
    assert np.all(sent <= 10_000 + 2 * 8 * (world - 1)) and np.all(sum(t.recv for t in capped) <= 10_000 + 48)
    assert 0 < capped[0].rows_sent_share < 1
    assert apply_budget(traffic, world, 1e12)[0].rows_sent_share == 1.0


def test_run_seconds_overlaps_all_but_the_ends() -> None:
    times = [StepTime(1.0, 0.5, 0.0, 0.0, 0.0) for _ in range(4)]
    assert run_seconds(times, overlap=True) == pytest.approx(1.0 + 3 * 1.0 + 0.5)
    slow = [StepTime(1.0, 2.0, 0.0, 0.5, 0.0) for _ in range(3)]
    assert run_seconds(slow, overlap=True) == pytest.approx(1.0 + 2 * 2.5 + 2.5)
    assert run_seconds(slow, overlap=True, shared_cores=True) == pytest.approx(1.0 + 2 * (0.5 + 2.0) + 2.5)
    one = step_time([], 2.0, 1, Link(1.0))
    assert one.step_s == 2.0 and one.exchange_s == 0


def test_the_hosts_foreground_work_is_never_hidden() -> None:
    """With a foreground share f, an overlapped step on a core of its own takes the longer of its compute and the
    background (link, latency, the host's other work), plus f of the host's work; on shared cores all the host's
    work is on the training core anyway."""
    # compute 1.0, link 0.5, host 0.4 of which 0.3 in the foreground
    step = StepTime(1.0, 0.5, 0.0, 0.4, 0.0, foreground_s=0.3)
    assert step.behind(1.0, shared_cores=False) == pytest.approx(1.0 + 0.3)
    assert step.behind(0.2, shared_cores=False) == pytest.approx(0.5 + 0.1 + 0.3)
    assert step.behind(1.0, shared_cores=True) == pytest.approx(0.4 + 1.0)
    assert StepTime(1.0, 0.5, 0.0, 0.4, 0.0).behind(1.0, shared_cores=False) == pytest.approx(1.0)  # all behind
    traffic = [exchange_traffic(Config("r", "replicated"), _step(2, [0.1, 0.1]), m, 2000, 10) for m in (0, 1)]
    for share in (0.0, 0.5, 1.0):
        t = step_time(traffic, 1.0, 2, FAST, HostCost(1e-6, 0.0, share), overlap=True)
        assert t.host_s > 0 and t.foreground_s == pytest.approx(share * t.host_s)
        assert t.step_s == pytest.approx(max(1.0, t.link_s + t.latency_s - t.agree_s + t.host_s - t.foreground_s)
                                         + t.foreground_s + t.agree_s)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(UserError, match="foreground"):
            HostCost(0.0, 0.0, bad)


def test_an_exchange_thread_that_does_more_work_than_the_rest_costs_its_own_share() -> None:
    """A background share of its own (the overlapped exchange's thread can do more work a byte than the
    synchronous exchange the per-byte cost comes from): on shared cores the step pays foreground + background + the
    longer of compute and link; on a core of its own the background hides behind compute; without one it is the
    rest of the host work, as before."""
    step = StepTime(1.0, 0.5, 0.0, 0.4, 0.0, foreground_s=0.3, background_s=0.6)
    assert step.background_host_s == pytest.approx(0.6)
    assert step.behind(1.0, shared_cores=True) == pytest.approx(0.3 + 0.6 + 1.0)
    assert step.behind(1.0, shared_cores=False) == pytest.approx(0.5 + 0.6 + 0.3)  # link and thread: 1.1 > 1.0
    assert step.behind(2.0, shared_cores=False) == pytest.approx(2.0 + 0.3)
    assert step.behind(0.2, shared_cores=False) == pytest.approx(0.5 + 0.6 + 0.3)
    assert StepTime(1.0, 0.5, 0.0, 0.4, 0.0, foreground_s=0.3).background_host_s == pytest.approx(0.1)
    traffic = [exchange_traffic(Config("r", "replicated"), _step(2, [0.1, 0.1]), m, 2000, 10) for m in (0, 1)]
    t = step_time(traffic, 1.0, 2, FAST, HostCost(1e-6, 0.0, 0.5, background=1.5), overlap=True, shared_cores=True)
    assert t.background_s == pytest.approx(1.5 * t.host_s) and t.foreground_s == pytest.approx(0.5 * t.host_s)
    assert t.step_s == pytest.approx(2.0 * t.host_s + max(1.0, t.link_s + t.latency_s - t.agree_s) + t.agree_s)
    for bad in (-0.1, float("inf"), float("nan")):
        with pytest.raises(UserError, match="background"):
            HostCost(0.0, 0.0, 0.5, background=bad)


def _one_line(excinfo: pytest.ExceptionInfo) -> str:
    text = str(excinfo.value)
    assert text and "\n" not in text
    return text


def test_bad_inputs_give_one_line(work: Workload) -> None:
    with pytest.raises(UserError) as e:
        next(sample_steps(work, 0))
    assert "hosts" in _one_line(e)
    with pytest.raises(UserError) as e:
        predict(work, 1e6, [1, -2], [Link(1.0)])
    assert "hosts" in _one_line(e)
    for bad in (-1.0, 0.0, float("nan")):
        with pytest.raises(UserError) as e:
            Link(bad)
        assert "link speed" in _one_line(e)
    with pytest.raises(UserError) as e:
        Link(1.0, latency_s=-1e-6)
    _one_line(e)
    with pytest.raises(UserError) as e:
        HostCost(-1e-9)
    _one_line(e)
    with pytest.raises(UserError) as e:
        predict(work, 0.0, [1], [Link(1.0)])
    assert "rate" in _one_line(e)
    with pytest.raises(UserError) as e:
        Workload.scan([])
    _one_line(e)
    with pytest.raises(UserError) as e:
        Workload.scan([["a", "b"], ["c"]], min_count=5)  # every word below min_count: nothing to model
    _one_line(e)
    with pytest.raises(UserError) as e:
        Workload(work.model, job_tokens=0)
    assert "job tokens" in _one_line(e)


def test_auto_budget_hides_the_exchange_behind_compute(work: Workload, monkeypatch: pytest.MonkeyPatch) -> None:
    # a vocabulary of 80 words: the trainer's floor (MIN_ROWS) would hold every touched row; the cap, far off
    monkeypatch.setattr(trainer_budget, "MIN_ROWS", 1)
    monkeypatch.setattr(trainer_budget, "ROWS_PER_TOKEN", 10.0)
    budget = next(c for c in CONFIGS if c.budget == "auto" and not c.hot)
    plain = next(c for c in CONFIGS if c.name == "replicated")
    rows = predict(work, 2e5, [4], [Link(0.01, latency_s=1e-5)], HostCost(1e-9, 1e-9), configs=[plain, budget],
                   steps=2, max_ranks=4)
    by = {r["config"]: r for r in rows}
    assert by[plain.name]["overlap"]["efficiency"] < 0.5  # the link cannot carry a step's rows in its compute
    assert by[budget.name]["overlap"]["efficiency"] > 0.85  # the budget sends what it can and keeps the rest
    assert 0 < by[budget.name]["rows_sent_share"] < 1


@pytest.mark.parametrize("kwargs", [{"strategy": "ring"}, {"values": "int4"}, {"budget": -1.0},
                                    {"strategy": "sharded", "budget": "auto"}, {"strategy": "sharded", "hot": True},
                                    {"strategy": "dense", "hot": True}])
def test_bad_configs_give_one_line(kwargs: dict) -> None:
    with pytest.raises(UserError) as e:
        Config("x", **{"strategy": "replicated", **kwargs})
    assert "invalid setting" in _one_line(e)


# ----------------------------------------------------------------------------------------------- hot-row syncs
HOT = Config("h", "replicated", hot=True)


@pytest.fixture(scope="module")
def wide() -> Workload:
    """A vocabulary of more rows than the trainer's hot rows (1000), tokens per step as the trainer's default."""
    return Workload.scan(_sentences(60, 100, 4000), min_count=1, window=3, negative=4, vector_size=8)


def test_default_across_hosts_is_replicated_int8_with_hot_syncs() -> None:
    config = next(c for c in CONFIGS if c.name == ACROSS_HOSTS)
    wide_opts = ExchangeOptions().validate().across_hosts(True)
    assert (config.strategy, config.values, config.hot, config.overlaps, config.budget) == (
        wide_opts.strategy.value, wide_opts.values, True, wide_opts.overlap, wide_opts.budget)
    assert (config.values, config.budget, config.implemented) == ("int8", "auto", True)
    assert wide_opts.hot_rows_for(4, 50_000) == config.hot_rows(4, 50_000) == HOT_ROWS  # hot syncs beyond 2 ranks
    assert all(c.implemented and "*" not in c.name for c in CONFIGS)  # the trainer runs every config now
    before = next(c for c in CONFIGS if c.name == ACROSS_HOSTS_UNBUDGETED)  # the earlier default, its tables
    assert (before.strategy, before.values, before.hot, before.budget) == ("replicated", "int8", True, None)
    assert any(c.name == "replicated" and not c.hot for c in CONFIGS)  # the earlier table, without hot syncs


def test_rounds_follow_step_and_hot_tokens() -> None:
    for world, rounds in ((3, 250_000 // 6666), (4, 50), (8, 50), (16, 62_500 // 1250), (64, 15)):
        hot = hot_sync(HOT, world, 50_000, 100, step_tokens_for(world))
        assert (hot.rows, hot.rounds, hot.world) == (HOT_ROWS, rounds, world)
        assert hot.rounds == step_tokens_for(world) // ExchangeOptions().validate().hot_tokens_for(world)
        assert hot.bytes_per_step == 2 * rounds * ring_bytes(HOT_ROWS * 100 * 4, world)
    rounded = hot_sync(Config("h8", "replicated", "int8", hot=True), 8, 50_000, 100, step_tokens_for(8))
    assert rounded.bytes_per_step == 2 * 50 * ring_bytes(HOT_ROWS * 100 * 2, 8)  # float16 with rounded values
    assert hot_sync(HOT, 8, 50_000, 100, 400).rounds == 1  # a step shorter than a round: one round, one sync
    assert hot_sync(HOT, 8, 300, 100, 250_000).rows == 300  # no more rows than the vocabulary


def test_hot_traffic_appears_from_two_ranks_as_the_trainer_syncs_across_hosts(wide: Workload) -> None:
    assert hot_sync(HOT, 1, 50_000, 100, 250_000) is None
    pair = hot_sync(HOT, 2, 50_000, 100, 250_000)  # two overlapped ranks: a few rows, each sum behind a round
    assert (pair.rows, pair.rounds, pair.behind) == (HOT_ROWS_PAIR, 250_000 // HOT_TOKENS_PAIR, True)
    assert not hot_sync(HOT, 4, 50_000, 100, 250_000).behind  # beyond two ranks: in the foreground
    assert hot_sync(Config("r", "replicated"), 8, 50_000, 100, 250_000) is None  # hot syncs off
    rows = predict(wide, 1e6, [1, 2, 3, 4], [Link(1.0)], HostCost(1e-9, 1e-9), configs=[HOT, CONFIGS[1]], steps=1,
                   max_ranks=4)
    for r in rows:
        hot = r["config"] == HOT.name and r["hosts"] >= 2
        assert (r["mb_hot_per_step"] > 0) == hot and (r["hot_rounds"] > 0) == hot
        for mode in ("sync", "overlap"):
            assert (r[mode]["hot_s"] > 0) == hot
        if hot:
            assert r["hot_rows"] == (HOT_ROWS if r["hosts"] > 2 else HOT_ROWS_PAIR)
            assert r["job_tokens"] == step_tokens_for(r["hosts"])


def test_hot_syncs_behind_a_round_cost_what_they_exceed_it_by() -> None:
    """Two overlapped ranks: every round's sum but the step's last runs behind the next round's compute; it costs
    its host work, plus its link time where that exceeds a round. Synchronous steps pay every sum in full."""
    link, host = Link(1.0, latency_s=1e-4), HostCost(1e-9, 2e-9)
    hot = HotSync(rows=100, rounds=5, dim=100, world=2, width=2, behind=True)
    wire = hot.ring / link.bytes_per_s + 2 * 1e-4
    work = (hot.ring + hot.values * 4) * 2e-9
    assert hot_seconds(hot, link, host) == pytest.approx(5 * (wire + work))  # no round to hide behind
    assert hot_seconds(hot, link, host, round_s=1.0) == pytest.approx(wire + work + 4 * work)
    assert hot_seconds(hot, link, host, round_s=wire / 2) == pytest.approx(wire + work + 4 * (work + wire / 2))
    ahead = dataclasses.replace(hot, behind=False)  # beyond two ranks: in the foreground even when overlapped
    assert hot_seconds(ahead, link, host, round_s=1.0) == pytest.approx(5 * (wire + work))
    step = _step(2, [0.01] * 2)
    traffic = [exchange_traffic(CONFIGS[1], step, m, 2000, 100) for m in (0, 1)]
    overlapped = step_time(traffic, 0.05, 2, link, host, overlap=True, hot=hot)
    synchronous = step_time(traffic, 0.05, 2, link, host, overlap=False, hot=hot)
    assert overlapped.hot_s == pytest.approx(hot_seconds(hot, link, host, round_s=0.01))
    assert synchronous.hot_s == pytest.approx(5 * (wire + work))
    assert synchronous.hot_s > overlapped.hot_s
    # on shared cores each sum also waits for the later rank
    waiting = dataclasses.replace(host, hot_wait_s=1e-3)
    shared = step_time(traffic, 0.05, 2, link, waiting, overlap=True, shared_cores=True, hot=hot)
    own = step_time(traffic, 0.05, 2, link, waiting, overlap=True, shared_cores=False, hot=hot)
    assert shared.hot_s == pytest.approx(own.hot_s + 5 * 1e-3)
    with pytest.raises(UserError, match="wait of a hot sum"):
        HostCost(hot_wait_s=-1.0)


def test_main_messages_exclude_hot_rows(wide: Workload) -> None:
    world, num_rows, dim = 4, 2000, 10
    step = _step(world, [0.05, 0.1, 0.3, 0.6], num_rows)
    cut = without_hot(step, 1000)
    for m in (0, 1):
        assert all(a.shape[0] and a.min() >= 1000 for a in cut.rows[m])
        assert [a.shape[0] for a in cut.rows[m]] == [int((a >= 1000).sum()) for a in step.rows[m]]
    t = exchange_traffic(HOT, cut, 0, num_rows, dim)
    assert t.mode == "sparse"
    assert np.array_equal(t.message, [message_bytes(a[a >= 1000], num_rows, dim, "fp32") for a in step.rows[0]])
    assert without_hot(step, 0) is step
    # simulated: the hot config's main exchange carries exactly the sampled rows >= hot, the plain one all of them
    sampled = simulate_world(wide, 4, [HOT, CONFIGS[1]], steps=2, max_ranks=4)
    for k, step in enumerate(sample_steps(wide, 4, steps=2, max_ranks=4)):
        for m in (0, 1):
            full = [a.shape[0] for a in step.rows[m]]
            outside = [int((a >= HOT_ROWS).sum()) for a in step.rows[m]]
            assert sampled.traffic[HOT.name][k][m].rows.tolist() == outside
            assert sampled.traffic[CONFIGS[1].name][k][m].rows.tolist() == full
            assert sum(outside) < sum(full)


def test_foreground_hot_time_is_not_hidden_by_overlap() -> None:
    link, host = Link(1.0, latency_s=1e-4), HostCost(1e-9, 2e-9)
    hot = HotSync(rows=1000, rounds=5, dim=100, world=8)
    ring = ring_bytes(2 * 1000 * 100 * 4, 8)  # both matrices' hot rows in one all-reduce a round
    by_hand = 5 * (ring / link.bytes_per_s + 14 * 1e-4 + (ring + 800_000) * 2e-9)
    assert hot_seconds(hot, link, host) == pytest.approx(by_hand)
    assert hot_seconds(None, link, host) == 0 and hot_seconds(HotSync(0, 5, 100, 8), link) == 0
    step = _step(8, [0.01] * 8)
    traffic = [exchange_traffic(CONFIGS[1], step, m, 2000, 100) for m in (0, 1)]
    plain = step_time(traffic, 10.0, 8, link, host, overlap=True)  # a long compute hides the whole main exchange
    assert plain.step_s == pytest.approx(10.0 + plain.agree_s)
    over = step_time(traffic, 10.0, 8, link, host, overlap=True, hot=hot)
    assert over.hot_s == pytest.approx(by_hand) and over.step_s == pytest.approx(plain.step_s + by_hand)
    sync = step_time(traffic, 10.0, 8, link, host, hot=hot)
    assert sync.step_s == pytest.approx(10.0 + sync.exchange_s + by_hand) and sync.waits_s > sync.exchange_s
    times = [over] * 3
    assert run_seconds(times, overlap=True) == pytest.approx(run_seconds([plain] * 3, overlap=True) + 3 * by_hand)
    assert run_seconds([sync] * 3) == pytest.approx(3 * sync.step_s)


def test_default_tokens_per_step_follow_the_trainer(wide: Workload, work: Workload) -> None:
    assert wide.fixed_job_tokens is None and wide.job_tokens == step_tokens_for(1)
    for world in (2, 8, 16):
        assert wide.job_tokens_for(world) == step_tokens_for(world)
        sampled = simulate_world(wide, world, [HOT], steps=1, max_ranks=2)
        assert sampled.job_tokens == step_tokens_for(world)
    assert work.job_tokens_for(16) == work.job_tokens == 400  # fixed: every N alike (the validation's runs)
    assert simulate_world(work, 4, [HOT], steps=1, job_tokens=300).job_tokens == 300
    fixed = wide.with_settings(sg=1)
    assert fixed.fixed_job_tokens is None and wide.with_settings(job_tokens=500).job_tokens_for(64) == 500


def test_hot_syncs_cost_words_per_s_at_many_ranks(wide: Workload) -> None:
    """At a slow link the hot config loses the hot syncs' time in both modes, whatever the main exchange saves."""
    sampled = simulate_world(wide, 4, [HOT], steps=1, max_ranks=4)
    link = Link(0.1)
    for overlap in (False, True):
        times, _ = time_world(sampled, HOT, 1e6, 1, link, HostCost(), overlap)
        assert all(t.step_s >= t.compute_s + t.hot_s > t.compute_s for t in times)


# ----------------------------------------------------------------------------------------------- the trainer's budget
AUTO = Config("b", "replicated", "int8", budget="auto")
FAST = Link(100.0, latency_s=0.0)  # the whole change hides behind any compute: only the cap can bind


def _sent_rows(traffic: list) -> np.ndarray:
    return sum(t.rows for t in traffic)


def test_auto_cap_is_the_trainers(monkeypatch: pytest.MonkeyPatch) -> None:
    for tokens in (400, 250_000, 10_000_000):
        assert budget_rows(AUTO, 100, tokens) == trainer_budget.Budget("auto", 108, {}, tokens).cap \
            == max(trainer_budget.MIN_ROWS, int(trainer_budget.ROWS_PER_TOKEN * tokens))
    monkeypatch.setattr(trainer_budget, "ROWS_PER_TOKEN", 0.05)  # the constant is read, not copied
    monkeypatch.setattr(trainer_budget, "MIN_ROWS", 1)
    assert budget_rows(AUTO, 100, 400) == 20
    # bytes: a rank's change, in rows of values (int8: dim + a 4-byte scale) and a 4-byte index, as --budget MB
    assert budget_rows(Config("f", "replicated", "int8", budget=16 * 50 + 8.0), 8, 400) == 50
    with pytest.raises(UserError):
        budget_rows(Config("r", "replicated", "int8"), 8, 400)


def test_auto_cap_binds(work: Workload, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer_budget, "ROWS_PER_TOKEN", 0.05)  # 400 tokens a rank and step: a cap of 20 rows
    monkeypatch.setattr(trainer_budget, "MIN_ROWS", 1)
    sampled = simulate_world(work, 4, [AUTO], steps=2, max_ranks=4)
    for overlap in (False, True):
        for link in (FAST, Link(0.001)):  # on a slow link the rows that hide are fewer still
            times, sent = time_world(sampled, AUTO, 1e6, 1, link, HostCost(), overlap)
            for touched, went in zip(sampled.traffic[AUTO.name], sent, strict=True):
                assert np.all(_sent_rows(touched) > 20)
                assert np.all(_sent_rows(went) <= 20) and all(t.mode == "sparse" for t in went)
                if link is FAST:
                    assert np.all(_sent_rows(went) == 20)  # the cap, not more
                    assert all(0 < t.rows_sent_share < 1 for t in went)
                    plain = [t.unbudgeted for t in touched]
                    assert all(np.all(w.sent < p.sent) for w, p in zip(went, plain, strict=True))
    monkeypatch.setattr(trainer_budget, "ROWS_PER_TOKEN", 10.0)  # a cap above every touched row: nothing waits
    _, sent = time_world(sampled, AUTO, 1e6, 1, FAST, HostCost(), True)
    for touched, went in zip(sampled.traffic[AUTO.name], sent, strict=True):
        assert all(w is t.unbudgeted and w.rows_sent_share == 1.0 for w, t in zip(went, touched, strict=True))


def test_fixed_budget_counts_a_ranks_change(work: Workload) -> None:
    config = Config("f", "replicated", "int8", budget=16 * 50 + 8.0)  # dim 8: 50 rows of 16 bytes
    sampled = simulate_world(work, 3, [config], steps=2, max_ranks=3)
    _, sent = time_world(sampled, config, 1e6, 1, FAST, HostCost(), False)
    for touched, went in zip(sampled.traffic[config.name], sent, strict=True):
        assert np.array_equal(_sent_rows(went), np.minimum(_sent_rows(touched), 50))


def test_unbudgeted_configs_ignore_the_budget(work: Workload, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = [c for c in CONFIGS if c.budget is None and c.strategy == "replicated"]
    sampled = simulate_world(work, 4, [*plain, AUTO], steps=2, max_ranks=4)

    def timed() -> dict[str, list[float]]:
        return {c.name: [t.step_s for t in time_world(sampled, c, 1e6, 1, Link(0.01), HostCost(), True)[0]]
                for c in [*plain, AUTO]}

    before = timed()
    monkeypatch.setattr(trainer_budget, "ROWS_PER_TOKEN", 1e-6)
    monkeypatch.setattr(trainer_budget, "MIN_ROWS", 1)
    after = timed()
    assert after[AUTO.name] != before[AUTO.name]  # the budget bit
    for c in plain:
        assert after[c.name] == before[c.name]
        _, sent = time_world(sampled, c, 1e6, 1, Link(0.01), HostCost(), True)
        assert all(s is t for s, t in zip(sent, sampled.traffic[c.name], strict=True))  # as simulated, uncut


def test_cut_rows_sum_to_the_limit_and_may_go_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    world, num_rows, dim = 8, 2000, 10
    step = _step(world, [0.9, 0.8, 0.9, 0.85, 0.9, 0.9, 0.7, 0.9], num_rows)
    traffic = [exchange_traffic(AUTO, step, m, num_rows, dim) for m in (0, 1)]
    assert all(t.unbudgeted.mode == "dense" for t in traffic)  # the trainer's own way: a dense all-reduce
    limit = np.array([1000, 1001, 3000, 10, 0, 2000, 5000, 1])
    cut = cut_to_rows(traffic, world, limit)
    assert np.array_equal(_sent_rows(cut), np.minimum(limit, _sent_rows(traffic)))
    assert all(np.all(c.rows <= t.rows) and np.all(c.message <= t.message) for c, t in zip(cut, traffic, strict=True))
    assert cut[0].message[4] == cut[1].message[4] == codec.HEADER_SIZE  # no row: the header alone
    sampled = SampledWorld(world, [1000.0], {AUTO.name: [traffic]}, {AUTO.name: None}, 1000, num_rows, dim)
    monkeypatch.setattr(trainer_budget, "MIN_ROWS", 1)
    for cap, mode in ((2000, "dense"), (100, "sparse")):  # the trainer decides from the rows chosen
        monkeypatch.setattr(trainer_budget, "ROWS_PER_TOKEN", cap / 1000)  # 1000 tokens a rank and step
        sent = time_world(sampled, AUTO, 1e6, 1, FAST, HostCost(), True)[1][0]
        assert np.all(_sent_rows(sent) == cap)
        assert {t.mode for t in sent} == {mode} and all(0 < t.rows_sent_share < 1 for t in sent)


def test_auto_shrinks_while_the_rows_chosen_go_dense_and_do_not_hide(monkeypatch: pytest.MonkeyPatch) -> None:
    world, num_rows, dim = 8, 2000, 10
    step = _step(world, [0.9] * world, num_rows)
    traffic = [exchange_traffic(AUTO, step, m, num_rows, dim) for m in (0, 1)]
    sampled = SampledWorld(world, [1000.0], {AUTO.name: [traffic]}, {AUTO.name: None}, 1000, num_rows, dim)
    monkeypatch.setattr(trainer_budget, "MIN_ROWS", 1)
    monkeypatch.setattr(trainer_budget, "ROWS_PER_TOKEN", 2.0)  # a cap of 2000 rows: they go dense
    slow_dense = HostCost(0.0, 1e-6)  # a dense all-reduce's host work takes far longer than the step's compute
    times, sent = time_world(sampled, AUTO, 1e6, 1, FAST, slow_dense, True)
    rows = _sent_rows(sent[0])
    assert {t.mode for t in sent[0]} == {"sparse"} and times[0].exchange_s <= times[0].compute_s
    steps = [2000]  # the limits auto steers through: SHRINK a step
    while steps[-1] > rows[0]:
        steps.append(int(steps[-1] * trainer_budget.SHRINK))
    assert np.all(rows == steps[-1]) and len(steps) > 2  # shrunk by SHRINK steps, every rank alike
    before = cut_to_rows(traffic, world, steps[-2])  # one step before: the rows chosen still went dense
    assert any(goes_dense(Mode.AUTO, t.rows * (dim + 4), num_rows * dim * 4, world) for t in before)
    dense = HostCost(0.0, 0.0)  # the same rows dense, at no host cost, hide: the cap stands
    _, sent = time_world(sampled, AUTO, 1e6, 1, FAST, dense, True)
    assert np.all(_sent_rows(sent[0]) == 2000) and {t.mode for t in sent[0]} == {"dense"}


def test_deferred_rows_wait_for_later_steps_as_in_the_trainer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Consecutive steps under a binding budget: each rank's rows a step are the trainer's Budget's choice among
    the step's rows and those still waiting (replayed here for rank 0), no row waits more than MAX_AGE steps (then
    it goes over the limit), and every touched row goes in some step or still waits at the end."""
    world, num_rows, dim, n_steps = 2, 2000, 10, 20
    monkeypatch.setattr(trainer_budget, "MIN_ROWS", 1)
    monkeypatch.setattr(trainer_budget, "ROWS_PER_TOKEN", 0.3)  # 300 rows a rank and step, of about 2 x 400 touched
    steps = [dataclasses.replace(_step(world, [0.2, 0.2], num_rows, seed=k), step=k) for k in range(n_steps)]
    traffic = [[exchange_traffic(AUTO, s, m, num_rows, dim) for m in (0, 1)] for s in steps]
    weights = np.arange(num_rows, 0, -1, dtype=np.float64)  # row 0 the most frequent word
    sampled = SampledWorld(world, [1000.0] * n_steps, {AUTO.name: traffic}, {AUTO.name: None}, 1000, num_rows, dim,
                           rows={AUTO.name: steps}, weights=weights)
    sent = carried(AUTO, sampled, 1e6, 1, FAST, HostCost())
    assert len(sent) == n_steps and all(t.mode == "sparse" for s in sent for t in s)
    rows = np.array([_sent_rows(s) for s in sent])  # per step and rank
    assert np.all(rows >= 300) and np.any(rows > 300)  # the limit, and rows past it when they reach MAX_AGE
    touched = {(r, m): set() for r in range(world) for m in (0, 1)}
    age = {}
    for s in steps:
        for r in range(world):
            for m in (0, 1):
                touched[(r, m)] |= set(s.rows[m][r].tolist())
    # rank 0's rows: what went, step by step, is recomputed from the budget's own choices
    budget = trainer_budget.Budget("auto", trainer_budget.wire_row_bytes("int8", dim),
                                   {"syn0": num_rows, "syn1": num_rows}, 1000)
    pending = {0: np.zeros(0, np.int64), 1: np.zeros(0, np.int64)}
    went = {0: set(), 1: set()}
    for k, s in enumerate(steps):
        now = {m: np.union1d(s.rows[m][0], pending[m]) for m in (0, 1)}
        for m in (0, 1):
            for row in now[m].tolist():
                age[(m, row)] = age.get((m, row), -1) + 1
        goes = budget.choose({"syn0": now[0], "syn1": now[1]}, lambda _n, ids: weights[ids])
        assert rows[k][0] == goes["syn0"].shape[0] + goes["syn1"].shape[0]
        for m, name in ((0, "syn0"), (1, "syn1")):
            went[m] |= set(goes[name].tolist())
            for row in goes[name].tolist():
                assert age.pop((m, row)) <= trainer_budget.MAX_AGE  # no row waits longer
            pending[m] = np.setdiff1d(now[m], goes[name])
        assert all(a < trainer_budget.MAX_AGE for a in age.values())
    for m in (0, 1):
        assert went[m] | set(pending[m].tolist()) == touched[(0, m)]  # nothing lost


def test_a_run_ends_with_a_float32_flush_of_what_it_rounded_or_deferred_and_pays_each_epoch_end() -> None:
    rows, dim, latency, dense = 1000, 16, 1e-4, 1e-9
    link, host = Link(1.0, latency_s=latency), HostCost(0.0, dense, epoch_s=0.25)
    ring = ring_bytes(rows * dim * 4, 2)
    # per matrix: the ring's bytes on the link, 2 (N-1) latencies, the host's dense work; then the agreement's round
    expected = 2 * (ring / link.bytes_per_s + 2 * latency + (ring + rows * dim * 4) * dense) + 2 * latency
    int8 = Config("replicated-int8", "replicated", "int8")
    assert flush_seconds(int8, 2, rows, dim, link, host) == pytest.approx(expected)
    budget = Config("replicated-budget", "replicated", budget="auto")  # deferred rows, float32 values: the same
    assert flush_seconds(budget, 2, rows, dim, link, host) == pytest.approx(expected)
    assert flush_seconds(Config("replicated", "replicated"), 2, rows, dim, link, host) == 0.0  # nothing waits
    assert flush_seconds(int8, 1, rows, dim, link, host) == 0.0  # one host: no exchange
    assert run_extra_seconds(int8, 2, rows, dim, 5, link, host) == pytest.approx(5 * 0.25 + expected)
    assert run_extra_seconds(int8, 2, rows, dim, 5, link, None) == pytest.approx(2 * ring / link.bytes_per_s
                                                                                + 6 * latency)
    with pytest.raises(UserError, match="epoch end must be >= 0"):
        HostCost(epoch_s=-1.0)
