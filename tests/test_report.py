"""The training log and its report: what each figure plots (series, panels, titles), not its pixels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsembed.cli import main
from sparsembed.word2vec import report
from sparsembed.word2vec.demo import generate_corpus
from sparsembed.word2vec.progress import Progress

FAST = ["--dim", "24", "--epochs", "2", "--workers", "1", "--min-count", "3", "--quiet"]


def _progress(t: float, fraction: float, wps: float, **extra) -> dict:
    return {"elapsed_s": t, "progress": fraction, "words_per_s": wps, "loss": 4.0 - fraction, "epoch": 0, **extra}


def _step(step: int, **extra) -> dict:
    return {"step": step, "world": 2, "strategy": "replicated", "bytes_sent": 1000 + step, "dense_bytes": 9000,
            "compute_s": 0.01, "exchange_s": 0.002, **extra}


def test_speed_drops_zero_and_start_up_points_of_each_session() -> None:
    records = [
        _progress(0.0, 0.0, 0.0),  # nothing trained yet: a 0 that is no measurement
        _progress(0.4, 0.01, 150_000.0),  # the first job also paid for the start: far below the rest
        _progress(1.4, 0.20, 2_900_000.0),
        _progress(2.4, 0.40, 3_000_000.0, epoch_loss=1.0),
        # resumed: a new session, its elapsed_s starts again
        _progress(0.3, 0.41, 90_000.0),
        _progress(1.3, 0.60, 2_800_000.0),
    ]
    [training] = report.figures(records, "run: CBOW, dim 100")
    assert training.filename == "report-training.png" and training.title == "run: CBOW, dim 100"
    loss, speed = training.panels
    assert loss.lines[0][1] == [r["elapsed_s"] for r in records]  # every loss point stays
    [(_, xs, ys)] = speed.lines
    assert xs == [1.4, 2.4, 1.3] and ys == pytest.approx([2.9, 3.0, 2.8])
    assert speed.marks == [2.4] == loss.marks  # the epoch end


def test_exchange_figure_draws_only_panels_with_data() -> None:
    records = [_progress(1.0, 0.5, 1e6), _step(1), _step(2)]
    replicated = report.figures(records, "t")[1]
    assert replicated.filename == "report-exchange.png"
    assert [p.title for p in replicated.panels] == ["bytes per step", "seconds per step"]  # no empty shard panel
    assert [label for label, _, _ in replicated.panels[0].lines] == ["sent", "dense equivalent"]
    assert replicated.panels[0].lines[0][2] == [1001, 1002]

    sharded = report.figures([_step(1, shard_loads=[3, 4]), _step(2, shard_loads=[5, 1])], "t")[1]
    assert [p.title for p in sharded.panels] == ["bytes per step", "seconds per step",
                                                 "rows sent to each owner (last step)"]
    assert sharded.panels[2].bars == [5, 1]

    bytes_only = report.figures([{"bytes_sent": 10}], "t")[1]
    assert [p.title for p in bytes_only.panels] == ["bytes per step"]


def test_drawn_figure_has_the_title_and_one_axis_per_panel() -> None:
    spec = report.figures([_progress(1.0, 0.5, 1e6), _step(1)], "run: CBOW, dim 100")[1]
    figure = report.draw(spec)
    try:
        assert figure.get_suptitle() == "run: CBOW, dim 100"
        assert [axis.get_title() for axis in figure.axes] == [p.title for p in spec.panels]
    finally:
        import matplotlib.pyplot as plt

        plt.close(figure)


def test_title_names_the_run_and_its_model(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    generate_corpus("corpus.txt", n_tokens=20_000, seed=1)
    assert main(["train", "corpus.txt", "--out", "run", "--model", "skipgram", *FAST]) == 0
    drawn = []
    real_draw = report.draw
    monkeypatch.setattr(report, "draw", lambda spec: drawn.append(spec) or real_draw(spec))
    assert main(["report", "run"]) == 0
    assert [spec.title for spec in drawn] == ["run: skip-gram, dim 24, 2 epochs"]
    assert Path("run/report-training.png").stat().st_size > 1000
    # From inside the run's directory the name is still the run's, and a log without a model still gets a title.
    monkeypatch.chdir("run")
    records = report.read_metrics("metrics.jsonl")
    assert report.run_title(".", records) == "run: skip-gram, dim 24, 2 epochs"
    assert report.run_title(tmp_path, [_step(1)]) == f"{tmp_path.name}: 2 ranks (replicated)"


def test_progress_logs_no_point_before_the_first_trained_word(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    bar = tmp_path / "bar.txt"
    with open(bar, "w") as stream:
        progress = Progress(1_000, 2, metrics_path=log, stream=stream, every=0.0, start_fraction=0.25)
        progress.update(0.25, 0.02, float("nan"), 0)  # the first job to finish was not the first in order
        progress.update(0.30, 0.02, 3.9, 0)
        progress.update(0.5, 0.01, 3.5, 0, force=True, epoch_loss=7.0)
        progress.close()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["progress"] for r in records] == [0.30, 0.5]
    assert all(r["words_per_s"] > 0 for r in records)
