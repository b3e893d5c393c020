"""The two files a measuring tool in tools/ writes: OUT.json (the measurements) and OUT.md (their
table, rendered from the JSON, so a change of wording re-renders without measuring again)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def write_report(out: Path, measure: Callable[[], dict] | None, render: Callable[[dict], str]) -> None:
    """Measure (unless `measure` is None: re-render OUT.md from OUT.json), write both and print the table."""
    if measure is None:
        result = json.loads(out.with_suffix(".json").read_text())
    else:
        result = measure()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(render(result))
    print(render(result))
