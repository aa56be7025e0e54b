"""benchmarks/bench_scaling.py's verdict: every judged figure counts, also when runs of one setup come from
several files."""

from __future__ import annotations

import subprocess

import pytest

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


def test_runs_of_an_earlier_trainer_are_shown_not_judged() -> None:
    bench = _script()
    today, earlier = _run("a.json", 1.0), {**_run("b.json", 0.5), "todays_step": False}
    v = bench.verdict([today, earlier], [], [])
    assert v["judged"] == 2 and v["within"] == 2 and not v["off"]
    assert v["earlier_trainers"]["figures"] == 2 and v["earlier_trainers"]["within"] == 1


def _git(repo, *args: str) -> str:  # noqa: ANN001
    done = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True)
    return done.stdout.strip()


def test_todays_step_is_a_commit_that_descends_from_the_last_change_of_the_step(tmp_path, monkeypatch) -> None:
    bench = _script()
    _git(tmp_path, "init", "-q")
    commits = []
    for n in range(3):
        (tmp_path / "f").write_text(str(n))
        _git(tmp_path, "add", "f")
        _git(tmp_path, "commit", "-qm", str(n))
        commits.append(_git(tmp_path, "rev-parse", "--short", "HEAD"))
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    monkeypatch.setattr(bench, "STEP_SINCE", commits[1])
    assert not bench.todays_step("x.json", {"commit": commits[0]})  # before the step changed
    assert bench.todays_step("x.json", {"commit": commits[1]})
    assert bench.todays_step("x.json", {"commit": commits[2]})
    assert not bench.todays_step("x.json", {"commit": commits[2] + "+changes"})  # src/ differed: unknown step
    assert not bench.todays_step("x.json", {})  # no commit recorded and not listed
    assert bench.todays_step(next(iter(bench.STEP_SINCE_FILES)), {})
    with pytest.raises(bench.UserError, match="cannot tell"):
        bench.todays_step("x.json", {"commit": "0123abc"})  # not in this repository
    # overlapped runs: their step changed later (two ranks sync hot rows)
    monkeypatch.setattr(bench, "STEP_SINCE_OVERLAPPED", commits[2])
    assert bench.todays_step("x.json", {"commit": commits[1]}) and bench.todays_step("x.json", {"commit": commits[2]})
    assert not bench.todays_step("x.json", {"commit": commits[1]}, overlapped=True)
    assert bench.todays_step("x.json", {"commit": commits[2]}, overlapped=True)
    assert not bench.todays_step(next(iter(bench.STEP_SINCE_FILES)), {}, overlapped=True)


def test_host_costs_scale_with_the_hours_compute_rate() -> None:
    """Measured when the machine computed 4M tokens/s, the host's seconds double in an hour when it computes 2M."""
    bench = _script()
    host = bench.HostCost(1e-9, 2e-9, 0.5, epoch_s=0.2, background=0.7)
    slow = bench.at_rate(host, 2e6, 4e6)
    assert slow.sparse_s_per_byte == 2e-9 and slow.dense_s_per_byte == 4e-9 and slow.epoch_s == 0.4
    assert (slow.foreground, slow.background) == (0.5, 0.7)  # shares of the work, not seconds
    assert bench.at_rate(bench.HostCost(hot_wait_s=1e-3), 2e6, 4e6).hot_wait_s == 2e-3  # a wait of busy cores
    assert bench.at_rate(host, 2e6, None) is host and bench.at_rate(host, None, 4e6) is host


def _group(file: str, started: str, variant: str = "overlap-int8-budget", single: float | None = None) -> dict:
    return {"file": file, "started": started, "variant": variant, "epochs": 5, "job_tokens": 250000,
            "single_train_s": single}


def test_a_file_without_synchronous_runs_takes_its_hours_rate_from_its_one_process_runs() -> None:
    """The rate of a file's hour: its one-process runs (tokens x epochs / their training seconds) where it has no
    synchronous run; a file with neither takes the one measured nearest in time."""
    bench = _script()

    class Work:  # what session_rates reads of a workload when no synchronous run needs its jobs
        tokens = 1_000_000

    measured = [_group("a.json", "2026-12-05 10:00:00", single=10.0),
                _group("b.json", "2026-12-05 10:20:00", single=20.0),
                _group("c.json", "2026-12-05 10:15:00")]
    rates = bench.session_rates(Work(), measured, 9e9, "session")
    assert rates["a.json"] == (500_000.0, "one-process runs of a.json")
    assert rates["b.json"] == (250_000.0, "one-process runs of b.json")
    assert rates["c.json"] == (250_000.0, "one-process runs of b.json")  # 5 minutes from b, 15 from a
    assert bench.session_rates(Work(), measured, 9e9, "timed")["c.json"] == (9e9, "timed here")


def _matrix(seconds: float) -> dict:
    return {"median_mb_sent": 1.0, "median_s": seconds, "median_density": 0.1, "encodings": ["index"],
            "median_phases_s": {"take": 0.001, "land": 0.002}}


def test_measured_runs_keep_the_hot_syncs_apart_and_skip_variants_of_their_own_flags(tmp_path) -> None:
    """A run's hot syncs (logged as ``syn0[:100]``, ``syn1[:100]``) are its ``hot_s``, not matrices of the main
    exchange; a variant named by ``--flags`` is not one whose settings the model reads from its name."""
    import json

    bench = _script()
    run = {"setup": "netns 1gbit, auto, default", "hosts": 2, "job_tokens": 250000, "steps": 170,
           "median_compute_s": 0.05, "median_exchange_s": 0.02, "median_mb_sent_per_step": 2.0, "words_per_s": 5e6,
           "matrices": {"syn0": _matrix(0.002), "syn1": _matrix(0.003), "syn0[:100]": _matrix(0.004),
                        "syn1[:100]": _matrix(0.004)}}
    data = {"started": "2026-12-05 15:00:00", "epochs": 5, "link_mbit_s": 960.0,
            "runs": [{**run, "variant": "default"}, {**run, "variant": "nohot", "setup": "netns 1gbit, auto, nohot"}]}
    path = tmp_path / "netns_defaults_budget_x.json"
    path.write_text(json.dumps(data))
    groups = bench.load_measured([], [str(path)])
    assert len(groups) == 1 and groups[0]["variant"] == "overlap-int8-budget"
    assert groups[0]["hot_s"] == pytest.approx(0.008) and sorted(groups[0]["matrices"]) == ["syn0", "syn1"]
