"""bench: the measurements behind ``sparsembed bench``.

:mod:`~sparsembed.bench.exchange` times the replicated exchange against torch's sparse and dense all-reduce on
gloo (``sparsembed bench exchange``); :mod:`~sparsembed.bench.shards` measures the balance of shard maps on a
corpus (``sparsembed bench shards``). Results and how they were run: BENCHMARKS.md.
"""
