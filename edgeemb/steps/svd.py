"""`svd`: replace the table by a low-rank factorisation, rows = left[ids] @ right + mean.

The right factor is the top principal directions of the (mean-centred) table (see spectrum.py).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from edgeemb.errors import EdgeembError
from edgeemb.spectrum import centred_gram, descending_eigh, energy_rank
from edgeemb.steps.base import StepConfig, StepContext, register
from edgeemb.table import DenseTable, EmbeddingTable, LowRankTable

_CHUNK_ROWS = 32768


class SVDConfig(StepConfig):
    """Choose the rank by exactly one of `rank`, `energy` or `max_bytes`."""

    rank: int | None = Field(default=None, ge=1, description="keep this many components")
    energy: float | None = Field(
        default=None, gt=0, le=1, description="smallest rank keeping this share of the spectrum's energy"
    )
    max_bytes: int | None = Field(
        default=None, ge=1, description="largest rank whose factors (as this step stores them) fit"
    )
    center: bool = Field(default=True, description="subtract the mean row first and store it (one row of bytes)")
    round_to: int = Field(
        default=32,
        ge=1,
        description="a rank chosen by energy/max_bytes is a multiple of this, so quantisation blocks fit",
    )
    dtype: Literal["float32", "float16"] = "float32"

    @model_validator(mode="after")
    def _one_criterion(self) -> SVDConfig:
        chosen = [k for k in ("rank", "energy", "max_bytes") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError(f"give exactly one of rank, energy, max_bytes (got {', '.join(chosen) or 'none'})")
        return self


def choose_rank(config: SVDConfig, singular_values: np.ndarray, rows: int) -> int:
    dim = len(singular_values)
    if config.rank is not None:
        rank = config.rank
        if rank >= dim:
            raise EdgeembError(f"svd: rank {rank} must be smaller than the table width {dim} to compress it")
        return rank
    if config.energy is not None:
        needed = energy_rank(singular_values**2, config.energy)
        rank = -(-needed // config.round_to) * config.round_to
        if rank >= dim:
            raise EdgeembError(
                f"svd: energy {config.energy} needs rank {needed} (rounded to {rank}) of width {dim}: "
                "a factorisation would not compress"
            )
        return rank
    assert config.max_bytes is not None  # the config holds exactly one of rank, energy, max_bytes
    itemsize = np.dtype(config.dtype).itemsize
    bias = dim if config.center else 0
    rank = (config.max_bytes // itemsize - bias) // (rows + dim) // config.round_to * config.round_to
    if rank < 1:
        smallest = itemsize * (config.round_to * (rows + dim) + bias)
        raise EdgeembError(
            f"svd: max_bytes {config.max_bytes} is too small; rank {config.round_to} already needs {smallest} bytes"
        )
    if rank >= dim:
        raise EdgeembError(f"svd: max_bytes {config.max_bytes} allows full rank {dim}: no factorisation needed")
    return rank


@register("svd", SVDConfig)
def svd(table: EmbeddingTable, config: SVDConfig, context: StepContext = StepContext()) -> LowRankTable:
    if isinstance(table, LowRankTable):
        raise EdgeembError("svd: the table is already low-rank")
    weight = table.to_dense()
    mean = weight.mean(axis=0, dtype=np.float64) if config.center else None
    eigenvalues, vectors = descending_eigh(centred_gram(weight, mean, "svd: gram matrix"))
    singular_values = np.sqrt(eigenvalues)
    rank = choose_rank(config, singular_values, weight.shape[0])
    basis = vectors[:, :rank].astype(np.float32)
    shift = np.zeros(weight.shape[1], np.float32) if mean is None else mean.astype(np.float32)
    left = np.empty((weight.shape[0], rank), dtype=np.float32)
    for start in range(0, weight.shape[0], _CHUNK_ROWS):
        left[start : start + _CHUNK_ROWS] = (weight[start : start + _CHUNK_ROWS] - shift) @ basis
    dtype = np.dtype(config.dtype)
    bias = None if mean is None else shift.astype(dtype)
    return LowRankTable(DenseTable(left.astype(dtype)), np.ascontiguousarray(basis.T).astype(dtype), bias)
