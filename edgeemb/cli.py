"""The `edgeemb` command: a thin Click layer that parses, calls the library, and prints
(`edgeemb.report.console`).

Every way a run ends badly (bad input, a failing file operation, a signal) is one line on stderr
and a non-zero exit (`edgeemb.boundary`); progress bars go to stderr, so `--json` output on stdout
stays clean for scripts.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import asdict
from pathlib import Path

import click
from click.core import ParameterSource
from pydantic import ValidationError

from edgeemb import __version__
from edgeemb.analysis import analyze_table
from edgeemb.bench.bundle import make_bundle
from edgeemb.bench.cross import cross_build
from edgeemb.bench.devices import device_names, load_device
from edgeemb.bench.run import bench as run_bench
from edgeemb.bench.run import compare_runs, read_results
from edgeemb.boundary import one_line, signals_unwind
from edgeemb.errors import EdgeembError
from edgeemb.offload.profiles import builtin_names
from edgeemb.offload.run import offload as run_offload
from edgeemb.offload.run import plan_offload
from edgeemb.outputs import check_target, write_text
from edgeemb.pipeline import EvaluationData, evaluate_artifact, export_artifact, model_facts, trim_preview
from edgeemb.pipeline import compress as run_compress
from edgeemb.recipe import ExportConfig, builtin_recipes, load_recipe
from edgeemb.report import console
from edgeemb.report.compare import compare_outputs, default_metric, to_html, to_markdown
from edgeemb.sources import open_model
from edgeemb.sources.catalog import catalog
from edgeemb.steps.trim import TrimConfig
from edgeemb.sweep import sweep as run_sweep
from edgeemb.table import require_finite

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)  # a file to read
_FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)  # a folder to read
_NEW_FILE = click.Path(dir_okay=False, path_type=Path)  # a file to write


class _Cli(click.Group):
    def main(self, *args, **kwargs):
        """Click's usage errors as one line too (the usage and a --help hint would add three)."""
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Exit as done:
            sys.exit(done.exit_code)
        except click.Abort:
            click.echo("Error: aborted", err=True)
            sys.exit(1)
        except click.exceptions.NoArgsIsHelpError as exc:  # `edgeemb` alone: its help, as before
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else "edgeemb"
            click.echo(f"Error: {exc.format_message()} (see `{command} --help`)", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)

    def invoke(self, ctx: click.Context):
        try:
            with signals_unwind():
                return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BaseException as exc:  # the edge: every ending is one line (edgeemb.boundary)
            ending = one_line(exc)
            if ending is None or isinstance(exc, SystemExit):
                raise
            error = click.ClickException(ending[0])
            error.exit_code = ending[1]
            raise error from None


_model_argument = click.argument("model", required=False, metavar="[MODEL]")
_MODEL_HELP = (
    "MODEL is a short name (minilm, smollm2-135m, gemma3-270m; see `edgeemb models`), a Hugging Face or "
    "sentence-transformers directory, or a GGUF file. Default: minilm."
)
_DATA_OPTIONS = (
    click.option("--sts", type=_FILE, help="STS TSV (sentence1, sentence2, score): Spearman x100 of the whole model."),
    click.option(
        "--beir", type=_FOLDER, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv): nDCG@10 and recall@10."
    ),
    click.option(
        "--texts",
        type=_FILE,
        help="Plain text, one text per line: cosine of original vs compressed sentence embeddings.",
    ),
    click.option(
        "--perplexity",
        "perplexity_text",
        type=_FILE,
        help=(
            "Plain text: perplexity of a causal LM (GGUF or Hugging Face) with the original and the compressed table "
            "(transformers; llama.cpp, on the exported file, when the recipe exports GGUF)."
        ),
    ),
    click.option(
        "--max-tokens",
        type=click.IntRange(min=1),
        default=4096,
        show_default=True,
        help="Tokens of --perplexity text to score.",
    ),
)
_CALIBRATION_HELP = (
    "Plain text for steps that measure activations (quantize importance: head); " "keep it apart from evaluation text."
)


