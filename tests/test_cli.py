"""The edgeemb command on a tiny model: outputs, bad input (one line, non-zero, nothing written),
--force, byte-identical reruns; and the real models for the issue's must-shows."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeemb.cli import main
from edgeemb.table import load_table
from tests.conftest import data_file


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert "Traceback" not in result.output


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_compress_writes_the_artifact(tiny_model, tmp_path):
    out = tmp_path / "out"
    result = run("compress", tiny_model, "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(folder_bytes(out)) == {"table.safetensors", "manifest.json", "report.json", "report.md"}
    table = load_table(out / "table.safetensors")
    assert table.nbytes == report["table"]["bytes"] == 192 * 64 // 2 + 192 * 2 * 2
    assert report["table"]["ratio_vs_source"] == pytest.approx(192 * 64 * 4 / table.nbytes)
    assert 0.99 < report["quality"]["table"]["row_cosine_mean"] <= 1.0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["name"] == "int4" and len(manifest["source"]["sha256"]) == 64


def test_same_recipe_twice_gives_identical_bytes(tiny_model, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps:\n  - svd: {rank: 32}\n  - quantize: {format: int4, block_size: 32}\n")
    for name in ("a", "b"):
        assert run("compress", tiny_model, "-r", recipe, "-o", tmp_path / name).exit_code == 0
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")


def test_existing_output_is_kept_without_force_and_replaced_with_it(tiny_model, tmp_path):
    out = tmp_path / "out"
    assert run("compress", tiny_model, "-o", out).exit_code == 0
    before = folder_bytes(out)
    assert_one_line_error(run("compress", tiny_model, "-r", "int8", "-o", out), "already exists; pass --force")
    assert folder_bytes(out) == before
    assert run("compress", tiny_model, "-r", "int8", "-o", out, "--force").exit_code == 0
    assert folder_bytes(out) != before
    assert json.loads((out / "manifest.json").read_text())["recipe"]["name"] == "int8"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or retired folders left


@pytest.mark.parametrize(
    ("recipe_text", "fragment"),
    [
        ("steps:\n  - shrink: {}\n", "unknown step 'shrink'"),
        ("steps:\n  - svd: {rank: 32, colour: red}\n", "unknown key 'colour'"),
        ("steps:\n  - svd: {rank: 64}\n", "rank 64 must be smaller than the table width 64"),
        ("steps:\n  - svd: {rank: 999}\n", "rank 999 must be smaller than the table width 64"),
        ("steps:\n  - quantize: {format: int4, block_size: 48}\n", "block size 48 does not divide the row width 64"),
    ],
)
def test_bad_recipes_fail_cleanly_and_write_nothing(tiny_model, tmp_path, recipe_text, fragment):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(recipe_text)
    out = tmp_path / "out"
    assert_one_line_error(run("compress", tiny_model, "-r", recipe, "-o", out), fragment)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_missing_model_and_corrupt_files(tmp_path):
    assert_one_line_error(run("compress", "no-such-model", "-o", tmp_path / "o"), "no model 'no-such-model'")
    gguf = tmp_path / "cut.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x01" * 20)
    assert_one_line_error(run("inspect", gguf), "cut.gguf")
    assert not (tmp_path / "o").exists()


def test_sentence_level_evaluation_with_user_data(tiny_model, tiny_sts, tmp_path):
    out = tmp_path / "out"
    result = run("compress", tiny_model, "-r", "int8", "-o", out, "--sts", tiny_sts, "--json")
    assert result.exit_code == 0, result.stderr
    quality = json.loads(result.stdout)["quality"]
    assert quality["sts"]["pairs"] == 60
    assert abs(quality["sts"]["delta"]) < 5  # int8 barely moves a random model's ranking
    assert quality["drift"]["mean_cosine"] > 0.99
    evaluated = json.loads(run("evaluate", out, "--sts", tiny_sts, "--json").stdout)
    assert evaluated["quality"]["sts"] == quality["sts"]


def test_sentence_data_on_a_gguf_model_is_refused(tmp_path, tiny_sts):
    from tests.sources.test_gguf import write_gguf

    path = tmp_path / "m.gguf"
    write_gguf(path)
    assert_one_line_error(
        run("compress", path, "-o", tmp_path / "o", "--sts", tiny_sts), "need a sentence-embedding model"
    )


def test_inspect_json_and_plot(tiny_model, tmp_path):
    plot = tmp_path / "spectrum.png"
    result = run("inspect", tiny_model, "--json", "--plot", plot)
    assert result.exit_code == 0, result.stderr
    facts = json.loads(result.stdout)
    assert (facts["model"]["vocab"], facts["model"]["dim"]) == (192, 64)
    assert len(facts["analysis"]["spectrum"]["singular_values"]) == 64
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_one_line_error(run("inspect", tiny_model, "--plot", plot), "already exists")


# Real models and real data: the figures the README quotes.


@pytest.mark.real
def test_default_compress_on_minilm_keeps_stsb_within_a_point(tmp_path):
    """The default recipe (int4, blocks of 32): >= 6x smaller table, STS-B dev within 1 point."""
    result = run("compress", "-o", tmp_path / "out", "--sts", data_file("stsb", "stsb_en_dev.tsv"), "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["table"]["ratio_vs_source"] >= 6
    sts = report["quality"]["sts"]
    assert sts["pairs"] == 1500 and sts["original"] == pytest.approx(86.72, abs=0.3)
    assert abs(sts["delta"]) <= 1.0


@pytest.mark.real
def test_inspect_gemma_reports_its_table():
    result = run("inspect", "gemma3-270m", "--json")
    assert result.exit_code == 0, result.stderr
    model = json.loads(result.stdout)["model"]
    assert (model["vocab"], model["dim"], model["stored_dtype"], model["tied"]) == (262144, 640, "Q8_0", True)
    assert 0.6 < model["table_share_of_params"] < 0.65  # ~63% of Gemma 3 270M's parameters
    assert 0.70 < model["table_share_of_bytes"] < 0.75  # Q8_0 table among 4-5 bit layers


@pytest.mark.real
def test_inspect_minilm_plot(tmp_path):
    plot = tmp_path / "minilm.png"
    result = run("inspect", "minilm", "--plot", plot)
    assert result.exit_code == 0 and plot.stat().st_size > 10_000
    assert "SVD energy ranks" in result.stdout and "[unused" in result.stdout


def test_mixed_precision_recipe_with_codebooks_through_the_cli(tiny_model, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the water is long\npeople made time\nthe the the water\n")
    recipe = tmp_path / "mixed.yaml"
    recipe.write_text(
        "steps:\n"
        "  - mixed_precision:\n"
        "      frequent: {format: int8}\n"
        "      rare: {format: pq, subspaces: 16, centroids: 16}\n"
        "      frequent_fraction: 0.05\n"
        f"      corpus: {corpus}\n"
    )
    result = run("compress", tiny_model, "-r", recipe, "-o", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.stderr
    table = json.loads(result.stdout)["table"]
    assert table["storage"].startswith("mixed: 10 rows int8") and "pq" in table["storage"]
    assert table["bytes"] == sum(array["bytes"] for array in table["arrays"].values())


@pytest.mark.real
def test_minilm_pq_recipe_is_16x_smaller_within_half_a_point(tmp_path):
    """Issue #3's target: >= 16x smaller than fp32 (<= 2.93 MB, codebooks counted), STS-B dev within 0.5."""
    result = run(
        "compress",
        "minilm",
        "-r",
        "minilm-pq",
        "-o",
        tmp_path / "out",
        "--sts",
        data_file("stsb", "stsb_en_dev.tsv"),
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["table"]["ratio_vs_fp32"] >= 16 and report["table"]["bytes"] <= 2.93e6
    assert abs(report["quality"]["sts"]["delta"]) <= 0.5
