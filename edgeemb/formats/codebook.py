"""Codebook formats: rows point into centres learnt from the whole table.

- `pq` (product quantisation): a row of width d is cut into `subspaces` contiguous sub-vectors of
  d / subspaces values; each sub-space has its own codebook of `centroids` centres and a row stores
  one uint8 code per sub-space. Per-row `codes` (n, subspaces) uint8; shared `codebooks`
  (subspaces, centroids, d / subspaces) float16.
- `vocab_kmeans` (vocabulary quantisation, as model2vec does, plus a per-row scale): spherical
  k-means on the unit rows; a row stores its cluster index and the fp16 scale that projects it on
  its centroid. Per-row `codes` (n,) uint8/uint16 and `scales` (n,) float16; shared `centroids`
  (clusters, d) float16.

Both learn with k-means on a seeded sample of rows: k-means++ seeding from a pool of that sample,
then a fixed number of Lloyd iterations. Every row is then assigned in chunks, the distances to all
centres coming from a matmul (||c||^2 - 2 x.c; ||x||^2 does not change the nearest centre), all in
float32. PQ runs the k-means of all sub-spaces together as groups, shared out to one thread per CPU;
vocab k-means is the one-group case, one wide matmul that BLAS spreads over the CPUs. Rows are
assigned against the stored (fp16-rounded) centres, so the codes fit what is decoded.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.sparse
from pydantic import NonNegativeInt, PositiveInt
from threadpoolctl import threadpool_limits

from edgeemb.errors import EdgeembError
from edgeemb.formats.base import Arrays, QuantFormat
from edgeemb.onnxgraph import OnnxGraph
from edgeemb.progress import track
from edgeemb.rows import unit_rows

_CHUNK_ENTRIES = 1 << 22  # distances per wide matmul (16 MB): bounded temporaries
_ASSIGN_ROWS = 16384  # rows converted and split per assignment step
_POOL_PER_CENTRE = 8  # k-means++ seeds from the first 8 * k sampled rows (bounded cost)
_SEED_ROUNDS = 64  # k-means++ picks k / 64 centres per distance update (1 per update for k <= 64)


@dataclass(frozen=True)
class _Codebook(QuantFormat):
    """Formats whose centres are learnt from the rows: `quantize` takes the whole table."""

    def quantize_table(self, weight: np.ndarray) -> Arrays:
        return self.quantize(weight)


@dataclass(frozen=True)
class PQ(_Codebook, name="pq", onnx="two Gathers"):
    shared: ClassVar[frozenset[str]] = frozenset({"codebooks"})
    subspaces: int = 48
    centroids: int = 256
    seed: NonNegativeInt = 0
    # Measured on MiniLM: 8192 rows x 8 iterations is ~5x faster than 32768 x 12 for 1-2% more error.
    train_rows: PositiveInt = 8192
    iterations: NonNegativeInt = 8

    def check_width(self, dim: int) -> None:
        if self.subspaces < 1 or dim % self.subspaces:
            raise EdgeembError(f"pq: {self.subspaces} sub-spaces do not divide the row width {dim}")
        if not 2 <= self.centroids <= 256:
            raise EdgeembError(f"pq: centroids must be between 2 and 256 (uint8 codes), got {self.centroids}")

    def quantize(self, rows: np.ndarray) -> Arrays:
        """Learn the codebooks from `rows` (the whole table) and encode every row."""
        n, dim = rows.shape
        self.check_width(dim)
        rng = np.random.default_rng(self.seed)
        sample = _sample(rows, self.train_rows, self.centroids, rng)
        groups = _split(sample, self.subspaces)
        codebooks = _kmeans(groups, self.centroids, self.iterations, rng, spherical=False, label=self.name).astype(
            np.float16
        )
        codes = np.empty((n, self.subspaces), dtype=np.uint8)
        centres = codebooks.astype(np.float32)
        starts = range(0, n, _ASSIGN_ROWS)
        for start in track(starts, "pq assign", len(starts)):
            chunk = rows[start : start + _ASSIGN_ROWS]
            _nearest(
                chunk.reshape(len(chunk), self.subspaces, -1).transpose(1, 0, 2),
                centres,
                out=codes[start : start + _ASSIGN_ROWS].T,
            )
        return {"codes": codes, "codebooks": codebooks}

    def dequantize(self, arrays: Arrays, dim: int) -> np.ndarray:
        codes = arrays["codes"]
        codebooks = arrays["codebooks"].astype(np.float32)
        subspaces, centroids, width = codebooks.shape
        # One take of whole sub-vectors from the flattened codebooks: several times faster than indexing two axes.
        flat = codes + np.arange(0, subspaces * centroids, centroids)
        return np.take(codebooks.reshape(-1, width), flat, axis=0).reshape(len(codes), dim)

    def layout(self, rows: int, dim: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return {
            "codes": ((rows, self.subspaces), np.dtype(np.uint8)),
            "codebooks": ((self.subspaces, self.centroids, dim // self.subspaces), np.dtype(np.float16)),
        }

    def check_arrays(self, arrays: Arrays, dim: int) -> None:
        super().check_arrays(arrays, dim)
        _check_codes(arrays["codes"], self.centroids, self.name)

    def describe(self) -> str:
        return f"pq, {self.subspaces} sub-spaces x {self.centroids} centroids, fp16 codebooks"

    def onnx_rows(self, graph: OnnxGraph, data: Arrays, dim: int, path: str, ids: str) -> str:
        codebooks = data["codebooks"]
        subspaces, centroids, width = codebooks.shape
        # Sub-space j's code c is row j * centroids + c of the codebooks stacked into one table.
        codes = graph.index(graph.gather(f"{path}.codes", data["codes"], ids))
        offsets = graph.const(f"{path}.offsets", np.arange(subspaces, dtype=np.int64) * centroids)
        flat = graph.const(f"{path}.codebooks", codebooks.reshape(subspaces * centroids, width))
        pieces = graph.op("Gather", [flat, graph.op("Add", [codes, offsets])], axis=0)
        return graph.op("Reshape", [graph.float32(pieces, codebooks.dtype), graph.rows_shape(ids, dim)])


@dataclass(frozen=True)
class VocabKMeans(_Codebook, name="vocab_kmeans", onnx="two Gathers, a Mul"):
    shared: ClassVar[frozenset[str]] = frozenset({"centroids"})
    clusters: int = 4096
    seed: NonNegativeInt = 0
    # None: 16 rows per cluster (65536 for the default 4096 clusters, as before). Measured on Gemma
    # with 1024 clusters: 16 per cluster instead of 65536 rows (64) takes half the CPU time for
    # 1.9% more error (relative error 0.788 -> 0.803).
    train_rows: PositiveInt | None = None
    # Measured on Gemma with 1024 clusters: 8 Lloyd iterations instead of 10 take 9% less time
    # (8.9 s against 9.8 s) for 0.02% more error (relative error 0.8053 -> 0.8055).
    iterations: NonNegativeInt = 8

    def check_width(self, dim: int) -> None:
        if not 2 <= self.clusters <= 65536:
            raise EdgeembError(
                f"vocab_kmeans: clusters must be between 2 and 65536 (uint16 codes), got {self.clusters}"
            )

    def quantize(self, rows: np.ndarray) -> Arrays:
        """Learn the centroids from `rows` (the whole table) and encode every row."""
        n, dim = rows.shape
        self.check_width(dim)
        if self.clusters > n:
            raise EdgeembError(f"vocab_kmeans: {self.clusters} clusters for a table of only {n} rows")
        rng = np.random.default_rng(self.seed)
        sample = unit_rows(_sample(rows, self.train_rows or 16 * self.clusters, self.clusters, rng))
        centroids = _kmeans(sample[None], self.clusters, self.iterations, rng, spherical=True, label=self.name)[
            0
        ].astype(np.float16)
        centres = centroids.astype(np.float32)
        squared = np.einsum("ij,ij->i", centres, centres)
        codes = np.empty(n, dtype=np.uint8 if self.clusters <= 256 else np.uint16)
        scales = np.empty(n, dtype=np.float16)
        starts = range(0, n, _ASSIGN_ROWS)
        for start in track(starts, "vocab_kmeans assign", len(starts)):
            chunk = rows[start : start + _ASSIGN_ROWS].astype(np.float32, copy=False)
            nearest = _nearest(unit_rows(chunk)[None], centres[None])[0]
            # The scale that minimises ||row - scale * centroid||: the row's projection on it.
            dots = np.einsum("ij,ij->i", chunk, centres[nearest])
            codes[start : start + _ASSIGN_ROWS] = nearest
            scales[start : start + _ASSIGN_ROWS] = np.divide(
                dots, squared[nearest], out=np.zeros_like(dots), where=squared[nearest] > 0
            )
        return {"codes": codes, "scales": scales, "centroids": centroids}

    def dequantize(self, arrays: Arrays, dim: int) -> np.ndarray:
        rows = np.take(arrays["centroids"].astype(np.float32), arrays["codes"], axis=0)
        rows *= arrays["scales"].astype(np.float32)[:, None]
        return rows

    def layout(self, rows: int, dim: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        codes = np.dtype(np.uint8 if self.clusters <= 256 else np.uint16)
        return {
            "codes": ((rows,), codes),
            "scales": ((rows,), np.dtype(np.float16)),
            "centroids": ((self.clusters, dim), np.dtype(np.float16)),
        }

    def check_arrays(self, arrays: Arrays, dim: int) -> None:
        super().check_arrays(arrays, dim)
        _check_codes(arrays["codes"], self.clusters, self.name)

    def describe(self) -> str:
        return f"vocab k-means, {self.clusters} clusters, fp16 centroids and per-row scales"

    def onnx_rows(self, graph: OnnxGraph, data: Arrays, dim: int, path: str, ids: str) -> str:
        codes = graph.index(graph.gather(f"{path}.codes", data["codes"], ids))
        centroids = graph.float32(
            graph.op("Gather", [graph.const(f"{path}.centroids", data["centroids"]), codes], axis=0),
            data["centroids"].dtype,
        )
        # Scales stored as (rows, 1) (the same bytes) so the gathered scale broadcasts over the row.
        scales = graph.gather(f"{path}.scales", data["scales"].reshape(-1, 1), ids)
        return graph.op("Mul", [centroids, graph.float32(scales, data["scales"].dtype)])


def _sample(rows: np.ndarray, train_rows: int, centres: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded float32 sample of rows in random order, at least `centres` rows when there are."""
    size = min(rows.shape[0], max(train_rows, centres))
    return rows[rng.choice(rows.shape[0], size=size, replace=False)].astype(np.float32)


