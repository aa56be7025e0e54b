"""The one exception type the command line turns into a one-line message and exit code 2."""


class UserError(ValueError):
    """Bad input or settings: what was wrong, where, and what to do.

    The CLI prints ``sparsembed: error: <message>`` and exits with code 2; nothing is half-written.
    """


class DiskFull(UserError):
    """A write failed for lack of space (ENOSPC / EDQUOT); the CLI adds how to resume once space is freed."""
