"""int8 rows with a float32 scale per row: the ``int8`` wire values (:class:`sparsembed.rows.values.Values`).

A row ``v`` travels as ``scale = max|v| / 127`` (0 for a zero row) and ``q = round(v / scale)`` in int8; it
decodes to ``q * scale`` in float32, within ``scale / 2`` of ``v`` per value. Both directions are one compiled
pass, and the sender computes the rows its peers decode with the same kernels
(:func:`sparsembed.comm.messages.as_wire`), so every replica adds the same bits.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["quantize", "dequantize", "round_trip"]

_LEVELS = np.float32(127.0)


def quantize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row float32 scales ``[n]`` and int8 values ``[n, dim]`` of float32 rows ``values [n, dim]``.

    Rows must be finite (a non-finite value has no int8 level).
    """
    values = np.ascontiguousarray(values, dtype=np.float32)
    scales = np.empty(values.shape[0], np.float32)
    q = np.empty(values.shape, np.int8)
    _quantize_kernel(values, scales, q)
    return scales, q


def dequantize(scales: np.ndarray, q: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Float32 rows ``q * scale`` (into ``out`` if given)."""
    if out is None:
        out = np.empty(q.shape, np.float32)
    _dequantize_kernel(np.ascontiguousarray(scales), np.ascontiguousarray(q), out)
    return out


def round_trip(values: np.ndarray) -> np.ndarray:
    """The float32 rows a peer decodes from the int8 message of ``values``."""
    return dequantize(*quantize(values))


@numba.njit(cache=True, nogil=True)
def _quantize_kernel(values, scales, q):  # pragma: no cover - compiled
    n, dim = values.shape
    for i in range(n):
        top = np.float32(0.0)
        for k in range(dim):
            a = abs(values[i, k])
            if a > top:
                top = a
        scale = np.float32(top / _LEVELS)
        scales[i] = scale
        if scale == 0:  # a zero row (or one below float32's smallest step over 127): all zero
            for k in range(dim):
                q[i, k] = 0
            continue
        for k in range(dim):
            level = np.rint(values[i, k] / scale)  # float32 division: the same bits on every rank
            q[i, k] = np.int8(min(max(level, -_LEVELS), _LEVELS))


@numba.njit(cache=True, nogil=True)
def _dequantize_kernel(scales, q, out):  # pragma: no cover - compiled
    n, dim = q.shape
    for i in range(n):
        scale = scales[i]
        for k in range(dim):
            out[i, k] = np.float32(q[i, k]) * scale
