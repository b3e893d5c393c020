"""The `edgeemb` command: a thin Click layer that parses, calls the library, and prints
(`edgeemb.report.console`).

Every way a run ends badly (bad input, a failing file operation, a signal) is one line on stderr
and a non-zero exit (`edgeemb.boundary`); progress bars go to stderr, so `--json` output on stdout
stays clean for scripts.
"""

from edgeemb.cli import devices, reports, tables  # noqa: F401  (each module registers its commands on `main`)
from edgeemb.cli.base import main

__all__ = ["main"]
