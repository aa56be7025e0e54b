"""bench: the measurements behind ``sparsembed bench``.

:mod:`~sparsembed.bench.exchange` times the replicated exchange against torch's sparse and dense all-reduce on
gloo (``sparsembed bench exchange``); :mod:`~sparsembed.bench.shards` measures the balance of shard maps on a
corpus (``sparsembed bench shards``); :mod:`~sparsembed.bench.scaling` models what N hosts would train per
second, from rows simulated on the real corpus (``benchmarks/bench_scaling.py``), and
:mod:`~sparsembed.bench.steptime` turns a step's bytes into seconds on a link (compute, link, latency, host work,
hot-row syncs; synchronous or overlapped). Results and how they were run: BENCHMARKS.md.
"""
