"""`EmbeddingTable`: an embedding table and how it is stored.

This is the one type every pass, exporter, evaluator and report speaks. A table knows its shape,
the exact bytes of everything it stores (scales, factors and codebooks included), how to look up
rows by token id, and how to serialise itself as named arrays plus a JSON spec.

Storages:
- `DenseTable`: a float32 or float16 matrix.
- `QuantizedTable`: rows quantised by a `QuantFormat` (codes and scales, row-major).
- `LowRankTable`: `left[ids] @ right + bias`, where `left` is itself a table (dense or quantised).
- `MixedTable`: rows split into groups, each group its own table (e.g. frequent tokens at int8,
  the rest at int4), with a per-row group and slot.
- `TrimmedTable`: the rows of a trimmed vocabulary (any storage), and the source row of each.
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
        ids = np.asarray(ids)
        if ids.size == 0:
            return np.empty((*ids.shape, self.dim), np.float32)
        return self.format.lookup(self.data, ids.ravel(), self.dim).reshape(*ids.shape, self.dim)

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


@dataclass(frozen=True, eq=False)
class MixedTable(EmbeddingTable):
    """Row i lives in parts[group[i]] at row slot[i]. The routing arrays are stored (and counted):
    a runtime needs them to split a gather."""

    parts: tuple[EmbeddingTable, ...]
    group: np.ndarray  # (rows,) uint8
    slot: np.ndarray  # (rows,) uint16, or int32 for groups over 65536 rows

    @classmethod
    def split(cls, weight: np.ndarray, group: np.ndarray, build: list) -> "MixedTable":
        """Store the rows of each group g with `build[g](rows) -> EmbeddingTable`."""
        group = group.astype(np.uint8)
        largest = int(np.bincount(group).max())
        slot = np.zeros(len(group), np.uint16 if largest <= 1 << 16 else np.int32)  # smallest that fits
        parts = []
        for index, make in enumerate(build):
            members = np.flatnonzero(group == index)
            slot[members] = np.arange(len(members))
            parts.append(make(weight[members]))
        return cls(tuple(parts), group, slot)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.group), self.parts[0].shape[1])

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        groups, slots = self.group[ids], self.slot[ids]
        out = np.empty((len(ids), self.shape[1]), np.float32)
        for index, part in enumerate(self.parts):
            chosen = groups == index
            if chosen.any():
                out[chosen] = part.lookup(slots[chosen])
        return out

    def arrays(self) -> Arrays:
        arrays = {f"part{i}.{name}": a for i, part in enumerate(self.parts) for name, a in part.arrays().items()}
        return {**arrays, "group": self.group, "slot": self.slot}

    def spec(self) -> dict:
        return {"kind": "mixed", "parts": [part.spec() for part in self.parts]}

    def describe(self) -> str:
        counts = np.bincount(self.group, minlength=len(self.parts))
        return "mixed: " + "; ".join(f"{count} rows {part.describe()}" for count, part in zip(counts, self.parts))


@dataclass(frozen=True, eq=False)
class TrimmedTable(EmbeddingTable):
    """A trimmed vocabulary's table: new id i is the source's row keep[i]. `keep` is edgeemb's record
    of the renumbering; a runtime reads the rewritten tokenizer instead, so `keep` is stored but not
    counted in `nbytes`. `facts` say what the trim kept and why."""

    rows: EmbeddingTable
    keep: np.ndarray  # (rows,) int32, ascending
    facts: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows.shape

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        return self.rows.lookup(ids)

    def to_dense(self) -> np.ndarray:
        return self.rows.to_dense()

    def arrays(self) -> Arrays:
        return {**{f"rows.{name}": a for name, a in self.rows.arrays().items()}, "keep": self.keep}

    def spec(self) -> dict:
        return {"kind": "trimmed", "rows": self.rows.spec(), "trim": self.facts}

    def describe(self) -> str:
        return f"{self.rows.describe()}, vocabulary trimmed to {len(self.keep)} rows"


def table_from_parts(spec: dict, arrays: Arrays) -> EmbeddingTable:
    """Rebuild a table from `spec()` and `arrays()`."""
    kind = spec.get("kind")
    if kind == "dense":
        return DenseTable(arrays["weight"])
    if kind == "quantized":
        return QuantizedTable(format_from_spec(spec["format"]), dict(arrays), int(spec["dim"]))
    if kind == "lowrank":
        return LowRankTable(table_from_parts(spec["left"], _prefixed(arrays, "left.")), arrays["right"], arrays.get("bias"))
    if kind == "mixed":
        parts = tuple(table_from_parts(part, _prefixed(arrays, f"part{i}.")) for i, part in enumerate(spec["parts"]))
        return MixedTable(parts, arrays["group"], arrays["slot"])
    if kind == "trimmed":
        return TrimmedTable(table_from_parts(spec["rows"], _prefixed(arrays, "rows.")), arrays["keep"], spec.get("trim", {}))
    raise EdgeembError(f"unknown table kind {kind!r}")


def _prefixed(arrays: Arrays, prefix: str) -> Arrays:
    return {name[len(prefix) :]: a for name, a in arrays.items() if name.startswith(prefix)}


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
