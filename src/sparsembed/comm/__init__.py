"""comm: summing gradients over data-parallel workers, sending only the rows a step touched.

It owns the one sparse-or-dense policy, how rows become messages, how messages travel (gloo, NCCL or shared memory),
the replicated, sharded and fused exchanges, the dense fallback, the stats of every exchange, and the Zipf-aware
plan of which rank owns which rows.

Modules, in the order a step uses them: :mod:`~sparsembed.comm.policy` (sparse or dense? and the settings'
closed sets) -> :mod:`~sparsembed.comm.messages` (rows or keys as bytes) -> :mod:`~sparsembed.comm.transport`
(every rank's message to every rank; :mod:`~sparsembed.comm.shm` underneath on one host, and
:mod:`~sparsembed.comm.device` where the group needs CUDA tensors: NCCL) ->
:mod:`~sparsembed.comm.replicated` / :mod:`~sparsembed.comm.sharded` / :mod:`~sparsembed.comm.fused` (the sums) ->
:mod:`~sparsembed.comm.dense` (the dense fallback) -> :mod:`~sparsembed.comm.stats` (what it cost);
:mod:`~sparsembed.comm.sharding` plans the owners before training.
"""
