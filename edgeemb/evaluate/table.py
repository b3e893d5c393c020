"""Table-level quality of a compressed table against the original: no data needed.

One chunked pass over token ids decodes the compressed table a chunk at a time, so a 262144-row
table never has a second full dense copy. `dataclasses.asdict` of a `TableQuality` is its JSON.

Cosine conventions (never NaN): between an original row and its reconstruction, two zero rows
have cosine 1 (reconstructed exactly) and a zero row against a non-zero row has cosine 0. In the
nearest-neighbour search a zero row has cosine 0 with every row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeemb.errors import EdgeembError
from edgeemb.progress import track
from edgeemb.rows import unit_rows
from edgeemb.table import EmbeddingTable

_CHUNK_ROWS = 16384


@dataclass(frozen=True)
class TableQuality:
    rows: int
    dim: int
    relative_error: float  # ||W - W'||_F / ||W||_F
    row_cosine_mean: float  # cosine between each original row and its reconstruction
    row_cosine_p1: float
    row_cosine_min: float
    worst_row_id: int  # the row with the lowest cosine
    nn_queries: int
    k: int
    nn_overlap_mean: float  # |top-k(W) & top-k(W')| / k, averaged over the sampled query rows
    nn_overlap_min: float


def table_quality(
    original: np.ndarray, compressed: EmbeddingTable, *, nn_queries: int = 500, k: int = 10, seed: int = 0
) -> TableQuality:
    """Reconstruction error, row cosines and top-k cosine neighbour overlap of `compressed` vs `original`.

    Neighbours of `nn_queries` sampled rows are searched over the whole table (excluding the row
    itself): in the original among original rows, in the reconstruction among reconstructed rows.
    """
    if original.ndim != 2 or tuple(original.shape) != tuple(compressed.shape):
        raise EdgeembError(f"table shapes differ: original {original.shape}, compressed {compressed.shape}")
    rows, dim = original.shape
    if rows < 2:
        raise EdgeembError("table quality needs at least 2 rows")
    k = min(k, rows - 1)
    queries = np.sort(np.random.default_rng(seed).choice(rows, size=min(nn_queries, rows), replace=False))
    original_queries = unit_rows(original[queries].astype(np.float32))
    compressed_queries = unit_rows(compressed.lookup(queries))
    original_top = _TopK(len(queries), k)
    compressed_top = _TopK(len(queries), k)

    error_sq = reference_sq = 0.0
    cosines = np.empty(rows)
    starts = range(0, rows, _CHUNK_ROWS)
    for start in track(starts, "table quality", len(starts)):
        ids = np.arange(start, min(start + _CHUNK_ROWS, rows))
        before = original[start : start + len(ids)].astype(np.float32, copy=False)
        after = compressed.lookup(ids)
        error_sq += float(np.sum(np.square(before - after), dtype=np.float64))
        reference_sq += float(np.einsum("ij,ij->", before, before, dtype=np.float64))
        cosines[start : start + len(ids)] = _row_cosines(before, after)
        original_top.update(original_queries, queries, unit_rows(before), start)
        compressed_top.update(compressed_queries, queries, unit_rows(after), start)

    overlap = original_top.overlap(compressed_top)
    worst = int(np.argmin(cosines))
    return TableQuality(
        rows=rows,
        dim=dim,
        # An all-zero original: 0 if reproduced exactly, else the absolute error (nothing to divide by).
        relative_error=float(np.sqrt(error_sq / reference_sq)) if reference_sq > 0 else float(np.sqrt(error_sq)),
        row_cosine_mean=float(cosines.mean()),
        row_cosine_p1=float(np.percentile(cosines, 1)),
        row_cosine_min=float(cosines[worst]),
        worst_row_id=worst,
        nn_queries=len(queries),
        k=k,
        nn_overlap_mean=float(overlap.mean()),
        nn_overlap_min=float(overlap.min()),
    )


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    dots = np.einsum("ij,ij->i", a, b, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", a, a, dtype=np.float64) * np.einsum("ij,ij->i", b, b, dtype=np.float64))
    both_zero = ~a.any(axis=1) & ~b.any(axis=1)
    cosines = np.divide(dots, norms, out=np.where(both_zero, 1.0, 0.0), where=norms > 0)
    return np.clip(cosines, -1.0, 1.0)  # rounding can step just past 1


class _TopK:
    """The k most cosine-similar rows of each query, merged chunk by chunk."""

    def __init__(self, queries: int, k: int) -> None:
        self.k = k
        self.sims = np.full((queries, k), -np.inf, dtype=np.float32)
        self.ids = np.full((queries, k), -1, dtype=np.int64)

    def update(self, unit_queries: np.ndarray, query_ids: np.ndarray, unit_chunk: np.ndarray, start: int) -> None:
        sims = unit_queries @ unit_chunk.T
        inside = np.flatnonzero((query_ids >= start) & (query_ids < start + len(unit_chunk)))
        sims[inside, query_ids[inside] - start] = -np.inf  # not the row itself
        # This chunk's best k, then the best k of those and the running top k.
        take = min(self.k, sims.shape[1])
        top = np.argpartition(sims, sims.shape[1] - take, axis=1)[:, -take:]
        sims = np.concatenate([self.sims, np.take_along_axis(sims, top, axis=1)], axis=1)
        ids = np.concatenate([self.ids, top + start], axis=1)
        keep = np.argpartition(sims, sims.shape[1] - self.k, axis=1)[:, -self.k :]
        self.sims = np.take_along_axis(sims, keep, axis=1)
        self.ids = np.take_along_axis(ids, keep, axis=1)

    def overlap(self, other: _TopK) -> np.ndarray:
        """Per query, the fraction of neighbours both searches found."""
        # Each side's ids are distinct, so an id found by both appears as an adjacent equal pair.
        merged = np.sort(np.concatenate([self.ids, other.ids], axis=1), axis=1)
        return (merged[:, 1:] == merged[:, :-1]).sum(axis=1) / self.k
