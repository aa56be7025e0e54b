"""Data-parallel word2vec: every rank trains its own jobs of a step, then only the rows they touched travel.

What ``dataparallel`` owns: starting ranks, the options of a data-parallel run, the trainer that drives a
:class:`sparsembed.Word2Vec` step by step on every rank, the per-rank replicas of its matrices, row ownership
under the sharded strategy, and naming the rank that died or hung. The exchanges themselves are
:mod:`sparsembed.comm`'s. Modules, in the order one step uses them:

* :mod:`~sparsembed.dataparallel.launch`: ``--nproc N`` through torch's elastic launcher; joining the group;
* :mod:`~sparsembed.dataparallel.options`: ``ExchangeOptions``, ``Balance``, the jobs of a step, the defaults
  across hosts and beyond two ranks (hot rows, step tokens; at two overlapped ranks a few hot rows) and why;
* :mod:`~sparsembed.dataparallel.trainer`: ``DataParallelTrainer``: train the step's jobs (in rounds, the hot rows
  summed after each), exchange, agree, advance, checkpoint;
* :mod:`~sparsembed.dataparallel.budget`: ``Budget``: which touched rows a step sends under ``--budget`` (the
  largest changes first, none waiting more than ``MAX_AGE`` steps), ``auto`` sized from the measured exchange;
* :mod:`~sparsembed.dataparallel.replica`: ``Replica``: a matrix's working copy, agreed reference and touched
  rows, and the compiled loops that take and add changes;
* :mod:`~sparsembed.dataparallel.owners`: ``Owners``: which rank sums which row under ``--strategy sharded``;
* :mod:`~sparsembed.dataparallel.watchdog`: ``PeerWatch``: every collective guarded, a lost rank named.
"""
