"""Vectors against gensim 4.4's KeyedVectors: neighbours, analogy and word-pair evaluations, word2vec I/O."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from gensim.models import KeyedVectors, Word2Vec
from gensim.test.utils import datapath
from scipy import stats

from sparsembed.errors import UserError
from sparsembed.word2vec.evaluate import _average_ranks, _correlation_p, _pearson
from sparsembed.word2vec.vectors import UnknownWordError, Vectors

SECTIONS = ("capital-common-countries", "family", "gram3-comparative", "gram7-past-tense")
PER_SECTION = 120


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> str:
    """A trimmed questions-words.txt (gensim needs ~20 s for the whole file), plus an all-OOV section."""
    lines, keep = [], 0
    for line in open(datapath("questions-words.txt"), encoding="utf-8"):
        if line.startswith(": "):
            keep = PER_SECTION if line[2:].strip() in SECTIONS else 0
            if keep:
                lines.append(line)
        elif keep:
            lines.append(line)
            keep -= 1
    lines += [": made-up\n", "qqq rrr sss ttt\n"]
    path = tmp_path_factory.mktemp("analogies") / "questions.txt"
    path.write_text("".join(lines), encoding="utf-8")
    return str(path)


def _question_words(path: str) -> list[str]:
    words = dict.fromkeys(w for line in open(path, encoding="utf-8") if not line.startswith(":") for w in line.split())
    return [w for w in words if w not in {"qqq", "rrr", "sss", "ttt"}]


@pytest.fixture(scope="module")
def planted(questions) -> tuple[list[str], np.ndarray]:
    """Random vectors where a third of the analogies hold approximately, with lower-case variants
    (so case-insensitive evaluation must resolve duplicates) and some filler words and zero rows."""
    rng = np.random.default_rng(3)
    base = _question_words(questions)
    words = base + [w.lower() for w in base if w.lower() != w] + [f"filler{i}" for i in range(1500)]
    rng.shuffle(words)
    index = {w: i for i, w in enumerate(words)}
    matrix = rng.standard_normal((len(words), 24)).astype(np.float32)
    for line in open(questions, encoding="utf-8").readlines()[1::3]:
        parts = line.split()
        if len(parts) == 4 and all(w in index for w in parts):
            a, b, c, d = (index[w] for w in parts)
            matrix[d] = matrix[c] + matrix[b] - matrix[a] + 0.4 * rng.standard_normal(24)
            if parts[3].lower() in index:
                matrix[index[parts[3].lower()]] = matrix[d] + 0.2 * rng.standard_normal(24)
    matrix[index["filler7"]] = 0.0
    return words, matrix


@pytest.fixture(scope="module")
def trained(questions) -> KeyedVectors:
    """A tiny gensim model trained on a corpus generated from the analogy pairs."""
    rng = np.random.default_rng(5)
    pairs, section = [], 0
    for line in open(questions, encoding="utf-8"):
        if line.startswith(":"):
            section += 1
        else:
            words = line.split()
            pairs += [(section, words[0], words[1]), (section, words[2], words[3])]
    # x and y of a pair share an entity token and differ by a per-section role token, so y - x is
    # roughly the same offset across a section: enough structure for some analogies to come out right.
    entity = {}
    sentences = []
    for _ in range(3):
        for k, (section, x, y) in enumerate(pairs):
            ent = entity.setdefault(x, f"e{len(entity)}")
            sentences.append([f"r{section}a", x, ent, *rng.choice(["f1", "f2", "f3", "f4"], 2)])
            sentences.append([f"r{section}b", y, ent, *rng.choice(["f1", "f2", "f3", "f4"], 2)])
            if k % 4 == 0:
                sentences.append([f"r{section}b", y.lower(), ent])
    model = Word2Vec(sentences, vector_size=20, min_count=1, workers=1, seed=1, epochs=5, window=2, sg=1)
    return model.wv


def _gensim_kv(words, matrix) -> KeyedVectors:
    kv = KeyedVectors(matrix.shape[1])
    kv.add_vectors(list(words), np.asarray(matrix, dtype=np.float32))
    return kv


def _assert_same_analogies(ours, gensim_result) -> None:
    """gensim's shape and values: (score, sections), each section's correct / incorrect question tuples."""
    assert isinstance(ours, tuple) and len(ours) == 2
    score, sections = gensim_result
    assert ours[1] == sections
    assert ours[0] == pytest.approx(score, abs=1e-12) and isinstance(ours[0], float)


def _assert_report_agrees(report: dict, gensim_result) -> None:
    """analogy_report carries the same counts as the gensim-shaped result, in percent."""
    score, sections = gensim_result
    *per_section, total = sections
    assert [(s["section"], s["correct"], s["incorrect"]) for s in report["sections"]] == [
        (s["section"], len(s["correct"]), len(s["incorrect"])) for s in per_section
    ]
    assert (report["correct"], report["incorrect"]) == (len(total["correct"]), len(total["incorrect"]))
    assert report["accuracy_pct"] == pytest.approx(100 * score)


@pytest.mark.parametrize("case_insensitive", [True, False])
@pytest.mark.parametrize("restrict_vocab", [300_000, 900])
@pytest.mark.parametrize("dummy4unknown", [False, True])
def test_analogies_match_gensim_planted(questions, planted, case_insensitive, restrict_vocab, dummy4unknown):
    words, matrix = planted
    kwargs = dict(restrict_vocab=restrict_vocab, case_insensitive=case_insensitive, dummy4unknown=dummy4unknown)
    ours = Vectors(words, matrix).evaluate_word_analogies(questions, **kwargs)
    theirs = _gensim_kv(words, matrix).evaluate_word_analogies(questions, **kwargs)
    _assert_same_analogies(ours, theirs)
    report = Vectors(words, matrix).analogy_report(questions, **kwargs)
    _assert_report_agrees(report, theirs)
    assert report["correct"] > 0 and 0 < report["oov_pct"] < 100


@pytest.mark.parametrize("case_insensitive", [True, False])
@pytest.mark.parametrize("restrict_vocab", [300_000, 250])
def test_analogies_match_gensim_trained(questions, trained, case_insensitive, restrict_vocab):
    ours = Vectors(trained.index_to_key, trained.vectors).evaluate_word_analogies(
        questions, restrict_vocab=restrict_vocab, case_insensitive=case_insensitive
    )
    theirs = trained.evaluate_word_analogies(
        questions, restrict_vocab=restrict_vocab, case_insensitive=case_insensitive
    )
    _assert_same_analogies(ours, theirs)


def test_analogy_report_fields(questions, planted):
    words, matrix = planted
    result = Vectors(words, matrix).analogy_report(questions)
    sections = {s["section"]: s for s in result["sections"]}
    assert "Total accuracy" not in sections  # the totals are the report's own fields
    semantic = [sections[name] for name in ("capital-common-countries", "family", "made-up")]
    syntactic = [sections[name] for name in ("gram3-comparative", "gram7-past-tense")]
    for group, key in ((semantic, "semantic_pct"), (syntactic, "syntactic_pct")):
        right = sum(s["correct"] for s in group)
        assert result[key] == pytest.approx(100 * right / sum(s["correct"] + s["incorrect"] for s in group))
    assert sections["made-up"] == {"section": "made-up", "correct": 0, "incorrect": 0, "accuracy_pct": 0.0}
    assert result["questions"] == 4 * PER_SECTION + 1
    answered = result["correct"] + result["incorrect"]
    assert result["oov_pct"] == pytest.approx(100 * (1 - answered / result["questions"]))
    # One unit: every share is a percent and says so in its name; no fraction-valued key is left.
    assert {k for k in result if k.endswith("_pct")} == {"accuracy_pct", "semantic_pct", "syntactic_pct", "oov_pct"}
    assert set(result) - {k for k in result if k.endswith("_pct")} == {"questions", "correct", "incorrect", "sections"}
    json.dumps(result)


def test_full_questions_file_smoke(trained):
    """All 19,544 questions (too slow to compare with gensim here): runs and counts every question."""
    vectors = Vectors(trained.index_to_key, trained.vectors)
    score, sections = vectors.evaluate_word_analogies(datapath("questions-words.txt"))
    assert len(sections) == 15 and sections[-1]["section"] == "Total accuracy"
    assert 0 <= score <= 1
    assert vectors.analogy_report(datapath("questions-words.txt"))["questions"] == 19544


@pytest.mark.parametrize("case_insensitive", [True, False])
@pytest.mark.parametrize("dummy4unknown", [False, True])
@pytest.mark.parametrize("name", ["wordsim353.tsv", "simlex999.txt"])
def test_word_pairs_match_gensim(name, case_insensitive, dummy4unknown):
    path = datapath(name)
    pair_words = dict.fromkeys(
        w for line in open(path, encoding="utf-8") if not line.startswith("#") for w in line.split("\t")[:2]
    )
    words = [w for i, w in enumerate(pair_words) if i % 9]  # some pairs out of vocabulary
    words += [w.upper() for w in words[::5]]  # case variants, resolved to the first occurrence
    rng = np.random.default_rng(11)
    matrix = rng.standard_normal((len(words), 16)).astype(np.float32)
    kwargs = dict(restrict_vocab=len(words) - 40, case_insensitive=case_insensitive, dummy4unknown=dummy4unknown)
    ours = Vectors(words, matrix).evaluate_word_pairs(path, **kwargs)
    pearson, spearman, oov = _gensim_kv(words, matrix).evaluate_word_pairs(path, **kwargs)
    # gensim's shape: ((pearson, p), (spearman, p), oov_ratio in percent), as plain tuples of floats.
    (our_r, our_r_p), (our_rho, our_rho_p), our_oov = ours
    assert our_r == pytest.approx(pearson.statistic, abs=1e-6)
    assert our_r_p == pytest.approx(pearson.pvalue, rel=1e-6)
    assert our_rho == pytest.approx(spearman.statistic, abs=1e-6)
    assert our_rho_p == pytest.approx(spearman.pvalue, rel=1e-6)
    assert our_oov == pytest.approx(oov)
    assert all(isinstance(x, float) for x in (our_r, our_r_p, our_rho, our_rho_p, our_oov))
    report = Vectors(words, matrix).pair_report(path, **kwargs)
    assert (report["pearson"], report["pearson_p"], report["spearman"], report["spearman_p"], report["oov_pct"]) == (
        our_r, our_r_p, our_rho, our_rho_p, our_oov)
    assert 0 < report["oov_pct"] < 100 and report["pairs_used"] > 50
    assert (report["pairs_used"] == report["pairs"]) == dummy4unknown  # else pairs with an unknown word are left out


def test_spearman_ties_match_scipy(tmp_path):
    rng = np.random.default_rng(2)
    words = [f"w{i}" for i in range(40)]
    lines = [f"w{rng.integers(40)}\tw{rng.integers(40)}\t{rng.integers(0, 4)}" for _ in range(200)]
    (tmp_path / "pairs.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    matrix = rng.standard_normal((40, 8)).astype(np.float32)
    ours = Vectors(words, matrix).pair_report(tmp_path / "pairs.tsv")
    vectors = Vectors(words, matrix)
    gold = [float(line.split("\t")[2]) for line in lines]
    normed = vectors.get_normed_vectors().astype(np.float64)  # the same float64 products as ours
    model = [normed[vectors.key_to_index[a]] @ normed[vectors.key_to_index[b]] for a, b, _ in map(str.split, lines)]
    spearman, pearson = stats.spearmanr(gold, model), stats.pearsonr(gold, model)
    assert ours["spearman"] == pytest.approx(spearman.statistic, abs=1e-9)
    assert ours["pearson"] == pytest.approx(pearson.statistic, abs=1e-9)
    assert ours["spearman_p"] == pytest.approx(spearman.pvalue, rel=1e-6)
    assert ours["pearson_p"] == pytest.approx(pearson.pvalue, rel=1e-6)
    values = rng.integers(0, 5, 300).astype(float)  # heavy ties
    np.testing.assert_allclose(_average_ranks(values), stats.rankdata(values))


@pytest.fixture(scope="module")
def random_vectors() -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(9)
    words = [f"w{i}" for i in range(3000)]
    matrix = rng.standard_normal((3000, 32)).astype(np.float32)
    matrix[17] = 0.0
    return words, matrix


@pytest.mark.parametrize(
    "positive, negative, restrict",
    [
        (["w1"], [], None),
        ("w5", [], None),
        (["w1", "w2"], ["w3"], None),
        ([], ["w10"], None),
        (["w4", "w8"], ["w15", "w16"], 500),
        ([("w1", 2.0), "w9"], [("w3", -0.5)], None),
    ],
)
def test_most_similar_matches_gensim(random_vectors, positive, negative, restrict):
    words, matrix = random_vectors
    ours = Vectors(words, matrix).most_similar(positive, negative, topn=15, restrict_vocab=restrict)
    theirs = _gensim_kv(words, matrix).most_similar(positive, negative, topn=15, restrict_vocab=restrict)
    assert [w for w, _ in ours] == [w for w, _ in theirs]
    np.testing.assert_allclose([s for _, s in ours], [s for _, s in theirs], atol=1e-5)


def test_most_similar_by_vector_and_all(random_vectors):
    words, matrix = random_vectors
    vectors, kv = Vectors(words, matrix), _gensim_kv(words, matrix)
    query = matrix[3] + matrix[4]
    assert [w for w, _ in vectors.most_similar(query, topn=5)] == [w for w, _ in kv.most_similar(query, topn=5)]
    scores = vectors.most_similar("w3", topn=None)
    assert scores.shape == (3000,) and scores[17] == 0.0
    np.testing.assert_allclose(np.delete(scores, 17), np.delete(kv.most_similar("w3", topn=None), 17), atol=1e-5)
    assert vectors.most_similar("w3", topn=0) == []


def test_lookup_and_similarity(random_vectors):
    words, matrix = random_vectors
    vectors, kv = Vectors(words, matrix), _gensim_kv(words, matrix)
    assert len(vectors) == 3000 and vectors.vector_size == 32 and "w5" in vectors and "nope" not in vectors
    np.testing.assert_array_equal(vectors["w5"], matrix[5])
    np.testing.assert_array_equal(vectors[["w5", "w0"]], matrix[[5, 0]])
    assert vectors.similarity("w1", "w2") == pytest.approx(kv.similarity("w1", "w2"), abs=1e-6)
    normed = vectors.get_normed_vectors()
    assert not normed[17].any()
    np.testing.assert_allclose(np.linalg.norm(np.delete(normed, 17, axis=0), axis=1), 1.0, rtol=1e-6)
    assert normed is vectors.get_normed_vectors()
    with pytest.raises(KeyError):
        vectors["nope"]
    with pytest.raises(UserError, match="nope"):
        vectors.most_similar("nope")


def test_constructor_checks():
    with pytest.raises(UserError, match="more than once"):
        Vectors(["a", "b", "a"], np.zeros((3, 2)))
    with pytest.raises(UserError, match="one matrix row per word"):
        Vectors(["a"], np.zeros((2, 2)))
    with pytest.raises(UserError, match="counts"):
        Vectors(["a"], np.zeros((1, 2)), counts=[1, 2])
    assert issubclass(UnknownWordError, KeyError)


@pytest.mark.parametrize("binary", [True, False])
def test_save_load_word2vec_format(tmp_path, random_vectors, binary):
    words, matrix = random_vectors
    counts = np.arange(3000, 0, -1) * 2
    Vectors(words, matrix, counts).save_word2vec_format(tmp_path / "v", binary=binary, fvocab=tmp_path / "v.vocab")
    loaded = Vectors.load_word2vec_format(tmp_path / "v", fvocab=tmp_path / "v.vocab")
    assert loaded.index_to_key == words
    np.testing.assert_array_equal(loaded.vectors, matrix)
    np.testing.assert_array_equal(loaded.counts, counts)
    kv = KeyedVectors.load_word2vec_format(str(tmp_path / "v"), binary=binary, fvocab=str(tmp_path / "v.vocab"))
    assert kv.index_to_key == words and kv.get_vecattr("w10", "count") == counts[10]
    np.testing.assert_array_equal(kv.vectors, matrix)
    with pytest.raises(UserError, match="no word counts"):
        Vectors(words, matrix).save_word2vec_format(tmp_path / "w", fvocab=tmp_path / "w.vocab")


def test_evaluate_is_json(tmp_path, questions, planted):
    words, matrix = planted
    pairs = str(tmp_path / "pairs.tsv")
    with open(pairs, "w", encoding="utf-8") as out:
        out.write(
            "".join(f"{a}\t{b}\t{i % 4}\n" for i, (a, b) in enumerate(zip(words[:50], words[50:100], strict=True)))
        )
    result = Vectors(words, matrix).evaluate(analogies=questions, pairs=[pairs], restrict_vocab=1000)
    assert result["restrict_vocab"] == 1000 and "restrict_vocab" not in result["analogies"]
    assert set(result["pairs"]) == {pairs}
    assert result["analogies"] == Vectors(words, matrix).analogy_report(questions, restrict_vocab=1000)
    assert result["pairs"][pairs] == Vectors(words, matrix).pair_report(pairs, restrict_vocab=1000)
    json.dumps(result)
    # One restrict_vocab: the number of words that took part, at most the vocabulary.
    everything = Vectors(words, matrix).evaluate(restrict_vocab=10**6)
    assert everything["restrict_vocab"] == len(words) and everything["analogies"] is None


def test_correlation_p_values_match_scipy_at_the_edges():
    """Few pairs, strong, perfect and zero correlations, tiny p-values: the same as scipy's."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal(500)
    cases = [tuple(rng.standard_normal((2, n))) for n in (3, 4, 7, 40, 2000)]
    cases += [(x, x), (x, -x), (x[:60], x[:60] + rng.standard_normal(60)), (x[:9], np.r_[x[1:9], x[0]])]
    for gold, model in cases:
        rho = _pearson(_average_ranks(gold), _average_ranks(model))
        for r, theirs in ((_pearson(gold, model), stats.pearsonr(gold, model)), (rho, stats.spearmanr(gold, model))):
            assert r == pytest.approx(theirs.statistic, abs=1e-9)
            assert _correlation_p(r, len(gold)) == pytest.approx(theirs.pvalue, rel=1e-6, abs=1e-300)


