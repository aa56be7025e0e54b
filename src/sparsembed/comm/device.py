"""Where an exchange's tensors must be for the group's collectives: the CPU (gloo), or a CUDA device (NCCL).

Everything above this module encodes, decodes and merges messages on the host: the codec is numba over numpy
arrays, and on the sparse path the bytes are small (a step's touched rows), so a gradient on a CUDA device is
coalesced there by torch (:func:`coalesce_rows`: the rows to copy shrink to the distinct ones) and crosses to the
host once a step (:func:`to_host`); the sums come back to the device once. What depends on the group's backend
stays here:

* :func:`device_wire` / :func:`wire_device`: NCCL only carries CUDA tensors; gloo (or a ``cpu:gloo,cuda:nccl``
  group) carries CPU tensors, so over gloo the CPU path runs unchanged, whatever device the parameters are on;
* :func:`staged_all_gather` / :func:`staged_all_to_all` / :func:`gather_ints`: host tensors in and out; over NCCL
  the input is copied into a CUDA buffer, the collective runs there and the result is copied back to the host
  (one copy each way). On a host wire they are the plain collective: the CPU path gets no extra copy.

The dense sums stay on the device over NCCL (:func:`sparsembed.comm.dense.sum_on_device`): the matrix is as large
as the parameter, where the bytes of a round trip through the host would cost more than the all-reduce itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["device_wire", "wire_device", "to_host", "coalesce_rows", "staged_all_gather", "staged_all_to_all",
           "gather_ints", "stand_in_for_nccl"]

#: Backends that carry CPU tensors; a group whose backend names none of them (NCCL) needs CUDA tensors.
_HOST_BACKENDS = ("gloo", "mpi", "ucc")

_STAND_IN = [False]


def stand_in_for_nccl(enabled: bool) -> None:
    """Tests without a GPU: treat every group as a device wire whose device is the CPU, so that a gloo group runs
    every NCCL branch: no shared memory, padded all-gathers, the row-count round, the dense sums on the wire's
    device (here the CPU)."""
    _STAND_IN[0] = bool(enabled)


def device_wire(group: Any = None) -> bool:
    """Whether ``group``'s collectives need device tensors (its backend is NCCL); False without a process group."""
    if _STAND_IN[0]:
        return True
    if not dist.is_available() or not dist.is_initialized():
        return False
    backend = str(dist.get_backend(group)).lower()
    return not any(name in backend for name in _HOST_BACKENDS)


def wire_device(group: Any = None) -> torch.device:
    """The device ``group``'s collectives take their tensors on: this rank's current CUDA device over NCCL, else
    the CPU."""
    if device_wire(group) and not _STAND_IN[0]:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def to_host(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the CPU: ``t`` itself when it is there already (no copy), else one device-to-host copy."""
    return t if t.device.type == "cpu" else t.cpu()


def coalesce_rows(ids: torch.Tensor, vals: torch.Tensor, num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted distinct ``ids`` and their rows summed, as float32, on the tensors' device, by torch's sparse
    coalesce (in the rows' dtype, as :func:`sparsembed.nn.parallel.local_rows` does half precision on the CPU).

    On CUDA torch sorts the ids, then sums each run of duplicates in one pass (no float atomics, unlike an
    ``index_add_``: the same bits every run). The sums equal those of
    :meth:`sparsembed.rows.coalesce.RowSparse.coalesce_` within float32 rounding (the order of the additions may
    differ); the CPU path keeps that numba kernel, which coalesces in place without a second ``n x dim`` buffer.
    """
    if ids.numel() == 0:
        return ids.to(torch.int64), vals.float()
    g = torch.sparse_coo_tensor(ids.reshape(1, -1), vals, (num_rows, vals.shape[1]), check_invariants=False)
    g = g.coalesce()
    return g._indices()[0], g._values().float()


def staged_all_gather(out: torch.Tensor, inp: torch.Tensor, group: Any = None) -> None:
    """``all_gather_into_tensor(out, inp)`` for host tensors, through a CUDA buffer when the wire is NCCL."""
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.10
    _through_wire(lambda o, i: gather(o, i, group=group), out, inp, group)


def staged_all_to_all(out: torch.Tensor, inp: torch.Tensor, out_splits: list[int] | None = None,
                      in_splits: list[int] | None = None, group: Any = None) -> None:
    """``all_to_all_single`` for host tensors, through CUDA buffers when the wire is NCCL."""
    _through_wire(lambda o, i: dist.all_to_all_single(o, i, out_splits, in_splits, group=group), out, inp, group)


def _through_wire(collective: Any, out: torch.Tensor, inp: torch.Tensor, group: Any) -> None:
    """``collective(out, inp)`` on the wire's device: as it is when ``out`` is there, else on copies there, the
    result copied back into ``out``."""
    wire = wire_device(group)
    if wire.type == out.device.type:
        collective(out, inp)
        return
    staged = torch.empty(out.shape, dtype=out.dtype, device=wire)
    collective(staged, inp.to(wire))
    out.copy_(staged)


def gather_ints(values: list[int], group: Any = None) -> np.ndarray:
    """Every rank's int vector, ``[world, len(values)]``, by one all-gather on the wire's device. Collective."""
    world = dist.get_world_size(group)
    out = torch.empty(world * len(values), dtype=torch.int64)
    staged_all_gather(out, torch.tensor(values, dtype=torch.int64), group)
    return out.view(world, len(values)).numpy()
