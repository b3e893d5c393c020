"""The format type: a quantisation format for embedding rows, registered by name.

Each format is a small frozen dataclass (the configuration) with vectorised numpy
`quantize` / `dequantize` over whole rows: no Python loop over rows or blocks. A format turns a
float32 matrix (n, d) into named arrays. Per-row arrays have the row as their leading axis, so a
lookup is `np.take` on each of them followed by `dequantize` of just those rows; arrays named in
`shared` (codebooks) belong to the whole table and are passed to `dequantize` as they are.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, get_type_hints

import numpy as np
from gguf.constants import GGMLQuantizationType
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from edgeemb.errors import EdgeembError
from edgeemb.onnxgraph import OnnxGraph

Arrays = dict[str, np.ndarray]
_CHUNK_ROWS = 16384
_REGISTRY: dict[str, type[QuantFormat]] = {}
MAX_WIDTH = 1 << 16  # embedding widths of real models are at most a few thousand


@dataclass(frozen=True)
class QuantFormat(ABC):
    """A row-wise quantisation format, declared once and registered by its class line:

        class Int4(_IntBlocks, name="int4", bits=4): ...

    `name` registers the class (abstract families pass none); every other keyword sets one of
    the family's declared class traits (`bits`, `qtype`, `kernel`, ...)."""

    name: ClassVar[str]
    shared: ClassVar[frozenset[str]] = frozenset()  # arrays not indexed by row (e.g. codebooks)
    # Capabilities, declared by the formats that have them:
    qtype: ClassVar[GGMLQuantizationType | None] = None  # llama.cpp stores the rows as this GGML type
    onnx: ClassVar[str | None] = None  # how `onnx_rows` maps the lookup to ONNX (None: it has no mapping)
    weighted: ClassVar[bool] = False  # `quantize_weighted` fits each value's error by an importance weight
    _options_set: ClassVar[frozenset[str]] = frozenset()  # set per instance by __new__

    def __init_subclass__(cls, name: str | None = None, **traits: object) -> None:
        super().__init_subclass__()
        declared = {key for klass in cls.__mro__ for key in getattr(klass, "__annotations__", {})}
        for key, value in traits.items():
            if key not in declared:
                raise TypeError(f"{cls.__name__}: {key!r} is not a trait of this format family")
            setattr(cls, key, value)
        if name is not None:
            if name in _REGISTRY:
                raise TypeError(f"two formats are named {name!r}: {_REGISTRY[name].__name__} and {cls.__name__}")
            cls.name = name
            _REGISTRY[name] = cls

    def __new__(cls, *args: object, **options: object) -> QuantFormat:
        # The options the format is built with (as pydantic's `model_fields_set`): a recipe writes
        # back, and its digest hashes, what its author wrote, whatever the defaults.
        self = super().__new__(cls)
        given = [f.name for f in fields(cls)][: len(args)] + list(options)
        object.__setattr__(self, "_options_set", frozenset(given))
        return self

    def __post_init__(self) -> None:
        """Each option of its declared type and range, not coerced: `block_size="32"`, `32.5` or
        `zero_point="no"` is an error naming the option (annotations such as PositiveInt give ranges)."""
        try:
            _options_model(type(self)).model_validate({f.name: getattr(self, f.name) for f in fields(self)})
        except ValidationError as exc:
            error = exc.errors()[0]
            # The value's type, not its repr: a value from a recipe could be a huge nested list.
            wrong_type = f", not {type(error['input']).__name__}" if error["type"].endswith("_type") else ""
            raise EdgeembError(f"{'.'.join(map(str, error['loc']))}: {error['msg']}{wrong_type}") from None

    def options(self) -> dict[str, object]:
        """The options the format was built with, as given (`spec()` has every option)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in self._options_set}

    @abstractmethod
    def check_width(self, dim: int) -> None:
        """Raise EdgeembError if rows of width `dim` cannot use this format."""

    @abstractmethod
    def quantize(self, rows: np.ndarray) -> Arrays:
        """float32 (n, d) -> named arrays, each with n as its leading axis."""

    @abstractmethod
    def dequantize(self, arrays: Arrays, dim: int) -> np.ndarray:
        """Named arrays for n rows -> float32 (n, d)."""

    def lookup(self, arrays: Arrays, ids: np.ndarray, dim: int) -> np.ndarray:
        """float32 rows `ids` of a table stored as `arrays`: the rows' arrays taken, then decoded.
        Block formats override this with a fused kernel (`edgeemb.formats.kernels`)."""
        picked = {name: array if name in self.shared else np.take(array, ids, axis=0) for name, array in arrays.items()}
        return self.dequantize(picked, dim)

    def quantize_table(self, weight: np.ndarray) -> Arrays:
        """Quantise a whole table. Row-wise formats work in chunks of rows (bounded temporaries);
        formats that learn from the whole table (codebooks) override this."""
        from edgeemb.progress import track

        self.check_width(weight.shape[1])
        starts = range(0, weight.shape[0], _CHUNK_ROWS)
        parts = [
            self.quantize(weight[s : s + _CHUNK_ROWS]) for s in track(starts, f"quantize {self.name}", len(starts))
        ]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    @abstractmethod
    def describe(self) -> str:
        """A short human label, e.g. 'int4, blocks of 32, fp16 scales'."""

    def quantize_weighted(self, rows: np.ndarray, importance: np.ndarray) -> Arrays:
        """As `quantize`, each value's error weighted by `importance` (one weight per column, the
        formats whose `weighted` is set)."""
        raise NotImplementedError(f"{self.name} takes no importance weights")

    def layout(self, rows: int, dim: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """The arrays a `rows` x `dim` table stores in this format: name -> (shape, dtype). Row-wise
        formats read it off one encoded row; formats with shared arrays of their own size override it."""
        one = self.quantize(np.zeros((1, dim), np.float32))
        return {name: (a.shape if name in self.shared else (rows, *a.shape[1:]), a.dtype) for name, a in one.items()}

    def check_arrays(self, arrays: Arrays, dim: int) -> None:
        """Raise EdgeembError unless `arrays` are what this format stores for rows of width `dim`
        (read from a file: the lookup kernels trust the shapes they are given)."""
        if not 0 < dim <= MAX_WIDTH:
            raise EdgeembError(f"{self.name}: a row width of {dim}; edgeemb stores widths from 1 to {MAX_WIDTH}")
        self.check_width(dim)
        per_row = [a for name, a in arrays.items() if name not in self.shared]
        rows = per_row[0].shape[0] if per_row and per_row[0].ndim else 0
        expected = self.layout(rows, dim)
        for name in sorted(set(expected) | set(arrays)):
            if name not in arrays or name not in expected:
                raise EdgeembError(
                    f"{self.name}: array {name!r} is {'missing' if name not in arrays else 'not one of this format'}"
                )
            shape, dtype = expected[name]
            if arrays[name].shape != shape or arrays[name].dtype != dtype:
                got = f"{arrays[name].dtype} {arrays[name].shape}"
                raise EdgeembError(f"{self.name}: array {name!r} is {got}, expected {np.dtype(dtype)} {shape}")

    def onnx_rows(self, graph: OnnxGraph, data: Arrays, dim: int, path: str, ids: str) -> str:
        """Add the lookup of rows `ids` of a table stored as `data` to `graph` (formats whose
        `onnx` is set); returns the name of the float32 rows."""
        raise NotImplementedError(f"{self.name} has no ONNX mapping")

    def spec(self) -> dict:
        return {"name": self.name, **asdict(self)}


def reciprocal_or_zero(values: np.ndarray) -> np.ndarray:
    """1 / values as float32, and 0 where a value is 0 (an all-zero block quantises to zeros)."""
    values = values.astype(np.float32, copy=False)
    return np.divide(np.float32(1), values, out=np.zeros_like(values), where=values != 0)


@functools.cache
def _options_model(cls: type[QuantFormat]) -> type[BaseModel]:
    """A format's options as a strict pydantic model: its fields' annotations are the schema."""
    hints = get_type_hints(cls, include_extras=True)
    options: dict[str, Any] = {f.name: (hints[f.name], ...) for f in fields(cls)}
    config = ConfigDict(strict=True, arbitrary_types_allowed=True)
    return create_model(f"{cls.__name__}Options", __config__=config, **options)


def names() -> list[str]:
    return sorted(_REGISTRY)


def get_format(name: str, **options) -> QuantFormat:
    """Build a format from its name and options, e.g. get_format('int4', block_size=32)."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise EdgeembError(f"unknown quantisation format '{name}' (known: {', '.join(names())})") from None
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise EdgeembError(f"format '{name}' has no option '{unknown[0]}' (options: {', '.join(allowed) or 'none'})")
    return cls(**options)


def onnx_formats() -> dict[str, str]:
    """Each format that maps to ONNX, and how."""
    return {name: cls.onnx for name, cls in sorted(_REGISTRY.items()) if cls.onnx is not None}


def format_from_spec(spec: dict) -> QuantFormat:
    spec = dict(spec)
    return get_format(spec.pop("name"), **spec)
