"""Row-wise helpers shared by the analyses, the metrics and the codebook formats."""

from __future__ import annotations

import numpy as np


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm; zero rows stay zero (cosine 0 with everything)."""
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))[:, None]
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
