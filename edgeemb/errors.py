"""The one exception type the CLI turns into a single readable line and a non-zero exit, and the
check for an outside program that raises it."""

import shutil


class EdgeembError(Exception):
    """A user-facing error: bad input, a missing model package, an impossible request."""


def require_program(program: str, package: str) -> str:
    """The path of `program`, or an error naming the `package` that installs it."""
    found = shutil.which(program)
    if found is None:
        raise EdgeembError(f"{program} not found: install {package}")
    return found
