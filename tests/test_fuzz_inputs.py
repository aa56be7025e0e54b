"""Fuzzing what comes from outside: corpus bytes and token lists, and damaged checkpoint directories.

The contract under test: bad input raises UserError (one line at the command line, exit code 2), never any other
exception; input that is accepted gives exactly what a plain-Python reading of it gives.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import shutil
import tempfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sparsembed import Word2Vec
from sparsembed.errors import UserError
from sparsembed.word2vec import checkpoint
from sparsembed.word2vec.corpus import scan_corpus

# ------------------------------------------------------------------------------------------------- corpus
WORDS = [b"a", b"b", b"ab", b"the", b"x" * 40, "\u00e9t\u00e9".encode(), "\u65e5\u672c".encode(), "\U0001f600".encode()]
# Bytes that look like separators or text but are not ASCII whitespace, and every flavour of invalid UTF-8.
TRICKY = [b"\x00", b"\x1c", b"\xc2\x85", "\u00a0".encode(), "\u2028".encode(), b"\xef\xbb\xbf",
          b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80", b"\xff", b"\xf8\x88\x80\x80\x80"]
SPACES = [b" ", b"\t", b"\n", b"\r\n", b"\x0b", b"\x0c", b"  \n\n"]

token_streams = st.lists(
    st.one_of(st.sampled_from(WORDS), st.sampled_from(SPACES), st.sampled_from(TRICKY), st.binary(max_size=3)),
    max_size=80,
).map(b"".join)
corpus_bytes = st.one_of(st.binary(max_size=300), token_streams)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def expected_sentences(data: bytes, max_len: int) -> list[list[str]] | str:
    """Plain-Python reading of a corpus file: sentences of tokens, or what the error message must say."""
    nul = data.find(b"\x00")
    try:
        data.decode("utf-8")
        bad = -1
    except UnicodeDecodeError as exc:
        bad = exc.start
    if nul >= 0 and (bad < 0 or nul < bad):
        return f"NUL byte at byte offset {nul}:"
    if bad >= 0:
        return f"not valid UTF-8 at byte offset {bad} "
    sentences = []
    for line in data.split(b"\n"):
        tokens = [t.decode("utf-8") for t in line.split()]  # bytes.split: the six ASCII whitespace bytes
        sentences += [tokens[i:i + max_len] for i in range(0, len(tokens), max_len)]
    return sentences if sentences else "no tokens"


def check_scan(source, expected: list[list[str]] | str, min_count: int, max_len: int, block: int) -> None:
    """scan_corpus on ``source`` raises the expected UserError, or matches ``expected`` token for token."""
    counts = Counter(t for s in expected for t in s) if isinstance(expected, list) else Counter()
    if isinstance(expected, list) and max(counts.values()) < min_count:
        expected = "min_count"
    if isinstance(expected, str):
        with pytest.raises(UserError, match=expected):
            scan_corpus(source, min_count=min_count, max_sentence_len=max_len, block_size=block)
        return
    vocab, corpus = scan_corpus(source, min_count=min_count, max_sentence_len=max_len, block_size=block)
    kept = {word: count for word, count in counts.items() if count >= min_count}
    assert dict(zip(vocab.words, vocab.counts.tolist(), strict=True)) == kept
    assert np.all(np.diff(vocab.counts) <= 0)  # rows by descending frequency
    assert corpus.raw_words == sum(counts.values()) and len(corpus) == len(expected)
    starts = corpus.sentence_starts
    for k, sentence in enumerate(expected):
        got = [vocab.words[i] for i in corpus.ids[starts[k]:starts[k + 1]]]
        assert got == [t for t in sentence if t in kept]


@FUZZ
@given(data=corpus_bytes, min_count=st.integers(1, 3), max_len=st.integers(1, 6), block=st.integers(1, 48))
def test_scan_corpus_file(tmp_path: Path, data: bytes, min_count: int, max_len: int, block: int) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(data)
    check_scan(str(path), expected_sentences(data, max_len), min_count, max_len, block)


COMPRESSORS = {".gz": gzip, ".bz2": bz2, ".xz": lzma}


def stream_decompress(module, packed: bytes) -> bytes:
    """What reading the file as a stream gives (unlike ``bz2.decompress``, an empty file is an error)."""
    with module.open(io.BytesIO(packed), "rb") as handle:
        return handle.read()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=token_streams, suffix=st.sampled_from(sorted(COMPRESSORS)), cut=st.none() | st.floats(0, 1),
       flip=st.none() | st.tuples(st.floats(0, 1), st.integers(1, 255)), block=st.integers(1, 48))
def test_scan_damaged_compressed_corpus(tmp_path: Path, data: bytes, suffix: str, cut, flip, block: int) -> None:
    module = COMPRESSORS[suffix]
    packed = bytearray(module.compress(data))
    if flip is not None:
        packed[int(flip[0] * (len(packed) - 1))] ^= flip[1]
    if cut is not None:
        packed = packed[: int(cut * len(packed))]
    path = tmp_path / f"corpus.txt{suffix}"
    path.write_bytes(bytes(packed))
    try:
        plain = stream_decompress(module, bytes(packed))
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError):
        with pytest.raises(UserError):
            scan_corpus(str(path), min_count=1, block_size=block)
        return
    check_scan(str(path), expected_sentences(plain, 10_000), 1, 10_000, block)


@FUZZ
@given(sentences=st.lists(st.lists(st.text(max_size=4), max_size=6), max_size=8), max_len=st.integers(1, 6))
@example(sentences=[["", "0\r0"]], max_len=1)  # was read as ['0', '0']: an empty token and a split one cancelled
@example(sentences=[["a "]], max_len=1)
def test_scan_token_lists(sentences: list[list[str]], max_len: int) -> None:
    def valid(token: str) -> bool:
        try:
            raw = token.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate
            return False
        return raw.split() == [raw]

    if not all(valid(t) for s in sentences for t in s):
        with pytest.raises(UserError):
            scan_corpus(sentences, min_count=1, max_sentence_len=max_len)
        return
    expected = [s[i:i + max_len] for s in sentences for i in range(0, len(s), max_len)]
    check_scan(sentences, expected or "no tokens", 1, max_len, 1 << 20)


# --------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    """A tiny trained model's checkpoint directory (``DIR/model``)."""
    out = tmp_path_factory.mktemp("fuzz-model")
    sentences = [["a", "b", "c", "a"], ["b", "c", "d", "e"], ["e", "a", "\u00e9t\u00e9"]] * 20
    Word2Vec(sentences, vector_size=4, epochs=1, min_count=1, workers=1).save(out)
    return out / "model"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
