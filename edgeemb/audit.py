"""The rare-token audit behind `edgeemb inspect --corpus`: a corpus's token frequency against the
table's rows, and what compression does to each frequency band.

The rows the corpus uses are split by how much of its text they carry: *frequent*, the most
frequent rows covering 50% of the corpus tokens; *mid*, those covering the next 40% (to 90%);
*rare*, the rest it uses; *unused*, rows it never uses. A band's edge is a count, so rows tied at
the boundary row's count all go to the more frequent band: a row's band depends on its count
alone, never on its id. The tokenizer's unknown token is counted apart (it stands for the text
the tokenizer could not read, not for a word of the corpus).

A row looks undertrained when its log norm is a low-side outlier by `edgeemb.analysis`'s robust
test (the thresholds `inspect` reports), or when it has few neighbours: the mean cosine to its k
nearest rows is a low-side outlier, by the same robust z-score, against a seeded sample of the
table's rows. Neighbours are searched over the whole table for at most `sample` rows per band (a
seeded sample where a band is larger; each band says how many), so only those rows can be
flagged for having few neighbours. `dataclasses.asdict` of a `CorpusAudit` is its JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeemb.analysis import OUTLIER_Z, norm_outlier_z, row_norms
from edgeemb.artifact import load_artifact
from edgeemb.errors import EdgeembError
from edgeemb.progress import track
from edgeemb.rows import unit_rows
from edgeemb.sources import SourceModel
from edgeemb.steps.trim import corpus_lines, token_counts
from edgeemb.table import EmbeddingTable, TrimmedTable

BANDS = ("frequent", "mid", "rare", "unused")
BAND_EDGES_PERCENT = (50, 90)  # cumulative share of corpus tokens where frequent and mid end
_UNUSED = len(BANDS) - 1
# Floor on the robust spread of neighbour cosines, as analysis floors that of log norms: a table
# whose rows all have (almost) the same neighbourhood would otherwise flag float noise.
_MIN_COSINE_SPREAD = 0.01
_MAX_LISTED = 50
_CHUNK_ROWS = 16384
_QUERY_BLOCK = 1024


@dataclass(frozen=True)
class Band:
    name: str
    rows: int
    tokens: int  # corpus tokens on the band's rows
    token_share: float
    count_min: int  # fewest and most corpus tokens of one of its rows
    count_max: int
    median_norm: float | None  # None for an empty band
    neighbour_cosine: float | None  # mean over the searched rows of the mean cosine to their k nearest rows
    neighbour_rows: int  # rows searched: all the band's, or a seeded sample of `sample`


@dataclass(frozen=True)
class UndertrainedRow:
    id: int
    token: str | None
    count: int  # corpus tokens on the row
    norm: float
    norm_z: float  # robust z of the log norm; low norm below -outlier_z
    neighbour_cosine: float | None  # None when the row's neighbours were not searched
    low_norm: bool
    few_neighbours: bool


@dataclass(frozen=True)
class BandError:
    band: str
    rows: int  # rows compared: the band's, or for a trimmed vocabulary the ones the trim kept
    relative_error: float | None  # ||W_b - W'_b||_F / ||W_b||_F over the compared rows; None if none
    row_cosine_mean: float | None
    dropped_rows: int | None  # trimmed vocabulary: the band's rows the trim dropped; else None
    dropped_token_share: float | None  # their share of the band's corpus tokens (None for unused rows)


@dataclass(frozen=True)
class CompressedAudit:
    path: str
    recipe: str
    storage: str
    # Relative error of the rows as the corpus's text meets them: each kept row weighted by its count.
    corpus_relative_error: float
    bands: list[BandError]


@dataclass(frozen=True)
class CorpusAudit:
    corpus: list[str]
    lines: int
    tokens: int  # corpus tokens on rows of the table, the unknown token's not included
    unknown_tokens: int  # the tokenizer's unknown token, and ids past the table's rows
    distinct_rows: int
    rows: int
    band_edges: list[float]  # cumulative token shares where frequent and mid end
    k: int
    seed: int
    sample: int  # most rows per band whose neighbours are searched
    outlier_z: float
    neighbour_cosine_low: float  # few neighbours: a mean k-NN cosine below this
    neighbour_reference_rows: int  # the seeded table sample the neighbour threshold comes from
    bands: list[Band]
    undertrained_count: int
    undertrained: list[UndertrainedRow]  # the first 50, most frequent first
    compressed: list[CompressedAudit]


def audit_corpus(
    source: SourceModel,
    corpus: Sequence[Path],
    compressed: Sequence[Path] = (),
    *,
    k: int = 10,
    sample: int = 2000,
    seed: int = 0,
) -> CorpusAudit:
    """Audit `source`'s table against `corpus` (plain-text files, a line per text, or BEIR
    folders), and each `compressed` output folder's table against the source's rows."""
    if k < 1 or sample < 1:
        raise EdgeembError(f"inspect --corpus: k and sample are at least 1 (got k={k}, sample={sample})")
    outputs = [_compressed_table(Path(out), source) for out in compressed]  # refuse bad outputs before the work
    if source.tokenize is None:
        raise EdgeembError(f"inspect --corpus: {source.name} has no tokenizer edgeemb reads")
    paths = tuple(Path(p) for p in corpus)
    lines = corpus_lines(paths, "inspect --corpus")
    weight = source.table.weight
    rows = weight.shape[0]
    all_counts = token_counts(source.tokenize, lines, rows)
    counts = all_counts[:rows].copy()
    unknown = _unknown_id(source)
    if unknown is not None and unknown < rows:
        counts[unknown] = 0
    total = int(counts.sum())
    if total == 0:
        raise EdgeembError(
            f"inspect --corpus: the corpus ({', '.join(map(str, paths))}) has no token the table has a row for "
            f"({int(all_counts.sum())} tokens, all unknown)"
        )
    k = max(1, min(k, rows - 1))
    band = frequency_bands(counts)
    norms = row_norms(weight)
    norm_z = norm_outlier_z(norms)
    reference_rng, *band_rngs = np.random.default_rng(seed).spawn(1 + len(BANDS))
    reference = _sample(np.arange(rows), sample, reference_rng)
    reference_cosine = nearest_cosines(weight, reference, k)
    neighbour_low = _low_bound(reference_cosine)
    searched = np.full(rows, np.nan)  # mean k-NN cosine of the rows whose neighbours were searched
    bands = []
    for index, (name, rng) in enumerate(zip(BANDS, band_rngs)):
        members = np.flatnonzero(band == index)
        chosen = _sample(members, sample, rng)
        searched[chosen] = nearest_cosines(weight, chosen, k)
        tokens = int(counts[members].sum())
        bands.append(
            Band(
                name=name,
                rows=len(members),
                tokens=tokens,
                token_share=tokens / total,
                count_min=int(counts[members].min()) if len(members) else 0,
                count_max=int(counts[members].max()) if len(members) else 0,
                median_norm=float(np.median(norms[members])) if len(members) else None,
                neighbour_cosine=float(searched[chosen].mean()) if len(chosen) else None,
                neighbour_rows=len(chosen),
            )
        )
    low_norm = norm_z < -OUTLIER_Z
    few_neighbours = searched < neighbour_low  # NaN (not searched) compares False
    flagged = np.flatnonzero((counts > 0) & (low_norm | few_neighbours))
    flagged = flagged[np.argsort(-counts[flagged], kind="stable")]
    return CorpusAudit(
        corpus=[str(p) for p in paths],
        lines=len(lines),
        tokens=total,
        unknown_tokens=int(all_counts.sum()) - total,
        distinct_rows=int((counts > 0).sum()),
        rows=rows,
        band_edges=[percent / 100 for percent in BAND_EDGES_PERCENT],
        k=k,
        seed=seed,
        sample=sample,
        outlier_z=OUTLIER_Z,
        neighbour_cosine_low=neighbour_low,
        neighbour_reference_rows=len(reference),
        bands=bands,
        undertrained_count=len(flagged),
        undertrained=[
            UndertrainedRow(
                id=int(i),
                token=source.tokens[i] if source.tokens is not None and i < len(source.tokens) else None,
                count=int(counts[i]),
                norm=float(norms[i]),
                norm_z=float(norm_z[i]),
                neighbour_cosine=None if np.isnan(searched[i]) else float(searched[i]),
                low_norm=bool(low_norm[i]),
                few_neighbours=bool(few_neighbours[i]),
            )
            for i in flagged[:_MAX_LISTED]
        ],
        compressed=[_band_errors(weight, counts, band, out, recipe, table) for out, recipe, table in outputs],
    )


def frequency_bands(counts: np.ndarray) -> np.ndarray:
    """Each row's band (an index into BANDS) from its corpus count (see the module's docstring)."""
    counts = np.asarray(counts, np.int64)
    ordered = np.sort(counts)[::-1]
    reached = 100 * np.cumsum(ordered)  # integers: no rounding at an exact 50% or 90%
    edges = np.searchsorted(reached, np.array(BAND_EDGES_PERCENT) * int(ordered.sum()))
    thresholds = ordered[edges]  # the count of the row whose tokens reach each edge
    band = (counts[:, None] < thresholds[None, :]).sum(axis=1)
    band[counts == 0] = _UNUSED
    return band


def nearest_cosines(weight: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """For each row in `ids`, the mean cosine to its k nearest other rows of the whole table."""
    result = np.empty(len(ids))
    chunks = range(0, weight.shape[0], _CHUNK_ROWS)
    for block in track(range(0, len(ids), _QUERY_BLOCK), "nearest rows", -(-len(ids) // _QUERY_BLOCK)):
        queries = ids[block : block + _QUERY_BLOCK]
        unit = unit_rows(weight[queries].astype(np.float32))
        best = np.full((len(queries), k), -np.inf, np.float32)
        for start in chunks:
            sims = unit @ unit_rows(weight[start : start + _CHUNK_ROWS].astype(np.float32)).T
            inside = np.flatnonzero((queries >= start) & (queries < start + sims.shape[1]))
            sims[inside, queries[inside] - start] = -np.inf  # not the row itself
            merged = np.concatenate([best, sims], axis=1)
            best = np.partition(merged, merged.shape[1] - k, axis=1)[:, -k:]
        result[block : block + len(queries)] = best.mean(axis=1, dtype=np.float64)
    return result


def _low_bound(cosines: np.ndarray) -> float:
    """The low-side outlier bound of the table sample's mean k-NN cosines (median - z * robust spread)."""
    center = float(np.median(cosines))
    spread = max(1.4826 * float(np.median(np.abs(cosines - center))), _MIN_COSINE_SPREAD)
    return center - OUTLIER_Z * spread


