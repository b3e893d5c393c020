"""`python -m edgeemb.cli`: the edgeemb command."""

import sys

from edgeemb.cli import main

sys.exit(main())
