"""`EmbeddingTable`: an embedding table and how it is stored.

This is the one type every step, exporter, evaluator and report speaks. A table knows its shape,
the exact bytes of everything it stores (scales, factors and codebooks included), how to look up
rows by token id, and how to serialise itself as named arrays plus a JSON spec. Each storage also
carries what a consumer needs of it, so no consumer dispatches on storage types:
- `onnx_rows`: its lookup as ONNX nodes (the ONNX exporter splices them into a graph);
- `ggml_blocks`: its rows as a GGUF tensor's bytes, when it is stored in a GGML type;
- `row_records`: one fixed-size byte record per row, as a flash store keeps it;
- `spec`/`arrays` and `from_parts`: serialisation, found by the spec's `kind` (each storage
  registers its kind on its class line: `class DenseTable(EmbeddingTable, kind="dense")`).

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
from typing import ClassVar

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save

from edgeemb.errors import EdgeembError, regular_file
from edgeemb.formats import Arrays, QuantFormat, format_from_spec, onnx_formats
from edgeemb.onnxgraph import OnnxGraph

_DENSE_DTYPES = {"float32": np.float32, "float16": np.float16}
_CHUNK_ROWS = 16384
_KINDS: dict[str, type[EmbeddingTable]] = {}


class EmbeddingTable(ABC):
    """Abstract base: a (rows, dim) table of float embeddings in some storage."""

    kind: ClassVar[str]

    def __init_subclass__(cls, kind: str | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if kind is not None:
            cls.kind = kind
            _KINDS[kind] = cls

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

    @classmethod
    @abstractmethod
    def from_parts(cls, spec: dict, arrays: Arrays) -> EmbeddingTable:
        """Rebuild the table from its `spec()` and `arrays()`."""

    def onnx_rows(self, graph: OnnxGraph, path: str, ids: str) -> str:
        """Add the lookup of rows `ids` (float32) to `graph`; returns its output's name."""
        raise EdgeembError(f"ONNX export: {self.describe()} has no ONNX mapping; what maps: {_onnx_maps()}")

    def ggml_blocks(self) -> tuple[str, np.ndarray] | None:
        """(GGML type, bytes (rows, bytes per row)) when the rows are stored as llama.cpp keeps
        them; None when a GGUF export has to decode and quantise them again."""
        return None

    def row_records(self) -> tuple[np.ndarray, int]:
        """uint8 (rows, record bytes): each row's stored bytes as one fixed-size record, and the
        bytes a lookup needs besides its row's record (codebooks, a low-rank right factor)."""
        raise EdgeembError(f"a {self.describe()} table has no fixed-size record per row")

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
class DenseTable(EmbeddingTable, kind="dense"):
    weight: np.ndarray

    def __post_init__(self) -> None:
        if self.weight.ndim != 2 or self.weight.dtype.name not in _DENSE_DTYPES:
            raise EdgeembError(
                f"a dense table is a 2-D float32/float16 matrix, got {self.weight.dtype} {self.weight.shape}"
            )

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
        return {"kind": self.kind, "dtype": self.weight.dtype.name}

    def describe(self) -> str:
        return f"dense {self.weight.dtype.name}"

    @classmethod
    def from_parts(cls, spec: dict, arrays: Arrays) -> DenseTable:
        return cls(arrays["weight"])

    def onnx_rows(self, graph: OnnxGraph, path: str, ids: str) -> str:
        return graph.float32(graph.gather(f"{path}.weight", self.weight, ids), self.weight.dtype)

    def row_records(self) -> tuple[np.ndarray, int]:
        return as_records(self.weight), 0


@dataclass(frozen=True, eq=False)
class QuantizedTable(EmbeddingTable, kind="quantized"):
    format: QuantFormat
    data: Arrays
    dim: int

    @classmethod
    def quantize(cls, weight: np.ndarray, fmt: QuantFormat) -> QuantizedTable:
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
        return {"kind": self.kind, "format": self.format.spec(), "dim": self.dim}

    def describe(self) -> str:
        return self.format.describe()

    @classmethod
    def from_parts(cls, spec: dict, arrays: Arrays) -> QuantizedTable:
        fmt, dim = format_from_spec(spec["format"]), int(spec["dim"])
        fmt.check_arrays(arrays, dim)
        return cls(fmt, dict(arrays), dim)

    def onnx_rows(self, graph: OnnxGraph, path: str, ids: str) -> str:
        if self.format.onnx is None:
            return super().onnx_rows(graph, path, ids)
        return self.format.onnx_rows(graph, self.data, self.dim, path, ids)

    def ggml_blocks(self) -> tuple[str, np.ndarray] | None:
        return None if self.format.qtype is None else (self.format.name, self.data["blocks"])

    def row_records(self) -> tuple[np.ndarray, int]:
        shared = self.format.shared
        per_row = [as_records(array) for name, array in self.data.items() if name not in shared]
        return np.concatenate(per_row, axis=1), sum(array.nbytes for name, array in self.data.items() if name in shared)


