"""Statistics of an embedding table, behind `edgeemb inspect`.

Everything here reads the table in chunks of rows (float16 input is widened per chunk, never as
a whole) and samples rows where an exact answer would cost a pass per row. Every sample is drawn
from `seed`, each statistic from its own spawned stream, so changing one sample size leaves the
others' rows unchanged. `dataclasses.asdict` of a `TableAnalysis` is its JSON.

Cosine with a zero row is defined as 0 throughout (its normalised row is the zero vector).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from edgeemb.errors import EdgeembError
from edgeemb.progress import track
from edgeemb.rows import unit_rows
from edgeemb.spectrum import centred_gram, descending_eigh, energy_rank

ENERGY_LEVELS = ("0.90", "0.95", "0.99")
# Modified z-score (log norm - median) / (1.4826 * MAD). At 5, a Gaussian table would flag
# ~6e-7 of its rows (< 1 expected false flag at 262144 rows), while a row shrunk or blown up by a
# factor e^(5 * spread) stands out. Log norms because norm deviations are multiplicative
# (untrained rows shrink under weight decay): a row 2.5x short is as odd as one 2.5x long.
OUTLIER_Z = 5.0
# Floor on the robust spread of log norms: a table whose rows all have (almost) the same norm, e.g.
# normalised rows, would otherwise flag float noise. Rows within ~5% of the median norm never count.
_MIN_LOG_SPREAD = 0.01
DUPLICATE_COSINE = 0.99
_MAX_EXAMPLES = 20
_CHUNK_ROWS = 16384
_NORM_PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
_NORM_BINS = 80


@dataclass(frozen=True)
class Spectrum:
    singular_values: list[float]  # of the mean-centred table, descending
    energy_rank: dict[str, int]  # "0.90" -> smallest rank whose squared singular values reach 90%
    centered: bool
    method: str  # "gram": exact, from the float64 Gram matrix of all rows; "row-sample": see below
    rows_used: int  # with "row-sample", values are rescaled by sqrt(rows / rows_used)


@dataclass(frozen=True)
class DimensionVariance:
    variance: list[float]  # per dimension, in dimension order
    min: float
    median: float
    max: float
    max_min_ratio: float | None  # None when some dimension is constant
    dims_for_half: int  # fewest dimensions holding 50% of the total variance


@dataclass(frozen=True)
class Anisotropy:
    mean_pair_cosine: float  # over random pairs of distinct rows; ~0 isotropic, ~1 one shared direction
    pairs: int
    mean_norm_ratio: float  # ||mean row|| / mean ||row||


@dataclass(frozen=True)
class Hubness:
    k: int
    sample: int
    k_occurrence: list[int]  # N_k of each sampled row: how many sampled rows list it among their k NN
    skewness: float  # > ~1: a few hub rows are everyone's neighbour
    max_k_occurrence: int
    antihub_fraction: float  # rows that are nobody's neighbour (N_k = 0)


@dataclass(frozen=True)
class RowExample:
    id: int
    token: str | None
    norm: float


@dataclass(frozen=True)
class RowNorms:
    mean: float
    std: float
    percentiles: dict[str, float]  # "p1" ... "p99"
    histogram_counts: list[int]
    histogram_edges: list[float]
    outlier_z: float  # |robust z of log norm| above this flags a row as untrained-looking
    outlier_low: float  # the norms where |z| = outlier_z: rows outside [low, high] are outliers
    outlier_high: float
    outlier_count: int
    outlier_low_count: int
    outlier_high_count: int
    outlier_examples: list[RowExample]  # most extreme first


@dataclass(frozen=True)
class NearDuplicate:
    id: int
    token: str | None
    neighbor_id: int
    neighbor_token: str | None
    cosine: float


@dataclass(frozen=True)
class NearDuplicates:
    threshold: float
    sample: int  # sampled rows, each compared with every other row of the table
    fraction: float  # of sampled rows whose nearest other row has cosine > threshold
    estimated_count: int  # fraction * rows
    nearest_cosine_median: float
    examples: list[NearDuplicate]  # highest cosine first


@dataclass(frozen=True)
class TableAnalysis:
    rows: int
    dim: int
    seed: int
    spectrum: Spectrum
    variance: DimensionVariance
    anisotropy: Anisotropy
    hubness: Hubness
    norms: RowNorms
    near_duplicates: NearDuplicates


def analyze_table(
    weight: np.ndarray,
    tokens: list[str] | None = None,
    *,
    seed: int = 0,
    sample: int = 2000,
    k: int = 10,
    pairs: int = 20000,
    duplicate_sample: int = 1000,
    spectrum_max_rows: int = 300_000,
) -> TableAnalysis:
    """All statistics of a (rows, dim) float table; `tokens[i]` is token i's text, if known.

    `sample` rows for hubness, `pairs` row pairs for anisotropy, `duplicate_sample` rows searched
    against the full table for near-duplicates; tables taller than `spectrum_max_rows` get their
    spectrum from that many sampled rows instead of all of them.
    """
    if weight.ndim != 2 or weight.shape[0] < 2 or weight.shape[1] < 1 or not np.issubdtype(weight.dtype, np.floating):
        raise EdgeembError(f"analysis needs a 2-D float table of at least 2 rows, got {weight.dtype} {weight.shape}")
    spectrum_rng, pair_rng, hub_rng, dup_rng = np.random.default_rng(seed).spawn(4)
    rows, dim = weight.shape
    norms, mean = _norms_and_mean(weight)
    spectrum, variance = _spectrum(weight, mean, spectrum_max_rows, spectrum_rng)
    return TableAnalysis(
        rows=rows,
        dim=dim,
        seed=seed,
        spectrum=spectrum,
        variance=variance,
        anisotropy=_anisotropy(weight, norms, mean, pairs, pair_rng),
        hubness=_hubness(weight, sample, k, hub_rng),
        norms=_row_norms(norms, tokens),
        near_duplicates=_near_duplicates(weight, norms, tokens, duplicate_sample, dup_rng),
    )


def row_norms(weight: np.ndarray) -> np.ndarray:
    """Euclidean norm of every row, float64 (chunked: no full-size temporary)."""
    return _norms_and_mean(weight)[0]


def norm_outlier_z(norms: np.ndarray) -> np.ndarray:
    """Robust z-score of each row's log norm (median/MAD); zero rows get a large negative z."""
    logs, center, spread = _log_norm_scale(norms)
    return (logs - center) / spread


