"""The command's process: ``python -m sparsembed`` and the ``sparsembed`` script run :func:`command`.

What this owns: how the process ends. Once torch is loaded (every rank under torchrun, and the launcher of
``--nproc`` ranks), the interpreter's teardown after the command returns (modules cleared, objects freed, C++
static destructors) takes about half a second (measured in BENCHMARKS.md), and torchrun's agent waits for it
before the run can end: a cost every data-parallel run pays and one process without torch does not. By then the
command has written, fsynced and closed everything it writes. So :func:`command` arms an exit handler before
anything else registers one; handlers run last-in, first-out, and Python waits for every non-daemon thread
before it runs them, so torch's, logging's and multiprocessing's handlers still run, then this one flushes the
standard streams and ends the process with the command's exit code (:func:`os._exit`). Without torch loaded, when
the command did not return (an uncaught exception), or when it failed (a non-zero code), the interpreter ends as
usual: of the ranks that meet the same bad input only rank 0 says so, and a rank that failed and ended at once let
the launcher stop rank 0 before it had (a test caught it under load), so failures keep the exit they had (and the
other ranks now wait for rank 0's line: :func:`sparsembed.dataparallel.launch.report_once`).
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import NoReturn

__all__ = ["command", "arm", "leave"]

_state: dict[str, int | bool | None] = {"armed": False, "code": None}


def command() -> NoReturn:
    """Run the command line (:func:`sparsembed.cli.main`) and end the process with its exit code."""
    arm()
    from sparsembed.cli import main

    leave(main())


def arm() -> None:
    """Register the handler that ends the process (once; it runs after every handler registered later)."""
    if not _state["armed"]:
        atexit.register(_end)
        _state["armed"] = True


def leave(code: int) -> NoReturn:
    """End the program with ``code``: the usual ``SystemExit``, after which the armed handler ends the process
    without the interpreter's teardown if torch was loaded and ``code`` is 0."""
    _state["code"] = code
    raise SystemExit(code)


def _end() -> None:
    code = _state["code"]
    if code != 0 or "torch" not in sys.modules:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: what it held cannot be written any more
            pass
    os._exit(int(code))
