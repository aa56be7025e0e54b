"""Error feedback for gradients sent rounded (``parallel(model, values="int8")``, fp16, bf16): :class:`Residual`.

A rank's gradient rows travel rounded (int8 with a float32 scale per row, or half precision); what the rounding
drops is not lost: it is kept here, per row id (or HashEmbedding key), and added to that row's next gradient before
it is sent, so it travels with the row's next change. Over many steps, what a rank sent plus what it keeps pending
equals the sum of its gradients (to float32 rounding of the additions): the int8 rows' error does not accumulate.
A row that is never touched again keeps its last residual (at most one rounding step of its last gradient);
:meth:`ParallelModel.flush_residuals <sparsembed.nn.parallel.ParallelModel.flush_residuals>` sends what is pending
exactly. Rows a dense all-reduce carried (float32) went exactly and leave nothing.

The store is the hashed family's own keyed rows (:class:`~sparsembed.rows.keytable.KeyedRows`, on the host, where
the codec rounds too): a row per id this rank ever sent rounded, zero when nothing is pending, so a step costs what
its own rows cost, however many rows earlier steps left pending.
"""

from __future__ import annotations

import torch

from sparsembed.rows.keytable import KeyedRows

__all__ = ["Residual"]


class Residual:
    """The pending rounding residual of one table's rows on this rank, by row id (or key)."""

    def __init__(self, dim: int) -> None:
        self._rows = KeyedRows(dim, seed=0, scale=0.0)  # an id's first row: zero, nothing pending

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def ids(self) -> torch.Tensor:
        """The ids with a pending residual, sorted."""
        return self.pending()[0]

    @property
    def values(self) -> torch.Tensor:
        """Their pending residuals (float32 ``[len, dim]``), in the order of :attr:`ids`."""
        return self.pending()[1]

    def pending(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every id with a pending (non-zero) residual, sorted, and its residual."""
        n = len(self._rows)
        keys = torch.from_numpy(self._rows.keys())
        rows = self._rows.rows[:n]
        some = torch.any(rows != 0, dim=1)
        keys, rows = keys[some], rows[some]
        order = torch.argsort(keys)
        return keys[order], rows[order].clone()

    def take(self, ids: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        """``vals`` (rows ``ids``: distinct, on the host) plus the residual pending for those rows, which leave the
        store (they go with this message); a new tensor, ``vals`` is not changed."""
        out = vals.float().clone()
        if ids.shape[0]:
            slots = self._rows.slots(ids)
            out += self._rows.rows[slots]
            self._rows.rows[slots] = 0
        return out

    def keep(self, ids: torch.Tensor, dropped: torch.Tensor) -> None:
        """Rows ``ids`` went rounded and the rounding dropped ``dropped`` (``sent - as the peers decode it``): that
        is now their pending residual (:meth:`take` has just taken their previous one)."""
        if ids.shape[0]:
            self._rows.put(ids, dropped)

    def pop_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every pending row (sorted ids, float32 rows); nothing is pending afterwards."""
        ids, values = self.pending()
        self._rows.rows[:len(self._rows)] = 0
        return ids, values
