"""Typed results: report.json's committed JSON Schema is the one the types give, a fresh OUT/
validates and round-trips byte for byte through the one serialiser, figures not measured are left
out while unknown facts stay null, and OUT/ folders written before schema 1 load (or get one line
saying to rerun compress)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeemb.artifact import load_artifact
from edgeemb.cli import main
from edgeemb.errors import EdgeembError
from edgeemb.pipeline import EvaluationData, compress
from edgeemb.report.compare import compare_outputs
from edgeemb.report.markdown import render_report
from edgeemb.results import (
    REPORT_SCHEMA_FILE,
    REPORT_SCHEMA_VERSION,
    Manifest,
    Report,
    from_json,
    report_schema,
    to_json,
)

# manifest.json, report.json and report.md of OUT/ folders the code before schema 1 wrote (tiny
# model: int8 and int4 with STS, a model2vec static model, a vocabulary trim; tables left out).
BEFORE_SCHEMA_1 = Path(__file__).parent / "data" / "reports-before-schema-1"


@pytest.fixture(scope="module")
def out(tiny_model, tiny_sts, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("results") / "int8"
    compress(str(tiny_model), "int8", folder, data=EvaluationData(sts=tiny_sts))
    return folder


def test_the_committed_schema_is_the_one_the_types_give():
    committed = json.loads(REPORT_SCHEMA_FILE.read_text())
    assert committed == report_schema(), (
        "edgeemb/report/report.schema.json is stale: "
        'python -c "from edgeemb.results import write_report_schema; write_report_schema()"'
    )
    assert committed["properties"]["schema_version"]["const"] == REPORT_SCHEMA_VERSION


def test_a_fresh_report_validates_and_round_trips_byte_for_byte(out):
    text = (out / "report.json").read_text()
    report = from_json(Report, text)
    assert json.loads(text)["schema_version"] == REPORT_SCHEMA_VERSION
    assert to_json(report) + "\n" == text
    manifest_text = (out / "manifest.json").read_text()
    assert to_json(from_json(Manifest, manifest_text)) + "\n" == manifest_text
    assert report.quality.sts.pairs == 60
    assert report.table.ratio_vs_source == pytest.approx(report.model.table_bytes / report.table.bytes)
    assert (out / "report.md").read_text() == render_report(report)


def test_figures_not_measured_are_left_out_and_unknown_facts_are_null(out):
    data = json.loads((out / "report.json").read_text())
    assert "perplexity" not in data["quality"] and "retrieval" not in data["quality"] and "export" not in data
    assert "vocabulary" not in data["table"] and "replaces_model" not in data["table"]
    assert data["model"]["tied"] is None  # an encoder: no output head, said as null, not left out


def test_a_report_of_another_shape_is_one_line_saying_to_rerun_compress(out, tmp_path):
    for name, change in (
        ("renamed", lambda r: r["table"].update(size=r["table"].pop("bytes"))),
        ("future", lambda r: r.update(schema_version=REPORT_SCHEMA_VERSION + 1)),
    ):
        folder = tmp_path / name
        shutil.copytree(out, folder)
        data = json.loads((folder / "report.json").read_text())
        change(data)
        (folder / "report.json").write_text(json.dumps(data))
        rerun = r"report.json: written by another edgeemb version .*rerun `edgeemb compress`"
        with pytest.raises(EdgeembError, match=rerun):
            load_artifact(folder).report
        result = CliRunner().invoke(main, ["compare", str(out), str(folder)])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and "rerun `edgeemb compress`" in lines[0]


def test_reports_written_before_schema_1_load_and_compare():
    folders = {folder.name: folder for folder in BEFORE_SCHEMA_1.iterdir()}
    assert all("schema_version" not in json.loads((f / "report.json").read_text()) for f in folders.values())
    reports = {name: load_artifact(folder).report for name, folder in folders.items()}
    assert reports["m2v"].quality.table is None  # written as {} before schema 1
    assert reports["trim-int8"].table.vocabulary.rows < reports["trim-int8"].table.vocabulary.source_rows
    comparison = compare_outputs([folders["int8"], folders["int4"]])
    assert "STS Spearman" in comparison.metrics and comparison.best["table bytes"] == [1]
    # The same report.md as the code before schema 1 rendered, but for trim-int8's vocabulary line
    # (its terms add up to the rows since #19).
    for name, folder in folders.items():
        assert render_report(reports[name]) == (folder / "report.md").read_text(), name
