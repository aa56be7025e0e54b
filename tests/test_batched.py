"""The minibatched ("HogBatch") kernels: against a plain-numpy transcription of the same algorithm, their marks,
determinism, NaN report, quality on the planted corpus, exact resume, and the ``--kernel`` setting end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from sparsembed import Word2Vec
from sparsembed.cli import main
from sparsembed.word2vec import batched, checkpoint, kernels
from sparsembed.word2vec.demo import generate_corpus, write_analogies
from test_kernels import _next, _sigmoid_index, _tiny_problem
from train_utils import FAST, interrupt_after, train_argv


def _gradient(score: np.float32, label: float, alpha: np.float32) -> tuple[np.float32, float]:
    """batched.saturated_gradient: saturated outside (-6, 6), log sigmoid(-x) = log sigmoid(x) - x from one index."""
    sig, logsig = kernels.SIGMOID_TABLE, kernels.LOG_SIGMOID_TABLE
    if -6 < score < 6:
        i = _sigmoid_index(float(score))
        p, log_p = sig[i], logsig[i]
        log_q = np.float32(log_p - score)
    elif score >= 6:
        p, log_p, log_q = np.float32(1.0), np.float32(0.0), np.float32(-score)
    else:
        p, log_p, log_q = np.float32(0.0), np.float32(score), np.float32(0.0)
    loss = -float(log_p) if label else -float(log_q)
    return np.float32((np.float32(label) - p) * alpha), loss


def reference_batched(syn0, syn1, ids, starts, sample_ints, threshold, alias, sg, window, negative,
                      alpha_start, alpha_end, total, before, seed, epoch, job):
    """The batched kernel's algorithm with numpy matrices, in the documented generator order."""
    state = int(kernels.job_seed(seed, epoch, job))
    n_rows = syn0.shape[0]
    loss, pairs, trained, done = 0.0, 0, 0, before
    slope = (alpha_start - alpha_end) / max(total, 1)

    def draw_negatives():
        nonlocal state
        rows = []
        for _ in range(negative):
            state, bits = _next(state)
            row = ((bits >> 32) * n_rows) >> 32
            rows.append(row if (bits & 0xFFFFFFFF) < threshold[row] else alias[row])
        return rows

    def window_bounds(i, n):
        nonlocal state
        state, bits = _next(state)
        reduced = (bits >> 32) % window
        return max(0, i - window + reduced), min(n, i + window + 1 - reduced)

    upcoming = draw_negatives()
    for s in range(len(starts) - 1):
        first, last = starts[s], starts[s + 1]
        alpha = np.float32(max(alpha_start - slope * done, alpha_end))
        done += last - first
        kept = []
        for t in range(first, last):
            state, bits = _next(state)
            if sample_ints[ids[t]] >= (bits >> 32):
                kept.append(int(ids[t]))
        trained += len(kept)
        n = len(kept)
        if sg:
            for i, word in enumerate(kept):
                lo, hi = window_bounds(i, n)
                ctx = [kept[j] for j in range(lo, hi) if j != i]
                if not ctx:
                    continue
                current, upcoming = upcoming, draw_negatives()
                outs = [word] + [r for r in current if r != word]
                rows_in, rows_out = syn0[ctx].copy(), syn1[outs].copy()
                grad = np.zeros((len(outs), len(ctx)), dtype=np.float32)
                for o in range(len(outs)):
                    for c in range(len(ctx)):
                        grad[o, c], part = _gradient(np.float32(rows_out[o] @ rows_in[c]), o == 0, alpha)
                        loss += part
                np.add.at(syn1, outs, grad @ rows_in)
                np.add.at(syn0, ctx, grad.T @ rows_out)
                pairs += len(ctx)
        else:
            for group in range(0, n, batched.CBOW_GROUP):
                members = range(group, min(n, group + batched.CBOW_GROUP))
                bounds = [window_bounds(i, n) for i in members]
                current, upcoming = upcoming, draw_negatives()
                contexts = [[kept[j] for j in range(lo, hi) if j != i]
                            for i, (lo, hi) in zip(members, bounds, strict=True)]
                hidden = [syn0[c].sum(axis=0) / np.float32(len(c)) if c else None for c in contexts]
                old = syn1.copy()
                for i, ctx, h in zip(members, contexts, hidden, strict=True):
                    if not ctx:
                        continue
                    word = kept[i]
                    work = np.zeros(syn0.shape[1], dtype=np.float32)
                    for d, row in enumerate([word, *current]):
                        if d > 0 and row == word:
                            continue
                        g, part = _gradient(np.float32(h @ old[row]), d == 0, alpha)
                        loss += part
                        work += g * old[row]
                        syn1[row] += g * h
                    for c in ctx:
                        syn0[c] += work
                    pairs += 1
    return loss, pairs, trained


