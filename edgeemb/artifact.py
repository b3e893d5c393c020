"""The compressed artefact on disk: OUT/ holding the table, a manifest and the reports.

    OUT/table.safetensors   the compressed table (its arrays and storage spec)
    OUT/manifest.json       recipe, source model and its sha256, edgeemb version, sizes
    OUT/report.json         every figure measured (sizes, quality, and the export's verification)
    OUT/report.md           the same, short, for people
    OUT/model.gguf, ...     the recipe's export, if it asks for one

Writes are atomic: everything, the recipe's export included, goes to a temporary sibling folder
that is renamed into place once complete and verified, so a failure leaves no half-written OUT/
and an existing OUT/ exactly as it was. An existing OUT/ is replaced only with `force`, and only
if its manifest says edgeemb wrote it. Nothing in these files depends on the clock, so the same
recipe on the same model gives identical bytes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from edgeemb.errors import EdgeembError, regular_file
from edgeemb.outputs import staged
from edgeemb.results import Manifest, Report, read_json_file, to_json
from edgeemb.table import EmbeddingTable, load_table, save_table

TABLE_FILE = "table.safetensors"
MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.json"
REPORT_MD_FILE = "report.md"
_RERUN = "rerun `edgeemb compress` to write this output folder again"


@dataclass(frozen=True)
class Artifact:
    """OUT/, each file read and validated on first use: comparing or planning needs only the JSON,
    a benchmark only the table."""

    path: Path

    @functools.cached_property
    def manifest(self) -> Manifest:
        return read_json_file(Manifest, self.path / MANIFEST_FILE, _RERUN)

    @functools.cached_property
    def report(self) -> Report:
        if not (self.path / REPORT_FILE).is_file():
            raise EdgeembError(f"{self.path}: no {REPORT_FILE}; {_RERUN}")
        return read_json_file(Report, self.path / REPORT_FILE, _RERUN)

    @functools.cached_property
    def table(self) -> EmbeddingTable:
        return load_table(self.path / TABLE_FILE)


def write_artifact(
    out: Path, table: EmbeddingTable, manifest: Manifest, report: Report, report_md: str, force: bool
) -> None:
    """Write OUT/ whole or not at all (see `edgeemb.outputs.staged`)."""
    with staged(Path(out), force) as staging:
        write_artifact_files(staging, table, manifest, report, report_md)


def write_artifact_files(
    folder: Path, table: EmbeddingTable, manifest: Manifest, report: Report, report_md: str
) -> None:
    """OUT/'s files, written into `folder` (a staging folder: `staged` puts it in place)."""
    folder.mkdir(exist_ok=True)
    save_table(table, folder / TABLE_FILE)
    (folder / MANIFEST_FILE).write_text(to_json(manifest) + "\n")
    write_report_files(folder, report, report_md)


def write_report_files(folder: Path, report: Report, report_md: str) -> None:
    (folder / REPORT_FILE).write_text(to_json(report) + "\n")
    (folder / REPORT_MD_FILE).write_text(report_md)


def load_artifact(out: Path) -> Artifact:
    """OUT/, if it has a manifest (a regular file: each file is validated when first read, and
    one of another shape, a list or one without `source`, is one line saying to rerun compress)."""
    out = Path(out)
    if not (out / MANIFEST_FILE).exists():
        raise EdgeembError(f"{out}: not an edgeemb output folder (no {MANIFEST_FILE})")
    regular_file(out / MANIFEST_FILE, MANIFEST_FILE)
    return Artifact(out)
