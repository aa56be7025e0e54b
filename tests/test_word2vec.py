"""The trainer: learning, determinism, exact resumption, settings, divergence."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sparsembed import Word2Vec
from sparsembed.errors import UserError
from sparsembed.word2vec.demo import generate_corpus, write_analogies
from sparsembed.word2vec.model import TrainingState
from sparsembed.word2vec.schedule import job_boundaries
from sparsembed.word2vec.settings import Settings


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, Path]:
    """A small generated corpus with analogies that hold by construction."""
    directory = tmp_path_factory.mktemp("planted")
    corpus, questions = directory / "corpus.txt", directory / "questions.txt"
    generate_corpus(corpus, n_tokens=300_000, seed=3)
    write_analogies(questions, seed=3)
    return corpus, questions


def _small(**kwargs) -> dict:
    settings = {"vector_size": 32, "epochs": 3, "workers": 1, "seed": 5, "min_count": 3}
    settings.update(kwargs)
    return settings


@pytest.mark.parametrize("sg", [0, 1])
def test_training_lowers_the_loss_and_learns_planted_analogies(planted, sg: int) -> None:
    corpus, questions = planted
    model = Word2Vec(corpus, sg=sg, vector_size=48, epochs=5, workers=2, seed=1)
    losses = [epoch["mean_loss"] for epoch in model.history]
    assert len(losses) == 5 and losses[-1] < losses[0]
    accuracy, _ = model.wv.evaluate_word_analogies(questions, restrict_vocab=30000)
    # Seeds 1..8 (workers=2): CBOW 0.77-0.80, skip-gram 0.999-1.0; chance is ~0. The floor leaves a wide margin.
    assert accuracy > 0.5


def test_single_thread_training_is_deterministic(planted) -> None:
    corpus, _ = planted
    first = Word2Vec(corpus, **_small())
    second = Word2Vec(corpus, **_small())
    np.testing.assert_array_equal(first.syn0, second.syn0)
    np.testing.assert_array_equal(first.syn1, second.syn1)
    third = Word2Vec(corpus, **_small(seed=6))
    assert not np.array_equal(first.syn0, third.syn0)


def test_stopped_and_resumed_run_equals_uninterrupted_run(planted, tmp_path: Path) -> None:
    corpus, _ = planted
    whole = Word2Vec(corpus, **_small(), out=tmp_path / "whole")
    part = Word2Vec(**_small())
    part.settings.job_tokens = whole.settings.job_tokens
    part.build_vocab(corpus)
    part.train(progress=False, out=tmp_path / "part", stop_after_jobs=4)
    part.save(tmp_path / "part")
    assert not part.done
    resumed = Word2Vec.load(tmp_path / "part", with_corpus=True)
    assert resumed.position.job == part.position.job and resumed.position.epoch == part.position.epoch
    resumed.train(progress=False, out=tmp_path / "part")
    assert resumed.done
    np.testing.assert_array_equal(whole.syn0, resumed.syn0)
    np.testing.assert_array_equal(whole.syn1, resumed.syn1)
    assert [h["loss"] for h in whole.history] == pytest.approx([h["loss"] for h in resumed.history], rel=1e-12)


def test_save_and_load_round_trip(planted, tmp_path: Path) -> None:
    corpus, _ = planted
    model = Word2Vec(corpus, **_small(epochs=1))
    model.save(tmp_path)
    loaded = Word2Vec.load(tmp_path)
    np.testing.assert_array_equal(model.syn0, loaded.syn0)
    assert loaded.vocab.words == model.vocab.words
    np.testing.assert_array_equal(loaded.vocab.counts, model.vocab.counts)
    assert loaded.settings == model.settings and loaded.done
    word = model.vocab.words[3]
    assert loaded.wv.most_similar(word, topn=3) == model.wv.most_similar(word, topn=3)


def test_in_memory_sentences(planted) -> None:
    corpus, _ = planted
    sentences = [line.split() for line in corpus.read_text().splitlines()[:2000]]
    model = Word2Vec(sentences, **_small(epochs=1))
    assert len(model.vocab) > 10 and model.done


@pytest.mark.parametrize(
    "setting, value, fragment",
    [
        ("vector_size", 0, "--dim"),
        ("window", 0, "--window"),
        ("negative", 0, "--negative"),
        ("min_count", 0, "--min-count"),
        ("sample", -0.1, "--sample"),
        ("sample", math.nan, "--sample"),
        ("epochs", 0, "--epochs"),
        ("alpha", 0.0, "--alpha"),
        ("min_alpha", 0.5, "--min-alpha"),
        ("workers", 0, "--workers"),
        ("seed", -1, "--seed"),
        ("vector_size", 2.5, "--dim"),
    ],
)
def test_invalid_settings_are_named(setting: str, value, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment):
        Word2Vec(**{setting: value})


def test_settings_defaults_are_gensims() -> None:
    s = Settings()
    assert (s.vector_size, s.window, s.negative, s.min_count, s.sample, s.epochs, s.alpha, s.min_alpha) == (
        100, 5, 5, 5, 1e-3, 5, 0.025, 1e-4)


def test_divergence_stops_with_advice(planted) -> None:
    corpus, _ = planted
    model = Word2Vec(**_small())
    model.build_vocab(corpus)
    model.syn1[:] = np.nan  # what exploding weights look like to the kernel
    with pytest.raises(UserError, match="diverged.*lower --alpha"):
        model.train(progress=False)


def test_job_boundaries_cover_whole_sentences() -> None:
    starts = np.array([0, 10, 30, 31, 60, 100], dtype=np.int64)
    bounds = job_boundaries(starts, 25)
    assert bounds[0] == 0 and bounds[-1] == 5 and np.all(np.diff(bounds) > 0)
    assert job_boundaries(starts, 1000).tolist() == [0, 5]
    assert job_boundaries(starts, 1).tolist() == [0, 1, 2, 3, 4, 5]


def test_public_training_steps_replay_train_exactly(planted, tmp_path: Path) -> None:
    """A training loop's steps are public (the data-parallel trainer drives them): running every job in order
    through them gives train()'s matrices and history bit for bit, and save_state of a snapshot taken before the
    last epoch is the checkpoint a run stopped there would have written."""
    corpus, _ = planted
    whole = Word2Vec(corpus, **_small())
    model = Word2Vec(**_small())
    model.build_vocab(corpus)
    schedule, tables = model.schedule(), model.kernel_tables()
    reporter = model.reporter(schedule, quiet=True)
    earlier = None
    while not model.done:
        if model.position.epoch == model.settings.epochs - 1 and earlier is None:
            earlier = TrainingState(model.syn0.copy(), model.syn1.copy(), replace(model.position),
                                    list(model.history))
        for job in range(model.position.job, schedule.n_jobs):
            loss, pairs, _ = model.run_job(schedule, model.position.epoch, job, tables)
            model.advance(schedule, job + 1, float(loss), int(pairs))
        model.end_epoch(schedule, reporter)
    np.testing.assert_array_equal(whole.syn0, model.syn0)
    np.testing.assert_array_equal(whole.syn1, model.syn1)
    assert whole.history == model.history
    model.save_state(tmp_path, earlier)
    resumed = Word2Vec.load(tmp_path, with_corpus=True)
    assert (resumed.position.epoch, resumed.position.job) == (model.settings.epochs - 1, 0)
    resumed.train(progress=False)
    np.testing.assert_array_equal(whole.syn0, resumed.syn0)
    assert whole.history == resumed.history
