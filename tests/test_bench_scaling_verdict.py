"""benchmarks/bench_scaling.py's verdict: every judged figure counts, also when runs of one setup come from
several files."""

from __future__ import annotations

from bench_utils import load_benchmark


def _script():  # noqa: ANN202
    return load_benchmark("bench_scaling")


def _run(file: str, ratio: float) -> dict:
    return {"setup": "netns 1gbit, auto, default", "job_tokens": 250000, "variant": "overlap-int8-budget",
            "epochs": 5, "file": file, "calibration": False, "inputs": [],
            "ratio": {"exchange_s": ratio, "words_per_s": 1.0}}


def test_runs_of_one_setup_in_several_files_are_each_judged() -> None:
    bench = _script()
    runs = [_run("a.json", 0.7), _run("b.json", 0.7), _run("c.json", 1.05)]
    calibration = {**_run("d.json", 0.1), "calibration": True}  # shown, never judged
    whole = [{"gbit_s": 1.0, "variant": "budget", "inputs": ["single_s"], "ratio": {"pair_s": 0.8, "single_s": 1.0}}]
    v = bench.verdict([*runs, calibration], whole, [])
    assert v["judged"] == 3 * 2 + 1
    assert len(v["off"]) == 3 and v["within"] == 4  # both a.json and b.json's exchange, and the whole command
    assert all(("a.json" in k) or ("b.json" in k) or k.startswith("whole command") for k in v["off"])
