"""Data-parallel word2vec: 2 gloo ranks against a single-process replay of the same global steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dist_utils import DistPool
from sparsembed import Word2Vec
from sparsembed.dataparallel.options import DYNAMIC_ROUNDS, even_job_tokens, step_jobs
from sparsembed.word2vec import kernels
from sparsembed.word2vec.demo import generate_corpus
from sparsembed.word2vec.formats import read_word2vec
from sparsembed.word2vec.schedule import concurrent_schedule, job_boundaries

SETTINGS = {"vector_size": 16, "epochs": 2, "workers": 1, "seed": 7, "min_count": 2, "window": 3}
JOB_TOKENS = 700


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dp") / "corpus.txt"
    generate_corpus(path, n_tokens=12_000, seed=11)
    return path


@pytest.fixture(scope="module")
def pool():
    with DistPool(2, timeout=120.0) as p:
        yield p


@pytest.mark.parametrize(("tokens", "job", "per_step"), [(1_000_000, 50_000, 2), (17_005_207, 500_000, 2),
                                                          (999, 1000, 3), (10, 1, 4), (123_457, 700, 6)])
def test_even_job_tokens_fill_every_step(tokens: int, job: int, per_step: int) -> None:
    even = even_job_tokens(tokens, job, per_step)
    n_jobs = -(-tokens // even)
    assert n_jobs % per_step == 0 or n_jobs < per_step or even == 1  # jobs cannot shrink below one token
    assert even <= job and even >= job / 2 or tokens < per_step * job


def _model(corpus: Path, **overrides) -> Word2Vec:
    model = Word2Vec(**{**SETTINGS, **overrides})
    model.settings.job_tokens = JOB_TOKENS
    model.build_vocab(str(corpus))
    return model


def _train_ranks(corpus: str, strategy: str, mode: str, values: str, stop_after_steps: int | None,
                 transport: str = "tcp", overlap: bool = False) -> tuple:
    """One rank: build the same model, train it data-parallel, return its matrices and summary."""
    from sparsembed.dataparallel.options import ExchangeOptions
    from sparsembed.dataparallel.trainer import DataParallelTrainer

    model = _model(Path(corpus))
    # the plain exchange, as the replay does it: no hot rows (two overlapped ranks would sync some by default)
    hot_rows = 0 if strategy == "replicated" else "auto"
    options = ExchangeOptions(strategy=strategy, mode=mode, values=values, transport=transport, overlap=overlap,
                              hot_rows=hot_rows)
    trainer = DataParallelTrainer(model, options)
    assert trainer.shared == (transport == "auto" and strategy == "replicated") or strategy == "sharded"
    summary = trainer.train(progress=False, stop_after_steps=stop_after_steps)
    return model.syn0.copy(), model.syn1.copy(), summary, model.history


def _replay(model: Word2Vec, world: int, max_steps: int | None = None, late: bool = False) -> Word2Vec:
    """Single process: each step runs its ``world`` jobs from the same matrices and adds up their changes.

    ``late`` (the trainer's ``overlap``): rank ``r`` starts a step from the agreed matrices plus its own change
    of the step before, and the sum of a step's changes joins the agreed matrices one step later (after the last
    step, at once). With ``max_steps`` the agreed matrices are returned, without the changes still pending."""
    s = model.settings
    corpus = model.corpus
    per_epoch = int(corpus.sentence_starts[-1])
    s.job_tokens = even_job_tokens(per_epoch, s.job_tokens, world)  # what the trainer does at a fresh start
    bounds = job_boundaries(corpus.sentence_starts, s.job_tokens)
    n_jobs = len(bounds) - 1
    tables = model.kernel_tables()
    steps = 0
    pending = [(0.0, 0.0)] * world  # late: each rank's change not yet in the agreed matrices
    for epoch in range(s.epochs):
        for first in range(0, n_jobs, world):
            before = epoch * per_epoch + int(corpus.sentence_starts[bounds[first]])
            total, before = concurrent_schedule(per_epoch * s.epochs, before, world)
            changes = []
            for rank in range(world):
                syn0, syn1 = model.syn0 + pending[rank][0], model.syn1 + pending[rank][1]
                start0, start1 = syn0.copy(), syn1.copy()
                for job in step_jobs(first, n_jobs, 1, rank):
                    kernels.train_job(
                        syn0, syn1, corpus.ids, corpus.sentence_starts, int(bounds[job]), int(bounds[job + 1]),
                        tables["sample_ints"], s.sample > 0, tables["packed_alias"], s.sg, s.window, s.negative,
                        s.alpha, s.min_alpha, total, before, s.seed, epoch, job, kernels.SIGMOID_TABLE,
                        kernels.LOG_SIGMOID_TABLE,
                    )
                changes.append((syn0 - start0, syn1 - start1))
            if late:
                changes, pending = pending, changes
            model.syn0 += changes[0][0] + changes[1][0] if world == 2 else sum(c[0] for c in changes)
            model.syn1 += changes[0][1] + changes[1][1] if world == 2 else sum(c[1] for c in changes)
            steps += 1
            if max_steps is not None and steps >= max_steps:
                return model
    if late:  # the trainer lands the last exchange when training ends (an epoch end does not wait for it)
        model.syn0 += sum(c[0] for c in pending)
        model.syn1 += sum(c[1] for c in pending)
    return model


@pytest.mark.parametrize(("transport", "mode"), [("tcp", "auto"), ("tcp", "sparse"), ("tcp", "dense"),
                                                ("auto", "auto")])
def test_two_ranks_equal_single_process_replay(pool, corpus: Path, transport: str, mode: str) -> None:
    """Over gloo (sparse messages, dense all-reduce, or chosen by density) and through shared memory."""
    results = pool.run(_train_ranks, str(corpus), "replicated", mode, "fp32", None, transport)
    reference = _replay(_model(corpus), world=2)
    for syn0, syn1, summary, history in results:
        np.testing.assert_allclose(syn0, reference.syn0, rtol=0, atol=1e-6)
        np.testing.assert_allclose(syn1, reference.syn1, rtol=0, atol=1e-6)
        assert summary["steps"] > 4 and not summary["interrupted"] and len(history) == SETTINGS["epochs"]
    # Every replica holds the very same matrices.
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    # And the exchange was not a no-op: the replay differs from one process training the jobs one after another.
    sequential = _model(corpus)
    sequential.train(progress=False)
    assert not np.allclose(sequential.syn0, reference.syn0, atol=1e-6)


@pytest.mark.parametrize(("transport", "mode"), [("tcp", "auto"), ("tcp", "sparse"), ("tcp", "dense"),
                                                ("auto", "auto")])
def test_overlapped_exchange_equals_replay_one_step_late(pool, corpus: Path, transport: str, mode: str) -> None:
    """With ``overlap`` each rank trains a step before the previous step's sum arrives: the result equals the
    replay where other ranks' changes land one step late, and differs from the synchronous replay."""
    results = pool.run(_train_ranks, str(corpus), "replicated", mode, "fp32", None, transport, True)
    reference = _replay(_model(corpus), world=2, late=True)
    for syn0, syn1, summary, _ in results:
        np.testing.assert_allclose(syn0, reference.syn0, rtol=0, atol=1e-5)
        np.testing.assert_allclose(syn1, reference.syn1, rtol=0, atol=1e-5)
        assert summary["steps"] > 4 and summary["bytes_sent"] > 0
    # the vote travels with the exchange, a step late, and an epoch's end waits for it: every epoch's pairs (which
    # depend on its jobs alone) are counted whole, as in synchronous steps, and the losses are near theirs
    in_step = pool.run(_train_ranks, str(corpus), "replicated", mode, "fp32", None, transport, False)[0][3]
    assert [h["pairs"] for h in results[0][3]] == [h["pairs"] for h in in_step]
    np.testing.assert_allclose([h["loss"] for h in results[0][3]], [h["loss"] for h in in_step], rtol=0.05)
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    synchronous = _replay(_model(corpus), world=2)
    assert not np.allclose(synchronous.syn0, reference.syn0, atol=1e-5)


