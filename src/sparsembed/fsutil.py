"""Files that appear whole or not at all: write to a temporary name beside the target, fsync, rename."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from sparsembed.errors import DiskFull, UserError

_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a binary file that replaces ``path`` only when the ``with`` block ends without an exception.

    The data goes to a temporary file in the same directory, is fsynced, then renamed over ``path``
    (atomic on POSIX), so a reader never sees a half-written file and a crash leaves the old one intact.
    An OSError while writing (a full disk, say) removes the temporary file and becomes a UserError
    (:class:`DiskFull` for ENOSPC / EDQUOT) naming ``path``; the old file stays as it was.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise write_error(exc, path, "; choose a writable location") from exc
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; a finished file gets the usual permissions
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise write_error(exc, path) from exc
        raise
    fsync_dir(directory)


def write_error(exc: OSError, path: str | os.PathLike, advice: str = "") -> UserError:
    """The UserError for an OSError met while writing ``path``: a full disk gets its own type and wording."""
    if exc.errno in _NO_SPACE:
        return DiskFull(f"no space left on device while writing {path}")
    return UserError(f"cannot write {path}: {exc.strerror or exc}{advice}")


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename inside ``directory`` durable (best effort where the OS does not allow it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
