"""The one exception type the CLI turns into a single readable line and a non-zero exit; the two
ways an outside program raises it (missing, or failing); and the check every reader of a user's
path makes first (`regular_file`)."""

import os
import shutil
import stat
import subprocess
from pathlib import Path


class EdgeembError(Exception):
    """A user-facing error: bad input, a missing model package, an impossible request."""


_NOT_REGULAR = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def regular_file(path: str | os.PathLike, what: str) -> Path:
    """`path` if it is a regular file (symlinks followed), else one line naming `what` ("STS
    file"): a FIFO blocks its reader forever and a device never ends, so every reader of a user's
    path checks before it opens it. `stat`, not `open`: opening a device can act on it."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise EdgeembError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise EdgeembError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        kind = _NOT_REGULAR.get(stat.S_IFMT(mode), "a special file")
        raise EdgeembError(f"{path}: the {what} is {kind}, not a regular file")
    return path


def require_program(program: str, package: str) -> str:
    """The path of `program`, or an error naming the `package` that installs it."""
    found = shutil.which(program)
    if found is None:
        raise EdgeembError(f"{program} not found: install {package}")
    return found


def run_program(command: list[str], failure: str, cwd: Path | None = None, lines: int = 1) -> str:
    """Run `command` and return its stdout; if it fails, an error of `failure` and its last
    `lines` non-blank lines of output (a compiler's error needs a few), joined by " | "."""
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=cwd)
    if done.returncode:
        last = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()][-lines:]
        raise EdgeembError(f"{failure}: {' | '.join(last) or 'no message'}")
    return done.stdout
