"""Ownership of rows under the sharded strategy: which rank sums which row, and gathering every owner's rows.

Each rank owns a contiguous range of relabelled row ids (a load-balanced
:class:`~sparsembed.comm.sharding.ShardMap`: rows ordered so that every owner receives about as many of a step's
rows as the others). A step sends each changed row to its owner (:func:`sparsembed.comm.sharded.sharded`), the
owner adds the sum to its authoritative rows and sends the fresh values back to the ranks that touched them; a
checkpoint or the end of training gathers every owner's rows on every rank (:meth:`Owners.consolidate`).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import torch
import torch.distributed as dist

from sparsembed.comm.sharded import sharded
from sparsembed.comm.sharding import ShardMap
from sparsembed.comm.stats import ExchangeStats
from sparsembed.dataparallel.options import ExchangeOptions
from sparsembed.dataparallel.replica import Replica
from sparsembed.rows.coalesce import RowSparse

__all__ = ["Owners"]


class Owners:
    """Sharded strategy: which rank owns which row, as contiguous ranges of relabelled row ids."""

    def __init__(self, counts: np.ndarray, world: int, step_tokens: int) -> None:
        self.map = ShardMap.balanced(np.asarray(counts, dtype=np.float64), world, max(step_tokens, 1))
        self.boundaries = np.asarray(self.map.bounds, dtype=np.int64)
        self.loads = np.zeros(world, dtype=np.int64)  # rows this rank sent each owner, last step, both matrices

    def exchange(self, replica: Replica, options: ExchangeOptions, group: Any) -> ExchangeStats:
        """Send this rank's change of ``replica`` to the rows' owners; as an owner, add the sums to the reference
        and send back the fresh rows; take the fresh values of every row this rank touched (collective)."""
        change = replica.change()
        rows = change.ids.numpy()
        new_ids = self.map.relabel(rows)
        self.loads += np.bincount(self.map.owner(rows), minlength=len(self.loads))
        order = np.argsort(new_ids, kind="stable")
        grad = RowSparse.from_sorted(torch.from_numpy(new_ids[order]), change.values[torch.from_numpy(order)],
                                     change.num_rows)

        def apply_owned(owned: RowSparse) -> None:
            if owned.n:
                _add_rows_ref(replica.ref, self.map.restore(owned.ids.numpy()), owned.values.numpy())

        def read_owned(new: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(replica.ref[self.map.restore(new.numpy())])

        fresh, stats = sharded(grad, self.boundaries, apply_owned, read_owned, rows=options.rows,
                               values=options.values, group=group, name=replica.name)
        replica.refresh(self.map.restore(fresh.ids.numpy()), fresh.values.numpy())
        return stats

    def consolidate(self, replica: Replica, group: Any) -> None:
        """Every rank gets every owner's current rows (a dense all-reduce of the owned parts)."""
        rank = dist.get_rank(group)
        mine = self.map.restore(np.arange(self.boundaries[rank], self.boundaries[rank + 1], dtype=np.int64))
        full = torch.zeros(replica.ref.shape, dtype=torch.float32)
        full[torch.from_numpy(mine)] = torch.from_numpy(replica.ref[mine])
        dist.all_reduce(full, group=group)
        replica.ref[:] = full.numpy()
        replica.work[:] = replica.ref


@numba.njit(nogil=True, cache=True)
def _add_rows_ref(ref, ids, values):  # pragma: no cover - compiled
    for i in range(ids.shape[0]):
        r = ids[i]
        for k in range(ref.shape[1]):
            ref[r, k] += values[i, k]
