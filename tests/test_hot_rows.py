"""Hot rows: the most frequent words' rows summed over all ranks after every round of a data-parallel step.

The trainer with hot syncs must equal a single-process replay of the same rounds: each rank trains its job of a
round on its own working copy, the first ``hot`` rows of both matrices are summed after every round, the other rows
once at the end of the step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dist_utils import DistPool
from sparsembed import Word2Vec
from sparsembed.dataparallel.options import (
    HOT_ROWS,
    HOT_ROWS_PAIR,
    HOT_TOKENS_PAIR,
    ExchangeOptions,
    even_job_tokens,
    step_jobs,
    step_tokens_for,
)
from sparsembed.errors import UserError
from sparsembed.word2vec import kernels
from sparsembed.word2vec.demo import generate_corpus
from sparsembed.word2vec.schedule import split_sentences

SETTINGS = {"vector_size": 16, "epochs": 2, "workers": 1, "seed": 5, "min_count": 2, "window": 3}
STEP_TOKENS, HOT_TOKENS, HOT = 900, 300, 12


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hot") / "corpus.txt"
    generate_corpus(path, n_tokens=12_000, seed=3)
    path.write_text(" ".join(path.read_text().split()) + "\n")  # one line, text8-style: sentences of 10000 tokens
    return path


def _model(corpus: Path) -> Word2Vec:
    model = Word2Vec(**SETTINGS)
    model.settings.job_tokens = STEP_TOKENS
    model.build_vocab(str(corpus))
    return model


def _train_rank(corpus: str, transport: str, hot_rows: int | str, values: str = "auto",
                overlap: bool | None = None) -> tuple:
    from sparsembed.dataparallel.trainer import DataParallelTrainer

    model = _model(Path(corpus))
    options = ExchangeOptions(transport=transport, hot_rows=hot_rows, hot_tokens=HOT_TOKENS, values=values,
                              overlap=overlap)
    trainer = DataParallelTrainer(model, options)
    summary = trainer.train(progress=False)
    pending = [bool(r.pending.any()) or not np.array_equal(r.work, r.ref) for r in trainer.replicas]
    return (model.syn0.copy(), model.syn1.copy(), summary, trainer.rounds, pending, trainer.hot, trainer.hot_behind,
            trainer.shared)


def _replay(model: Word2Vec, world: int, hot: int, rounds: int) -> Word2Vec:
    """One process: every round each rank trains its job from its working copy; after it the first ``hot`` rows
    take the sum of all ranks' changes, and after the step's last round every other row does too."""
    s, corpus = model.settings, model.corpus
    per_epoch = int(corpus.sentence_starts[-1])
    s.job_tokens = even_job_tokens(per_epoch, s.job_tokens // rounds, world * rounds)
    s.piece_tokens = HOT_TOKENS  # a round is shorter than a sentence: the trainer cuts them into pieces
    schedule = model.schedule()
    starts, bounds = schedule.sentence_starts, schedule.bounds
    assert len(starts) > len(corpus.sentence_starts) + 10  # the pieces are cut
    n_jobs = len(bounds) - 1
    tables = model.kernel_tables()
    g0, g1 = model.syn0, model.syn1
    for epoch in range(s.epochs):
        for first in range(0, n_jobs, world * rounds):
            work = [(g0.copy(), g1.copy()) for _ in range(world)]
            for k in range(rounds):
                start = first + k * world
                total, before = schedule.decay(epoch, min(start, n_jobs), world)
                for rank in range(world):
                    for job in step_jobs(start, n_jobs, 1, rank):
                        kernels.train_job(
                            *work[rank], corpus.ids, starts, int(bounds[job]), int(bounds[job + 1]),
                            tables["sample_ints"], s.sample > 0, tables["packed_alias"], s.sg, s.window,
                            s.negative, s.alpha, s.min_alpha, total, before, s.seed, epoch, job,
                            kernels.SIGMOID_TABLE, kernels.LOG_SIGMOID_TABLE)
                for m, g in enumerate((g0, g1)):
                    g[:hot] += sum(w[m][:hot] - g[:hot] for w in work)
                    for w in work:
                        w[m][:hot] = g[:hot]
            for m, g in enumerate((g0, g1)):
                g[hot:] += sum(w[m][hot:] - g[hot:] for w in work)
    return model


@pytest.mark.parametrize("transport", ["tcp", "auto"])
def test_hot_syncs_equal_the_replay_of_their_rounds(corpus: Path, transport: str) -> None:
    """Over gloo and through shared memory: both ranks end with the replay's matrices, bit-identical to each other,
    and the hot syncs changed the result (the replay without them differs)."""
    with DistPool(2, timeout=120.0) as pool:
        results = pool.run(_train_rank, str(corpus), transport, HOT)
    rounds = results[0][3]
    assert rounds == STEP_TOKENS // HOT_TOKENS
    reference = _replay(_model(corpus), world=2, hot=HOT, rounds=rounds)
    for syn0, syn1, summary, *_ in results:
        np.testing.assert_allclose(syn0, reference.syn0, rtol=0, atol=1e-6)
        np.testing.assert_allclose(syn1, reference.syn1, rtol=0, atol=1e-6)
        assert summary["steps"] > 2 and summary["bytes_sent"] > 0
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    unsynced = _replay(_model(corpus), world=2, hot=0, rounds=rounds)
    assert not np.allclose(unsynced.syn0, reference.syn0, atol=1e-5)


def test_hot_syncs_in_float16_with_error_feedback_stay_near_the_replay(corpus: Path) -> None:
    """With rounded values (the default across hosts) the hot syncs all-reduce float16, what rounding dropped kept
    and sent at the end: the replicas agree bit for bit, every residual went, and the result stays within float16's
    rounding of the exact replay (and nearer it than without hot syncs)."""
    with DistPool(2, timeout=120.0) as pool:
        results = pool.run(_train_rank, str(corpus), "tcp", HOT, "fp16")
    reference = _replay(_model(corpus), world=2, hot=HOT, rounds=results[0][3])
    unsynced = _replay(_model(corpus), world=2, hot=0, rounds=results[0][3])
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    for syn0, syn1, summary, _, pending, *_ in results:
        assert pending == [False, False]  # the last exchange sent every residual of the hot syncs too
        err = max(np.abs(syn0 - reference.syn0).max(), np.abs(syn1 - reference.syn1).max())
        assert 0 < err < 2e-3 < np.abs(unsynced.syn0 - reference.syn0).max(), err
        assert summary["bytes_sent"] > 0


def test_auto_syncs_hot_rows_beyond_two_ranks_and_at_two_overlapped_ones() -> None:
    auto = ExchangeOptions().validate()
    assert auto.hot_rows_for(2, 50_000) == 0 and auto.hot_rows_for(1, 50_000) == 0
    # two ranks whose exchange is overlapped (across hosts by default) sync a few
    wide = ExchangeOptions().validate().across_hosts(True)
    assert wide.hot_rows_for(2, 50_000) == HOT_ROWS_PAIR and wide.hot_rows_for(2, 60) == 60
    assert ExchangeOptions(overlap=True).validate().hot_rows_for(2, 50_000) == HOT_ROWS_PAIR
    assert ExchangeOptions(overlap=False).validate().across_hosts(True).hot_rows_for(2, 50_000) == 0
    assert wide.hot_rows_for(1, 50_000) == 0 and wide.hot_rows_for(4, 50_000) == HOT_ROWS
    assert auto.hot_rows_for(4, 50_000) == HOT_ROWS and auto.hot_rows_for(8, 300) == 300
    assert ExchangeOptions(strategy="sharded").validate().hot_rows_for(8, 50_000) == 0
    assert ExchangeOptions(hot_rows="40").validate().hot_rows_for(2, 50_000) == 40
    # a step holds at most a million tokens over all ranks; hot syncs come every 20000 tokens over all ranks
    assert [step_tokens_for(w) for w in (1, 2, 4, 8, 16)] == [250_000, 250_000, 250_000, 125_000, 62_500]
    assert [auto.hot_tokens_for(w) for w in (2, 4, 8, 64)] == [HOT_TOKENS_PAIR, 5_000, 2_500, 1_000]
    assert step_tokens_for(10_000) >= auto.hot_tokens_for(10_000)
    assert ExchangeOptions(hot_tokens="700").validate().hot_tokens_for(8) == 700


def test_split_sentences_cuts_only_long_ones() -> None:
    starts = np.array([0, 3, 13, 14, 40])
    np.testing.assert_array_equal(split_sentences(starts, 4), [0, 3, 7, 11, 13, 14, 18, 22, 26, 30, 34, 38, 40])
    assert split_sentences(starts, 26) is starts  # nothing to cut: the very array


@pytest.mark.parametrize(("options", "message"), [
    ({"hot_rows": "many"}, "--hot-rows must be auto or a whole number"),
    ({"hot_rows": -3}, "--hot-rows must be auto or a whole number"),
    ({"hot_tokens": 0}, "--hot-tokens must be auto or a whole number >= 1"),
    ({"hot_rows": 10, "strategy": "sharded"}, "--hot-rows needs --strategy replicated"),
    ({"hot_rows": 10, "balance": "dynamic"}, "--hot-rows needs --strategy replicated and --balance static"),
])
def test_bad_hot_settings_name_the_option(options: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        ExchangeOptions(**options).validate()


def test_cli_bad_hot_rows_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("the cat sat on the mat\n")
    result = subprocess.run([sys.executable, "-m", "sparsembed", "train", "c.txt", "--out", "o", "--nproc", "2",
                             "--hot-rows", "lots"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "sparsembed: error: invalid setting: --hot-rows must be auto or a whole number >= 0, got 'lots'"]
    assert not (tmp_path / "o").exists()


def test_auto_values_and_overlap_follow_where_the_ranks_run() -> None:
    """Across hosts: int8 rows with error feedback under the auto byte budget, overlapped with the next step; on one
    host: float32, every touched row, in step; what the user set stays set."""
    auto = ExchangeOptions().validate()
    wide, local = auto.across_hosts(True), auto.across_hosts(False)
    assert (wide.values, wide.overlap, wide.budget) == ("int8", True, "auto")
    assert (local.values, local.overlap, local.budget) == ("fp32", False, "off")
    assert (auto.values, auto.overlap, auto.budget) == ("auto", None, None)  # the options given are not changed
    chosen = ExchangeOptions(values="fp16", overlap=False).validate().across_hosts(True)
    assert (chosen.values, chosen.overlap) == ("fp16", False)
    sharded = ExchangeOptions(strategy="sharded").validate().across_hosts(True)
    assert (sharded.values, sharded.overlap, sharded.budget) == ("fp32", False, "off")  # owners send fresh rows
    # back within the step
    assert ExchangeOptions(budget="3").validate().across_hosts(True).budget == 3.0
    dynamic = ExchangeOptions(balance="dynamic").validate().across_hosts(True)
    assert dynamic.overlap is False


def _spans() -> bool:
    from sparsembed.comm.shm import spans_hosts

    return spans_hosts()


def test_ranks_of_this_host_do_not_span_hosts() -> None:
    with DistPool(2, timeout=60.0) as pool:
        assert pool.run(_spans) == [False, False]


def _hot_in_flight(half: bool, seed: int) -> dict:
    """One rank: two matrices whose agreed rows are alike on both ranks and whose working rows differ; the hot
    rows' sum started, training going on meanwhile (a newer change), then the sum landed."""
    import torch.distributed as dist

    from sparsembed.dataparallel.replica import Replica

    rank, rows, dim, n = dist.get_rank(), 6, 5, 9
    agreed = np.random.default_rng(seed).standard_normal((2, n, dim)).astype(np.float32)
    mine = np.random.default_rng(seed + 1 + rank).standard_normal((2, n, dim)).astype(np.float32) * 0.1
    replicas = [Replica(name, agreed[m] + mine[m]) for m, name in enumerate(("syn0", "syn1"))]
    for m, r in enumerate(replicas):
        r.ref[:] = agreed[m]
        r.touched[:] = 1
    flight = Replica.start_hot(replicas, rows, None, half=half)
    marks_after_start = [r.touched.copy() for r in replicas]
    newer = np.random.default_rng(seed + 10 + rank).standard_normal((2, n, dim)).astype(np.float32) * 0.01
    for m, r in enumerate(replicas):
        r.work += newer[m]
    Replica.finish_hot(replicas, flight)
    return {"ref": [r.ref.copy() for r in replicas], "work": [r.work.copy() for r in replicas],
            "pending": [r.pending.copy() for r in replicas], "marks": marks_after_start, "agreed": agreed,
            "mine": mine, "newer": newer}


