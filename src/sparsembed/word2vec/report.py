"""``sparsembed report DIR``: PNG plots of a run from its ``metrics.jsonl``.

Plots what the log holds: loss and words/s over time for every run; bytes per step against the dense
equivalent, seconds per step and shard loads once the log carries exchange records (``bytes_sent`` /
``dense_bytes`` / ``compute_s`` / ``shard_loads``), one panel for each of them that has data. Each figure's
title names the run (its directory) and the model (from the checkpoint's settings, and ranks and strategy from
the exchange records).

:func:`figures` decides what is drawn (plain data, no matplotlib); :func:`draw` and :func:`render` draw it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsembed.errors import UserError
from sparsembed.fsutil import atomic_write

__all__ = ["Panel", "FigureSpec", "read_metrics", "run_title", "figures", "draw", "render"]


@dataclass
class Panel:
    """One plot: ``lines`` of ``(label, xs, ys)`` (a label of ``""`` has no legend entry), or ``bars`` heights."""

    title: str
    xlabel: str
    ylabel: str
    lines: list[tuple[str, list[float], list[float]]] = field(default_factory=list)
    bars: list[float] = field(default_factory=list)
    yscale: str = "linear"
    marks: list[float] = field(default_factory=list)  # x positions of epoch ends, drawn as dotted lines
    points: bool = False  # mark each value (progress reports are sparse; per-step series are not)


@dataclass
class FigureSpec:
    """One PNG: its file name, the title over its panels, and the panels side by side."""

    filename: str
    title: str
    panels: list[Panel]


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


def _settings(directory: Path) -> dict[str, Any]:
    """The training settings saved in ``directory/model``, or ``{}`` when there is no readable checkpoint (the
    title then names the run only: a report must not fail for want of a model)."""
    from sparsembed.word2vec import checkpoint

    try:
        settings = checkpoint.read_state(directory / "model")["meta"]["settings"]
    except (UserError, KeyError, TypeError, OSError):
        return {}
    return settings if isinstance(settings, dict) else {}


def run_title(directory: str | Path, records: list[dict[str, Any]]) -> str:
    """``"run: CBOW, dim 100, 5 epochs, 2 ranks (replicated)"``: the run's directory name and what it trained."""
    directory = Path(directory)
    parts = []
    settings = _settings(directory)
    if "sg" in settings:
        parts.append("skip-gram" if settings["sg"] else "CBOW")
    if "vector_size" in settings:
        parts.append(f"dim {settings['vector_size']}")
    if "epochs" in settings:
        parts.append(f"{settings['epochs']} epochs")
    step = next((r for r in records if "world" in r), None)
    if step is not None:
        parts.append(f"{step['world']} ranks ({step.get('strategy', 'replicated')})")
    name = directory.resolve().name or str(directory)
    return f"{name}: {', '.join(parts)}" if parts else name


def figures(records: list[dict[str, Any]], title: str) -> list[FigureSpec]:
    """What :func:`render` draws: the training figure, and the exchange figure when the log has exchange records."""
    loss = Panel("mean loss per pair (this epoch)", "seconds", "loss", [("", *_series(records, "loss"))], points=True)
    speed = _speed(*_series(records, "words_per_s"))
    speed_panel = Panel("training speed", "seconds", "million words / s",
                        [("", [x for x, _ in speed], [y / 1e6 for _, y in speed])], points=True)
    ends = [r["elapsed_s"] for r in records if "epoch_loss" in r and "elapsed_s" in r]
    loss.marks = speed_panel.marks = ends
    specs = [FigureSpec("report-training.png", title, [loss, speed_panel])]
    exchange = [r for r in records if "bytes_sent" in r]
    if exchange:
        specs.append(FigureSpec("report-exchange.png", title, _exchange_panels(exchange)))
    return specs


def _speed(xs: list[float], ys: list[float]) -> list[tuple[float, float]]:
    """The words/s points worth plotting: no 0, and not the first measured one of each session.

    ``words_per_s`` is the session's average since it started (a resumed or restarted run starts a new session:
    its ``elapsed_s`` starts again from 0). Its first report comes after a job or step that also paid for the
    start (the compiled kernels loaded, threads and ranks started), so it sits far below the rest, and a 0 only
    means nothing was trained yet: either would draw a dip in speed that never happened.
    """
    points, previous, measured = [], math.inf, False
    for x, y in zip(xs, ys, strict=True):
        if x < previous:  # a new session
            measured = False
        previous = x
        if y <= 0:
            continue
        if measured:
            points.append((x, y))
        measured = True
    return points


def _exchange_panels(exchange: list[dict[str, Any]]) -> list[Panel]:
    """Bytes per step, and, where logged, seconds per step and the last step's rows per shard owner."""
    steps = list(range(len(exchange)))
    sent = Panel("bytes per step", "step", "bytes", [("sent", steps, [r["bytes_sent"] for r in exchange])],
                 yscale="log")
    if any("dense_bytes" in r for r in exchange):
        sent.lines.append(("dense equivalent", steps, [r.get("dense_bytes", math.nan) for r in exchange]))
    panels = [sent]
    timing = Panel("seconds per step", "step", "s")
    for key, label in (("compute_s", "compute"), ("exchange_s", "exchange")):
        if any(key in r for r in exchange):
            timing.lines.append((label, steps, [r.get(key, math.nan) for r in exchange]))
    if timing.lines:
        panels.append(timing)
    loads = [r["shard_loads"] for r in exchange if isinstance(r.get("shard_loads"), list)]
    if loads:  # sharded runs only: replicated ranks hold every row, so there are no owners to plot
        panels.append(Panel("rows sent to each owner (last step)", "shard", "rows", bars=loads[-1]))
    return panels


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def draw(spec: FigureSpec) -> Any:
    """A matplotlib figure of ``spec``: its panels side by side under its title."""
    figure, axes = _pyplot().subplots(1, len(spec.panels), figsize=(5.5 * len(spec.panels), 4.4), squeeze=False)
    for axis, panel in zip(axes[0], spec.panels, strict=True):
        for label, xs, ys in panel.lines:
            axis.plot(xs, ys, marker="." if panel.points else None, linewidth=1, label=label or None)
        if panel.bars:
            axis.bar(range(len(panel.bars)), panel.bars)
            axis.set_xticks(range(len(panel.bars)))
        for x in panel.marks:
            axis.axvline(x, color="grey", linewidth=0.5, linestyle=":")
        axis.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel, yscale=panel.yscale)
        if any(label for label, _, _ in panel.lines):
            axis.legend()
    figure.suptitle(spec.title)
    figure.tight_layout()
    return figure


def render(directory: str | Path, output: str | Path | None = None) -> list[Path]:
    """Write ``DIR/report-training.png`` (and ``DIR/report-exchange.png`` when there are exchange records)."""
    plt = _pyplot()
    directory = Path(directory)
    out_dir = Path(output) if output else directory
    records = read_metrics(directory / "metrics.jsonl")
    written = []
    for spec in figures(records, run_title(directory, records)):
        figure = draw(spec)
        try:
            written.append(_save(figure, out_dir / spec.filename))
        finally:
            plt.close(figure)
    return written


def _save(figure: Any, path: Path) -> Path:
    with atomic_write(path) as handle:
        figure.savefig(handle, format="png", dpi=100)
    return path
