"""benchmarks/bench_fasttext.py's pure helpers (no training): scoring through a lookup, corpus cutting, the report."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench_utils import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_fasttext")


def test_score_in_and_out_of_vocabulary(bench, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("# comment\nKing\tqueen\t9\nking\tapple\t1\nqueen\tzebra\t5\nwug\tapple\t2\nwug\tblick\t3\n",
                     encoding="utf-8")
    analogies = tmp_path / "questions.txt"
    analogies.write_text(": s\nking queen man woman\n", encoding="utf-8")
    vocab = ["king", "queen", "man", "woman", "apple", "zebra"]
    rng = np.random.default_rng(0)
    table = {w: rng.normal(size=8).astype(np.float32) for w in vocab}
    table["woman"] = table["queen"] - table["king"] + table["man"]
    table["wug"] = table["apple"] + 0.1  # a subword vector for an unseen word
    asked = []

    def lookup(word):
        asked.append(word)
        return table[word]  # "blick": KeyError, no vector

    result = bench.score(vocab, lookup, {"p": pairs}, analogies, restrict_vocab=10)
    assert result["analogy"] == 1.0
    assert result["p_oov_words"] == pytest.approx(2 / 6)  # wug, blick of king queen apple zebra wug blick
    assert result["p_oov_pairs"] == 2
    assert result["p_no_vector"] == 1
    assert "blick" in asked and "King" not in asked  # in-vocabulary words through the vocabulary's spelling
    cos = [bench.cosine(table[a], table[b]) for a, b in [("king", "queen"), ("king", "apple"), ("queen", "zebra")]]
    assert result["p"] == pytest.approx(bench.spearman(np.array([9.0, 1, 5]), np.array(cos)))
    all_sims = np.array([*cos, bench.cosine(table["wug"], table["apple"]), 0.0])
    assert result["p_all"] == pytest.approx(bench.spearman(np.array([9.0, 1, 5, 2, 3]), all_sims))
    assert math.isnan(result["p_oov"])  # two pairs: too few for a correlation


def test_cosine_without_vector_is_zero(bench):
    assert bench.cosine(None, np.ones(3)) == 0.0
    assert bench.cosine(np.zeros(3), np.ones(3)) == 0.0
    assert bench.cosine(np.ones(3), 2 * np.ones(3)) == pytest.approx(1.0)


def test_npz_lookup_and_eval_words(bench, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("Cat\tdog\t1\ndog\tWug\t2\n", encoding="utf-8")
    assert bench.eval_words({"p": pairs}) == ["cat", "dog", "wug"]
    npz = tmp_path / "v.npz"
    np.savez(npz, vocab=np.array(["dog", "cat"]), matrix=np.eye(2, dtype=np.float32),
             eval_words=np.array(["cat", "dog", "wug", "blick"]), eval_matrix=np.ones((4, 2), np.float32),
             eval_has=np.array([True, True, True, False]))
    vocab, lookup = bench.npz_lookup(npz)
    assert vocab == ["dog", "cat"]
    assert lookup("dog").tolist() == [1.0, 0.0]  # the vocabulary's row wins
    assert lookup("wug").tolist() == [1.0, 1.0]
    with pytest.raises(KeyError):
        lookup("blick")


def test_cut_lines_keeps_every_word(bench, tmp_path):
    text = tmp_path / "c.txt"
    words = [f"w{i % 7}" for i in range(2503)]
    text.write_text(" ".join(words), encoding="utf-8")
    counts = bench.cut_lines(text, tmp_path / "lines.txt", words_per_line=1000)
    lines = (tmp_path / "lines.txt").read_text(encoding="utf-8").splitlines()
    assert [len(line.split()) for line in lines] == [1000, 1000, 503]
    assert " ".join(lines).split() == words
    assert sum(counts.values()) == 2503 and counts[b"w0"] == 358
    for block_size in (1, 5, 4096):  # blocks that cut words and lines anywhere: the same lines
        again = bench.cut_lines(text, tmp_path / "again.txt", words_per_line=1000, block_size=block_size)
        assert (tmp_path / "again.txt").read_text(encoding="utf-8").splitlines() == lines and again == counts


def test_report_and_warnings(bench):
    row = {"wall_s": 10.0, "words_per_s": 1e6, "peak_rss_mb": 100.0, "analogy": 0.5, "ws353": 0.6,
           "simlex999": 0.3, "ws353_oov_words": 0.01, "simlex999_oov_words": 0.02, "ws353_all": 0.6,
           "ws353_oov": float("nan"), "simlex999_all": 0.3, "simlex999_oov": 0.2, "vocab_size": 100,
           "scanned_words": 1000}
    other = row | {"wall_s": 20.0, "words_per_s": 5e5, "peak_rss_mb": 400.0, "analogy": 0.4, "vocab_size": 50,
                   "trained_raw_words": 1000}
    report = {"results": {"cbow": {"sparsembed": bench.summarise([row, row]), "gensim": other}},
              "corpus_raw_words": 1000, "corpus_kept_tokens": 900, "corpus_vocab_size": 100, "epochs": 2}
    table = bench.markdown(report)
    assert "**sparsembed vs gensim** | **2.00x faster** | 2.00x | 0.25x | +10.0 pt" in table
    warnings = bench.coverage_warnings(report)
    assert len(warnings) == 2  # gensim: half the vocabulary, and 1000 raw words trained instead of 2000
    assert all(w.startswith("cbow gensim") for w in warnings)
