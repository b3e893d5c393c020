"""edgeemb: compress the token embedding table of small models for edge devices."""

import os

# onnxruntime 1.31 starts a telemetry thread on import (a database under ~/.cache/Microsoft, and
# uploads): noise in every latency edgeemb measures, and not its users' choice to make. An
# explicit ORT_DISABLE_TELEMETRY=0 keeps it on.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
