"""HashEmbedding: an ``nn.Module`` embedding over arbitrary int64 ids, rows stored in a hash table.

The module form of the hash-stored family: its rows are a :class:`~sparsembed.rows.keytable.KeyedRows`, created
on first touch as :func:`~sparsembed.rows.keytable.initial_rows` of ``(seed, id)``, so every worker creates the
same row for the same id without talking: a 2^40 id space costs memory only for the ids seen.
``forward`` returns a tensor autograd flows into; after ``backward`` the module holds a keyed sparse gradient
(touched ids and their row gradients) that :meth:`sparsembed.nn.parallel.ParallelModel.sync` exchanges and the
optimizers of :mod:`sparsembed.nn.optim` apply. Cold rows can be evicted (:meth:`HashEmbedding.evict`).

The table has no ``nn.Parameter``: torch optimizers and DDP cannot see it, :mod:`sparsembed.nn.optim` can.
Optimizer state of its rows (Adagrad sums, Adam moments) lives in the table beside the rows, so it is evicted
with them and saved in the module's ``state_dict`` (as extra state, in key order).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsembed.comm.messages import coalesce_keyed
from sparsembed.errors import UserError
from sparsembed.rows.keytable import KeyedRows

__all__ = ["HashEmbedding"]

#: The column of :class:`KeyedRows` holding each row's update count when it was last updated or created (not an
#: identifier, so no optimizer state name can collide with it).
_LAST = "last update"


class HashEmbedding(nn.Module):
    """``dim``-wide embedding rows for arbitrary int64 ids, created on first touch.

    Args:
        dim: row width.
        seed: a new row is a pure function of ``(seed, id)``: uniform in ``[-init_scale, init_scale)``.
        init_scale: default ``1 / sqrt(dim)``.
        max_idle: when set, rows not updated in the last ``max_idle`` optimizer updates are evicted (checked every
            ``max_idle`` updates); an evicted row that comes back starts again from its initial value. Updates are
            counted identically on every worker, so replicas evict the same rows.
        capacity: initial number of rows reserved.
    """

    def __init__(
        self,
        dim: int,
        *,
        seed: int = 0,
        init_scale: float | None = None,
        max_idle: int | None = None,
        capacity: int = 1024,
    ) -> None:
        super().__init__()
        if dim < 1:
            raise UserError(f"HashEmbedding: dim must be >= 1, got {dim}")
        if max_idle is not None and max_idle < 1:
            raise UserError(f"HashEmbedding: max_idle must be >= 1 or None, got {max_idle}")
        self.dim, self.seed, self.max_idle = int(dim), int(seed), max_idle
        self.init_scale = dim**-0.5 if init_scale is None else float(init_scale)
        self._reset(max(capacity, 16))
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (distinct ids, leaf rows) per forward
        self._grad: tuple[torch.Tensor, torch.Tensor] | None = None  # set by sync(): the exchanged gradient

    def _reset(self, capacity: int) -> None:
        self._keyed = KeyedRows(self.dim, seed=self.seed, scale=self.init_scale, capacity=capacity)
        self._keyed.column(_LAST, (), torch.int64)
        self._state_names: list[str] = []  # optimizer state columns, in creation order
        self.updates = 0

    @property
    def _last(self) -> torch.Tensor:
        return self._keyed.columns[_LAST]

    def _optimizer_state(self) -> dict[str, torch.Tensor]:
        return {name: self._keyed.columns[name] for name in self._state_names}

    def extra_repr(self) -> str:
        return f"dim={self.dim}, rows={len(self)}, seed={self.seed}, max_idle={self.max_idle}"

    def __len__(self) -> int:
        return len(self._keyed)

    def keys(self) -> torch.Tensor:
        """Every id held, in creation order."""
        return torch.from_numpy(self._keyed.keys())

    # -- lookup -------------------------------------------------------------------------------------------------
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of ``ids`` (any shape, int64), shape ``ids.shape + (dim,)``; records them for the gradient."""
        ids = torch.as_tensor(ids)
        flat = ids.reshape(-1).to(torch.int64)
        uniq, inverse = torch.unique(flat, return_inverse=True)
        slots = self.slots(uniq)  # first: it may replace the row storage
        rows = self.weight_storage.index_select(0, slots)
        if torch.is_grad_enabled():
            rows.requires_grad_(True)  # a leaf per call: backward leaves the summed row gradients in rows.grad
            self._pending.append((uniq, rows))
        return rows.index_select(0, inverse).reshape(*ids.shape, self.dim)

    def lookup(self, ids: Any) -> torch.Tensor:
        """Current rows of ``ids`` (a copy, no gradient), creating the missing ones."""
        with torch.no_grad():
            return self.forward(torch.as_tensor(ids))

    def slots(self, keys: torch.Tensor) -> torch.Tensor:
        """Storage slots of ``keys``, creating (and initializing) rows for ids seen for the first time."""
        slots, new = self._keyed.find_or_create(keys)
        if new.numel():
            self._last[new] = self.updates
        return slots

    # -- storage the optimizers update ----------------------------------------------------------------------------
    @property
    def weight_storage(self) -> torch.Tensor:
        """Row storage ``[capacity, dim]`` indexed by :meth:`slots` (slots past ``len(self)`` are garbage)."""
        return self._keyed.rows

    def state_rows(self, name: str) -> torch.Tensor:
        """Per-row optimizer state ``name`` aligned with :attr:`weight_storage`, zero for rows never updated."""
        if name not in self._state_names:
            self._state_names.append(name)
        return self._keyed.column(name)

    def updated(self, slots: torch.Tensor) -> None:
        """Called by an optimizer after it updated ``slots``: marks them warm, counts the update, evicts."""
        self.updates += 1
        self._last[slots] = self.updates
        if self.max_idle is not None and self.updates % self.max_idle == 0:
            self.evict(self.max_idle)

    def evict(self, max_idle: int) -> int:
        """Drop rows not updated (or created) in the last ``max_idle`` updates; returns how many were dropped."""
        n = len(self)
        keep = self._last[:n] > self.updates - max_idle
        dropped = int(n - keep.sum())
        if dropped:
            self._load(
                self.keys()[keep],
                self.weight_storage[:n][keep],
                {k: v[:n][keep] for k, v in self._optimizer_state().items()},
                self._last[:n][keep],
                self.updates,
            )
        return dropped

    def _load(self, keys: torch.Tensor, rows: torch.Tensor, state: dict, last: torch.Tensor, updates: int) -> None:
        """Replace the whole table by ``keys`` with these rows, state and last-update counts."""
        n = keys.shape[0]
        self._reset(max(2 * n, 16))
        order = self._keyed.put(keys, rows)  # fresh table: slots are 0..n-1 in this order, but say so explicitly
        for name, s in state.items():
            self.state_rows(name)[order] = s.float()
        self._last[order] = torch.as_tensor(last, dtype=torch.int64)
        self.updates = int(updates)

    # -- gradient -------------------------------------------------------------------------------------------------
    def local_gradient(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's gradient since :meth:`zero_grad`: sorted distinct ids and summed rows ``[n, dim]``."""
        parts = [(k, r.grad) for k, r in self._pending if r.grad is not None]
        if not parts:
            return torch.zeros(0, dtype=torch.int64), torch.zeros(0, self.dim)
        if len(parts) == 1:
            return parts[0][0], parts[0][1]  # torch.unique: already sorted and distinct
        return coalesce_keyed(torch.cat([k for k, _ in parts]), torch.cat([g for _, g in parts]))

    def gradient(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The gradient an optimizer applies: the exchanged one after ``sync()``, else :meth:`local_gradient`."""
        return self._grad if self._grad is not None else self.local_gradient()

    def set_gradient(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Replace the gradient (``sync()`` stores the exchanged, averaged one here)."""
        self._grad = (keys, values)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the recorded lookups and gradient."""
        self._pending = []
        self._grad = None

    # -- checkpoint -----------------------------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        """Rows, optimizer state and idle counters, in key order (independent of creation order)."""
        n = len(self)
        keys = self.keys()
        order = torch.argsort(keys)
        return {
            "keys": keys[order],
            "weight": self.weight_storage[:n][order].clone(),
            "state": {k: v[:n][order].clone() for k, v in self._optimizer_state().items()},
            "last": self._last[:n][order].clone(),
            "updates": self.updates,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_extra_state` saved."""
        self._load(state["keys"], state["weight"], state["state"], state["last"], state["updates"])
        self.zero_grad()
