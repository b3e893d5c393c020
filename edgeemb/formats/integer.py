"""Integer block formats: each block of `block_size` values in a row shares one fp16 scale.

Codes are unsigned with an implicit zero point at the middle of the range (8 for 4 bits, 128 for
8 bits), so a value is `(code - zero) * scale`. The scale is the block's largest-magnitude value
divided by `-zero` (as GGUF's Q4_0 does), which puts that value exactly on the otherwise unused
most-negative level and gives every block all 2**bits levels.

Sub-byte codes are packed low bits first (two 4-bit codes per byte: low nibble first), the layout
onnxruntime's GatherBlockQuantized reads with uint8 data and its default zero point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from edgeemb.errors import EdgeembError
from edgeemb.formats import Arrays, QuantFormat, register


@dataclass(frozen=True)
class _IntBlocks(QuantFormat):
    block_size: int | None = None  # None: one block per row
    bits: ClassVar[int]

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
        zero = 1 << (self.bits - 1)
        blocks = rows.astype(np.float32, copy=False).reshape(n, dim // self._block(dim), -1)
        extreme = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=-1)[..., None], axis=-1)
        exact = extreme[..., 0] / -zero
        scales = exact.astype(np.float16)
        # Round the stored fp16 scale away from zero, so the extreme value still maps inside the
        # code range instead of being clipped by nearly a whole step.
        shrunk = np.abs(scales.astype(np.float32)) < np.abs(exact)
        scales = np.where(shrunk, np.nextafter(scales, np.copysign(np.float16(np.inf), scales)), scales)
        stored = scales.astype(np.float32)[..., None]
        inverse = np.divide(1.0, stored, out=np.zeros_like(stored), where=stored != 0)
        codes = np.clip(np.rint(blocks * inverse) + zero, 0, (1 << self.bits) - 1).astype(np.uint8)
        return {"codes": _pack(codes.reshape(n, dim), self.bits), "scales": scales}

    def dequantize(self, arrays: Arrays, dim: int) -> np.ndarray:
        codes = _unpack(arrays["codes"], self.bits, dim)
        n = codes.shape[0]
        zero = 1 << (self.bits - 1)
        blocks = (codes.astype(np.float32) - zero).reshape(n, arrays["scales"].shape[1], -1)
        return (blocks * arrays["scales"].astype(np.float32)[..., None]).reshape(n, dim)

    def describe(self) -> str:
        blocks = "per row" if self.block_size is None else f"blocks of {self.block_size}"
        return f"{self.name}, {blocks}, fp16 scales"


@register
@dataclass(frozen=True)
class Int8(_IntBlocks):
    name: ClassVar[str] = "int8"
    bits: ClassVar[int] = 8


@register
@dataclass(frozen=True)
class Int4(_IntBlocks):
    name: ClassVar[str] = "int4"
    bits: ClassVar[int] = 4
    block_size: int | None = 32


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """(n, d) uint8 codes of `bits` bits -> (n, d * bits / 8) bytes, low bits first."""
    if bits == 8:
        return codes
    per_byte = 8 // bits
    groups = codes.reshape(codes.shape[0], -1, per_byte)
    shifts = (np.arange(per_byte, dtype=np.uint8) * bits)
    return np.bitwise_or.reduce(groups << shifts, axis=-1).astype(np.uint8)


def _unpack(packed: np.ndarray, bits: int, dim: int) -> np.ndarray:
    if bits == 8:
        return packed
    per_byte = 8 // bits
    shifts = (np.arange(per_byte, dtype=np.uint8) * bits)
    codes = (packed[..., None] >> shifts) & ((1 << bits) - 1)
    return codes.reshape(packed.shape[0], dim)
