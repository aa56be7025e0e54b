"""On-disk formats for trained vectors, compatible with word2vec C and gensim.

* word2vec format (binary or text), as written by word2vec C ``-binary 1|0`` and by gensim's
  ``KeyedVectors.save_word2vec_format``: a ``"{rows} {dim}\\n"`` header, then one row per word.
  Binary rows are ``word + b" " + dim float32 little-endian + b"\\n"``; text rows are
  ``word v1 v2 ... vdim``.  Gensim writes binary rows without the trailing newline; both are read.
* fvocab, gensim's (and word2vec C ``-save-vocab``'s) word-count list: ``word count`` per line.
* npy export: ``PREFIX.npy`` (float32 matrix, ``numpy.load``-able) and ``PREFIX.vocab.txt``
  (UTF-8, one word per line, row ``i`` of the matrix is line ``i``).

Every writer goes through :func:`sparsembed.fsutil.atomic_write`; every reader raises
:class:`~sparsembed.errors.UserError` naming the file and the row for damaged input.
"""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
from collections.abc import Sequence

import numpy as np

from sparsembed.errors import UserError
from sparsembed.fsutil import atomic_write

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

# Longest word accepted when scanning binary rows; far above word2vec C's limit (100 bytes), low enough
# that a file whose header lies about the dimension fails at the row where it goes wrong.
_MAX_WORD_BYTES = 10_000
_WHITESPACE = re.compile(r"\s")
_UNSTORABLE = re.compile(r"[\s\x00]")
_FLOAT32_LE = np.dtype("<f4")
_NUMBER = re.compile(rb"[0-9A-Za-z.+-]+")
_DECIMAL = re.compile(rb"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
# Extra reach when looking for the end of the first text row, for rows longer than the header's dimension.
_LONG_LINE = 1 << 20
# When a binary file does not fit its header: how many rows before the first implausible one may be the
# culprit (garbage can pass for a word or two), and the longest row tried (word2vec dimensions stay far below).
_SUSPECT_ROWS = 8
_MAX_DIM_TRIED = 1 << 14
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


# ----------------------------------------------------------------------------------------- word2vec


def write_word2vec(path: PathLike, words: Sequence[str], matrix: np.ndarray, binary: bool = True) -> None:
    """Write ``matrix`` (one row per word) in word2vec C format, binary or text.

    Text rows carry each value with 9 significant digits, enough for float32 values to read back exactly.
    Words must be non-empty and free of whitespace (the format separates fields with it).
    """
    matrix = _check_matrix(words, matrix)
    encoded = _encode_words(words)
    header = f"{matrix.shape[0]} {matrix.shape[1]}\n".encode()
    with atomic_write(path) as out:
        out.write(header)
        if binary:
            # In blocks of rows: a single blob would briefly double the matrix in memory.
            for start in range(0, matrix.shape[0], 8192):
                out.write(_binary_rows(encoded[start : start + 8192], matrix[start : start + 8192]))
        else:
            _write_text_rows(out, encoded, matrix)


def _binary_rows(encoded: list[bytes], matrix: np.ndarray) -> bytes:
    """All binary rows as one blob: the vectors are sliced out of a single ``tobytes`` buffer."""
    blob = memoryview(np.ascontiguousarray(matrix, dtype=_FLOAT32_LE).tobytes())
    step = matrix.shape[1] * 4
    parts: list[bytes | memoryview] = [b""] * (3 * len(encoded))
    parts[0::3] = [word + b" " for word in encoded]
    parts[1::3] = [blob[i : i + step] for i in range(0, len(blob), step)] if step else [b""] * len(encoded)
    parts[2::3] = [b"\n"] * len(encoded)
    return b"".join(parts)


def _write_text_rows(out: io.BufferedIOBase, encoded: list[bytes], matrix: np.ndarray, block: int = 8192) -> None:
    """Text rows, formatted one row per ``%`` operation (C speed) and written in blocks of rows."""
    row_format = " ".join(["%.9g"] * matrix.shape[1])
    for start in range(0, matrix.shape[0], block):
        values = matrix[start : start + block].astype(np.float64).tolist()
        lines = [
            word + b" " + (row_format % tuple(row)).encode() + b"\n"
            for word, row in zip(encoded[start : start + block], values, strict=True)
        ]
        out.write(b"".join(lines))


def read_word2vec(
    path: PathLike, binary: bool | None = None, check_finite: bool = True
) -> tuple[list[str], np.ndarray]:
    """Read a word2vec C format file; return ``(words, float32 matrix)`` in file order.

    ``binary=None`` detects the flavour from the first row.  As gensim does, a word that repeats keeps
    its first row (with a logged warning).  Truncated files, headers that disagree with the rows, words
    that are not UTF-8, rows with the wrong number of values and (when ``check_finite``) NaN or infinite
    values raise :class:`UserError` naming the file and row.
    """
    data = _read_bytes(path)
    n_rows, dim, start = _parse_header(path, data)
    if binary is None:
        binary = not _looks_like_text(data, start, dim)
    if binary:
        words, matrix = _parse_binary(path, data, start, n_rows, dim)
    else:
        words, matrix = _parse_text(path, data, start, n_rows, dim)
    if check_finite and not np.isfinite(matrix).all():
        row = int(np.flatnonzero(~np.isfinite(matrix).all(axis=1))[0])
        raise UserError(f"{path}: row {row + 1} ({words[row]!r}) has NaN or infinite values")
    return _drop_duplicates(path, words, matrix)


def _read_bytes(path: PathLike) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from exc


def _parse_header(path: PathLike, data: bytes) -> tuple[int, int, int]:
    """``(rows, dim, offset of the first row)`` from the ``"rows dim"`` first line."""
    end = data.find(b"\n", 0, 200)
    fields = data[: end if end >= 0 else 200].split()
    try:
        n_rows, dim = (int(field) for field in fields)
    except ValueError:
        n_rows = dim = -1
    if end < 0 or n_rows < 0 or dim < 1:
        raise UserError(f"{path}: not a word2vec file: the first line must be '<rows> <dimension>', got {data[:40]!r}")
    return n_rows, dim, end + 1


def _looks_like_text(data: bytes, start: int, dim: int) -> bool:
    """True when the first row after the header is a word and fields of printable ASCII.

    Binary float32 bytes are practically never all printable, so this holds for text rows only.  With as
    many fields as the header says they need not be valid numbers, so that a damaged text file is reported
    as such; with another count (a header that disagrees with its rows) they must all read as numbers, which
    a short run of binary bytes before a newline byte might otherwise imitate.
    """
    end = data.find(b"\n", start, start + 64 * (dim + 1) + _MAX_WORD_BYTES + _LONG_LINE)
    fields = data[start : end if end >= 0 else len(data)].split()
    if len(fields) == dim + 1 and all(_NUMBER.fullmatch(field) for field in fields[1:]):
        return True
    return len(fields) >= 3 and all(_DECIMAL.fullmatch(field) for field in fields[1:])


def _parse_binary(path: PathLike, data: bytes, pos: int, n_rows: int, dim: int) -> tuple[list[str], np.ndarray]:
    """Binary rows; a file that cannot be read with the header's dimension is checked for rows of another length,
    which garble every word after them (the first failure shows only far downstream, as an empty or non-UTF-8
    word, or a file that ends early), so that the error names the row whose length disagrees with the header."""
    try:
        return _scan_binary(path, data, pos, n_rows, dim)
    except UserError:
        mismatch = _binary_row_mismatch(data, pos, n_rows, dim)
        if mismatch is None:
            raise
        row, word, actual = mismatch
        raise UserError(
            f"{path}: row {row} ({word!r}) holds {actual} float32 values ({4 * actual} bytes) but the header says "
            f"dimension {dim}; the header does not match the rows: fix its dimension or re-export the file"
        ) from None


def _scan_binary(path: PathLike, data: bytes, pos: int, n_rows: int, dim: int) -> tuple[list[str], np.ndarray]:
    """Scan the rows once for word boundaries; the vector bytes are joined and decoded in one go."""
    step = 4 * dim
    raw_words: list[bytes] = []
    vectors: list[memoryview] = []
    view = memoryview(data)
    size = len(data)
    for row in range(n_rows):
        while pos < size and data[pos] == 0x0A:  # word2vec C ends rows with "\n"; gensim does not
            pos += 1
        space = data.find(b" ", pos, pos + _MAX_WORD_BYTES + 1)
        if space < 0 or space + 1 + step > size:
            what = "no word ends" if space < 0 and size - pos > _MAX_WORD_BYTES else "file ends"
            raise UserError(
                f"{path}: truncated or damaged at row {row + 1} of {n_rows} (byte {pos}): {what} before "
                f"its {dim} float32 values; the header promises {n_rows} rows of dimension {dim}"
            )
        if space == pos:
            raise UserError(f"{path}: row {row + 1} (byte {pos}) has an empty word; the file is damaged")
        raw_words.append(data[pos:space])
        vectors.append(view[space + 1 : space + 1 + step])
        pos = space + 1 + step
    if data[pos:].strip():
        raise UserError(
            f"{path}: data continues after the {n_rows} rows the header promises (byte {pos}); "
            "the header's row count or dimension is wrong"
        )
    words = _decode_words(path, raw_words)
    matrix = np.frombuffer(b"".join(vectors), dtype=_FLOAT32_LE).astype(np.float32).reshape(n_rows, dim)
    return words, matrix


def _binary_row_mismatch(data: bytes, start: int, n_rows: int, dim: int) -> tuple[int, str, int] | None:
    """On the error path: ``(row, word, values)`` of a binary row that is not ``dim`` values long.

    Walks the rows with the header's dimension to the first one that does not begin with a plausible word
    (a row of another length garbles the rows after it); the culprit is that row or one of the few before
    it, whose word may have been read from garbage.  A suspect is convicted by a length for which the rest
    of the file parses to its end, its later rows having that length (the header is wrong) or the header's
    (one damaged row).  ``None`` when every row fits the header or no length explains the file; then the
    scanner's own message (truncated, row count, not UTF-8) stands.
    """
    starts, pos = [], start
    for _ in range(n_rows):
        word_end = _word_end(data, pos)
        if word_end is None or word_end + 1 + 4 * dim > len(data):
            break
        starts.append(pos)
        pos = word_end + 1 + 4 * dim
    else:
        return None  # the rows fit the header's dimension: the fault lies elsewhere (row count, damage)
    failed = len(starts)
    for row in range(max(0, failed - _SUSPECT_ROWS), failed + 1):
        row_start = starts[row] if row < failed else pos
        word_end = _word_end(data, row_start)
        if word_end is None:
            continue
        later = n_rows - row - 1
        # A last row shorter than the header says cannot be told from a truncated file: the scanner says both.
        shortest = 1 if later else dim + 1
        for actual in range(shortest, min((len(data) - word_end - 1) // 4, _MAX_DIM_TRIED) + 1):
            after = word_end + 1 + 4 * actual
            if actual != dim and (_rows_fit(data, after, later, actual) or _rows_fit(data, after, later, dim)):
                return row + 1, data[row_start:word_end].lstrip(b"\n").decode("utf-8"), actual
    return None


def _word_end(data: bytes, pos: int) -> int | None:
    """Offset of the space after the binary row's word at ``pos``, or None if no plausible word is there."""
    while pos < len(data) and data[pos] == 0x0A:
        pos += 1
    space = data.find(b" ", pos, pos + _MAX_WORD_BYTES + 1)
    if space <= pos or _CONTROL.search(data, pos, space):
        return None
    try:
        data[pos:space].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return space


def _rows_fit(data: bytes, pos: int, rows: int, dim: int) -> bool:
    """Whether exactly ``rows`` binary rows of ``dim`` values run from ``pos`` to the end of the file."""
    for _ in range(rows):
        word_end = _word_end(data, pos)
        if word_end is None:
            return False
        pos = word_end + 1 + 4 * dim
    return pos <= len(data) and not data[pos:].strip()


def _parse_text(path: PathLike, data: bytes, start: int, n_rows: int, dim: int) -> tuple[list[str], np.ndarray]:
    lines = data[start:].split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) != n_rows:
        raise UserError(
            f"{path}: the header promises {n_rows} rows but the file has {len(lines)}; "
            "the file is truncated or the header is wrong"
        )
    raw_words: list[bytes] = []
    rests: list[bytes] = []
    for row, line in enumerate(lines):
        word, _, rest = line.strip().partition(b" ")
        rest = rest.strip()
        # Counting single spaces is cheap; only an odd-looking row pays for a full split.
        if rest.count(b" ") != dim - 1 and len(rest.split()) != dim or not word:
            raise UserError(f"{path}: row {row + 1} (line {row + 2}) has {len(rest.split())} values but the header "
                            f"says dimension {dim}; the row or the header is wrong")
        raw_words.append(word)
        rests.append(rest)
    words = _decode_words(path, raw_words)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # numpy warns (not raises) on unparsable text
        try:
            flat = np.fromstring(b"\n".join(rests), dtype=np.float32, sep=" ")
        except (ValueError, DeprecationWarning):
            flat = np.zeros(0, dtype=np.float32)
    if flat.size != n_rows * dim:
        raise UserError(f"{path}: {_first_bad_number(lines)} is not a number")
    return words, flat.reshape(n_rows, dim)


def _first_bad_number(lines: list[bytes]) -> str:
    """Locate the value that failed to parse (only called on the error path)."""
    for row, line in enumerate(lines):
        for field in line.split()[1:]:
            try:
                float(field)
            except ValueError:
                return f"row {row + 1} (line {row + 2}): {field[:40]!r}"
    return "a value"


def _decode_words(path: PathLike, raw_words: list[bytes]) -> list[str]:
    if not raw_words:
        return []
    try:
        return b"\n".join(raw_words).decode("utf-8").split("\n")
    except UnicodeDecodeError:
        for row, raw in enumerate(raw_words):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{path}: row {row + 1} has a word that is not UTF-8: {raw[:60]!r}") from None
        raise


def _drop_duplicates(path: PathLike, words: list[str], matrix: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Keep the first row of a repeated word, as gensim's loader does."""
    first = dict(zip(reversed(words), range(len(words) - 1, -1, -1), strict=True))
    if len(first) == len(words):
        return words, matrix
    keep = np.zeros(len(words), dtype=bool)
    keep[np.fromiter(first.values(), dtype=np.int64, count=len(first))] = True
    dropped = len(words) - len(first)
    logger.warning("%s: %d repeated words; keeping the first row of each", path, dropped)
    return [words[i] for i in np.flatnonzero(keep)], np.ascontiguousarray(matrix[keep])


# ------------------------------------------------------------------------------------------- fvocab


def write_fvocab(path: PathLike, words: Sequence[str], counts: Sequence[int] | np.ndarray) -> None:
    """Write gensim's / word2vec C's vocabulary file: ``word count`` per line, in the given order."""
    counts = np.asarray(counts)
    if counts.shape != (len(words),):
        raise UserError(f"fvocab {path}: {len(words)} words but counts has shape {counts.shape}")
    encoded = _encode_words(words)
    numbers = counts.astype(np.int64).astype(str).tolist()
    with atomic_write(path) as out:
        out.write(b"".join(w + b" " + c.encode() + b"\n" for w, c in zip(encoded, numbers, strict=True)))


def read_fvocab(path: PathLike) -> tuple[list[str], np.ndarray]:
    """Read a ``word count`` file; return ``(words, int64 counts)`` in file order."""
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line} is not UTF-8") from None
    words: list[str] = []
    counts: list[str] = []
    for line_no, line in enumerate(text.split("\n"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit():
            raise UserError(f"{path}: line {line_no} is not 'word count': {line[:60]!r}")
        words.append(fields[0])
        counts.append(fields[1])
    return words, np.array(counts, dtype=np.int64)


# ---------------------------------------------------------------------------------------------- npy


def write_npy(path_prefix: PathLike, words: Sequence[str], matrix: np.ndarray) -> tuple[str, str]:
    """Export as ``PREFIX.npy`` (float32 ``[rows, dim]``) and ``PREFIX.vocab.txt`` (one word per line).

    Row ``i`` of the matrix belongs to line ``i`` of the word list.  Returns the two paths written.
    """
    matrix = _check_matrix(words, matrix)
    encoded = _encode_words(words)
    prefix = os.fspath(path_prefix)
    npy_path, vocab_path = prefix + ".npy", prefix + ".vocab.txt"
    with atomic_write(npy_path) as out:
        np.save(out, matrix, allow_pickle=False)
    with atomic_write(vocab_path) as out:
        out.write(b"".join(word + b"\n" for word in encoded))
    return npy_path, vocab_path


def read_npy(path_prefix: PathLike) -> tuple[list[str], np.ndarray]:
    """Read back what :func:`write_npy` wrote."""
    prefix = os.fspath(path_prefix)
    try:
        matrix = np.load(prefix + ".npy", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {prefix}.npy: {exc}") from exc
    words = _decode_words(prefix + ".vocab.txt", _read_bytes(prefix + ".vocab.txt").split(b"\n"))
    if words and words[-1] == "":
        words.pop()
    if matrix.ndim != 2 or matrix.shape[0] != len(words):
        raise UserError(f"{prefix}.npy has shape {matrix.shape} but {prefix}.vocab.txt lists {len(words)} words")
    return words, matrix.astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------------ helpers


def _check_matrix(words: Sequence[str], matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != len(words):
        raise UserError(f"need one matrix row per word: {len(words)} words, matrix shape {matrix.shape}")
    return np.ascontiguousarray(matrix, dtype=np.float32)


def _encode_words(words: Sequence[str]) -> list[bytes]:
    """UTF-8 bytes of each word; empty words and words with whitespace or NUL cannot be stored."""
    joined = "\x00".join(words)
    # One regex pass over all words; the per-word search below runs only to name the culprit.
    if _WHITESPACE.search(joined) or joined.count("\x00") != max(len(words) - 1, 0) or "" in words:
        index = next(i for i, word in enumerate(words) if not word or _UNSTORABLE.search(word))
        raise UserError(f"word {index} ({words[index]!r}) is empty or contains whitespace or NUL; it cannot be stored")
    return joined.encode("utf-8").split(b"\x00") if words else []
