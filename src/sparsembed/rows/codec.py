"""Wire format for row-sparse gradients: one checked, versioned message per
:class:`~sparsembed.rows.coalesce.RowSparse`.

A message is a 56-byte little-endian header, the row-id section (one :mod:`sparsembed.rows.rowsets` encoding,
optionally zstd / lz4 compressed) and the values, ``n x dim`` rows in the wire dtype (int8: ``n`` float32 row scales,
then ``n x dim`` int8 values, :mod:`sparsembed.rows.quantize`)::

    offset  size  field
         0     4  magic  b"SPRW"
         4     1  version (1)
         5     1  row-set encoding (0 all, 1 index, 2 complement, 3 bitmap, 4 roaring)
         6     1  value dtype (0 float32, 1 float16, 2 bfloat16, 3 int8 with a float32 scale per row)
         7     1  id-section compression (0 none, 1 zstd, 2 lz4)
         8     8  num_rows
        16     8  n, rows sent
        24     4  dim
        28     4  reserved, zero
        32     8  id-section length on the wire
        40     8  id-section length uncompressed
        48     8  checksum of everything else: header[:48], id section, values

The checksum is a 64-bit xxHash64-style hash (4 multiply-rotate lanes, not bit-compatible with xxh64), chained
over the three parts. It runs at memory speed, where zlib's CRC-32 would cap the round trip (measured, see
BENCHMARKS.md). Compressing the id section is :mod:`sparsembed.rows.compress`'s.

:func:`decode` checks every field and length before it allocates anything and raises :class:`CodecError` on
any malformed input: truncation, bad magic / version / codes, checksum mismatch, sizes that do not add up,
ids unsorted, repeated or out of range.
"""

from __future__ import annotations

import struct
from typing import Any

import numba
import numpy as np
import torch

from sparsembed.errors import UserError
from sparsembed.rows import compress as compression
from sparsembed.rows import quantize, rowsets
from sparsembed.rows.coalesce import RowSparse
from sparsembed.rows.compress import MAX_EXPANSION
from sparsembed.rows.values import Values

__all__ = ["CodecError", "Values", "value_type", "encode", "encode_array", "decode", "header", "MAGIC", "VERSION",
           "HEADER_SIZE", "MAX_EXPANSION"]

MAGIC = b"SPRW"
VERSION = 1
_HEADER = struct.Struct("<4sBBBBQQIIQQQ")
HEADER_SIZE = _HEADER.size
_SUM_OFFSET = 48
#: Sanity limits: rows addressable by the format and the widest row (and :data:`MAX_EXPANSION`, the most a
#: compressed id section may expand, from :mod:`sparsembed.rows.compress`).
MAX_ROWS = 1 << 48
MAX_DIM = 1 << 24


_DTYPES = {v.value: (v.code, v.dtype, v.width) for v in Values}
_DTYPE_BY_CODE = {code: name for name, (code, _, _) in _DTYPES.items()}


class CodecError(UserError):
    """A message that cannot be decoded; the text says which check failed (a ValueError, and a UserError so the
    command line reports it in one line, from whichever rank received it)."""

    every_rank_reports = True


def value_type(values: str) -> Values:
    """The wire value type named ``values``; a :class:`UserError` naming the allowed ones otherwise."""
    if values not in _DTYPES:
        raise UserError(f"codec.encode: values must be one of {sorted(_DTYPES)}, got {values!r}")
    return Values(values)


def encode(rs: RowSparse, rows: str = "auto", values: str = "fp32", compress: str | None = None) -> bytes:
    """Serialize ``rs`` into one message.

    Args:
        rs: the gradient; if not coalesced, a coalesced copy is encoded (``rs`` is left as is).
        rows: row-set encoding, ``"auto"`` (smallest exact size) or one of ``index``, ``complement``,
            ``bitmap``, ``roaring``, ``all``.
        values: wire dtype ``"fp32"`` (default, lossless for float32), ``"fp16"`` or ``"bf16"`` (rounded), or
            ``"int8"`` (each row scaled by its largest magnitude / 127 and rounded to int8; finite rows only).
        compress: ``None``, ``"zstd"`` or ``"lz4"`` for the id section; kept only where it makes the section
            smaller (the header records what was done).

    Raises:
        UserError: unknown option, ``dim == 0``, or an encoding that cannot hold this set.
    """
    fields, id_wire, payload = _prepare(rs, rows, values, compress)
    seed = _checksum(payload, _checksum(id_wire, _checksum(_HEADER.pack(*fields)[:_SUM_OFFSET], 0)))
    fields[-1] = seed
    return b"".join((_HEADER.pack(*fields), id_wire, payload))