@pytest.mark.parametrize("half", [False, True])
def test_a_hot_sum_in_flight_lands_the_others_part_on_newer_training(half: bool) -> None:
    """``start_hot`` / ``finish_hot``: the agreed hot rows become the sum of every rank's change taken at the start
    (float16-rounded where ``half``), alike on every rank; each working row keeps what it trained meanwhile and
    what rounding dropped; rows past the hot ones are left alone; their marks are cleared at the start."""
    with DistPool(2, timeout=120.0) as pool:
        results = pool.run(_hot_in_flight, half, 11)
    rows = 6
    both = [r["mine"] for r in results]
    sent = [m.astype(np.float16).astype(np.float32) if half else m for m in both]
    for k, res in enumerate(results):
        for m in range(2):
            expected_ref = res["agreed"][m][:rows] + sent[0][m][:rows] + sent[1][m][:rows]
            np.testing.assert_allclose(res["ref"][m][:rows], expected_ref, rtol=0, atol=1e-3 if half else 1e-6)
            np.testing.assert_array_equal(res["ref"][m][rows:], res["agreed"][m][rows:])  # not a hot row
            left = both[k][m][:rows] - sent[k][m][:rows]  # the rounding's residual stays in the working row
            np.testing.assert_allclose(res["work"][m][:rows] - res["ref"][m][:rows],
                                       res["newer"][m][:rows] + left, rtol=0, atol=1e-5)
            assert res["marks"][m][:rows].sum() == 0 and res["marks"][m][rows:].all()
            assert res["pending"][m][:rows].any() == half
    np.testing.assert_array_equal(results[0]["ref"][0], results[1]["ref"][0])
    np.testing.assert_array_equal(results[0]["ref"][1], results[1]["ref"][1])


