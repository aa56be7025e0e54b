"""Subword vectors (fastText's model): n-grams and hash as fastText computes them, the compiled jobs against a
plain reference, training on the planted corpus (vectors for held-out words), storage, save / load / resume,
the parts of a fastText file, and the command line."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from sparsembed import Word2Vec
from sparsembed.cli import main
from sparsembed.errors import UserError
from sparsembed.subword import batched as subword_batched
from sparsembed.subword import kernels as subword_kernels
from sparsembed.subword.index import SubwordIndex
from sparsembed.subword.ngrams import compute_ngrams, ft_hash, ngram_buckets, parse_subwords
from sparsembed.word2vec import kernels
from sparsembed.word2vec.planted import generate_corpus, planted_groups, write_analogies
from sparsembed.word2vec.vectors import UnknownWordError
from test_batched import _gradient as batched_gradient

gensim_fasttext = pytest.importorskip("gensim.models.fasttext")

WORDS = ["aaaa", "a", "word", "naïve", "é", "日本語の", "Привет", "😀ab", "cafe\u0301", "x" * 30, "<>", "ab>c",
         "\u00ff\u0100", "tschüß"]


# ------------------------------------------------------------------------------------------ hash and n-grams
def test_hash_is_fasttexts_incl_non_ascii() -> None:
    for word in WORDS:
        data = word.encode("utf-8")
        assert ft_hash(data) == gensim_fasttext.ft_hash_bytes(data)
    assert ft_hash(b"\xff") != ft_hash(b"\x7f")  # a byte >= 0x80 is sign-extended, not taken as is
    assert ft_hash(b"") == 2166136261


@pytest.mark.parametrize("minn, maxn", [(3, 6), (1, 3), (1, 1), (2, 9), (5, 5)])
def test_ngrams_are_fasttexts(minn: int, maxn: int) -> None:
    for word in WORDS:
        assert compute_ngrams(word, minn, maxn) == gensim_fasttext.compute_ngrams_bytes(word, minn, maxn)


@pytest.mark.parametrize("minn, maxn, buckets", [(3, 6, 2_000_000), (1, 3, 7), (2, 9, 2**31 - 1), (1, 1, 100)])
def test_compiled_buckets_equal_gensims(minn: int, maxn: int, buckets: int) -> None:
    offsets, ids = ngram_buckets(WORDS, minn, maxn, buckets)
    assert offsets[0] == 0 and offsets[-1] == len(ids)
    for w, word in enumerate(WORDS):
        assert ids[offsets[w]:offsets[w + 1]].tolist() == gensim_fasttext.ft_ngram_hashes(word, minn, maxn, buckets)


def test_index_rows_word_first_and_compact_buckets() -> None:
    index = SubwordIndex.build(WORDS, 3, 6, 1000)
    first_use = list(dict.fromkeys(b for word in WORDS for b in gensim_fasttext.ft_ngram_hashes(word, 3, 6, 1000)))
    assert index.bucket_of_row.tolist() == first_use  # the most frequent word's n-grams first, each once
    for w, word in enumerate(WORDS):
        rows = index.rows[index.offsets[w]:index.offsets[w + 1]]
        assert rows[0] == w
        buckets = gensim_fasttext.ft_ngram_hashes(word, 3, 6, 1000)
        assert index.bucket_of_row[rows[1:] - len(WORDS)].tolist() == buckets
    assert index.n_rows == len(WORDS) + len(set(b for word in WORDS
                                                  for b in gensim_fasttext.ft_ngram_hashes(word, 3, 6, 1000)))


def test_index_keeps_a_given_layout_and_refuses_a_wrong_one() -> None:
    """A checkpoint's row order (sorted, as before first-use order) maps every n-gram to the same bucket's row, and
    lookups by bucket (export, unknown words) read the same values as in the default layout."""
    default = SubwordIndex.build(WORDS, 3, 6, 1000)
    rng = np.random.default_rng(3)
    for layout in (np.sort(default.bucket_of_row), rng.permutation(default.bucket_of_row)):
        index = SubwordIndex.build(WORDS, 3, 6, 1000, layout=layout)
        np.testing.assert_array_equal(index.bucket_of_row, layout)
        np.testing.assert_array_equal(index.offsets, default.offsets)
        n = len(WORDS)
        np.testing.assert_array_equal(index.bucket_of_row[index.rows[index.rows >= n] - n],
                                      default.bucket_of_row[default.rows[default.rows >= n] - n])
        # the same trained values, stored in each layout's order
        values = rng.normal(size=(default.n_rows, 4)).astype(np.float32)
        syn0 = np.empty_like(values)
        syn0[:n] = values[:n]
        syn0[n + np.argsort(index.bucket_of_row)] = values[n + np.argsort(default.bucket_of_row)]
        np.testing.assert_array_equal(index.bucket_rows(syn0, 1, 0, 1000), default.bucket_rows(values, 1, 0, 1000))
        np.testing.assert_array_equal(index.word_vectors(syn0), default.word_vectors(values))
        for word in ("wordy", "naïveté", "qqqq"):
            mine, theirs = index.oov_vector(word, syn0, 1), default.oov_vector(word, values, 1)
            assert mine[1:] == theirs[1:]
            np.testing.assert_array_equal(mine[0], theirs[0])
    for wrong in (default.bucket_of_row[:-1], np.append(default.bucket_of_row[:-1], default.bucket_of_row[0]),
                  np.append(default.bucket_of_row[:-1], 999_999)):
        with pytest.raises(ValueError, match="do not match"):
            SubwordIndex.build(WORDS, 3, 6, 1000, layout=wrong)


@pytest.mark.parametrize("text, expected", [("3-6", (3, 6)), ("0", None), ("4", (4, 4)), ("1-20", (1, 20))])
def test_parse_subwords(text: str, expected) -> None:
    assert parse_subwords(text) == expected


@pytest.mark.parametrize("text, fragment", [("6-3", "exceeds"), ("0-3", "at least 1"), ("3-21", "too long"),
                                            ("x", "not a range"), ("3-", "not a range"), ("-3", "not a range"),
                                            ("3-6-9", "not a range"), ("3.5-6", "not a range")])
def test_parse_subwords_refuses_nonsense(text: str, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment):
        parse_subwords(text)


# --------------------------------------------------------------------------- the kernel against a reference
M64 = (1 << 64) - 1


def _next(state: int) -> tuple[int, int]:
    state ^= state >> 12
    state ^= (state << 25) & M64
    state ^= state >> 27
    return state, (state * 2685821657736338717) & M64


def _draw(packed: np.ndarray, bits: int) -> int:
    row = ((bits >> 32) * len(packed)) >> 32
    entry = int(packed[row])
    return row if (bits & 0xFFFFFFFF) < (entry >> 32) else entry & 0xFFFFFFFF


def _noise(packed: np.ndarray, negative: int, state: int) -> tuple[int, list[int]]:
    """The next ``negative`` noise words from the kernels' generator."""
    out = []
    for _ in range(negative):
        state, bits = _next(state)
        out.append(_draw(packed, bits))
    return state, out


