"""Sparsity-aware data parallelism for any PyTorch model: ``pm = parallel(model)``, then ``pm.sync()``.

:func:`parallel` sorts a module's trainable state into the three families of :mod:`sparsembed.nn.families`
(HashEmbedding tables: hashed; weights of ``nn.Embedding`` / ``nn.EmbeddingBag`` with ``sparse=True``: sparse;
every other parameter: dense). After ``loss.backward()``, :meth:`ParallelModel.sync` replaces every gradient by
its average over the workers (like DDP; ``average=False`` sums):

* by default (``fuse=True``, float32 on the wire) the fused sync sends, per rank, one message holding every
  HashEmbedding's keyed gradient, every sparse weight's touched rows (torch's sparse COO gradient as a
  :class:`~sparsembed.rows.coalesce.RowSparse`) and the small dense gradients; a sparse weight whose rows are too
  many to be worth sending sparsely takes a dense all-reduce instead, and large dense parameters a bucketed one;
* with ``fuse=False`` (or fp16 / bf16 rows) each table is exchanged alone: a HashEmbedding's keyed gradient by
  :func:`sparsembed.comm.replicated.replicated_keyed`, a sparse weight by :func:`sparsembed.comm.replicated.replicated`
  (which falls back to a dense all-reduce the same way), the dense parameters by
  :func:`sparsembed.comm.dense.dense_all_reduce`.

Parameters may live on a CUDA device, over NCCL or gloo (:mod:`sparsembed.comm.device`): a sparse weight's
gradient is coalesced there by torch (:func:`local_grad`), crosses to the host once for the codec (numba on host
arrays; the step's distinct rows only) and its sum comes back once, as a sparse gradient of the same layout as on
the CPU; dense gradients are all-reduced where they are, except the small ones that ride in the fused message.

Either way every worker ends up creating and updating the same HashEmbedding rows, and every rank makes the same
collectives in the same order whatever it touched: an unused table or an empty gradient is exchanged as an empty
message, an unused dense parameter as zeros. Without an initialized process group ``sync`` only coalesces (a
world of one).
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from sparsembed.comm.dense import dense_all_reduce
from sparsembed.comm.device import coalesce_rows, to_host
from sparsembed.comm.fused import FusedExchange, FusedSums, Segment
from sparsembed.comm.messages import as_wire
from sparsembed.comm.policy import Mode, Transport, parse
from sparsembed.comm.replicated import replicated_keyed, replicated_rows
from sparsembed.comm.stats import ExchangeStats
from sparsembed.comm.transport import rank_world
from sparsembed.errors import UserError
from sparsembed.nn.families import Families, families
from sparsembed.nn.feedback import Residual
from sparsembed.nn.hashembedding import HashEmbedding
from sparsembed.rows.coalesce import RowSparse

__all__ = ["ParallelModel", "parallel", "local_rows", "local_grad", "set_sparse_grad"]

#: Fused sync: dense parameters up to this many bytes in all ride in the sparse message (saves a round trip; at 2
#: workers an all-gather moves the same bytes as a ring all-reduce).
FUSE_DENSE_BYTES = 256 << 10

#: Wire formats of sparse rows: exact, half precision, or int8 with a float32 scale per row.
WIRE_VALUES = ("fp32", "fp16", "bf16", "int8")


class ParallelModel:
    """A module plus the exchange of its gradients over a process group; call it like the module.

    Args:
        module: any ``nn.Module``; its parameters must start equal on every rank (:meth:`broadcast_parameters`).
        group: process group (default: the world).
        bucket_bytes: dense all-reduce bucket size.
        values: wire format of sparse rows, ``"fp32"`` (exact), ``"fp16"`` / ``"bf16"`` (rounded once per rank) or
            ``"int8"`` (a float32 scale per row: about a quarter of fp32's bytes).
        feedback: with rounded ``values``, keep what a rank's rounding dropped and send it with the row's next
            gradient (error feedback, :mod:`sparsembed.nn.feedback`; default: on for rounded values).
        mode: row-sparse weights: ``"auto"`` (sparse or dense by density), ``"sparse"`` or ``"dense"``.
        fuse: send every sparse gradient and the small dense ones in one message per rank (float32 only; see the
            module docstring); ``False``: one exchange per table.
        transport: ``"auto"``: when every rank is on this host (and the group is gloo), the fused messages and
            the exchanges of sparse weights go through shared memory (:mod:`sparsembed.comm.shm`); ``"tcp"``:
            always the group's collectives.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        group: Any = None,
        bucket_bytes: int = 25 << 20,
        values: str = "fp32",
        mode: Mode | str = Mode.AUTO,
        fuse: bool = True,
        transport: Transport | str = Transport.AUTO,
        feedback: bool | None = None,
    ) -> None:
        self.transport = parse(transport, Transport, "parallel: transport")
        if values not in WIRE_VALUES:  # here, not in the first sync
            raise UserError(f"parallel: values must be one of {', '.join(WIRE_VALUES)}, got {values!r}")
        self.feedback = values != "fp32" if feedback is None else bool(feedback)
        self.residuals: dict[str, Residual] = {}  # per table, with feedback: what rounding kept back
        self.mode = parse(mode, Mode, "parallel: mode")
        self.module = module
        self.group, self.bucket_bytes, self.values, self.fuse = group, bucket_bytes, values, fuse
        self.fused = FusedExchange(group, self.transport)  # the fused sync's link, chosen on its first use
        self.families = families(module)
        self.last_stats: list[ExchangeStats] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    @property
    def world_size(self) -> int:
        """Workers in the group (1 without an initialized process group)."""
        return rank_world(self.group)[1]

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
        if self.fuse and world > 1 and self.values == "fp32":
            self.last_stats = _fused_sync(self, scale)
            return self.last_stats
        stats = [self._sync_hashed(name, emb, scale) for name, emb in self.families.hashed]
        stats += [self._sync_sparse(name, p, scale) for name, p in self.families.sparse]
        if self.families.dense:
            stats.append(self._sync_dense(scale))
        self.last_stats = stats
        return stats

    def bytes_sent(self) -> int:
        """Payload bytes this rank sent in the last :meth:`sync`."""
        return sum(s.bytes_sent for s in self.last_stats)

    def flush_residuals(self, *, average: bool = True) -> list[ExchangeStats]:
        """Send every rank's pending rounding residuals exactly (float32) and make their average (``average=False``:
        sum) the gradient of each HashEmbedding and sparse weight; collective. At the end of training, after
        ``optimizer.zero_grad()``: ``optimizer.step()`` then applies what rounding had kept back, and nothing a rank
        computed is lost. Dense gradients are left as they are. Without feedback: nothing pending, empty gradients.
        """
        world = self.world_size
        scale = 1.0 / world if average else 1.0
        stats = []
        for name, emb in self.families.hashed:
            keys, vals = self._pending(name, emb.dim)
            keys, vals, st = replicated_keyed(keys, vals, group=self.group, name=name)
            emb.set_gradient(keys, vals * scale if scale != 1.0 else vals)
            stats.append(st)
        for name, p in self.families.sparse:
            ids, vals = self._pending(name, p.shape[1])
            ids, vals, st = replicated_rows(ids.to(p.device), vals.to(p.device), p.shape[0], mode=self.mode,
                                            group=self.group, name=name, transport=self.transport)
            set_sparse_grad(p, ids, vals, scale)
            stats.append(st)
        self.last_stats = stats
        return stats

    def _pending(self, name: str, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        residual = self.residuals.get(name)
        return residual.pop_all() if residual is not None else (torch.zeros(0, dtype=torch.int64),
                                                                torch.zeros(0, dim))

    def _with_residual(self, name: str, ids: torch.Tensor, vals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Error feedback before a rounded send of rows ``ids`` (on the host): the rows plus their pending residual
        (on the host), and what the rounding will drop from them (``sent - as the peers decode it``)."""
        residual = self.residuals.setdefault(name, Residual(int(vals.shape[1])))
        sent = residual.take(ids, to_host(vals))
        return sent, sent - as_wire(sent, self.values)

    def _rounds(self) -> bool:
        return self.feedback and self.values != "fp32" and self.world_size > 1

    def _sync_hashed(self, name: str, emb: HashEmbedding, scale: float) -> ExchangeStats:
        keys, vals = emb.local_gradient()
        rounds = self._rounds()
        if rounds:
            host_keys = to_host(keys)
            vals, dropped = self._with_residual(name, host_keys, vals)
        out_keys, vals, stats = replicated_keyed(keys, vals, values=self.values, group=self.group, name=name)
        if rounds:  # keyed messages are always sparse: rounded
            self.residuals[name].keep(host_keys, dropped)
        if scale != 1.0:
            vals = vals * scale
        emb.set_gradient(out_keys, vals)
        return stats

    def _sync_sparse(self, name: str, p: nn.Parameter, scale: float) -> ExchangeStats:
        ids, vals = local_grad(p)
        rounds = self._rounds()
        if rounds:
            host_ids = to_host(ids)  # the residual store is on the host, as the codec that rounds
            host, dropped = self._with_residual(name, host_ids, vals)
            vals = host.to(vals.device)
        out_ids, vals, stats = replicated_rows(ids, vals, p.shape[0], values=self.values, mode=self.mode,
                                               group=self.group, name=name, transport=self.transport)
        if rounds and stats.mode != "dense":  # a dense all-reduce carried float32: nothing dropped
            self.residuals[name].keep(host_ids, dropped)
        set_sparse_grad(p, out_ids, vals, scale)
        return stats

    def _sync_dense(self, scale: float) -> ExchangeStats:
        grads = []
        for _, p in self.families.dense:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            elif not p.grad.is_contiguous():
                p.grad = p.grad.contiguous()
            grads.append(p.grad)
        stats = dense_all_reduce(grads, bucket_bytes=self.bucket_bytes, group=self.group, name="dense")
        if scale != 1.0:
            for g in grads:
                g.mul_(scale)
        return stats


def local_rows(p: nn.Parameter) -> RowSparse:
    """This rank's gradient of a sparse embedding weight as a coalesced RowSparse (empty when unused)."""
    num_rows, dim = p.shape
    g = p.grad
    if g is None:  # table unused on this rank: still joins the exchange
        rs = RowSparse(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dim), num_rows, check=False)
    elif g.is_sparse:
        g = g.coalesce() if g._values().dtype != torch.float32 else g  # RowSparse coalesces float32 itself
        # The indices can be a view of the caller's ids (nn.Embedding's backward reshapes its input), and the
        # coalescing sorts in place: a copy of 8 bytes a row keeps the caller's tensor as it was.
        rs = RowSparse(g._indices()[0].clone(), g._values().float(), num_rows, check=False)
    else:  # a dense gradient (e.g. a tied weight): every row, the exchange picks its dense path
        rs = RowSparse(torch.arange(num_rows), g.float().contiguous(), num_rows, check=False)
    return rs.coalesce_()


def local_grad(p: nn.Parameter) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's gradient of a sparse embedding weight as sorted distinct row ids and float32 rows, on the
    parameter's device: :func:`local_rows` on the CPU (numba, in place), torch's coalesce on a CUDA device."""
    if p.device.type == "cpu":
        rs = local_rows(p)
        return rs.ids, rs.values
    num_rows, dim = p.shape
    g = p.grad
    if g is None:  # table unused on this rank: still joins the exchange
        return torch.zeros(0, dtype=torch.int64, device=p.device), torch.zeros(0, dim, device=p.device)
    if g.is_sparse:
        return coalesce_rows(g._indices()[0], g._values(), num_rows)
    return torch.arange(num_rows, device=p.device), g.float().contiguous()  # a dense gradient: every row


def set_sparse_grad(p: nn.Parameter, ids: torch.Tensor, vals: torch.Tensor, scale: float) -> None:
    """``p.grad :=`` the coalesced sparse gradient ``scale * vals`` at rows ``ids``, on ``p``'s device."""
    vals = vals * scale if scale != 1.0 else vals
    p.grad = torch.sparse_coo_tensor(
        ids.to(p.device).unsqueeze(0), vals.to(p.device, p.dtype), tuple(p.shape), is_coalesced=True,
        check_invariants=False,
    )


def parallel(module: nn.Module, **kwargs: Any) -> ParallelModel:
    """Wrap ``module`` for sparsity-aware data parallelism; see :class:`ParallelModel` for the options."""
    return ParallelModel(module, **kwargs)


# -- fused exchange -----------------------------------------------------------------------------------------------
def _fused_sync(pm: ParallelModel, scale: float) -> list[ExchangeStats]:
    """Every family in one fused exchange (:class:`sparsembed.comm.fused.FusedExchange`; world > 1, float32 on
    the wire), then the dense parameters too large to ride in it by a bucketed all-reduce; every gradient becomes
    its sum times ``scale``."""
    t0 = time.perf_counter()
    fam = pm.families
    segments = [Segment(name, *emb.local_gradient()) for name, emb in fam.hashed]
    for name, p in fam.sparse:
        ids, vals = local_grad(p)  # the fused message is host bytes: one copy of the distinct rows off a device
        segments.append(Segment(name, to_host(ids), to_host(vals), p.shape[0]))
    small, big = _split_dense(fam.dense)
    out = pm.fused.exchange(segments, pm.mode, [p.grad for p in small])
    _apply_sums(fam, out, small, scale)
    stats = out.stats
    if big:
        stats.append(dense_all_reduce([p.grad for p in big], bucket_bytes=pm.bucket_bytes, group=pm.group))
        for p in big:
            p.grad.mul_(scale)
    if stats:
        stats[0].seconds = time.perf_counter() - t0  # the whole fused step, reported once
    return stats


def _apply_sums(fam: Families, out: FusedSums, small: list[nn.Parameter], scale: float) -> None:
    """Every gradient of the fused exchange := its sum times ``scale`` (HashEmbeddings, sparse weights, the small
    dense parameters)."""
    n_hash = len(fam.hashed)
    for (_, emb), (keys, vals) in zip(fam.hashed, out.rows[:n_hash], strict=True):
        emb.set_gradient(keys, vals * scale if scale != 1.0 else vals)
    for (_, p), (ids, vals) in zip(fam.sparse, out.rows[n_hash:], strict=True):
        set_sparse_grad(p, ids, vals, scale)
    for p, total in zip(small, out.dense, strict=True):
        p.grad.copy_(total.mul_(scale))


def _split_dense(dense: list[tuple[str, nn.Parameter]]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Dense parameters (gradients made present and contiguous) that ride in the fused message, and the rest."""
    params = []
    for _, p in dense:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        elif not p.grad.is_contiguous():
            p.grad = p.grad.contiguous()
        params.append(p)
    floats = [p for p in params if p.grad.dtype == torch.float32]
    if sum(p.numel() * 4 for p in floats) <= FUSE_DENSE_BYTES:
        return floats, [p for p in params if p.grad.dtype != torch.float32]
    return [], params