@pytest.mark.parametrize("transport", ["tcp", "auto"])
def test_two_overlapped_ranks_sync_hot_rows_behind_training_and_end_alike(corpus: Path, transport: str) -> None:
    """Two ranks with ``--overlap`` (the default across hosts) sync the hot rows by default, each round's sum
    behind the next round, over gloo (int8 rows) and with the reference in shared memory (float32, where every rank
    writes the same sums): the run ends with both replicas bit-identical and nothing pending."""
    with DistPool(2, timeout=120.0) as pool:
        results = pool.run(_train_rank, str(corpus), transport, "auto", "int8", True)
    for syn0, syn1, summary, rounds, pending, hot, behind, shared in results:
        assert behind and rounds == STEP_TOKENS // HOT_TOKENS and 0 < hot <= HOT_ROWS_PAIR
        assert shared == (transport == "auto")
        assert pending == [False, False] and summary["steps"] > 2
        assert np.isfinite(syn0).all() and np.isfinite(syn1).all()
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def _checkpoints_with_hot_rows_in_flight(corpus: str, out: str) -> tuple:
    """One rank of an overlapped run with hot rows: the hot rows' reference at each step's start (by position), and
    rank 0's checkpoints written while an exchange was in flight (position, hot rows saved, hot rows then live)."""
    from sparsembed.dataparallel.trainer import DataParallelTrainer

    trainer = DataParallelTrainer(_model(Path(corpus)), ExchangeOptions(transport="tcp", overlap=True,
                                                                        hot_tokens=HOT_TOKENS))
    m, hot, before, kept = trainer.model, trainer.hot, {}, []
    run_jobs, write = trainer._run_jobs, trainer.checkpoint

    def recording(pool, run, first):  # noqa: ANN001, ANN202
        before[(m.position.epoch, m.position.job)] = [r.ref[:hot].copy() for r in trainer.replicas]
        return run_jobs(pool, run, first)

    def keep(out_dir: Path, **options) -> None:
        in_flight = bool(trainer.in_flight)
        write(out_dir, **options)
        if trainer.rank == 0 and in_flight:
            m.finish_saves()
            saved = Word2Vec.load(out_dir / "model")
            kept.append(((saved.position.epoch, saved.position.job), [saved.syn0[:hot], saved.syn1[:hot]],
                         [r.ref[:hot].copy() for r in trainer.replicas]))

    trainer._run_jobs, trainer.checkpoint = recording, keep
    trainer.train(progress=False, out=Path(out))
    return before, kept


def test_a_checkpoint_with_an_exchange_in_flight_saves_the_hot_rows_of_its_position(corpus: Path,
                                                                                      tmp_path: Path) -> None:
    """With the step's exchange in flight a checkpoint saves the state before the step; its hot rows, synced during
    the step, are saved as they were before it too, so that a run resumed from it does not train them twice."""
    with DistPool(2, timeout=120.0) as pool:
        before, kept = pool.run(_checkpoints_with_hot_rows_in_flight, str(corpus), str(tmp_path / "run"))[0]
    assert kept  # an epoch's end did not wait for the exchange
    for position, saved, live in kept:
        for m in range(2):
            np.testing.assert_array_equal(saved[m], before[position][m])
            assert not np.array_equal(saved[m], live[m])  # the step's hot syncs had moved the reference on
