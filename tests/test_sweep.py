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
