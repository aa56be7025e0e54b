"""The generated demo corpus: deterministic, the size asked for, planted words frequent enough, questions
in gensim's format, and analogies that a real word2vec (gensim) actually learns from it; and ``sparsembed demo``:
what it keeps, what it says the words are, and the commands it suggests."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from sparsembed.cli import main
from sparsembed.errors import UserError
from sparsembed.word2vec import demo, planted


def _parse_questions(path: Path) -> dict[str, list[list[str]]]:
    """Parse questions-words.txt the way gensim does: ': name' opens a section, other lines are 4 words."""
    sections: dict[str, list[list[str]]] = {}
    current = None
    for line in path.read_text("utf-8").splitlines():
        if line.startswith(": "):
            current = line[2:].strip()
            assert current not in sections, f"duplicate section {current}"
            sections[current] = []
        else:
            assert current is not None, "question before the first section"
            words = line.split()
            assert len(words) == 4, line
            sections[current].append(words)
    return sections


@pytest.mark.parametrize("seed", [0, 7])
def test_same_seed_same_bytes(tmp_path: Path, seed: int) -> None:
    a, b, other = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"
    demo.generate_corpus(a, n_tokens=50_000, seed=seed)
    demo.generate_corpus(b, n_tokens=50_000, seed=seed)
    demo.generate_corpus(other, n_tokens=50_000, seed=seed + 1)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != other.read_bytes()
    qa, qb = tmp_path / "qa.txt", tmp_path / "qb.txt"
    assert demo.write_analogies(qa, seed=seed) == demo.write_analogies(qb, seed=seed)
    assert qa.read_bytes() == qb.read_bytes()
    assert demo.planted_queries(seed) == demo.planted_queries(seed)


@pytest.mark.parametrize("n_tokens", [1, 8, 9, 13, 14, 1_000, 54_321])
def test_exact_size_and_line_shape(tmp_path: Path, n_tokens: int) -> None:
    path = tmp_path / "corpus.txt"
    demo.generate_corpus(path, n_tokens=n_tokens, seed=3)
    text = path.read_text("utf-8")
    assert text.endswith("\n")
    lines = text.split("\n")[:-1]
    assert sum(len(line.split(" ")) for line in lines) == n_tokens  # single spaces, no empty tokens
    assert all(line and line == line.strip() and line == line.lower() for line in lines)
    assert all(len(line.split()) <= 13 for line in lines)
    assert not list(tmp_path.glob(".*.tmp")), "atomic_write left a temporary file"


def test_bad_size_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        demo.generate_corpus(tmp_path / "c.txt", n_tokens=0)
    with pytest.raises(UserError):
        demo.run_demo(out_dir=tmp_path, model="glove", train=lambda *a: None)


def test_default_corpus_fast_and_every_question_word_frequent(tmp_path: Path) -> None:
    corpus, questions = tmp_path / "corpus.txt", tmp_path / "questions.txt"
    t0 = time.perf_counter()
    demo.generate_corpus(corpus)  # the default size, as `make demo` writes it
    elapsed = time.perf_counter() - t0
    assert elapsed < 20, f"generating 3M tokens took {elapsed:.1f} s; it should take ~2 s"
    counts = Counter(corpus.read_text("utf-8").split())
    assert sum(counts.values()) == 3_000_000
    # Looks like text: a Zipf head of function words and a long tail.
    assert counts.most_common(1)[0][0] == "the"
    assert len(counts) > 10_000

    n = demo.write_analogies(questions)
    sections = _parse_questions(questions)
    assert n == sum(len(qs) for qs in sections.values()) > 5_000
    words = {w for qs in sections.values() for q in qs for w in q}
    assert min(counts[w] for w in words) >= 200
    assert all(counts[w] >= 200 for w in demo.planted_queries())


def test_small_corpus_still_reaches_min_count(tmp_path: Path) -> None:
    corpus, questions = tmp_path / "corpus.txt", tmp_path / "questions.txt"
    demo.generate_corpus(corpus, n_tokens=30_000, seed=5)
    demo.write_analogies(questions, seed=5)
    counts = Counter(corpus.read_text("utf-8").split())
    words = {w for qs in _parse_questions(questions).values() for q in qs for w in q}
    assert min(counts[w] for w in words) >= 5


def test_questions_are_planted_analogies(tmp_path: Path) -> None:
    path = tmp_path / "questions.txt"
    demo.write_analogies(path, seed=2)
    sections = _parse_questions(path)
    assert {"family", "capital-world", "currency", "gram8-plural", "gram7-past-tense"} <= set(sections)
    assert ["king", "queen", "man", "woman"] in sections["family"]
    for name, qs in sections.items():
        assert qs, name
        assert len({tuple(q) for q in qs}) == len(qs), f"duplicates in {name}"
        # Within a section, every a->b pair is one relation: the same pair always appears with each other.
        pairs = {(a, b) for a, b, _, _ in qs} | {(c, d) for _, _, c, d in qs}
        sources = [a for a, _ in pairs]
        assert len(set(sources)) == len(pairs), f"{name}: a word maps to two different answers"
        for a, b, c, d in qs:
            assert len({a, b, c, d}) == 4


def test_questions_parse_in_gensim(tmp_path: Path) -> None:
    gensim = pytest.importorskip("gensim")
    import numpy as np

    path = tmp_path / "questions.txt"
    n = demo.write_analogies(path)
    sections = _parse_questions(path)
    words = sorted({w for qs in sections.values() for q in qs for w in q})
    kv = gensim.models.KeyedVectors(vector_size=8)
    kv.add_vectors(words, np.random.default_rng(0).standard_normal((len(words), 8)))
    _, result = kv.evaluate_word_analogies(str(path))
    by_name = {s["section"]: len(s["correct"]) + len(s["incorrect"]) for s in result}
    assert by_name.pop("Total accuracy") == n  # no question skipped as malformed or out of vocabulary
    assert by_name == {name: len(qs) for name, qs in sections.items()}


@pytest.mark.slow
def test_gensim_learns_the_planted_analogies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tenth of the default corpus. Over seeds 0-5 CBOW on it scored 0.90-0.94 in total, >= 0.83 in every
    section, and >= 37 of the 42 listed neighbours were in the query's group (at full size: 100% and all
    42); the thresholds leave a wide margin for gensim's thread nondeterminism."""
    gensim = pytest.importorskip("gensim")

    def train(corpus_path: str, sg: int, workers: int, seed: int) -> object:
        return gensim.models.Word2Vec(corpus_file=corpus_path, sg=sg, workers=workers, seed=seed, epochs=5)

    result = demo.run_demo(out_dir=tmp_path, model="cbow", seed=1, train=train, n_tokens=300_000)
    assert result["accuracy"] > 0.6, result["sections"]
    assert min(result["sections"].values()) > 0.4, result["sections"]
    assert set(result["neighbours"]) == set(demo.planted_queries(1))
    # Readable neighbours: mostly words of the query's own group (forms of its concept, same-attribute
    # siblings), not background words.
    group_of = {w: g.name for g in planted.planted_groups(1) for forms in g.words for w in forms}
    near = result["neighbours"]
    same = sum(group_of.get(w) == group_of[query] for query in near for w, _ in near[query])
    assert same >= 0.6 * sum(len(v) for v in near.values()), near
    out = capsys.readouterr().out
    assert "planted-analogy accuracy" in out and "family" in out
    assert (tmp_path / "corpus.txt").exists() and (tmp_path / "questions.txt").exists()
    assert result["out_dir"] == str(tmp_path)


