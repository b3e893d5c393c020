"""A short seeded fuzz run of every reader of untrusted files (tools/fuzz_inputs.py; its 10,000-case
run is in docs/fuzz.md): every mutated GGUF, table and recipe is accepted or refused in one line,
with no traceback, no hang and bounded memory."""

import json
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "fuzz_inputs.py"


def test_mutated_inputs_are_accepted_or_refused_in_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, TOOL, "--cases", "150", "--seed", "7", "--timeout", "10", "-o", tmp_path / "fuzz"],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    summary = json.loads((tmp_path / "fuzz.json").read_text())
    for kind, result in summary["kinds"].items():
        assert result["cases"] == 150, (kind, result.get("worker_stderr"))
        assert result["counts"]["refused"] > 0, kind  # the mutations do reach the checks
        bad = {outcome: result["counts"][outcome] for outcome in ("traceback", "multi-line", "hang", "memory")}
        assert not any(bad.values()), (kind, bad, result["failures"][:3])
        assert result["peak_rss_mb"] < 500, kind
    assert done.returncode == 0, done.stderr