def encode_array(rs: RowSparse, rows: str = "auto", values: str = "fp32", compress: str | None = None,
                 out: np.ndarray | None = None, checksum: bool = True) -> np.ndarray:
    """Like :func:`encode`, into a writable uint8 numpy array (same bytes): a fresh one, or the front of ``out``
    (e.g. a shared-memory slot; ValueError if it is too small), returned as a view of it.

    Faster for large messages: numpy's large buffers get huge pages, and the values are copied and
    checksummed in one pass. ``torch.from_numpy`` of the result shares it, e.g. for ``torch.distributed``.
    ``checksum=False`` leaves the checksum field zero, for a message that never leaves this host's memory
    (read with ``decode(..., verify=False)``).
    """
    fields, id_wire, payload = _prepare(rs, rows, values, compress)
    start = HEADER_SIZE + len(id_wire)
    total = start + payload.shape[0]
    if out is None:
        out = np.empty(total, np.uint8)
    elif out.dtype != np.uint8 or out.ndim != 1 or out.shape[0] < total:
        raise ValueError(f"codec.encode_array: out must be a 1-d uint8 array of at least {total} bytes")
    else:
        out = out[:total]
    out[HEADER_SIZE:start] = np.frombuffer(id_wire, np.uint8)
    if checksum:
        seed = _checksum(id_wire, _checksum(_HEADER.pack(*fields)[:_SUM_OFFSET], 0))
        fields[-1] = _checksum(payload, seed, out[start:])
    else:
        out[start:] = payload
    out[:HEADER_SIZE] = np.frombuffer(_HEADER.pack(*fields), np.uint8)
    return out


def _prepare(rs: RowSparse, rows: str, values: str, compress: str | None) -> tuple[list, bytes, np.ndarray]:
    """Header fields (checksum 0), id section and value bytes of a message."""
    value_type(values)
    if compress not in compression.CODES:
        raise UserError(f"codec.encode: compress must be None, 'zstd' or 'lz4', got {compress!r}")
    if rows != "auto" and rows not in rowsets.ENCODINGS:
        raise UserError(f"codec.encode: rows must be 'auto' or one of {sorted(rowsets.ENCODINGS)}, got {rows!r}")
    if rs.dim < 1 or rs.dim > MAX_DIM:
        raise UserError(f"codec.encode: dim must be in [1, {MAX_DIM}], got {rs.dim}")
    if rs.num_rows > MAX_ROWS:
        raise UserError(f"codec.encode: num_rows {rs.num_rows} exceeds the format's {MAX_ROWS}")
    rs = rs.coalesced()
    ids, num_rows = rs.ids.numpy(), rs.num_rows
    try:
        enc = rowsets.choose(ids, num_rows) if rows == "auto" else rowsets.get(rows)
        id_raw = enc.encode(ids, num_rows)
    except rowsets.RowSetError as e:
        raise UserError(f"codec.encode: {e}") from None
    id_wire, comp = compression.compress(id_raw, compress)
    dcode, torch_dtype, _ = _DTYPES[values]
    if values == Values.INT8:
        scales, q = quantize.quantize(rs.values.float().numpy())
        payload = np.concatenate((scales.view(np.uint8), q.reshape(-1).view(np.uint8)))
    else:
        vals = rs.values.to(torch_dtype).contiguous()
        payload = (vals.view(torch.int16) if torch_dtype == torch.bfloat16 else vals).numpy().reshape(-1)
        payload = payload.view(np.uint8)
    fields = [MAGIC, VERSION, enc.code, dcode, compression.CODES[comp], num_rows, rs.n, rs.dim, 0, len(id_wire)]
    return [*fields, len(id_raw), 0], id_wire, payload