def _subsampled(sentence: list[int], sample_ints: np.ndarray, state: int) -> tuple[int, list[int]]:
    """The words of ``sentence`` that subsampling keeps, one draw each."""
    kept = []
    for w in sentence:
        state, bits = _next(state)
        if sample_ints[w] >= (bits >> 32):
            kept.append(w)
    return state, kept


def _fasttext_pass(hidden: np.ndarray, syn1: np.ndarray, target: int, negs: list[int], alpha) -> tuple:
    """fastText's negative-sampling step as the exact kernels do it (gensim's skipping outside (-6, 6)): updates
    ``syn1``'s rows; returns (the error for the input rows, loss)."""
    sig, logsig = kernels.SIGMOID_TABLE, kernels.LOG_SIGMOID_TABLE
    work, loss = np.zeros_like(hidden), 0.0
    for d, row in enumerate([target, *negs]):
        if d > 0 and row == target:
            continue
        score = float(np.dot(hidden.astype(np.float64), syn1[row].astype(np.float64)))
        if score <= -6 or score >= 6:
            continue
        g = np.float32((float(d == 0) - sig[int((score + 6) * (1000 / 12))]) * alpha)
        signed = score if d == 0 else -score
        if -6 < signed < 6:
            loss -= float(logsig[int((signed + 6) * (1000 / 12))])
        work += g * syn1[row]
        syn1[row] += g * hidden
    return work, loss


def _reference_job(syn0, syn1, offsets, rows, sentence, sample_ints, packed, sg, window, negative, alpha, seed):
    """One sentence of fastText's CBOW / skip-gram, literally (skip-gram recomputes the mean after every update),
    with the kernels' generator, subsampling, window and noise draws. Returns (loss, pairs)."""
    state, negs = _noise(packed, negative, int(kernels.job_seed(seed, 0, 0)))
    loss, pairs = 0.0, 0

    def update(inputs, target, state, negs):
        nonlocal loss, pairs
        hidden = np.mean(syn0[inputs], axis=0, dtype=np.float64).astype(np.float32)
        state, next_negs = _noise(packed, negative, state)
        work, part = _fasttext_pass(hidden, syn1, target, negs, alpha)
        loss += part
        for r in inputs:  # a row listed twice gets the error twice
            syn0[r] += work
        pairs += 1
        return state, next_negs

    state, kept = _subsampled(sentence, sample_ints, state)
    for i, word in enumerate(kept):
        state, bits = _next(state)
        reduced = (bits >> 32) % window
        lo, hi = max(0, i - window + reduced), min(len(kept), i + window + 1 - reduced)
        context = [kept[j] for j in range(lo, hi) if j != i]
        if sg:
            for c in context:
                state, negs = update(list(rows[offsets[word]:offsets[word + 1]]), c, state, negs)
        elif context:
            inputs = [r for c in context for r in rows[offsets[c]:offsets[c + 1]]]
            state, negs = update(inputs, word, state, negs)
    return loss, pairs


