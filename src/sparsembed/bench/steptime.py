"""The time part of the scaling model (:mod:`sparsembed.bench.scaling`): a step's seconds from its exchange's bytes.

* **settings**: a host's link (:class:`Link`: speed, payload share, latency of a round of messages) and its own
  work per exchanged byte (:class:`HostCost`).
* **a step** (:func:`step_time`): compute (tokens / a measured rate), the main exchange (the busiest rank's bytes
  each way at the link's payload rate, a latency per round of messages, the host's work per byte), added
  (synchronous) or overlapped with the next step's compute, and the *hot syncs* (:class:`HotSync`): beyond two
  ranks the trainer sums the most frequent rows with a float32 all-reduce after every round of a step, in the
  foreground (training waits for them, with ``--overlap`` too), so their time (:func:`hot_seconds`) is added to a
  step whatever else overlaps; two overlapped ranks sum a few hot rows behind the next round's compute, all but
  the step's last round's, which cost only what they exceed a round by.
* **a run** (:func:`run_seconds`) and the bytes that would let an overlapped exchange hide behind compute
  (:func:`auto_budget`): where the trainer's ``--budget auto`` settles when its whole change does not hide (it
  shrinks its rows while the exchange holds training up); the scaling model turns them into rows and caps them as
  the trainer does (``sparsembed.bench.scaling.budget_rows``).

The exchange's bytes come in as :class:`~sparsembed.bench.scaling.Traffic` (only its attributes are read here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sparsembed.comm.policy import ring_bytes
from sparsembed.errors import UserError

if TYPE_CHECKING:
    from sparsembed.bench.scaling import Traffic

__all__ = ["Link", "HostCost", "HotSync", "StepTime", "hot_seconds", "step_time", "run_seconds", "auto_budget"]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(value)


# ----------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Link:
    """A host's network link: nominal speed, payload share of it, and the latency of one round of messages."""

    gbit_s: float
    latency_s: float = 50e-6  # one message's latency on a data-centre LAN (an assumption, see the option)
    goodput: float = 1448 / 1538  # TCP/IPv4 payload per Ethernet frame at MTU 1500 (with preamble and gap)

    def __post_init__(self) -> None:
        if not (_finite(self.gbit_s) and self.gbit_s > 0):
            raise UserError(f"invalid setting: link speed must be a positive number of Gbit/s, got {self.gbit_s!r}")
        if not (_finite(self.latency_s) and self.latency_s >= 0):
            raise UserError(f"invalid setting: latency must be >= 0 seconds, got {self.latency_s!r}")
        if not (_finite(self.goodput) and 0 < self.goodput <= 1):
            raise UserError(f"invalid setting: goodput must be in (0, 1], got {self.goodput!r}")

    @property
    def bytes_per_s(self) -> float:
        """Payload bytes a second, each way (full duplex)."""
        return self.gbit_s * 1e9 / 8 * self.goodput


@dataclass(frozen=True)
class HostCost:
    """Seconds of a host's own work per byte of an exchange (packing, summing, the TCP stack): ``sparse`` per byte
    sent plus received (replicated sparse, sharded), ``dense`` per byte of the float32 matrix plus the ring's
    bytes (the dense change, the reduction, the update). Zero: the link alone.

    ``foreground``: the share of that work an overlapped step does on the training thread, where nothing hides it
    (choosing the rows, taking their changes, landing the sums); the rest runs in the exchange's own thread.
    ``background``: what that thread does, as a share of the same work (None: the rest, ``1 - foreground``). An
    overlapped exchange that rounds its rows to int8 and weighs them for a budget does more work a byte than the
    synchronous float32 exchange the per-byte costs are calibrated on, so the two shares may add up to more than 1.

    ``epoch_s``: what a run spends outside its steps at each epoch end (the epoch's loss agreed, a checkpoint of
    both matrices written): a whole run's time, not a step's (:func:`sparsembed.bench.scaling.run_extra_seconds`).

    ``hot_wait_s``: on cores the ranks share, what each sum of the hot rows costs beyond its link and host work:
    ranks whose training, exchange threads and links take turns on the same cores drift apart within a step, and a
    sum waits for the later rank (measured on loopback; hosts with cores of their own are assumed not to pay it)."""

    sparse_s_per_byte: float = 0.0
    dense_s_per_byte: float = 0.0
    foreground: float = 0.0
    epoch_s: float = 0.0
    background: float | None = None
    hot_wait_s: float = 0.0

    def __post_init__(self) -> None:
        for value in (self.sparse_s_per_byte, self.dense_s_per_byte):
            if not (_finite(value) and value >= 0):
                raise UserError(f"invalid setting: host cost per byte must be >= 0, got {value!r}")
        if not (_finite(self.hot_wait_s) and self.hot_wait_s >= 0):
            raise UserError(f"invalid setting: the wait of a hot sum must be >= 0 seconds, got {self.hot_wait_s!r}")
        if not (_finite(self.epoch_s) and self.epoch_s >= 0):
            raise UserError(f"invalid setting: the host's seconds at an epoch end must be >= 0, got {self.epoch_s!r}")
        if not (_finite(self.foreground) and 0 <= self.foreground <= 1):
            raise UserError(f"invalid setting: the host's foreground share must be in [0, 1], got {self.foreground!r}")
        if self.background is not None and not (_finite(self.background) and self.background >= 0):
            raise UserError(f"invalid setting: the host's background share must be >= 0, got {self.background!r}")


