"""`edgeemb compare`: outputs side by side, shared figures only, best marked, mixed sources refused."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from edgeemb.cli import main
from edgeemb.errors import EdgeembError
from edgeemb.pipeline import EvaluationData, compress
from edgeemb.report.compare import compare_outputs, pareto, to_html, to_markdown
from edgeemb.results import (
    GGUFCheck,
    GGUFExported,
    GGUFFile,
    LlamaRun,
    Report,
    RetrievalQuality,
    RetrievalScores,
    from_json,
    to_json,
)


@pytest.fixture(scope="module")
def outputs(tiny_model, tiny_sts, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    for recipe in ("int8", "int4"):
        compress(str(tiny_model), recipe, root / recipe, data=EvaluationData(sts=tiny_sts))
    compress(str(tiny_model), "int8", root / "int8-nodata")
    return root


def test_compare_lines_up_sizes_and_shared_quality(outputs):
    comparison = compare_outputs([outputs / "int8", outputs / "int4"])
    assert [row.label for row in comparison.rows] == ["int8", "int4"]
    assert "STS Spearman" in comparison.metrics and "row cosine" in comparison.metrics
    int8, int4 = comparison.rows
    assert int4.sizes["table bytes"] < int8.sizes["table bytes"]
    assert comparison.best["table bytes"] == [1]  # int4 is smaller
    assert comparison.best["relative error"] == [0]  # int8 is closer
    assert (
        int8.sizes["model bytes"] - int4.sizes["model bytes"] == int8.sizes["table bytes"] - int4.sizes["table bytes"]
    )
    assert sorted(pareto(comparison, "row cosine")) == [0, 1]  # neither beats the other on both
    original = json.loads((outputs / "int8" / "report.json").read_text())["quality"]["sts"]["original"]
    assert f"STS Spearman of the source model on the same data: {original:.4g}" in comparison.notes
    markdown = to_markdown(comparison)
    assert "| int4 | int4 |" in markdown and "**" in markdown
    assert "<table>" in to_html(comparison)


def _llama_run(decode_tokens_per_s: float, peak_rss_bytes: int) -> LlamaRun:
    return LlamaRun(
        path="m.gguf",
        file_bytes=1000,
        load_seconds=0.1,
        greedy_ids=[1],
        greedy_text="a",
        greedy_pieces=["a"],
        decode_tokens_per_s=decode_tokens_per_s,
        prefill_tokens_per_s=None,
        peak_rss_bytes=peak_rss_bytes,
        perplexity=None,
        rss_file_bytes=0,
        rss_anon_bytes=0,
        options={},
    )


def test_retrieval_and_ratios_from_the_export_are_read_from_the_report(outputs, tmp_path):
    """nDCG@10 (whose 'original' is a block of figures) and the export's decode speed against the
    source in the same run, as OUT/report.json records them after an export."""
    folders = []
    for name, speed in (("int8", 30.0), ("int4", 45.0)):
        folder = tmp_path / name
        shutil.copytree(outputs / name, folder)
        report = from_json(Report, (folder / "report.json").read_text())
        figures = RetrievalScores(ndcg_at_10=0.5, recall_at_10=0.6, queries=10)
        retrieval = RetrievalQuality(data="qrels/test.tsv", sha256="a" * 64, original=figures, compressed=figures)
        written = GGUFFile(
            path="m.gguf",
            source="s.gguf",
            tensor_type="Q8_0",
            rebuilt=False,
            replaced=["token_embd.weight"],
            source_bytes=2000,
            file_bytes=1000,
            source_table_bytes=500,
            table_bytes=300,
            notes=[],
        )
        runs = GGUFCheck(
            runtime="llama.cpp",
            greedy_tokens_equal_to_source=1,
            source=_llama_run(30.0, 10),
            export=_llama_run(speed, 9),
        )
        report = report.model_copy(
            update={
                "quality": report.quality.model_copy(update={"retrieval": retrieval}),
                "export": GGUFExported(export=written, verify=runs),
            }
        )
        (folder / "report.json").write_text(to_json(report))
        folders.append(folder)
    comparison = compare_outputs(folders)
    assert {"nDCG@10", "exported file bytes", "decode vs source", "llama.cpp peak RSS bytes"} <= set(comparison.metrics)
    assert "nDCG@10 of the source model on the same data: 0.5" in comparison.notes
    assert [row.metrics["decode vs source"] for row in comparison.rows] == [1.0, 1.5]
    assert comparison.best["decode vs source"] == [1]
    assert "1.50x" in to_markdown(comparison)


def test_figures_measured_by_only_some_outputs_are_left_out_with_a_note(outputs):
    # #19 problem 6: the column was dropped with no note, although the README promises one.
    comparison = compare_outputs([outputs / "int8", outputs / "int4", outputs / "int8-nodata"])
    assert "STS Spearman" not in comparison.metrics and "row cosine" in comparison.metrics
    assert "STS Spearman left out: int8-nodata did not measure it" in comparison.notes
    assert not any("perplexity" in note for note in comparison.notes)  # measured by none: nothing was dropped
    assert "STS Spearman left out: int8-nodata did not measure it." in to_markdown(comparison)


def test_figures_on_different_data_are_left_out_with_a_note(outputs, tmp_path):
    other = tmp_path / "int4-other-data"
    shutil.copytree(outputs / "int4", other)
    report = json.loads((other / "report.json").read_text())
    report["quality"]["sts"]["sha256"] = "0" * 64
    (other / "report.json").write_text(json.dumps(report))
    comparison = compare_outputs([outputs / "int8", other])
    assert "STS Spearman" not in comparison.metrics
    assert any("different data" in note for note in comparison.notes)


def test_mixed_sources_are_refused_unless_allowed(outputs, tmp_path):
    other = tmp_path / "other-model"
    shutil.copytree(outputs / "int4", other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["source"]["sha256"] = "f" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgeembError, match="different source models"):
        compare_outputs([outputs / "int8", other])
    assert compare_outputs([outputs / "int8", other], allow_mixed=True).notes


def test_cli_compare_writes_markdown_html_and_pareto_plot(outputs, tmp_path):
    args = [
        "compare",
        str(outputs / "int8"),
        str(outputs / "int4"),
        "--md",
        str(tmp_path / "c.md"),
        "--html",
        str(tmp_path / "c.html"),
        "--plot",
        str(tmp_path / "p.png"),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "STS Spearman" in (tmp_path / "c.md").read_text()
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    again = CliRunner().invoke(main, args)
    assert again.exit_code != 0 and "already exists" in again.output
    data = json.loads(
        CliRunner().invoke(main, ["compare", str(outputs / "int8"), str(outputs / "int4"), "--json"]).output
    )
    assert data["best"]["table bytes"] == [1]


def test_cli_compare_bad_input(outputs, tmp_path):
    one = CliRunner().invoke(main, ["compare", str(outputs / "int8")])
    assert one.exit_code != 0 and "at least two" in one.output
    (tmp_path / "empty").mkdir()
    bad = CliRunner().invoke(main, ["compare", str(outputs / "int8"), str(tmp_path / "empty")])
    assert bad.exit_code != 0 and "not an edgeemb output folder" in bad.output
    metric = CliRunner().invoke(
        main,
        [
            "compare",
            str(outputs / "int8"),
            str(outputs / "int4"),
            "--plot",
            str(tmp_path / "x.png"),
            "--metric",
            "perplexity",
        ],
    )
    assert metric.exit_code != 0 and "no quality column 'perplexity'" in metric.output


def test_outputs_of_peer_recipes_are_marked_as_peers(outputs, tiny_model, tmp_path):
    compress(str(tiny_model), "peer-onnxruntime-arm64", tmp_path / "peer")
    comparison = compare_outputs([outputs / "int8-nodata", tmp_path / "peer"])
    assert [row.peer for row in comparison.rows] == [False, True]