@pytest.mark.parametrize("sg", [0, 1])
def test_kernel_equals_reference_on_one_sentence(sg: int) -> None:
    words = ["aaaa", "abab", "baab", "bbbb", "cab", "abc", "ca", "cc"]
    index = SubwordIndex.build(words, 2, 4, 50)
    dim, negative, window, alpha, seed = 8, 3, 3, 0.05, 11
    syn0 = index.initial_input_matrix(dim, seed) * 20  # larger rows: the scores leave the near-zero region
    rng = np.random.default_rng(0)
    syn1 = (rng.standard_normal((len(words), dim)) * 0.3).astype(np.float32)
    sentence = np.array([0, 1, 2, 3, 4, 5, 6, 7, 0, 0, 1, 3, 5, 2], dtype=np.int32)
    sample_ints = np.full(len(words), 2**32 - 1, dtype=np.uint64)
    sample_ints[0] = 2**31  # word 0 kept about half the time: subsampling draws take part
    threshold = np.full(len(words), 2**32 - 1, dtype=np.uint64)
    packed = kernels.pack_alias(threshold, np.arange(len(words)))
    ref0, ref1 = syn0.copy(), syn1.copy()
    ref_loss, ref_pairs = _reference_job(ref0, ref1, index.offsets, index.rows, sentence.tolist(), sample_ints,
                                         packed, sg, window, negative, np.float32(alpha), seed)
    starts = np.array([0, len(sentence)], dtype=np.int64)
    results = []
    for _ in range(2):
        a0, a1 = syn0.copy(), syn1.copy()
        touched0 = np.zeros(index.n_rows, np.uint8)
        touched1 = np.zeros(len(words), np.uint8)
        out = subword_kernels.train_job(
            a0, a1, index.offsets, index.rows, index.gain, sentence, starts, 0, 1, sample_ints, True, packed, sg,
            window, negative, alpha, alpha, 1, 0, seed, 0, 0, kernels.SIGMOID_TABLE, kernels.LOG_SIGMOID_TABLE,
            touched0, touched1)
        results.append((a0, a1, out, touched0, touched1))
    (a0, a1, (loss, pairs, trained), touched0, touched1), again = results[0], results[1]
    np.testing.assert_array_equal(a0, again[0])  # deterministic, bit for bit
    np.testing.assert_array_equal(a1, again[1])
    assert pairs == ref_pairs > 0 and 0 < trained <= len(sentence)
    assert loss == pytest.approx(ref_loss, rel=1e-4)
    np.testing.assert_allclose(a0, ref0, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a1, ref1, rtol=1e-4, atol=1e-5)
    changed0 = np.flatnonzero(np.any(a0 != syn0, axis=1))
    changed1 = np.flatnonzero(np.any(a1 != syn1, axis=1))
    assert len(changed0) > len(words) and set(changed0) <= set(np.flatnonzero(touched0))
    assert set(changed1) <= set(np.flatnonzero(touched1))


def _reference_batched(syn0, syn1, offsets, rows, sentence, sample_ints, packed, sg, window, negative, alpha, seed):
    """One sentence of the batched subword kernel (:mod:`sparsembed.subword.batched`), literally: each position's
    rows summed when it enters the window, its errors added to that sum and kept pending until it leaves, then
    added to its rows once per listing; CBOW as fastText's, skip-gram as pWord2Vec's minibatch over the context's
    mean vectors. Returns (loss, pairs)."""
    state, negs = _noise(packed, negative, int(kernels.job_seed(seed, 0, 0)))
    state, kept = _subsampled(sentence, sample_ints, state)
    listed = [list(rows[offsets[w]:offsets[w + 1]]) for w in kept]
    sums, pending, loss, pairs = {}, {}, 0.0, 0
    entered = released = 0
    for i, word in enumerate(kept):
        state, bits = _next(state)
        reduced = (bits >> 32) % window
        lo, hi = max(0, i - window + reduced), min(len(kept), i + window + 1 - reduced)
        while released < i - window:
            for r in listed[released]:
                syn0[r] += pending[released]
            released += 1
        while entered < hi:
            sums[entered] = syn0[listed[entered]].sum(axis=0, dtype=np.float32)
            pending[entered] = np.zeros(syn0.shape[1], np.float32)
            entered += 1
        context = [j for j in range(lo, hi) if j != i]
        if not context:
            continue
        state, next_negs = _noise(packed, negative, state)
        squares = {j: np.float32((np.unique(listed[j], return_counts=True)[1] ** 2).sum()) for j in context}
        if sg:
            outs = [word, *negs]
            inputs = np.array([sums[j] / np.float32(len(listed[j])) for j in context], dtype=np.float32)
            old = syn1[outs].copy()
            grad = np.zeros((len(context), len(outs)), np.float32)
            for c in range(len(context)):
                for o, row in enumerate(outs):
                    if o > 0 and row == word:
                        continue
                    grad[c, o], part = batched_gradient(np.float32(inputs[c] @ old[o]), o == 0, alpha)
                    loss += part
            for o, row in enumerate(outs):
                syn1[row] += grad[:, o] @ inputs
            for c, j in enumerate(context):
                change = grad[c] @ old
                pending[j] += change
                sums[j] += squares[j] * change
            pairs += len(context)
        else:
            hidden = (sum(sums[j] for j in context) / sum(len(listed[j]) for j in context)).astype(np.float32)
            work, part = _fasttext_pass(hidden, syn1, word, negs, alpha)
            loss += part
            pairs += 1
            for j in context:
                pending[j] += work
                sums[j] += squares[j] * work
        negs = next_negs
    for j in range(released, len(kept)):
        for r in listed[j]:
            syn0[r] += pending[j]
    return loss, pairs


