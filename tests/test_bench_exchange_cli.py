"""``sparsembed bench exchange``: a tiny run through the command line, and bad settings rejected in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sparsembed.bench.exchange import under_torchrun
from sparsembed.cli import main

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")


def _env() -> dict[str, str]:
    """This environment without a launcher's variables, so the command spawns its own ranks."""
    return {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}


@pytest.mark.dist
def test_bench_exchange_json() -> None:
    cmd = [sys.executable, "-m", "sparsembed", "bench", "exchange", "--nproc", "2", "--rows", "2000", "--dim", "8",
           "--ids", "64", "--steps", "3", "--warmup", "1", "--inputs", "settled", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["inputs"] == "settled"
    for key in ("ours_ms", "torch_sparse_ms", "dense_ms", "speedup_vs_torch_sparse", "speedup_vs_dense"):
        assert res[key] > 0, key
    assert res["nproc"] == 2 and res["launcher"] == "spawn" and res["rows"] == 2000
    assert res["mode"] in ("sparse", "dense") and 0 < res["distinct_rows"] <= 64
    assert len(res["phases_ms"]) == 2 and all(ph for ph in res["phases_ms"])
    # From the last rank's arrival: never longer than the slowest rank's own time, step by step, so in median.
    span = res["from_last_arrival_ms"]
    for key in ("ours", "torch_sparse", "dense"):
        assert 0 < span[key] <= res[f"{key}_ms"] + 1e-9, key
    assert res["from_last_arrival_speedup"]["vs_torch_sparse"] == pytest.approx(span["torch_sparse"] / span["ours"])
    # Spawned ranks share this host: their starts are lined up through shared memory, so the slowest rank's time
    # and the time from the last arrival agree within the skew left.
    assert res["align"] == "auto" and res["aligned_by"] == "shared-memory flags"
    for key in ("ours", "torch_sparse", "dense"):
        assert 0 <= res["start_skew_ms"][key] <= res[f"{key}_ms"], key


@pytest.mark.dist
def test_bench_exchange_align_barrier_starts_each_rank_at_its_own_time() -> None:
    from sparsembed.bench.exchange import run_exchange_bench

    res = run_exchange_bench(2, 2000, 8, 64, steps=2, warmup=1, align="barrier", distributed=False, timeout=120)
    assert res["align"] == "barrier" and res["aligned_by"] == "barrier"
    assert set(res["start_skew_ms"]) == {"ours", "torch_sparse", "dense"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rows", "0"], "--rows must be >= 1"),
        (["--ids", "-1"], "--ids must be >= 0"),
        (["--nproc", "0"], "--nproc must be >= 1"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--densities", "0.5,2"], "density must be in (0, 1]"),
        (["--densities", "half"], "--densities takes numbers"),
    ],
)
def test_bench_exchange_bad_arguments(args: list[str], message: str, capsys, monkeypatch) -> None:
    for var in TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)
    assert main(["bench", "exchange", *args]) == 2  # rejected before any rank is spawned
    err = capsys.readouterr().err
    assert err.startswith("sparsembed: error: bench exchange:") and message in err
    assert err.count("\n") == 1


def test_bench_exchange_unknown_inputs_or_align_is_refused_before_spawning() -> None:
    from sparsembed.bench.exchange import run_exchange_bench
    from sparsembed.errors import UserError

    with pytest.raises(UserError, match="--inputs must be one of fresh, settled"):
        run_exchange_bench(2, inputs="warm", distributed=False)
    with pytest.raises(UserError, match="--align must be one of auto, barrier"):
        run_exchange_bench(2, align="flags", distributed=False)


def test_bench_exchange_bad_choice_exits_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "sparsembed", "bench", "exchange", "--values", "fp8"],
                          capture_output=True, text=True, timeout=60, env=_env())
    assert proc.returncode == 2 and "invalid choice" in proc.stderr and not proc.stdout


def test_under_torchrun_needs_all_three_variables() -> None:
    assert under_torchrun({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1"})
    assert not under_torchrun({"RANK": "0", "WORLD_SIZE": "2"})
    assert not under_torchrun({})
