"""Vocabulary: gensim 4.4 equality (order, counts, sample_int, max_vocab pruning), alias table, I/O."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from gensim.models import Word2Vec
from gensim.models.word2vec import LineSentence

from sparsembed.errors import UserError
from sparsembed.word2vec.corpus import build_vocab, scan_corpus
from sparsembed.word2vec.vocab import Vocab, alias_draw

logging.getLogger("gensim").setLevel(logging.WARNING)


def zipf_corpus(seed: int, n_lines: int = 300, n_words: int = 400, long_line: int = 0) -> bytes:
    """Zipf-ish text with many count ties (and optionally one line longer than 10,000 tokens)."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n_lines):
        ids = rng.zipf(1.3, size=int(rng.integers(1, 40))) % n_words
        lines.append(" ".join(f"w{i}" for i in ids))
    if long_line:
        lines.insert(n_lines // 2, " ".join(f"w{i}" for i in rng.zipf(1.3, size=long_line) % (n_words * 4)))
    return ("\n".join(lines) + "\n").encode()


def gensim_vocab(path, min_count: int, sample: float = 1e-3, max_vocab_size=None) -> Word2Vec:
    model = Word2Vec(min_count=min_count, sample=sample, max_vocab_size=max_vocab_size, workers=1)
    model.build_vocab(LineSentence(str(path)))
    return model


@pytest.mark.parametrize("seed,min_count", [(0, 1), (1, 2), (2, 5)])
def test_order_counts_and_sample_int_equal_gensim(tmp_path, seed, min_count):
    path = tmp_path / "c.txt"
    path.write_bytes(zipf_corpus(seed, long_line=12_345 if seed == 1 else 0))
    ours = build_vocab(path, min_count=min_count)
    for sample in (1e-3, 1e-5, 0.0, 3.0):
        theirs = gensim_vocab(path, min_count, sample)
        assert ours.words == theirs.wv.index_to_key
        assert np.array_equal(ours.counts, theirs.wv.expandos["count"])
        assert np.array_equal(ours.sample_ints(sample), theirs.wv.expandos["sample_int"]), sample
    assert ours.raw_words == theirs.corpus_total_words
    assert np.all(ours.sample_ints(0) == 2**32 - 1)


def test_ties_follow_gensim(tmp_path):
    # all counts tie: gensim 4.4's lexsort((-index, -count)) puts the LATER first occurrence first
    path = tmp_path / "t.txt"
    path.write_bytes(b"b a c\nc a b\n")
    assert build_vocab(path, 1).words == gensim_vocab(path, 1).wv.index_to_key == ["c", "a", "b"]


@pytest.mark.parametrize("max_vocab", [5, 20, 57, 150])
def test_max_vocab_pruning_equals_gensim(tmp_path, max_vocab):
    path = tmp_path / "c.txt"
    path.write_bytes(zipf_corpus(7, n_lines=400, long_line=25_000))
    ours = build_vocab(path, min_count=1, max_vocab=max_vocab, block_size=1000)
    theirs = gensim_vocab(path, 1, max_vocab_size=max_vocab)
    assert ours.words == theirs.wv.index_to_key
    assert np.array_equal(ours.counts, theirs.wv.expandos["count"])
    assert ours.raw_words == theirs.corpus_total_words
    vocab, enc = scan_corpus(path, min_count=2, max_vocab=max_vocab)
    assert vocab.words == gensim_vocab(path, 2, max_vocab_size=max_vocab).wv.index_to_key
    assert enc.raw_words == ours.raw_words


def test_iterable_equals_gensim():
    rng = np.random.default_rng(3)
    sentences = [[f"x{i}" for i in rng.zipf(1.4, size=int(rng.integers(0, 30))) % 200] for _ in range(300)]
    ours = build_vocab(sentences, min_count=2)
    model = Word2Vec(min_count=2, workers=1)
    model.build_vocab(sentences)
    assert ours.words == model.wv.index_to_key
    assert np.array_equal(ours.counts, model.wv.expandos["count"])


def chi_square(vocab: Vocab, power: float, seed: int, n: int) -> float:
    threshold, alias = vocab.noise_alias()
    draws = alias_draw(threshold, alias, np.random.default_rng(seed), n)
    observed = np.bincount(draws, minlength=len(vocab))
    weights = vocab.counts.astype(np.float64) ** power
    expected = n * weights / weights.sum()
    return float(((observed - expected) ** 2 / expected).sum())


def test_alias_table_matches_unigram_075():
    rng = np.random.default_rng(0)
    counts = np.sort(rng.zipf(1.2, size=300).clip(1, 10**6))[::-1].astype(np.int64)
    vocab = Vocab([f"w{i}" for i in range(300)], counts)
    threshold, alias = vocab.noise_alias()
    assert threshold.dtype == np.uint32 and alias.dtype == np.int32
    assert np.all(alias[threshold == 2**32 - 1] == np.flatnonzero(threshold == 2**32 - 1))
    # exact: the table's implied probabilities equal counts^0.75 / Z
    implied = threshold.astype(np.float64) / 2**32
    mass = implied.copy()
    np.add.at(mass, alias, 1.0 - implied)
    weights = counts.astype(np.float64) ** 0.75
    np.testing.assert_allclose(mass / len(counts), weights / weights.sum(), rtol=1e-6, atol=1e-9)
    # sampled: over 200 calibration seeds the statistic (df=299) had mean 300, sd 31, max 399; the bound
    # (470) is > 5 sd out, so it never flakes, yet power 1.0 instead of 0.75 gives ~24,000
    df = len(counts) - 1
    bound = df + 7 * np.sqrt(2 * df)
    for seed in range(5):
        assert chi_square(vocab, 0.75, seed, 200_000) < bound
    assert chi_square(vocab, 1.0, 0, 200_000) > 3 * bound


def test_alias_degenerate_cases():
    one = Vocab(["a"], np.array([7]))
    threshold, alias = one.noise_alias()
    assert alias.tolist() == [0]
    assert np.all(alias_draw(threshold, alias, np.random.default_rng(0), 100) == 0)
    flat = Vocab(["a", "b", "c", "d"], np.array([5, 5, 5, 5]))
    counts = np.bincount(alias_draw(*flat.noise_alias(), np.random.default_rng(0), 40_000), minlength=4)
    assert np.all(np.abs(counts - 10_000) < 600)
    with pytest.raises(UserError):
        Vocab([], np.zeros(0)).noise_alias()


def test_fvocab_round_trip_and_gensim_format(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(zipf_corpus(4) + "é日本 é日本\n".encode())
    vocab = build_vocab(path, min_count=2)
    vocab.save_fvocab(tmp_path / "v.txt")
    lines = (tmp_path / "v.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == f"{vocab.words[0]} {vocab.counts[0]}" and len(lines) == len(vocab)
    back = Vocab.load_fvocab(tmp_path / "v.txt")
    assert back.words == vocab.words and np.array_equal(back.counts, vocab.counts)
    assert back.index("é日本") == vocab.index("é日本")
    with pytest.raises(KeyError):
        back.index("absent")


def test_fvocab_bad_files(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        Vocab.load_fvocab(tmp_path / "missing.txt")
    (tmp_path / "bad.txt").write_text("a 3\nb three\n")
    with pytest.raises(UserError, match="line 2: expected 'word count'"):
        Vocab.load_fvocab(tmp_path / "bad.txt")
    (tmp_path / "dup.txt").write_text("a 3\na 2\n")
    with pytest.raises(UserError, match="twice"):
        Vocab.load_fvocab(tmp_path / "dup.txt")


def test_state_round_trip_through_npz(tmp_path):
    vocab = Vocab(["the", "é", "日本"], np.array([9, 4, 4]), raw_words=30)
    np.savez(tmp_path / "s.npz", other=np.arange(3), **vocab.to_state())
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        back = Vocab.from_state(dict(z))
    assert back.words == vocab.words and np.array_equal(back.counts, vocab.counts)
    assert back.raw_words == 30 and len(back) == 3 and back.word_to_id == {"the": 0, "é": 1, "日本": 2}


def test_bad_settings(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"a b\n")
    with pytest.raises(UserError, match="min_count"):
        build_vocab(path, min_count=-1)
    with pytest.raises(UserError, match="max_vocab"):
        build_vocab(path, max_vocab=0)
    with pytest.raises(UserError, match="sample"):
        build_vocab(path, min_count=1).sample_ints(-0.1)


@pytest.mark.slow
def test_wiki1m_equals_gensim(tmp_path):
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wiki1m.txt.xz"
    if not src.exists():
        pytest.skip("no ../shared/data/wiki1m.txt.xz")
    vocab, enc = scan_corpus(src, min_count=5)
    model = Word2Vec(min_count=5, workers=1, max_vocab_size=None)
    model.build_vocab(corpus_file=None, corpus_iterable=LineSentence(str(src)))
    assert vocab.words == model.wv.index_to_key
    assert np.array_equal(vocab.counts, model.wv.expandos["count"])
    assert np.array_equal(vocab.sample_ints(1e-3), model.wv.expandos["sample_int"])
    assert enc.raw_words == model.corpus_total_words
