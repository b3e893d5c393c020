"""Side-by-side comparison of output folders: size, bits per parameter and every quality figure
they share, with the best value of each column marked, as data, Markdown or HTML.

A quality figure is compared only where every output measured it, on the same data (the data
file's sha256 matches); otherwise the column is left out and the comparison's notes say why,
naming the outputs that did not measure it.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeemb.artifact import Artifact, load_artifact
from edgeemb.errors import EdgeembError
from edgeemb.outputs import TEXT_MARK
from edgeemb.results import GGUFExported, Report
from edgeemb.steps import STEPS


@dataclass(frozen=True)
class Metric:
    label: str
    block: Callable[[Report], Any]  # the report's block holding the figure (None when not measured)
    figure: Callable[[Any], float]  # the output's figure in that block
    higher_is_better: bool
    # Measured on data: the block's sha256, runtime and token count must match across outputs,
    # and `original` is the source model's figure on that data.
    original: Callable[[Any], float] | None = None


def _gguf_export(report: Report) -> GGUFExported | None:
    """A verified GGUF export (one written with --no-verify has no runs to compare)."""
    verified = isinstance(report.export, GGUFExported) and report.export.verify is not None
    return report.export if verified else None


METRICS: tuple[Metric, ...] = (
    Metric("STS Spearman", lambda r: r.quality.sts, lambda b: b.compressed, True, lambda b: b.original),
    Metric(
        "nDCG@10",
        lambda r: r.quality.retrieval,
        lambda b: b.compressed.ndcg_at_10,
        True,
        lambda b: b.original.ndcg_at_10,
    ),
    Metric(
        "recall@10",
        lambda r: r.quality.retrieval,
        lambda b: b.compressed.recall_at_10,
        True,
        lambda b: b.original.recall_at_10,
    ),
    Metric("perplexity", lambda r: r.quality.perplexity, lambda b: b.compressed, False, lambda b: b.original),
    Metric("sentence cosine", lambda r: r.quality.drift, lambda b: b.mean_cosine, True),
    Metric("row cosine", lambda r: r.quality.table, lambda b: b.row_cosine_mean, True),
    Metric("row cosine p1", lambda r: r.quality.table, lambda b: b.row_cosine_p1, True),
    Metric("relative error", lambda r: r.quality.table, lambda b: b.relative_error, False),
    Metric("nn overlap", lambda r: r.quality.table, lambda b: b.nn_overlap_mean, True),
    # From the recipe's export, verified in its runtime (OUT/report.json "export").
    Metric("exported file bytes", lambda r: r.export, lambda e: e.export.file_bytes, False),
    Metric(
        "decode vs source",
        _gguf_export,
        lambda e: e.verify.export.decode_tokens_per_s / e.verify.source.decode_tokens_per_s,
        True,
    ),
    Metric("llama.cpp peak RSS bytes", _gguf_export, lambda e: e.verify.export.peak_rss_bytes, False),
)
SIZE_COLUMNS = (("table bytes", False), ("model bytes", False), ("bits / param", False))
_SAME_DATA = ("sha256", "runtime", "tokens_scored")  # a figure's block: what must match for outputs to compare


@dataclass(frozen=True)
class Row:
    label: str  # the output folder's name
    path: str
    source: str
    source_sha256: str
    recipe: str
    storage: str
    sizes: dict[str, float]  # SIZE_COLUMNS
    metrics: dict[str, float]  # by Metric.label, only those every row shares
    peer: bool = False  # the recipe runs another tool's method (a baseline)

    def value(self, column: str) -> float:
        return self.sizes[column] if column in self.sizes else self.metrics[column]


@dataclass(frozen=True)
class Comparison:
    rows: list[Row]
    metrics: list[str]  # compared quality columns, in METRICS order
    best: dict[str, list[int]]  # column -> indices of the rows holding its best value
    notes: list[str] = field(default_factory=list)

    def higher_is_better(self, column: str) -> bool:
        return next((m.higher_is_better for m in METRICS if m.label == column), False)


def compare_outputs(outs: list[Path], allow_mixed: bool = False) -> Comparison:
    """Read each OUT/ folder's manifest and report and line them up."""
    if len(outs) < 2:
        raise EdgeembError("compare needs at least two output folders")
    artifacts = [load_artifact(Path(out)) for out in outs]
    sources = {a.manifest.source.sha256 for a in artifacts}
    if len(sources) > 1 and not allow_mixed:
        names = ", ".join(sorted({f"{a.path.name}: {a.manifest.source.name}" for a in artifacts}))
        raise EdgeembError(
            f"the outputs come from different source models ({names}); " "pass --allow-mixed to compare them anyway"
        )
    notes = ["the outputs come from different source models (--allow-mixed)"] if len(sources) > 1 else []
    metrics = []
    for metric in METRICS:
        blocks = [metric.block(a.report) for a in artifacts]
        missing = [a.path.name for a, block in zip(artifacts, blocks) if block is None]
        if missing:
            if len(missing) < len(blocks):  # a figure nobody measured is not a dropped column
                did = "did" if len(missing) == 1 else "do"
                notes.append(f"{metric.label} left out: {_listed(missing)} {did} not measure it")
            continue
        if metric.original is not None:
            measured = {tuple(getattr(block, key, None) for key in _SAME_DATA) for block in blocks}
            if len(measured) > 1:
                notes.append(f"{metric.label} left out: the outputs measured it on different data, tokens or runtimes")
                continue
            originals = {metric.original(block) for block in blocks}
            if len(originals) == 1:
                runtime = getattr(blocks[0], "runtime", None)
                where = f" ({runtime})" if runtime else ""
                notes.append(f"{metric.label} of the source model on the same data{where}: {originals.pop():.4g}")
        metrics.append(metric)
    rows = [_row(a, metrics) for a in artifacts]
    columns = [(label, higher) for label, higher in SIZE_COLUMNS] + [(m.label, m.higher_is_better) for m in metrics]
    best = {}
    for label, higher in columns:
        values = [row.value(label) for row in rows]
        target = max(values) if higher else min(values)
        best[label] = [i for i, v in enumerate(values) if v == target]
    return Comparison(rows, [m.label for m in metrics], best, notes)


