"""Figures for reports, drawn with matplotlib's Agg canvas (no pyplot state, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from edgeemb.analysis import TableAnalysis
from edgeemb.audit import CorpusAudit
from edgeemb.offload import OffloadReport
from edgeemb.outputs import png_metadata, staged
from edgeemb.report.compare import Comparison, pareto

_LEVEL_COLOURS = {"0.90": "tab:green", "0.95": "tab:orange", "0.99": "tab:red"}


def plot_analysis(analysis: TableAnalysis, path: Path, title: str) -> None:
    """One PNG, four panels: spectrum, per-dimension variance, row norms, hubness."""
    figure = Figure(figsize=(12, 8.5), layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(f"{title}  ({analysis.rows:,} x {analysis.dim})", fontsize=13)
    spectrum_ax, variance_ax, norms_ax, hub_ax = figure.subplots(2, 2).ravel()
    _spectrum(spectrum_ax, analysis)
    _variance(variance_ax, analysis)
    _norms(norms_ax, analysis)
    _hubness(hub_ax, analysis)
    _save_atomic(figure, Path(path))


def _spectrum(ax, analysis: TableAnalysis) -> None:
    spectrum = analysis.spectrum
    values = np.asarray(spectrum.singular_values)
    ranks = np.arange(1, len(values) + 1)
    ax.plot(ranks, values, color="tab:blue")
    ax.set_yscale("log")
    ax.set_xlabel("rank")
    ax.set_ylabel("singular value (centred)", color="tab:blue")
    energy = np.cumsum(values**2)
    twin = ax.twinx()
    twin.plot(ranks, energy / energy[-1] if energy[-1] > 0 else energy, color="0.4", linestyle=":")
    twin.set_ylabel("cumulative energy", color="0.4")
    twin.set_ylim(0, 1.02)
    for level, rank in spectrum.energy_rank.items():
        ax.axvline(
            rank, color=_LEVEL_COLOURS[level], linestyle="--", linewidth=1, label=f"{float(level):.0%}: rank {rank}"
        )
    ax.legend(loc="lower left", fontsize=8)
    source = "exact" if spectrum.method == "gram" else f"{spectrum.rows_used:,}-row sample"
    ax.set_title(f"Singular values ({source})")


def _variance(ax, analysis: TableAnalysis) -> None:
    variance = analysis.variance
    ax.plot(np.arange(1, analysis.dim + 1), np.sort(variance.variance)[::-1], color="tab:purple")
    ax.set_yscale("log")
    ax.set_xlabel("dimension (sorted by variance)")
    ax.set_ylabel("variance")
    ax.axvline(variance.dims_for_half, color="0.5", linestyle="--", linewidth=1)
    ratio = "inf" if variance.max_min_ratio is None else f"{variance.max_min_ratio:.1f}"
    ax.set_title(f"Per-dimension variance: max/min {ratio}, {variance.dims_for_half} dims hold 50%")


def _norms(ax, analysis: TableAnalysis) -> None:
    norms = analysis.norms
    edges = np.asarray(norms.histogram_edges)
    ax.stairs(norms.histogram_counts, edges, fill=True, color="tab:cyan", alpha=0.8)
    ax.set_yscale("log")  # the outlier tail would be invisible next to the bulk on a linear axis
    ax.set_xlabel("row L2 norm")
    ax.set_ylabel("rows")
    label = f"|robust z| > {norms.outlier_z:g}: < {norms.outlier_low:.3g} or > {norms.outlier_high:.3g}"
    # Only bounds inside the data range: an unreached bound would stretch the axis for nothing.
    for bound in (norms.outlier_low, norms.outlier_high):
        if edges[0] <= bound <= edges[-1]:
            ax.axvline(bound, color="tab:red", linestyle="--", linewidth=1, label=label)
            label = None
    if label is not None:
        ax.plot([], [], color="tab:red", linestyle="--", label=label)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(
        f"Row norms: {norms.outlier_count:,} outliers "
        f"({norms.outlier_low_count:,} low, {norms.outlier_high_count:,} high)"
    )


def _hubness(ax, analysis: TableAnalysis) -> None:
    hub = analysis.hubness
    occurrence = np.asarray(hub.k_occurrence)
    counts = np.bincount(occurrence)
    ax.bar(np.arange(len(counts)), counts, width=1.0, color="tab:olive")
    ax.set_yscale("log")
    ax.axvline(hub.k, color="0.5", linestyle="--", linewidth=1, label=f"k = {hub.k} (mean)")
    ax.set_xlabel(f"k-occurrence N_{hub.k} (times a row is among others' {hub.k} nearest)")
    ax.set_ylabel("rows")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(
        f"Hubness ({hub.sample:,}-row sample)\nskew {hub.skewness:.2f}, max N_{hub.k} {hub.max_k_occurrence}, "
        f"anti-hubs (N_{hub.k} = 0) {hub.antihub_fraction:.1%}"
    )


def plot_audit(audit: CorpusAudit, path: Path, title: str) -> None:
    """The rare-token audit by frequency band: the corpus's tokens and rows, the rows' norms and
    neighbour cosines, and, with compressed outputs, each one's relative error."""
    panels = 3 if audit.compressed else 2
    figure = Figure(figsize=(5.2 * panels, 4.6), layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(f"{title}: {', '.join(Path(c).name for c in audit.corpus)}, {audit.tokens:,} tokens", fontsize=12)
    usage_ax, rows_ax, *error_ax = figure.subplots(1, panels)
    names = [band.name for band in audit.bands]
    positions = np.arange(len(names))
    usage_ax.bar(positions, [100 * band.token_share for band in audit.bands], color="tab:blue")
    for x, band in zip(positions, audit.bands):
        usage_ax.annotate(f"{band.rows:,} rows", (x, 100 * band.token_share), ha="center", va="bottom", fontsize=8)
    usage_ax.set_ylabel("share of corpus tokens (%)")
    edges = ", ".join(f"{edge:.0%}" for edge in audit.band_edges)
    usage_ax.set_title(f"Frequency bands (edges at {edges} of tokens)")

    norm = [np.nan if band.median_norm is None else band.median_norm for band in audit.bands]
    cosine = [np.nan if band.neighbour_cosine is None else band.neighbour_cosine for band in audit.bands]
    rows_ax.plot(positions, norm, marker="o", color="tab:purple")
    rows_ax.set_ylabel("median row norm", color="tab:purple")
    twin = rows_ax.twinx()
    twin.plot(positions, cosine, marker="s", linestyle="--", color="tab:olive")
    twin.set_ylabel(f"mean cosine to {audit.k} nearest rows", color="tab:olive")
    rows_ax.set_ylim(0, 1.15 * np.nanmax(norm))  # from zero: a band's difference is seen at its true size
    twin.set_ylim(0, 1)
    rows_ax.set_title(f"Rows by band: {audit.undertrained_count} used rows look undertrained")

    if audit.compressed:
        ax = error_ax[0]
        width = 0.8 / len(audit.compressed)
        for index, output in enumerate(audit.compressed):
            bars = positions - 0.4 + width * (index + 0.5)
            errors = [np.nan if part.relative_error is None else part.relative_error for part in output.bands]
            name = Path(output.path).name
            ax.bar(
                bars,
                errors,
                width,
                color=f"C{index}",
                label=name if name == output.recipe else f"{name} ({output.recipe})",
            )
            for bar, error, part in zip(bars, errors, output.bands):
                if part.dropped_rows:  # a trimmed vocabulary: the error is of the kept rows only
                    ax.annotate(
                        f"-{part.dropped_rows:,}",
                        (bar, 0 if np.isnan(error) else error),
                        ha="center",
                        va="bottom",
                        fontsize=7,
                        rotation=90,
                    )
        ax.set_ylabel("relative error ||W - W'|| / ||W|| of the band's rows")
        highest = max(part.relative_error or 0.0 for c in audit.compressed for part in c.bands)
        ax.set_ylim(0, 1.3 * highest or 1.0)  # headroom for the legend
        trimmed = any(part.dropped_rows for c in audit.compressed for part in c.bands)
        ax.set_title("Compression error by band" + (" (-N: rows dropped)" if trimmed else ""))
        ax.legend(fontsize=8, loc="upper center", ncols=min(2, len(audit.compressed)))
    for ax in (usage_ax, rows_ax, *error_ax):
        ax.set_xticks(positions, names)
        ax.set_xlabel("frequency band in the corpus")
    _save_atomic(figure, Path(path))


def plot_offload(report: OffloadReport, path: Path, title: str) -> None:
    """Two panels against cache size: what the cache catches (hit rate, flash bytes per token)
    and what each flash profile adds per token (mean and p99)."""
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    layout = report.layout
    figure.suptitle(
        f"{title}: {report.table} rows of {layout.record_bytes} B, layout {layout.kind}"
        + (f" ({layout.layers} layers)" if layout.layers > 1 else "")
        + f", {report.tokens} tokens",
        fontsize=12,
    )
    cache_ax, latency_ax = figure.subplots(1, 2)
    points = report.points
    cache_kb = np.array([p.cache_peak_bytes for p in points]) / 1024
    share = 100 * np.array([p.cache_peak_bytes for p in points]) / report.table_bytes
    cache_ax.plot(cache_kb, [100 * p.hit_rate for p in points], marker="o", color="tab:green")
    cache_ax.set_ylabel("hit rate (%)", color="tab:green")
    cache_ax.set_ylim(0, 100)
    twin = cache_ax.twinx()
    twin.plot(cache_kb, [p.bytes_per_token / 1024 for p in points], marker="s", color="tab:blue")
    twin.set_ylabel("flash read per token (KiB)", color="tab:blue")
    cache_ax.set_title(f"Cache: up to {share.max():.2g}% of the table's bytes")
    for profile_index, profile in enumerate(points[0].results):
        colour = f"C{profile_index}"
        results = [p.results[profile_index] for p in points]
        name = profile.profile
        latency_ax.plot(cache_kb, [r.sim.mean_us for r in results], marker="o", color=colour, label=f"{name} mean")
        latency_ax.plot(cache_kb, [r.sim.p99_us for r in results], linestyle="--", color=colour, label=f"{name} p99")
        if profile.real is not None:
            real = [r.real.mean_us for r in results if r.real is not None]
            latency_ax.plot(cache_kb, real, marker="x", linestyle=":", color=colour, label=f"{name} real mean")
    latency_ax.set_ylim(bottom=0)
    latency_ax.set_ylabel("added latency per token (us)")
    latency_ax.set_title("Flash reads per token (no overlap with compute)")
    latency_ax.legend(fontsize=7, ncols=2)
    for ax in (cache_ax, latency_ax):
        ax.set_xlim(left=0)
        ax.set_xlabel("cache (KiB, rows + index)")
    _save_atomic(figure, Path(path))


def plot_pareto(comparison: Comparison, metric: str, path: Path) -> None:
    """Table size against `metric` for every compared output, the Pareto frontier drawn through
    the outputs no other beats on both."""
    figure = Figure(figsize=(8, 5.5), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    sizes = np.array([row.sizes["table bytes"] for row in comparison.rows]) / 1e6
    values = np.array([row.metrics[metric] for row in comparison.rows])
    front = sorted(pareto(comparison, metric), key=lambda i: sizes[i])
    peers = np.array([row.peer for row in comparison.rows], bool)
    ax.scatter(sizes[~peers], values[~peers], color="tab:blue", zorder=3, label="edgeemb recipes")
    if peers.any():
        ax.scatter(sizes[peers], values[peers], color="tab:orange", marker="s", zorder=3, label="peers' methods")
    ax.plot(sizes[front], values[front], color="tab:red", linestyle="--", zorder=2, label="Pareto frontier")
    # Neighbours (close in size and value) get their labels on alternate sides, so they stay legible.
    span = float(np.ptp(values)) or 1.0
    below, previous = False, None
    for i in np.argsort(sizes):
        close = (
            previous is not None
            and abs(np.log(sizes[i] / sizes[previous])) < 0.15
            and abs(values[i] - values[previous]) < 0.05 * span
        )
        below = not below if close else False
        ax.annotate(
            comparison.rows[i].label,
            (sizes[i], values[i]),
            textcoords="offset points",
            xytext=(4, -11 if below else 4),
            fontsize=8,
        )
        previous = i
    ax.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel("embedding table (MB, log scale)")
    better = "higher" if comparison.higher_is_better(metric) else "lower"
    ax.set_ylabel(f"{metric} ({better} is better)")
    ax.set_title(f"Size against {metric}")
    ax.legend(fontsize=8)
    _save_atomic(figure, Path(path))


def _save_atomic(figure: Figure, path: Path, force: bool = True) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see a partial PNG."""
    with staged(path, force) as temporary:
        figure.savefig(temporary, format="png", dpi=110, metadata=png_metadata())
