"""word2vec binary/text, fvocab and npy round trips, gensim interoperability, damaged files."""

from __future__ import annotations

import re

import numpy as np
import pytest
from gensim.models import KeyedVectors

from sparsembed.errors import UserError
from sparsembed.word2vec.formats import (
    read_fvocab,
    read_npy,
    read_word2vec,
    write_fvocab,
    write_npy,
    write_word2vec,
)


@pytest.fixture
def sample() -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(7)
    # Non-ASCII words, and values with spaces/newlines in their bytes, exercise the binary scanner.
    words = ["the", "Zürich", "naïve", "日本", "a_b", "x"] + [f"w{i}" for i in range(200)]
    matrix = (rng.standard_normal((len(words), 13)) * 0.3).astype(np.float32)
    matrix[1, :3] = np.frombuffer(b" \n  \n\n\n\n \n \n", dtype=np.float32)
    matrix[2] = 0.0
    matrix[3, 0] = np.float32(1e-38)
    return words, matrix


@pytest.mark.parametrize("binary", [True, False])
def test_word2vec_round_trip(tmp_path, sample, binary):
    words, matrix = sample
    path = tmp_path / "v.w2v"
    write_word2vec(path, words, matrix, binary=binary)
    for flag in (binary, None):
        got_words, got = read_word2vec(path, binary=flag)
        assert got_words == words
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, matrix)


def test_binary_layout_matches_word2vec_c(tmp_path):
    path = tmp_path / "v.bin"
    write_word2vec(path, ["ab", "c"], np.array([[1.0, 2.0], [3.0, -1.0]], dtype=np.float32))
    expect = b"2 2\nab " + np.array([1, 2], "<f4").tobytes() + b"\nc " + np.array([3, -1], "<f4").tobytes() + b"\n"
    assert path.read_bytes() == expect


def test_empty_matrix(tmp_path):
    path = tmp_path / "empty.bin"
    write_word2vec(path, [], np.zeros((0, 4), dtype=np.float32))
    words, matrix = read_word2vec(path)
    assert words == [] and matrix.shape == (0, 4)


@pytest.mark.parametrize("binary", [True, False])
def test_gensim_reads_ours(tmp_path, sample, binary):
    words, matrix = sample
    path = tmp_path / "v.w2v"
    write_word2vec(path, words, matrix, binary=binary)
    kv = KeyedVectors.load_word2vec_format(str(path), binary=binary)
    assert kv.index_to_key == words
    np.testing.assert_array_equal(kv.vectors, matrix)


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("with_fvocab", [True, False])
def test_we_read_gensim(tmp_path, sample, binary, with_fvocab):
    words, matrix = sample
    kv = KeyedVectors(matrix.shape[1])
    kv.add_vectors(words, matrix)
    counts = np.arange(len(words), 0, -1) * 3  # descending, so gensim keeps this order
    for word, count in zip(words, counts, strict=True):
        kv.set_vecattr(word, "count", int(count))
    path, fvocab = tmp_path / "g.w2v", tmp_path / "g.vocab"
    kv.save_word2vec_format(str(path), binary=binary, fvocab=str(fvocab) if with_fvocab else None)
    got_words, got = read_word2vec(path)  # autodetected; gensim's binary rows lack the trailing newline
    assert got_words == words
    np.testing.assert_array_equal(got, matrix)
    if with_fvocab:
        vocab_words, vocab_counts = read_fvocab(fvocab)
        assert vocab_words == words
        np.testing.assert_array_equal(vocab_counts, counts)


def test_fvocab_round_trip_and_gensim(tmp_path, sample):
    words, matrix = sample
    counts = np.arange(len(words), 0, -1) * 10
    write_fvocab(tmp_path / "f.vocab", words, counts)
    got_words, got_counts = read_fvocab(tmp_path / "f.vocab")
    assert got_words == words and got_counts.dtype == np.int64
    np.testing.assert_array_equal(got_counts, counts)
    write_word2vec(tmp_path / "v.bin", words, matrix)
    kv = KeyedVectors.load_word2vec_format(str(tmp_path / "v.bin"), binary=True, fvocab=str(tmp_path / "f.vocab"))
    assert [kv.get_vecattr(w, "count") for w in words] == counts.tolist()


def test_npy_round_trip(tmp_path, sample):
    words, matrix = sample
    npy, vocab = write_npy(tmp_path / "emb", words, matrix)
    assert npy.endswith("emb.npy") and vocab.endswith("emb.vocab.txt")
    np.testing.assert_array_equal(np.load(npy), matrix)
    assert (tmp_path / "emb.vocab.txt").read_text(encoding="utf-8").split("\n")[:-1] == words
    got_words, got = read_npy(tmp_path / "emb")
    assert got_words == words
    np.testing.assert_array_equal(got, matrix)


def test_duplicate_words_keep_first(tmp_path):
    path = tmp_path / "dup.txt"
    path.write_bytes(b"3 2\na 1 2\nb 3 4\na 5 6\n")
    words, matrix = read_word2vec(path)
    assert words == ["a", "b"]
    np.testing.assert_array_equal(matrix, [[1, 2], [3, 4]])


