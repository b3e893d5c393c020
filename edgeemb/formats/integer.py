"""Integer block formats: each block of `block_size` values in a row shares one fp16 scale.

Symmetric (the default): codes are unsigned with an implicit zero point at mid-range (2 for 2
bits, 8 for 4 bits, 128 for 8 bits), so a value is `(code - zero) * scale`. The scale is the
block's largest-magnitude value divided by `-zero` (as GGUF's Q4_0 does), which puts that value
exactly on the otherwise unused most-negative level and gives every block all 2**bits levels.

With `zero_point=True` (asymmetric), each block maps [min, max] onto the full code range and
stores its own zero point: better for blocks that are not centred on zero.

Scales are fp16 unless `scale_dtype: float32` (onnxruntime's own int4 Gather quantiser stores
float32 scales: 1 more bit per value at blocks of 32).

`int8-tensor` is the per-tensor kind: one scale and zero point for the whole table, as
onnxruntime's dynamic quantisation stores a Gather's table (uint8, asymmetric).

Sub-byte codes and zero points are packed low bits first (two 4-bit codes per byte, low nibble
first), the layout onnxruntime's GatherBlockQuantized reads with uint8 data: its default zero
point without a zero-point input is the same mid-range value used here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from pydantic import PositiveInt

from edgeemb.errors import EdgeembError
from edgeemb.formats.base import Arrays, QuantFormat, reciprocal_or_zero
from edgeemb.onnxgraph import OnnxGraph


@dataclass(frozen=True)
class _IntBlocks(QuantFormat, onnx="GatherBlockQuantized"):
    block_size: PositiveInt | None = None  # None: one block per row
    zero_point: bool = False
    scale_dtype: Literal["float16", "float32"] = "float16"
    bits: ClassVar[int]

    def _scales(self, exact: np.ndarray) -> np.ndarray:
        return _fp16_at_least(exact) if self.scale_dtype == "float16" else exact.astype(np.float32)

    def _block(self, dim: int) -> int:
        return dim if self.block_size is None else self.block_size

    def check_width(self, dim: int) -> None:
        block = self._block(dim)
        if block <= 0 or dim % block:
            raise EdgeembError(f"{self.name}: block size {block} does not divide the row width {dim}")
        if (block * self.bits) % 8:
            raise EdgeembError(f"{self.name}: block size {block} does not fill whole bytes at {self.bits} bits")

    def quantize(self, rows: np.ndarray) -> Arrays:
        n, dim = rows.shape
        self.check_width(dim)
        blocks = rows.astype(np.float32, copy=False).reshape(n, dim // self._block(dim), -1)
        top = (1 << self.bits) - 1
        if self.zero_point:
            # The range always includes 0, so zero is exact and a constant block keeps its value.
            low, high = np.minimum(blocks.min(axis=-1), 0), np.maximum(blocks.max(axis=-1), 0)
            scales = self._scales((high - low) / top)
            inverse = reciprocal_or_zero(scales)
            zeros = np.clip(np.rint(-low * inverse), 0, top)
        else:
            zero = 1 << (self.bits - 1)
            extreme = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=-1)[..., None], axis=-1)[..., 0]
            scales = self._scales(extreme / -zero)
            inverse = reciprocal_or_zero(scales)
            zeros = np.full(scales.shape, zero, np.float32)
        codes = np.clip(np.rint(blocks * inverse[..., None]) + zeros[..., None], 0, top).astype(np.uint8)
        arrays = {"codes": pack_codes(codes.reshape(n, dim), self.bits), "scales": scales}
        if self.zero_point:
            arrays["zero_points"] = pack_codes(zeros.astype(np.uint8), self.bits)
        return arrays

    def dequantize(self, arrays: Arrays, dim: int) -> np.ndarray:
        scales = arrays["scales"].astype(np.float32)
        n, count = scales.shape
        values = _decode(arrays["codes"], self.bits, 0 if self.zero_point else 1 << (self.bits - 1))
        values = values.reshape(n, count, -1)
        if self.zero_point:  # (code - zero) * scale, as onnxruntime's GatherBlockQuantized computes it
            values -= _unpack(arrays["zero_points"], self.bits, arrays["zero_points"].shape[1] * 8 // self.bits)[
                :, :count, None
            ]
        values *= scales[..., None]
        return values.reshape(n, dim)

    def lookup(self, arrays: Arrays, ids: np.ndarray, dim: int) -> np.ndarray:
        # numba is loaded by the first lookup, not by every import of the formats
        from edgeemb.formats import kernels

        codes = arrays["codes"]
        ids = kernels.row_ids(ids, len(codes))
        scales = np.take(arrays["scales"], ids, axis=0).astype(np.float32)
        zero_points = arrays["zero_points"] if self.zero_point else np.empty((0, 0), np.uint8)
        out = np.empty((len(ids), dim), np.float32)
        kernels.int_blocks(codes, ids, scales, zero_points, self.bits, out)
        return out

    def describe(self) -> str:
        blocks = "per row" if self.block_size is None else f"blocks of {self.block_size}"
        scales = "fp16" if self.scale_dtype == "float16" else "fp32"
        kind = f"asymmetric, {scales} scales and zero points" if self.zero_point else f"{scales} scales"
        return f"{self.name}, {blocks}, {kind}"

    def onnx_rows(self, graph: OnnxGraph, data: Arrays, dim: int, path: str, ids: str) -> str:
        # onnxruntime's GatherBlockQuantized reads the stored codes, scales and zero points as
        # they are, for blocks of a power of two of at least 16.
        block = self._block(dim)
        if block >= 16 and block & (block - 1) == 0:
            inputs = [graph.const(f"{path}.codes", data["codes"]), ids, graph.const(f"{path}.scales", data["scales"])]
            if self.zero_point:
                inputs.append(graph.const(f"{path}.zero_points", data["zero_points"]))
            rows = graph.op(
                "GatherBlockQuantized",
                inputs,
                domain="com.microsoft",
                gather_axis=0,
                quantize_axis=1,
                block_size=block,
                bits=self.bits,
            )
            return graph.float32(rows, data["scales"].dtype)
        if self.bits != 8:
            raise EdgeembError(
                f"ONNX export: {self.describe()}: GatherBlockQuantized needs blocks of a power of two of at least 16"
            )
        # int8 codes need no unpacking: gather them as (rows, blocks, block) and scale each block.
        n, blocks = data["scales"].shape
        codes = graph.gather(f"{path}.codes", data["codes"].reshape(n, blocks, -1), ids)
        scales = graph.gather(f"{path}.scales", data["scales"].reshape(n, blocks, 1), ids)
        if self.zero_point:
            zeros = graph.float32(
                graph.gather(f"{path}.zero_points", data["zero_points"].reshape(n, blocks, 1), ids), np.uint8
            )
        else:
            zeros = graph.const(f"{path}.zero", np.array(128, np.float32))  # the implicit symmetric zero point
        values = graph.op("Sub", [graph.float32(codes, np.uint8), zeros])
        return graph.op(
            "Reshape",
            [graph.op("Mul", [values, graph.float32(scales, data["scales"].dtype)]), graph.rows_shape(ids, dim)],
        )


class Int8(_IntBlocks, name="int8", bits=8):
    """int8 codes; one block per row by default."""


@dataclass(frozen=True)
class Int4(_IntBlocks, name="int4", bits=4):
    block_size: PositiveInt | None = 32


@dataclass(frozen=True)
class Int2(_IntBlocks, name="int2", bits=2):
    block_size: PositiveInt | None = 32


class Int8Tensor(QuantFormat, name="int8-tensor", onnx="DequantizeLinear"):
    """uint8 codes with one float32 scale and one zero point for the whole table: onnxruntime's
    dynamic quantisation of a Gather's table (`scale = (max - min) / 255` over a range that
    includes 0, `zero_point = round(-min / scale)`), decoded as its DequantizeLinear does."""

    shared: ClassVar[frozenset[str]] = frozenset({"scale", "zero_point"})

    def check_width(self, dim: int) -> None:
        pass

    def quantize(self, rows: np.ndarray) -> Arrays:
        low, high = min(float(rows.min()), 0.0), max(float(rows.max()), 0.0)
        scale = np.float32((high - low) / 255) if high > low else np.float32(1)
        zero = np.uint8(np.clip(np.rint(-low / scale), 0, 255))
        codes = np.clip(np.rint(rows / scale) + np.float32(zero), 0, 255).astype(np.uint8)
        return {"codes": codes, "scale": np.array([scale], np.float32), "zero_point": np.array([zero], np.uint8)}

    def quantize_table(self, weight: np.ndarray) -> Arrays:
        return self.quantize(weight.astype(np.float32, copy=False))  # one range: the whole table's

    def dequantize(self, arrays: Arrays, dim: int) -> np.ndarray:
        return (arrays["codes"].astype(np.float32) - np.float32(arrays["zero_point"][0])) * arrays["scale"][0]

    def describe(self) -> str:
        return "int8-tensor, one fp32 scale and zero point per table"

    def onnx_rows(self, graph: OnnxGraph, data: Arrays, dim: int, path: str, ids: str) -> str:
        # As onnxruntime's dynamic quantisation writes it: gather the uint8 rows, then dequantise.
        codes = graph.gather(f"{path}.codes", data["codes"], ids)
        scale, zero_point = (
            graph.const(f"{path}.scale", data["scale"][0]),
            graph.const(f"{path}.zero_point", data["zero_point"][0]),
        )
        return graph.op("DequantizeLinear", [codes, scale, zero_point])


def _decode(packed: np.ndarray, bits: int, zero: int) -> np.ndarray:
    """Packed codes -> float32 (code - zero), (n, values per row).

    Sub-byte codes decode through a lookup table indexed by two bytes at once (65536 entries,
    1-2 MB, cache-resident): one `np.take` instead of shifting, masking and converting, which
    keeps a lookup of int4 rows within reach of a plain fp32 gather."""
    if bits == 8:
        # code - 128 is the code read as int8 with its top bit flipped: one conversion, no subtraction pass.
        return (packed ^ np.uint8(zero)).view(np.int8).astype(np.float32) if zero else packed.astype(np.float32)
    packed = np.ascontiguousarray(packed)
    n = packed.shape[0]
    if packed.shape[1] % 2 == 0:
        return np.take(_pair_values(bits, zero), packed.view("<u2"), axis=0).reshape(n, -1)
    return np.take(_byte_values(bits, zero), packed, axis=0).reshape(n, -1)


@functools.cache
def _byte_values(bits: int, zero: int) -> np.ndarray:
    """(256, 8 // bits) float32: the codes packed in each byte value, low bits first, minus `zero`."""
    shifts = np.arange(8 // bits, dtype=np.uint16) * bits
    return ((np.arange(256, dtype=np.uint16)[:, None] >> shifts) & ((1 << bits) - 1)).astype(np.float32) - zero


@functools.cache
def _pair_values(bits: int, zero: int) -> np.ndarray:
    """(65536, 16 // bits) float32: the codes of a little-endian pair of bytes, first byte first."""
    single = _byte_values(bits, zero)
    pairs = np.arange(65536)
    return np.concatenate([single[pairs & 255], single[pairs >> 8]], axis=1)


def _fp16_at_least(exact: np.ndarray) -> np.ndarray:
    """fp16 scales rounded away from zero, so the block's extreme values stay inside the code
    range instead of being clipped by nearly a whole step."""
    scales = exact.astype(np.float16)
    shrunk = np.abs(scales.astype(np.float32)) < np.abs(exact)
    return np.where(shrunk, np.nextafter(scales, np.copysign(np.float16(np.inf), scales)), scales)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """(n, d) uint8 codes of `bits` bits -> (n, ceil(d * bits / 8)) bytes, low bits first, each
    row padded with zeros to whole bytes (as onnxruntime pads packed zero points)."""
    if bits == 8:
        return codes
    per_byte = 8 // bits
    pad = -codes.shape[1] % per_byte
    groups = (np.pad(codes, ((0, 0), (0, pad))) if pad else codes).reshape(codes.shape[0], -1, per_byte)
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    return np.bitwise_or.reduce(groups << shifts, axis=-1).astype(np.uint8)


def _unpack(packed: np.ndarray, bits: int, dim: int) -> np.ndarray:
    if bits == 8:
        return packed
    per_byte = 8 // bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    codes = (packed[..., None] >> shifts) & ((1 << bits) - 1)
    return codes.reshape(packed.shape[0], -1)[:, :dim]