def _sample(ids: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    return ids if len(ids) <= size else np.sort(rng.choice(ids, size=size, replace=False))


def _unknown_id(source: SourceModel) -> int | None:
    return None if source.vocabulary is None else source.vocabulary().special.get("unk")


def _compressed_table(out: Path, source: SourceModel) -> tuple[Path, str, EmbeddingTable]:
    """OUT/'s table, if OUT/ was compressed from `source` and holds its rows compressed."""
    from edgeemb.pipeline import artifact_recipe  # the pipeline is the heaviest import: only for --compressed

    artifact = load_artifact(out)
    recorded = artifact.manifest.source
    if recorded.sha256 != source.sha256:
        raise EdgeembError(
            f"{out}: compressed from {recorded.name} ({recorded.sha256[:12]}), not {source.name} "
            f"({source.sha256[:12]}); audit it against its own model"
        )
    recipe = artifact_recipe(artifact)
    if recipe.replaces_model:
        raise EdgeembError(f"{out}: recipe {recipe.name} replaces the model, so its rows are not {source.name}'s")
    table = artifact.table
    rows, dim = source.table.shape
    keep = table.keep if isinstance(table, TrimmedTable) else None
    fits = table.shape[1] == dim and (
        table.shape[0] == rows
        if keep is None
        else bool(len(keep) == 0 or (keep.min() >= 0 and keep.max() < rows and np.all(np.diff(keep) > 0)))
    )
    if not fits:
        raise EdgeembError(
            f"{out}: its table ({table.shape[0]} x {table.shape[1]}) does not hold {source.name}'s rows "
            f"({rows} x {dim}); rerun edgeemb compress"
        )
    return out, recipe.name, table


def _band_errors(
    weight: np.ndarray, counts: np.ndarray, band: np.ndarray, out: Path, recipe: str, table: EmbeddingTable
) -> CompressedAudit:
    rows = weight.shape[0]
    source_ids = table.keep.astype(np.int64) if isinstance(table, TrimmedTable) else np.arange(rows)
    error_sq = np.zeros(rows)
    reference_sq = np.zeros(rows)
    cosine = np.zeros(rows)
    kept = np.zeros(rows, bool)
    kept[source_ids] = True
    starts = range(0, len(source_ids), _CHUNK_ROWS)
    for start in track(starts, f"rows of {out.name}", len(starts)):
        ids = source_ids[start : start + _CHUNK_ROWS]
        before = weight[ids].astype(np.float32)
        after = table.lookup(np.arange(start, start + len(ids)))
        error_sq[ids] = np.einsum("ij,ij->i", before - after, before - after, dtype=np.float64)
        reference_sq[ids] = np.einsum("ij,ij->i", before, before, dtype=np.float64)
        cosine[ids] = np.einsum("ij,ij->i", unit_rows(before), unit_rows(after), dtype=np.float64)
        cosine[ids[~before.any(axis=1) & ~after.any(axis=1)]] = 1.0  # a zero row kept exactly
    trimmed = isinstance(table, TrimmedTable)
    bands = []
    for index, name in enumerate(BANDS):
        members = band == index
        compared = members & kept
        dropped = members & ~kept
        band_tokens = int(counts[members].sum())
        bands.append(
            BandError(
                band=name,
                rows=int(compared.sum()),
                relative_error=_relative(error_sq[compared].sum(), reference_sq[compared].sum())
                if compared.any()
                else None,
                row_cosine_mean=float(cosine[compared].mean()) if compared.any() else None,
                dropped_rows=int(dropped.sum()) if trimmed else None,
                dropped_token_share=int(counts[dropped].sum()) / band_tokens if trimmed and band_tokens else None,
            )
        )
    return CompressedAudit(
        path=str(out),
        recipe=recipe,
        storage=table.describe(),
        corpus_relative_error=_relative((counts * error_sq)[kept].sum(), (counts * reference_sq)[kept].sum()),
        bands=bands,
    )


def _relative(error_sq: float, reference_sq: float) -> float:
    # All-zero reference rows: the absolute error (nothing to divide by), as table quality does.
    return float(np.sqrt(error_sq / reference_sq)) if reference_sq > 0 else float(np.sqrt(error_sq))
