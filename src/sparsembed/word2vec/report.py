"""``sparsembed report DIR``: PNG plots of a run from its ``metrics.jsonl``.

Plots what the log holds: loss and words/s over time for every run; bytes per step against the dense
equivalent and shard loads once the log carries exchange records (``bytes_sent`` / ``dense_bytes`` /
``shard_loads``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sparsembed.errors import UserError
from sparsembed.fsutil import atomic_write


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file; a UserError names the first line that is not JSON."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no metrics at {path}: give a directory written by `sparsembed train`")
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{number} is not a JSON line ({exc.msg}); the log is damaged") from exc
            if isinstance(record, dict):
                records.append(record)
    if not records:
        raise UserError(f"{path} holds no records yet; train first")
    return records


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value) and "elapsed_s" in record:
            xs.append(record["elapsed_s"])
            ys.append(value)
    return xs, ys


def render(directory: str | Path, output: str | Path | None = None) -> list[Path]:
    """Write ``DIR/report-training.png`` (and ``DIR/report-exchange.png`` when there are exchange records)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    out_dir = Path(output) if output else directory
    records = read_metrics(directory / "metrics.jsonl")
    written = []

    figure, (loss_axis, speed_axis) = plt.subplots(1, 2, figsize=(11, 4))
    loss_axis.plot(*_series(records, "loss"), marker=".", linewidth=1)
    loss_axis.set(title="mean loss per pair (this epoch)", xlabel="seconds", ylabel="loss")
    xs, ys = _series(records, "words_per_s")
    speed_axis.plot(xs, [y / 1e6 for y in ys], marker=".", linewidth=1)
    speed_axis.set(title="training speed", xlabel="seconds", ylabel="million words / s")
    for epoch_end in (r["elapsed_s"] for r in records if "epoch_loss" in r):
        for axis in (loss_axis, speed_axis):
            axis.axvline(epoch_end, color="grey", linewidth=0.5, linestyle=":")
    figure.tight_layout()
    written.append(_save(figure, out_dir / "report-training.png"))
    plt.close(figure)

    exchange = [r for r in records if "bytes_sent" in r]
    if exchange:
        figure, (bytes_axis, time_axis, shard_axis) = plt.subplots(1, 3, figsize=(16, 4))
        steps = range(len(exchange))
        bytes_axis.plot(steps, [r["bytes_sent"] for r in exchange], label="sent")
        if any("dense_bytes" in r for r in exchange):
            bytes_axis.plot(steps, [r.get("dense_bytes", math.nan) for r in exchange], label="dense equivalent")
        bytes_axis.set(title="bytes per step", xlabel="step", ylabel="bytes", yscale="log")
        bytes_axis.legend()
        for key, label in (("compute_s", "compute"), ("exchange_s", "exchange")):
            if any(key in r for r in exchange):
                time_axis.plot(steps, [r.get(key, math.nan) for r in exchange], label=label)
        time_axis.set(title="seconds per step", xlabel="step", ylabel="s")
        if time_axis.lines:
            time_axis.legend()
        loads = [r["shard_loads"] for r in exchange if isinstance(r.get("shard_loads"), list)]
        if loads:
            shard_axis.bar(range(len(loads[-1])), loads[-1])
            shard_axis.set_xticks(range(len(loads[-1])))
        else:
            shard_axis.text(0.5, 0.5, "no shards logged\n(replicated: every rank holds every row)",
                            ha="center", va="center", transform=shard_axis.transAxes)
        shard_axis.set(title="rows sent to each owner (last step)", xlabel="shard", ylabel="rows")
        figure.tight_layout()
        written.append(_save(figure, out_dir / "report-exchange.png"))
        plt.close(figure)
    return written


def _save(figure, path: Path) -> Path:
    with atomic_write(path) as handle:
        figure.savefig(handle, format="png", dpi=100)
    return path