def _try_next(out: str) -> list[list[str]]:
    """The commands the demo suggests at its end, as argument lists for ``main`` (the program name dropped)."""
    import shlex

    lines = out.split("try next:\n", 1)[1].splitlines()
    return [shlex.split(line.split("#")[0])[1:] for line in lines if line.startswith("  ")]


def test_demo_out_keeps_what_train_writes_and_what_to_try_works(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--out", "demo", "--tokens", "30000", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert {p.name for p in Path("demo").iterdir()} >= {"corpus.txt", "questions.txt", "vectors.bin", "vocab.txt",
                                                      "metrics.jsonl", "model"}
    assert "kept in demo: corpus.txt, questions.txt, vectors.bin, vocab.txt, metrics.jsonl, model/" in out
    # The legend: what the made-up words are, with an example of each group.
    nation = planted.planted_groups(0)[1]
    assert f"nation: 30 made-up nations, e.g. {nation.words[0][0]} (country) / {nation.words[0][1]} (capital)" in out
    assert "gender: 24 real English pairs, e.g. king (male) / queen (female)" in out
    commands = _try_next(out)
    assert [c[0] for c in commands] == ["similar", "eval", "report", "train"]
    assert commands[3][:4] == ["train", "demo/corpus.txt", "--out", "demo-skipgram"]
    for command in commands:  # every suggested command runs as printed, from where the demo ran
        assert main(command) == 0, command
    assert Path("demo/report-training.png").exists() and Path("demo-skipgram/vectors.bin").exists()

    # A second demo into the same place would overwrite a model: refused before anything is written.
    corpus = Path("demo/corpus.txt").read_bytes()
    capsys.readouterr()
    assert main(["demo", "--out", "demo", "--tokens", "20000", "--seed", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sparsembed: error: demo already holds a trained model") and len(err.splitlines()) == 1
    assert "--force" in err
    assert Path("demo/corpus.txt").read_bytes() == corpus
    # --force replaces it, as train --force does: a new corpus and a model trained on it.
    assert main(["demo", "--out", "demo", "--tokens", "30000", "--seed", "3", "--workers", "1", "--force"]) == 0
    assert Path("demo/corpus.txt").read_bytes() != corpus
    assert main(["similar", "demo", planted.planted_queries(3)[0]]) == 0


def test_demo_without_out_keeps_nothing_and_says_how_to_keep(tmp_path: Path, monkeypatch, capsys) -> None:
    import tempfile

    monkeypatch.chdir(tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert main(["demo", "--tokens", "30000", "--workers", "1", "--model", "skipgram"]) == 0
    out = capsys.readouterr().out
    assert str(scratch) not in out and "sparsembed-demo-" not in out  # no path that is gone when the demo ends
    assert "in a temporary directory, deleted at the end" in out and "nothing was kept" in out
    assert "sparsembed demo --out sparsembed-demo --model skipgram --tokens 30000" in out
    assert not list(scratch.iterdir()) and not list(tmp_path.glob("sparsembed-demo*"))