def decode(buf: Any, dtype: str = "fp32", verify: bool = True) -> RowSparse:
    """Parse and check one message; returns a coalesced RowSparse (strictly increasing ids).

    Args:
        buf: bytes-like (bytes, bytearray, memoryview, uint8 array).
        dtype: ``"fp32"`` (default) returns float32 values; ``"wire"`` keeps the message's dtype (int8 messages
            always decode to float32: a row's values mean nothing without its scale).
        verify: check the checksum; False only for a message that never crossed a wire (written by
            ``encode_array(..., checksum=False)`` into this host's shared memory): every other check still runs.

    Values are a fresh copy, except when no conversion is needed and ``buf`` is writable (a bytearray or
    writable memoryview): then they are a zero-copy view of ``buf``.

    Raises:
        CodecError: anything malformed.
    """
    if dtype not in ("fp32", "wire"):
        raise UserError(f"codec.decode: dtype must be 'fp32' or 'wire', got {dtype!r}")
    try:
        mv = memoryview(buf).cast("B")
    except (TypeError, ValueError) as e:
        raise CodecError(f"codec.decode: need a contiguous bytes-like buffer ({e})") from None
    head = _parse_header(mv)
    magic, version, rcode, dcode, ccode, num_rows, n, dim, _, id_len, id_raw_len, expect = head
    end_ids = HEADER_SIZE + id_len
    got = _checksum(mv[end_ids:], _checksum(mv[HEADER_SIZE:end_ids], _checksum(mv[:_SUM_OFFSET], 0))) if verify \
        else expect
    if got != expect:
        raise CodecError(f"codec.decode: checksum mismatch (header {expect:#018x}, message {got:#018x})")
    try:
        id_raw = compression.decompress(mv[HEADER_SIZE:end_ids], compression.METHODS[ccode], id_raw_len)
    except compression.CompressError as e:
        raise CodecError(f"codec.decode: {e}") from None
    try:
        ids = rowsets.get(rcode).decode(id_raw, n, num_rows)
    except rowsets.RowSetError as e:
        raise CodecError(f"codec.decode: row ids: {e}") from None
    name = _DTYPE_BY_CODE[dcode]
    if name == Values.INT8:
        return RowSparse.from_sorted(torch.from_numpy(ids), _decode_int8(mv, n, dim, end_ids), num_rows)
    raw = np.frombuffer(mv, np.float32 if name == "fp32" else np.uint16, n * dim, end_ids).reshape(n, dim)
    if name == "fp32" or dtype == "wire":
        vals = torch.from_numpy(raw if raw.flags.writeable else raw.copy())
        if name != "fp32":
            vals = vals.view(torch.int16).view(_DTYPES[name][1])
    elif name == "fp16":
        vals = torch.from_numpy(raw.view(np.float16).astype(np.float32))
    else:
        vals = torch.from_numpy((raw.astype(np.uint32) << 16).view(np.float32))
    out = RowSparse.from_sorted(torch.from_numpy(ids), vals, num_rows)
    return out


def _decode_int8(mv: memoryview, n: int, dim: int, start: int) -> torch.Tensor:
    """Float32 rows of an int8 value section at ``start``: ``n`` scales, then ``n x dim`` int8."""
    scales = np.frombuffer(mv, np.float32, n, start).copy()  # copied: the section need not be 4-byte aligned
    q = np.frombuffer(mv, np.int8, n * dim, start + 4 * n).reshape(n, dim)
    return torch.from_numpy(quantize.dequantize(scales, q))


def header(buf: Any) -> dict[str, Any]:
    """The checked header fields of a message, without decoding the rest."""
    names = ("magic", "version", "rows", "dtype", "compress", "num_rows", "n", "dim", "reserved", "id_len")
    names = (*names, "id_raw_len", "checksum")
    d = dict(zip(names, _parse_header(memoryview(buf).cast("B")), strict=True))
    d["rows"] = rowsets.get(d["rows"]).name
    d["dtype"] = _DTYPE_BY_CODE[d["dtype"]]
    d["compress"] = compression.METHODS[d["compress"]]
    return d