def _train_overlapped_keeping_checkpoints(corpus: str, out: str, transport: str) -> list[bool]:
    """One rank: train with ``overlap`` into ``out/run``; rank 0 copies every checkpoint to ``out/kept<i>``.
    Returns, per checkpoint, whether an exchange was in flight when it was written."""
    import shutil

    from sparsembed.dataparallel.options import ExchangeOptions
    from sparsembed.dataparallel.trainer import DataParallelTrainer

    trainer = DataParallelTrainer(_model(Path(corpus)), ExchangeOptions(transport=transport, overlap=True,
                                                                        hot_rows=0))
    write, in_flight = trainer.checkpoint, []

    def keep(out_dir: Path, **options) -> None:
        in_flight.append(bool(trainer.in_flight))
        write(out_dir, **options)
        if trainer.rank == 0:
            trainer.model.finish_saves()  # a checkpoint written in the background is on disk after this
            shutil.copytree(out_dir / "model", Path(out) / f"kept{len(in_flight) - 1}")

    trainer.checkpoint = keep
    trainer.train(progress=False, out=Path(out) / "run")
    return in_flight


@pytest.mark.parametrize("transport", ["tcp", "auto"])
def test_overlap_checkpoints_the_reference_without_waiting(pool, corpus: Path, tmp_path: Path,
                                                            transport: str) -> None:
    """An epoch end with an exchange in flight saves the agreed matrices and the position before the last step
    (its changes are not in them yet); a run resumed from it trains that step again and loses no pair."""
    in_flight = pool.run(_train_overlapped_keeping_checkpoints, str(corpus), str(tmp_path), transport)[0]
    assert in_flight == [True, False]  # epoch 1's end did not wait; the end of training did
    model = _model(corpus)
    model.settings.job_tokens = even_job_tokens(int(model.corpus.sentence_starts[-1]), JOB_TOKENS, 2)
    n_jobs = model.schedule().n_jobs
    mid = Word2Vec.load(tmp_path / "kept0")
    assert (mid.position.epoch, mid.position.job, mid.history) == (0, n_jobs - 2, [])
    # the agreed matrices after the epoch's last step: every change but that step's
    reference = _replay(_model(corpus), world=2, max_steps=n_jobs // 2, late=True)
    np.testing.assert_allclose(mid.syn0, reference.syn0, rtol=0, atol=1e-5)
    np.testing.assert_allclose(mid.syn1, reference.syn1, rtol=0, atol=1e-5)
    final = Word2Vec.load(tmp_path / "kept1")
    resumed = Word2Vec.load(tmp_path / "kept0", with_corpus=True)
    resumed.train(progress=False)
    assert [h["pairs"] for h in resumed.history] == [h["pairs"] for h in final.history]
    assert resumed.done and np.isfinite(resumed.syn0).all()


def test_overlap_needs_replicated_strategy() -> None:
    from sparsembed.dataparallel.options import ExchangeOptions
    from sparsembed.errors import UserError

    with pytest.raises(UserError, match="--overlap needs --strategy replicated"):
        ExchangeOptions(strategy="sharded", overlap=True).validate()


@pytest.mark.parametrize("mode", ["sparse", "dense"])
def test_fp16_values_keep_replicas_identical_and_close(pool, corpus: Path, mode: str) -> None:
    results = pool.run(_train_ranks, str(corpus), "replicated", mode, "fp16", None)
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    reference = _replay(_model(corpus), world=2)
    # fp16 rounds each step's change (|change| << 1) to 11 bits: the drift stays far below the rows' scale.
    assert np.max(np.abs(results[0][0] - reference.syn0)) < 1e-3
    assert np.abs(reference.syn0).max() > 0.05


def test_sharded_first_step_equals_replay_and_owners_agree(pool, corpus: Path) -> None:
    one_step = pool.run(_train_ranks, str(corpus), "sharded", "auto", "fp32", 1)
    reference = _replay(_model(corpus), world=2, max_steps=1)
    for syn0, syn1, summary, _ in one_step:
        assert summary["interrupted"] and summary["steps"] == 1
        np.testing.assert_allclose(syn0, reference.syn0, rtol=0, atol=1e-6)
        np.testing.assert_allclose(syn1, reference.syn1, rtol=0, atol=1e-6)
    full = pool.run(_train_ranks, str(corpus), "sharded", "auto", "fp32", None)
    np.testing.assert_array_equal(full[0][0], full[1][0])  # every owner's rows gathered at the end
    losses = [h["mean_loss"] for h in full[0][3]]
    assert losses[-1] < losses[0] and np.isfinite(full[0][0]).all()


def _cli(args: list[str], timeout: float = 180.0) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "sparsembed", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_cli_nproc_writes_single_process_outputs_and_step_metrics(corpus: Path, tmp_path: Path) -> None:
    argv = ["train", str(corpus), "--nproc", "2", "--workers", "1", "--dim", "16", "--epochs", "2", "--min-count", "2",
            "--window", "3", "--seed", "7", "--job-tokens", str(JOB_TOKENS), "--quiet"]
    first = _cli([*argv, "--out", str(tmp_path / "a")])
    assert first.returncode == 0, first.stderr
    words, vectors = read_word2vec(tmp_path / "a" / "vectors.bin")
    reference = _replay(_model(corpus), world=2)
    assert list(words) == list(reference.vocab.words)
    np.testing.assert_allclose(vectors, reference.syn0, rtol=0, atol=1e-6)
    assert (tmp_path / "a" / "vocab.txt").exists() and (tmp_path / "a" / "model" / "state.json").exists()
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "step" in r]
    assert len(steps) >= 5 and all(r["world"] == 2 for r in steps)
    for r in steps:
        assert r["bytes_sent"] > 0 and r["exchange_s"] > 0 and r["dense_bytes"] > 0
        assert set(r["matrices"]) == {"syn0", "syn1"}
        # Both ranks run on this host: the rows go through shared memory.
        assert all(m["encoding"] == "shm" and m["mode"] == "shm" for m in r["matrices"].values())
    # The report plots the logged exchange: bytes per step against the dense equivalent.
    report = _cli(["report", str(tmp_path / "a")])
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "a" / "report-exchange.png").stat().st_size > 1000
    # Over gloo instead of shared memory: the same bytes.
    second = _cli([*argv, "--out", str(tmp_path / "b"), "--transport", "tcp"])
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "a" / "vectors.bin").read_bytes() == (tmp_path / "b" / "vectors.bin").read_bytes()
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    encodings = {m["encoding"] for r in records if "step" in r for m in r["matrices"].values()}
    assert encodings and encodings <= {"index", "bitmap", "roaring", "complement", "all", "dense"}, encodings


