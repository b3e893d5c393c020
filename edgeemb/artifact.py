"""The compressed artefact on disk: OUT/ holding the table, a manifest and the reports.

    OUT/table.safetensors   the compressed table (its arrays and storage spec)
    OUT/manifest.json       recipe, source model and its sha256, edgeemb version, sizes
    OUT/report.json         every figure measured (sizes, quality, and the export's verification)
    OUT/report.md           the same, short, for people
    OUT/model.gguf, ...     the recipe's export, if it asks for one

Writes are atomic: everything goes to a temporary sibling folder that is renamed into place, so
a failure leaves no half-written OUT/. An existing OUT/ is replaced only with `force`. Nothing in
these files depends on the clock, so the same recipe on the same model gives identical bytes.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeemb.errors import EdgeembError
from edgeemb.table import EmbeddingTable, load_table, save_table

TABLE_FILE = "table.safetensors"
MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.json"
REPORT_MD_FILE = "report.md"


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: dict
    report: dict

    @functools.cached_property
    def table(self) -> EmbeddingTable:
        """The compressed table, read on first use: comparing or planning needs only the JSON."""
        return load_table(self.path / TABLE_FILE)


def refuse_existing(path: Path, force: bool) -> None:
    """No output replaces an existing file or folder without `force`; checked before any work."""
    if path.exists() and not force:
        raise EdgeembError(f"{path} already exists; pass --force to replace it")


def check_writable(out: Path, force: bool) -> None:
    """Fail early, before any work, if OUT exists and may not be replaced."""
    refuse_existing(out, force)
    if out.exists() and not out.is_dir():
        raise EdgeembError(f"{out} exists and is not a folder")


def write_dir(out: Path, fill: Callable[[Path], None], force: bool) -> None:
    """Write a folder atomically: `fill(staging)` writes into a temporary sibling, which is then
    renamed to `out` (an existing `out` is replaced only with `force`, and kept on failure)."""
    out = Path(out)
    check_writable(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    retired = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        fill(staging)
        if out.exists():
            out.rename(retired)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if retired.exists() and not out.exists():
            retired.rename(out)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def write_artifact(out: Path, table: EmbeddingTable, manifest: dict, report: dict, report_md: str, force: bool) -> None:
    def fill(staging: Path) -> None:
        staging.mkdir()
        save_table(table, staging / TABLE_FILE)
        (staging / MANIFEST_FILE).write_text(_dumps(manifest))
        (staging / REPORT_FILE).write_text(_dumps(report))
        (staging / REPORT_MD_FILE).write_text(report_md)

    write_dir(out, fill, force)


def update_report(out: Path, report: dict, report_md: str) -> None:
    """Replace OUT/'s reports (after an export into it), each file atomically."""
    write_text_atomic(out / REPORT_FILE, _dumps(report))
    write_text_atomic(out / REPORT_MD_FILE, report_md)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file through a temporary sibling renamed into place: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staging.write_text(text)
    os.replace(staging, path)


def load_artifact(out: Path) -> Artifact:
    out = Path(out)
    if not (out / MANIFEST_FILE).is_file():
        raise EdgeembError(f"{out}: not an edgeemb output folder (no {MANIFEST_FILE})")
    try:
        manifest = json.loads((out / MANIFEST_FILE).read_text())
        report = json.loads((out / REPORT_FILE).read_text()) if (out / REPORT_FILE).exists() else {}
    except ValueError as exc:
        raise EdgeembError(f"{out}: unreadable JSON ({exc})") from None
    return Artifact(out, manifest, report)


def _dumps(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=False) + "\n"