@pytest.mark.parametrize("sg", [0, 1])
def test_batched_kernel_equals_its_reference_and_marks_what_it_changes(sg: int) -> None:
    words = ["aaaa", "abab", "baab", "bbbb", "cab", "abc", "ca", "cc"]
    index = SubwordIndex.build(words, 2, 4, 50)
    dim, negative, window, alpha, seed = 8, 3, 2, 0.05, 11
    syn0 = index.initial_input_matrix(dim, seed) * 20
    syn1 = (np.random.default_rng(0).standard_normal((len(words), dim)) * 0.3).astype(np.float32)
    sentence = np.array([0, 1, 2, 3, 4, 5, 6, 7, 0, 0, 1, 3, 5, 2, 0, 4, 4, 1], dtype=np.int32)
    sample_ints = np.full(len(words), 2**32 - 1, dtype=np.uint64)
    sample_ints[0] = 2**31
    packed = kernels.pack_alias(np.full(len(words), 2**32 - 1, dtype=np.uint64), np.arange(len(words)))
    ref0, ref1 = syn0.copy(), syn1.copy()
    ref_loss, ref_pairs = _reference_batched(ref0, ref1, index.offsets, index.rows, sentence.tolist(), sample_ints,
                                             packed, sg, window, negative, np.float32(alpha), seed)
    a0, a1 = syn0.copy(), syn1.copy()
    touched0, touched1 = np.zeros(index.n_rows, np.uint8), np.zeros(len(words), np.uint8)
    loss, pairs, trained = subword_batched.train_job_batched(
        a0, a1, index.offsets, index.rows, index.gain, sentence, np.array([0, len(sentence)], dtype=np.int64), 0, 1,
        sample_ints, True, packed, sg, window, negative, alpha, alpha, 1, 0, seed, 0, 0, kernels.SIGMOID_TABLE,
        kernels.LOG_SIGMOID_TABLE, touched0, touched1)
    assert pairs == ref_pairs > 0 and 0 < trained <= len(sentence)
    assert loss == pytest.approx(ref_loss, rel=1e-4)
    np.testing.assert_allclose(a0, ref0, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a1, ref1, rtol=1e-4, atol=1e-5)
    assert set(np.flatnonzero(np.any(a0 != syn0, axis=1))) <= set(np.flatnonzero(touched0))
    assert set(np.flatnonzero(np.any(a1 != syn1, axis=1))) <= set(np.flatnonzero(touched1))
    # not fastText's arithmetic: the same sentence through the exact kernel ends elsewhere
    e0, e1 = syn0.copy(), syn1.copy()
    subword_kernels.train_job(
        e0, e1, index.offsets, index.rows, index.gain, sentence, np.array([0, len(sentence)], dtype=np.int64), 0, 1,
        sample_ints, True, packed, sg, window, negative, alpha, alpha, 1, 0, seed, 0, 0, kernels.SIGMOID_TABLE,
        kernels.LOG_SIGMOID_TABLE)
    assert not np.allclose(e0, a0, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sg", [0, 1])
def test_the_kernel_setting_picks_the_subword_kernel(sg: int) -> None:
    chosen = {kernel: Word2Vec(sg=sg, subwords=(3, 6), kernel=kernel).subword_job_kernel()
              for kernel in ("auto", "exact", "batched")}
    assert chosen["auto"] is chosen["batched"] is subword_batched.train_job_batched
    assert chosen["exact"] is subword_kernels.train_job


# ------------------------------------------------------------------------------------ training, queries
@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, Path, list[list[str]]]:
    """The planted corpus without the sentences of some verb participles and noun plurals (held out)."""
    directory = tmp_path_factory.mktemp("subword")
    corpus, questions = directory / "corpus.txt", directory / "questions.txt"
    generate_corpus(directory / "full.txt", n_tokens=300_000, seed=3)
    write_analogies(questions, seed=3)
    groups = {g.name: g for g in planted_groups(3)}
    held = [list(forms) for forms in groups["verb"].words[:4]] + [list(f) for f in groups["noun"].words[:4]]
    out = {forms[-1] for forms in held}
    with open(directory / "full.txt") as src, open(corpus, "w") as dst:
        dst.writelines(line for line in src if not out & set(line.split()))
    return corpus, questions, held


