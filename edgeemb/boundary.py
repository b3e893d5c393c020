"""The command line's edge: every way a run can end badly becomes one line and a non-zero exit.

- EdgeembError (bad input, an impossible request): its message, exit 1.
- OSError (a full disk, a read-only or missing folder, no permission): what failed, on which
  path, and the usual fix, exit 1.
- SIGINT, SIGTERM and SIGHUP: raised as `Interrupted` inside the run, so every output being
  written unwinds through `edgeemb.outputs.staged` and leaves nothing; exit 128 + the signal.
- Anything else is a bug in edgeemb: one line saying so; EDGEEMB_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from collections.abc import Iterator

from edgeemb.errors import EdgeembError

DEBUG = "EDGEEMB_DEBUG"
_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is used up: free some space or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file is where a folder is needed",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENOENT: "no such file or folder",
    errno.EBUSY: "it is busy (in use by another process)",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EXDEV: "it is on another file system",
}


class Interrupted(KeyboardInterrupt):
    """A termination signal, raised where the run is so that it unwinds like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_unwind() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise `Interrupted` (SIGINT already raises
    KeyboardInterrupt); the previous handlers come back after it."""

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    previous = {number: signal.signal(number, interrupt) for number in _HANDLED_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def one_line(exc: BaseException) -> tuple[str, int] | None:
    """The line and exit status a run that raised `exc` ends with; None where the traceback is
    wanted (EDGEEMB_DEBUG set, for an unexpected error)."""
    if isinstance(exc, EdgeembError):
        return " ".join(str(exc).split()), 1
    if isinstance(exc, KeyboardInterrupt):
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        return f"interrupted by {signal.Signals(signum).name}: what was being written was removed", 128 + signum
    if isinstance(exc, OSError):
        where = " -> ".join(str(name) for name in (exc.filename, exc.filename2) if name is not None)
        reason = _OS_HINTS.get(exc.errno or 0, exc.strerror or type(exc).__name__)
        return (f"{where}: {reason}" if where else reason), 1
    if os.environ.get(DEBUG):
        return None
    message = " ".join(str(exc).split())[:300]
    return (
        f"edgeemb hit an unexpected error ({type(exc).__name__}: {message}); "
        f"this is a bug: rerun with {DEBUG}=1 for the traceback and report it",
        1,
    )
