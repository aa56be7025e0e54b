"""Corpus reading: tokenisation, sentence cutting, block boundaries, compression, directories, bad input."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsembed.errors import UserError
from sparsembed.word2vec.corpus import (
    EncodedCorpus,
    build_vocab,
    corpus_files,
    corpus_fingerprint,
    encode_corpus,
    scan_corpus,
)
from sparsembed.word2vec.vocab import Vocab


def reference_sentences(data: bytes, max_len: int = 10_000) -> list[list[bytes]]:
    """What the tokenizer must produce: bytes.split() per line, long lines chunked, empty lines skipped."""
    out = []
    for line in data.split(b"\n"):
        tokens = line.split()
        out.extend(tokens[i: i + max_len] for i in range(0, len(tokens), max_len))
    return out


def decoded(vocab: Vocab, enc: EncodedCorpus) -> list[list[str]]:
    words = np.array(vocab.words, dtype=object)
    return [list(words[enc.ids[a:b]]) for a, b in zip(enc.sentence_starts[:-1], enc.sentence_starts[1:],
                                                      strict=True)]


def as_str(sentences: list[list[bytes]]) -> list[list[str]]:
    return [[t.decode("utf-8") for t in s] for s in sentences]


def random_text(rng: np.random.Generator, n_lines: int = 200, n_words: int = 50) -> bytes:
    words = [f"w{k}".encode() for k in range(n_words)] + ["é".encode(), "日本".encode()]
    seps = [b" ", b"  ", b"\t", b" \r", b"\x0b", b"\x0c"]
    lines = []
    for _ in range(n_lines):
        k = int(rng.integers(0, 30))
        picks = rng.zipf(1.5, size=k) % len(words)
        parts = []
        for p in picks:
            parts.append(words[p])
            parts.append(seps[int(rng.integers(0, len(seps)))])
        lines.append(b"".join(parts))
    return b"\n".join(lines)


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_round_trip_min_count_1(tmp_path):
    data = random_text(np.random.default_rng(0))
    vocab, enc = scan_corpus(write(tmp_path / "c.txt", data), min_count=1)
    ref = as_str(reference_sentences(data))
    assert decoded(vocab, enc) == ref
    assert enc.raw_words == vocab.raw_words == sum(map(len, ref))
    assert enc.ids.dtype == np.int32 and enc.sentence_starts.dtype == np.int64


def test_oov_tokens_dropped_but_counted_raw(tmp_path):
    data = random_text(np.random.default_rng(1))
    path = write(tmp_path / "c.txt", data)
    vocab, enc = scan_corpus(path, min_count=4)
    keep = set(vocab.words)
    ref = [[t for t in s if t in keep] for s in as_str(reference_sentences(data))]
    assert decoded(vocab, enc) == ref
    assert enc.raw_words == sum(map(len, reference_sentences(data)))
    # the two-pass route gives the same arrays
    enc2 = encode_corpus(path, build_vocab(path, min_count=4))
    assert np.array_equal(enc.ids, enc2.ids) and np.array_equal(enc.sentence_starts, enc2.sentence_starts)
    assert np.array_equal(enc.raw_starts, enc2.raw_starts)


def test_long_line_chunked_exactly(tmp_path):
    tokens = [f"t{i % 97}" for i in range(25_000)]
    path = write(tmp_path / "long.txt", (" ".join(tokens) + "\nx y\n").encode())
    vocab, enc = scan_corpus(path, min_count=1)
    assert np.diff(enc.sentence_starts).tolist() == [10_000, 10_000, 5_000, 2]
    assert decoded(vocab, enc)[:3] == [tokens[:10_000], tokens[10_000:20_000], tokens[20_000:]]
    _, enc = scan_corpus(path, min_count=1, max_sentence_len=7)
    assert len(enc) == -(-25_000 // 7) + 1


@pytest.mark.parametrize("block_size", [1, 2, 3, 5, 16, 97])
def test_block_boundaries_cut_words_and_lines(tmp_path, block_size):
    data = random_text(np.random.default_rng(2), n_lines=40)
    path = write(tmp_path / "c.txt", data)
    vocab, enc = scan_corpus(path, min_count=1, block_size=block_size)
    assert decoded(vocab, enc) == as_str(reference_sentences(data))
    assert build_vocab(path, 1, block_size=block_size).words == vocab.words


def test_no_trailing_newline_and_crlf(tmp_path):
    vocab, enc = scan_corpus(write(tmp_path / "c.txt", b"a b\r\n\r\n c a"), min_count=1)
    assert decoded(vocab, enc) == [["a", "b"], ["c", "a"]]


@pytest.mark.parametrize("suffix,opener", [(".gz", gzip.open), (".bz2", bz2.open), (".xz", lzma.open)])
def test_compressed_equals_plain(tmp_path, suffix, opener):
    data = random_text(np.random.default_rng(3))
    plain = write(tmp_path / "c.txt", data)
    packed = tmp_path / f"c.txt{suffix}"
    with opener(packed, "wb") as f:
        f.write(data)
    v1, e1 = scan_corpus(plain, min_count=2)
    v2, e2 = scan_corpus(packed, min_count=2, block_size=64)
    assert v1.words == v2.words and np.array_equal(v1.counts, v2.counts)
    assert np.array_equal(e1.ids, e2.ids) and np.array_equal(e1.sentence_starts, e2.sentence_starts)


def test_directory_sorted_recursive_skips_hidden(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / ".git").mkdir()
    write(tmp_path / "b" / "2.txt", b"two two")
    write(tmp_path / "b" / "1.txt", b"one")
    write(tmp_path / "a.txt", b"zero zero\nzero")
    write(tmp_path / ".hidden", b"hidden")
    write(tmp_path / ".git" / "x", b"hidden")
    with gzip.open(tmp_path / "c.gz", "wb") as f:
        f.write(b"three")
    files = corpus_files(tmp_path)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a.txt", "b/1.txt", "b/2.txt", "c.gz"]
    vocab, enc = scan_corpus(tmp_path, min_count=1)
    # each file's end ends its sentence, even without a trailing newline
    assert decoded(vocab, enc) == [["zero", "zero"], ["zero"], ["one"], ["two", "two"], ["three"]]
    fp = corpus_fingerprint(tmp_path)
    assert [f["path"] for f in fp["files"]] == [str(f) for f in files]
    assert fp["files"][0]["size"] == len(b"zero zero\nzero")
    write(tmp_path / "a.txt", b"changed")
    assert corpus_fingerprint(tmp_path) != fp


def test_iterable_of_token_lists_equals_file(tmp_path):
    data = random_text(np.random.default_rng(4))
    sentences = [line.decode().split() for line in data.split(b"\n")]
    v1, e1 = scan_corpus(write(tmp_path / "c.txt", data), min_count=2)
    v2, e2 = scan_corpus(sentences, min_count=2)
    assert v1.words == v2.words and np.array_equal(v1.counts, v2.counts)
    assert np.array_equal(e1.ids, e2.ids) and np.array_equal(e1.sentence_starts, e2.sentence_starts)
    e3 = encode_corpus(iter(sentences), v1)
    assert np.array_equal(e1.ids, e3.ids)


def test_slice_views(tmp_path):
    data = random_text(np.random.default_rng(5))
    vocab, enc = scan_corpus(write(tmp_path / "c.txt", data), min_count=3)
    part = enc.slice(10, 50)
    assert len(part) == 40
    assert np.shares_memory(part.ids, enc.ids)
    assert decoded(vocab, part) == decoded(vocab, enc)[10:50]
    assert part.raw_words == enc.raw_starts[50] - enc.raw_starts[10]
    halves = [enc.slice(0, 100), enc.slice(100, len(enc))]
    assert sum(h.raw_words for h in halves) == enc.raw_words
    with pytest.raises(IndexError):
        enc.slice(5, len(enc) + 1)


# ------------------------------------------------------------------------------------------ bad input


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        scan_corpus(tmp_path / "nope.txt")


def test_directory_without_files(tmp_path):
    write(tmp_path / ".only_hidden", b"a b c")
    with pytest.raises(UserError, match="contains no .*files"):
        build_vocab(tmp_path)


def test_empty_corpus(tmp_path):
    with pytest.raises(UserError, match="contains no tokens"):
        scan_corpus(write(tmp_path / "e.txt", b" \n\t\n"))
    with pytest.raises(UserError, match="contains no tokens"):
        build_vocab([[], []])


def test_binary_file(tmp_path):
    path = write(tmp_path / "b.bin", b"abc def\n" * 10 + b"\x00\x01\x02")
    with pytest.raises(UserError, match=r"b\.bin.*NUL byte at byte offset 80.*binary"):
        scan_corpus(path, block_size=16)


@pytest.mark.parametrize("bad,offset", [(b"\xff", 7), (b"\xc3(", 7), (b"\xed\xa0\x80", 7), (b"\xc0\xaf", 7)])
def test_non_utf8_reports_offset(tmp_path, bad, offset):
    path = write(tmp_path / "l1.txt", b"ok word" + bad + b" more text\n")
    for block_size in (3, 1 << 20):
        with pytest.raises(UserError, match=rf"l1\.txt.*not valid UTF-8 at byte offset {offset}"):
            build_vocab(path, 1, block_size=block_size)


def test_utf8_cut_at_block_boundary_is_fine(tmp_path):
    data = "é日本語 ü €\n".encode() * 20
    vocab, enc = scan_corpus(write(tmp_path / "u.txt", data), min_count=1, block_size=5)
    assert decoded(vocab, enc) == as_str(reference_sentences(data))


def test_truncated_utf8_at_end_of_file(tmp_path):
    with pytest.raises(UserError, match="not valid UTF-8 at byte offset 4"):
        build_vocab(write(tmp_path / "t.txt", b"abc \xe6\x97"), 1)


@pytest.mark.parametrize("suffix,opener,name", [(".gz", gzip.open, "gzip"), (".bz2", bz2.open, "bzip2"),
                                                (".xz", lzma.open, "xz")])
def test_corrupt_compressed(tmp_path, suffix, opener, name):
    data = random_text(np.random.default_rng(6), n_lines=500)
    good = tmp_path / f"g{suffix}"
    with opener(good, "wb") as f:
        f.write(data)
    packed = good.read_bytes()
    truncated = write(tmp_path / f"t{suffix}", packed[: len(packed) // 2])
    with pytest.raises(UserError, match=rf"t{suffix}.*not valid {name} data"):
        scan_corpus(truncated)
    garbled = bytearray(packed)
    garbled[len(garbled) // 2: len(garbled) // 2 + 64] = bytes(64)
    with pytest.raises(UserError, match=rf"not valid {name} data|NUL byte|UTF-8"):
        scan_corpus(write(tmp_path / f"x{suffix}", bytes(garbled)))
    with pytest.raises(UserError, match=rf"not valid {name} data"):
        scan_corpus(write(tmp_path / f"h{suffix}", b"this is not compressed at all\n"))


def test_min_count_too_high(tmp_path):
    path = write(tmp_path / "c.txt", b"a b a c a b\n")
    with pytest.raises(UserError, match=r"no word reaches min_count=9 \(the most frequent word 'a' occurs 3 "
                                        r"times\); lower --min-count"):
        scan_corpus(path, min_count=9)


def test_bad_sentences():
    with pytest.raises(UserError, match="not a list of tokens"):
        build_vocab(["a b c"])
    with pytest.raises(UserError, match="whitespace"):
        build_vocab([["a", "b c"]])
    with pytest.raises(UserError, match="empty or contains whitespace"):
        build_vocab([["a", ""]])
    with pytest.raises(UserError, match="list of str"):
        build_vocab([["a", 3]])
    with pytest.raises(UserError, match="one-shot iterator"):
        scan_corpus(iter([["a"]]), min_count=1, max_vocab=10)


def test_encode_with_bad_vocab(tmp_path):
    path = write(tmp_path / "c.txt", b"a b\n")
    with pytest.raises(UserError, match="twice"):
        encode_corpus(path, Vocab(["a", "b", "a"], np.array([1, 1, 1])))
    with pytest.raises(UserError, match="whitespace"):
        encode_corpus(path, Vocab(["a", "b c"], np.array([1, 1])))


def test_unreadable_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can read anything")
    path = write(tmp_path / "c.txt", b"a b\n")
    path.chmod(0)
    with pytest.raises(UserError, match="cannot open"):
        build_vocab(path, 1)


# ------------------------------------------------------------------------------------------ property

_PIECES = [b"a", b"b", b"ab", b"\xc3\xa9", b"zz", b" ", b"\t", b"\n", b"\r", b"\x0b", b"\x0c", b"\n\n"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.sampled_from(_PIECES), max_size=80), block_size=st.integers(1, 40),
       max_len=st.integers(1, 6))
def test_tokenization_matches_bytes_split(tmp_path, parts, block_size, max_len):
    data = b"".join(parts)
    path = write(tmp_path / "p.txt", data)
    ref = as_str(reference_sentences(data, max_len))
    if not ref:
        with pytest.raises(UserError, match="no tokens"):
            scan_corpus(path, min_count=1)
        return
    vocab, enc = scan_corpus(path, min_count=1, max_sentence_len=max_len, block_size=block_size)
    assert decoded(vocab, enc) == ref
    assert sorted(vocab.words) == sorted({t for s in ref for t in s})


def test_error_mid_compressed_stream_stops_reader_thread(tmp_path):
    import threading

    before = threading.active_count()
    path = tmp_path / "n.txt.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"ok words\n" * 10 + b"\x00" + b"more words\n" * 20_000)
    with pytest.raises(UserError, match="NUL byte at byte offset 90"):
        scan_corpus(path, block_size=64)
    assert threading.active_count() == before
