"""Commands on a model's table and its outputs: inspect, trim, compress, evaluate, export."""

from __future__ import annotations

from pathlib import Path

import click
from pydantic import ValidationError

from edgeemb.analysis import analyze_table
from edgeemb.audit import audit_corpus
from edgeemb.cli.base import (
    _CALIBRATION_HELP,
    _FILE,
    _FOLDER,
    _MODEL_HELP,
    _NEW_FILE,
    _data_options,
    _model_argument,
    main,
)
from edgeemb.errors import EdgeembError
from edgeemb.export.tolerance import FIGURES, parse_tolerances
from edgeemb.outputs import check_target
from edgeemb.pipeline import EvaluationData, evaluate_artifact, export_artifact, model_facts, trim_preview
from edgeemb.pipeline import compress as run_compress
from edgeemb.recipe import ExportConfig
from edgeemb.report import console
from edgeemb.sources import open_model
from edgeemb.steps.trim import TrimConfig
from edgeemb.table import require_finite

_INSPECT_HELP = (
    """Describe MODEL's embedding table: size and share of the model, dtype, tying, SVD
spectrum, per-dimension variance, anisotropy, hubness and rows that look untrained.

With --corpus, audit the rows your text uses: its tokens split into frequency bands (frequent:
the rows covering 50% of its tokens; mid: to 90%; rare: the rest; unused), each band's row norms
and nearest-neighbour cosines, and the rows it uses that look undertrained (low norm, few
neighbours). With --compressed OUT/ (an `edgeemb compress` output of MODEL), the compressed
table's error in each band: whether your domain's words pay for the compression. With --plot,
the audit is a second figure beside the first: spectrum.png and spectrum-audit.png.

\b
edgeemb compress minilm -r int4 -o out/minilm-int4
edgeemb inspect minilm --corpus cranfield_beir/ --compressed out/minilm-int4

"""
    + _MODEL_HELP
)


@main.command(help=_INSPECT_HELP)
@_model_argument
@click.option(
    "--corpus",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="Audit the rows this text uses: a plain-text file (a line each) or a BEIR folder (repeat for more).",
)
@click.option(
    "--compressed",
    multiple=True,
    type=_FOLDER,
    help="With --corpus: an `edgeemb compress` output of MODEL whose error is shown by frequency band (repeat).",
)
@click.option("--json", "as_json", is_flag=True, help="Print every figure as JSON.")
@click.option(
    "--plot",
    type=_NEW_FILE,
    help="Write a PNG: spectrum, per-dimension variance, row norms, hubness; with --corpus also NAME-audit.png.",
)
@click.option("--force", is_flag=True, help="Replace existing --plot files.")
@click.option("--seed", default=0, show_default=True, help="Seed for the row samples.")
def inspect(
    model: str | None,
    corpus: tuple[Path, ...],
    compressed: tuple[Path, ...],
    as_json: bool,
    plot: Path | None,
    force: bool,
    seed: int,
) -> None:
    if compressed and not corpus:
        raise EdgeembError("inspect: --compressed needs --corpus (the error is shown by the corpus's frequency bands)")
    audit_plot = plot.with_name(f"{plot.stem}-audit{plot.suffix}") if plot is not None and corpus else None
    for target in (plot, audit_plot):
        if target is not None:
            check_target(target, force)
    with console.progress_bars():
        source = open_model(model)
        require_finite(source.table.weight, f"{source.name}'s embedding table")
        audit = audit_corpus(source, corpus, compressed, seed=seed) if corpus else None
        analysis = analyze_table(source.table.weight, source.tokens, seed=seed)
    if plot is not None:
        from edgeemb.report.plots import plot_analysis, plot_audit  # matplotlib: ~0.5 s to import, only for --plot

        plot_analysis(analysis, plot, title=f"{source.name}: embedding table")
        if audit is not None and audit_plot is not None:
            plot_audit(audit, audit_plot, title=f"{source.name}: rare-token audit")
    facts = model_facts(source)
    if as_json:
        console.print_json({"model": facts, "analysis": analysis, **({"audit": audit} if audit else {})})
        return
    console.print_inspection(facts, analysis)
    if audit is not None:
        console.print_audit(audit)
    for written in (plot, audit_plot):
        if written is not None:
            console.out_console.print(f"plot written to {written}")


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
@click.option(
    "-r",
    "--recipe",
    help="Built-in recipe name (see `edgeemb recipes`), or a YAML file as a path (with a / or a .yaml suffix). "
    "Default: one the model's runtime ships: int4 for a sentence encoder, gguf-q5_0 for a causal LM "
    "(gguf-q5_0-act with --calibration and a tied head); the report says which and why.",
)
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
    data: EvaluationData,
    calibration: Path | None,
    calibration_tokens: int,
    as_json: bool,
) -> None:
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
    data: EvaluationData,
    as_json: bool,
) -> None:
    """Measure the quality of a compressed OUT/ folder against its (unchanged) source model."""
    with console.progress_bars():
        evaluation = evaluate_artifact(out, data)
    if as_json:
        console.print_json(evaluation)
        return
    console.print_report(evaluation)