@dataclass(frozen=True)
class HotSync:
    """A step's syncs of the hot rows (``Replica.sync_hot``): after each of ``rounds`` rounds, rows
    ``[0, rows)`` of both matrices summed over ``world`` ranks with one ring all-reduce of them all, of
    ``width``-byte values (4: float32; 2: float16, where the trainer's values are rounded)."""

    rows: int
    rounds: int
    dim: int
    world: int
    matrices: int = 2
    width: int = 4
    behind: bool = False  # overlapped, a round's sum runs behind the next round's training (the last in the step)

    @property
    def all_reduces(self) -> int:
        """All-reduces a step: one per round (every matrix's hot rows in one)."""
        return self.rounds

    @property
    def values(self) -> int:
        """Values one all-reduce sums: the hot rows of every matrix."""
        return self.rows * self.dim * self.matrices

    @property
    def ring(self) -> int:
        """Bytes each rank sends (and receives) in one of them: ``2 (N-1)/N`` of the rows."""
        return ring_bytes(self.values * self.width, self.world)

    @property
    def bytes_per_step(self) -> int:
        """Bytes each rank sends (and receives) in a step's hot syncs."""
        return self.all_reduces * self.ring


def hot_seconds(hot: HotSync | None, link: Link, host: HostCost | None = None,
                round_s: float | None = None, shared_cores: bool = False) -> float:
    """Foreground seconds of a step's hot syncs: per all-reduce the ring's bytes at the link's rate, ``2 (N-1)``
    latencies (gloo's ring) and the host's work per byte of the rows plus the ring's bytes (as the dense path's).

    ``round_s``: a round's compute, where the syncs run behind the next round (``hot.behind`` and an overlapped
    step): each but the step's last costs its host work and what its link time exceeds the round by; the last is
    summed at once, as the trainer does. ``shared_cores``: each sum also costs ``host.hot_wait_s``."""
    if hot is None or hot.rows == 0 or hot.world < 2:
        return 0.0
    host = host or HostCost()
    wire = hot.ring / link.bytes_per_s + 2 * (hot.world - 1) * link.latency_s
    work = (hot.ring + hot.values * 4) * host.dense_s_per_byte + (host.hot_wait_s if shared_cores else 0.0)
    if round_s is None or not hot.behind:
        return hot.all_reduces * (wire + work)
    return wire + work + (hot.all_reduces - 1) * (work + max(wire - round_s, 0.0))


# ----------------------------------------------------------------------------------------------- a step
@dataclass
class StepTime:
    """A step's seconds: compute, the main exchange's link, latency and host parts; ``step_s`` as run. ``agree_s``
    is the part of ``latency_s`` that the step's agreement (loss, stop) costs: it never runs in the background.
    ``hot_s``: the hot syncs between the step's rounds, in the foreground (never overlapped)."""

    compute_s: float
    link_s: float
    latency_s: float
    host_s: float
    step_s: float
    agree_s: float = 0.0
    hot_s: float = 0.0
    foreground_s: float = 0.0  # the part of host_s an overlapped step does on the training thread
    background_s: float | None = None  # what the exchange's thread does (None: the rest of host_s)

    @property
    def background_host_s(self) -> float:
        """The host work of an overlapped step's exchange thread."""
        return self.host_s - self.foreground_s if self.background_s is None else self.background_s

    @property
    def exchange_s(self) -> float:
        """The main exchange alone: link, latency and host work (the hot syncs are ``hot_s``)."""
        return self.link_s + self.latency_s + self.host_s

    @property
    def waits_s(self) -> float:
        """Every second a synchronous step spends out of compute: the main exchange and the hot syncs (what the
        trainer's ``exchange_s`` counts)."""
        return self.exchange_s + self.hot_s

    def behind(self, compute_s: float, shared_cores: bool) -> float:
        """Seconds until the next step may start when this step's exchange runs behind ``compute_s`` of the next
        (the next step's hot syncs, in the foreground, come on top: see :func:`run_seconds`). The host's foreground
        work is never hidden; on a core of its own the exchange thread's runs beside the compute, on shared cores
        it takes the training core's time."""
        background = self.link_s + self.latency_s - self.agree_s
        if shared_cores:
            return self.foreground_s + self.background_host_s + max(compute_s, background) + self.agree_s
        return max(compute_s, background + self.background_host_s) + self.foreground_s + self.agree_s


