"""Similarities STS and retrieval can be scored with besides plain cosine.

Cosine misleads in an anisotropic space: every embedding shares a common direction, so every pair
looks alike, and a few "hub" texts are near everything. Each similarity here is declared once, on
its class line, and scores a block of queries against documents (STS: the pairs' first sentences
against their second ones) as

    score(q, d) = q' · d' - penalty(q) - penalty(d)

- cosine: q' and d' are the unit rows, no penalty.
- centered: the fit set's mean subtracted, then unit rows.
- whitened: the fit set's mean subtracted and its covariance made the identity
  (W = U diag(1 / sqrt(λ + ε)) from the covariance's eigendecomposition), then unit rows.
- csls: cross-domain similarity local scaling, 2 cos(q, d) - r(q) - r(d), where r(q) is the mean
  cosine of q to its k nearest documents and r(d) that of d to its k nearest queries; scored
  here halved, cos - r(q)/2 - r(d)/2, which ranks (and correlates) the same.

The fit set (centered, whitened) is embedded like the texts it scores: unit rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from edgeemb.errors import EdgeembError
from edgeemb.rows import unit_rows

Project = Callable[[np.ndarray], np.ndarray]
_KINDS: dict[str, type[Similarity]] = {}
_EIGEN_FLOOR = 1e-9  # ε, relative to the largest eigenvalue: a flat direction is not blown up to infinity


@dataclass(frozen=True)
class Scorer:
    """Queries and documents in a similarity's space: the score of query i and document j is
    queries[i] · documents[j] - query_penalty[i] - document_penalty[j]."""

    queries: np.ndarray
    documents: np.ndarray
    query_penalty: np.ndarray
    document_penalty: np.ndarray

    def block(self, start: int, stop: int) -> np.ndarray:
        """Scores of queries start:stop against every document."""
        scores = self.queries[start:stop] @ self.documents.T
        scores -= self.query_penalty[start:stop, None]
        scores -= self.document_penalty[None, :]
        return scores

    def pairs(self, query_rows: np.ndarray, document_rows: np.ndarray) -> np.ndarray:
        """Scores of query query_rows[i] with document document_rows[i], for each i."""
        dots = np.einsum("ij,ij->i", self.queries[query_rows], self.documents[document_rows])
        return dots - self.query_penalty[query_rows] - self.document_penalty[document_rows]


class Similarity:
    """A way to score queries against documents; subclasses register by name on their class line."""

    name: ClassVar[str]
    uses_fit: ClassVar[bool] = False  # learns a mean (and covariance) from a fit set of texts
    uses_neighbours: ClassVar[bool] = False  # penalises hubs by their k nearest neighbours

    def __init_subclass__(cls, *, name: str, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = name
        _KINDS[name] = cls

    def __init__(self, k: int = 10) -> None:
        if k < 1:
            raise EdgeembError(f"{self.name} similarity: k must be at least 1, got {k}")
        self.k = k

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k})" if self.uses_neighbours else f"{type(self).__name__}()"

    def check_fit(self, texts: int, dim: int) -> None:
        """Refuse a fit set of `texts` distinct texts of `dim` dimensions that is too small; called
        before anything is encoded where the caller can."""

    def project(self, fit: np.ndarray) -> Project:
        """The map, learnt from the fit set's rows, that takes rows into this similarity's space."""
        return lambda rows: rows

    def scorer(self, queries: np.ndarray, documents: np.ndarray, fit: np.ndarray, block: int) -> Scorer:
        """Queries and documents ready to score; `fit` is the fit set's rows (used by centered and
        whitened), `block` the query rows scored at a time where a pass over all pairs is needed."""
        project = self.project(fit)
        zeros = np.zeros(len(queries), np.float32), np.zeros(len(documents), np.float32)
        return Scorer(unit_rows(project(queries)), unit_rows(project(documents)), *zeros)


class Cosine(Similarity, name="cosine"):
    pass


class Centered(Similarity, name="centered"):
    uses_fit = True

    def project(self, fit: np.ndarray) -> Project:
        mean = fit.mean(axis=0, dtype=np.float64).astype(np.float32)
        return lambda rows: rows - mean


class Whitened(Similarity, name="whitened"):
    uses_fit = True

    def check_fit(self, texts: int, dim: int) -> None:
        # n texts' covariance has rank at most n - 1: fewer than dim + 1 leaves directions unmeasured.
        if texts <= dim:
            raise EdgeembError(
                f"whitened similarity needs at least {dim + 1} distinct texts to fit a {dim}-dimensional "
                f"covariance (more texts than dimensions); got {texts}: give more with --fit-text FILE"
            )

    def project(self, fit: np.ndarray) -> Project:
        self.check_fit(len(fit), fit.shape[1])
        rows = fit.astype(np.float64)
        mean = rows.mean(axis=0)
        values, vectors = np.linalg.eigh(np.cov(rows, rowvar=False))
        values = np.clip(values, 0, None)
        if values.max() <= 0:
            raise EdgeembError("whitened similarity: the fit texts all have the same embedding; nothing to whiten")
        whiten = (vectors / np.sqrt(values + _EIGEN_FLOOR * values.max())).astype(np.float32)
        shift = mean.astype(np.float32)
        return lambda rows: (rows - shift) @ whiten


class Csls(Similarity, name="csls"):
    uses_neighbours = True

    def scorer(self, queries: np.ndarray, documents: np.ndarray, fit: np.ndarray, block: int) -> Scorer:
        queries, documents = unit_rows(queries), unit_rows(documents)
        query_hubness, document_hubness = _mean_top_cosines(queries, documents, self.k, block)
        return Scorer(queries, documents, query_hubness / 2, document_hubness / 2)


def _mean_top_cosines(queries: np.ndarray, documents: np.ndarray, k: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's mean cosine to its k nearest documents, and each document's to its k nearest
    queries (k clipped to the other side's size), over blocks of `block` queries."""
    k_documents, k_queries = min(k, len(documents)), min(k, len(queries))
    query_mean = np.empty(len(queries), np.float32)
    nearest_queries = np.empty((0, len(documents)), np.float32)  # each document's best cosines so far
    for start in range(0, len(queries), block):
        cosines = queries[start : start + block] @ documents.T
        top = np.partition(cosines, len(documents) - k_documents, axis=1)[:, len(documents) - k_documents :]
        query_mean[start : start + block] = top.mean(axis=1)
        seen = np.concatenate([nearest_queries, cosines])
        keep = min(k_queries, len(seen))
        nearest_queries = np.partition(seen, len(seen) - keep, axis=0)[len(seen) - keep :]
    return query_mean, nearest_queries.mean(axis=0)


def similarity(name: str, k: int = 10) -> Similarity:
    """The similarity called `name` (one of SIMILARITIES); `k`: csls's neighbours."""
    if name not in _KINDS:
        raise EdgeembError(f"unknown similarity {name!r}: choose one of {', '.join(_KINDS)}")
    return _KINDS[name](k)


SIMILARITIES = tuple(_KINDS)
