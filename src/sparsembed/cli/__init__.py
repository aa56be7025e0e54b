"""The ``sparsembed`` command: train, export, eval, similar, report, demo, bench (and ``--version``).

Every user error (bad corpus, bad setting, unwritable output, damaged checkpoint, full disk) ends as one line
on stderr, ``sparsembed: error: ...``, and exit code 2. Ctrl-C or SIGTERM during training finishes the running
jobs, writes a checkpoint and exits 130 / 143 with the command that resumes it.

Modules: :mod:`~sparsembed.cli.parser` (the arguments of every subcommand), :mod:`~sparsembed.cli.train` (the
train command: one process or ranks, signals, output directories), :mod:`~sparsembed.cli.tools` (the others).
"""

from __future__ import annotations

import os
import signal
import sys

from sparsembed.cli.parser import build_parser
from sparsembed.cli.tools import cmd_bench, cmd_demo, cmd_eval, cmd_export, cmd_report, cmd_similar
from sparsembed.cli.train import cmd_train
from sparsembed.dataparallel import launch
from sparsembed.errors import UserError

__all__ = ["main", "build_parser"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    handler = {"train": cmd_train, "export": cmd_export, "eval": cmd_eval, "similar": cmd_similar,
               "demo": cmd_demo, "bench": cmd_bench,
               "report": cmd_report}[args.command]
    try:
        return handler(args) or 0
    except UserError as exc:
        # Every rank of a data-parallel run meets the same bad input; rank 0 says it once. A rank that lost a
        # peer speaks for itself (rank 0 may be the one that is gone).
        who = f"rank {launch.rank()}: " if launch.world_size() > 1 else ""
        line = f"sparsembed: error: {who}{exc}"
        if getattr(exc, "every_rank_reports", False):
            print(line, file=sys.stderr)
        else:
            launch.report_once(line)
        return 2
    except KeyboardInterrupt as exc:
        resume = getattr(exc, "resume_dir", None)
        hint = f"; resume with: {launch.resume_command(resume)}" if resume is not None else ""
        if launch.rank() == 0:  # every rank of a data-parallel run got the signal; one says so
            print(f"sparsembed: interrupted{hint}", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)
    except BrokenPipeError:
        # The reader went away (`sparsembed eval ... | head`): what it wanted was printed. Point stdout at
        # /dev/null so the interpreter's final flush does not fail again, and end as a closed pipe does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
