"""The flash store: an embedding table's rows as bytes in a page-aligned file, laid out for the
way a decoder reads them.

Layouts (`Layout.kind`):
- `single`: one record per token, as the model's input table. Records never straddle a page
  (a 680-byte Q8_0 row of Gemma 3 270M: 6 per 4 KiB page), so a row costs one page read.
- `ple`: the record split into `layers` slices, one per decoder layer, as Gemma 3n's per-layer
  embeddings; a token's slices are contiguous (token-major), so one token costs one read.
- `ple-layer`: the same slices stored layer-major (one table per layer), the naive layout: a
  token costs a read per layer. It is here to show what token-major saves.
Slices split the record's bytes as evenly as possible (an emulation of sizes; a per-layer runtime
would store each layer's columns as a decodable table of its own).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from edgeemb.errors import EdgeembError
from edgeemb.outputs import MARK, check_target, register_mark, staged
from edgeemb.sources.base import SourceModel
from edgeemb.table import EmbeddingTable, as_records

LayoutKind = Literal["single", "ple", "ple-layer"]
LAYOUTS: tuple[str, ...] = ("single", "ple", "ple-layer")


@dataclass(frozen=True, eq=False)
class StoredRows:
    """A table as the bytes a device would keep on flash, a fixed-size record per row."""

    records: np.ndarray  # uint8 (rows, record_bytes)
    resident_bytes: int  # what a lookup needs besides its row (codebooks, a low-rank right factor)
    describe: str

    @property
    def nbytes(self) -> int:
        return self.records.nbytes + self.resident_bytes


def table_rows(table: EmbeddingTable) -> StoredRows:
    """The rows of an edgeemb table as its storage keeps them, one record per row."""
    records, resident = table.row_records()
    return StoredRows(records, resident, table.describe())


def source_rows(source: SourceModel) -> StoredRows:
    """The rows of a source model exactly as its file stores them (a GGUF tensor's own blocks)."""
    if source.format == "gguf":
        from edgeemb.sources.gguf import read_gguf_header, tensor_bytes

        info = read_gguf_header(source.weights_file).tensor(source.tensor_name)
        return StoredRows(tensor_bytes(source.weights_file, info), 0, info.type_name)
    weight = source.table.weight
    if source.stored_dtype == "F16":
        return StoredRows(as_records(weight.astype(np.float16)), 0, "F16")
    if source.stored_dtype == "BF16":  # bf16 is the top half of float32; the source's values are exact in it
        return StoredRows(as_records((weight.view(np.uint32) >> 16).astype(np.uint16)), 0, "BF16")
    return StoredRows(as_records(weight), 0, source.stored_dtype)


@dataclass(frozen=True)
class Layout:
    """Where each cache unit (a row, or one layer's slice of a row) lives in the store file."""

    kind: LayoutKind
    rows: int
    record_bytes: int
    page_size: int
    layers: int = 1

    def __post_init__(self) -> None:
        if self.kind not in LAYOUTS:
            raise EdgeembError(f"unknown layout {self.kind!r}; choose one of {', '.join(LAYOUTS)}")
        if self.layers < 1 or (self.kind == "single" and self.layers != 1):
            raise EdgeembError("the single layout has one lookup per token; per-layer lookups need --layout ple")
        if self.layers > self.record_bytes:
            raise EdgeembError(f"cannot split a {self.record_bytes}-byte row across {self.layers} layers")

    @property
    def slice_bytes(self) -> np.ndarray:
        """Bytes of each layer's slice of a record (all of it for `single`); a slice is the cache
        unit, numbered token * layers + layer."""
        base, extra = divmod(self.record_bytes, self.layers)
        return np.array([base + (i < extra) for i in range(self.layers)], dtype=np.int64)

    def extents(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(offset, size) in the file of every unit of each token: arrays (len(tokens), layers)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        sizes = np.broadcast_to(self.slice_bytes, (len(tokens), self.layers))
        within = np.concatenate([[0], np.cumsum(self.slice_bytes)[:-1]])
        if self.kind == "ple-layer":
            bases = np.concatenate(
                [[0], np.cumsum([_packed_bytes(self.rows, int(s), self.page_size) for s in self.slice_bytes])[:-1]]
            )
            offsets = np.stack(
                [
                    bases[layer] + _packed_offsets(tokens, int(s), self.page_size)
                    for layer, s in enumerate(self.slice_bytes)
                ],
                axis=1,
            )
        else:
            offsets = _packed_offsets(tokens, self.record_bytes, self.page_size)[:, None] + within[None, :]
        return offsets, np.array(sizes)

    @property
    def file_bytes(self) -> int:
        if self.kind == "ple-layer":
            return sum(_packed_bytes(self.rows, int(s), self.page_size) for s in self.slice_bytes)
        return _packed_bytes(self.rows, self.record_bytes, self.page_size)

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "layers": self.layers,
            "rows": self.rows,
            "record_bytes": self.record_bytes,
            "slice_bytes": sorted({int(s) for s in self.slice_bytes}),
            "page_size": self.page_size,
            "file_bytes": self.file_bytes,
            "padding_bytes": self.file_bytes - self.rows * self.record_bytes,
        }


def _packed_offsets(rows: np.ndarray, size: int, page: int) -> np.ndarray:
    """Offsets of records of `size` bytes packed so that none straddles a page it could fit in."""
    if size <= page:
        per_page = page // size
        return (rows // per_page) * page + (rows % per_page) * size
    return rows * (-(-size // page) * page)


def _packed_bytes(rows: int, size: int, page: int) -> int:
    if size <= page:
        return -(-rows // (page // size)) * page
    return rows * (-(-size // page) * page)


# A store ends with this trailer after its last page: readers never reach it (they read pages at
# the layout's offsets), and it marks the file as edgeemb's.
TRAILER = f"\n{MARK} flash store\n".encode()


def write_store(path: Path, rows: StoredRows, layout: Layout, force: bool = False) -> None:
    """Write the store file for `layout` atomically (a temporary sibling, then renamed)."""
    path = Path(path)
    check_target(path, force)
    bounds = np.concatenate([[0], np.cumsum(layout.slice_bytes)])
    # ple-layer stores one packed table per layer; the token-major layouts pack whole records
    columns = (
        [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
        if layout.kind == "ple-layer"
        else [(0, layout.record_bytes)]
    )
    with staged(path, force) as temporary, open(temporary, "wb") as handle:
        for first, last in columns:
            _write_packed(handle, rows.records, first, last, layout.page_size)
        handle.write(TRAILER)
        handle.flush()
        os.fsync(handle.fileno())


@register_mark(".store", "*")  # a store may have any name: its trailer is the mark
def _marked(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - 64))
        last = handle.read().rsplit(b"\n", 2)
    return len(last) == 3 and last[1].startswith(b"edgeemb ") and last[1].endswith(b" flash store") and not last[2]


def _write_packed(handle, records: np.ndarray, first: int, last: int, page: int) -> None:
    """Append columns [first, last) of every record, packed as `_packed_offsets` places them."""
    size = last - first
    per_page = page // size if size <= page else 1
    stride = page if size <= page else -(-size // page) * page
    chunk = per_page * max(1, (1 << 22) // stride)  # whole pages at a time, about 4 MiB
    for start in range(0, len(records), chunk):
        part = np.asarray(records[start : start + chunk, first:last])
        groups = -(-len(part) // per_page)
        padded = np.zeros((groups * per_page, size), np.uint8)
        padded[: len(part)] = part
        pages = np.zeros((groups, stride), np.uint8)
        pages[:, : per_page * size] = padded.reshape(groups, per_page * size)
        handle.write(pages.tobytes())