def test_to_gensim(random_vectors):
    words, matrix = random_vectors
    counts = np.arange(3000, 0, -1)
    vectors = Vectors(words, matrix, counts)
    kv = vectors.to_gensim()
    assert isinstance(kv, KeyedVectors) and kv.index_to_key == words and kv.vector_size == 32
    np.testing.assert_array_equal(kv.vectors, matrix)
    assert kv.get_vecattr("w10", "count") == counts[10]
    assert [w for w, _ in kv.most_similar("w3", topn=8)] == [w for w, _ in vectors.most_similar("w3", topn=8)]
    kv.vectors[0] += 1  # a copy: gensim's object owns its rows
    assert not np.array_equal(kv.vectors[0], vectors.vectors[0])
    assert "count" not in Vectors(words, matrix).to_gensim().expandos


def test_to_gensim_without_gensim(monkeypatch, random_vectors):
    monkeypatch.setitem(sys.modules, "gensim", None)  # what an environment without gensim raises: ImportError
    monkeypatch.setitem(sys.modules, "gensim.models", None)
    with pytest.raises(UserError, match="pip install gensim"):
        Vectors(*random_vectors).to_gensim()


@pytest.mark.parametrize(
    "content, message",
    [
        ("a b c d\n", "line 1: a question before"),
        (": s\na b c d\na b c\n", "line 3: expected 4 words"),
        (": s\n\n", "no analogy questions"),
    ],
)
def test_bad_analogy_files(tmp_path, content, message):
    path = tmp_path / "q.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        Vectors(["a", "b", "c", "d"], np.eye(4)).evaluate_word_analogies(path)
    with pytest.raises(UserError, match="cannot read"):
        Vectors(["a"], np.eye(1)).evaluate_word_analogies(tmp_path / "missing.txt")


@pytest.mark.parametrize(
    "content, message",
    [
        ("# comment\na\tb\t1.0\na\tb\n", "line 3"),
        ("a\tb\tlots\n", "line 1"),
        ("x\ty\t1\n", "outside the vocabulary"),
        ("# only a comment\n", "no word pairs"),
    ],
)
def test_bad_pair_files(tmp_path, content, message):
    path = tmp_path / "p.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        Vectors(["a", "b"], np.eye(2)).evaluate_word_pairs(path)
