"""The one exception type the CLI turns into a single readable line and a non-zero exit."""


class EdgeembError(Exception):
    """A user-facing error: bad input, a missing model package, an impossible request."""
