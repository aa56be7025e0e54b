"""Sharding: which data-parallel shard owns each embedding row, chosen so per-step traffic is balanced under Zipf.

A step of T tokens touches (and sends) each distinct row once, whatever its count in the step, so a shard's
traffic per step is the number of *distinct* rows of that shard the step touched. Under Zipf, frequency-sorted
ranges put nearly all of it on shard 0; a random permutation evens it out only in expectation; ``balanced``
assigns rows greedily by load (LPT: heaviest row first, each to the least-loaded shard that still has room),
which balances both the traffic and the rows held (each shard holds ceil(rows / shards) rows or one fewer).

Loads (the probability a step touches a row):

- ``expected_loads``: tokens drawn independently, 1 - (1 - p)^T with p = count / total. Real text is bursty (a
  topical word comes in clumps), so this overestimates rare and topical rows: on wiki17m at T = 8192 it predicts
  2955 distinct rows per step against 1730 measured, and balancing by it alone leaves about 1.05x at 64 shards.
- ``observed_loads``: the fraction of steps of the corpus itself that touch each row, shrunk towards the
  independent model rescaled per frequency band (so rows seen in few steps get a sensible estimate).

Rows are relabelled so that every shard owns a contiguous range of new ids (frequency order kept inside a shard);
a sorted array of new ids then splits by owner with one ``np.searchsorted`` over the range boundaries, as a
parameter-server message (sorted unique keys plus values) does. Optionally the hottest rows are *replicated*:
they get the first new ids, belong to no shard (owner -1) and are meant for a dense all-reduce.

``measure_loads`` cuts the in-vocabulary token stream (``EncodedCorpus.ids``: OOV dropped, no subsampling,
sentence ends ignored) into consecutive steps of T tokens and counts each shard's distinct rows per step; the
maps compared on a corpus are :mod:`sparsembed.bench.shards`'s (``sparsembed bench shards``).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from sparsembed.errors import UserError

SCHEMES = ("contiguous", "permuted", "balanced")
PRIOR_STEPS = 20.0  # weight, in steps, of the model prior in observed_loads: a row seen in no step keeps ~1% of it


# ----------------------------------------------------------------------------------------------- kernels


@numba.njit(cache=True)
def _lpt(order, loads, owner, shards, cap):  # pragma: no cover - compiled
    """Give rows ``order`` (heaviest first) to the least-loaded shard with fewer than ``cap`` rows; ties: lowest id.

    A binary min-heap of open shards keyed by (load, shard); a shard that reaches ``cap`` rows leaves the heap.
    """
    heap_load = np.zeros(shards)
    heap_shard = np.arange(shards)
    rows = np.zeros(shards, np.int64)
    size = shards
    for r in order:
        s = heap_shard[0]
        owner[r] = s
        rows[s] += 1
        heap_load[0] += loads[r]
        if rows[s] == cap:
            size -= 1
            heap_load[0] = heap_load[size]
            heap_shard[0] = heap_shard[size]
        i = 0
        while True:  # sift the root down
            best = i
            for child in (2 * i + 1, 2 * i + 2):
                if child < size and (heap_load[child] < heap_load[best] or (
                        heap_load[child] == heap_load[best] and heap_shard[child] < heap_shard[best])):
                    best = child
            if best == i:
                break
            heap_load[i], heap_load[best] = heap_load[best], heap_load[i]
            heap_shard[i], heap_shard[best] = heap_shard[best], heap_shard[i]
            i = best


@numba.njit(cache=True)
def _step_loads(ids, owner, shards, step_tokens, offset, steps):  # pragma: no cover - compiled
    """Distinct rows per shard per step (and replicated rows, owner -1, per step); a stamp array dedups."""
    loads = np.zeros((steps, shards), np.int32)
    replicated = np.zeros(steps, np.int32)
    stamp = np.full(owner.shape[0], -1, np.int64)
    for t in range(steps):
        start = offset + t * step_tokens
        for i in range(start, start + step_tokens):
            r = ids[i]
            if stamp[r] != t:
                stamp[r] = t
                s = owner[r]
                if s < 0:
                    replicated[t] += 1
                else:
                    loads[t, s] += 1
    return loads, replicated


@numba.njit(cache=True)
def _step_touches(ids, num_rows, step_tokens, offset, steps):  # pragma: no cover - compiled
    """For each row, the number of steps that touch it at least once."""
    touches = np.zeros(num_rows, np.int64)
    stamp = np.full(num_rows, -1, np.int64)
    for t in range(steps):
        start = offset + t * step_tokens
        for i in range(start, start + step_tokens):
            r = ids[i]
            if stamp[r] != t:
                stamp[r] = t
                touches[r] += 1
    return touches


# ----------------------------------------------------------------------------------------------- checks


def _check_shards(shards: int, rows: int) -> int:
    if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)):
        raise UserError(f"shards must be an integer, got {shards!r}")
    if shards < 1:
        raise UserError(f"shards must be at least 1, got {shards}")
    if shards > rows:
        raise UserError(f"cannot split {rows} rows into {shards} shards: every shard needs at least one row; "
                        f"use at most {rows} shards")
    return int(shards)


def check_step_tokens(step_tokens: int) -> int:
    """``step_tokens`` as an int; a :class:`UserError` unless it is a positive integer."""
    if isinstance(step_tokens, bool) or not isinstance(step_tokens, (int, np.integer)) or step_tokens < 1:
        raise UserError(f"step_tokens must be a positive integer, got {step_tokens!r}")
    return int(step_tokens)


def _steps(ids: np.ndarray, step_tokens: int, offset: int = 0) -> int:
    steps = (len(ids) - offset) // step_tokens
    if steps < 1:
        raise UserError(f"the corpus has {len(ids)} in-vocabulary tokens, fewer than one step of {step_tokens} "
                        f"(after skipping {offset}); use a smaller step_tokens or a bigger corpus")
    return steps


# ----------------------------------------------------------------------------------------------- loads


def expected_loads(counts: np.ndarray, step_tokens: int) -> np.ndarray:
    """Probability that a step of ``step_tokens`` independent tokens touches each row: 1 - (1 - p)^T."""
    step_tokens = check_step_tokens(step_tokens)
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any() or not np.isfinite(counts).all():
        raise UserError("counts must be a 1-d array of non-negative finite numbers")
    total = counts.sum()
    if total <= 0:
        return np.zeros_like(counts)
    # expm1/log1p: p is ~1e-7 for rare rows, where (1 - p)^T loses every digit in float64; p = 1 gives log1p = -inf
    with np.errstate(divide="ignore"):
        return -np.expm1(step_tokens * np.log1p(-counts / total))


def observed_loads(ids: np.ndarray, counts: np.ndarray, step_tokens: int, offset: int = 0,
                   prior_steps: float = PRIOR_STEPS) -> np.ndarray:
    """Fraction of the corpus's steps (``ids[offset:]`` cut every ``step_tokens``) that touch each row, smoothed.

    The estimate is (touches + prior_steps * m) / (steps + prior_steps), where m is ``expected_loads`` rescaled
    in each half-octave band of counts by observed / expected over that band (the burstiness correction), so
    rows seen in few steps are not taken as never touched.
    """
    step_tokens = check_step_tokens(step_tokens)
    counts = np.asarray(counts, dtype=np.int64)
    ids = np.ascontiguousarray(ids)
    steps = _steps(ids, step_tokens, offset)
    touches = _step_touches(ids, len(counts), step_tokens, offset, steps).astype(np.float64)
    model = expected_loads(counts, step_tokens)
    band = (2 * np.log2(np.maximum(counts, 1))).astype(np.int64)
    observed = np.bincount(band, touches / steps)
    predicted = np.bincount(band, model)
    scale = np.divide(observed, predicted, out=np.ones_like(observed), where=predicted > 0)
    return (touches + prior_steps * model * scale[band]) / (steps + prior_steps)


# ----------------------------------------------------------------------------------------------- the map


class ShardMap:
    """Rows of one table split over ``shards`` shards, each owning a contiguous range of *new* row ids.

    New ids ``[0, replicated)`` are the replicated rows (owner -1, in no shard's range); shard s owns new ids
    ``[bounds[s], bounds[s + 1])``. Methods taking ``rows`` take original row ids (vocabulary rows).

    Attributes:
        kind: how the map was built ("contiguous", "permuted", "balanced", or "custom").
        num_rows: rows of the table.
        shards: number of shards.
        bounds: int64, length shards + 1; bounds[0] == replicated, bounds[-1] == num_rows.
        order: int64 permutation; order[new_id] is the original row.
    """

    def __init__(self, order: np.ndarray, bounds: np.ndarray, kind: str = "custom"):
        self.order = np.asarray(order, dtype=np.int64)
        self.bounds = np.asarray(bounds, dtype=np.int64)
        self.kind = str(kind)
        self.num_rows = len(self.order)
        self.shards = len(self.bounds) - 1
        _check_layout(self.order, self.bounds)
        self._new_of_old = np.empty(self.num_rows, np.int64)
        self._new_of_old[self.order] = np.arange(self.num_rows)
        sizes = np.diff(self.bounds)
        self._owner = np.full(self.num_rows, -1, np.int32)
        self._owner[self.order[self.bounds[0]:]] = np.repeat(np.arange(self.shards, dtype=np.int32), sizes)
        self._starts = np.concatenate(([0], self.bounds[:-1]))  # indexed by owner + 1: replicated rows start at 0

    # ------------------------------------------------------------------------------- constructors

    @classmethod
    def from_owners(cls, owners: np.ndarray, shards: int, kind: str = "custom") -> ShardMap:
        """The map giving row r to shard ``owners[r]`` (-1: replicated); frequency (row) order kept within a shard."""
        owners = np.asarray(owners, dtype=np.int64)
        shards = _check_shards(shards, max(len(owners), 1))
        if owners.ndim != 1 or len(owners) == 0:
            raise UserError("owners must be a non-empty 1-d array of shard ids")
        if owners.min() < -1 or owners.max() >= shards:
            raise UserError(f"owners must lie in [-1, {shards}), got values in [{owners.min()}, {owners.max()}]")
        order = np.argsort(owners, kind="stable")  # -1 first: replicated rows take the lowest new ids
        sizes = np.bincount(owners + 1, minlength=shards + 1)
        return cls(order, np.cumsum(sizes), kind)

    @classmethod
    def contiguous(cls, num_rows: int, shards: int) -> ShardMap:
        """Rows in their own (frequency) order, cut into ``shards`` ranges whose sizes differ by at most one."""
        shards = _check_shards(shards, num_rows)
        return cls.from_owners(_even_groups(num_rows, shards), shards, "contiguous")

    @classmethod
    def permuted(cls, num_rows: int, shards: int, seed: int = 0) -> ShardMap:
        """A random permutation of the rows, cut into ``shards`` groups whose sizes differ by at most one."""
        shards = _check_shards(shards, num_rows)
        owners = np.empty(num_rows, np.int64)
        owners[np.random.default_rng(seed).permutation(num_rows)] = _even_groups(num_rows, shards)
        return cls.from_owners(owners, shards, "permuted")

    @classmethod
    def balanced(cls, counts: np.ndarray, shards: int, step_tokens: int, replicate_top: int = 0,
                 ids: np.ndarray | None = None) -> ShardMap:
        """Load-balanced map for steps of ``step_tokens`` tokens over rows with these counts.

        Loads are ``observed_loads(ids, counts, step_tokens)`` when the encoded corpus ``ids`` is given (the
        better estimate: text is bursty), else ``expected_loads(counts, step_tokens)``. See :meth:`from_loads`.
        """
        counts = np.asarray(counts)
        if ids is None:
            loads = expected_loads(counts, step_tokens)
        else:
            loads = observed_loads(ids, counts, step_tokens)
        return cls.from_loads(loads, shards, replicate_top)

    @classmethod
    def from_loads(cls, loads: np.ndarray, shards: int, replicate_top: int = 0) -> ShardMap:
        """LPT over per-step row loads: heaviest first, each row to the least-loaded shard not yet full.

        "Full" is ceil(sharded rows / shards) rows, so rows (memory) are balanced too. The ``replicate_top``
        heaviest rows are replicated instead (owner -1).
        """
        loads = np.asarray(loads, dtype=np.float64)
        if loads.ndim != 1 or not np.isfinite(loads).all() or (loads < 0).any():
            raise UserError("loads must be a 1-d array of non-negative finite numbers")
        if isinstance(replicate_top, bool) or not isinstance(replicate_top, (int, np.integer)) or replicate_top < 0:
            raise UserError(f"replicate_top must be a non-negative integer, got {replicate_top!r}")
        sharded = len(loads) - replicate_top
        if sharded < 1:
            raise UserError(f"replicate_top={replicate_top} leaves none of the {len(loads)} rows to shard")
        shards = _check_shards(shards, sharded)
        order = np.argsort(-loads, kind="stable")  # equal loads: frequency (row) order
        owners = np.full(len(loads), -1, np.int64)
        _lpt(order[replicate_top:], loads, owners, shards, -(-sharded // shards))
        return cls.from_owners(owners, shards, "balanced")

    # ------------------------------------------------------------------------------- lookups

    @property
    def replicated(self) -> int:
        """Number of replicated rows (new ids ``[0, replicated)``)."""
        return int(self.bounds[0])

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise UserError(f"row ids must lie in [0, {self.num_rows}), got values in [{rows.min()}, {rows.max()}]")
        return rows

    def owner(self, rows: np.ndarray) -> np.ndarray:
        """Shard of each original row (int32; -1 for a replicated row)."""
        return self._owner[self._rows(rows)]

    def relabel(self, rows: np.ndarray) -> np.ndarray:
        """New id of each original row (int64)."""
        return self._new_of_old[self._rows(rows)]

    def restore(self, new_ids: np.ndarray) -> np.ndarray:
        """Original row of each new id (int64)."""
        return self.order[self._rows(new_ids)]

    def local_index(self, rows: np.ndarray) -> np.ndarray:
        """Offset of each original row inside its owner's range (replicated rows: inside the replicated block)."""
        rows = self._rows(rows)
        return self._new_of_old[rows] - self._starts[self._owner[rows] + 1]

    def split(self, sorted_new_ids: np.ndarray) -> np.ndarray:
        """Offsets (length shards + 1) cutting an ascending array of new ids by owner.

        Shard s's part is ``ids[offsets[s]:offsets[s + 1]]``; the replicated rows are ``ids[:offsets[0]]``.
        """
        return np.searchsorted(np.asarray(sorted_new_ids), self.bounds)

    def shard_rows(self, shard: int) -> np.ndarray:
        """Original rows owned by ``shard`` in new-id order (``shard=-1``: the replicated rows)."""
        if not -1 <= shard < self.shards:
            raise UserError(f"shard must lie in [-1, {self.shards}), got {shard}")
        return self.order[self._starts[shard + 1]: self.bounds[shard + 1] if shard >= 0 else self.bounds[0]]

    def rows_per_shard(self) -> np.ndarray:
        """Rows held by each shard (int64, replicated rows not counted)."""
        return np.diff(self.bounds)

    def per_shard(self, weights: np.ndarray) -> np.ndarray:
        """Sum of a per-row quantity (e.g. loads) over each shard's rows (replicated rows not counted)."""
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (self.num_rows,):
            raise UserError(f"weights must have shape ({self.num_rows},), got {weights.shape}")
        return np.bincount(self._owner + 1, weights, minlength=self.shards + 1)[1:]

    # ------------------------------------------------------------------------------- state

    def to_state(self) -> dict[str, Any]:
        """Checkpoint form: arrays ``order`` and ``bounds`` plus scalars.

        Shards are row ranges, not ranks: a restarted job may give range s to any rank.
        """
        return {"kind": self.kind, "num_rows": self.num_rows, "shards": self.shards,
                "order": self.order.copy(), "bounds": self.bounds.copy()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ShardMap:
        """Inverse of :meth:`to_state`; a damaged or inconsistent state raises UserError."""
        try:
            order, bounds = np.asarray(state["order"]), np.asarray(state["bounds"])
            num_rows, shards, kind = int(state["num_rows"]), int(state["shards"]), str(state["kind"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"shard map state is damaged: {exc!r}") from None
        if not (np.issubdtype(order.dtype, np.integer) and np.issubdtype(bounds.dtype, np.integer)):
            raise UserError("shard map state is damaged: order and bounds must be integer arrays")
        if order.shape != (num_rows,) or bounds.shape != (shards + 1,):
            raise UserError(f"shard map state is damaged: {num_rows} rows and {shards} shards, but order has "
                            f"shape {order.shape} and bounds {bounds.shape}")
        return cls(order, bounds, kind)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ShardMap) and np.array_equal(self.order, other.order)
                and np.array_equal(self.bounds, other.bounds))

    def __repr__(self) -> str:
        return (f"ShardMap({self.kind}, rows={self.num_rows}, shards={self.shards}, "
                f"replicated={self.replicated})")


def _even_groups(num_rows: int, shards: int) -> np.ndarray:
    """Group of each of ``num_rows`` positions, cut into ``shards`` runs of floor/ceil(num_rows / shards)."""
    return np.arange(num_rows, dtype=np.int64) * shards // num_rows


def _check_layout(order: np.ndarray, bounds: np.ndarray) -> None:
    n = len(order)
    if order.ndim != 1 or bounds.ndim != 1 or len(bounds) < 2:
        raise UserError("shard map: order must be 1-d and bounds 1-d with at least 2 entries")
    if n == 0 or order.min() < 0 or order.max() >= n or np.bincount(order, minlength=n).max() != 1:
        raise UserError(f"shard map: order is not a permutation of the {n} rows")
    if bounds[0] < 0 or bounds[-1] != n or (np.diff(bounds) < 0).any():
        raise UserError(f"shard map: bounds must rise from >= 0 to {n}, got {bounds[:4].tolist()}...")


# ----------------------------------------------------------------------------------------------- measurement


def measure_loads(shard_map: ShardMap, ids: np.ndarray, step_tokens: int,
                  offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows each step touched, per shard: (int32 [steps, shards], replicated rows per step int32 [steps]).

    Steps are ``ids[offset:]`` cut every ``step_tokens`` tokens; a last partial step is dropped.
    """
    step_tokens = check_step_tokens(step_tokens)
    ids = np.ascontiguousarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= shard_map.num_rows):
        raise UserError(f"token ids must lie in [0, {shard_map.num_rows}) for this shard map")
    steps = _steps(ids, step_tokens, offset)
    return _step_loads(ids, shard_map._owner, shard_map.shards, step_tokens, offset, steps)


def load_summary(loads: np.ndarray) -> dict[str, float]:
    """Imbalance of measured loads ([steps, shards]).

    ``max_over_mean``: max over shards of the shard's mean distinct rows per step, over their mean (sustained
    imbalance: what the busiest shard carries over a run). ``step_max_over_mean``: mean over steps of that
    step's max / mean over shards (the per-step straggler; includes sampling noise a static map cannot remove,
    ~1.4x at 64 shards of ~27 rows each).
    """
    loads = np.asarray(loads, dtype=np.float64)
    per_shard = loads.mean(axis=0)
    step_mean = loads.mean(axis=1)
    busy = step_mean > 0
    return {
        "max_over_mean": max_over_mean(per_shard),
        "step_max_over_mean": float((loads.max(axis=1)[busy] / step_mean[busy]).mean()) if busy.any() else 1.0,
        "mean_rows_per_step": float(per_shard.mean()),
        "max_rows_per_step": float(per_shard.max()),
    }


def max_over_mean(values: np.ndarray) -> float:
    """The largest of ``values`` over their mean (1.0 when the mean is 0): the imbalance of a per-shard quantity."""
    top, mean = np.max(values), np.mean(values)
    return float(top / mean) if mean > 0 else 1.0
