"""The spectrum of an embedding table, shared by `inspect` and the `svd` step.

For a tall, skinny table (262144 x 640) the dim x dim Gram matrix of the mean-centred rows gives
the singular values and right singular vectors exactly, in one streaming pass over the rows.
"""

from __future__ import annotations

import numpy as np

from edgeemb.progress import track

_CHUNK_ROWS = 16384


def centred_gram(weight: np.ndarray, mean: np.ndarray | None, description: str = "gram matrix") -> np.ndarray:
    """(W - mean)^T (W - mean) in float64. Each chunk is centred in float64 and multiplied in
    float32 (twice as fast; ample for energies and principal directions); sums accumulate in float64."""
    dim = weight.shape[1]
    gram = np.zeros((dim, dim), dtype=np.float64)
    starts = range(0, weight.shape[0], _CHUNK_ROWS)
    for start in track(starts, description, len(starts)):
        chunk = weight[start : start + _CHUNK_ROWS].astype(np.float64)
        if mean is not None:
            chunk -= mean
        chunk = chunk.astype(np.float32)
        gram += chunk.T @ chunk
    return gram


def descending_eigh(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (clipped at 0, descending) and their eigenvectors as columns."""
    eigenvalues, vectors = np.linalg.eigh(gram)
    order = np.argsort(eigenvalues)[::-1]
    return np.clip(eigenvalues[order], 0.0, None), vectors[:, order]


def energy_rank(eigenvalues: np.ndarray, fraction: float) -> int:
    """Smallest rank whose squared singular values (eigenvalues, descending) reach `fraction` of the total."""
    energy = np.cumsum(eigenvalues)
    if energy[-1] <= 0:
        return 0
    return int(np.searchsorted(energy, fraction * energy[-1] * (1 - 1e-12)) + 1)
