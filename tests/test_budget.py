"""The byte budget of a data-parallel step (``--budget``): the most significant rows go, the others wait, none is
lost or starved, replicas stay identical."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dist_utils import DistPool
from sparsembed import Word2Vec
from sparsembed.dataparallel.budget import GROW, MAX_AGE, MIN_ROWS, ROWS_PER_TOKEN, SHRINK, Budget, parse_budget
from sparsembed.dataparallel.options import ExchangeOptions
from sparsembed.dataparallel.replica import WEIGH_VALUES, Replica
from sparsembed.errors import UserError
from sparsembed.rows.coalesce import RowSparse
from sparsembed.word2vec.demo import generate_corpus

SETTINGS = {"vector_size": 16, "epochs": 2, "workers": 1, "seed": 7, "min_count": 2, "window": 3}
JOB_TOKENS = 700
ROW_BYTES = 24  # 16 int8 values, a 4-byte scale, a 4-byte index


# -- choosing rows ----------------------------------------------------------------------------------------------
def test_choose_takes_the_largest_changes_over_both_matrices() -> None:
    budget = Budget(5 * ROW_BYTES / 1e6, ROW_BYTES, {"a": 10, "b": 10})
    weights = {"a": np.array([5.0, 0.1, 9.0]), "b": np.array([0.2, 7.0, 6.0, 0.3])}
    chosen = budget.choose({"a": np.array([1, 3, 4]), "b": np.array([0, 2, 7, 9])}, lambda name, _: weights[name])
    assert chosen["a"].tolist() == [1, 4] and chosen["b"].tolist() == [2, 7, 9]  # 9, 7, 6, 5 and 0.3
    assert budget.age["a"].tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]  # a row that waits grows a step older
    assert budget.age["b"].tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]


def _no_weighing(name: str, ids: np.ndarray) -> np.ndarray:
    raise AssertionError(f"weighed {name} although every touched row fits")


def test_choose_under_a_large_budget_takes_every_touched_row() -> None:
    budget = Budget(1.0, ROW_BYTES, {"a": 10})
    ids = np.array([0, 5, 9])
    assert budget.choose({"a": ids}, _no_weighing)["a"].tolist() == [0, 5, 9]  # all fit: nothing weighed
    assert not budget.age["a"].any()


def test_a_row_waits_at_most_max_age_steps() -> None:
    """A small change beside ever larger ones: it goes after MAX_AGE steps of waiting, whatever its size."""
    budget = Budget(2 * ROW_BYTES / 1e6, ROW_BYTES, {"a": 4})
    waited = 0
    for step in range(3 * MAX_AGE):
        weights = np.array([1e-9, 1.0 + step, 2.0 + step])
        chosen = budget.choose({"a": np.array([0, 1, 2])}, lambda *_, w=weights: w)["a"]
        if 0 in chosen:
            break
        waited += 1
    assert waited == MAX_AGE and chosen.tolist() == [0, 2]  # the old row, then the largest while room is left


def test_auto_shrinks_while_the_exchange_holds_training_up_and_grows_back_to_its_cap() -> None:
    budget = Budget("auto", ROW_BYTES, {"a": 100_000}, step_tokens=1_000_000)
    cap = int(ROWS_PER_TOKEN * 1_000_000)
    assert budget.limit() == cap  # before it has measured
    budget.observe(waited_s=0.05, exchange_s=0.3, compute_s=0.2)  # a slow exchange held the step up
    assert budget.limit() == int(cap * SHRINK)
    for _ in range(50):
        budget.observe(waited_s=0.05, exchange_s=0.3, compute_s=0.2)
    assert budget.limit() == MIN_ROWS  # never below
    budget.observe(waited_s=0.05, exchange_s=0.1, compute_s=0.2)  # a late peer, not a slow exchange: no shrinking
    assert budget.limit() == int(MIN_ROWS * GROW)
    for _ in range(50):
        budget.observe(waited_s=0.0, exchange_s=0.1, compute_s=0.2)
    assert budget.limit() == cap  # and never above the cap
    fixed = Budget(1.0, ROW_BYTES, {"a": 10})
    fixed.observe(waited_s=1.0, exchange_s=1.0, compute_s=0.1)
    assert fixed.limit() == int(1e6 / ROW_BYTES)  # a budget in MB stays as set


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "nan", "inf", ""])
def test_bad_budgets_are_refused(bad: str) -> None:
    with pytest.raises(UserError, match="--budget must be off, auto or megabytes"):
        parse_budget(bad)
    assert parse_budget("2.5") == 2.5 and parse_budget("auto") == "auto" and parse_budget(None) is None
    with pytest.raises(UserError, match="--budget needs --strategy replicated"):
        ExchangeOptions(strategy="sharded", budget="4").validate()


# -- nothing lost: what was sent plus what waits is every change -------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rows_allowed=st.integers(1, 40), steps=st.integers(1, 30))
def test_sent_plus_waiting_is_every_change_and_no_row_starves(seed: int, rows_allowed: int, steps: int) -> None:
    """One rank (the sum of one change is the change): Zipf-like rows touched every step, a budget of
    ``rows_allowed`` rows; after every step what was sent plus what the working copy holds is the sum of all
    changes, and every row that waits goes within MAX_AGE steps; a last exchange without budget leaves nothing."""
    rng = np.random.default_rng(seed)
    num_rows, dim = 120, 4
    start = rng.standard_normal((num_rows, dim)).astype(np.float32)
    replica = Replica("m", start.copy())
    budget = Budget(rows_allowed * ROW_BYTES / 1e6, ROW_BYTES, {"m": num_rows})
    changes = np.zeros((num_rows, dim), np.float64)
    sent = np.zeros((num_rows, dim), np.float64)
    waiting = np.zeros(num_rows, np.int64)  # steps each touched row has waited since it last went
    for _ in range(steps):
        rows = np.unique(np.minimum(rng.zipf(1.5, 30) - 1, num_rows - 1))
        delta = (rng.standard_normal((rows.shape[0], dim)) * 10.0 ** rng.integers(-4, 0, (rows.shape[0], 1)))
        replica.work[rows] += delta.astype(np.float32)
        replica.touched[rows] = 1
        changes[rows] += delta.astype(np.float32)
        ids = budget.choose({"m": replica.touched_rows()}, lambda _, rows: replica.weigh(rows))["m"]
        own = replica.change(ids)
        assert own.n <= max(rows_allowed, int(np.count_nonzero(waiting >= MAX_AGE)))
        replica.add(own)
        sent[own.ids.numpy()] += own.values.numpy()
        waiting[replica.touched.astype(bool)] += 1
        waiting[own.ids.numpy()] = 0
        assert waiting.max() <= MAX_AGE
        np.testing.assert_allclose(sent + (replica.work - replica.ref), changes, rtol=0, atol=1e-5)
    replica.add(replica.change())  # the run's last exchange: every row
    np.testing.assert_allclose(replica.ref, start + changes, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(replica.work, replica.ref)


def test_deferred_rows_keep_their_change_when_the_others_sum_lands() -> None:
    """A row held back stays touched, and a peer's change of it adds to both copies: its own change survives."""
    replica = Replica("m", np.zeros((4, 2), np.float32))
    replica.work[[1, 2]] = [[1.0, 1.0], [5.0, 5.0]]
    replica.touched[[1, 2]] = 1
    own = replica.change(np.array([2]))
    assert replica.touched[1] and not replica.touched[2]
    peer = torch.tensor([[0.5, 0.5], [1.0, 1.0]])
    replica.add(RowSparse.from_sorted(torch.tensor([1, 2]), peer + torch.cat([torch.zeros(1, 2), own.values]), 4))
    np.testing.assert_array_equal(replica.ref[1:3], [[0.5, 0.5], [6.0, 6.0]])
    np.testing.assert_array_equal(replica.work[1:3], [[1.5, 1.5], [6.0, 6.0]])