_EXPORT_HELP = """Export a compressed OUT/ folder to a file a device runtime loads, and verify it there
against the compressed model's own reference. A file with a figure outside its tolerance is
removed and the command fails, naming the figure and the limit (--tolerance FIGURE=LIMIT sets
one; --no-verify runs no check, and the result says "not verified").

\b
gguf  (GGUF models, Hugging Face causal LMs) the source GGUF with token_embd.weight
      replaced, every other tensor and all metadata copied byte for byte, run in llama.cpp
      beside the source: greedy output on a fixed prompt, decode tokens/s, peak RSS, and
      with --text the perplexity of both on the same tokens. A table stored in a GGUF type
      is copied as is; any other is rebuilt at full width and quantised to --type (llama.cpp
      has no factorised or codebook embedding); an untied output head stays as it was.
      A Hugging Face causal LM is first converted by llama.cpp's own convert_hf_to_gguf.py
      (from the pinned llama-cpp-python sdist; cached per model) and its export must also
      give the greedy tokens transformers gives with the same table. Its logits on a fixed
      text are held to those of the same file with token_embd the expected rows in F32
      (mean_kl <= 0.01 nats per token; rows read from the wrong place give several nats).
onnx  (sentence-transformers models) the whole model, tokens in, normalised sentence
      embedding out, with the compressed table inside the graph (GatherBlockQuantized for
      int8/int4/int2), and its tokenizer beside it. Verified in onnxruntime on --text's lines:
      max abs difference and cosine to the compressed model in PyTorch (max_abs_diff <= 1e-3,
      reference_min_cosine >= 0.9999; with --quantize-rest reference_mean_cosine >= 0.98,
      reference_min_cosine >= 0.9), cosine to the original model, onnx.checker, p50 latency.
      --from FILE.onnx or an optimum export folder (model.onnx, its tokenizer.json) rewrites
      that graph's embedding Gather instead; the reference is then that graph with only the
      table swapped in, and the untouched graph's cosine to the source model is a warning
      when below given_min_cosine (0.999): a graph that differs from the source is yours to
      judge, a rewrite that breaks it is an error.
st    (sentence-transformers models) a directory SentenceTransformer(path) loads offline,
      the table decoded into it (as large as the original: the size win is in onnx/gguf),
      held to max_abs_diff <= 1e-4 from the compressed model.
hf    (Hugging Face transformers models) a transformers folder, the table decoded into it in
      the source's float type (as large as the original: for transformers users; the size
      win is in gguf), loaded back with from_pretrained and its logits compared with the
      compressed model's.
"""


@main.command(help=_EXPORT_HELP)
@click.argument("out", type=_FOLDER)
@click.option(
    "--format", "fmt", type=click.Choice(["gguf", "onnx", "st", "hf"]), required=True, help="Target runtime format."
)
@click.option(
    "-o",
    "--output",
    "file",
    type=click.Path(path_type=Path),
    help=(
        "Output file (a folder for st and hf). Default: OUT/model.gguf, OUT/model.onnx, "
        "OUT/sentence-transformers or OUT/transformers."
    ),
)
@click.option(
    "--type",
    "tensor_type",
    help=(
        "gguf: type for token_embd when the table is not stored in one: Q8_0, Q5_0, Q4_0, Q4_1, Q6_K, Q4_K, F16, F32. "
        "A table quantised again is reported with the shipped file's own figures."
    ),
)
@click.option(
    "--head-type",
    help="gguf: quantise a separate (untied) output.weight from the source to this type; without it the head "
    "is left as it is. Below Q8_0 the export warns.",
)
@click.option(
    "--quantize-rest",
    is_flag=True,
    help="onnx: also quantise the other MatMul (and fused Attention) weights to int8 (onnxruntime dynamic "
    "quantisation).",
)
@click.option(
    "--from",
    "onnx_source",
    type=click.Path(exists=True, path_type=Path),
    help=(
        "onnx: rewrite the embedding of this ONNX file, or of an optimum export folder's model.onnx "
        "(fed by its tokenizer.json), instead of exporting the model."
    ),
)
@click.option(
    "--tolerance",
    "tolerances",
    multiple=True,
    metavar="FIGURE=LIMIT",
    help="Hold the file to LIMIT on FIGURE instead of the default (repeat for more). "
    + "; ".join(f"{fmt}: {', '.join(figures)}" for fmt, figures in FIGURES.items())
    + ".",
)
@click.option(
    "--no-verify",
    is_flag=True,
    help="Write the file without running it in its runtime (the result says: not verified).",
)
@click.option(
    "--text", type=_FILE, help="gguf: plain text for perplexity; onnx, st, hf: one sentence per line for the checks."
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
    head_type: str | None,
    quantize_rest: bool,
    onnx_source: Path | None,
    tolerances: tuple[str, ...],
    no_verify: bool,
    text: Path | None,
    max_tokens: int,
    force: bool,
    as_json: bool,
) -> None:
    config = ExportConfig(format=fmt, type=tensor_type, head_type=head_type, quantize_rest=quantize_rest)
    limits = parse_tolerances(tolerances)
    with console.progress_bars():
        exported = export_artifact(
            out,
            config,
            file,
            force=force,
            text=text,
            max_tokens=max_tokens,
            onnx_source=onnx_source,
            verify=not no_verify,
            tolerances=limits,
        )
    for warning in getattr(exported.verify, "warnings", ()):  # figures outside a limit that only warns
        console.err_console.print(f"warning: {warning}", soft_wrap=True, markup=False, highlight=False)
    if as_json:
        console.print_json(exported)
        return
    console.print_export(out, exported)
