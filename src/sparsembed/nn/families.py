"""Parameter families: how a matrix is stored, and how its gradient is exchanged over workers and applied.

A model may mix all three; each knows its exchange and applies plain SGD (``param -= lr * summed_grad``):

* :class:`DenseParam`: dense tensors, gradients summed by a bucketed ``all_reduce``.
* :class:`RowSparseParam`: a dense ``num_rows x dim`` matrix whose gradient is a
  :class:`~sparsembed.rows.coalesce.RowSparse`; exchanged ``"replicated"`` (every worker applies the summed rows) or
  ``"sharded"`` (owners apply, workers get fresh copies of the rows they touched or ask for).
* :class:`SparseParam`: a hash table keyed by arbitrary int64 ids; a row is created on first touch with
  :func:`initial_rows` ``(seed, id)``, so every worker creates the same row for the same id without talking.

Named ``...Param`` so they do not clash with :class:`sparsembed.rows.coalesce.RowSparse`, the gradient type.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sparsembed.comm import exchange
from sparsembed.comm.exchange import ExchangeStats
from sparsembed.errors import UserError
from sparsembed.rows.coalesce import RowSparse
from sparsembed.rows.keytable import KeyTable, initial_rows

__all__ = ["DenseParam", "RowSparseParam", "SparseParam", "initial_rows", "STRATEGIES"]

#: Exchange strategies of the sparse families.
STRATEGIES = ("replicated", "sharded")


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise UserError(f"families: strategy must be one of {STRATEGIES}, got {strategy!r}")


class DenseParam:
    """Dense tensors whose gradients are summed with one ``all_reduce`` per bucket of about ``bucket_bytes``."""

    def __init__(
        self, tensors: torch.Tensor | list[torch.Tensor], *, bucket_bytes: int = 25 << 20, name: str = "dense"
    ) -> None:
        self.tensors = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
        self.bucket_bytes = bucket_bytes
        self.name = name

    def step(self, grads: torch.Tensor | list[torch.Tensor], lr: float, *, group: Any = None) -> ExchangeStats:
        """Sum ``grads`` (one per tensor, summed in place) over all ranks and apply ``t -= lr * g``."""
        grads = [grads] if isinstance(grads, torch.Tensor) else list(grads)
        if len(grads) != len(self.tensors) or any(g.shape != t.shape for g, t in zip(grads, self.tensors, strict=True)):
            raise UserError(f"DenseParam {self.name!r}: need one gradient of the same shape per tensor")
        stats = exchange.dense_all_reduce(grads, bucket_bytes=self.bucket_bytes, group=group, name=self.name)
        for t, g in zip(self.tensors, grads, strict=True):
            t.add_(g.to(t.dtype), alpha=-lr)
        return stats


class RowSparseParam:
    """A dense ``num_rows x dim`` matrix trained with row-sparse gradients.

    Args:
        weight: the matrix, updated in place (every worker holds a full replica).
        strategy: ``"replicated"``: all workers apply the same summed gradient, replicas stay identical.
            ``"sharded"``: the owner of each row (``boundaries``, default even contiguous ranges) applies it and
            sends fresh copies back; a worker's replica is current for the rows it touched or pulled.
        rows, values, compress: message encoding (:func:`sparsembed.rows.codec.encode`).
        mode: replicated only: ``"auto"`` (sparse or dense by density), ``"sparse"`` or ``"dense"``.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        *,
        strategy: str = "replicated",
        boundaries: Any = None,
        rows: str = "auto",
        values: str = "fp32",
        compress: str | None = None,
        mode: str = "auto",
        name: str = "",
    ) -> None:
        _check_strategy(strategy)
        if weight.dim() != 2 or weight.dtype != torch.float32:
            raise UserError(f"RowSparseParam {name!r}: weight must be a 2-D float32 tensor")
        self.weight = weight
        self.strategy, self.boundaries = strategy, boundaries
        self.rows, self.values, self.compress, self.mode, self.name = rows, values, compress, mode, name

    @property
    def num_rows(self) -> int:
        """Rows of the matrix."""
        return int(self.weight.shape[0])

    def step(self, grad: RowSparse, lr: float, *, pull: Any = None, group: Any = None) -> ExchangeStats:
        """Exchange ``grad`` (this rank's, coalesced in place) and apply ``weight -= lr * sum``.

        ``pull`` (sharded only): rows to refresh from their owners, default the rows of ``grad``.
        """
        if grad.num_rows != self.num_rows or (grad.n and grad.dim != self.weight.shape[1]):
            raise UserError(f"RowSparseParam {self.name!r}: gradient shape does not match the weight")
        enc = {"rows": self.rows, "values": self.values, "compress": self.compress, "group": group, "name": self.name}
        if self.strategy == "replicated":
            summed, stats = exchange.replicated(grad, mode=self.mode, **enc)
            if summed.n == self.num_rows:  # dense path: every row
                self.weight.add_(summed.values, alpha=-lr)
            else:
                self.weight.index_add_(0, summed.ids, summed.values, alpha=-lr)
            return stats
        world = exchange._world(group)[1]
        b = exchange.even_boundaries(self.num_rows, world) if self.boundaries is None else self.boundaries
        fresh, stats = exchange.sharded(
            grad,
            b,
            lambda owned: owned.scatter_add_(self.weight, -lr),
            lambda ids: self.weight.index_select(0, ids),
            pull=pull,
            **enc,
        )
        self.weight.index_copy_(0, fresh.ids, fresh.values)
        return stats


