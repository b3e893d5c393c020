"""`edgeemb sweep`: a grid of recipe variants, run through an executor, then compared."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgeemb.cli import main
from edgeemb.errors import EdgeembError
from edgeemb.recipe import load_recipe
from edgeemb.sweep import LocalPool, parse_grid, sweep, variants


def test_grid_values_are_read_as_yaml_and_every_combination_is_a_valid_recipe():
    axes = parse_grid(["svd.rank=16,32", "quantize.format=int4,int8"])
    assert axes[0].values == (16, 32) and axes[1].values == ("int4", "int8")
    recipes = variants(load_recipe("svd-int4"), axes)
    assert [r.name for r in recipes] == [
        "svd-int4-rank16-formatint4",
        "svd-int4-rank16-formatint8",
        "svd-int4-rank32-formatint4",
        "svd-int4-rank32-formatint8",
    ]
    rank, quant = recipes[3].steps
    assert rank[1].rank == 32 and quant[1].format.name == "int8"


@pytest.mark.parametrize(
    "spec, message",
    [
        (["svd.rank"], "expected STEP.KEY=V1,V2"),
        (["mixed_precision.frequent_fraction=0.1"], "has no 'mixed_precision' step"),
        (["svd.rank=-4"], "svd"),  # the recipe validation names the step
    ],
)
def test_bad_grids_get_clear_errors(spec, message):
    with pytest.raises(EdgeembError, match=message):
        variants(load_recipe("svd-int4"), parse_grid(spec))


class _Recorder:
    """An executor that runs jobs inline and remembers them: the interface a cluster engine fills."""

    def __init__(self):
        self.jobs = []

    def map(self, function, jobs):
        self.jobs = list(jobs)
        return [function(*job) for job in self.jobs]


def test_sweep_runs_every_variant_through_the_executor_and_compares(tiny_model, tmp_path):
    executor = _Recorder()
    result = sweep(
        str(tiny_model),
        ["svd-int4"],
        ["svd.rank=16,32", "quantize.block_size=16"],
        tmp_path / "sweep",
        executor=executor,
    )
    assert len(executor.jobs) == 2
    assert [out.name for out in result.outs] == ["svd-int4-rank16-block_size16", "svd-int4-rank32-block_size16"]
    smaller, larger = result.comparison.rows
    assert smaller.sizes["table bytes"] < larger.sizes["table bytes"]
    assert smaller.metrics["relative error"] > larger.metrics["relative error"]  # more rank, closer table


def test_cli_sweep_in_two_processes_writes_outputs_report_and_plot(tiny_model, tmp_path):
    out = tmp_path / "sweep"
    args = [
        "sweep",
        "svd-int4",
        "-m",
        str(tiny_model),
        "--grid",
        "svd.rank=16,32",
        "--grid",
        "quantize.format=int4,int8",
        "--grid",
        "quantize.block_size=16",
        "-o",
        str(out),
        "-j",
        "2",
        "--json",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    comparison = json.loads(result.output)
    assert len(comparison["rows"]) == 4
    assert all((out / row["label"] / "manifest.json").is_file() for row in comparison["rows"])
    assert "svd-int4-rank32-formatint8-block_size16" in (out / "compare.md").read_text()
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    again = CliRunner().invoke(main, args)
    assert again.exit_code != 0 and "already exists" in again.output


def test_local_pool_of_one_runs_inline():
    assert list(LocalPool(1).map(max, [(1, 2), (5, 3)])) == [2, 5]


def test_sweep_of_several_recipes_without_a_grid_runs_each_as_it_is(tiny_model, tmp_path):
    result = sweep(
        str(tiny_model), ["int8", "int4", "peer-onnxruntime-arm64"], [], tmp_path / "recipes", executor=_Recorder()
    )
    assert [row.recipe for row in result.comparison.rows] == ["int8", "int4", "peer-onnxruntime-arm64"]
    assert result.comparison.rows[2].storage.startswith("int8-tensor")


@pytest.mark.parametrize(
    "recipes, grid, message",
    [
        (["int4"], [], "single compress"),
        (["int8", "int8"], [], "share the output folder 'int8'"),
        ([], ["svd.rank=16"], "at least one recipe"),
    ],
)
def test_sweeps_that_cannot_run_say_why(tiny_model, tmp_path, recipes, grid, message):
    with pytest.raises(EdgeembError, match=message):
        sweep(str(tiny_model), recipes, grid, tmp_path / "sweep", executor=_Recorder())


# --- #19 problem 6: a failing variant does not stop the sweep; --resume reuses what finished -----

R16, R32, R64 = (f"svd-int4-rank{rank}-block_size16" for rank in (16, 32, 64))


def _grid_sweep(tiny_model, out, ranks: str, *options: str):
    grid = ["--grid", f"svd.rank={ranks}", "--grid", "quantize.block_size=16"]  # blocks that divide every rank
    args = ["sweep", "svd-int4", "-m", str(tiny_model), *grid, "-o", str(out), *options]
    return CliRunner().invoke(main, args)


def test_a_failing_variant_is_reported_and_the_rest_are_compared(tiny_model, tmp_path):
    out = tmp_path / "sweep"
    result = _grid_sweep(tiny_model, out, "64,16,32")  # rank 64 is not below the tiny table's width
    assert result.exit_code == 1, result.output
    failed = f"{R64} failed: svd: rank 64 must be smaller than the table width 64 to compress it"
    assert failed in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"Error: 1 of 3 variants failed ({R64}); 2 compared"
    assert sorted(p.name for p in out.iterdir()) == ["compare.md", "pareto.png", R16, R32]
    compared = (out / "compare.md").read_text()
    assert f"| {R16} |" in compared and f"| {R32} |" in compared and failed in compared


def test_resume_reuses_finished_outputs_and_runs_the_rest(tiny_model, tmp_path):
    out = tmp_path / "sweep"
    assert _grid_sweep(tiny_model, out, "64,16").exit_code == 1  # one finished: nothing to compare
    assert sorted(p.name for p in out.iterdir()) == [R16]
    finished = (out / R16 / "manifest.json").stat().st_mtime_ns
    refused = _grid_sweep(tiny_model, out, "16,32")
    assert refused.exit_code != 0 and f"{R16} already exists; pass --force" in refused.output
    result = _grid_sweep(tiny_model, out, "16,32", "--resume", "--json")
    assert result.exit_code == 0, result.output
    assert [row["label"] for row in json.loads(result.stdout)["rows"]] == [R16, R32]
    assert f"reused {R16} (same recipe, model and calibration)" in result.stderr
    assert (out / R16 / "manifest.json").stat().st_mtime_ns == finished  # not written again
    again = _grid_sweep(tiny_model, out, "16,32", "--resume")  # everything reused; the reports are rewritten
    assert again.exit_code == 0, again.output
    assert f"reused {R32}" in again.stderr


def test_resume_refuses_an_output_of_another_recipe_unless_forced(tiny_model, tmp_path):
    out = tmp_path / "sweep"
    assert CliRunner().invoke(main, ["compress", str(tiny_model), "-r", "int8", "-o", str(out / "int4")]).exit_code == 0
    args = ["sweep", "int4", "int8", "-m", str(tiny_model), "-o", str(out), "--resume"]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code != 0
    assert f"{out / 'int4'} was made with another recipe, model or calibration; pass --force" in refused.output
    assert CliRunner().invoke(main, [*args, "--force"]).exit_code == 0
    assert json.loads((out / "int4" / "manifest.json").read_text())["recipe"]["name"] == "int4"
