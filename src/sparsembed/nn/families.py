"""The three parameter families: how a matrix is stored, and how its gradient is exchanged over workers.

Every trainable tensor belongs to one :class:`Family`:

* ``hashed``: hash-stored, sparse-sent. Rows keyed by arbitrary int64 ids in a
  :class:`~sparsembed.rows.keytable.KeyedRows`, created on first touch as ``initial_rows(seed, id)``, so every
  worker creates the same row for the same id without talking; the gradient is the touched keys and their rows.
* ``sparse``: dense-stored, sparse-sent. A ``num_rows x dim`` matrix whose gradient is a
  :class:`~sparsembed.rows.coalesce.RowSparse` (sent as rows, or as one dense sum when too many rows moved).
* ``dense``: every other tensor, summed by a bucketed ``all_reduce``.

:func:`families` sorts a module's trainable state into them (a
:class:`~sparsembed.nn.hashembedding.HashEmbedding` is hashed, the weight of an ``nn.Embedding`` /
``nn.EmbeddingBag`` with ``sparse=True`` is sparse, the rest is dense); :class:`~sparsembed.nn.parallel.ParallelModel`
and the optimizers of :mod:`sparsembed.nn.optim` both walk that one classification.

Without a module, one standalone type per family holds a matrix, exchanges its gradient and applies plain SGD
(``param -= lr * summed_grad``): :class:`SparseParam` (hashed), :class:`RowSparseParam` (sparse, ``replicated`` or
``sharded``) and :class:`DenseParam` (dense). They are named ``...Param`` so they do not clash with
:class:`~sparsembed.rows.coalesce.RowSparse`, the gradient type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from sparsembed.comm.dense import dense_all_reduce
from sparsembed.comm.policy import Strategy, parse
from sparsembed.comm.replicated import replicated, replicated_keyed
from sparsembed.comm.sharded import even_boundaries, sharded, sharded_keyed
from sparsembed.comm.stats import ExchangeStats
from sparsembed.comm.transport import rank_world
from sparsembed.errors import UserError
from sparsembed.nn.hashembedding import HashEmbedding
from sparsembed.rows.coalesce import RowSparse
from sparsembed.rows.keytable import KeyedRows

__all__ = ["Family", "Families", "families", "DenseParam", "RowSparseParam", "SparseParam"]


class Family(str, Enum):
    """The three ways a trainable tensor is stored and its gradient sent."""

    HASHED = "hashed"  # hash-stored, sparse-sent
    SPARSE = "sparse"  # dense-stored, sparse-sent
    DENSE = "dense"  # dense-stored, dense-sent


@dataclass
class Families:
    """A module's trainable state by :class:`Family`, each list in module order (the same on every rank)."""

    hashed: list[tuple[str, HashEmbedding]] = field(default_factory=list)
    sparse: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    dense: list[tuple[str, nn.Parameter]] = field(default_factory=list)

    def __getitem__(self, family: Family | str) -> list[tuple[str, Any]]:
        """The members of ``family`` (``fam[Family.SPARSE] is fam.sparse``)."""
        return getattr(self, Family(family).value)


def families(module: nn.Module) -> Families:
    """Classify ``module``'s HashEmbeddings, sparse embedding weights and other trainable parameters."""
    fam = Families()
    sparse_ids = set()
    for name, m in module.named_modules():
        if isinstance(m, HashEmbedding):
            fam.hashed.append((name, m))
        elif isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse and m.weight.requires_grad:
            sparse_ids.add(id(m.weight))
    for name, p in module.named_parameters():  # deduplicated: a tied weight appears once
        if not p.requires_grad:
            continue
        (fam.sparse if id(p) in sparse_ids else fam.dense).append((name, p))
    return fam


class DenseParam:
    """The dense family: tensors whose gradients are summed with one ``all_reduce`` per bucket of about
    ``bucket_bytes``."""

    family: ClassVar[Family] = Family.DENSE

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
        stats = dense_all_reduce(grads, bucket_bytes=self.bucket_bytes, group=group, name=self.name)
        for t, g in zip(self.tensors, grads, strict=True):
            t.add_(g.to(t.dtype), alpha=-lr)
        return stats


