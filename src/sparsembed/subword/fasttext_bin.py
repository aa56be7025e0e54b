"""fastText's model files: the ``.bin`` model (writer and reader) and the ``.vec`` text vectors (writer).

This module owns the byte layout of fastText's ``FastText::saveModel`` / ``loadModel`` (fastText 0.9, file
format version 12), so that sparsembed's subword models load in ``gensim.models.fasttext.load_facebook_model``
/ ``load_facebook_vectors`` and in the fastText tool itself, and so that models written by fastText can be read.
All integers and floats are little-endian (fastText writes native order; every platform it runs on is LE)::

    int32 magic 793712314, int32 version 12
    Args::save        int32 dim, ws, epoch, minCount, neg, wordNgrams, loss, model, bucket, minn, maxn,
                      lrUpdateRate; float64 t
    Dictionary::save  int32 size, nwords, nlabels; int64 ntokens, pruneidx_size;
                      size x (word bytes, NUL, int64 count, int8 entry type); pruneidx_size x (int32, int32)
    bool quant_input; DenseMatrix::save: int64 rows (nwords + bucket), int64 dim, rows x dim float32
    bool qout;        DenseMatrix::save: int64 rows (nwords), int64 dim, rows x dim float32

fastText's vector for a word is the *mean* of the input rows of its subwords: the word's own row (when it is
in the vocabulary) and the bucket rows ``nwords + hash(ngram) % bucket`` of its character n-grams of ``<word>``.
(One exception there: fastText gives the vocabulary word ``</s>``, its end-of-line token, no n-grams; gensim does.)
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO, NoReturn, Protocol

import numpy as np

from sparsembed.errors import UserError
from sparsembed.fsutil import atomic_write
from sparsembed.word2vec.formats import write_word2vec

__all__ = [
    "FASTTEXT_MAGIC",
    "FASTTEXT_VERSION",
    "FastTextArgs",
    "FastTextModel",
    "SubwordPartsLike",
    "read_bin",
    "write_bin",
    "write_vec",
]

PathLike = str | os.PathLike

FASTTEXT_MAGIC = 793712314  # FASTTEXT_FILEFORMAT_MAGIC_INT32 in fasttext.cc
FASTTEXT_VERSION = 12  # "Version 1b", fastText 0.2 onwards
# Version 11 ("1a", the 2017 pretrained wiki models) has the same layout; fastText itself loads both.
_READABLE_VERSIONS = (11, 12)

# Enums of args.h: model_name { cbow = 1, sg, sup }, loss_name { hs = 1, ns, softmax, ova }.
MODEL_CBOW, MODEL_SKIPGRAM, MODEL_SUPERVISED = 1, 2, 3
LOSS_HS, LOSS_NS, LOSS_SOFTMAX, LOSS_OVA = 1, 2, 3, 4
ENTRY_WORD, ENTRY_LABEL = 0, 1

_SIGNATURE = struct.Struct("<ii")
_ARGS = struct.Struct("<12id")
_DICT_HEADER = struct.Struct("<iiiqq")
_ENTRY_TAIL = struct.Struct("<qb")
_MATRIX_HEADER = struct.Struct("<?qq")  # the quant/qout flag in front of each DenseMatrix
_FLOAT32 = np.dtype("<f4")
_BLOCK_ROWS = 65536


class SubwordPartsLike(Protocol):
    """What :func:`write_bin` reads from a model: the fields of ``sparsembed.subword.parts.SubwordParts``.

    Declared here so that this module does not depend on how the trainer stores its parts.  The output matrix
    (``nwords x dim``) is read from ``syn1`` (SubwordParts' name) or ``output``; an optional ``ntokens`` gives
    the corpus token count.
    """

    words: Sequence[str]
    counts: np.ndarray
    dim: int
    window: int
    epochs: int
    min_count: int
    negative: int
    sample: float
    sg: bool
    minn: int
    maxn: int
    buckets: int
    word_rows: np.ndarray
    bucket_rows: Callable[[int, int], np.ndarray]


@dataclass(frozen=True)
class FastTextArgs:
    """The hyper-parameters stored in a ``.bin`` (``Args::save``); names follow fastText's command line.

    ``loss`` and ``model`` are fastText's enum values (see ``LOSS_*`` / ``MODEL_*``).  fastText does not store the
    learning rate, the thread count or the corpus path.
    """

    dim: int
    ws: int
    epoch: int
    min_count: int
    neg: int
    word_ngrams: int
    loss: int
    model: int
    bucket: int
    minn: int
    maxn: int
    lr_update_rate: int
    t: float


@dataclass
class FastTextModel:
    """A fastText ``.bin`` as stored.

    ``words`` lists every dictionary entry (the ``nwords`` words first, then the ``nlabels`` labels of a
    supervised model) and ``counts`` / ``entry_types`` go with them.  ``input`` has ``nwords + bucket`` rows (word
    rows, then bucket rows); ``output`` has one row per word (per label for a supervised model).  Both are
    read-only memory maps of the file unless :func:`read_bin` was asked to copy them.
    """

    path: str
    version: int
    args: FastTextArgs
    words: list[str]
    counts: np.ndarray
    entry_types: np.ndarray
    nwords: int
    nlabels: int
    ntokens: int
    input: np.ndarray
    output: np.ndarray


# -------------------------------------------------------------------------------------------------- writing


def write_bin(path: PathLike, parts: SubwordPartsLike, *, block_rows: int = _BLOCK_ROWS) -> None:
    """Write ``parts`` as a fastText ``.bin`` model (format version 12) at ``path``, atomically.

    The input matrix (word rows, then the rows of all ``parts.buckets`` buckets) is written ``block_rows``
    rows at a time, calling ``parts.bucket_rows(start, stop)`` per block, so a model with millions of buckets
    never needs its whole bucket matrix in memory.  The file is stored as fastText would store an unsupervised
    negative-sampling model: loss ``ns``, word n-grams 1, ``lrUpdateRate`` 100, ``t`` = ``parts.sample``, every
    entry a word, no pruning index, not quantized.  ``ntokens`` is ``parts.ntokens`` when the parts carry it
    (fastText stores every token it read, including the rare words it dropped and one ``</s>`` per line), else
    the sum of the counts.  The output matrix is ``parts.syn1`` (or ``parts.output``); when it is None, zero rows
    are written (the vectors do not use them, but both loaders insist on an output matrix).

    Raises :class:`UserError` for parts that cannot be stored (empty, NUL-holding or repeated words, shapes that
    disagree, values beyond the format's int32 fields) and for write failures; nothing is left half-written.
    """
    if block_rows < 1:
        raise ValueError(f"block_rows must be positive, got {block_rows}")
    nwords, dim, buckets = len(parts.words), int(parts.dim), int(parts.buckets)
    encoded = _encode_words(path, parts.words)
    counts = np.asarray(parts.counts)
    if counts.shape != (nwords,) or (nwords and counts.min() < 0):
        raise UserError(f"cannot write {path}: {nwords} words need {nwords} counts >= 0, got shape {counts.shape}")
    if dim < 1 or buckets < 0:
        raise UserError(f"cannot write {path}: dimension {dim} and bucket count {buckets} make no model")
    if int(parts.negative) < 1:
        raise UserError(f"cannot write {path}: fastText .bin export needs a negative-sampling model (negative > 0)")
    _check_rows(path, "word_rows", parts.word_rows, nwords, dim)
    output = getattr(parts, "syn1", None)
    if output is None:
        output = getattr(parts, "output", None)
    if output is not None:
        _check_rows(path, "output", output, nwords, dim)
    ntokens = getattr(parts, "ntokens", None)
    ntokens = int(counts.sum()) if ntokens is None else int(ntokens)
    # With no buckets fastText must see maxn 0: it would otherwise take a hash modulo 0 (SIGFPE) per word.
    minn, maxn = (int(parts.minn), int(parts.maxn)) if buckets else (0, 0)
    try:
        header = b"".join([
            _SIGNATURE.pack(FASTTEXT_MAGIC, FASTTEXT_VERSION),
            _ARGS.pack(
                dim, int(parts.window), int(parts.epochs), int(parts.min_count), int(parts.negative), 1,
                LOSS_NS, MODEL_SKIPGRAM if parts.sg else MODEL_CBOW, buckets, minn, maxn, 100, float(parts.sample),
            ),
            # pruneidx_size -1 means "no pruning"; 0 would tell fastText to drop every n-gram of every word.
            _DICT_HEADER.pack(nwords, nwords, 0, ntokens, -1),
        ])
    except struct.error as exc:
        raise UserError(f"cannot write {path}: a setting does not fit fastText's header fields ({exc})") from None
    tails = [_ENTRY_TAIL.pack(count, ENTRY_WORD) for count in counts.astype(np.int64).tolist()]

    with atomic_write(path) as out:
        out.write(header)
        for start in range(0, nwords, 8192):
            out.write(b"".join(w + b"\0" + t for w, t in zip(encoded[start : start + 8192],
                                                              tails[start : start + 8192], strict=True)))
        out.write(_MATRIX_HEADER.pack(False, nwords + buckets, dim))
        _write_rows(out, path, "word_rows", lambda a, b: parts.word_rows[a:b], nwords, dim, block_rows)
        bucket_rows = parts.bucket_rows
        if not callable(bucket_rows):  # an array of all bucket rows is accepted too
            bucket_rows = _slicer(bucket_rows)
        _write_rows(out, path, "bucket_rows", bucket_rows, buckets, dim, block_rows)
        out.write(_MATRIX_HEADER.pack(False, nwords, dim))
        if output is None:
            _write_rows(out, path, "output", lambda a, b: np.zeros((b - a, dim), _FLOAT32), nwords, dim, block_rows)
        else:
            _write_rows(out, path, "output", _slicer(output), nwords, dim, block_rows)


def write_vec(path: PathLike, words: Sequence[str], vectors: np.ndarray) -> None:
    """Write fastText's ``.vec`` text: a ``"<words> <dim>"`` line, then ``word v1 ... vdim`` per word.

    This is the word2vec text format (fastText's ``saveVectors``), so the word2vec writer does the work;
    values carry 9 significant digits (fastText prints 5), enough to read float32 back exactly.  fastText
    stores each word's full vector there, the mean of its word row and n-gram rows, not the bare word row,
    so pass those.  Words must be non-empty and free of whitespace (UserError naming ``path`` otherwise).
    """
    try:
        write_word2vec(path, words, vectors, binary=False)
    except UserError as exc:
        if os.fspath(path) in str(exc):
            raise
        raise UserError(f"cannot write {path}: {exc}") from None


def _encode_words(path: PathLike, words: Sequence[str]) -> list[bytes]:
    """UTF-8 bytes per word (surrogateescape, so words read from an undecodable ``.bin`` go back unchanged)."""
    encoded = [word.encode("utf-8", "surrogateescape") for word in words]
    for index, raw in enumerate(encoded):
        if not raw or b"\0" in raw:
            raise UserError(f"cannot write {path}: word {index} ({words[index]!r}) is empty or holds NUL, "
                            "which fastText's dictionary cannot store")
    if len(set(encoded)) != len(encoded):
        first: dict[bytes, int] = {}
        index = next(i for i, raw in enumerate(encoded) if first.setdefault(raw, i) != i)
        raise UserError(f"cannot write {path}: word {index} ({words[index]!r}) appears twice; "
                        "fastText and gensim need each word once")
    return encoded


def _check_rows(path: PathLike, name: str, rows: np.ndarray, n: int, dim: int) -> None:
    shape = getattr(rows, "shape", None)
    if shape is None or tuple(shape) != (n, dim):
        raise UserError(f"cannot write {path}: the model's {name} have shape {shape}, expected {(n, dim)}")


def _slicer(rows: np.ndarray) -> Callable[[int, int], np.ndarray]:
    return lambda start, stop: rows[start:stop]


def _write_rows(out: BinaryIO, path: PathLike, name: str, rows: Callable[[int, int], np.ndarray], n: int, dim: int,
                block_rows: int) -> None:
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        block = np.asarray(rows(start, stop))
        if block.shape != (stop - start, dim):
            raise UserError(f"cannot write {path}: the model's {name}[{start}:{stop}] have shape {block.shape}, "
                            f"expected {(stop - start, dim)}")
        out.write(np.ascontiguousarray(block, dtype=_FLOAT32).data)


# -------------------------------------------------------------------------------------------------- reading


def read_bin(path: PathLike, *, mmap_matrices: bool = True) -> FastTextModel:
    """Read a fastText ``.bin`` model (format versions 11 and 12), written by fastText or :func:`write_bin`.

    The two matrices are read-only memory maps of the file (``mmap_matrices=False`` copies them into memory).
    A file that is not a fastText model, has another format version, is truncated or has trailing data,
    holds a quantized model (``.ftz``) or a pruned dictionary without quantization, raises :class:`UserError`
    naming the file, what is wrong, and what to do.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < _SIGNATURE.size + _ARGS.size + _DICT_HEADER.size:
                _truncated(name, size, "in its header")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _parse(name, data, size, mmap_matrices)
    except OSError as exc:
        raise UserError(f"cannot read {name}: {exc.strerror or exc}") from exc


def _parse(path: str, data: mmap.mmap, size: int, mmap_matrices: bool) -> FastTextModel:
    magic, version = _SIGNATURE.unpack_from(data, 0)
    if magic != FASTTEXT_MAGIC:
        raise UserError(f"{path}: not a fastText model (magic number {magic}, expected {FASTTEXT_MAGIC}); "
                        "pass a .bin saved by fastText 0.2 or later or by 'sparsembed export --format fasttext'")
    if version not in _READABLE_VERSIONS:
        raise UserError(f"{path}: fastText file format version {version}, but this reader knows versions "
                        f"{_READABLE_VERSIONS[0]}-{_READABLE_VERSIONS[-1]}; save the model again with fastText 0.9")
    args = FastTextArgs(*_ARGS.unpack_from(data, _SIGNATURE.size))
    if version == 11 and args.model == MODEL_SUPERVISED:
        # fastText's own compatibility rule: version-11 supervised models were trained without char n-grams.
        args = FastTextArgs(**{**args.__dict__, "maxn": 0})
    pos = _SIGNATURE.size + _ARGS.size
    n_entries, nwords, nlabels, ntokens, prune_size = _DICT_HEADER.unpack_from(data, pos)
    pos += _DICT_HEADER.size
    if args.dim < 1 or args.bucket < 0 or min(n_entries, nwords, nlabels) < 0 or nwords + nlabels != n_entries:
        raise UserError(f"{path}: damaged fastText header (dim {args.dim}, bucket {args.bucket}, {n_entries} "
                        f"entries = {nwords} words + {nlabels} labels?); download or export the model again")
    if n_entries * (1 + _ENTRY_TAIL.size) > size - pos:  # each entry takes at least a NUL and its tail
        _truncated(path, size, f"in its dictionary of {n_entries} entries")
    raw_words: list[bytes] = []
    tails: list[tuple[int, int]] = []
    for _ in range(n_entries):
        end = data.find(b"\0", pos)
        if end < 0 or end + 1 + _ENTRY_TAIL.size > size:
            _truncated(path, size, f"in its dictionary at entry {len(raw_words) + 1} of {n_entries}")
        raw_words.append(data[pos:end])
        tails.append(_ENTRY_TAIL.unpack_from(data, end + 1))
        pos = end + 1 + _ENTRY_TAIL.size
    if prune_size > 0:
        pos += 8 * prune_size
        if pos > size:
            _truncated(path, size, "in its pruning index")
    words = (b"\n".join(raw_words).decode("utf-8", "surrogateescape").split("\n") if raw_words else [])
    if len(words) != n_entries:  # a word holding a newline byte: decode one by one
        words = [raw.decode("utf-8", "surrogateescape") for raw in raw_words]
    counts = np.fromiter((t[0] for t in tails), dtype=np.int64, count=n_entries)
    entry_types = np.fromiter((t[1] for t in tails), dtype=np.int8, count=n_entries)

    if prune_size >= 0 and pos < size and not data[pos]:
        # fastText refuses these too ("Invalid model file", its issue #332): the n-grams index a pruned table.
        raise UserError(f"{path}: a pruned fastText dictionary ({prune_size} n-gram entries) without quantization; "
                        "fastText itself rejects such files: download the updated model or save it again")
    input_, pos = _matrix(path, data, size, pos, "input", mmap_matrices)
    rows = nwords + args.bucket
    if input_.shape != (rows, args.dim):
        raise UserError(f"{path}: the input matrix is {input_.shape[0]} x {input_.shape[1]} but the header needs "
                        f"{rows} x {args.dim} (words + buckets x dim); the file is damaged")
    output, pos = _matrix(path, data, size, pos, "output", mmap_matrices)
    if output.shape[1] != args.dim:
        raise UserError(f"{path}: the output matrix has {output.shape[1]} columns, the header says dim {args.dim}; "
                        "the file is damaged")
    if pos != size:
        raise UserError(f"{path}: {size - pos} bytes follow the end of the model (byte {pos}); the file is damaged "
                        "or not a single fastText model")
    return FastTextModel(path=path, version=version, args=args, words=words, counts=counts,
                         entry_types=entry_types, nwords=nwords, nlabels=nlabels, ntokens=ntokens,
                         input=input_, output=output)


def _matrix(path: str, data: mmap.mmap, size: int, pos: int, which: str, mmap_matrices: bool
            ) -> tuple[np.ndarray, int]:
    """The quant flag and DenseMatrix at ``pos``; returns the matrix and the offset after it."""
    if pos + _MATRIX_HEADER.size > size:
        _truncated(path, size, f"before its {which} matrix")
    quantized, rows, cols = _MATRIX_HEADER.unpack_from(data, pos)
    if quantized:
        raise UserError(f"{path}: a quantized fastText model (.ftz): its {which} vectors are product-quantized, "
                        "which this reader does not decode; use the unquantized .bin model")
    if rows < 0 or cols < 1:
        raise UserError(f"{path}: the {which} matrix header says {rows} x {cols}; the file is damaged")
    start = pos + _MATRIX_HEADER.size
    end = start + rows * cols * _FLOAT32.itemsize
    if end > size:
        _truncated(path, size, f"in its {which} matrix of {rows} x {cols} floats, which needs {end} bytes")
    if rows == 0:
        matrix = np.zeros((0, cols), dtype=np.float32)
    elif mmap_matrices:
        matrix = np.memmap(path, dtype=_FLOAT32, mode="r", offset=start, shape=(rows, cols))
    else:
        matrix = np.frombuffer(data, dtype=_FLOAT32, count=rows * cols, offset=start).reshape(rows, cols).copy()
    return matrix, end


def _truncated(path: str, size: int, where: str) -> NoReturn:
    raise UserError(f"{path}: truncated fastText model: the file ends at byte {size}, {where}; "
                    "copy, download or export it again")
