"""Error feedback for gradients sent rounded (``parallel(model, values="int8")``, fp16, bf16): :class:`Residual`.

A rank's gradient rows travel rounded (int8 with a float32 scale per row, or half precision); what the rounding
drops is not lost: it is kept here, per row id (or HashEmbedding key), and added to that row's next gradient before
it is sent, so it travels with the row's next change. Over many steps, what a rank sent plus what it keeps pending
equals the sum of its gradients (to float32 rounding of the additions): the int8 rows' error does not accumulate.
A row that is never touched again keeps its last residual (at most one rounding step of its last gradient);
:meth:`ParallelModel.flush_residuals <sparsembed.nn.parallel.ParallelModel.flush_residuals>` sends what is pending
exactly. Rows a dense all-reduce carried (float32) went exactly and leave nothing.

The store holds only rows with a pending residual, as sorted ids and float32 rows on the host (the codec rounds
on the host too), so a table of millions of rows costs what its recently touched rows cost.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["Residual"]


class Residual:
    """The pending rounding residual of one table's rows on this rank: sorted distinct ``ids`` (int64) and their
    float32 rows ``values [n, dim]``."""

    def __init__(self, dim: int) -> None:
        self.ids = torch.zeros(0, dtype=torch.int64)
        self.values = torch.zeros(0, dim, dtype=torch.float32)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def take(self, ids: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        """``vals`` (rows ``ids``: sorted, distinct, on the host) plus the residual pending for those rows, which
        leave the store (they go with this message); a new tensor, ``vals`` is not changed."""
        out = vals.float().clone()
        if len(self) == 0 or ids.shape[0] == 0:
            return out
        mine, theirs = _matches(self.ids.numpy(), ids.numpy())
        if mine.shape[0]:
            out[torch.from_numpy(theirs)] += self.values[torch.from_numpy(mine)]
            keep = np.ones(len(self), dtype=bool)
            keep[mine] = False
            self.ids, self.values = self.ids[torch.from_numpy(keep)], self.values[torch.from_numpy(keep)]
        return out

    def keep(self, ids: torch.Tensor, dropped: torch.Tensor) -> None:
        """Rows ``ids`` went rounded and the rounding dropped ``dropped`` (``sent - as the peers decode it``): keep
        the rows of it that are not zero. ``ids`` must not be pending (:meth:`take` removed them)."""
        nonzero = torch.any(dropped != 0, dim=1)
        if not bool(nonzero.any()):
            return
        ids = torch.cat([self.ids, ids[nonzero]])
        values = torch.cat([self.values, dropped[nonzero]])
        order = torch.argsort(ids)
        self.ids, self.values = ids[order], values[order]

    def pop_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every pending row (sorted ids, float32 rows); the store is empty afterwards."""
        ids, values = self.ids, self.values
        self.ids, self.values = ids[:0], values[:0]
        return ids, values


def _matches(pending: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``pending`` and in ``ids`` (both sorted, distinct) of the ids they share."""
    where = np.searchsorted(pending, ids)
    inside = where < pending.shape[0]
    hit = np.zeros(ids.shape[0], dtype=bool)
    hit[inside] = pending[where[inside]] == ids[inside]
    return where[hit], np.flatnonzero(hit)
