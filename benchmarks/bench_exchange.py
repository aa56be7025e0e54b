"""Benchmark the sparse gradient exchange (issue 4) against what PyTorch does, on gloo over loopback.

A thin wrapper of ``sparsembed bench exchange`` (:mod:`sparsembed.bench.exchange`, where the logic and its
description live); the same options::

    .venv/bin/python benchmarks/bench_exchange.py --nproc 2 --rows 200000 --dim 128 --ids 8192 --json
    .venv/bin/python benchmarks/bench_exchange.py --sweep --json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sparsembed.bench.exchange import SWEEP, density_ids, run_exchange_bench, zipf_ids  # noqa: E402

__all__ = ["SWEEP", "density_ids", "main", "run_exchange_bench", "zipf_ids"]


def main(argv: list[str] | None = None) -> int:
    """``sparsembed bench exchange`` with ``argv`` (default: this script's arguments)."""
    from sparsembed.cli import main as cli_main

    return cli_main(["bench", "exchange", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