@pytest.mark.parametrize("binary", [True, False])
def test_truncated_files(tmp_path, sample, binary):
    words, matrix = sample
    path = tmp_path / "v.w2v"
    write_word2vec(path, words, matrix, binary=binary)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 12):
        path.write_bytes(data[:cut])
        with pytest.raises(UserError, match=str(path)):
            read_word2vec(path, binary=binary)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "first line"),
        (b"garbage\n", "first line"),
        (b"2 x\n", "first line"),
        (b"1 3\nword 1 2\n", "values"),
        (b"1 2\nword 1 2 3\n", "values"),
        (b"1 2\nword 1 abc\n", "abc"),
        (b"2 2\na 1 2\n", "promises 2 rows"),
        (b"1 2\na 1 2\nb 3 4\n", "promises 1 rows"),
        (b"1 2\n\xff\xfe 1 2\n", "not UTF-8"),
        (b"1 2\na nan 2\n", "NaN"),
    ],
)
def test_damaged_text(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        read_word2vec(path)


def test_damaged_binary(tmp_path):
    vec = np.array([1, 2], "<f4").tobytes()
    cases = {
        b"2 2\na " + vec + b"\n": "row 2 of 2",  # header promises more rows
        b"1 2\na " + vec + b"\nb " + vec + b"\n": "continues after",  # header promises fewer
        b"1 3\na " + vec + b"\n": "row 1 of 1",  # dimension too large
        b"1 2\n\xff\xfe " + vec + b"\n": "not UTF-8",
        b"1 2\na " + np.array([np.inf, 0], "<f4").tobytes(): "NaN or infinite",
    }
    path = tmp_path / "bad.bin"
    for content, message in cases.items():
        path.write_bytes(content)
        with pytest.raises(UserError, match=message):
            read_word2vec(path, binary=True)
    path.write_bytes(b"1 2\na " + np.array([np.nan, 0], "<f4").tobytes())
    assert np.isnan(read_word2vec(path, binary=True, check_finite=False)[1][0, 0])


def test_missing_file_and_bad_fvocab(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        read_word2vec(tmp_path / "nope.bin")
    (tmp_path / "f.vocab").write_text("a 3\nb three\n", encoding="utf-8")
    with pytest.raises(UserError, match="line 2"):
        read_fvocab(tmp_path / "f.vocab")


@pytest.mark.parametrize("word", ["two words", "new\nline", "", "tab\t", "nul\x00"])
def test_unstorable_words_rejected(tmp_path, word):
    with pytest.raises(UserError, match="cannot be stored"):
        write_word2vec(tmp_path / "v.bin", ["ok", word], np.zeros((2, 2), dtype=np.float32))
    assert not (tmp_path / "v.bin").exists()


def test_shape_mismatch_rejected(tmp_path):
    with pytest.raises(UserError, match="one matrix row per word"):
        write_word2vec(tmp_path / "v.bin", ["a"], np.zeros((2, 2), dtype=np.float32))


def _binary_rows(rows: list[tuple[str, np.ndarray]], header_dim: int, end: bytes) -> bytes:
    """A binary file by hand: any header, rows of any length, word2vec C's "\\n" or gensim's nothing after each."""
    body = b"".join(w.encode() + b" " + v.astype("<f4").tobytes() + end for w, v in rows)
    return f"{len(rows)} {header_dim}\n".encode() + body


@pytest.mark.parametrize("end", [b"\n", b""])
@pytest.mark.parametrize("header_dim, row_dim", [(50, 100), (100, 50)])
def test_binary_header_dimension_disagrees_with_rows(tmp_path, end, header_dim, row_dim):
    rng = np.random.default_rng(8)
    rows = [(f"w{i}", rng.standard_normal(row_dim)) for i in range(12)]
    path = tmp_path / "v.bin"
    path.write_bytes(_binary_rows(rows, header_dim, end))
    expect = (f"row 1 ('w0') holds {row_dim} float32 values ({4 * row_dim} bytes) but the header says "
              f"dimension {header_dim}")
    for flag in (True, None):
        with pytest.raises(UserError, match=re.escape(expect)):
            read_word2vec(path, binary=flag)


@pytest.mark.parametrize("end", [b"\n", b""])
def test_binary_row_of_another_length_is_named(tmp_path, end):
    rng = np.random.default_rng(9)
    rows = [(f"w{i}", rng.standard_normal(60 if i == 4 else 50)) for i in range(12)]
    path = tmp_path / "v.bin"
    path.write_bytes(_binary_rows(rows, 50, end))
    with pytest.raises(UserError, match=re.escape("row 5 ('w4') holds 60 float32 values (240 bytes) but the header")):
        read_word2vec(path)


@pytest.mark.parametrize("header_dim, row_dim", [(50, 100), (100, 50)])
def test_text_header_dimension_disagrees_with_rows(tmp_path, header_dim, row_dim):
    rng = np.random.default_rng(10)
    path = tmp_path / "v.txt"
    write_word2vec(path, [f"w{i}" for i in range(12)], rng.standard_normal((12, row_dim)), binary=False)
    data = path.read_bytes()
    path.write_bytes(f"12 {header_dim}".encode() + data[data.index(b"\n"):])
    expect = f"row 1 (line 2) has {row_dim} values but the header says dimension {header_dim}"
    for flag in (False, None):  # None: detected as text although the row is not the header's length
        with pytest.raises(UserError, match=re.escape(expect)):
            read_word2vec(path, binary=flag)
