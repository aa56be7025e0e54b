"""The one sparse-or-dense policy of every replicated exchange, and the closed sets that configure an exchange.

Sending a matrix's touched rows pays per byte more than a dense all-reduce does (coalescing, encoding, sends,
decoding, merging), and a dense all-reduce pays for every row whatever was touched. Every replicated path (the
codec exchange of :mod:`sparsembed.comm.replicated`, the fused sync of :mod:`sparsembed.comm.fused`, the
data-parallel word2vec trainer) asks :func:`goes_dense` the same question from every rank's message size, so all
ranks of a step take the same decision. The biases were measured with ``sparsembed bench exchange --sweep``
(BENCHMARKS.md).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, TypeVar

import numpy as np

from sparsembed.errors import UserError

__all__ = ["Mode", "Transport", "Strategy", "SPARSE_BIAS", "SHARED_BIAS", "ring_bytes", "sparse_too_big",
           "goes_dense", "parse"]


class Mode(str, Enum):
    """Which path a replicated exchange takes: chosen by density, or forced."""

    AUTO = "auto"
    SPARSE = "sparse"
    DENSE = "dense"


class Transport(str, Enum):
    """How ranks reach each other: ``auto`` uses shared memory when every rank is on this host, ``tcp`` never."""

    AUTO = "auto"
    TCP = "tcp"


class Strategy(str, Enum):
    """``replicated``: every rank gets every rank's sum; ``sharded``: each row's owner sums and sends it back."""

    REPLICATED = "replicated"
    SHARDED = "sharded"


#: Sparse is chosen while the busiest rank receives at most this fraction of a dense ring all-reduce's bytes over
#: gloo: per byte, the sparse path costs about 3x what gloo's dense all-reduce does.
SPARSE_BIAS = 0.35
#: The same through shared memory (ranks on one host): no byte crosses TCP and peers' messages are read in place,
#: so sparse stays cheaper up to a larger share, and the shared dense fallback beats gloo's all-reduce.
SHARED_BIAS = 0.55

E = TypeVar("E", bound=Enum)


def parse(value: Any, kind: type[E], what: str) -> E:
    """``value`` (a member or its string) as a member of ``kind``; a :class:`UserError` naming ``what`` and the
    allowed values otherwise."""
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise UserError(f"invalid setting: {what} must be one of {allowed}, got {value!r}") from None


def ring_bytes(dense_bytes: int, world: int) -> int:
    """Bytes each rank sends (and receives) in a ring all-reduce of ``dense_bytes``: ``2 (P-1)/P`` of them."""
    return 2 * (world - 1) * int(dense_bytes) // max(world, 1)


def sparse_too_big(sizes: Any, ring: int, bias: float) -> bool:
    """Whether the busiest rank, the one that receives every message but the smallest, would receive more than
    ``bias`` times ``ring`` bytes, given every rank's message size."""
    sizes = np.asarray(sizes, np.int64)
    return int(sizes.sum()) - int(sizes.min()) > bias * ring


def goes_dense(mode: Mode | str, sizes: Any, dense_bytes: int, world: int, *, shared: bool = False,
               min_ring_bytes: int = 0) -> bool:
    """The decision every rank takes alike: does this matrix's step go as one dense sum?

    Args:
        mode: ``dense`` / ``sparse`` force the answer; ``auto`` decides from the sizes.
        sizes: every rank's sparse message size in bytes (the same array on every rank).
        dense_bytes: bytes of the dense matrix (``num_rows * dim * 4``).
        world: ranks in the group.
        shared: the ranks share memory (:data:`SHARED_BIAS` instead of :data:`SPARSE_BIAS`).
        min_ring_bytes: below this many ring bytes stay sparse: a second round trip would cost more than the
            bytes it saves.
    """
    mode = Mode(mode)
    if mode is not Mode.AUTO:
        return mode is Mode.DENSE
    ring = ring_bytes(dense_bytes, world)
    return ring >= min_ring_bytes and sparse_too_big(sizes, ring, SHARED_BIAS if shared else SPARSE_BIAS)