# -- two ranks over gloo ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("budget") / "corpus.txt"
    generate_corpus(path, n_tokens=12_000, seed=11)
    return path


@pytest.fixture(scope="module")
def pool():
    with DistPool(2, timeout=120.0) as p:
        yield p


def _train(corpus: str, out: str, budget: str, values: str, overlap: bool, hot_rows: int | str = 0) -> tuple:
    from sparsembed.dataparallel.trainer import DataParallelTrainer

    model = Word2Vec(**SETTINGS)
    model.settings.job_tokens = JOB_TOKENS
    model.build_vocab(corpus)
    # by default the budget alone: no hot rows (two overlapped ranks would sync some, outside the budget)
    options = ExchangeOptions(values=values, transport="tcp", overlap=overlap, budget=budget, hot_rows=hot_rows)
    trainer = DataParallelTrainer(model, options)
    assert (trainer.budget is not None) == (budget != "off")
    trainer.train(progress=False, out=out)
    return model.syn0.copy(), model.syn1.copy(), model.history


@pytest.mark.parametrize(("values", "overlap"), [("fp32", False), ("int8", True)])
def test_two_ranks_under_a_budget_agree_send_less_and_learn(pool, corpus: Path, tmp_path: Path, values: str,
                                                            overlap: bool) -> None:
    tiny = str(40 * (16 * {"fp32": 4, "int8": 1}[values] + 4 * (values == "int8") + 4) / 1e6)  # 40 rows a step
    limited = pool.run(_train, str(corpus), str(tmp_path / "tiny"), tiny, values, overlap)
    np.testing.assert_array_equal(limited[0][0], limited[1][0])  # the last exchange sent every row held back
    np.testing.assert_array_equal(limited[0][1], limited[1][1])
    steps = [json.loads(line) for line in (tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()
             if '"step"' in line]
    rows = [sum(m["rows"] for m in s["matrices"].values()) for s in steps]
    # until a row has waited MAX_AGE steps, exactly the budget goes; then the old rows too; the last step sends
    # everything still waiting (with overlap a step records the exchange that landed in it: the step before's)
    assert rows[overlap:overlap + MAX_AGE - 1] == [40] * (MAX_AGE - 1) and rows[-1] > 40, rows
    free = pool.run(_train, str(corpus), str(tmp_path / "free"), "off", values, overlap)
    large = pool.run(_train, str(corpus), str(tmp_path / "large"), "1000", values, overlap)
    np.testing.assert_array_equal(large[0][0], free[0][0])  # a budget that never binds changes nothing
    np.testing.assert_array_equal(large[0][1], free[0][1])
    again = pool.run(_train, str(corpus), str(tmp_path / "again"), tiny, values, overlap)
    np.testing.assert_array_equal(again[0][0], limited[0][0])  # a budget in MB is reproducible, run to run
    np.testing.assert_array_equal(again[0][1], limited[0][1])
    losses = [h["mean_loss"] for h in limited[0][2]]
    free_losses = [h["mean_loss"] for h in free[0][2]]
    assert losses[-1] < losses[0] and abs(losses[-1] - free_losses[-1]) < 0.05 * free_losses[-1]
    assert not np.array_equal(limited[0][0], free[0][0])  # and it did hold rows back


# -- the command line ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [["--budget", "0"], ["--budget", "lots"], ["--budget", "4", "--strategy", "sharded",
                                                                              "--nproc", "2"]])