file_damage = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 99), st.floats(0, 1), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 99), st.floats(0, 1)),
    st.tuples(st.just("delete"), st.integers(0, 99)),
    st.tuples(st.just("append"), st.integers(0, 99), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("replace"), st.integers(0, 99), st.binary(max_size=200)),
)
# Change one value of state.json; with the last field True, also recompute its checksum: a hand-edited or
# foreign checkpoint, which must be caught by the checks behind the checksum.
state_edit = st.tuples(st.just("edit"), st.lists(st.integers(0, 30), min_size=1, max_size=4), json_values,
                       st.booleans())


def _damage_file(directory: Path, op: tuple) -> None:
    files = sorted(p for p in directory.iterdir() if p.is_file())
    target = files[op[1] % len(files)]
    data = bytearray(target.read_bytes())
    if op[0] == "flip" and data:
        data[int(op[2] * (len(data) - 1))] ^= op[3]
    elif op[0] == "truncate":
        data = data[: int(op[2] * len(data))]
    elif op[0] == "append":
        data += op[2]
    elif op[0] == "replace":
        data = bytearray(op[2])
    if op[0] == "delete":
        target.unlink()
    else:
        target.write_bytes(bytes(data))


def _edit_state(directory: Path, op: tuple) -> None:
    _, path, value, fix_checksum = op
    try:
        state = json.loads((directory / checkpoint.STATE_FILE).read_text())
    except (OSError, ValueError):  # already deleted or damaged by an earlier step
        return
    if not isinstance(state, dict):
        return
    node = state
    for step in path:
        keys = sorted(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = keys[step % len(keys)]
        if isinstance(node[key], (dict, list)) and node[key] and step != path[-1]:
            node = node[key]
            continue
        node[key] = value
        break
    if fix_checksum:
        state["crc32"] = checkpoint._state_crc32(state)
    (directory / checkpoint.STATE_FILE).write_text(json.dumps(state))


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.one_of(file_damage, state_edit), min_size=1, max_size=3))
def test_damaged_checkpoint_raises_user_error_only(saved_model: Path, ops: list[tuple]) -> None:
    original_arrays, original_meta = checkpoint.load_checkpoint(saved_model)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = Path(scratch) / "model"
        shutil.copytree(saved_model, model_dir)
        for op in ops:
            if op[0] == "edit":
                _edit_state(model_dir, op)
            elif any(model_dir.iterdir()):
                _damage_file(model_dir, op)
        try:
            arrays, meta = checkpoint.load_checkpoint(model_dir)
        except UserError:
            arrays = None
        try:
            Word2Vec.load(model_dir)
        except UserError:
            pass
    forged = any(op[0] == "edit" and op[3] for op in ops)
    if arrays is not None and not forged:
        # Damage that went unreported must have been harmless (whitespace in state.json, say).
        assert meta == original_meta and arrays.keys() == original_arrays.keys()
        for name, array in arrays.items():
            np.testing.assert_array_equal(array, original_arrays[name])
