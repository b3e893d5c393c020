"""#19 problems 7 and 9 on the ONNX export: verification that can fail, and optimum's export folders.

A graph given with --from that is not the source model is a warning naming its cosine to the
source; a rewrite that departs from the given graph with the table swapped in is an error, and the
file is removed. Optimum folders (built by tests/export/optimum_folder.py, as `optimum-cli export
onnx` lays them out) are taken by --from and refused as MODEL with a pointer to --from; an O2
optimised graph takes --quantize-rest, or gets one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgeemb.cli import main
from edgeemb.export import onnx as onnx_export
from edgeemb.export.tolerance import DEFAULTS
from tests.export.optimum_folder import optimize_o2, optimum_folder, perturb_weights

HIDDEN, HEADS = 64, 2  # the tiny model's (tests/conftest.py)


def run(*args) -> object:
    return CliRunner().invoke(main, [str(arg) for arg in args])


def leftovers(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir() if "edgeemb-tmp" in entry.name)


@pytest.fixture(scope="module")
def out(tiny_model, tmp_path_factory) -> Path:
    """The tiny model compressed to int4 (GatherBlockQuantized in the graph)."""
    folder = tmp_path_factory.mktemp("compressed") / "out"
    assert run("compress", tiny_model, "-r", "int4", "-o", folder).exit_code == 0
    return folder


@pytest.fixture(scope="module")
def optimum(tiny_model, tmp_path_factory) -> Path:
    return optimum_folder(tiny_model, tmp_path_factory.mktemp("optimum") / "export")


def copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def exported(out: Path, target: Path, *options) -> tuple[object, dict | None]:
    result = run("export", out, "--format", "onnx", "-o", target, "--json", *options)
    return result, json.loads(result.stdout) if result.exit_code == 0 else None


# --- optimum folders (problem 7) -----------------------------------------------------------------


def test_an_optimum_folder_is_taken_by_from_with_its_tokenizer(out, optimum, tmp_path):
    result, report = exported(out, tmp_path / "model.onnx", "--from", optimum)
    assert result.exit_code == 0, result.output
    assert report["export"]["from"] == str(optimum / "model.onnx")
    # Its own tokenizer ships beside the rewritten graph, and fed both it and the untouched graph.
    assert (tmp_path / "model.tokenizer.json").read_bytes() == (optimum / "tokenizer.json").read_bytes()
    check = report["verify"]
    assert check["given"]["tokenizer"] == str(optimum / "tokenizer.json")
    assert check["reference"] == onnx_export.REFERENCE_SWAPPED
    assert check["given"]["min_cosine"] > 0.99999 and check["max_abs_diff"] < 1e-4
    assert check["warnings"] == [] and "warning" not in result.stderr
    assert check["tolerances"] == DEFAULTS["onnx"]
    graph = onnx.load(tmp_path / "model.onnx")
    assert [entry.name for entry in graph.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert "GatherBlockQuantized" in {node.op_type for node in graph.graph.node}


def test_an_optimum_folder_with_external_data(tiny_model, out, tmp_path):
    folder = optimum_folder(tiny_model, tmp_path / "external", external_data=True)
    assert (folder / "model.onnx_data").stat().st_size > (folder / "model.onnx").stat().st_size
    result, report = exported(out, tmp_path / "model.onnx", "--from", folder)
    assert result.exit_code == 0, result.output
    assert report["verify"]["given"]["min_cosine"] > 0.99999
    written = onnx.load(tmp_path / "model.onnx", load_external_data=False)
    assert not [tensor.name for tensor in written.graph.initializer if tensor.external_data]  # one self-contained file


def test_an_optimum_folder_without_model_onnx_is_one_line(out, optimum, tmp_path):
    folder = tmp_path / "quantized-only"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(optimum / name, folder / name)
    result = run("export", out, "--format", "onnx", "-o", tmp_path / "model.onnx", "--from", folder)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip() == f"Error: {folder}: no model.onnx, so not an optimum ONNX export folder"
    shutil.copy(optimum / "model.onnx", folder / "model_quantized.onnx")
    result = run("export", out, "--format", "onnx", "-o", tmp_path / "model.onnx", "--from", folder)
    assert result.exit_code == 1 and "it holds model_quantized.onnx: give one of them as --from FILE" in result.stderr
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["quantized-only"]


@pytest.mark.parametrize("command", ["inspect", "compress"])
@pytest.mark.parametrize("given", ["folder", "file"])
def test_an_onnx_export_given_as_model_points_to_from(optimum, tmp_path, command, given):
    model = optimum if given == "folder" else optimum / "model.onnx"
    args = ["-o", tmp_path / "out"] if command == "compress" else []
    result = run(command, model, *args)
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "an ONNX export, not a model edgeemb reads a table from" in result.stderr
    assert f"edgeemb export OUT --format onnx --from {model}" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_o2_optimised_export_takes_int8_rest(out, optimum, tmp_path):
    """`optimum-cli export onnx --optimize O2`: fused com.microsoft Attention, SkipLayerNormalization
    and BiasGelu. The issue's --quantize-rest ended in a traceback from onnxruntime's quantiser."""
    folder = copy(optimum, tmp_path / "o2")
    assert {"Attention", "SkipLayerNormalization", "BiasGelu"} <= optimize_o2(folder, HIDDEN, HEADS)
    result, report = exported(out, tmp_path / "model.onnx", "--from", folder, "--quantize-rest")
    assert result.exit_code == 0, result.output
    ops = {node.op_type for node in onnx.load(tmp_path / "model.onnx").graph.node}
    assert {"QAttention", "MatMulInteger", "GatherBlockQuantized"} <= ops  # the fused projections are int8 too
    check = report["verify"]
    assert check["tolerances"] == DEFAULTS["onnx-int8-rest"]
    assert check["reference_mean_cosine"] >= DEFAULTS["onnx-int8-rest"]["reference_mean_cosine"]
    # The optimizer writes LayerNormalization into the opset-14 graph (onnxruntime runs it; onnx.checker
    # refuses it): the given graph's own complaint, so a warning rather than the rewrite's error.
    given = check["given"]["checker"]
    assert given == "ok" or any(given in warning for warning in check["warnings"])


def test_a_fused_embedding_layer_norm_is_one_line(out, optimum, tmp_path):
    folder = copy(optimum, tmp_path / "o2-embed")
    assert "EmbedLayerNormalization" in optimize_o2(folder, HIDDEN, HEADS, embed_layer_norm=True)
    result = run("export", out, "--format", "onnx", "-o", tmp_path / "model.onnx", "--from", folder, "--quantize-rest")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "inside a fused com.microsoft EmbedLayerNormalization node" in result.stderr
    assert leftovers(tmp_path) == [] and not (tmp_path / "model.onnx").exists()


def test_int8_rest_of_a_float16_graph_is_one_line(out, optimum, tmp_path):
    from onnxruntime.transformers.float16 import convert_float_to_float16

    folder = copy(optimum, tmp_path / "fp16")
    onnx.save(convert_float_to_float16(onnx.load(folder / "model.onnx")), folder / "model.onnx")
    result = run("export", out, "--format", "onnx", "-o", tmp_path / "model.onnx", "--from", folder, "--quantize-rest")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "the graph's weights are float16" in result.stderr and "Traceback" not in result.output
    assert leftovers(tmp_path) == [] and not (tmp_path / "model.onnx").exists()
    # Without --quantize-rest the float16 graph takes the table, cast to its type, and verifies.
    result, report = exported(out, tmp_path / "model.onnx", "--from", folder)
    assert result.exit_code == 0, result.output
    assert report["verify"]["max_abs_diff"] < 1e-3 and report["verify"]["given"]["min_cosine"] > 0.999


# --- verification that can fail (problem 9) ------------------------------------------------------


def test_a_graph_that_is_not_the_source_model_is_a_warning_naming_its_cosine(out, optimum, tmp_path):
    """The issue's case: an optimum export with weights perturbed (standing in for a fine-tuned
    graph) printed "verified" and exited 0 with cosine 0.68. Now the untouched graph's cosine to the
    source is measured and named; the rewrite itself is right, so the export stands."""
    folder = copy(optimum, tmp_path / "perturbed")
    assert len(perturb_weights(folder / "model.onnx", 30)) >= 10
    result, report = exported(out, tmp_path / "model.onnx", "--from", folder)
    assert result.exit_code == 0, result.output
    given = report["verify"]["given"]
    assert given["min_cosine"] < DEFAULTS["onnx"]["given_min_cosine"]
    (warning,) = report["verify"]["warnings"]
    assert f"is {given['min_cosine']:.4g}, the tolerance at least 0.999 (given_min_cosine)" in warning
    assert f"warning: {warning}" in " ".join(result.stderr.split())
    assert report["verify"]["max_abs_diff"] < 1e-4  # the rewrite matches the given graph with the table swapped


def wrong_rewrite(monkeypatch) -> None:
    """The Gather rewrite given the table with its rows shifted by one: every id reads its neighbour."""
    from edgeemb.table import DenseTable

    rewrite = onnx_export._rewrite

    def broken(model, table, origin):
        return rewrite(model, DenseTable(np.roll(table.to_dense(), 1, axis=0)), origin)

    monkeypatch.setattr(onnx_export, "_rewrite", broken)


@pytest.mark.parametrize("source", ["model", "optimum folder"])
def test_a_rewrite_that_breaks_the_graph_fails_and_is_removed(out, optimum, tmp_path, monkeypatch, source):
    wrong_rewrite(monkeypatch)
    given = ["--from", optimum] if source == "optimum folder" else []
    target = tmp_path / "model.onnx"
    result = run("export", out, "--format", "onnx", "-o", target, *given)
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert f"Error: {target}: verification failed: the max abs difference" in result.stderr
    assert "the tolerance at most 0.001 (max_abs_diff)" in result.stderr
    assert "the tolerance at least 0.9999 (reference_min_cosine)" in result.stderr
    assert "removed the file" in result.stderr and "edgeemb-tmp" not in result.stderr
    assert sorted(entry.name for entry in tmp_path.iterdir()) == []
    # --no-verify writes it all the same, and says so.
    result, report = exported(out, target, *given, "--no-verify")
    assert result.exit_code == 0 and report["verify"] is None and target.exists()
    assert "not verified" in run("export", out, "--format", "onnx", "-o", tmp_path / "again.onnx", "--no-verify").stdout


def test_a_tolerance_is_applied_and_checked(out, tmp_path):
    result = run("export", out, "--format", "onnx", "-o", tmp_path / "model.onnx", "--tolerance", "max_abs_diff=0")
    assert result.exit_code == 1 and "the tolerance at most 0 (max_abs_diff)" in result.stderr
    result, report = exported(out, tmp_path / "model.onnx", "--tolerance", "reference_min_cosine=0.5")
    assert result.exit_code == 0 and report["verify"]["tolerances"]["reference_min_cosine"] == 0.5
    for bad, message in (
        ("max_abs_diff", "give FIGURE=LIMIT"),
        ("max_abs_diff=small", "give FIGURE=LIMIT"),
        ("mean_kl=0.1", "not a figure the onnx check measures"),
    ):
        result = run("export", out, "--format", "onnx", "-o", tmp_path / "other.onnx", "--tolerance", bad)
        assert result.exit_code == 1 and message in result.stderr, result.output
    assert not (tmp_path / "other.onnx").exists() and leftovers(tmp_path) == []


@pytest.mark.real
def test_real_minilm_exports_hold_their_limits(minilm_onnx, tmp_path):
    """MiniLM's int4 table with and without the int8 rest, and rewritten into its own fp32 export
    given with --from: each within its limits, the untouched graph the source model itself."""
    _, _, fp32 = minilm_onnx
    out = tmp_path / "out"
    assert run("compress", "minilm", "-r", "int4", "-o", out).exit_code == 0
    for options, profile in (([], "onnx"), (["--quantize-rest"], "onnx-int8-rest")):
        result, report = exported(out, tmp_path / f"{profile}.onnx", *options)
        assert result.exit_code == 0, result.output
        measured = {name: limit for name, limit in DEFAULTS[profile].items() if name != "given_min_cosine"}
        assert report["verify"]["tolerances"] == measured and report["verify"]["warnings"] == []
    result, report = exported(out, tmp_path / "from.onnx", "--from", fp32)
    assert result.exit_code == 0, result.output
    assert report["verify"]["given"]["min_cosine"] > 0.99999 and report["verify"]["warnings"] == []
    assert report["verify"]["max_abs_diff"] < 1e-4
