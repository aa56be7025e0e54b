"""The messages of an exchange: one rank's rows as bytes, and back.

* :class:`RowMessages`: rows ``[0, num_rows)`` of a matrix, one :mod:`sparsembed.rows.codec` message (row-set
  coded ids, values in the wire dtype, checksummed);
* :class:`KeyMessages`: rows of arbitrary int64 keys: ``int64 n``, the raw sorted keys, then a codec message of
  the values (raw keys cost 8 bytes a row against ``dim * 4`` for the values: compressing them is not worth it);
* :func:`pack_raw` / :func:`unpack_raw`: the fused sync's segments, ``n, ids [n] int64, rows [n, dim] float32``
  (no codec: float32 only, and the fused message is summed where it lands).

Both codec classes share ``encode``, ``decode`` (to float32 rows), ``coalesce`` and ``encoding``, so the replicated
and sharded exchanges treat row ids and keys alike. :func:`coalesce_keyed` sums the rows of repeated keys.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import torch

from sparsembed.errors import UserError
from sparsembed.rows import codec, quantize, rowsets
from sparsembed.rows.coalesce import RowSparse

__all__ = ["RowMessages", "KeyMessages", "as_wire", "coalesce_keyed", "check_keyed", "pack_raw", "unpack_raw"]


def as_wire(vals: torch.Tensor, values: str) -> torch.Tensor:
    """This rank's rows exactly as peers decode them from its message (rounded as the codec does), in float32.

    Saves decoding (checksum, conversion) this rank's own message. Also what error feedback keeps: a sender's
    ``vals - as_wire(vals, values)`` is what its message rounded away.
    """
    kind = codec.value_type(values)
    if kind is codec.Values.INT8:
        return torch.from_numpy(quantize.round_trip(vals.float().numpy()))
    return _to_f32(vals.to(kind.dtype))


def _to_f32(vals: torch.Tensor) -> torch.Tensor:
    """Float32 rows of decoded wire values: torch converts half precision faster than numpy's ``astype``
    (measured, see BENCHMARKS.md)."""
    return vals if vals.dtype == torch.float32 else vals.float()


def coalesce_keyed(keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted distinct keys and their summed float32 rows (duplicates summed in order of appearance)."""
    uniq, inverse = np.unique(keys.numpy(), return_inverse=True)
    out = torch.zeros(uniq.shape[0], values.shape[1], dtype=torch.float32)
    out.index_add_(0, torch.from_numpy(inverse.reshape(-1).astype(np.int64)), values.float())
    return torch.from_numpy(uniq.astype(np.int64, copy=False)), out