@pytest.fixture(scope="module")
def trained(planted) -> dict[int, Word2Vec]:
    corpus, _, _ = planted
    return {sg: Word2Vec(corpus, sg=sg, vector_size=48, epochs=5, workers=2, seed=1, subwords=(3, 6),
                         buckets=100_000) for sg in (0, 1)}


@pytest.mark.parametrize("sg", [0, 1])
def test_training_learns_and_held_out_words_land_near_related_words(planted, trained, sg: int) -> None:
    _, questions, held = planted
    model = trained[sg]
    losses = [epoch["mean_loss"] for epoch in model.history]
    assert losses[-1] < losses[0]
    accuracy, _ = model.wv.evaluate_word_analogies(questions, restrict_vocab=30000)
    # measured, workers=2, seed 1: CBOW 0.68, skip-gram 0.99
    assert accuracy > 0.45
    wv = model.wv
    verbs, nouns = held[:4], held[4:]
    participles = [wv.key_to_index[forms[3]] for forms in planted_groups(3)[2].words if forms[3] in wv]
    for forms in verbs:  # an unseen participle lands among the participles (shared "-ing" n-grams, trained)
        word = forms[-1]
        assert word not in wv and wv[word].shape == (48,)
        sims = wv.most_similar(word, topn=None)
        percentile = np.mean([(sims > sims[i]).mean() for i in participles])
        assert percentile < 0.2  # measured: CBOW <= 0.012, skip-gram <= 0.112
    hits = 0
    for forms in nouns:  # an unseen plural lands on its singular (shared stem n-grams)
        top = [w for w, _ in wv.most_similar(forms[-1], topn=3)]
        hits += forms[0] in top
    assert hits >= 2  # measured: 3 of 4 (the fourth stem, "mab", has 3 letters)


def test_word_vectors_are_fasttext_means_and_oov_uses_initial_buckets(trained) -> None:
    model = trained[0]
    parts = model.fasttext_parts()
    dense = parts.bucket_rows(0, parts.buckets)
    assert dense.shape == (100_000, 48) and dense.dtype == np.float32
    s = model.settings
    for w in (0, 7, len(model.vocab) - 1):
        word = model.vocab.words[w]
        rows = np.vstack([parts.word_rows[w], dense[gensim_fasttext.ft_ngram_hashes(word, 3, 6, s.buckets)]])
        np.testing.assert_allclose(model.wv[word], rows.mean(axis=0), rtol=1e-5, atol=1e-6)
    oov = "blorfingly"
    expected = dense[gensim_fasttext.ft_ngram_hashes(oov, 3, 6, s.buckets)].mean(axis=0)
    np.testing.assert_allclose(model.wv[oov], expected, rtol=1e-5, atol=1e-6)
    # a bucket no word uses holds its initial value, which depends on (seed, bucket) only
    unused = np.setdiff1d(np.arange(100_000), model.subwords.bucket_of_row)[:5]
    other = SubwordIndex.build(["zz"], 3, 6, 100_000)
    np.testing.assert_array_equal(dense[unused], other.initial_bucket_rows(48, s.seed, unused))
    assert np.all(np.abs(dense[unused]) <= 1 / 48)
    np.testing.assert_array_equal(parts.syn1, model.syn1)
    assert (parts.model_name, parts.minn, parts.maxn, parts.dim) == ("cbow", 3, 6, 48)
    assert parts.words == model.vocab.words and parts.word_rows.shape == (len(model.vocab), 48)
    assert parts.ntokens == model.vocab.raw_words >= parts.counts.sum()


def test_fasttext_bin_of_the_parts_gives_gensim_the_same_vectors(trained, tmp_path: Path) -> None:
    """The parts through the .bin writer (sparsembed.subword.fasttext_bin) into gensim: same word and OOV vectors."""
    write_bin = pytest.importorskip("sparsembed.subword.fasttext_bin").write_bin
    model = trained[1]
    write_bin(tmp_path / "model.bin", model.fasttext_parts())
    loaded = gensim_fasttext.load_facebook_model(str(tmp_path / "model.bin"))
    for word in [*model.vocab.words[:3], model.vocab.words[-1], "lideting", "blorfingly"]:
        np.testing.assert_allclose(loaded.wv[word], model.wv[word], rtol=1e-5, atol=1e-6)


