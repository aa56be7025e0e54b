"""How a data-parallel run exchanges and cuts its work: :class:`ExchangeOptions` and the step's jobs.

A step runs ``world x threads`` consecutive jobs of the single-process job order, rank ``r`` taking the ``r``-th
group of ``threads`` (:func:`step_jobs`), or, with :attr:`Balance.DYNAMIC`, ``DYNAMIC_ROUNDS`` times as many
smaller jobs drawn by whichever rank is free. :func:`even_job_tokens` sizes jobs so that an epoch's last step
keeps every rank busy.

The closed sets are the ones their owners define: :class:`~sparsembed.comm.policy.Strategy`,
:class:`~sparsembed.comm.policy.Mode` and :class:`~sparsembed.comm.policy.Transport`, the row encodings of
:data:`sparsembed.rows.rowsets.ENCODINGS`, the value types of :class:`sparsembed.rows.values.Values`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sparsembed.comm.policy import Mode, Strategy, Transport, parse
from sparsembed.errors import UserError
from sparsembed.rows.rowsets import ENCODINGS
from sparsembed.rows.values import Values

__all__ = ["Balance", "ExchangeOptions", "ROWS", "VALUES", "DYNAMIC_ROUNDS", "step_jobs", "even_job_tokens"]


class Balance(str, Enum):
    """Who runs a step's jobs: ``static``: each rank its own group (deterministic); ``dynamic`` (ranks on one
    host): whichever rank is free draws the next of many smaller jobs (a busy core holds the others up less)."""

    STATIC = "static"
    DYNAMIC = "dynamic"


#: Row encodings a run may force, or ``auto`` (the smallest per message). ``complement`` and ``all`` win only in
#: their niche (above half density, every row), where ``auto`` picks them.
ROWS = ("auto", *(name for name in ENCODINGS if name not in ("complement", "all")))
#: Value types a run may send: fp16 and int8 are rounded, with error feedback (the dense fallback all-reduces
#: float16 for both: gloo sums no int8 rows, and has no bfloat16 sum).
VALUES = (Values.FP32, Values.FP16, Values.INT8)
#: Jobs per thread and rank in a step with ``balance="dynamic"``: a rank that finishes early draws more of them.
#: Small jobs keep short the wait for the other rank's last job (at ``--job-tokens`` 250000 a job is one
#: 10000-token sentence); with 4 the step's end waited longer than static steps did (measured, see BENCHMARKS.md).
DYNAMIC_ROUNDS = 25


@dataclass
class ExchangeOptions:
    """How a data-parallel step sends its rows (``sparsembed train --strategy/--rows/--values``); members of the
    closed sets or their strings (:meth:`validate` turns strings into members)."""

    strategy: Strategy | str = Strategy.REPLICATED
    rows: str = "auto"
    values: str = "fp32"
    mode: Mode | str = Mode.AUTO  # replicated only: "auto" picks sparse or dense per step and matrix, or force one
    transport: Transport | str = Transport.AUTO  # "auto": shared memory when every rank is on this host; "tcp": gloo
    overlap: bool = False  # replicated only: train the next step while this step's changes travel
    balance: Balance | str = Balance.STATIC  # "dynamic": ranks on one host draw a step's jobs as each becomes free

    def validate(self) -> ExchangeOptions:
        """Raise UserError naming the first invalid option; return self, its closed sets as members."""
        self.strategy = parse(self.strategy, Strategy, "--strategy")
        _one_of(self.rows, ROWS, "--rows")
        _one_of(self.values, VALUES, "--values")
        self.mode = parse(self.mode, Mode, "mode")
        self.transport = parse(self.transport, Transport, "--transport")
        self.balance = parse(self.balance, Balance, "--balance")
        if self.overlap and self.strategy is not Strategy.REPLICATED:
            raise UserError("invalid setting: --overlap needs --strategy replicated (owners of the sharded strategy "
                            "send fresh rows back within the step)")
        if self.balance is Balance.DYNAMIC and (self.overlap or self.strategy is not Strategy.REPLICATED
                                                or self.transport is not Transport.AUTO):
            raise UserError("invalid setting: --balance dynamic needs --strategy replicated, --transport auto and no "
                            "--overlap (the ranks draw jobs from a counter in shared memory)")
        return self


def _one_of(value: str, allowed: tuple[str, ...], flag: str) -> None:
    if value not in allowed:
        raise UserError(f"invalid setting: {flag} must be one of {', '.join(allowed)}, got {value!r}")


def step_jobs(first_job: int, n_jobs: int, threads: int, rank: int) -> list[int]:
    """The jobs ``rank`` runs in the step that starts at ``first_job``: its group of ``threads`` consecutive jobs."""
    start = first_job + rank * threads
    return [j for j in range(start, start + threads) if j < n_jobs]


def even_job_tokens(tokens_per_epoch: int, job_tokens: int, per_step: int) -> int:
    """Job size near ``job_tokens`` that cuts an epoch into a multiple of ``per_step`` jobs, so the last step of
    an epoch keeps every rank busy instead of leaving some idle while the others train."""
    steps = max(1, -(-tokens_per_epoch // (per_step * job_tokens)))
    return max(1, -(-tokens_per_epoch // (steps * per_step)))