def _listed(names: list[str], shown: int = 3) -> str:
    """`a, b and c`, or `a, b, c and 4 more`."""
    if len(names) > shown:
        return f"{', '.join(names[:shown])} and {len(names) - shown} more"
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def _row(artifact: Artifact, metrics: list[Metric]) -> Row:
    report, manifest = artifact.report, artifact.manifest
    table = report.table
    return Row(
        artifact.path.name,
        str(artifact.path),
        manifest.source.name,
        manifest.source.sha256,
        manifest.recipe["name"],
        table.storage,
        {"table bytes": table.bytes, "model bytes": table.model_bytes, "bits / param": table.bits_per_param},
        {m.label: float(m.figure(m.block(report))) for m in metrics},
        any(name in STEPS and STEPS[name].peer for step in manifest.recipe["steps"] for name in step),
    )


def default_metric(comparison: Comparison) -> str | None:
    """The quality column a plot uses unless told: the first shared of the model-level figures,
    else the table's row cosine."""
    return next((m for m in ("STS Spearman", "nDCG@10", "perplexity", "row cosine") if m in comparison.metrics), None)


def columns(comparison: Comparison) -> list[str]:
    return [label for label, _ in SIZE_COLUMNS] + comparison.metrics


def cell(comparison: Comparison, index: int, column: str) -> str:
    value = comparison.rows[index].value(column)
    if column.endswith("bytes"):
        return f"{value / 1e6:,.2f} MB"
    if column in ("STS Spearman", "bits / param"):  # Spearman is x100 already
        return f"{value:.2f}"
    if column == "perplexity":
        return f"{value:.3f}"
    if column == "decode vs source":
        return f"{value:.2f}x"
    return f"{value:.4f}"


def to_markdown(comparison: Comparison) -> str:
    """A Markdown table; the best value of each column is in bold."""
    heads = ["output", "recipe", "storage", *columns(comparison)]
    lines = [TEXT_MARK, "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for i, row in enumerate(comparison.rows):
        cells = [_mark(cell(comparison, i, c), i in comparison.best[c], "**") for c in columns(comparison)]
        lines.append("| " + " | ".join([row.label, row.recipe, row.storage, *cells]) + " |")
    lines += [f"\n{note}." for note in comparison.notes]
    return "\n".join(lines) + "\n"


def to_html(comparison: Comparison) -> str:
    """A standalone HTML page with the same table; the best value of each column is in bold."""
    heads = "".join(f"<th>{html.escape(h)}</th>" for h in ["output", "recipe", "storage", *columns(comparison)])
    body = []
    for i, row in enumerate(comparison.rows):
        cells = [html.escape(row.label), html.escape(row.recipe), html.escape(row.storage)]
        cells += [_mark(html.escape(cell(comparison, i, c)), i in comparison.best[c], "b") for c in columns(comparison)]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    notes = "".join(f"<p>{html.escape(n)}.</p>" for n in comparison.notes)
    return (
        f"<!doctype html>{TEXT_MARK}<meta charset='utf-8'><title>edgeemb compare</title>"
        "<style>body{font-family:sans-serif}td,th{padding:4px 10px;text-align:right;border-bottom:1px solid #ddd}"
        "td:nth-child(-n+3){text-align:left}</style>"
        f"<table><tr>{heads}</tr>{''.join(body)}</table>{notes}\n"
    )


def _mark(text: str, best: bool, tag: str) -> str:
    if not best:
        return text
    return f"**{text}**" if tag == "**" else f"<{tag}>{text}</{tag}>"


def pareto(comparison: Comparison, metric: str) -> list[int]:
    """Rows no other row beats on both table bytes and `metric` (ties kept)."""
    higher = comparison.higher_is_better(metric)
    points = [
        (row.sizes["table bytes"], row.metrics[metric] if higher else -row.metrics[metric]) for row in comparison.rows
    ]
    return [
        i
        for i, (size, quality) in enumerate(points)
        if not any(s <= size and q >= quality and (s, q) != (size, quality) for s, q in points)
    ]