def _split(rows: np.ndarray, groups: int) -> np.ndarray:
    """(n, d) -> contiguous (groups, n, d / groups): one block of sub-vectors per sub-space."""
    return np.ascontiguousarray(rows.reshape(rows.shape[0], groups, -1).transpose(1, 0, 2))


def _is_thin(k: int, m: int) -> bool:
    """PQ's products (inner size m of 4-16) are several times slower when BLAS splits them across
    threads (tens of times on a loaded machine): they run on one BLAS thread each, and the groups
    are shared out to our own threads instead. Wide products (vocab k-means) are BLAS's to split."""
    return m * k <= (1 << 18) // 64


def _chunk_rows(k: int, m: int) -> int:
    """Points per distance matmul: 1 MB of distances for thin products (they stay in cache for the
    argmin; on Gemma's table 15% faster than the 200-row products that kept OpenBLAS on one thread
    by its own size rule), 16 MB for wide ones."""
    return max(64, (1 << 18) // k) if _is_thin(k, m) else max(1, _CHUNK_ENTRIES // k)


def _nearest(points: np.ndarray, centres: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Nearest centre per group and point: (G, n, m) points, (G, k, m) centres -> (G, n) codes,
    written into `out` when given (PQ passes a transposed view of its (n, G) uint8 codes: each
    thread then stores its own group's column, instead of one thread transposing them all).
    The distance ||c||^2 - 2 x.c (||x||^2 does not change which centre is nearest) is one matmul
    of [x, 1] by [-2c, ||c||^2]: no separate pass to add the centre norms."""
    groups, n, m = points.shape
    weights = np.concatenate([-2 * centres, np.einsum("gkm,gkm->gk", centres, centres)[..., None]], axis=-1)
    weights = np.ascontiguousarray(weights.transpose(0, 2, 1))
    codes = np.empty((groups, n), dtype=np.intp) if out is None else out
    step = _chunk_rows(centres.shape[1], m + 1)

    def assign(group: int) -> None:
        augmented = np.empty((min(n, step), m + 1), np.float32)
        augmented[:, m] = 1
        for start in range(0, n, step):
            count = min(step, n - start)
            augmented[:count, :m] = points[group, start : start + count]  # in this thread: copies run in parallel too
            codes[group, start : start + count] = (augmented[:count] @ weights[group]).argmin(axis=1)

    # matmul and argmin run with the GIL released. (The K-quant encoders gained nothing from the same
    # split over tiles: on an idle machine two threads took longer than one.)
    blas_threads = 1 if _is_thin(centres.shape[1], m + 1) else None
    with threadpool_limits(blas_threads, user_api="blas"), ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        list(pool.map(assign, range(groups)))
    return codes


def _kmeans(
    points: np.ndarray, k: int, iterations: int, rng: np.random.Generator, *, spherical: bool, label: str
) -> np.ndarray:
    """Batched k-means: (G, n, m) float32 points -> (G, k, m) centres, one independent k-means per
    group. `spherical`: points are unit rows and centres are renormalised means (cosine k-means)."""
    groups, n, m = points.shape
    centres = _seed(points[:, : min(n, _POOL_PER_CENTRE * k)], k, rng)
    flat = points.reshape(groups * n, m)
    offsets = (np.arange(groups) * k)[:, None]
    for _ in track(range(iterations), f"{label} k-means", iterations):
        codes = _nearest(points, centres)
        # Per-centre sums in one sparse product: column j of the one-hot matrix marks point j's centre.
        one_hot = scipy.sparse.csc_array(
            (np.ones(groups * n, np.float32), (codes + offsets).ravel(), np.arange(groups * n + 1)),
            shape=(groups * k, groups * n),
        )
        sums = (one_hot @ flat).reshape(groups, k, m)
        counts = np.bincount((codes + offsets).ravel(), minlength=groups * k).reshape(groups, k)
        filled = counts > 0
        old = centres
        # float32 counts: int64 ones would make the means, and so every later matmul, float64.
        means = sums / np.maximum(counts, 1).astype(np.float32)[..., None]
        centres = np.where(
            filled[..., None], unit_rows(means.reshape(-1, m)).reshape(means.shape) if spherical else means, centres
        )
        # An empty centre is reseeded on the points its group represents worst (largest error).
        for group in np.flatnonzero(~filled.all(axis=1)):
            empty = np.flatnonzero(~filled[group])
            errors = np.square(points[group] - old[group, codes[group]]).sum(axis=1)
            worst = np.argsort(errors)[::-1][: len(empty)]
            centres[group, empty[: len(worst)]] = points[group, worst]
    return centres.astype(np.float32)


def _seed(pool: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding per group from (G, p, m) pool points: each new centre is drawn with
    probability proportional to its squared distance to the nearest chosen centre. Large k picks
    k / _SEED_ROUNDS centres per distance update (weighted sampling without replacement)."""
    groups, size, m = pool.shape
    centres = np.empty((groups, k, m), dtype=np.float32)
    pool_sq = np.einsum("gpm,gpm->gp", pool, pool)
    pool_t = np.ascontiguousarray(
        pool.transpose(0, 2, 1)
    )  # distances come out (G, count, p): min over count is elementwise
    closest = np.full((groups, size), np.inf, dtype=np.float32)
    per_round = max(1, -(-k // _SEED_ROUNDS))
    for start in range(0, k, per_round):
        count = min(per_round, k - start)
        # Efraimidis-Spirakis keys: the `count` smallest of Exp(1) / weight are a weighted sample
        # without replacement. A point already chosen (weight 0) only comes up once all others have.
        if start == 0:
            keys = rng.random((groups, size))  # the first centre is uniform
        else:
            exponential = rng.standard_exponential((groups, size), dtype=np.float32)
            keys = np.divide(exponential, closest, out=np.full((groups, size), np.inf, np.float32), where=closest > 0)
        # A pool smaller than k: once every point is chosen, the rest repeat (they stay empty).
        picked = (
            np.argpartition(keys, count - 1, axis=1)[:, :count]
            if count < size
            else np.argsort(keys, axis=1)[:, np.arange(count) % size]
        )
        chosen = np.take_along_axis(pool, picked[..., None], axis=1)
        centres[:, start : start + count] = chosen
        distances = np.matmul(chosen, pool_t)
        distances *= -2
        distances += np.einsum("gcm,gcm->gc", chosen, chosen)[..., None]
        np.minimum(closest, np.maximum(distances.min(axis=1) + pool_sq, 0), out=closest)
    return centres


def _check_codes(codes: np.ndarray, count: int, name: str) -> None:
    """Codes index a codebook of `count` entries: a larger one would read past it."""
    if codes.size and int(codes.max()) >= count:
        raise EdgeembError(f"{name}: a code is {int(codes.max())}, but there are only {count} centres")
