"""Live training progress: a one-line bar on a terminal, periodic lines elsewhere, and ``metrics.jsonl``.

Every report is one JSON line in the metrics file (flushed at once, so the file is a valid log at any moment)
and one refresh of the bar: %, words/s, learning rate, mean loss per trained pair, ETA.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import IO, Any


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` for a number of seconds (``--:--`` when unknown)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Reports training progress to a stream and, optionally, to a JSON-lines metrics file.

    ``fraction`` values are of the whole run (all epochs); ``raw_words_per_epoch`` converts them into corpus
    words for the words/s figure (raw words, as gensim and word2vec count them).
    """

    def __init__(
        self,
        raw_words_per_epoch: int,
        epochs: int,
        metrics_path: str | Path | None = None,
        stream: IO[str] | None = None,
        every: float = 1.0,
        quiet: bool = False,
        start_fraction: float = 0.0,
    ) -> None:
        self.raw_words_per_epoch = raw_words_per_epoch
        self.epochs = epochs
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self.quiet = quiet
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self.start_fraction = start_fraction
        self.last_report = -math.inf
        self.last_line = -math.inf
        self.metrics = open(metrics_path, "a", encoding="utf-8") if metrics_path else None  # noqa: SIM115

    def words_per_second(self, fraction: float) -> float:
        """Raw corpus words trained per second since this session started."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return (fraction - self.start_fraction) * self.epochs * self.raw_words_per_epoch / elapsed

    def update(self, fraction: float, lr: float, loss: float, epoch: int, force: bool = False, **extra: Any) -> None:
        """Report if ``every`` seconds have passed since the last report (or ``force``)."""
        now = time.perf_counter()
        if not force and now - self.last_report < self.every:
            return
        if not force and fraction <= self.start_fraction:
            # Nothing trained yet this session (the first job to finish was not the first in order): its words/s
            # would be 0, a dip in the log and the report that never happened.
            return
        self.last_report = now
        elapsed = now - self.start
        done = fraction - self.start_fraction
        eta = elapsed * (1.0 - fraction) / done if done > 0 else math.nan
        wps = self.words_per_second(fraction)
        record = {
            "time": round(time.time(), 3),
            "elapsed_s": round(elapsed, 3),
            "epoch": epoch,
            "progress": round(fraction, 6),
            "words_per_s": round(wps, 1),
            "lr": lr,
            "loss": loss if math.isfinite(loss) else None,
            **extra,
        }
        if self.metrics:
            self.metrics.write(json.dumps(record) + "\n")
            self.metrics.flush()
        if self.quiet:
            return
        loss_text = f"{loss:.4f}" if math.isfinite(loss) else "-"
        line = (
            f"epoch {min(epoch + 1, self.epochs)}/{self.epochs} {100 * fraction:5.1f}% | "
            f"{wps / 1e6:5.2f}M words/s | lr {lr:.5f} | loss {loss_text} | ETA {format_duration(eta)}"
        )
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self.stream.flush()
        elif force or now - self.last_line >= 10.0:
            self.last_line = now
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self, message: str | None = None) -> None:
        """End the bar's line, print ``message``, close the metrics file."""
        if not self.quiet:
            if self.tty:
                self.stream.write("\n")
            if message:
                self.stream.write(message + "\n")
            self.stream.flush()
        if self.metrics:
            self.metrics.close()
            self.metrics = None
