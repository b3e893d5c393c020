"""The one exception type the CLI turns into a single readable line and a non-zero exit, and the
two ways an outside program raises it: missing, or failing."""

import shutil
import subprocess
from pathlib import Path


class EdgeembError(Exception):
    """A user-facing error: bad input, a missing model package, an impossible request."""


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