class RowSparseParam:
    """The sparse family: a dense ``num_rows x dim`` matrix trained with row-sparse gradients.

    Args:
        weight: the matrix, updated in place (every worker holds a full replica).
        strategy: ``"replicated"``: all workers apply the same summed gradient, replicas stay identical.
            ``"sharded"``: the owner of each row (``boundaries``, default even contiguous ranges) applies it and
            sends fresh copies back; a worker's replica is current for the rows it touched or pulled.
        rows, values, compress: message encoding (:func:`sparsembed.rows.codec.encode`).
        mode: replicated only: ``"auto"`` (sparse or dense by density), ``"sparse"`` or ``"dense"``.
    """

    family: ClassVar[Family] = Family.SPARSE

    def __init__(
        self,
        weight: torch.Tensor,
        *,
        strategy: Strategy | str = Strategy.REPLICATED,
        boundaries: Any = None,
        rows: str = "auto",
        values: str = "fp32",
        compress: str | None = None,
        mode: str = "auto",
        name: str = "",
    ) -> None:
        self.strategy = parse(strategy, Strategy, f"RowSparseParam {name!r}: strategy")
        if weight.dim() != 2 or weight.dtype != torch.float32:
            raise UserError(f"RowSparseParam {name!r}: weight must be a 2-D float32 tensor")
        self.weight, self.boundaries = weight, boundaries
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
        if self.strategy is Strategy.REPLICATED:
            summed, stats = replicated(grad, mode=self.mode, **enc)
            if summed.n == self.num_rows:  # dense path: every row
                self.weight.add_(summed.values, alpha=-lr)
            else:
                self.weight.index_add_(0, summed.ids, summed.values, alpha=-lr)
            return stats
        world = rank_world(group)[1]
        b = even_boundaries(self.num_rows, world) if self.boundaries is None else self.boundaries
        fresh, stats = sharded(
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
    """The hashed family: rows keyed by arbitrary int64 ids in a hash table, created on first touch.

    A new row's value is :func:`~sparsembed.rows.keytable.initial_rows` of ``(seed, id)``: uniform in
    ``[-init_scale, init_scale)`` (default ``0.5 / dim``, word2vec's input init), the same on every worker.
    """

    family: ClassVar[Family] = Family.HASHED

    def __init__(
        self,
        dim: int,
        *,
        seed: int = 0,
        init_scale: float | None = None,
        strategy: Strategy | str = Strategy.REPLICATED,
        values: str = "fp32",
        name: str = "",
        capacity: int = 1024,
    ) -> None:
        self.strategy = parse(strategy, Strategy, f"SparseParam {name!r}: strategy")
        if dim < 1:
            raise UserError(f"SparseParam {name!r}: dim must be >= 1, got {dim}")
        self.dim, self.seed, self.values, self.name = dim, int(seed), values, name
        self.init_scale = 0.5 / dim if init_scale is None else float(init_scale)
        self._keyed = KeyedRows(dim, seed=self.seed, scale=self.init_scale, capacity=capacity)

    def __len__(self) -> int:
        return len(self._keyed)

    def keys(self) -> np.ndarray:
        """Every key held, in creation order."""
        return self._keyed.keys()

    def lookup(self, keys: Any) -> torch.Tensor:
        """Current rows of ``keys`` (``[n, dim]``, a copy), creating the missing ones."""
        return self._keyed.lookup(keys)

    def step(self, keys: Any, grad: Any, lr: float, *, pull: Any = None, group: Any = None) -> ExchangeStats:
        """Exchange the gradient ``grad [n, dim]`` of rows ``keys [n]`` (duplicates allowed) and apply SGD.

        Replicated: every worker creates and updates every row any worker touched. Sharded: owners
        (:func:`sparsembed.comm.sharded.key_owner`) apply, workers refresh the rows they touched or ``pull``.
        """
        if self.strategy is Strategy.REPLICATED:
            k, summed, stats = replicated_keyed(keys, grad, values=self.values, group=group, name=self.name)
            self._apply(k, summed, lr)
            return stats
        k, fresh, stats = sharded_keyed(
            keys, grad, lambda k, summed: self._apply(k, summed, lr), self.lookup, pull=pull, values=self.values,
            group=group, name=self.name,
        )
        slots = self._keyed.slots(k)  # first: it may replace the row storage
        self._keyed.rows.index_copy_(0, slots, fresh)
        return stats

    def _apply(self, keys: torch.Tensor, summed: torch.Tensor, lr: float) -> None:
        """``row -= lr * summed`` for the rows of ``keys``, creating the missing ones first."""
        slots = self._keyed.slots(keys)
        self._keyed.rows.index_add_(0, slots, summed, alpha=-lr)