@dataclass(frozen=True, eq=False)
class LowRankTable(EmbeddingTable, kind="lowrank"):
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
        return {"kind": self.kind, "left": self.left.spec(), "rank": self.rank}

    def describe(self) -> str:
        return f"low-rank r={self.rank} ({self.left.describe()}) x {self.right.dtype.name}"

    @classmethod
    def from_parts(cls, spec: dict, arrays: Arrays) -> LowRankTable:
        left, right, bias = (
            table_from_parts(spec["left"], _prefixed(arrays, "left.")),
            arrays["right"],
            arrays.get("bias"),
        )
        _check(
            right.ndim == 2 and right.shape[0] == left.shape[1],
            f"right factor {right.shape} does not follow a rank-{left.shape[1]} left",
        )
        _check(bias is None or bias.shape == (right.shape[1],), "the bias is not one value per column")
        return cls(left, right, bias)

    def onnx_rows(self, graph: OnnxGraph, path: str, ids: str) -> str:
        left = self.left.onnx_rows(graph, f"{path}.left", ids)
        rows = graph.op("MatMul", [left, graph.float32(graph.const(f"{path}.right", self.right), self.right.dtype)])
        if self.bias is None:
            return rows
        return graph.op("Add", [rows, graph.float32(graph.const(f"{path}.bias", self.bias), self.bias.dtype)])

    def row_records(self) -> tuple[np.ndarray, int]:
        records, resident = self.left.row_records()
        return records, resident + self.right.nbytes + (self.bias.nbytes if self.bias is not None else 0)


@dataclass(frozen=True, eq=False)
class MixedTable(EmbeddingTable, kind="mixed"):
    """Row i lives in parts[group[i]] at row slot[i]. The routing arrays are stored (and counted):
    a runtime needs them to split a gather."""

    parts: tuple[EmbeddingTable, ...]
    group: np.ndarray  # (rows,) uint8
    slot: np.ndarray  # (rows,) uint16, or int32 for groups over 65536 rows

    @classmethod
    def split(cls, weight: np.ndarray, group: np.ndarray, build: list) -> MixedTable:
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
        return {"kind": self.kind, "parts": [part.spec() for part in self.parts]}

    @classmethod
    def from_parts(cls, spec: dict, arrays: Arrays) -> MixedTable:
        parts = tuple(table_from_parts(part, _prefixed(arrays, f"part{i}.")) for i, part in enumerate(spec["parts"]))
        group, slot = arrays["group"], arrays["slot"]
        _check(bool(parts) and len({part.shape[1] for part in parts}) == 1, "the parts have different widths")
        _check(group.ndim == slot.ndim == 1 and len(group) == len(slot), "group and slot are not one entry per row")
        _check(group.dtype == np.uint8 and slot.dtype.kind in "iu", "group is not uint8, or slot not integers")
        _check(not len(group) or int(group.max()) < len(parts), "a row's group has no part")
        sizes = np.array([part.shape[0] for part in parts])
        slots = slot.astype(np.int64)
        _check(not len(slot) or bool(((slots >= 0) & (slots < sizes[group])).all()), "a row's slot is outside its part")
        return cls(parts, group, slot)

    def onnx_rows(self, graph: OnnxGraph, path: str, ids: str) -> str:
        # Every part is gathered at the row's slot (clamped to the part) and Where picks the row's
        # group: no data-dependent shapes, which runtimes handle worst, for one lookup per part.
        slots = graph.index(graph.gather(f"{path}.slot", self.slot, ids))
        groups = graph.gather(f"{path}.group", self.group.reshape(-1, 1), ids)  # (..., 1)
        rows = ""
        for index, part in enumerate(self.parts):
            # A slot belongs to the row's own group; clamped, it is a valid (unused) row of any other part.
            last = graph.const(f"{path}.part{index}.last", np.array(part.shape[0] - 1, np.int64))
            part_rows = part.onnx_rows(graph, f"{path}.part{index}", graph.op("Min", [slots, last]))
            if index == 0:
                rows = part_rows
                continue
            chosen = graph.op("Equal", [groups, graph.const(f"{path}.part{index}.group", np.array(index, np.uint8))])
            rows = graph.op("Where", [chosen, part_rows, rows])
        return rows

    def row_records(self) -> tuple[np.ndarray, int]:
        raise EdgeembError(
            "a mixed table has rows of several sizes; "
            "offload emulates fixed-size rows only (quantise it to one format first)"
        )

    def describe(self) -> str:
        counts = np.bincount(self.group, minlength=len(self.parts))
        return "mixed: " + "; ".join(f"{count} rows {part.describe()}" for count, part in zip(counts, self.parts))


