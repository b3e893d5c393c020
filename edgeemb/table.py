"""`EmbeddingTable`: an embedding table and how it is stored.

This is the one type every pass, exporter, evaluator and report speaks. A table knows its shape,
the exact bytes of everything it stores (scales, factors and codebooks included), how to look up
rows by token id, and how to serialise itself as named arrays plus a JSON spec.

Storages:
- `DenseTable`: a float32 or float16 matrix.
- `QuantizedTable`: rows quantised by a `QuantFormat` (codes and scales, row-major).
- `LowRankTable`: `left[ids] @ right + bias`, where `left` is itself a table (dense or quantised).
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save

from edgeemb.errors import EdgeembError
from edgeemb.formats import Arrays, QuantFormat, format_from_spec

_DENSE_DTYPES = {"float32": np.float32, "float16": np.float16}
_CHUNK_ROWS = 16384


class EmbeddingTable(ABC):
    """Abstract base: a (rows, dim) table of float embeddings in some storage."""

    @property
    @abstractmethod
    def shape(self) -> tuple[int, int]: ...

    @abstractmethod
    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """float32 rows for the given token ids."""

    @abstractmethod
    def arrays(self) -> Arrays:
        """Every stored array, by name. Their bytes are the table's bytes."""

    @abstractmethod
    def spec(self) -> dict:
        """JSON-able description that, with `arrays()`, rebuilds the table."""

    @abstractmethod
    def describe(self) -> str:
        """A short human label of the storage."""

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays().values())

    @property
    def bits_per_param(self) -> float:
        rows, dim = self.shape
        return 8 * self.nbytes / (rows * dim)

    def to_dense(self) -> np.ndarray:
        """The whole table as float32, decoded in chunks of rows."""
        rows, dim = self.shape
        out = np.empty((rows, dim), dtype=np.float32)
        for start in range(0, rows, _CHUNK_ROWS):
            ids = np.arange(start, min(start + _CHUNK_ROWS, rows))
            out[start : start + len(ids)] = self.lookup(ids)
        return out


@dataclass(frozen=True, eq=False)
class DenseTable(EmbeddingTable):
    weight: np.ndarray

    def __post_init__(self) -> None:
        if self.weight.ndim != 2 or self.weight.dtype.name not in _DENSE_DTYPES:
            raise EdgeembError(f"a dense table is a 2-D float32/float16 matrix, got {self.weight.dtype} {self.weight.shape}")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        return np.take(self.weight, ids, axis=0).astype(np.float32, copy=False)

    def to_dense(self) -> np.ndarray:
        return self.weight.astype(np.float32, copy=False)

    def arrays(self) -> Arrays:
        return {"weight": self.weight}

    def spec(self) -> dict:
        return {"kind": "dense", "dtype": self.weight.dtype.name}

    def describe(self) -> str:
        return f"dense {self.weight.dtype.name}"


@dataclass(frozen=True, eq=False)
class QuantizedTable(EmbeddingTable):
    format: QuantFormat
    data: Arrays
    dim: int

    @classmethod
    def quantize(cls, weight: np.ndarray, fmt: QuantFormat) -> "QuantizedTable":
        return cls(fmt, fmt.quantize_table(weight), weight.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        rows = next(array for name, array in self.data.items() if name not in self.format.shared).shape[0]
        return (rows, self.dim)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        picked = {
            name: array if name in self.format.shared else np.take(array, ids, axis=0) for name, array in self.data.items()
        }
        return self.format.dequantize(picked, self.dim)

    def arrays(self) -> Arrays:
        return dict(self.data)

    def spec(self) -> dict:
        return {"kind": "quantized", "format": self.format.spec(), "dim": self.dim}

    def describe(self) -> str:
        return self.format.describe()


@dataclass(frozen=True, eq=False)
class LowRankTable(EmbeddingTable):
    """rows = left[ids] @ right (+ bias): a (rows, rank) table times a (rank, dim) matrix."""

    left: EmbeddingTable
    right: np.ndarray
    bias: np.ndarray | None = field(default=None)

    @property
    def rank(self) -> int:
        return self.right.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.left.shape[0], self.right.shape[1])

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        rows = self.left.lookup(ids) @ self.right.astype(np.float32, copy=False)
        if self.bias is not None:
            rows += self.bias.astype(np.float32, copy=False)
        return rows

    def arrays(self) -> Arrays:
        arrays = {f"left.{name}": array for name, array in self.left.arrays().items()}
        arrays["right"] = self.right
        if self.bias is not None:
            arrays["bias"] = self.bias
        return arrays

    def spec(self) -> dict:
        return {"kind": "lowrank", "left": self.left.spec(), "rank": self.rank}

    def describe(self) -> str:
        return f"low-rank r={self.rank} ({self.left.describe()}) x {self.right.dtype.name}"


def table_from_parts(spec: dict, arrays: Arrays) -> EmbeddingTable:
    """Rebuild a table from `spec()` and `arrays()`."""
    kind = spec.get("kind")
    if kind == "dense":
        return DenseTable(arrays["weight"])
    if kind == "quantized":
        return QuantizedTable(format_from_spec(spec["format"]), dict(arrays), int(spec["dim"]))
    if kind == "lowrank":
        left = {name[len("left.") :]: a for name, a in arrays.items() if name.startswith("left.")}
        return LowRankTable(table_from_parts(spec["left"], left), arrays["right"], arrays.get("bias"))
    raise EdgeembError(f"unknown table kind {kind!r}")


_SPEC_KEY = "edgeemb.table"


def save_table(table: EmbeddingTable, path: Path) -> None:
    """Write the table as safetensors: its arrays, and its spec in the header metadata."""
    blob = save(table.arrays(), metadata={_SPEC_KEY: json.dumps(table.spec(), sort_keys=True)})
    Path(path).write_bytes(blob)


def load_table(path: Path) -> EmbeddingTable:
    """Read a table written by `save_table`, with a clear error for anything else."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(os.fspath(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
        arrays = load_file(os.fspath(path))
    except (SafetensorError, OSError) as exc:
        raise EdgeembError(f"{path}: not a readable safetensors file ({exc})") from None
    if _SPEC_KEY not in metadata:
        raise EdgeembError(f"{path}: safetensors file without an edgeemb table spec")
    return table_from_parts(json.loads(metadata[_SPEC_KEY]), arrays)