def step_time(traffic: list[Traffic], compute_s: float, world: int, link: Link, host: HostCost | None = None, *,
              overlap: bool = False, shared_cores: bool = False, hot: HotSync | None = None) -> StepTime:
    """One step's time: the busiest rank's bytes each way at the link's rate (full duplex), a latency per round
    (the matrices' rounds and the step's agreement, a ring all-reduce: ``2 (N-1)``), the host's work, and the
    foreground hot syncs (``hot``, :func:`hot_seconds`).

    Synchronous: compute + exchange + hot syncs. Overlapped: the main exchange runs behind the next step's
    compute, so the step takes the longer of the two (and the agreement), plus the host's foreground share of its
    work and the hot syncs, which training waits for; with ``shared_cores`` all the host's exchange work takes the
    training core's time (hosts with one core each, as network namespaces on one small machine are).
    """
    host = host or HostCost()
    link_s = sum(float(np.maximum(t.sent, t.recv).max()) for t in traffic) / link.bytes_per_s
    agree_s = 2 * (world - 1) * link.latency_s
    latency_s = sum(t.rounds for t in traffic) * link.latency_s + agree_s
    rate = {"sparse": host.sparse_s_per_byte, "dense": host.dense_s_per_byte}
    host_s = sum(float(t.host_bytes.max()) * rate[t.host_kind] for t in traffic if t.mode != "none")
    hot_s = hot_seconds(hot, link, host, compute_s / hot.rounds if (overlap and hot is not None) else None,
                        shared_cores)
    out = StepTime(compute_s, link_s, latency_s, host_s, compute_s + link_s + latency_s + host_s + hot_s, agree_s,
                   hot_s, host_s * host.foreground, None if host.background is None else host_s * host.background)
    if overlap:
        out.step_s = out.behind(compute_s, shared_cores) + hot_s
    return out


def run_seconds(times: Sequence[StepTime], overlap: bool = False, shared_cores: bool = False) -> float:
    """Seconds of a run of these steps: their sum; overlapped, the first compute and the last exchange stand alone
    (nothing to hide them behind), between them each step costs the longer of its exchange and the next step's
    compute, and every step's hot syncs are added (in the foreground, nothing hides them)."""
    if not times:
        return 0.0
    if not overlap:
        return sum(t.step_s for t in times)
    total = times[0].compute_s + times[-1].exchange_s + sum(t.hot_s for t in times)
    for done, nxt in zip(times[:-1], times[1:], strict=True):
        total += done.behind(nxt.compute_s, shared_cores)
    return total


def auto_budget(traffic: list[Traffic], compute_s: float, world: int, link: Link, host: HostCost | None) -> float:
    """The budget that lets an overlapped exchange hide behind compute: the bytes each way that the link, and the
    host's work on them (sent and received, per float32 value), get through in a step's compute, less the rounds'
    latency (at least a tenth of the compute is left for bytes). The trainer's ``--budget auto`` counts rows, not
    bytes: :func:`sparsembed.bench.scaling.hide_rows` converts these, and its cap bounds them."""
    host = host or HostCost()
    rounds = sum(t.rounds for t in traffic) + 2 * (world - 1)
    usable = max(compute_s - rounds * link.latency_s, 0.1 * compute_s)
    wire = sum(float(t.message.sum()) for t in traffic)
    widen = sum(float(t.message_fp32.sum()) for t in traffic if t.message_fp32 is not None) / max(wire, 1.0)
    return max(usable / (1 / link.bytes_per_s + 2 * max(widen, 1.0) * host.sparse_s_per_byte), 1.0)