def test_cli_nproc_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    result = _cli(["train", str(empty), "--out", str(tmp_path / "o"), "--nproc", "2", "--quiet"])
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("sparsembed: error:"), result.stderr
    assert not (tmp_path / "o").exists()
    missing = _cli(["train", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o"), "--nproc", "2"])
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    empty.write_text("the cat sat on the mat\n")
    sharded = _cli(["train", str(empty), "--out", str(tmp_path / "o"), "--nproc", "2", "--strategy", "sharded",
                    "--overlap"])
    assert sharded.returncode == 2 and sharded.stderr.startswith("sparsembed: error: invalid setting: --overlap")
    assert not (tmp_path / "o").exists()
    dynamic = _cli(["train", str(empty), "--out", str(tmp_path / "o"), "--nproc", "2", "--balance", "dynamic",
                    "--transport", "tcp"])
    assert dynamic.returncode == 2 and dynamic.stderr.startswith("sparsembed: error: invalid setting: --balance")
    assert not (tmp_path / "o").exists()


def test_cli_balance_dynamic_trains_and_logs_the_jobs_each_step_ran(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "dyn"
    result = _cli(["train", str(corpus), "--out", str(out), "--nproc", "2", "--workers", "1", "--dim", "16",
                   "--epochs", "2", "--min-count", "2", "--job-tokens", str(JOB_TOKENS), "--balance", "dynamic",
                   "--quiet"])
    assert result.returncode == 0, result.stderr
    words, vectors = read_word2vec(out / "vectors.bin")
    assert len(words) == len(_model(corpus).vocab) and np.isfinite(vectors).all()
    steps = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "step" in r]
    most = 2 * DYNAMIC_ROUNDS  # 2 ranks x DYNAMIC_ROUNDS rounds a step: at most all of them for rank 0
    assert steps and all(0 <= r["jobs"] <= most for r in steps)
    assert sum(r["jobs"] for r in steps) > len(steps)  # more than one job a step: the step was cut into rounds


def _corrupted_peer_message() -> str:
    """Rank 1 flips one byte of its encoded message; rank 0 must refuse it with a one-line CodecError."""
    import torch
    import torch.distributed as dist

    from sparsembed.comm import messages
    from sparsembed.comm.replicated import replicated
    from sparsembed.errors import UserError
    from sparsembed.rows.coalesce import RowSparse
    from sparsembed.rows.codec import CodecError

    original = messages.RowMessages.encode

    def flipped(self, ids, vals, num_rows=None, out=None):
        buf = original(self, ids, vals, num_rows, out=out)
        buf[buf.shape[0] // 2] ^= 0x40  # in place, before it is sent
        return buf

    if dist.get_rank() == 1:
        messages.RowMessages.encode = flipped
    try:
        grad = RowSparse(torch.arange(0, 50, 2), torch.ones(25, 8), 1000)
        replicated(grad, mode="sparse", transport="tcp")  # shared memory skips the checksum: no wire
    except CodecError as exc:
        assert isinstance(exc, UserError) and "\n" not in str(exc)
        return f"refused: {exc}"
    finally:
        messages.RowMessages.encode = original
    return "accepted"


def test_corrupted_wire_message_is_refused(pool) -> None:
    results = pool.run(_corrupted_peer_message)
    assert results[0].startswith("refused: ") and "checksum" in results[0], results
    assert results[1] == "accepted"  # its own message never crosses the wire to itself


def test_checkpoint_of_two_ranks_resumes_in_one_process(corpus: Path, tmp_path: Path) -> None:
    """The checkpoint is the single-process one (full matrices, position in the global job order), so a run
    started on 2 ranks continues with any number of ranks: here, one process."""
    out = tmp_path / "run"
    argv = ["train", str(corpus), "--out", str(out), "--nproc", "2", "--workers", "1", "--dim", "16", "--epochs", "2",
            "--min-count", "2", "--job-tokens", str(JOB_TOKENS), "--quiet"]
    assert _cli(argv).returncode == 0
    state = json.loads((out / "model" / "state.json").read_text())
    state_position = state["meta"]["position"]
    assert state_position["epoch"] == 2
    # Rewind the saved position to the middle of epoch 2 (what a checkpoint written there holds, matrices aside).
    from sparsembed.word2vec import checkpoint

    arrays, meta = checkpoint.load_checkpoint(out / "model")
    meta["position"] = {"epoch": 1, "job": 3, "epoch_loss": 0.0, "epoch_pairs": 0}
    meta["history"] = meta["history"][:1]
    checkpoint.save_checkpoint(out / "model", arrays, meta)
    model = Word2Vec.load(out)
    resumed = _cli(["train", "--resume", str(out), "--workers", "1", "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    words, vectors = read_word2vec(out / "vectors.bin")
    assert len(words) == len(model.vocab) and np.isfinite(vectors).all()
    assert json.loads((out / "model" / "state.json").read_text())["meta"]["position"]["epoch"] == 2


def _host_check(disabled: bool) -> bool:
    from sparsembed.comm.shm import one_host

    if disabled:
        os.environ["SPARSEMBED_SHM"] = "0"
    try:
        return one_host()
    finally:
        os.environ.pop("SPARSEMBED_SHM", None)


def test_shared_memory_only_on_one_host_and_when_allowed(pool) -> None:
    assert pool.run(_host_check, False) == [True, True]
    assert pool.run(_host_check, True) == [False, False]
    assert not [p for p in os.listdir("/dev/shm") if p.startswith("sparsembed-")]  # names never outlive a run


def _train_with_little_shm(corpus: str) -> tuple:
    """One rank whose /dev/shm reports 1 kB free: the trainer says so and exchanges over gloo."""
    import contextlib
    import io

    from sparsembed.comm import shm
    from sparsembed.dataparallel import trainer as distributed
    from sparsembed.dataparallel.options import ExchangeOptions
    from sparsembed.dataparallel.trainer import DataParallelTrainer

    distributed.shm_room = shm.shm_room = lambda: 1000
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        model = _model(Path(corpus))
        trainer = DataParallelTrainer(model, ExchangeOptions(transport="auto"))
        trainer.train(progress=False)
    return trainer.shared, err.getvalue(), model.syn0.copy()


def test_short_dev_shm_falls_back_to_gloo_and_says_so(corpus: Path) -> None:
    with DistPool(2, timeout=120.0) as pool:  # its own ranks: the patched room must not outlive the test
        results = pool.run(_train_with_little_shm, str(corpus))
    assert [r[0] for r in results] == [False, False]
    assert "/dev/shm has 0 MB free" in results[0][1] and "over gloo" in results[0][1] and not results[1][1]
    np.testing.assert_allclose(results[0][2], _replay(_model(corpus), world=2).syn0, rtol=0, atol=1e-6)


def _watch_settings(corpus: str) -> tuple[float, float]:
    from sparsembed.dataparallel.options import ExchangeOptions
    from sparsembed.dataparallel.trainer import DataParallelTrainer

    trainer = DataParallelTrainer(_model(Path(corpus)), ExchangeOptions(transport="tcp"))
    trainer.watch.stop_pulse()
    return trainer.watch.grace, trainer.timeout


def test_watchdog_grace_follows_the_groups_timeout(corpus: Path) -> None:
    # A group launched with a 5 s timeout (--timeout 5) names a missing rank after 0.5 s, not torch's default
    # 30 minutes' 2 s: a grace longer than the collectives' timeout would never be reached.
    with DistPool(2, timeout=60.0, collective_timeout=5.0) as pool:
        results = pool.run(_watch_settings, str(corpus))
    assert results == [(0.5, 5.0), (0.5, 5.0)]


def _train_dynamic(corpus: str, slow_rank: int) -> tuple:
    """One rank of a ``balance="dynamic"`` run; rank ``slow_rank`` takes 20 ms longer over every job."""
    import time

    import torch.distributed as dist

    from sparsembed.dataparallel.options import ExchangeOptions
    from sparsembed.dataparallel.trainer import DataParallelTrainer

    model = _model(Path(corpus))
    if dist.get_rank() == slow_rank:
        run_job = model.run_job

        def slow(*args, **kwargs):
            time.sleep(0.02)
            return run_job(*args, **kwargs)

        model.run_job = slow
    trainer = DataParallelTrainer(model, ExchangeOptions(balance="dynamic"))
    summary = trainer.train(progress=False)
    return model.syn0.copy(), model.syn1.copy(), summary, model.history, model.settings.job_tokens


def test_dynamic_balance_gives_a_slow_rank_fewer_jobs_and_trains_every_job_once(pool, corpus: Path) -> None:
    results = pool.run(_train_dynamic, str(corpus), 1)
    (syn0, syn1, fast, history, job_tokens), (syn0_b, syn1_b, slow, _, _) = results
    assert job_tokens < JOB_TOKENS  # a step's tokens in DYNAMIC_ROUNDS times as many jobs
    assert fast["jobs"] > slow["jobs"] and slow["jobs"] > 0 and fast["steps"] == slow["steps"]
    np.testing.assert_array_equal(syn0, syn0_b)  # the replicas agree, whoever ran which job
    np.testing.assert_array_equal(syn1, syn1_b)
    # Every job ran exactly once an epoch: a job's pairs depend only on (seed, epoch, job), so the epochs' pair
    # counts equal one process training the same jobs.
    single = _model(corpus)
    single.settings.job_tokens = job_tokens
    single.train(progress=False)
    assert [h["pairs"] for h in history] == [h["pairs"] for h in single.history]
    assert np.isfinite(syn0).all() and not np.allclose(syn0, _model(corpus).syn0)


def test_dynamic_balance_needs_shared_memory_exchange() -> None:
    from sparsembed.dataparallel.options import ExchangeOptions
    from sparsembed.errors import UserError

    for bad in ({"overlap": True}, {"strategy": "sharded"}, {"transport": "tcp"}):
        with pytest.raises(UserError, match="--balance dynamic needs"):
            ExchangeOptions(balance="dynamic", **bad).validate()
    with pytest.raises(UserError, match="--balance must be one of"):
        ExchangeOptions(balance="greedy").validate()


# -- error feedback: rounded values (fp16, int8) lose nothing -------------------------------------------------------
def _feedback_sequence(values: str, dense: bool, steps: int = 30) -> dict:
    """One rank: a fixed sequence of synthetic changes (Zipf-like rows, this rank's seed) through a
    :class:`Replica` and :func:`replicated` as the trainer does (or the trainer's float16 dense all-reduce), with
    the residual kept; returns the reference, the changes' sum, what was pending and the worst residual ratio."""
    import torch.distributed as dist

    from sparsembed.comm.messages import as_wire
    from sparsembed.comm.replicated import replicated
    from sparsembed.dataparallel.replica import Replica

    rank = dist.get_rank()
    num_rows, dim = 300, 8
    start = (0.01 * np.random.default_rng(5).standard_normal((num_rows, dim))).astype(np.float32)
    replica = Replica("m", start.copy())
    rng = np.random.default_rng(100 + rank)
    changes = np.zeros((num_rows, dim), np.float64)
    worst = 0.0  # a row's pending residual over half the rounding step of the change it was sent in
    for _ in range(steps):
        rows = np.unique(np.minimum(rng.zipf(1.3, 60) - 1, num_rows - 1))
        delta = (rng.standard_normal((rows.shape[0], dim)) * 10.0 ** rng.integers(-3, 0, (rows.shape[0], 1)))
        replica.work[rows] += delta.astype(np.float32)
        replica.touched[rows] = 1
        changes[rows] += delta.astype(np.float32)
        before = replica.work.astype(np.float64) - replica.ref  # this step's change, residual included
        held = replica.work - replica.ref  # what rows not sent this step hold: they must keep it, bit for bit
        sent = np.flatnonzero(replica.touched) if not dense else np.arange(num_rows)
        if dense:
            replica.exchange_dense(dist.group.WORLD, half=True)
        else:
            own = replica.change()
            total, _ = replicated(own, values=values, mode="sparse", transport="tcp")
            replica.add(total)
            replica.keep_residual(own, as_wire(own.values, values))
        pending = replica.work.astype(np.float64) - replica.ref
        assert not replica.touched.any()  # a residual does not make its row travel every step
        kept = np.setdiff1d(np.arange(num_rows), sent)
        np.testing.assert_allclose(pending[kept], held[kept], rtol=0, atol=1e-6)  # a pending residual is kept
        left = np.intersect1d(np.flatnonzero(np.abs(pending).max(axis=1)), sent)
        if not dense:
            assert replica.pending[left].all()  # and goes out with the row's next change
        top = np.abs(before[left]).max(axis=1)
        # int8: max / 127; fp16: 11 significant bits, and 2^-24 apart below 2^-14 (subnormal: a residual under
        # 2^-25 cannot travel in fp16; it stays pending, never growing, until the run's last, float32 exchange)
        step = top / 127 if values == "int8" else np.maximum(top * 2.0**-10, 2.0**-24)
        # and the float32 working row's own rounding (ref + residual), which matters for a tiny residual
        bound = step / 2 + np.spacing(np.abs(replica.work[left]).max(axis=1))
        if left.shape[0]:
            worst = max(worst, float((np.abs(pending[left]).max(axis=1) / bound).max()))
    return {"ref": replica.ref.copy(), "start": start, "changes": changes, "pending": pending, "worst": worst}


@pytest.mark.parametrize(("values", "dense"), [("int8", False), ("fp16", False), ("fp16", True)])
def test_error_feedback_sends_every_change_and_keeps_replicas_identical(pool, values: str, dense: bool) -> None:
    """Over 30 steps: the agreed reference plus every rank's pending residual is the sum of all changes (what an
    exact exchange gives), the references are bit-identical, and no residual exceeds one rounding step."""
    results = pool.run(_feedback_sequence, values, dense)
    np.testing.assert_array_equal(results[0]["ref"], results[1]["ref"])
    exact = results[0]["start"] + results[0]["changes"] + results[1]["changes"]
    agreed = results[0]["ref"] + results[0]["pending"] + results[1]["pending"]
    # float32 sums of changes up to 1e-1 per step; the dense path's float16 all-reduce also rounds the sum itself
    # (not any rank's change), which no residual can hold
    np.testing.assert_allclose(agreed, exact, rtol=0, atol=3e-3 if dense else 2e-5)
    for r in results:
        assert np.abs(r["pending"]).max() > 0  # the rounding did drop something, and it was kept
        assert r["worst"] <= 1.0, r["worst"]  # never more than one rounding step: no row is starved


@pytest.mark.parametrize(("mode", "overlap"), [("auto", False), ("dense", False), ("auto", True)])
def test_int8_training_keeps_replicas_identical_and_learns_like_fp32(pool, corpus: Path, mode: str,
                                                                     overlap: bool) -> None:
    results = pool.run(_train_ranks, str(corpus), "replicated", mode, "int8", None, "tcp", overlap)
    np.testing.assert_array_equal(results[0][0], results[1][0])  # the last exchange sent every residual exactly
    np.testing.assert_array_equal(results[0][1], results[1][1])
    exact = pool.run(_train_ranks, str(corpus), "replicated", mode, "fp32", None, "tcp", overlap)
    assert np.max(np.abs(results[0][0] - exact[0][0])) < 2e-4  # measured under 1e-5
    losses = [h["mean_loss"] for h in results[0][3]]
    exact_losses = [h["mean_loss"] for h in exact[0][3]]
    assert losses[-1] < losses[0] and abs(losses[-1] - exact_losses[-1]) < 0.01 * exact_losses[-1]


def _train_int8_checkpointing(corpus: str, out: str) -> tuple:
    """One rank: int8 training stopped after 3 steps, checkpointed into ``out``; its matrices and the saved ones."""
    from sparsembed.dataparallel.options import ExchangeOptions
    from sparsembed.dataparallel.trainer import DataParallelTrainer

    model = _model(Path(corpus))
    trainer = DataParallelTrainer(model, ExchangeOptions(values="int8", transport="tcp"))
    assert trainer.feedback
    trainer.train(progress=False, out=out, stop_after_steps=3)
    saved = Word2Vec.load(out)
    # a residual pending in a working row, as mid-run: a checkpoint still saves the reference
    model.syn0[0] += 1.0
    trainer.replicas[0].touched[0] = 1
    trainer.checkpoint(Path(out) / "mid")
    return model.syn0.copy(), trainer.replicas[0].ref.copy(), saved.syn0, Word2Vec.load(Path(out) / "mid").syn0


def test_int8_checkpoint_saves_the_agreed_reference(pool, corpus: Path, tmp_path: Path) -> None:
    """A stop sends the residuals exactly, then saves: every rank's working copy is the reference, and so is the
    checkpoint; with a residual pending, a checkpoint saves the reference, not rank 0's working copy."""
    results = pool.run(_train_int8_checkpointing, str(corpus), str(tmp_path / "run"))
    for work, ref, saved, mid in results:
        np.testing.assert_array_equal(work[1:], ref[1:])
        np.testing.assert_array_equal(work[0], ref[0] + np.float32(1.0))
        np.testing.assert_array_equal(saved, ref)
        np.testing.assert_array_equal(mid, ref)
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_cli_bad_values_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = _cli(["train", str(tmp_path / "c.txt"), "--out", str(tmp_path / "o"), "--values", "int4"])
    errors = [line for line in bad.stderr.splitlines() if "error" in line]
    assert bad.returncode == 2 and len(errors) == 1 and "--values" in errors[0], bad.stderr