@dataclass(frozen=True, eq=False)
class TrimmedTable(EmbeddingTable, kind="trimmed"):
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
        return {"kind": self.kind, "rows": self.rows.spec(), "trim": self.facts}

    def describe(self) -> str:
        return f"{self.rows.describe()}, vocabulary trimmed to {len(self.keep)} rows"

    @classmethod
    def from_parts(cls, spec: dict, arrays: Arrays) -> TrimmedTable:
        rows, keep = table_from_parts(spec["rows"], _prefixed(arrays, "rows.")), arrays["keep"]
        _check(keep.shape == (rows.shape[0],) and keep.dtype.kind in "iu", "keep is not one source id per kept row")
        return cls(rows, keep, spec.get("trim", {}))

    def onnx_rows(self, graph: OnnxGraph, path: str, ids: str) -> str:
        return self.rows.onnx_rows(graph, path, ids)  # ids are the trimmed vocabulary's (its tokenizer is rewritten)

    def ggml_blocks(self) -> tuple[str, np.ndarray] | None:
        return self.rows.ggml_blocks()

    def row_records(self) -> tuple[np.ndarray, int]:
        return self.rows.row_records()  # fewer rows: a smaller flash file


def table_from_parts(spec: dict, arrays: Arrays) -> EmbeddingTable:
    """Rebuild a table from `spec()` and `arrays()`."""
    kind = spec.get("kind")
    if kind not in _KINDS:
        raise EdgeembError(f"unknown table kind {kind!r} (known: {', '.join(sorted(_KINDS))})")
    return _KINDS[kind].from_parts(spec, arrays)


def require_finite(values: np.ndarray, what: str) -> None:
    """Raise EdgeembError naming the rows of `values` (2-D, or 1-D: one row) that hold NaN or Inf:
    every format would carry them into scales and codes, and every figure computed from them."""
    bad = np.flatnonzero(
        ~np.isfinite(values.reshape(-1, values.shape[-1]) if values.ndim else values.reshape(1, 1)).all(axis=1)
    )
    if bad.size:
        listed = ", ".join(map(str, bad[:8])) + (f" and {bad.size - 8} more" if bad.size > 8 else "")
        raise EdgeembError(f"{what} holds NaN or Inf values in {bad.size} row(s): {listed}")


def _check(condition: bool, problem: str) -> None:
    if not condition:
        raise EdgeembError(f"the table's arrays do not fit its spec: {problem}")


def as_records(array: np.ndarray) -> np.ndarray:
    """A per-row array's bytes, one row of uint8 per table row."""
    return np.ascontiguousarray(array).view(np.uint8).reshape(array.shape[0], -1)


def _onnx_maps() -> str:
    formats = ", ".join(f"{name} ({how})" for name, how in onnx_formats().items())
    return (
        f"dense fp32/fp16, {formats}, "
        "and low-rank, mixed or trimmed tables of these (GGUF block types go to the GGUF export)"
    )


def _prefixed(arrays: Arrays, prefix: str) -> Arrays:
    return {name[len(prefix) :]: a for name, a in arrays.items() if name.startswith(prefix)}


_SPEC_KEY = "edgeemb.table"


def save_table(table: EmbeddingTable, path: Path) -> None:
    """Write the table as safetensors: its arrays, and its spec in the header metadata."""
    blob = save(table.arrays(), metadata={_SPEC_KEY: json.dumps(table.spec(), sort_keys=True)})
    Path(path).write_bytes(blob)


def load_table(path: Path) -> EmbeddingTable:
    """Read a table written by `save_table`, with a clear error for anything else."""
    path = regular_file(path, "table file")
    try:
        with safe_open(os.fspath(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
        arrays = load_file(os.fspath(path))
    except (SafetensorError, OSError) as exc:
        raise EdgeembError(f"{path}: not a readable safetensors file ({exc})") from None
    if _SPEC_KEY not in metadata:
        raise EdgeembError(f"{path}: safetensors file without an edgeemb table spec")
    try:
        spec = json.loads(metadata[_SPEC_KEY])
        if not isinstance(spec, dict):
            raise TypeError(f"the spec is a JSON {type(spec).__name__}, not an object")
        return table_from_parts(spec, arrays)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        what = f"{exc} is missing" if isinstance(exc, KeyError) else " ".join(str(exc).split())
        raise EdgeembError(
            f"{path}: its edgeemb table spec does not describe its arrays ({what}); rerun edgeemb compress"
        ) from None