def check_keyed(keys: Any, values: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``keys`` as int64 ``[n]`` and ``values`` ``[n, dim]`` tensors; a :class:`UserError` for other shapes."""
    k = torch.as_tensor(keys)
    v = torch.as_tensor(values)
    if k.dim() != 1 or k.dtype.is_floating_point or v.dim() != 2 or v.shape[0] != k.shape[0]:
        raise UserError(f"exchange: keyed gradient needs int keys [n] and values [n, dim], got {k.shape}, {v.shape}")
    return k.to(torch.int64), v


class RowMessages:
    """Messages of rows ``[0, num_rows)`` through :mod:`sparsembed.rows.codec`.

    ``checked=False``: messages through shared memory, which never cross a wire (the announcement protocol
    guarantees a peer reads a complete message), go without a checksum; every other check of
    :func:`codec.decode` still runs.
    """

    def __init__(self, num_rows: int, dim: int, rows: str, values: str, compress: str | None,
                 checked: bool = True) -> None:
        self.num_rows, self.dim, self.rows, self.values, self.compress = num_rows, dim, rows, values, compress
        self.checked = checked

    def encode(self, ids: torch.Tensor, vals: torch.Tensor, num_rows: int | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
        """The message of strictly increasing ``ids`` and their rows (into the front of ``out`` if given)."""
        rs = RowSparse.from_sorted(ids, vals, self.num_rows if num_rows is None else num_rows)
        return codec.encode_array(rs, self.rows, self.values, self.compress, out=out, checksum=self.checked)

    def decode(self, buf: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, float32 rows) of one message."""
        rs = codec.decode(buf, dtype="wire", verify=self.checked)
        return rs.ids, _to_f32(rs.values)

    def size(self, ids: torch.Tensor) -> int:
        """Exact size of the uncompressed message of these (strictly increasing) ids, without building it."""
        idn = ids.numpy()
        enc = rowsets.choose(idn, self.num_rows) if self.rows == "auto" else rowsets.get(self.rows)
        row_bytes = codec.value_type(self.values).row_bytes(self.dim)
        return codec.HEADER_SIZE + enc.size(idn, self.num_rows) + idn.shape[0] * row_bytes

    def coalesce(self, ids: torch.Tensor, vals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sorted distinct ids and their summed float32 rows."""
        rs = RowSparse(ids, vals.float() if vals.dtype != torch.float32 else vals, self.num_rows, check=False)
        rs.coalesce_()
        return rs.ids, rs.values

    @staticmethod
    def encoding(buf: np.ndarray) -> str:
        """The row-set encoding a message chose."""
        return codec.header(buf)["rows"]


class KeyMessages:
    """Messages of arbitrary int64 keys: ``int64 n``, the raw sorted keys, then a codec message of the values."""

    def __init__(self, dim: int, values: str) -> None:
        self.dim, self.values = dim, values

    def encode(self, keys: torch.Tensor, vals: torch.Tensor) -> np.ndarray:
        """The message of sorted distinct ``keys`` and their rows."""
        n = keys.shape[0]
        rs = RowSparse.from_sorted(torch.arange(n), vals, n)
        msg = codec.encode_array(rs, "all", self.values)
        out = np.empty(8 + 8 * n + msg.shape[0], np.uint8)
        out[:8] = np.frombuffer(struct.pack("<q", n), np.uint8)
        out[8 : 8 + 8 * n] = keys.numpy().view(np.uint8)
        out[8 + 8 * n :] = msg
        return out

    def decode(self, buf: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, float32 rows) of one message."""
        if buf.shape[0] < 8:
            raise codec.CodecError("exchange: keyed message shorter than its count")
        n = struct.unpack("<q", buf[:8].tobytes())[0]
        if n < 0 or 8 + 8 * n > buf.shape[0]:
            raise codec.CodecError(f"exchange: keyed message claims {n} keys in {buf.shape[0]} bytes")
        keys = torch.from_numpy(buf[8 : 8 + 8 * n].view(np.int64).copy())
        rs = codec.decode(buf[8 + 8 * n :], dtype="wire")
        if rs.n != n:
            raise codec.CodecError(f"exchange: keyed message has {n} keys and {rs.n} value rows")
        return keys, _to_f32(rs.values)

    @staticmethod
    def coalesce(keys: torch.Tensor, vals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sorted distinct keys and their summed float32 rows."""
        return coalesce_keyed(keys, vals)

    @staticmethod
    def encoding(buf: np.ndarray) -> str:
        """Always ``"keys"``."""
        return "keys"


def pack_raw(ids: torch.Tensor, vals: torch.Tensor) -> np.ndarray:
    """Segment ``n, ids [n] int64, rows [n, dim] float32`` (ids: sorted distinct keys or row ids)."""
    n = int(ids.shape[0])
    out = np.empty(8 + 8 * n + vals.numel() * 4, np.uint8)
    out[:8].view(np.int64)[0] = n
    out[8 : 8 + 8 * n] = ids.to(torch.int64).numpy().view(np.uint8)
    out[8 + 8 * n :] = vals.float().contiguous().numpy().reshape(-1).view(np.uint8)
    return out


def unpack_raw(buf: np.ndarray, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack_raw` (copies: receive buffers are reused)."""
    n = int(buf[:8].view(np.int64)[0])
    if n < 0 or buf.shape[0] != 8 + 8 * n + 4 * n * dim:
        raise UserError(f"parallel: fused segment of {buf.shape[0]} bytes does not hold {n} rows")
    ids = torch.from_numpy(buf[8 : 8 + 8 * n].view(np.int64).copy())
    vals = torch.from_numpy(buf[8 + 8 * n :].view(np.float32).copy()).reshape(n, dim)
    return ids, vals