def _log_norm_scale(norms: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Log norms, their median and their robust spread (1.4826 MAD, floored)."""
    logs = np.log(np.maximum(norms, np.finfo(np.float32).tiny))
    center = float(np.median(logs))
    spread = max(1.4826 * float(np.median(np.abs(logs - center))), _MIN_LOG_SPREAD)
    return logs, center, spread


def _chunks(weight: np.ndarray, description: str) -> Iterator[tuple[int, np.ndarray]]:
    """(start, float32 rows) over the table."""
    starts = range(0, weight.shape[0], _CHUNK_ROWS)
    for start in track(starts, description, len(starts)):
        yield start, weight[start : start + _CHUNK_ROWS].astype(np.float32, copy=False)


def _norms_and_mean(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    norms = np.empty(weight.shape[0])
    total = np.zeros(weight.shape[1])
    for start, chunk in _chunks(weight, "row norms"):
        norms[start : start + len(chunk)] = np.sqrt(np.einsum("ij,ij->i", chunk, chunk, dtype=np.float64))
        total += chunk.sum(axis=0, dtype=np.float64)
    mean = total / weight.shape[0]
    # A NaN or inf anywhere reaches its row's norm: no separate scan of the table.
    if not np.all(np.isfinite(norms)):
        raise EdgeembError("the table holds NaN or infinite values")
    return norms, mean


def _sample_ids(rows: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted distinct row ids (all rows if size >= rows); sorted for cache-friendly gathers."""
    if size >= rows:
        return np.arange(rows)
    return np.sort(rng.choice(rows, size=size, replace=False))


def _spectrum(
    weight: np.ndarray, mean: np.ndarray, max_rows: int, rng: np.random.Generator
) -> tuple[Spectrum, DimensionVariance]:
    rows, dim = weight.shape
    ids = _sample_ids(rows, max_rows, rng)
    method = "gram" if len(ids) == rows else "row-sample"
    source = weight if method == "gram" else weight[ids]
    gram = centred_gram(source, mean, "spectrum")
    gram *= rows / len(ids)  # a sample's Gram, scaled to estimate the full table's
    eigenvalues = descending_eigh(gram)[0]
    ranks = {level: energy_rank(eigenvalues, float(level)) for level in ENERGY_LEVELS}
    spectrum = Spectrum(np.sqrt(eigenvalues).tolist(), ranks, True, method, len(ids))

    variance = np.clip(np.diag(gram), 0.0, None) / rows
    by_size = np.sort(variance)[::-1]
    low = float(by_size[-1])
    summary = DimensionVariance(
        variance=variance.tolist(),
        min=low,
        median=float(np.median(variance)),
        max=float(by_size[0]),
        max_min_ratio=float(by_size[0] / low) if low > 0 else None,
        dims_for_half=int(np.searchsorted(np.cumsum(by_size), 0.5 * by_size.sum()) + 1),
    )
    return spectrum, summary


def _anisotropy(
    weight: np.ndarray, norms: np.ndarray, mean: np.ndarray, pairs: int, rng: np.random.Generator
) -> Anisotropy:
    rows = weight.shape[0]
    first = rng.integers(0, rows, pairs)
    # Draw the partner from the other rows-1 ids, so no pair is a row with itself.
    second = rng.integers(0, rows - 1, pairs)
    second += second >= first
    a = unit_rows(weight[first].astype(np.float32))
    b = unit_rows(weight[second].astype(np.float32))
    mean_norm = float(norms.mean())
    return Anisotropy(
        mean_pair_cosine=float(np.einsum("ij,ij->i", a, b, dtype=np.float64).mean()),
        pairs=pairs,
        mean_norm_ratio=float(np.linalg.norm(mean) / mean_norm) if mean_norm > 0 else 0.0,
    )


def _hubness(weight: np.ndarray, sample: int, k: int, rng: np.random.Generator) -> Hubness:
    from scipy.stats import skew  # scipy.stats takes ~0.7 s to import: loaded only when a table is analysed

    ids = _sample_ids(weight.shape[0], sample, rng)
    n = len(ids)
    k = min(k, n - 1)
    unit = unit_rows(weight[ids].astype(np.float32))
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    neighbours = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    occurrence = np.bincount(neighbours.ravel(), minlength=n)
    skewness = float(skew(occurrence)) if occurrence.std() > 0 else 0.0
    return Hubness(
        k=k,
        sample=n,
        k_occurrence=occurrence.tolist(),
        skewness=skewness,
        max_k_occurrence=int(occurrence.max()),
        antihub_fraction=float(np.mean(occurrence == 0)),
    )


def _token(tokens: list[str] | None, i: int) -> str | None:
    # Vocabularies and tables can differ in length (padded tables, added tokens).
    return tokens[i] if tokens is not None and i < len(tokens) else None


def _row_norms(norms: np.ndarray, tokens: list[str] | None) -> RowNorms:
    logs, center, spread = _log_norm_scale(norms)
    z = (logs - center) / spread
    flagged = np.flatnonzero(np.abs(z) > OUTLIER_Z)
    extreme_first = flagged[np.argsort(-np.abs(z[flagged]), kind="stable")][:_MAX_EXAMPLES]
    counts, edges = np.histogram(norms, bins=_NORM_BINS)
    return RowNorms(
        mean=float(norms.mean()),
        std=float(norms.std()),
        percentiles={f"p{p}": float(v) for p, v in zip(_NORM_PERCENTILES, np.percentile(norms, _NORM_PERCENTILES))},
        histogram_counts=counts.tolist(),
        histogram_edges=edges.tolist(),
        outlier_z=OUTLIER_Z,
        outlier_low=float(np.exp(center - OUTLIER_Z * spread)),
        outlier_high=float(np.exp(center + OUTLIER_Z * spread)),
        outlier_count=len(flagged),
        outlier_low_count=int(np.sum(z[flagged] < 0)),
        outlier_high_count=int(np.sum(z[flagged] > 0)),
        outlier_examples=[RowExample(int(i), _token(tokens, int(i)), float(norms[i])) for i in extreme_first],
    )


def _near_duplicates(
    weight: np.ndarray, norms: np.ndarray, tokens: list[str] | None, sample: int, rng: np.random.Generator
) -> NearDuplicates:
    rows = weight.shape[0]
    ids = _sample_ids(rows, sample, rng)
    queries = unit_rows(weight[ids].astype(np.float32))
    best = np.full(len(ids), -np.inf, dtype=np.float32)
    best_id = np.zeros(len(ids), dtype=np.int64)
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0).astype(np.float32)
    for start, chunk in _chunks(weight, "near-duplicates"):
        sims = queries @ chunk.T
        sims *= scale[start : start + len(chunk)]
        inside = np.flatnonzero((ids >= start) & (ids < start + len(chunk)))
        sims[inside, ids[inside] - start] = -np.inf  # not the row itself
        top = sims.argmax(axis=1)
        top_sim = sims[np.arange(len(ids)), top]
        better = top_sim > best
        best[better] = top_sim[better]
        best_id[better] = top[better] + start
    hits = np.flatnonzero(best > DUPLICATE_COSINE)
    hits = hits[np.argsort(-best[hits], kind="stable")][:_MAX_EXAMPLES]
    fraction = float(np.mean(best > DUPLICATE_COSINE))
    return NearDuplicates(
        threshold=DUPLICATE_COSINE,
        sample=len(ids),
        fraction=fraction,
        estimated_count=int(round(fraction * rows)),
        nearest_cosine_median=float(np.median(best)),
        examples=[
            NearDuplicate(
                int(ids[q]),
                _token(tokens, int(ids[q])),
                int(best_id[q]),
                _token(tokens, int(best_id[q])),
                float(best[q]),
            )
            for q in hits
        ],
    )