def _given(**options):
    """The options the command line set, not those left at their defaults."""
    source = click.get_current_context().get_parameter_source
    return {name: value for name, value in options.items() if source(name) is not ParameterSource.DEFAULT}


def _data_options(function):
    for option in reversed(_DATA_OPTIONS):
        function = option(function)
    return function


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeemb")
def main() -> None:
    """Compress the token embedding table of small models for edge devices, and measure what it cost.

    \b
    edgeemb inspect gemma3-270m          what the table is and how compressible it looks
    edgeemb compress                      default recipe (int4) on the embedded MiniLM
    edgeemb compress minilm -r int8 --sts stsb_en_dev.tsv -o out/minilm-int8
    edgeemb evaluate out/minilm-int8 --beir cranfield_beir/
    """


_INSPECT_HELP = (
    """Describe MODEL's embedding table: size and share of the model, dtype, tying, SVD
spectrum, per-dimension variance, anisotropy, hubness and rows that look untrained.

"""
    + _MODEL_HELP
)


@main.command(help=_INSPECT_HELP)
@_model_argument
@click.option("--json", "as_json", is_flag=True, help="Print every figure as JSON.")
@click.option("--plot", type=_NEW_FILE, help="Write a PNG: spectrum, per-dimension variance, row norms, hubness.")
@click.option("--force", is_flag=True, help="Replace an existing --plot file.")
@click.option("--seed", default=0, show_default=True, help="Seed for the row samples.")
def inspect(model: str | None, as_json: bool, plot: Path | None, force: bool, seed: int) -> None:
    if plot is not None:
        check_target(plot, force)
    with console.progress_bars():
        source = open_model(model)
        require_finite(source.table.weight, f"{source.name}'s embedding table")
        analysis = analyze_table(source.table.weight, source.tokens, seed=seed)
    if plot is not None:
        from edgeemb.report.plots import plot_analysis  # matplotlib: ~0.5 s to import, only for --plot

        plot_analysis(analysis, plot, title=f"{source.name}: embedding table")
    facts = model_facts(source)
    if as_json:
        console.print_json({"model": facts, "analysis": analysis})
        return
    console.print_inspection(facts, analysis)
    if plot is not None:
        console.out_console.print(f"plot written to {plot}")


_TRIM_HELP = (
    """Preview a vocabulary trim of MODEL (the `trim_vocab` recipe step): how many rows a
policy keeps, the bytes the table and the model would take, and, with a corpus, how text held
back from it tokenises. Writes nothing; put the same policy in a recipe to compress.

\b
edgeemb trim gemma3-270m --scripts ascii,latin:100000 --characters
edgeemb trim minilm --corpus my-domain.txt --min-count 2
edgeemb trim smollm2-135m --corpus news.txt --coverage 0.999 --scripts latin

"""
    + _MODEL_HELP
)