def test_cli_bad_budget_is_one_line_exit_2(tmp_path: Path, extra: list[str]) -> None:
    generate_corpus(tmp_path / "c.txt", n_tokens=2000, seed=1)
    bad = subprocess.run([sys.executable, "-m", "sparsembed", "train", "c.txt", "--out", "o", *extra],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    errors = [line for line in bad.stderr.splitlines() if "error" in line]
    assert bad.returncode == 2 and len(errors) == 1 and "--budget" in errors[0], bad.stderr
    assert not (tmp_path / "o").exists()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_keep_residual_puts_back_what_rounding_took_and_marks_only_those_rows(seed: int) -> None:
    """Error feedback's bookkeeping against plain numpy: a row untouched since its change was taken gets
    ``own - sent`` back and is marked pending when that is non-zero anywhere; a touched row, or one whose values
    all went exactly, is left bit for bit as it was (a -0.0 included)."""
    rng = np.random.default_rng(seed)
    rows, dim, n = 50, 7, 20
    work = rng.standard_normal((rows, dim)).astype(np.float32)
    work[rng.random((rows, dim)) < 0.1] = -0.0
    replica = Replica("syn0", work.copy())
    replica.touched[:] = rng.random(rows) < 0.3
    ids = np.sort(rng.choice(rows, n, replace=False))
    own = rng.standard_normal((n, dim)).astype(np.float32)
    sent = own.copy()
    rounded = rng.random((n, dim)) < 0.5
    rounded[rng.random(n) < 0.3] = False  # some rows went exactly
    sent[rounded] = np.round(own[rounded], 1)
    before_touched, before_pending = replica.touched.copy(), replica.pending.copy()
    replica.keep_residual(RowSparse.from_sorted(torch.from_numpy(ids), torch.from_numpy(own), rows),
                          torch.from_numpy(sent))
    expected, pending = work.copy(), before_pending.copy()
    for i, r in enumerate(ids):
        if before_touched[r]:
            continue
        d = own[i] - sent[i]
        expected[r] = np.where(d != 0, expected[r] + d, expected[r])
        pending[r] |= bool(np.any(d != 0))
    assert replica.work.tobytes() == expected.tobytes()  # bit for bit, the sign of zeros too
    assert np.array_equal(replica.pending, pending) and np.array_equal(replica.touched, before_touched)


def test_weigh_estimates_a_rows_change_from_its_first_values() -> None:
    """The budget's weight of a row: the squared norm of its change over the first WEIGH_VALUES values (all of
    them in a narrower matrix), never anything the row's other values hold."""
    rng = np.random.default_rng(3)
    work = rng.standard_normal((6, 40)).astype(np.float32)
    replica = Replica("syn0", work.copy())
    change = np.zeros((6, 40), np.float32)
    change[1, :WEIGH_VALUES] = 0.5
    change[2, WEIGH_VALUES:] = 9.0  # beyond the values weighed
    change[3] = 0.1
    replica.work += change
    weights = replica.weigh(np.arange(6))
    expected = (change[:, :WEIGH_VALUES].astype(np.float64) ** 2).sum(axis=1)
    np.testing.assert_allclose(weights, expected, rtol=1e-5)
    assert weights[1] > weights[3] > weights[2] == 0.0
    narrow = Replica("syn1", np.zeros((3, 4), np.float32))
    narrow.work[2] = 1.0
    assert narrow.weigh(np.arange(3)).tolist() == [0.0, 0.0, 4.0]


def test_hot_rows_of_two_overlapped_ranks_travel_outside_the_budget(pool, corpus: Path, tmp_path: Path) -> None:
    """With the default hot rows of two overlapped ranks the budget still sends its 40 rows a step, and the hot rows
    go in syncs of their own, all of them, every step, whatever the budget."""
    tiny = str(40 * (16 + 4 + 4) / 1e6)
    pool.run(_train, str(corpus), str(tmp_path / "hot"), tiny, "int8", True, "auto")
    steps = [json.loads(line) for line in (tmp_path / "hot" / "metrics.jsonl").read_text().splitlines()
             if '"step"' in line]
    main = [sum(m["rows"] for name, m in s["matrices"].items() if "[:" not in name) for s in steps]
    hot = [{name: m["rows"] for name, m in s["matrices"].items() if "[:" in name} for s in steps]
    assert main[1:MAX_AGE] == [40] * (MAX_AGE - 1), main
    rows = next(iter(hot[0].values()))
    assert rows > 0 and all(h == {f"syn0[:{rows}]": rows, f"syn1[:{rows}]": rows} for h in hot), hot[:3]