def test_unknown_word_without_trained_ngrams_is_a_clear_key_error(trained) -> None:
    model = trained[0]
    index, wv = model.subwords, model.wv
    used = set(index.bucket_of_row.tolist())
    alphabet = "qwxjzvkfyh"
    untrained = next(w for w in (a + b for a in alphabet for b in alphabet)
                     if not used & set(gensim_fasttext.ft_ngram_hashes(w, 3, 6, 100_000)))
    with pytest.raises(KeyError, match="none of its 3 character n-grams was trained"):
        wv[untrained]
    with pytest.raises(UnknownWordError, match="none of its"):
        wv.most_similar(untrained)
    short = Word2Vec([["abcdef", "ghijkl"] * 20] * 5, vector_size=8, min_count=1, epochs=1, workers=1,
                     subwords=(5, 6), buckets=1000)
    with pytest.raises(KeyError, match="has no character n-gram of 5-6 characters"):
        short.wv["ab"]
    plain = Word2Vec([["abcdef", "ghijkl"] * 20] * 5, vector_size=8, min_count=1, epochs=1, workers=1)
    with pytest.raises(KeyError, match="not in the vocabulary"):
        plain.wv["abcdefg"]


def test_storage_is_the_used_buckets_only(trained) -> None:
    model = trained[0]
    index = model.subwords
    n_used = len(index.bucket_of_row)
    assert model.syn0.shape == (len(model.vocab) + n_used, 48) and model.syn1.shape == (len(model.vocab), 48)
    assert n_used < 100_000 and index.rows.max() == model.syn0.shape[0] - 1
    counts = index.row_counts(model.vocab.counts)
    np.testing.assert_array_equal(counts[:len(model.vocab)], model.vocab.counts)
    assert counts.shape == (index.n_rows,) and counts[len(model.vocab):].min() > 0
    assert counts.sum() == int((np.diff(index.offsets) * model.vocab.counts).sum())


# ------------------------------------------------------------------------------ saving, loading, resuming
def _small(**kwargs) -> dict:
    settings = {"vector_size": 16, "epochs": 2, "workers": 1, "seed": 5, "min_count": 3, "subwords": (3, 5),
                "buckets": 20_000}
    settings.update(kwargs)
    return settings


@pytest.mark.parametrize("sg", [0, 1])
def test_stopped_and_resumed_run_equals_uninterrupted_run(planted, tmp_path: Path, sg: int) -> None:
    corpus, _, _ = planted
    whole = Word2Vec(corpus, **_small(sg=sg), out=tmp_path / "whole")
    part = Word2Vec(**_small(sg=sg))
    part.build_vocab(corpus)
    part.train(progress=False, out=tmp_path / "part", stop_after_jobs=4)
    part.save(tmp_path / "part")
    assert not part.done
    resumed = Word2Vec.load(tmp_path / "part", with_corpus=True)
    resumed.train(progress=False, out=tmp_path / "part")
    np.testing.assert_array_equal(whole.syn0, resumed.syn0)
    np.testing.assert_array_equal(whole.syn1, resumed.syn1)
    assert [h["loss"] for h in whole.history] == pytest.approx([h["loss"] for h in resumed.history], rel=1e-12)


def test_save_and_load_round_trip(planted, tmp_path: Path) -> None:
    corpus, _, _ = planted
    model = Word2Vec(corpus, **_small(epochs=1))
    model.save(tmp_path)
    loaded = Word2Vec.load(tmp_path)
    assert loaded.settings == model.settings and (loaded.settings.minn, loaded.settings.maxn) == (3, 5)
    np.testing.assert_array_equal(loaded.syn0, model.syn0)
    np.testing.assert_array_equal(loaded.subwords.bucket_of_row, model.subwords.bucket_of_row)
    np.testing.assert_array_equal(loaded.subwords.rows, model.subwords.rows)
    np.testing.assert_array_equal(loaded.wv["unseenword"], model.wv["unseenword"])
    word = model.vocab.words[3]
    assert loaded.wv.most_similar(word, topn=3) == model.wv.most_similar(word, topn=3)


def test_a_checkpoint_with_sorted_bucket_rows_loads_in_its_own_layout(planted, tmp_path: Path) -> None:
    """Checkpoints written before first-use order hold their bucket rows sorted by bucket: they load (and resume)
    in that layout, with the same vectors."""
    corpus, _, _ = planted
    model = Word2Vec(corpus, **_small(epochs=1))
    expected = model.wv["unseenword"], model.word_vectors().copy()
    n, index = len(model.vocab), model.subwords
    order = np.argsort(index.bucket_of_row)
    model.syn0 = np.concatenate([model.syn0[:n], model.syn0[n + order]])
    model.subwords = SubwordIndex.build(model.vocab.words, 3, 5, 20_000, layout=index.bucket_of_row[order])
    model.save(tmp_path)
    loaded = Word2Vec.load(tmp_path)
    assert np.all(np.diff(loaded.subwords.bucket_of_row) > 0)
    np.testing.assert_array_equal(loaded.wv["unseenword"], expected[0])
    np.testing.assert_array_equal(loaded.word_vectors(), expected[1])