@main.command(help=_TRIM_HELP)
@_model_argument
@click.option(
    "--scripts",
    help=(
        "Comma-separated scripts whose pieces are kept: ascii, or latin, cyrillic, greek, cjk, ... (these bring ASCII "
        "and common punctuation along); latin:100000 keeps them only among the first 100000 ids."
    ),
)
@click.option(
    "--characters",
    is_flag=True,
    help="Also keep every single-character piece, so any other text falls back to characters, not bytes.",
)
@click.option(
    "--corpus",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="Text whose tokens are counted: a plain-text file (a line each) or a BEIR folder (repeat for more).",
)
@click.option(
    "--min-count", type=click.IntRange(min=1), help="Keep pieces seen at least this often in the corpus (default 1)."
)
@click.option("--top-k", type=click.IntRange(min=1), help="Keep the corpus's k most frequent pieces.")
@click.option(
    "--coverage",
    type=click.FloatRange(0, 1, min_open=True),
    help="Keep the most frequent pieces covering this share of corpus tokens.",
)
@click.option(
    "--holdout", default=0.1, show_default=True, help="Last share of the corpus lines held back to judge the trim."
)
@click.option("--drop", multiple=True, help="A piece to drop even if kept otherwise (repeat for more).")
@click.option("--json", "as_json", is_flag=True, help="Print every figure as JSON.")
def trim(
    model: str | None,
    scripts: str | None,
    characters: bool,
    corpus: tuple[Path, ...],
    min_count: int | None,
    top_k: int | None,
    coverage: float | None,
    holdout: float,
    drop: tuple[str, ...],
    as_json: bool,
) -> None:
    entries = tuple(_script_entry(s) for s in scripts.split(",")) if scripts else ()
    try:
        config = TrimConfig(
            scripts=entries,
            characters=characters,
            corpus=corpus,
            min_count=min_count,
            top_k=top_k,
            coverage=coverage,
            holdout=holdout,
            drop=drop,
        )
    except ValidationError as exc:
        raise EdgeembError(f"trim: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    with console.progress_bars():
        preview = trim_preview(model, config)
    if as_json:
        console.print_json(preview)
        return
    console.print_trim(preview)


def _script_entry(text: str) -> str | dict[str, int]:
    """'latin' or 'latin:100000' (only among the first 100000 ids)."""
    name, _, first_ids = text.strip().partition(":")
    if first_ids and not first_ids.isdigit():
        raise EdgeembError(f"trim: --scripts {text!r}: expected NAME or NAME:FIRST_IDS")
    return {name: int(first_ids)} if first_ids else name


_COMPRESS_HELP = (
    """Compress MODEL's embedding table with a recipe and write OUT/: the table
(safetensors), manifest.json, report.json and report.md.

Quality is always measured on the table itself; pass --sts/--beir/--texts (or name them in the
recipe's `evaluate:`) to measure the whole sentence-embedding model too, or --perplexity for a
causal LM. """
    + _MODEL_HELP
)


@main.command(help=_COMPRESS_HELP)
@_model_argument
@click.option("-r", "--recipe", help="Recipe YAML file or built-in name (see `edgeemb recipes`). Default: int4.")
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Output folder. Default: edgeemb-out/MODEL-RECIPE.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@_data_options
@click.option("--calibration", type=_FILE, help=_CALIBRATION_HELP)
@click.option(
    "--calibration-tokens",
    type=click.IntRange(min=1),
    default=2048,
    show_default=True,
    help="Tokens of --calibration text to run.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def compress(
    model: str | None,
    recipe: str | None,
    out: Path | None,
    force: bool,
    sts: Path | None,
    beir: Path | None,
    texts: Path | None,
    perplexity_text: Path | None,
    max_tokens: int,
    calibration: Path | None,
    calibration_tokens: int,
    as_json: bool,
) -> None:
    data = EvaluationData(sts, beir, texts, perplexity_text, max_tokens)
    with console.progress_bars():
        result = run_compress(
            model, recipe, out, force=force, data=data, calibration=calibration, calibration_tokens=calibration_tokens
        )
    if as_json:
        console.print_json(result.report)
        return
    console.print_report(result.report)
    console.out_console.print(f"written to {result.out}/ (report.md, report.json, manifest.json, table.safetensors)")
    if result.export:
        console.print_export(result.out, result.export)


@main.command()
@click.argument("out", type=_FOLDER)
@_data_options
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def evaluate(
    out: Path,
    sts: Path | None,
    beir: Path | None,
    texts: Path | None,
    perplexity_text: Path | None,
    max_tokens: int,
    as_json: bool,
) -> None:
    """Measure the quality of a compressed OUT/ folder against its (unchanged) source model."""
    with console.progress_bars():
        evaluation = evaluate_artifact(out, EvaluationData(sts, beir, texts, perplexity_text, max_tokens))
    if as_json:
        console.print_json(evaluation)
        return
    console.print_report(evaluation)


_EXPORT_HELP = """Export a compressed OUT/ folder to a file a device runtime loads, and verify it there.
A file that fails verification is removed and the command fails.

\b
gguf  (GGUF source models) the source GGUF with token_embd.weight replaced, every other
      tensor and all metadata copied byte for byte, run in llama.cpp beside the source:
      greedy output on a fixed prompt, decode tokens/s, peak RSS, and with --text the
      perplexity of both on the same tokens. A table stored in a GGUF type is copied as is;
      any other is rebuilt at full width and quantised to --type (llama.cpp has no
      factorised or codebook embedding).
onnx  (sentence-transformers models) the whole model, tokens in, normalised sentence
      embedding out, with the compressed table inside the graph (GatherBlockQuantized for
      int8/int4/int2), or with --from an ONNX file exported elsewhere whose embedding Gather
      is rewritten. Verified in onnxruntime: max abs difference to the compressed model in
      PyTorch, cosine to the original model on --text's lines, onnx.checker, p50 latency.
st    (sentence-transformers models) a directory SentenceTransformer(path) loads offline,
      the table decoded into it (as large as the original: the size win is in onnx/gguf).
"""


@main.command(help=_EXPORT_HELP)
@click.argument("out", type=_FOLDER)
@click.option(
    "--format", "fmt", type=click.Choice(["gguf", "onnx", "st"]), required=True, help="Target runtime format."
)
@click.option(
    "-o",
    "--output",
    "file",
    type=click.Path(path_type=Path),
    help=("Output file (a folder for st). Default: OUT/model.gguf, OUT/model.onnx or OUT/sentence-transformers."),
)
@click.option(
    "--type",
    "tensor_type",
    help=(
        "gguf: type for token_embd when the table is not stored in one: Q8_0, Q5_0, Q4_0, Q4_1, Q6_K, Q4_K, F16, F32."
    ),
)
@click.option(
    "--quantize-rest",
    is_flag=True,
    help="onnx: also quantise the other MatMul weights to int8 (onnxruntime dynamic quantisation).",
)
@click.option(
    "--from",
    "onnx_source",
    type=_FILE,
    help="onnx: rewrite the embedding of this existing ONNX export instead of exporting the model.",
)
@click.option(
    "--text", type=_FILE, help="gguf: plain text for perplexity; onnx, st: one sentence per line for the checks."
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=8192,
    show_default=True,
    help="gguf: tokens of --text to score (windows of 1024).",
)
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print the export and verification figures as JSON.")
def export(
    out: Path,
    fmt: str,
    file: Path | None,
    tensor_type: str | None,
    quantize_rest: bool,
    onnx_source: Path | None,
    text: Path | None,
    max_tokens: int,
    force: bool,
    as_json: bool,
) -> None:
    config = ExportConfig(format=fmt, type=tensor_type, quantize_rest=quantize_rest)
    with console.progress_bars():
        exported = export_artifact(
            out, config, file, force=force, text=text, max_tokens=max_tokens, onnx_source=onnx_source
        )
    if as_json:
        console.print_json(exported)
        return
    console.print_export(out, exported)


_OFFLOAD_HELP = (
    """Emulate keeping MODEL's embedding table on flash: rows stream into a small RAM
cache as TEXT is decoded, as Gemma 3n's per-layer embeddings do. Reports resident memory, flash
reads and bytes per token, hit rate and the latency the reads add per token (p50, p99), for each
cache size and flash profile, against the whole table resident.

\b
edgeemb offload gemma3-270m --text wiki.txt -p ufs-3.1 --plot offload.png
edgeemb offload gemma3-270m --text wiki.txt --layout ple -p all --cache-mb 1
edgeemb offload out/gemma-q4_0 --text wiki.txt --mode real --runtime

MODEL may also be an OUT/ folder (its compressed table is what flash holds); if its recipe has an
`offload:` plan (a device recipe), that plan sets the options not given here. Profiles: {profiles},
or a profile YAML file. sim prices each read with the profile's published figures; real reads
the same pages from a store file (O_DIRECT) and times them, held to each profile (--throttle).

""".format(profiles=", ".join(builtin_names()))
    + _MODEL_HELP
)


@main.command(help=_OFFLOAD_HELP)
@_model_argument
@click.option("--text", type=_FILE, required=True, help="Plain text to decode, tokenised by the model's own tokenizer.")
@click.option(
    "--max-tokens", type=click.IntRange(min=1), default=512, show_default=True, help="Tokens of --text in the stream."
)
@click.option(
    "-p",
    "--profile",
    "profiles",
    multiple=True,
    default=("ufs-3.1",),
    show_default=True,
    help="Flash profile (repeat for several; 'all' for every built-in one).",
)
@click.option(
    "--cache-mb",
    "cache_mb",
    type=click.FloatRange(min=0),
    multiple=True,
    help=(
        "RAM cache budget in MB (rows + index; repeat for several). Default: a sweep up to the stream's working set."
    ),
)
@click.option(
    "--hot-mb",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Pinned hot set: the most frequent tokens of --calibration, within this many MB.",
)
@click.option(
    "--calibration",
    type=_FILE,
    help="Plain text to count token frequencies for the hot set (keep it apart from --text).",
)
@click.option(
    "--cache-unit",
    type=click.Choice(["row", "page"]),
    default="row",
    show_default=True,
    help=("row: the cache keeps the rows it needs; page: whole pages as read, as the OS page cache does under mmap."),
)
@click.option(
    "--layout",
    type=click.Choice(["single", "ple", "ple-layer"]),
    default="single",
    show_default=True,
    help=(
        "single: a row per token; ple: the row split into per-layer slices, a token's slices contiguous; "
        "ple-layer: one table per layer."
    ),
)
@click.option(
    "--layers", type=click.IntRange(min=1), help="Layers for the ple layouts. Default: the model's decoder layers."
)
@click.option(
    "--head-type",
    help=("Tied tables: the format of a separate RAM-resident output head (e.g. Q4_0). Default: the table as stored."),
)
@click.option(
    "--mode",
    type=click.Choice(["sim", "real"]),
    default="sim",
    show_default=True,
    help="sim: the profiles' read model; real: also read the store file and time it.",
)
@click.option(
    "--throttle",
    type=click.Choice(["user", "cgroup", "none"]),
    default="user",
    show_default=True,
    help=(
        "real: hold each token's reads to the profile's modelled time (user), or cap read bandwidth and IOPS with a "
        "blkio cgroup (root; no access latency), or not at all."
    ),
)
@click.option(
    "--store",
    type=_NEW_FILE,
    help="Write the flash store file here and keep it (default: a temporary file for real mode).",
)
@click.option(
    "--runtime", is_flag=True, help="Also run the GGUF in llama.cpp with mmap on and off: peak RSS and tokens/s."
)
@click.option("--plot", type=_NEW_FILE, help="Write a PNG: hit rate, bytes and added latency against cache size.")
@click.option("--force", is_flag=True, help="Replace an existing --store or --plot file.")
@click.option("--json", "as_json", is_flag=True, help="Print every figure as JSON.")
def offload(
    model: str | None,
    text: Path,
    max_tokens: int,
    profiles: tuple[str, ...],
    cache_mb: tuple[float, ...],
    hot_mb: float,
    calibration: Path | None,
    cache_unit: str,
    layout: str,
    layers: int | None,
    head_type: str | None,
    mode: str,
    throttle: str,
    store: Path | None,
    runtime: bool,
    plot: Path | None,
    force: bool,
    as_json: bool,
) -> None:
    if plot is not None:
        check_target(plot, force)
    # Options left at their defaults are filled from an OUT/ recipe's `offload:` plan when it has one.
    given = _given(profiles=profiles, cache_mb=cache_mb, hot_mb=hot_mb, layout=layout, head_type=head_type)
    planned = plan_offload(model, **given, cache_unit=cache_unit, mode=mode, throttle=throttle)
    with console.progress_bars():
        result = run_offload(
            model,
            text,
            planned.config,
            layout=planned.layout,
            layers=layers,
            max_tokens=max_tokens,
            calibration=calibration,
            head_type=planned.head_type,
            store=store,
            force=force,
            runtime=runtime,
        )
    if plot is not None:
        from edgeemb.report.plots import plot_offload  # matplotlib: ~0.5 s to import, only for --plot

        plot_offload(result.offload, plot, result.model.name)
    if as_json:
        console.print_json(result)
        return
    console.print_offload(result)


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
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def sweep(
    recipes: tuple[str, ...],
    model: str | None,
    grid: tuple[str, ...],
    out_dir: Path,
    jobs: int,
    sts: Path | None,
    beir: Path | None,
    texts: Path | None,
    perplexity_text: Path | None,
    max_tokens: int,
    calibration: Path | None,
    force: bool,
    as_json: bool,
) -> None:
    """Compress MODEL with several recipes, or with every variant of a recipe on a grid, then
    compare the outputs (writes OUT/compare.md and OUT/pareto.png, size against the first shared
    quality figure). Peers run as recipes too (peer-onnxruntime-arm64, peer-llama-q4_0, ...).

    \b
    edgeemb sweep svd-int4 --grid svd.rank=64,128,256 --grid quantize.format=int4,int8 -o out/sweep --sts stsb_en_dev.tsv -j 2
    edgeemb sweep minilm-int8 minilm-pq peer-onnxruntime-arm64 peer-onnxruntime-int4 -o out/compare --sts stsb_en_dev.tsv
    """  # noqa: E501  (help examples: one command a line)
    from edgeemb.report.plots import plot_pareto  # matplotlib: ~0.5 s to import, only for the sweep's plot

    for report in ("compare.md", "pareto.png"):
        check_target(out_dir / report, force)
    data = EvaluationData(sts, beir, texts, perplexity_text, max_tokens)
    with console.progress_bars():
        result = run_sweep(model, recipes, grid, out_dir, data=data, calibration=calibration, jobs=jobs, force=force)
    comparison = result.comparison
    write_text(out_dir / "compare.md", to_markdown(comparison), force)
    metric = default_metric(comparison)
    plot_pareto(comparison, metric, out_dir / "pareto.png")
    if as_json:
        console.print_json(comparison)
        return
    console.print_comparison(comparison)
    written = f"{out_dir / 'compare.md'} and {out_dir / 'pareto.png'}"
    console.out_console.print(f"wrote {written} ({metric} against table size)")


@main.command()
@click.option("--json", "as_json", is_flag=True)
def models(as_json: bool) -> None:
    """List the short model names, what installs them, and whether they are installed."""
    rows = [
        {**asdict(entry), "installed": importlib.util.find_spec(entry.module) is not None}
        for entry in catalog().values()
    ]
    if as_json:
        console.print_json({"models": rows})
        return
    console.print_models(rows)


@main.command()
@click.option("--json", "as_json", is_flag=True)
def recipes(as_json: bool) -> None:
    """List the built-in recipes and their steps."""
    loaded = [load_recipe(path).to_dict() for _, path in sorted(builtin_recipes().items())]
    if as_json:
        console.print_json({"recipes": loaded})
        return
    console.print_recipes(loaded)


_BENCH_HELP = """Benchmark a model file in the runtime a device runs it in: load time, latency per sentence
(ONNX, onnxruntime) or per generated token and per prompt token (GGUF, llama.cpp), throughput,
and peak memory; for an edgeemb output folder, lookups of its table (numpy).

Each run is a fresh process that starts cold (the file's pages dropped from the page cache).
--profile applies a device's cores (pinned CPUs) and memory cap (a cgroup of its own as root, an
RSS watchdog otherwise; the result says which): a run the cap kills is reported as "does not fit".
--cpu-quota gives it a share of each core's time, --flash reads the model at the profile's flash
speed (both cgroups, as root; the result says what was applied). Latency here is this host's, not
the device's: --baseline runs the uncompressed file in the same session and reports ratios.

--emulate counts instructions instead, on the profile's CPU (the rpi5's Cortex-A76 by default)
under qemu user mode, one thread: per sentence in onnxruntime (an aarch64 Python, fetched once)
or per generated token in llama-bench (built by `edgeemb cross`). The count is the same in every
run; qemu's wall time is not the device's and is not reported. Profiles: {profiles} (or a YAML file).""".format(
    profiles=", ".join(device_names())
)


@main.command(help=_BENCH_HELP)
@click.argument("artifact", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--backend",
    type=click.Choice(["onnxruntime", "llama.cpp", "numpy"]),
    help="Runtime (default: by the file: .onnx, .gguf, output folder).",
)
@click.option("--profile", help="Device profile whose cores and memory cap apply (name or YAML file).")
@click.option(
    "--baseline",
    type=click.Path(exists=True, path_type=Path),
    help="The uncompressed file, benchmarked first in the same session; results get ratios.",
)
@click.option(
    "--runs",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Passes over the sentences / prompt-and-generate rounds / 20-lookup rounds.",
)
@click.option("--text", type=_FILE, help="Sentences to run, one per line (default: eight built-in English sentences).")
@click.option(
    "--tokenizer", default="minilm", show_default=True, help="Sentence model whose tokenizer feeds an ONNX file."
)
@click.option(
    "--generate", type=click.IntRange(min=1), default=32, show_default=True, help="Tokens generated per round (GGUF)."
)
@click.option("--no-mmap", is_flag=True, help="llama.cpp reads the weights into memory instead of mapping the file.")
@click.option(
    "--memory-mb",
    type=click.IntRange(min=1),
    help="Memory cap in MB (2**20 bytes), instead of the profile's or without one.",
)
@click.option(
    "--memory-limit",
    type=click.Choice(["auto", "cgroup", "watchdog"]),
    default="auto",
    show_default=True,
    help="How the memory cap is applied.",
)
@click.option(
    "--cpu-quota",
    type=click.FloatRange(0, 1, min_open=True),
    help="Share of each pinned core's time, in (0, 1] (a cgroup cpu quota; root): a crude slower core.",
)
@click.option(
    "--flash",
    is_flag=True,
    help=("Throttle reads of the file's disk to the profile's flash storage (MB/s and IOPS; a blkio/io cgroup; root)."),
)
@click.option(
    "--emulate",
    is_flag=True,
    help=("Count instructions on the profile's CPU under qemu (aarch64, one thread) instead of timing on this host."),
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the results as JSON (the same schema a device run writes)."
)
def bench(
    artifact: Path,
    backend: str | None,
    profile: str | None,
    baseline: Path | None,
    runs: int,
    text: Path | None,
    tokenizer: str,
    generate: int,
    no_mmap: bool,
    memory_mb: int | None,
    memory_limit: str,
    cpu_quota: float | None,
    flash: bool,
    emulate: bool,
    as_json: bool,
) -> None:
    texts = [line for line in text.read_text().splitlines() if line.strip()] if text else None
    options = {
        "backend": backend,
        "profile": load_device(profile) if profile else None,
        "runs": runs,
        "texts": texts,
        "tokenizer": tokenizer,
        "generate": generate,
        "mmap": not no_mmap,
        "memory_mb": memory_mb,
        "memory_limit": memory_limit,
        "cpu_quota": cpu_quota,
        "flash": flash,
        "emulate": emulate,
    }
    counting = "counting instructions under qemu (the first run fetches and builds its tools)"
    with console.err_console.status(counting if emulate else "benchmarking"):
        results = [run_bench(baseline, **options)] if baseline else []
        results.append(run_bench(artifact, **options))
    ratios = compare_runs(*results) if baseline else {}
    if as_json and baseline:
        console.print_json({"baseline": results[0], "result": results[1].model_copy(update={"vs_baseline": ratios})})
    elif as_json:
        console.print_json(results[0])
    else:
        (console.print_emulated if emulate else console.print_bench)(results, ratios)


_CROSS_HELP = """Build llama.cpp's runtime (llama-bench, llama-completion) for a device, from the llama.cpp
vendored in the llama-cpp-python sdist edgeemb pins, and try it under qemu as the device's CPU.

Targets are device profiles (see `edgeemb bench --help`): Raspberry Pis get static aarch64
binaries (Debian's gcc-aarch64-linux-gnu; -march from the profile, OpenMP off); Android targets use
the NDK when given (--ndk or ANDROID_NDK_HOME), else the same static binary for `adb shell`. The
build is cached (~/.cache/edgeemb/cross); the first takes ~10 minutes on 2 cores. --smoke runs
llama-bench on a GGUF under qemu; --try-cpu runs it as another CPU (a dot-product build on a
cortex-a53 is reported as needing a newer CPU)."""


@main.command(help=_CROSS_HELP)
@click.option("--target", required=True, help="Device profile name or YAML file, e.g. rpi5, rpi4, rpi3, android-mid.")
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    help="Folder for the binaries and BUILD.json. Default: edgeemb-cross/TARGET.",
)
@click.option("--ndk", type=_FOLDER, help="Android NDK folder (default: ANDROID_NDK_HOME).")
@click.option("--api", default=28, show_default=True, help="Android API level for an NDK build.")
@click.option(
    "--smoke", "smoke_model", type=_FILE, help="A GGUF that llama-bench runs under qemu (default: --version only)."
)
@click.option("--try-cpu", help="Run the smoke test as this QEMU_CPU instead of the target's (e.g. cortex-a53).")
@click.option("--force", is_flag=True, help="Replace files in an existing output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the build record as JSON.")
def cross(
    target: str,
    out: Path | None,
    ndk: Path | None,
    api: int,
    smoke_model: Path | None,
    try_cpu: str | None,
    force: bool,
    as_json: bool,
) -> None:
    device = load_device(target)
    out = out or Path("edgeemb-cross") / device.name
    status = f"building llama.cpp for {device.name} ({device.arm_arch}); the first build takes ~10 minutes"
    with console.err_console.status(status):
        build = cross_build(device, out, ndk=ndk, api=api, smoke_model=smoke_model, try_cpu=try_cpu, force=force)
    if as_json:
        console.print_json(build)
    else:
        console.print_cross(build, out)
    if not build.smoke.ok:
        raise click.exceptions.Exit(1)


