"""Optimizers that update only the rows a step touched: :class:`SGD`, :class:`Adagrad` and a lazy :class:`Adam`.

They take the model (or its :class:`~sparsembed.nn.parallel.ParallelModel`) and walk the same
:func:`~sparsembed.nn.families.families` as the ``ParallelModel``. Like torch's optimizers they also take an iterable
of parameters (``model.parameters()``, or ``named_parameters()``); but a
:class:`~sparsembed.nn.hashembedding.HashEmbedding` has no ``nn.Parameter``, so its table is then absent: a model
with HashEmbeddings needs the model itself. Given parameters, each is updated by its gradient's layout (a sparse
COO gradient as the sparse family, a dense one as the dense family). Per family:

* dense: the whole tensor, as torch's optimizers do (the same formulas and defaults);
* sparse (sparse embedding weights, sparse COO gradient) and hashed (HashEmbedding tables): only the rows in the
  gradient, and only their optimizer state (lazy: an untouched row's Adam moments do not decay, as in
  ``torch.optim.SparseAdam``).

State checkpoints with the model: dense and sparse-weight state in :meth:`Optimizer.state_dict`; the state of
HashEmbedding rows lives beside the rows (evicted with them) and is saved in the model's ``state_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from sparsembed.errors import UserError
from sparsembed.nn.families import Families, families
from sparsembed.nn.hashembedding import HashEmbedding
from sparsembed.nn.parallel import ParallelModel

__all__ = ["Optimizer", "SGD", "Adagrad", "Adam", "Trainable", "trainable_families"]

#: What an optimizer takes: the model, its ParallelModel, or (as torch's optimizers) its parameters or named ones.
Trainable = nn.Module | ParallelModel | Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]]


def trainable_families(target: Trainable, who: str = "optimizer") -> Families:
    """The families an optimizer updates: :func:`families` of a module, or of parameters given as torch takes them.

    Parameters given directly all go to the dense family, in order, named by their position (``"0"``, ``"1"``, ...)
    or by the names of ``named_parameters()``; :meth:`Optimizer.step` then treats a sparse gradient by rows. A
    UserError says what to pass instead of anything else (a single tensor, parameter groups, a HashEmbedding).
    """
    if isinstance(target, ParallelModel):
        return families(target.module)
    if isinstance(target, nn.Module):
        return families(target)
    if isinstance(target, torch.Tensor):
        raise UserError(f"{who}: got a single tensor; pass the model, or a list of parameters ([tensor])")
    if isinstance(target, (str, bytes, dict)) or not isinstance(target, Iterable):
        raise UserError(f"{who}: got {type(target).__name__}; pass the model, or its parameters (model.parameters())")
    fam, seen = Families(), set()
    for position, item in enumerate(target):
        named = isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)  # from named_parameters()
        name, p = item if named else (str(position), item)
        if isinstance(p, dict):
            raise UserError(f"{who}: parameter groups (dicts) are not supported; pass the model or one list of "
                            "parameters, and set opt.lr to change the learning rate")
        if isinstance(p, HashEmbedding):
            raise UserError(f"{who}: a HashEmbedding is a module, not a parameter; pass the model itself")
        if not isinstance(p, torch.Tensor):
            raise UserError(f"{who}: parameter {name} is a {type(p).__name__}, not a tensor; pass the model, or "
                            "its parameters (model.parameters())")
        if id(p) not in seen:  # a tied weight listed twice is updated once, as in a module
            seen.add(id(p))
            fam.dense.append((str(name), p))
    if not fam.dense:
        raise UserError(f"{who}: got an empty parameter list; pass the model, or its parameters")
    return fam


class Optimizer:
    """Base: walks the three families and calls :meth:`update` on whole tensors or on gathered rows.

    Args:
        model: the model or its ParallelModel (every family), or its parameters as torch's optimizers take them,
            ``model.parameters()`` or ``named_parameters()`` (no HashEmbedding table: those need the model).
        lr: learning rate (> 0); set :attr:`lr` to schedule it.
    """

    #: Names of the per-element state tensors the rule keeps (zeros at first).
    state_names: tuple[str, ...] = ()

    def __init__(self, model: Trainable, lr: float) -> None:
        if lr <= 0:
            raise UserError(f"{type(self).__name__}: lr must be > 0, got {lr}")
        # A module: the classification ParallelModel uses, in the same order.
        self.families = trainable_families(model, type(self).__name__)
        self.lr = float(lr)
        self.steps = 0
        self.state: dict[str, dict[str, torch.Tensor]] = {}

    def update(self, w: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor]) -> None:
        """Apply the rule in place to rows ``w`` with gradient ``g`` and state of the same shape."""
        raise NotImplementedError

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every gradient (parameters' and HashEmbeddings')."""
        for _, p in self.families.sparse + self.families.dense:
            p.grad = None
        for _, emb in self.families.hashed:
            emb.zero_grad()

    @torch.no_grad()
    def step(self) -> None:
        """Update every dense parameter that has a gradient and the touched rows of the sparse families."""
        self.steps += 1
        # By the gradient's layout: a sparse weight tied to a dense layer gets a dense gradient, and parameters given
        # without their module (all in the dense family) may carry sparse ones.
        for name, p in self.families.dense + self.families.sparse:
            if p.grad is None:
                continue
            if not p.grad.is_sparse:
                self.update(p.data, p.grad.to(p.dtype), self._state(name, p))
                continue
            g = p.grad.coalesce()  # the rules are not linear in g: duplicate rows must be summed first
            self._update_rows(p.data, g.indices()[0], g.values(), self._state(name, p))
        for _, emb in self.families.hashed:
            keys, vals = emb.gradient()
            slots = emb.slots(keys)  # creates rows other workers touched
            state = {n: emb.state_rows(n) for n in self.state_names}
            self._update_rows(emb.weight_storage, slots, vals, state)
            emb.updated(slots)

    def _update_rows(self, w: torch.Tensor, idx: torch.Tensor, g: torch.Tensor, state: dict) -> None:
        if idx.numel() == 0:
            return
        rows = w.index_select(0, idx)
        st = {k: v.index_select(0, idx) for k, v in state.items()}
        self.update(rows, g.to(w.dtype), st)
        w.index_copy_(0, idx, rows)
        for k, v in state.items():
            v.index_copy_(0, idx, st[k])

    def _state(self, name: str, p: torch.Tensor) -> dict[str, torch.Tensor]:
        st = self.state.setdefault(name, {})
        for k in self.state_names:
            if k not in st:
                st[k] = torch.zeros_like(p.data)
        return st

    def state_dict(self) -> dict[str, Any]:
        """Step count, learning rate and the state of dense and sparse-weight parameters (by parameter name)."""
        return {"steps": self.steps, "lr": self.lr, "state": {n: dict(s) for n, s in self.state.items()}}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (tensors are copied)."""
        self.steps, self.lr = int(sd["steps"]), float(sd["lr"])
        self.state = {n: {k: v.clone() for k, v in s.items()} for n, s in sd["state"].items()}


class SGD(Optimizer):
    """``w -= lr * g``."""

    def update(self, w: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor]) -> None:
        w.add_(g, alpha=-self.lr)


class Adagrad(Optimizer):
    """``s += g^2; w -= lr * g / (sqrt(s) + eps)`` (torch.optim.Adagrad's defaults, no decay)."""

    state_names = ("sum",)

    def __init__(self, model: Trainable, lr: float = 0.01, eps: float = 1e-10) -> None:
        super().__init__(model, lr)
        self.eps = eps

    def update(self, w: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor]) -> None:
        s = state["sum"]
        s.addcmul_(g, g)
        w.addcdiv_(g, s.sqrt().add_(self.eps), value=-self.lr)


class Adam(Optimizer):
    """Adam; lazy on sparse families: only touched rows' moments move (torch.optim.SparseAdam's rule).

    The bias correction uses the optimizer's step count, the same for every row, as SparseAdam does.
    """

    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(
        self,
        model: Trainable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__(model, lr)
        self.betas, self.eps = betas, eps

    def update(self, w: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor]) -> None:
        b1, b2 = self.betas
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        bc1 = 1 - b1**self.steps
        bc2 = 1 - b2**self.steps
        denom = (v.sqrt() / math.sqrt(bc2)).add_(self.eps)
        w.addcdiv_(m, denom, value=-self.lr / bc1)