def test_invalid_subword_settings_are_named() -> None:
    with pytest.raises(UserError, match="--subwords"):
        Word2Vec(subwords=(6, 3))
    with pytest.raises(UserError, match="subwords"):
        Word2Vec(subwords=(0, 3))
    with pytest.raises(UserError, match="subwords"):
        Word2Vec(subwords=3)
    with pytest.raises(UserError, match="--buckets"):
        Word2Vec(subwords=(3, 6), buckets=0)


def test_plain_model_has_no_fasttext_parts(planted) -> None:
    model = Word2Vec([["abc", "def"] * 10] * 3, vector_size=8, min_count=1, epochs=1, workers=1)
    with pytest.raises(UserError, match="--subwords 3-6"):
        model.fasttext_parts()


# ---------------------------------------------------------------------------------------------- the CLI
def _one_line_error(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sparsembed: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_cli_train_similar_export_resume_from_a_temporary_directory(planted, tmp_path: Path, monkeypatch,
                                                                     capsys) -> None:
    corpus, _, held = planted
    shutil.copy(corpus, tmp_path / "corpus.txt")
    monkeypatch.chdir(tmp_path)
    argv = ["train", "corpus.txt", "--out", "run", "--subwords", "3-6", "--buckets", "50000", "--dim", "16",
            "--epochs", "1", "--workers", "1", "--min-count", "3", "--quiet"]
    assert main(argv) == 0
    assert {"vectors.bin", "vocab.txt", "model"} <= set(os.listdir("run"))
    model = Word2Vec.load("run")
    assert (model.settings.minn, model.settings.maxn, model.settings.buckets) == (3, 6, 50_000)
    from sparsembed.word2vec.vectors import Vectors

    saved = Vectors.load_word2vec_format("run/vectors.bin")  # the composed vectors, as model.wv has them
    np.testing.assert_array_equal(saved.vectors, model.wv.vectors)
    capsys.readouterr()
    unseen = held[4][-1]
    assert main(["similar", "run", unseen, "-n", "3"]) == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 3 and f"'{unseen}' is not in the vocabulary" in err
    assert main(["similar", "run", model.vocab.words[0], "-n", "2"]) == 0
    assert main(["export", "run", "--format", "text", "--output", "vectors.txt"]) == 0
    np.testing.assert_allclose(Vectors.load_word2vec_format("vectors.txt").vectors, model.wv.vectors, atol=1e-5)
    # fastText's .bin, as gensim loads it: the same vectors in the vocabulary and out of it
    assert main(["export", "run", "--format", "fasttext", "--output", "model.bin"]) == 0
    loaded = gensim_fasttext.load_facebook_vectors("model.bin")
    np.testing.assert_allclose(loaded[model.vocab.words[3]], model.wv[model.vocab.words[3]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded[unseen], model.wv[unseen], rtol=1e-5, atol=1e-6)
    assert main(["export", "run", "--format", "vec"]) == 0
    np.testing.assert_allclose(Vectors.load_word2vec_format("run/vectors.vec").vectors, model.wv.vectors, atol=1e-6)
    err = _one_line_error(["train", "--resume", "run", "--subwords", "2-4"], capsys)
    assert "--subwords" in err
    used = set(model.subwords.bucket_of_row.tolist())
    alphabet = "qwxjzvkfyh"
    untrained = next(w for w in (a + b for a in alphabet for b in alphabet)
                     if not used & set(gensim_fasttext.ft_ngram_hashes(w, 3, 6, 50_000)))
    err = _one_line_error(["similar", "run", untrained], capsys)
    assert "none of its 3 character n-grams was trained" in err


@pytest.mark.parametrize("extra, fragment", [
    (["--subwords", "6-3"], "--subwords 6-3"), (["--subwords", "0-3"], "at least 1"),
    (["--subwords", "3-99"], "too long"), (["--subwords", "three"], "not a range"),
    (["--subwords", "3-6", "--buckets", "0"], "--buckets"), (["--subwords", "3-6", "--buckets", "-5"], "--buckets"),
])
def test_cli_bad_subword_options_exit_2(planted, tmp_path: Path, monkeypatch, capsys, extra, fragment) -> None:
    corpus, _, _ = planted
    monkeypatch.chdir(tmp_path)
    err = _one_line_error(["train", str(corpus), "--out", "run", *extra, "--quiet"], capsys)
    assert fragment in err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ data-parallel
DP_SETTINGS = {"vector_size": 16, "epochs": 2, "workers": 1, "seed": 7, "min_count": 2, "window": 3,
               "subwords": (3, 5), "buckets": 5000}


def _dp_model(corpus: Path) -> Word2Vec:
    model = Word2Vec(**DP_SETTINGS)
    model.settings.job_tokens = 700
    model.build_vocab(str(corpus))
    return model


def _train_subword_ranks(corpus: str, transport: str) -> tuple:
    """One rank: the same subword model trained data-parallel (replicated); its matrices."""
    from sparsembed.dataparallel.options import ExchangeOptions
    from sparsembed.dataparallel.trainer import DataParallelTrainer

    model = _dp_model(Path(corpus))
    trainer = DataParallelTrainer(model, ExchangeOptions(strategy="replicated", mode="auto", values="fp32",
                                                         transport=transport))
    trainer.train(progress=False)
    return model.syn0.copy(), model.syn1.copy()


def _dp_replay(model: Word2Vec, world: int = 2) -> Word2Vec:
    """Single process: each step's ``world`` jobs start from the same matrices (model.run_job, as the trainer
    calls it) and their changes add up."""
    from sparsembed.dataparallel.options import even_job_tokens, step_jobs
    from sparsembed.word2vec.schedule import concurrent_schedule

    s, corpus = model.settings, model.corpus
    per_epoch = int(corpus.sentence_starts[-1])
    s.job_tokens = even_job_tokens(per_epoch, s.job_tokens, world)
    schedule, tables = model.schedule(), model.kernel_tables()
    for epoch in range(s.epochs):
        for first in range(0, schedule.n_jobs, world):
            before = epoch * per_epoch + int(corpus.sentence_starts[schedule.bounds[first]])
            decay = concurrent_schedule(per_epoch * s.epochs, before, world)
            start0, start1 = model.syn0.copy(), model.syn1.copy()
            changes = []
            for rank in range(world):
                model.syn0[:], model.syn1[:] = start0, start1
                for job in step_jobs(first, schedule.n_jobs, 1, rank):
                    model.run_job(schedule, epoch, job, tables, decay)
                changes.append((model.syn0 - start0, model.syn1 - start1))
            model.syn0[:], model.syn1[:] = start0, start1
            model.syn0 += changes[0][0] + changes[1][0]
            model.syn1 += changes[0][1] + changes[1][1]
    return model


def test_two_ranks_equal_single_process_replay(tmp_path: Path) -> None:
    """Bucket rows travel in syn0's exchange like word rows: 2 ranks (gloo, and shared memory) hold what the
    replay computes."""
    from dist_utils import DistPool

    corpus = tmp_path / "corpus.txt"
    generate_corpus(corpus, n_tokens=12_000, seed=11)
    with DistPool(2, timeout=120.0) as pool:
        results = {transport: pool.run(_train_subword_ranks, str(corpus), transport) for transport in ("tcp", "auto")}
    reference = _dp_replay(_dp_model(corpus))
    assert reference.syn0.shape[0] > len(reference.vocab)
    for per_rank in results.values():
        for syn0, syn1 in per_rank:
            np.testing.assert_allclose(syn0, reference.syn0, rtol=0, atol=1e-6)
            np.testing.assert_allclose(syn1, reference.syn1, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(per_rank[0][0], per_rank[1][0])
    initial = _dp_model(corpus).syn0
    assert np.any(reference.syn0[len(reference.vocab):] != initial[len(reference.vocab):])  # buckets trained


def test_cli_interrupted_and_resumed_run_is_byte_identical(planted, tmp_path: Path, monkeypatch, capsys) -> None:
    """`train corpus.txt --out run --subwords 3-5 --workers 1`, stopped as Ctrl-C stops it, then `--resume run`:
    the same vectors.bin and final checkpoint matrices as an uninterrupted run."""
    import signal

    from train_utils import FAST, interrupt_after, train_argv

    corpus, _, _ = planted
    shutil.copy(corpus, tmp_path / "corpus.txt")
    monkeypatch.chdir(tmp_path)
    argv = ["train", "corpus.txt", *train_argv(FAST), "--subwords", "3-5", "--buckets", "30000", "--quiet"]
    assert main([*argv, "--out", "whole"]) == 0
    with monkeypatch.context() as patch:
        interrupt_after(patch, 3)
        assert main([*argv, "--out", "run"]) == 128 + signal.SIGINT
    assert "resume with: sparsembed train --resume run" in capsys.readouterr().err
    assert not Word2Vec.load("run").done
    assert main(["train", "--resume", "run", "--quiet"]) == 0
    assert Path("run/vectors.bin").read_bytes() == Path("whole/vectors.bin").read_bytes()
    whole, resumed = Word2Vec.load("whole"), Word2Vec.load("run")
    np.testing.assert_array_equal(whole.syn0, resumed.syn0)
    np.testing.assert_array_equal(whole.syn1, resumed.syn1)


def test_cli_export_fasttext_of_a_plain_model_is_one_line_exit_2(planted, tmp_path: Path, monkeypatch,
                                                                 capsys) -> None:
    corpus, _, _ = planted
    shutil.copy(corpus, tmp_path / "corpus.txt")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "corpus.txt", "--out", "plain", "--dim", "8", "--epochs", "1", "--workers", "1",
                 "--quiet"]) == 0
    err = _one_line_error(["export", "plain", "--format", "fasttext", "--output", "m.bin"], capsys)
    assert "without subwords" in err and "--subwords 3-6" in err
    assert not os.path.exists("m.bin")
