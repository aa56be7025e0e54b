"""Corpus: stream text files (or token lists) into counted words and compact int32 token ids.

Files (plain, or .gz / .bz2 / .xz decompressed one block ahead in a thread) are read in fixed-size byte blocks,
checked (UTF-8, no NUL byte) and cut at whitespace into pieces that the compiled tokenizer
(:class:`~sparsembed.word2vec.tokenizer.Scanner`) turns into a word table and int32 token ids; token lists are
joined into the same pieces. :func:`build_vocab` counts, :func:`encode_corpus` encodes with a given vocabulary,
:func:`scan_corpus` does both in one pass (:class:`EncodedCorpus`).

Tokens are runs of non-whitespace bytes; whitespace is ASCII (space, \\t, \\n, \\v, \\f, \\r), exactly
what ``bytes.split()`` uses. A ``\\n`` ends a sentence, so does the end of each file; a sentence is also
cut after every ``max_sentence_len`` raw tokens (chunked like gensim's ``LineSentence``, never truncated).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import mmap
import os
import queue
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numba
import numpy as np

from sparsembed.errors import UserError
from sparsembed.word2vec.tokenizer import Scanner, readonly, space_bounds
from sparsembed.word2vec.vocab import Vocab, rows_by_frequency

Source = Union[str, "os.PathLike[str]", Iterable[Iterable[str]]]

BLOCK_SIZE = 4 << 20  # bytes per read: amortises the per-call overhead; the only buffer of file text held
MAX_SENTENCE_LEN = 10_000

_COMPRESSED = {".gz": ("gzip", gzip.open), ".bz2": ("bzip2", bz2.open), ".xz": ("xz", lzma.open)}


# ----------------------------------------------------------------------------------------------- input
def corpus_files(path: str | os.PathLike) -> list[Path]:
    """The files a corpus path stands for: the file itself, or a directory's files.

    A directory is walked recursively; hidden files and directories (name starts with '.') are skipped,
    and files come sorted by path (component by component). Raises UserError for a missing path or a
    directory without files.
    """
    root = Path(path)
    if not root.exists():
        raise UserError(f"corpus path {str(root)!r} does not exist; check the path")
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise UserError(f"corpus path {str(root)!r} is neither a file nor a directory")
    files = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise_walk_error):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files.extend(Path(dirpath, f) for f in filenames if not f.startswith("."))
    files = sorted(f for f in files if f.is_file())
    if not files:
        raise UserError(f"corpus directory {str(root)!r} contains no (non-hidden) files; "
                        "point --corpus at a text file or a directory of text files")
    return files


def _raise_walk_error(exc: OSError) -> None:
    raise UserError(f"cannot list corpus directory {exc.filename!r}: {exc.strerror}")


def corpus_fingerprint(path: str | os.PathLike) -> dict:
    """Path, size and mtime_ns of every corpus file, to detect a corpus that changed before a resume.

    Paths are stored resolved (absolute): a checkpoint is resumed from whatever directory the user is in.
    """
    root = Path(path).resolve()
    files = []
    for f in corpus_files(root):
        st = f.stat()
        files.append({"path": str(f), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)})
    return {"path": str(root), "files": files}


def fingerprint_change(saved: dict, path: str | os.PathLike) -> str | None:
    """What differs between the corpus at ``path`` and the ``saved`` fingerprint (a short phrase), or None.

    Files are compared by their place under the corpus root, size and mtime, not by absolute path: the corpus
    may have been moved (``mv`` keeps mtimes), and fingerprints written before paths were resolved hold the
    paths as typed, relative to the directory the run was started in.
    """
    def by_place(fingerprint: dict) -> dict[str, tuple[int, int]]:
        root = Path(fingerprint["path"])
        return {Path(f["path"]).relative_to(root).as_posix(): (int(f["size"]), int(f["mtime_ns"]))
                for f in fingerprint["files"]}

    try:
        before = by_place(saved)
    except (KeyError, TypeError, ValueError) as exc:  # a checkpoint's fingerprint that is not ours
        return f"its saved fingerprint is unreadable ({type(exc).__name__})"
    now = by_place(corpus_fingerprint(path))
    for place in sorted(before.keys() | now.keys()):
        name = Path(path).name if place == "." else place
        if place not in now:
            return f"{name} is gone"
        if place not in before:
            return f"{name} is new"
        if before[place][0] != now[place][0]:
            return f"{name} has {now[place][0]} bytes, was {before[place][0]}"
        if before[place][1] != now[place][1]:
            return f"{name} has another modification time"
    return None


def _open(file: Path):
    """(reader, raw file): the reader decompresses by suffix (or is the raw file)."""
    kind = _COMPRESSED.get(file.suffix.lower())
    try:
        raw = open(file, "rb", buffering=0)
    except OSError as exc:
        raise UserError(f"cannot open corpus file {str(file)!r}: {exc.strerror or exc}") from exc
    if kind is None:
        return raw, raw
    return kind[1](raw, "rb"), raw


def _read_error(exc: BaseException, file: Path, offset: int) -> UserError:
    kind = _COMPRESSED.get(file.suffix.lower())
    if kind is None:
        return UserError(f"cannot read corpus file {str(file)!r} at byte {offset}: {exc}")
    return UserError(f"corpus file {str(file)!r} is not valid {kind[0]} data (corrupt or truncated after "
                     f"{offset} decompressed bytes: {exc}); re-create or re-download it")


_READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)


def _chunks(file: Path, block_size: int) -> Iterator[tuple[bytes | bytearray, int]]:
    """(buffer, byte count) blocks of a file, decompressed by suffix.

    Plain files reuse one buffer (each block must be used before the next is asked for). Compressed
    files are decompressed one block ahead in a thread (zlib, bz2 and lzma release the GIL), so the
    tokenizer overlaps decompression.
    """
    handle, raw = _open(file)
    with handle, raw:
        if handle is raw:
            block = bytearray(block_size)
            offset = 0
            while True:
                try:
                    n = raw.readinto(block)
                except OSError as exc:
                    raise _read_error(exc, file, offset) from exc
                if not n:
                    return
                yield block, n
                offset += n
        else:
            yield from _prefetched(handle, file, block_size)


def _prefetched(handle, file: Path, block_size: int) -> Iterator[tuple[bytes, int]]:
    ready: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def read_ahead() -> None:
        offset = 0
        try:
            while not stop.is_set():
                chunk = handle.read(block_size)
                ready.put(chunk)
                offset += len(chunk)
                if not chunk:
                    return
        except _READ_ERRORS as exc:
            ready.put(_read_error(exc, file, offset))

    worker = threading.Thread(target=read_ahead, name=f"decompress {file.name}", daemon=True)
    worker.start()
    try:
        while True:
            chunk = ready.get()
            if isinstance(chunk, UserError):
                raise chunk
            if not chunk:
                return
            yield chunk, len(chunk)
    finally:
        stop.set()
        while worker.is_alive():  # unblock a put() so the worker sees stop before the file closes
            try:
                ready.get(timeout=0.05)
            except queue.Empty:
                pass


@numba.njit(nogil=True, cache=True)
def _text_error(buf):
    """(0, -1) for valid UTF-8 without NUL bytes; else (1, offset) for a NUL, (2, offset) for bad UTF-8.

    The strict rules of Python's decoder: no overlongs, surrogates or code points above U+10FFFF; a
    sequence cut by the end of ``buf`` is an error (pieces end at ASCII whitespace, so none is cut).
    """
    n = buf.shape[0]
    i = 0
    while i < n:
        c = buf[i]
        if c < 0x80:
            if c == 0:
                return 1, i
            i += 1
            continue
        lo = 0x80
        hi = 0xBF
        if c >= 0xC2 and c <= 0xDF:
            need = 1
        elif c == 0xE0:
            need, lo = 2, 0xA0
        elif c == 0xED:
            need, hi = 2, 0x9F
        elif c >= 0xE1 and c <= 0xEF:
            need = 2
        elif c == 0xF0:
            need, lo = 3, 0x90
        elif c >= 0xF1 and c <= 0xF3:
            need = 3
        elif c == 0xF4:
            need, hi = 3, 0x8F
        else:
            return 2, i
        if i + need >= n or buf[i + 1] < lo or buf[i + 1] > hi:
            return 2, i
        for k in range(2, need + 1):
            if buf[i + k] < 0x80 or buf[i + k] > 0xBF:
                return 2, i
        i += need + 1
    return 0, -1


def _checked(piece: np.ndarray, file: Path, offset: int) -> np.ndarray:
    """The piece as a read-only array, after rejecting NUL bytes and invalid UTF-8 (file, byte offset)."""
    piece = readonly(piece)
    code, at = _text_error(piece)
    if code == 1:
        raise UserError(f"corpus file {str(file)!r} contains a NUL byte at byte offset {offset + at}: "
                        "it looks binary; give plain (or .gz/.bz2/.xz compressed) UTF-8 text")
    if code == 2:
        raise UserError(f"corpus file {str(file)!r} is not valid UTF-8 at byte offset {offset + at} "
                        f"(byte 0x{int(piece[at]):02x}); convert it to UTF-8 (e.g. with iconv)")
    return piece


def _file_pieces(file: Path, block_size: int) -> Iterator[np.ndarray]:
    """Validated byte pieces of one (decompressed) file, each ending at whitespace; the last one is
    followed by a newline, so the file's end ends its sentence.

    Big pieces are views of one reused block buffer: each must be consumed before the next is requested.
    """
    carry: list[bytes] = []  # a word (or line tail) cut at the block boundary
    carry_offset = 0
    offset = 0  # (decompressed) offset of the block's first byte
    for block, n in _chunks(file, block_size):
        view = np.frombuffer(block, np.uint8, count=n)
        first, last = space_bounds(readonly(view))
        if first < 0:
            if not carry:
                carry_offset = offset
            carry.append(bytes(block[:n]))
        elif carry:
            # finish the cut word in a small piece, so the big block below needs no copy
            carry.append(bytes(block[: first + 1]))
            yield _checked(np.frombuffer(b"".join(carry), np.uint8), file, carry_offset)
            yield _checked(view[first + 1: last + 1], file, offset + first + 1)
            carry = []
        else:
            yield _checked(view[: last + 1], file, offset)
        if first >= 0 and last + 1 < n:
            carry = [bytes(block[last + 1: n])]
            carry_offset = offset + last + 1
        offset += n
    if not carry:
        carry_offset = offset
    carry.append(b"\n")
    yield _checked(np.frombuffer(b"".join(carry), np.uint8), file, carry_offset)


def _sentence_pieces(sentences: Iterable[Iterable[str]], block_size: int) -> Iterator[np.ndarray]:
    """Token lists as newline-separated UTF-8 pieces (so they tokenise exactly like a file)."""
    lines: list[bytes] = []
    size = 0
    for k, sentence in enumerate(sentences):
        if isinstance(sentence, (str, bytes)):
            raise UserError(f"sentence #{k} is a {type(sentence).__name__}, not a list of tokens; "
                            "give each sentence as a list of str (e.g. line.split())")
        try:
            tokens = list(sentence)
            line = " ".join(tokens).encode("utf-8")
        except TypeError:
            raise UserError(f"sentence #{k} is not a list of str tokens; give lists of str") from None
        except UnicodeEncodeError as exc:
            raise UserError(f"sentence #{k} has a token that is not encodable as UTF-8 ({exc.reason})") from None
        if not _joins_cleanly(line, len(tokens)):
            bad = next(t for t in tokens if not t or len(t.encode("utf-8").split()) != 1
                       or t.encode("utf-8").split()[0] != t.encode("utf-8"))
            raise UserError(f"sentence #{k} has the token {bad!r}, which is empty or contains whitespace; "
                            "tokens must be non-empty and whitespace-free")
        lines.append(line)
        size += len(line) + 1
        if size >= block_size:
            lines.append(b"")
            yield np.frombuffer(b"\n".join(lines), np.uint8)
            lines, size = [], 0
    if lines:
        lines.append(b"")
        yield np.frombuffer(b"\n".join(lines), np.uint8)


def _joins_cleanly(line: bytes, n_tokens: int) -> bool:
    """True if ``line``, the tokens joined by single spaces, splits back into exactly those tokens.

    Equal counts alone are not enough: an empty token and one holding a space cancel out (['', 'a b']).
    The split must also account for every byte of the line but the ``n_tokens - 1`` joining spaces.
    """
    parts = line.split()
    return len(parts) == n_tokens and sum(map(len, parts)) == len(line) - max(n_tokens - 1, 0)


def _is_path(source) -> bool:
    return isinstance(source, (str, os.PathLike))


def _describe(source) -> str:
    return repr(str(source)) if _is_path(source) else "the given sentences"


def _feed(scanner: Scanner, source: Source, block_size: int) -> None:
    """Run a whole corpus (path or token lists) through the scanner."""
    if _is_path(source):
        for file in corpus_files(source):
            for piece in _file_pieces(file, block_size):
                scanner.feed(piece)
        return
    if isinstance(source, bytes):
        raise UserError("a corpus is a path (str) or an iterable of token lists, not bytes")
    try:
        iterator = iter(source)
    except TypeError:
        raise UserError(f"a corpus is a path or an iterable of token lists, not {type(source).__name__}") from None
    for piece in _sentence_pieces(iterator, block_size):
        scanner.feed(piece)


def _check_not_empty(raw_words: int, source: Source) -> None:
    if raw_words == 0:
        raise UserError(f"the corpus {_describe(source)} contains no tokens (it is empty or only "
                        "whitespace); give a non-empty text corpus")


# ----------------------------------------------------------------------------------------- public API


@dataclass
class EncodedCorpus:
    """A corpus as int32 vocabulary rows, split into sentences.

    Attributes:
        ids: int32 rows of the in-vocabulary tokens in corpus order (OOV tokens dropped, as gensim does
            before windowing).
        sentence_starts: int64, length n_sentences + 1; sentence k is ``ids[starts[k]:starts[k+1]]``.
            Sentences were cut at ``max_sentence_len`` raw tokens (OOV included), so one may be empty
            after dropping OOV tokens; lines without any token are not sentences.
        raw_words: raw tokens of these sentences, OOV included (for gensim-style progress / alpha decay).
        raw_starts: int64, length n_sentences + 1: raw tokens before each sentence (relative to the first).
    """

    ids: np.ndarray
    sentence_starts: np.ndarray
    raw_words: int
    raw_starts: np.ndarray | None = None
    mapping: mmap.mmap | None = None

    def __len__(self) -> int:
        return len(self.sentence_starts) - 1

    def release(self, first_token: int, last_token: int) -> None:
        """Drop the pages wholly inside ``ids[first_token:last_token]`` from this process (mapped ids only).

        The scan leaves ``ids`` in an unlinked temporary file (see :mod:`sparsembed.word2vec.tokenizer`); training
        reads them once per epoch and releases each job's stretch, so the page cache, not the process, holds the
        corpus.
        """
        if self.mapping is None:
            return
        page = mmap.PAGESIZE
        start = -(-first_token * 4 // page) * page
        stop = last_token * 4 // page * page
        if stop > start:
            self.mapping.madvise(mmap.MADV_DONTNEED, start, stop - start)

    def slice(self, first_sentence: int, last_sentence: int) -> EncodedCorpus:
        """Sentences ``first_sentence`` up to (excluding) ``last_sentence``; ids is a view, not a copy."""
        n = len(self)
        if not 0 <= first_sentence <= last_sentence <= n:
            raise IndexError(f"sentence range [{first_sentence}, {last_sentence}) outside [0, {n}]")
        starts = self.sentence_starts[first_sentence: last_sentence + 1]
        ids = self.ids[starts[0]: starts[-1]]
        raw = None
        raw_words = 0
        if self.raw_starts is not None:
            raw = self.raw_starts[first_sentence: last_sentence + 1] - self.raw_starts[first_sentence]
            raw_words = int(raw[-1])
        return EncodedCorpus(ids, starts - starts[0], raw_words, raw)


def _encoded(ids: np.ndarray, ends: np.ndarray, raw_ends: np.ndarray, raw_words: int,
             mapping: mmap.mmap | None = None) -> EncodedCorpus:
    starts = np.zeros(len(ends) + 1, np.int64)
    starts[1:] = ends
    raw_starts = np.zeros(len(ends) + 1, np.int64)
    raw_starts[1:] = raw_ends
    return EncodedCorpus(ids, starts, int(raw_words), raw_starts, mapping)


def _count(source: Source, max_vocab: int | None, max_sentence_len: int, block_size: int) -> Scanner:
    """Count pass: every distinct word (first-occurrence order, pruned gensim-style with max_vocab)."""
    _check_sentence_len(max_sentence_len)
    if max_vocab is not None and max_vocab < 1:
        raise UserError(f"max_vocab must be at least 1 (got {max_vocab}); leave it unset for no limit")
    scanner = Scanner(insert=True, record=False, max_len=max_sentence_len, max_vocab=max_vocab or 0)
    _feed(scanner, source, block_size)
    _check_not_empty(scanner.raw_words, source)
    return scanner


def _vocab_of(scanner: Scanner, min_count: int) -> tuple[Vocab, np.ndarray]:
    """The vocabulary of a counted scanner, and its table entries in row order."""
    counts = scanner.counts()
    entries = rows_by_frequency(counts, min_count, lambda e: scanner.words(np.array([e]))[0])
    return Vocab(scanner.words(entries), counts[entries], scanner.raw_words), entries


def build_vocab(source: Source, min_count: int = 5, max_vocab: int | None = None, *,
                max_sentence_len: int = MAX_SENTENCE_LEN, block_size: int | None = None) -> Vocab:
    """Count a corpus (path or iterable of token lists) and keep words occurring >= min_count times.

    ``max_vocab`` bounds memory while counting, with gensim's ``max_vocab_size`` semantics: after any
    sentence that leaves more than max_vocab distinct words, drop those counted < min_reduce times, then
    min_reduce += 1 (starting at 1). ``block_size`` (bytes per read) exists for tests.
    """
    scanner = _count(source, max_vocab, max_sentence_len, block_size or BLOCK_SIZE)
    return _vocab_of(scanner, min_count)[0]


def encode_corpus(source: Source, vocab: Vocab, max_sentence_len: int = MAX_SENTENCE_LEN,
                  block_size: int = BLOCK_SIZE) -> EncodedCorpus:
    """Token ids (vocabulary rows) of a corpus; tokens not in ``vocab`` are dropped."""
    _check_sentence_len(max_sentence_len)
    scanner = Scanner.for_vocab(vocab, max_sentence_len)
    _feed(scanner, source, block_size)
    _check_not_empty(scanner.raw_words, source)
    starts = scanner.sentences
    ids, mapping = scanner.finish(scanner.n_ids)
    return _encoded(ids, starts[:, 0], starts[:, 1], scanner.raw_words, mapping)


def scan_corpus(source: Source, min_count: int = 5, max_vocab: int | None = None,
                max_sentence_len: int = MAX_SENTENCE_LEN,
                block_size: int = BLOCK_SIZE) -> tuple[Vocab, EncodedCorpus]:
    """Vocabulary and encoded corpus; one pass over the data unless ``max_vocab`` forces two.

    One pass records every token's table entry, then maps entries to final rows (or drop) in place,
    so the peak is about one int32 per raw token plus the table.
    """
    _check_sentence_len(max_sentence_len)
    if max_vocab is not None:
        if not _is_path(source) and iter(source) is source:
            raise UserError("max_vocab needs two passes over the corpus, but the sentences given are a "
                            "one-shot iterator; pass a list or a re-iterable object")
        vocab = build_vocab(source, min_count, max_vocab, max_sentence_len=max_sentence_len, block_size=block_size)
        return vocab, encode_corpus(source, vocab, max_sentence_len, block_size)
    scanner = Scanner(insert=True, record=True, max_len=max_sentence_len)
    _feed(scanner, source, block_size)
    _check_not_empty(scanner.raw_words, source)
    vocab, entries = _vocab_of(scanner, min_count)
    row_of = np.full(scanner.n_entries, -1, np.int32)
    row_of[entries] = np.arange(len(entries), dtype=np.int32)
    starts = scanner.sentences
    ends = scanner.compact(row_of)
    ids, mapping = scanner.finish(int(ends[-1]) if len(starts) else 0)
    return vocab, _encoded(ids, ends, starts[:, 1], scanner.raw_words, mapping)


def _check_sentence_len(max_sentence_len: int) -> None:
    if max_sentence_len < 1:
        raise UserError(f"max_sentence_len must be at least 1 (got {max_sentence_len})")