@main.command()
@click.argument("model", type=_FILE)
@click.option("--target", required=True, help="Device profile name or YAML file (see `edgeemb cross --help`).")
@click.option("-o", "--out", type=_NEW_FILE, required=True, help="The bundle to write (.tar.gz).")
@click.option(
    "--prompt-tokens",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Prompt length llama-bench processes.",
)
@click.option(
    "--generate", type=click.IntRange(min=1), default=32, show_default=True, help="Tokens llama-bench generates."
)
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True, help="llama-bench repetitions.")
@click.option("--ndk", type=_FOLDER, help="Android NDK folder for an Android target.")
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def bundle(
    model: Path,
    target: str,
    out: Path,
    prompt_tokens: int,
    generate: int,
    runs: int,
    ndk: Path | None,
    force: bool,
    as_json: bool,
) -> None:
    """Pack a GGUF, llama-bench built for a device (`edgeemb cross`) and run.sh into a tarball. On
    the device, `sh run.sh` benchmarks the model and writes bench.json in the schema of `edgeemb
    bench`; `edgeemb compare host.json bench.json` shows it beside this host's run.

    \b
    edgeemb bundle out/gemma-english-q5_0/model.gguf --target rpi5 -o gemma-rpi5.tar.gz
    """
    device = load_device(target)
    status = f"building llama-bench for {device.name} (cached after the first build, ~10 minutes)"
    with console.err_console.status(status):
        written = make_bundle(
            model, device, out, prompt_tokens=prompt_tokens, generate=generate, runs=runs, ndk=ndk, force=force
        )
    if as_json:
        console.print_json(written)
        return
    console.print_bundle(written, device.name)


if __name__ == "__main__":
    sys.exit(main())