def _run(fn, problem, sg, marks=(kernels.NOT_TRACKED, kernels.NOT_TRACKED), seed=1):
    ids, starts, sample_ints, threshold, alias, syn0, syn1 = problem
    args = (sg, 3, 4, 0.5, 0.01, 1000, 100, seed, 2, 7)
    return fn(syn0, syn1, ids, starts, 0, len(starts) - 1, sample_ints, True, kernels.pack_alias(threshold, alias),
              *args, kernels.SIGMOID_TABLE, kernels.LOG_SIGMOID_TABLE, *marks)


@pytest.mark.parametrize("sg", [0, 1])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_batched_job_equals_reference(sg: int, seed: int) -> None:
    problem = _tiny_problem(seed)
    ids, starts, sample_ints, threshold, alias, syn0, syn1 = problem
    ref0, ref1 = syn0.copy(), syn1.copy()
    expected = reference_batched(ref0, ref1, ids, starts, sample_ints, threshold, alias,
                                 sg, 3, 4, 0.5, 0.01, 1000, 100, seed, 2, 7)
    got = _run(batched.train_job_batched, problem, sg, seed=seed)
    assert got[1:] == expected[1:]
    assert got[0] == pytest.approx(expected[0], rel=1e-4)
    # float32 sums in another order (the kernel adds three rows a pass); the learning rate here is 0.5
    np.testing.assert_allclose(syn0, ref0, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(syn1, ref1, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sg", [0, 1])
def test_batched_is_not_the_exact_kernel(sg: int) -> None:
    exact, mine = _tiny_problem(2), _tiny_problem(2)
    got_exact = _run(kernels.train_job, exact, sg)
    got_batched = _run(batched.train_job_batched, mine, sg)
    assert got_batched[1] > 0 and got_batched[2] > 0 and np.isfinite(got_batched[0])
    assert got_exact != got_batched
    assert not np.array_equal(exact[5], mine[5])


@pytest.mark.parametrize("sg", [0, 1])
def test_marks_cover_every_changed_row_and_runs_repeat(sg: int) -> None:
    problem = _tiny_problem(5)
    before0, before1 = problem[5].copy(), problem[6].copy()
    touched0 = np.zeros(before0.shape[0], dtype=np.uint8)
    touched1 = np.zeros(before0.shape[0], dtype=np.uint8)
    first = _run(batched.train_job_batched, problem, sg, (touched0, touched1))
    changed0 = np.any(problem[5] != before0, axis=1)
    changed1 = np.any(problem[6] != before1, axis=1)
    assert changed0.any() and changed1.any()
    assert not np.any(changed0 & (touched0 == 0)) and not np.any(changed1 & (touched1 == 0))
    again = _tiny_problem(5)
    assert _run(batched.train_job_batched, again, sg) == first
    np.testing.assert_array_equal(again[5], problem[5])
    np.testing.assert_array_equal(again[6], problem[6])


@pytest.mark.parametrize("sg", [0, 1])
def test_nan_weights_surface_as_nan_loss(sg: int) -> None:
    problem = _tiny_problem(4)
    problem[6][:] = np.nan
    loss, _, _ = _run(batched.train_job_batched, problem, sg)
    assert np.isnan(loss)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("planted_batched")
    corpus, questions = directory / "corpus.txt", directory / "questions.txt"
    generate_corpus(corpus, n_tokens=300_000, seed=3)
    write_analogies(questions, seed=3)
    return corpus, questions


@pytest.mark.parametrize("sg", [0, 1])
def test_planted_quality_is_the_exact_kernels(planted, sg: int) -> None:
    corpus, questions = planted
    scores = {}
    for kernel in ("exact", "batched"):
        model = Word2Vec(corpus, sg=sg, vector_size=48, epochs=5, workers=1, seed=1, kernel=kernel)
        losses = [epoch["mean_loss"] for epoch in model.history]
        assert losses[-1] < losses[0]
        scores[kernel], _ = model.wv.evaluate_word_analogies(questions, restrict_vocab=30000)
    assert scores["batched"] > 0.5
    assert scores["batched"] >= scores["exact"] - 0.1, scores


def test_run_job_and_the_data_parallel_path_use_the_chosen_kernel(planted) -> None:
    corpus, _ = planted
    models = {}
    for kernel in ("exact", "batched"):
        model = Word2Vec(vector_size=16, workers=1, seed=2, min_count=3, kernel=kernel)
        model.build_vocab(corpus)
        schedule, tables = model.schedule(), model.kernel_tables()
        touched = (np.zeros(len(model.vocab), dtype=np.uint8), np.zeros(len(model.vocab), dtype=np.uint8))
        start0, start1 = model.syn0.copy(), model.syn1.copy()
        result = model.run_job(schedule, 0, 1, tables, touched=touched)
        direct0, direct1 = start0.copy(), start1.copy()
        total, before = schedule.decay(0, 1)
        s = model.settings
        expected = model.job_kernel()(
            direct0, direct1, model.corpus.ids, model.corpus.sentence_starts, int(schedule.bounds[1]),
            int(schedule.bounds[2]), tables["sample_ints"], True, tables["packed_alias"], s.sg, s.window,
            s.negative, s.alpha, s.min_alpha, total, before, s.seed, 0, 1, kernels.SIGMOID_TABLE,
            kernels.LOG_SIGMOID_TABLE)
        assert result == expected
        np.testing.assert_array_equal(model.syn0, direct0)
        assert touched[1].any()
        models[kernel] = model
    assert models["batched"].job_kernel() is batched.train_job_batched
    assert models["exact"].job_kernel() is kernels.train_job
    assert not np.array_equal(models["exact"].syn0, models["batched"].syn0)


def test_auto_is_batched_for_skipgram_and_exact_for_cbow() -> None:
    assert Word2Vec().settings.kernel == "auto"
    assert Word2Vec(sg=1).job_kernel() is batched.train_job_batched
    assert Word2Vec(sg=0).job_kernel() is kernels.train_job
    assert Word2Vec(sg=1, kernel="exact").job_kernel() is kernels.train_job
    assert Word2Vec(sg=0, kernel="batched").job_kernel() is batched.train_job_batched


def test_old_checkpoints_without_a_kernel_resume_with_the_exact_one(planted, tmp_path: Path) -> None:
    corpus, _ = planted
    model = Word2Vec(vector_size=16, workers=1, seed=2, min_count=3, epochs=1, sg=1)
    model.build_vocab(corpus)
    model.save(tmp_path)
    assert Word2Vec.load(tmp_path).settings.kernel == "auto"
    arrays, meta = checkpoint.load_checkpoint(tmp_path / "model")
    del meta["settings"]["kernel"]  # as written before the setting existed
    checkpoint.save_checkpoint(tmp_path / "model", arrays, meta)
    loaded = Word2Vec.load(tmp_path)
    assert loaded.settings.kernel == "exact" and loaded.job_kernel() is kernels.train_job


# ------------------------------------------------------------------------------------------------ command line
@pytest.fixture()
def in_tmp(tmp_path: Path):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        generate_corpus(tmp_path / "corpus.txt", n_tokens=120_000, seed=4)
        yield tmp_path
    finally:
        os.chdir(cwd)



@pytest.mark.parametrize("model", ["skipgram", "cbow"])
def test_cli_kernel_flag_and_exact_resume(in_tmp: Path, monkeypatch, capsys, model: str) -> None:
    argv = [*train_argv(FAST), "--model", model, "--kernel", "batched", "--quiet"]
    assert main(["train", "corpus.txt", "--out", "whole", *argv]) == 0
    meta = json.loads((in_tmp / "whole" / "model" / "state.json").read_text())["meta"]
    assert meta["settings"]["kernel"] == "batched"
    assert main(["train", "corpus.txt", "--out", "exact", *train_argv(FAST), "--model", model, "--kernel", "exact",
                 "--quiet"]) == 0
    assert (in_tmp / "whole" / "vectors.bin").read_bytes() != (in_tmp / "exact" / "vectors.bin").read_bytes()

    with monkeypatch.context() as patch:
        interrupt_after(patch, 3)
        assert main(["train", "corpus.txt", "--out", "part", *argv]) == 130
    capsys.readouterr()
    assert main(["train", "--resume", "part", "--quiet"]) == 0
    assert (in_tmp / "part" / "vectors.bin").read_bytes() == (in_tmp / "whole" / "vectors.bin").read_bytes()

    capsys.readouterr()
    assert main(["train", "--resume", "part", "--kernel", "exact"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--kernel" in err and "\n" not in err


def test_cli_bad_kernel_is_one_line_and_exit_2(in_tmp: Path, capsys) -> None:
    capsys.readouterr()
    assert main(["train", "corpus.txt", "--out", "run", "--kernel", "hogbatch", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sparsembed: error: ") and "\n" not in err
    assert "--kernel" in err and "auto" in err and "exact" in err and "batched" in err
    assert not (in_tmp / "run").exists()
