"""A step's byte budget (``--budget``): which touched rows travel now, the most significant first.

Zipf makes a step's change lopsided: a few frequent words' rows carry most of it, thousands of rare words' rows a
little each. Under a budget a rank sends, of the rows it touched, those whose pending change (``work -
reference``) has the largest squared norm (estimated from its first values, ``Replica.weigh``), as many as fit in
the budget over both matrices; the others stay touched, their change kept in the working copy, where the next
steps' updates add to it until it is among the largest. Nothing is lost: a row's change waits, it is never
dropped (the delta-against-a-reference design of :class:`~sparsembed.dataparallel.replica.Replica` holds it, as it
holds a rounding residual). No row waits more than :data:`MAX_AGE` steps: a row that old goes first, whatever its
size. A run's last exchange sends every row.

``auto`` starts at :data:`ROWS_PER_TOKEN` rows per token the step trains (measured on wiki17m across 2 hosts,
BENCHMARKS.md: more rows than that bought no accuracy, half of it lost 1.5 points of analogy, a quarter of it 2.4
points; a budget far below the rows a step touches also makes many rows reach :data:`MAX_AGE` together, and a
step that must send them all) and steers by
what the step waited for: when a step waited for the exchange more than :data:`WAIT_SHARE` of its training time
while the exchange itself ran longer than :data:`FILL` of it (the link or the host cannot keep up, as opposed to a
peer that was late), the budget shrinks by :data:`SHRINK`; otherwise it grows by :data:`GROW`, back up to that cap.
So with ``overlap`` the exchange hides behind the next step's training. Steered by timing, ``auto`` can send
different rows in two runs of the same settings; a budget in megabytes chooses from the changes alone, and a run
repeats bit for bit. A rate measured from the exchange's own
seconds does not do: with small messages they are mostly the wait for the slower peer, and such a budget shrank
to half the cap on a 1 Gbit/s link that had room for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numba
import numpy as np

from sparsembed.errors import UserError
from sparsembed.rows.values import Values

__all__ = ["Budget", "parse_budget", "wire_row_bytes", "INDEX_BYTES", "MAX_AGE", "FILL", "WAIT_SHARE", "SHRINK",
           "GROW", "MIN_ROWS", "ROWS_PER_TOKEN"]

#: Steps a touched row may wait before it goes whatever its size (a bound on how stale a rare row can get).
MAX_AGE = 8
#: Share of a step's training time the exchange may run in the background before ``auto`` calls it too slow.
FILL = 0.8
#: Share of a step's training time the step may wait for the exchange before ``auto`` calls it too slow.
WAIT_SHARE = 0.1
#: What ``auto`` multiplies its budget by after a step that waited for a slow exchange, and after one that did not.
SHRINK = 0.7
GROW = 1.25
#: The most rows a step's ``auto`` budget holds per token the rank trained in it (see the module docstring).
ROWS_PER_TOKEN = 0.075
#: The smallest budget ``auto`` sets, in rows.
MIN_ROWS = 1024


def parse_budget(value: str | float | None) -> str | float | None:
    """``--budget`` as the trainer takes it: ``None`` (decided by where the ranks run), ``"off"``, ``"auto"``, or
    megabytes a step (a float > 0). Raises UserError naming the flag otherwise."""
    if value is None or value in ("off", "auto"):
        return value
    try:
        megabytes = float(value)
    except (TypeError, ValueError):
        megabytes = math.nan
    if not (math.isfinite(megabytes) and megabytes > 0):
        raise UserError(f"invalid setting: --budget must be off, auto or megabytes per step > 0 (e.g. 4), got "
                        f"{value!r}")
    return megabytes


#: Bytes that name a row in a message, at most (a 4-byte index): a budget counts them with the row's values.
INDEX_BYTES = 4


def wire_row_bytes(values: str, dim: int) -> int:
    """One row as a budget counts it on the wire: its values of type ``values`` (``--values``; int8 with its
    scale) and the index naming it."""
    return Values(values).row_bytes(dim) + INDEX_BYTES


class Budget:
    """One rank's budget over a step's matrices: :meth:`choose` picks the rows that go, :meth:`observe` feeds
    ``auto`` its measurements.

    ``setting``: ``"auto"`` or megabytes a step; ``row_bytes``: one row on the wire (values, scale, and what naming
    it costs); ``num_rows``: rows of each matrix, by name (for the rows' ages); ``step_tokens``: tokens the rank
    trains in a step (``auto``'s cap)."""

    def __init__(self, setting: str | float, row_bytes: int, num_rows: dict[str, int], step_tokens: int = 0) -> None:
        self.auto = setting == "auto"
        self.cap = max(MIN_ROWS, int(ROWS_PER_TOKEN * step_tokens))
        self.rows = self.cap if self.auto else max(1, int(float(setting) * 1e6 / row_bytes))
        self.age = {name: np.zeros(rows, dtype=np.uint16) for name, rows in num_rows.items()}

    def limit(self) -> int:
        """Rows this step may send over all matrices."""
        return self.rows

    def observe(self, waited_s: float, exchange_s: float, compute_s: float) -> None:
        """One step: it waited ``waited_s`` for an exchange that ran ``exchange_s`` (in the background with
        ``overlap``), after ``compute_s`` seconds of training; ``auto`` steers its budget by them."""
        if not self.auto or compute_s <= 0:
            return
        if waited_s > WAIT_SHARE * compute_s and exchange_s > FILL * compute_s:
            self.rows = max(MIN_ROWS, int(self.rows * SHRINK))
        else:
            self.rows = min(self.cap, max(self.rows + 1, int(self.rows * GROW)))

    def choose(self, touched: dict[str, np.ndarray],
               weigh: Callable[[str, np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
        """The rows that go this step: ``touched`` maps a matrix's name to its touched rows (sorted), ``weigh(name,
        ids)`` gives their changes' squared norms, asked only when the rows do not all fit. Rows :data:`MAX_AGE`
        steps old go first, then the largest changes over all matrices while the budget lasts; returns each
        matrix's rows that go, sorted. The ages move on: a row that goes is 0 again, one that waits a step older."""
        limit = self.limit()
        chosen: dict[str, np.ndarray] = {}
        if sum(ids.shape[0] for ids in touched.values()) <= limit:
            for name, ids in touched.items():
                self.age[name][ids] = 0
                chosen[name] = ids
            return chosen
        old = {name: self.age[name][ids] >= MAX_AGE for name, ids in touched.items()}
        room = max(0, limit - sum(int(o.sum()) for o in old.values()))
        weights = np.concatenate([np.where(old[name], -1.0, weigh(name, ids)) for name, ids in touched.items()])
        take = np.zeros(weights.shape[0], dtype=bool)
        young = np.flatnonzero(weights >= 0)
        if room >= young.shape[0]:
            take[young] = True
        elif room > 0:
            take[young[np.argpartition(-weights[young], room - 1)[:room]]] = True
        at = 0
        for name, ids in touched.items():
            goes = take[at:at + ids.shape[0]] | old[name]
            at += ids.shape[0]
            _age(self.age[name], ids, goes)
            chosen[name] = ids[goes]
        return chosen


@numba.njit(nogil=True, cache=True)
def _age(age, ids, goes):  # pragma: no cover - compiled
    for i in range(ids.shape[0]):
        r = ids[i]
        if goes[i]:
            age[r] = 0
        elif age[r] < 65535:
            age[r] += 1
