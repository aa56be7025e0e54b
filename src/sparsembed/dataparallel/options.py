"""How a data-parallel run exchanges and cuts its work: :class:`ExchangeOptions` and the step's jobs.

A step runs ``world x threads`` consecutive jobs of the single-process job order, rank ``r`` taking the ``r``-th
group of ``threads`` (:func:`step_jobs`), or, with :attr:`Balance.DYNAMIC`, ``DYNAMIC_ROUNDS`` times as many
smaller jobs drawn by whichever rank is free. :func:`even_job_tokens` sizes jobs so that an epoch's last step
keeps every rank busy.

Beyond two ranks a step also syncs the *hot rows* (the first rows of both matrices: the most frequent words) after
every round of small jobs (:attr:`ExchangeOptions.hot_rows`, :meth:`ExchangeOptions.hot_rows_for`), and a step's
tokens per rank shrink as ranks are added (:func:`step_tokens_for`). Why: a frequent word's row gets so many
updates in a step that each rank moves it most of the way to where its own data pull it; the sum of ``N`` such
changes from the same start overshoots by ``N - 1`` times that way, which two ranks survive (the row swings back
and forth by the same amount) and four or more do not (each step swings further: accuracy measured in
BENCHMARKS.md fell from 27% to 7% at 4 ranks and 0.5% at 8). Summed every few thousand tokens instead, each
rank's change of a hot row stays small, and the sum is again what one process would have done.

Two ranks whose exchange is overlapped (``--overlap``, the default across hosts) sync a few hot rows too
(:data:`HOT_ROWS_PAIR` every :data:`HOT_TOKENS_PAIR` tokens a rank): their steps' changes land a step later than a
synchronous exchange's, and rounded, and a budget defers some; measured on wiki17m across 2 emulated hosts, this
lost 0.5-1.1 analogy points against one process, and the hot syncs win them back. At two ranks a round's sum runs
behind the next round's training (``DataParallelTrainer``).

The closed sets are the ones their owners define: :class:`~sparsembed.comm.policy.Strategy`,
:class:`~sparsembed.comm.policy.Mode` and :class:`~sparsembed.comm.policy.Transport`, the row encodings of
:data:`sparsembed.rows.rowsets.ENCODINGS`, the value types of :class:`sparsembed.rows.values.Values`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from sparsembed.comm.policy import Mode, Strategy, Transport, parse
from sparsembed.dataparallel.budget import parse_budget
from sparsembed.errors import UserError
from sparsembed.rows.rowsets import ENCODINGS
from sparsembed.rows.values import Values

__all__ = ["Balance", "ExchangeOptions", "ROWS", "VALUES", "DYNAMIC_ROUNDS", "HOT_ROWS", "HOT_TOKENS", "HOT_MIN_TOKENS",
           "step_jobs", "even_job_tokens", "step_tokens_for"]


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
#: Hot rows per matrix that ``hot_rows="auto"`` syncs beyond two ranks, and the tokens all ranks together train
#: between those syncs (``hot_tokens="auto"``: this over the ranks, at least :data:`HOT_MIN_TOKENS` each). Chosen
#: from single-process replays of 4 and 8 ranks on wiki17m (BENCHMARKS.md): 100 rows were not enough; 8 ranks x
#: 10000 tokens between syncs lost 9 points where about 20000 tokens in all kept analogy within one.
HOT_ROWS = 1000
HOT_TOKENS = 20_000
HOT_MIN_TOKENS = 1000
#: Hot rows per matrix and tokens a rank between their syncs for two ranks whose exchange is overlapped (chosen on
#: wiki17m across 2 emulated hosts, BENCHMARKS.md: 100 rows every 50000 tokens won back the analogy points the
#: overlapped, rounded, budgeted exchange lost, at the least cost of the settings tried).
HOT_ROWS_PAIR = 100
HOT_TOKENS_PAIR = 50_000
#: Tokens per rank between full exchanges by default, and the most a step may hold over all ranks beyond two:
#: changes summed from more tokens drift apart (measured: 8 ranks x 250000 lost 8 points, 8 x 125000 kept
#: analogy within one).
STEP_TOKENS = 250_000
STEP_TOKENS_ALL_RANKS = 1_000_000


def step_tokens_for(world: int) -> int:
    """Default tokens per rank between full exchanges: :data:`STEP_TOKENS`, less beyond four ranks so that a step
    holds at most :data:`STEP_TOKENS_ALL_RANKS` over all of them."""
    return max(HOT_MIN_TOKENS, min(STEP_TOKENS, STEP_TOKENS_ALL_RANKS // max(world, 1)))


@dataclass
class ExchangeOptions:
    """How a data-parallel step sends its rows (``sparsembed train --strategy/--rows/--values``); members of the
    closed sets or their strings (:meth:`validate` turns strings into members)."""

    strategy: Strategy | str = Strategy.REPLICATED
    rows: str = "auto"
    values: str = "auto"  # "auto": int8 when the ranks span hosts (replicated), else fp32 (across_hosts)
    mode: Mode | str = Mode.AUTO  # replicated only: "auto" picks sparse or dense per step and matrix, or force one
    transport: Transport | str = Transport.AUTO  # "auto": shared memory when every rank is on this host; "tcp": gloo
    overlap: bool | None = None  # replicated only: train the next step while this step's changes travel; None:
    # on when the ranks span hosts (across_hosts)
    balance: Balance | str = Balance.STATIC  # "dynamic": ranks on one host draw a step's jobs as each becomes free
    hot_rows: int | str = "auto"  # rows [0, hot_rows) of each matrix summed after every round; "auto": hot_rows_for
    hot_tokens: int | str = "auto"  # tokens per rank between those syncs; "auto": hot_tokens_for
    budget: str | float | None = None  # "off", "auto" or megabytes a step that a rank's change may take on the
    # wire, most significant rows first (sparsembed.dataparallel.budget); None: decided by across_hosts

    def validate(self) -> ExchangeOptions:
        """Raise UserError naming the first invalid option; return self, its closed sets as members."""
        self.strategy = parse(self.strategy, Strategy, "--strategy")
        _one_of(self.rows, ROWS, "--rows")
        _one_of(self.values, ("auto", *VALUES), "--values")
        self.mode = parse(self.mode, Mode, "mode")
        self.transport = parse(self.transport, Transport, "--transport")
        self.balance = parse(self.balance, Balance, "--balance")
        if self.overlap and self.strategy is not Strategy.REPLICATED:
            raise UserError("invalid setting: --overlap needs --strategy replicated (owners of the sharded strategy "
                            "send fresh rows back within the step)")
        if isinstance(self.hot_rows, str) and self.hot_rows.isdigit():
            self.hot_rows = int(self.hot_rows)
        if self.hot_rows != "auto" and not (isinstance(self.hot_rows, int) and self.hot_rows >= 0):
            raise UserError(f"invalid setting: --hot-rows must be auto or a whole number >= 0, got {self.hot_rows!r}")
        if isinstance(self.hot_tokens, str) and self.hot_tokens.isdigit():
            self.hot_tokens = int(self.hot_tokens)
        if self.hot_tokens != "auto" and not (isinstance(self.hot_tokens, int) and self.hot_tokens >= 1):
            raise UserError(f"invalid setting: --hot-tokens must be auto or a whole number >= 1, got "
                            f"{self.hot_tokens!r}")
        self.budget = parse_budget(self.budget)
        if self.budget not in (None, "off") and self.strategy is not Strategy.REPLICATED:
            raise UserError("invalid setting: --budget needs --strategy replicated (a sharded owner sends fresh "
                            "rows back within the step; a row held back would leave the replicas apart)")
        if self.hot_rows not in ("auto", 0) and (self.strategy is not Strategy.REPLICATED
                                                 or self.balance is Balance.DYNAMIC):
            raise UserError("invalid setting: --hot-rows needs --strategy replicated and --balance static (the hot "
                            "rows are summed by every rank after each round of its own jobs)")
        if self.balance is Balance.DYNAMIC and (self.overlap or self.strategy is not Strategy.REPLICATED
                                                or self.transport is not Transport.AUTO):
            raise UserError("invalid setting: --balance dynamic needs --strategy replicated, --transport auto and no "
                            "--overlap (the ranks draw jobs from a counter in shared memory)")
        return self


    def across_hosts(self, spans_hosts: bool) -> ExchangeOptions:
        """These options with ``values``, ``overlap`` and ``budget`` left to ``auto`` decided by where the ranks
        run: ranks that span hosts (a network between them) send int8 rows with error feedback under the ``auto``
        byte budget and overlap the exchange with the next step, the fastest setting measured at the same accuracy
        (BENCHMARKS.md); ranks of one host keep float32, every touched row and synchronous steps (shared memory
        sums in place; nothing to hide)."""
        wide = spans_hosts and self.strategy is Strategy.REPLICATED
        values = (Values.INT8.value if wide else Values.FP32.value) if self.values == "auto" else self.values
        overlap = (wide and self.balance is Balance.STATIC) if self.overlap is None else self.overlap
        budget = ("auto" if wide else "off") if self.budget is None else self.budget
        return replace(self, values=values, overlap=overlap, budget=budget)

    def hot_rows_for(self, world: int, num_rows: int) -> int:
        """Rows of each matrix synced after every round: as set, or with ``auto`` :data:`HOT_ROWS` beyond two
        ranks of the replicated, static exchange, :data:`HOT_ROWS_PAIR` at two ranks whose exchange is overlapped
        (see the module docstring), else 0."""
        if self.hot_rows == "auto":
            static = self.strategy is Strategy.REPLICATED and self.balance is Balance.STATIC
            pair = HOT_ROWS_PAIR if world == 2 and self.overlap else 0
            wanted = (HOT_ROWS if world > 2 else pair) if static else 0
        else:
            wanted = int(self.hot_rows)
        return min(wanted, num_rows) if world > 1 else 0

    def hot_behind(self, world: int) -> bool:
        """Whether a round's sum of the hot rows runs behind the next round's training (two ranks with
        ``--overlap``, where that was measured; beyond two ranks the hot syncs run in the foreground)."""
        return bool(self.overlap) and world == 2

    def hot_tokens_for(self, world: int) -> int:
        """Tokens a rank trains between two syncs of the hot rows: as set, or with ``auto`` :data:`HOT_TOKENS`
        shared by the ranks (at least :data:`HOT_MIN_TOKENS` each), :data:`HOT_TOKENS_PAIR` at two ranks."""
        if self.hot_tokens == "auto":
            if world == 2:
                return HOT_TOKENS_PAIR
            return max(HOT_MIN_TOKENS, HOT_TOKENS // max(world, 1))
        return int(self.hot_tokens)


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