def _parse_header(mv: memoryview) -> tuple:
    if len(mv) < HEADER_SIZE:
        raise CodecError(f"codec.decode: truncated: {len(mv)} bytes, header alone is {HEADER_SIZE}")
    head = _HEADER.unpack_from(mv)
    magic, version, rcode, dcode, ccode, num_rows, n, dim, reserved, id_len, id_raw_len, _ = head
    if magic != MAGIC:
        raise CodecError(f"codec.decode: bad magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise CodecError(f"codec.decode: unsupported version {version} (this build reads {VERSION})")
    if rcode not in (c.code for c in rowsets.ENCODINGS.values()):
        raise CodecError(f"codec.decode: unknown row-set encoding code {rcode}")
    if dcode not in _DTYPE_BY_CODE:
        raise CodecError(f"codec.decode: unknown value dtype code {dcode}")
    if ccode not in compression.METHODS:
        raise CodecError(f"codec.decode: unknown compression code {ccode}")
    if reserved:
        raise CodecError(f"codec.decode: reserved header field is {reserved}, expected 0")
    if num_rows > MAX_ROWS or n > num_rows:
        raise CodecError(f"codec.decode: n={n} rows of num_rows={num_rows} (limit {MAX_ROWS})")
    if not 1 <= dim <= MAX_DIM:
        raise CodecError(f"codec.decode: dim {dim} outside [1, {MAX_DIM}]")
    body = len(mv) - HEADER_SIZE
    value_bytes = n * Values(_DTYPE_BY_CODE[dcode]).row_bytes(dim)
    if id_len + value_bytes != body:
        raise CodecError(
            f"codec.decode: sizes do not add up: {id_len} id bytes + {n}x{dim} values = "
            f"{id_len + value_bytes} bytes, message body has {body}"
        )
    if ccode == 0 and id_raw_len != id_len:
        raise CodecError(f"codec.decode: uncompressed id section of {id_len} bytes claims {id_raw_len}")
    if ccode and id_raw_len > MAX_EXPANSION * id_len + 4096:
        raise CodecError(f"codec.decode: id section would expand {id_len} -> {id_raw_len} bytes")
    return head


# -- checksum -----------------------------------------------------------------------------------------------------
_P1, _P2, _P3 = np.uint64(0x9E3779B185EBCA87), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9)
_P4, _P5 = np.uint64(0x85EBCA77C2B2AE63), np.uint64(0x27D4EB2F165667C5)
_NO_COPY = np.empty(0, np.uint64)


def _checksum(data: Any, seed: int, copy_to: np.ndarray | None = None) -> int:
    """64-bit hash of bytes-like ``data`` chained from ``seed``; also copies ``data`` into ``copy_to``."""
    a = np.frombuffer(data, np.uint8)
    nw = a.shape[0] // 8
    words = np.frombuffer(data, "<u8", nw)
    tail = a[8 * nw :]
    if copy_to is None:
        return int(_hash_kernel(words, tail, np.uint64(seed), _NO_COPY))
    dst = np.frombuffer(copy_to, "<u8", nw)
    copy_to[8 * nw :] = tail
    return int(_hash_kernel(words, tail, np.uint64(seed), dst))


@numba.njit(cache=True, nogil=True, inline="always")
def _rotl(x, r):  # pragma: no cover - compiled
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


@numba.njit(cache=True, nogil=True, inline="always")
def _round(acc, w):  # pragma: no cover - compiled
    acc += w * _P2
    return _rotl(acc, 31) * _P1


@numba.njit(cache=True, nogil=True)
def _hash_kernel(words, tail, seed, dst):  # pragma: no cover - compiled
    """Four independent lanes keep the multiplier busy; ``dst`` (same length as words, or empty) gets a copy."""
    n = words.shape[0]
    copy = dst.shape[0] == n and n > 0
    a0, a1, a2, a3 = seed + _P1 + _P2, seed + _P2, seed, seed - _P1
    i = 0
    while i + 4 <= n:
        w0, w1, w2, w3 = words[i], words[i + 1], words[i + 2], words[i + 3]
        if copy:
            dst[i], dst[i + 1], dst[i + 2], dst[i + 3] = w0, w1, w2, w3
        a0, a1, a2, a3 = _round(a0, w0), _round(a1, w1), _round(a2, w2), _round(a3, w3)
        i += 4
    h = _rotl(a0, 1) + _rotl(a1, 7) + _rotl(a2, 12) + _rotl(a3, 18)
    while i < n:
        if copy:
            dst[i] = words[i]
        h = _rotl(h ^ _round(np.uint64(0), words[i]), 27) * _P1 + _P4
        i += 1
    for j in range(tail.shape[0]):
        h = _rotl(h ^ (np.uint64(tail[j]) * _P5), 11) * _P1
    h ^= np.uint64(n * 8 + tail.shape[0])
    h ^= h >> np.uint64(33)
    h *= _P2
    h ^= h >> np.uint64(29)
    h *= _P3
    h ^= h >> np.uint64(32)
    return h
