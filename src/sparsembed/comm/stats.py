"""What an exchange cost: one :class:`ExchangeStats` per matrix per step, and the per-phase :class:`Clock`."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ExchangeStats", "Clock"]


@dataclass
class ExchangeStats:
    """What one exchange of one matrix cost on this rank.

    Byte counts are the payload this rank sent and received, without padding or TCP framing: a replicated
    exchange counts its message plus an 8-byte size to every peer, and every peer's message and size; the fused
    sync each segment's bytes (not the padding of its all-gather); a sharded exchange its frames to the owners,
    the fresh rows back and the sizes; a dense sum a ring all-reduce's ``2 (P-1)/P`` of the dense bytes each way.
    """

    name: str
    strategy: str  # "replicated", "sharded", "fused" or "dense"
    mode: str  # "sparse" or "dense": what was sent this step
    encoding: str  # row-set encoding of this rank's message ("index", "bitmap", ...), "keys" or "dense"
    density: float  # distinct rows this rank sent / num_rows (keyed: nan, there is no num_rows)
    rows: int  # distinct rows this rank sent
    bytes_sent: int
    bytes_recv: int
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase on this rank (replicated only)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON logs."""
        return asdict(self)


class Clock:
    """Per-phase wall times of one exchange on this rank (``time.perf_counter``)."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        """Add the time since the last lap (or the start) to ``phase``."""
        now = time.perf_counter()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self.last
        self.last = now

    def total(self) -> float:
        """Seconds since the clock started."""
        return time.perf_counter() - self.start