class SparseParam:
    """Rows keyed by arbitrary int64 ids in a hash table, created on first touch.

    A new row's value is :func:`initial_rows` of ``(seed, id)``: uniform in ``[-init_scale, init_scale)``
    (default ``0.5 / dim``, word2vec's input init), the same on every worker.
    """

    def __init__(
        self,
        dim: int,
        *,
        seed: int = 0,
        init_scale: float | None = None,
        strategy: str = "replicated",
        values: str = "fp32",
        name: str = "",
        capacity: int = 1024,
    ) -> None:
        _check_strategy(strategy)
        if dim < 1:
            raise UserError(f"SparseParam {name!r}: dim must be >= 1, got {dim}")
        self.dim, self.seed, self.strategy, self.values, self.name = dim, int(seed), strategy, values, name
        self.init_scale = 0.5 / dim if init_scale is None else float(init_scale)
        self._table = KeyTable(capacity)
        self._rows = torch.empty(max(capacity, 16), dim, dtype=torch.float32)

    def __len__(self) -> int:
        return self._table.size

    def keys(self) -> np.ndarray:
        """Every key held, in creation order."""
        return self._table.slot_keys[: self._table.size].copy()

    def lookup(self, keys: Any) -> torch.Tensor:
        """Current rows of ``keys`` (``[n, dim]``, a copy), creating the missing ones."""
        slots = self._slots(keys)  # first: it may grow (replace) the row storage
        return self._rows.index_select(0, slots)

    def step(self, keys: Any, grad: Any, lr: float, *, pull: Any = None, group: Any = None) -> ExchangeStats:
        """Exchange the gradient ``grad [n, dim]`` of rows ``keys [n]`` (duplicates allowed) and apply SGD.

        Replicated: every worker creates and updates every row any worker touched. Sharded: owners
        (:func:`sparsembed.comm.exchange.key_owner`) apply, workers refresh the rows they touched or ``pull``.
        """
        if self.strategy == "replicated":
            k, summed, stats = exchange.replicated_keyed(keys, grad, values=self.values, group=group, name=self.name)
            slots = self._slots(k)
            self._rows.index_add_(0, slots, summed, alpha=-lr)
            return stats

        def apply_owned(k: torch.Tensor, summed: torch.Tensor) -> None:
            slots = self._slots(k)
            self._rows.index_add_(0, slots, summed, alpha=-lr)

        k, fresh, stats = exchange.sharded_keyed(
            keys, grad, apply_owned, self.lookup, pull=pull, values=self.values, group=group, name=self.name
        )
        slots = self._slots(k)
        self._rows.index_copy_(0, slots, fresh)
        return stats

    def _slots(self, keys: Any) -> torch.Tensor:
        """Row slots of ``keys``, creating (and initializing) rows for keys seen for the first time."""
        k = np.ascontiguousarray(torch.as_tensor(keys).numpy(), dtype=np.int64)
        slots, created = self._table.find_or_insert(k)
        if self._table.size > self._rows.shape[0]:
            grown = torch.empty(max(self._table.size, 2 * self._rows.shape[0]), self.dim, dtype=torch.float32)
            grown[: self._rows.shape[0]] = self._rows
            self._rows = grown
        if created.any():
            new_slots = slots[created]
            self._rows[torch.from_numpy(new_slots)] = initial_rows(k[created], self.dim, self.seed, self.init_scale)
        return torch.from_numpy(slots)
