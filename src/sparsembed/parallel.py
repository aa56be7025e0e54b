"""Sparsity-aware data parallelism for any PyTorch model: ``pm = parallel(model)``, then ``pm.sync()``.

:func:`parallel` sorts a module's trainable state into three families, each exchanged its own way:

* :class:`~sparsembed.hashembedding.HashEmbedding` tables: sparse-stored, keyed gradient
  (:func:`sparsembed.exchange.replicated_keyed`); every worker ends up creating and updating the same rows.
* weights of ``nn.Embedding`` / ``nn.EmbeddingBag`` with ``sparse=True``: dense-stored, sparse-sent; torch's
  sparse COO gradient becomes a :class:`~sparsembed.sparse.RowSparse` (:func:`sparsembed.exchange.replicated`,
  which falls back to a dense all-reduce when the rows touched are too many to be worth sending sparsely).
* every other parameter: dense, bucketed ``all_reduce`` (:func:`sparsembed.exchange.dense_all_reduce`).

After ``loss.backward()``, :meth:`ParallelModel.sync` replaces every gradient by its average over the workers
(like DDP; ``average=False`` sums). Every rank makes the same collectives in the same order whatever it touched:
an unused table or an empty gradient is exchanged as an empty message, an unused dense parameter as zeros.
Without an initialized process group ``sync`` only coalesces (a world of one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from sparsembed import exchange
from sparsembed.exchange import ExchangeStats
from sparsembed.hashembedding import HashEmbedding
from sparsembed.sparse import RowSparse

__all__ = ["ParallelModel", "Families", "families", "parallel"]


@dataclass
class Families:
    """A module's trainable state by family, each list in module order (the same on every rank)."""

    hashed: list[tuple[str, HashEmbedding]] = field(default_factory=list)
    sparse: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    dense: list[tuple[str, nn.Parameter]] = field(default_factory=list)


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


class ParallelModel:
    """A module plus the exchange of its gradients over a process group; call it like the module.

    Args:
        module: any ``nn.Module``; its parameters must start equal on every rank (:meth:`broadcast_parameters`).
        group: process group (default: the world).
        bucket_bytes: dense all-reduce bucket size.
        values: wire format of sparse rows, ``"fp32"`` (exact) or ``"fp16"`` / ``"bf16"`` (rounded once per rank).
        mode: row-sparse weights: ``"auto"`` (sparse or dense by density), ``"sparse"`` or ``"dense"``.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        group: Any = None,
        bucket_bytes: int = 25 << 20,
        values: str = "fp32",
        mode: str = "auto",
    ) -> None:
        self.module = module
        self.group, self.bucket_bytes, self.values, self.mode = group, bucket_bytes, values, mode
        self.families = families(module)
        self.last_stats: list[ExchangeStats] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    @property
    def world_size(self) -> int:
        """Workers in the group (1 without an initialized process group)."""
        return exchange._world(self.group)[1]

    def broadcast_parameters(self, src: int = 0) -> None:
        """Copy rank ``src``'s dense and row-sparse parameters to every rank (HashEmbedding rows need nothing:
        they are created identically everywhere)."""
        if self.world_size == 1:
            return
        with torch.no_grad():
            for _, p in self.families.sparse + self.families.dense:
                dist.broadcast(p.data, src=src, group=self.group)

    def sync(self, *, average: bool = True) -> list[ExchangeStats]:
        """Replace every gradient by its average (``average=False``: sum) over the workers; collective.

        Returns one :class:`ExchangeStats` per HashEmbedding, per sparse weight and for the dense bucket set
        (also kept in :attr:`last_stats`).
        """
        world = self.world_size
        scale = 1.0 / world if average else 1.0
        stats = [self._sync_hashed(name, emb, scale) for name, emb in self.families.hashed]
        stats += [self._sync_sparse(name, p, scale) for name, p in self.families.sparse]
        if self.families.dense:
            stats.append(self._sync_dense(scale))
        self.last_stats = stats
        return stats

    def bytes_sent(self) -> int:
        """Payload bytes this rank sent in the last :meth:`sync`."""
        return sum(s.bytes_sent for s in self.last_stats)

    def _sync_hashed(self, name: str, emb: HashEmbedding, scale: float) -> ExchangeStats:
        keys, vals = emb.local_gradient()
        keys, vals, stats = exchange.replicated_keyed(keys, vals, values=self.values, group=self.group, name=name)
        if scale != 1.0:
            vals = vals * scale
        emb.set_gradient(keys, vals)
        return stats

    def _sync_sparse(self, name: str, p: nn.Parameter, scale: float) -> ExchangeStats:
        num_rows, dim = p.shape
        g = p.grad
        if g is None:  # table unused on this rank: still joins the exchange
            rs = RowSparse(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dim), num_rows, check=False)
        elif g.is_sparse:
            g = g.coalesce() if g._values().dtype != torch.float32 else g  # RowSparse coalesces float32 itself
            rs = RowSparse(g._indices()[0], g._values().float(), num_rows, check=False)
        else:  # a dense gradient (e.g. a tied weight): every row, the exchange picks its dense path
            rs = RowSparse(torch.arange(num_rows), g.float().contiguous(), num_rows, check=False)
        summed, stats = exchange.replicated(rs, values=self.values, mode=self.mode, group=self.group, name=name)
        ids, vals = summed.ids, summed.values
        if stats.mode == "dense" and self.world_size > 1:
            ids, vals = self._touched_rows(rs.ids, vals)
        vals = vals * scale if scale != 1.0 else vals
        p.grad = torch.sparse_coo_tensor(
            ids.unsqueeze(0), vals.to(p.dtype), (num_rows, dim), is_coalesced=True, check_invariants=False
        )
        return stats

    def _touched_rows(self, own: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """After a dense fallback: keep only rows some rank touched, so that lazy optimizers update the same rows
        as with a sparse exchange (an untouched row's Adam moments must not move); costs a byte a row."""
        mask = torch.zeros(dense.shape[0], dtype=torch.uint8)
        mask[own] = 1
        dist.all_reduce(mask, op=dist.ReduceOp.MAX, group=self.group)
        ids = mask.nonzero().squeeze(1)
        return ids, dense.index_select(0, ids)

    def _sync_dense(self, scale: float) -> ExchangeStats:
        grads = []
        for _, p in self.families.dense:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            elif not p.grad.is_contiguous():
                p.grad = p.grad.contiguous()
            grads.append(p.grad)
        stats = exchange.dense_all_reduce(grads, bucket_bytes=self.bucket_bytes, group=self.group, name="dense")
        if scale != 1.0:
            for g in grads:
                g.mul_(scale)
        return stats


def parallel(module: nn.Module, **kwargs: Any) -> ParallelModel:
    """Wrap ``module`` for sparsity-aware data parallelism; see :class:`ParallelModel` for the options."""
    return ParallelModel(module, **kwargs)
