"""Fused lookup kernels: gather rows by id and decode them to float32 in one pass, as llama.cpp's
get_rows and onnxruntime's GatherBlockQuantized do.

The numpy decoders (`QuantFormat.dequantize`) stay the reference: whole-table decodes and
byte-compatibility with gguf go through them. A lookup of a few thousand rows is different: numpy
makes at least two passes over the float32 output (convert, then scale), which held 4- and 5-bit
lookups to 24-48% of a plain fp32 gather. These kernels write each output value once, compute it
with the same float32 operations in the same order (no fast-math, so no fused multiply-adds), and
so return exactly what `dequantize` returns for the same rows; tests hold them to that.

fp16 scales are read through `HALF`, every fp16 bit pattern's float32 value (numba has no fp16).
The formats import this module on their first lookup: importing numba costs ~0.5 s and ~85 MB of
RSS, which a process that never looks rows up (a benchmark worker, most commands) need not pay.
"""

from __future__ import annotations

import numba
import numpy as np

HALF = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)

_jit = numba.njit(nogil=True, cache=True, boundscheck=False)


@_jit
def _half(raw: np.ndarray, at: int, half: np.ndarray) -> np.float32:
    """The fp16 stored little-endian at raw[at], raw[at + 1]."""
    return half[np.int64(raw[at]) | (np.int64(raw[at + 1]) << 8)]


@numba.njit(inline="always")
def _int_rows(
    codes: np.ndarray,
    ids: np.ndarray,
    scales: np.ndarray,
    zero_points: np.ndarray,
    zero: int,
    bits: int,
    out: np.ndarray,
) -> None:
    per_byte, mask = 8 // bits, (1 << bits) - 1
    blocks = scales.shape[1]
    block_bytes = out.shape[1] // blocks // per_byte
    for r in range(ids.shape[0]):
        row, values = codes[ids[r]], out[r]
        for b in range(blocks):
            scale = scales[r, b]
            offset = np.float32(zero)
            if zero_points.shape[0]:
                offset = np.float32((np.int32(zero_points[ids[r], b // per_byte]) >> ((b % per_byte) * bits)) & mask)
            packed = row[b * block_bytes : (b + 1) * block_bytes]
            decoded = values[b * block_bytes * per_byte : (b + 1) * block_bytes * per_byte]
            for i in range(block_bytes):
                byte = np.int32(packed[i])
                for k in range(per_byte):
                    decoded[i * per_byte + k] = (np.float32((byte >> (k * bits)) & mask) - offset) * scale


@_jit
def int_blocks(
    codes: np.ndarray, ids: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, bits: int, out: np.ndarray
) -> None:
    """Integer block formats, codes packed low bits first: out[r, v] = (code - zero) * scale for
    row ids[r]. `scales` is float32 (len(ids), blocks), already gathered; `zero_points` the whole
    table's packed zero points, or an empty array for the implicit mid-range zero point. Each width
    gets its own inlined loop over one row's slices, its shifts constants the compiler unrolls: twice
    as fast for int8 as reading codes through a per-byte table, and as fast for int4/int2."""
    zero = 1 << (bits - 1)
    if bits == 8:
        _int_rows(codes, ids, scales, zero_points, zero, 8, out)
    elif bits == 4:
        _int_rows(codes, ids, scales, zero_points, zero, 4, out)
    else:
        _int_rows(codes, ids, scales, zero_points, zero, 2, out)


@_jit
def q8_0(blocks: np.ndarray, ids: np.ndarray, half: np.ndarray, out: np.ndarray) -> None:
    for r in range(ids.shape[0]):
        raw = blocks[ids[r]]
        for b in range(out.shape[1] // 32):
            at = b * 34
            d = _half(raw, at, half)
            for j in range(32):
                out[r, b * 32 + j] = np.float32(np.int8(raw[at + 2 + j])) * d


@_jit
def q4_0(blocks: np.ndarray, ids: np.ndarray, half: np.ndarray, out: np.ndarray) -> None:
    for r in range(ids.shape[0]):
        raw = blocks[ids[r]]
        for b in range(out.shape[1] // 32):
            at, base = b * 18, b * 32
            d = _half(raw, at, half)
            for j in range(16):
                byte = np.int32(raw[at + 2 + j])
                out[r, base + j] = np.float32((byte & 15) - 8) * d
                out[r, base + 16 + j] = np.float32((byte >> 4) - 8) * d


@_jit
def q5_0(blocks: np.ndarray, ids: np.ndarray, half: np.ndarray, out: np.ndarray) -> None:
    for r in range(ids.shape[0]):
        raw = blocks[ids[r]]
        for b in range(out.shape[1] // 32):
            at, base = b * 22, b * 32
            d = _half(raw, at, half)
            high = (
                np.int64(raw[at + 2])
                | (np.int64(raw[at + 3]) << 8)
                | (np.int64(raw[at + 4]) << 16)
                | (np.int64(raw[at + 5]) << 24)
            )
            for j in range(16):
                byte = np.int64(raw[at + 6 + j])
                out[r, base + j] = np.float32(((byte & 15) | (((high >> j) & 1) << 4)) - 16) * d
                out[r, base + 16 + j] = np.float32(((byte >> 4) | (((high >> (j + 16)) & 1) << 4)) - 16) * d


@_jit
def q4_1(blocks: np.ndarray, ids: np.ndarray, half: np.ndarray, out: np.ndarray) -> None:
    for r in range(ids.shape[0]):
        raw = blocks[ids[r]]
        for b in range(out.shape[1] // 32):
            at, base = b * 20, b * 32
            d, low = _half(raw, at, half), _half(raw, at + 2, half)
            for j in range(16):
                byte = np.int32(raw[at + 4 + j])
                out[r, base + j] = np.float32(byte & 15) * d + low
                out[r, base + 16 + j] = np.float32(byte >> 4) * d + low


@_jit
def q6_k(blocks: np.ndarray, ids: np.ndarray, half: np.ndarray, out: np.ndarray) -> None:
    """llama.cpp's dequantize_row_q6_K: per half of 128 values, ql byte l holds the low nibbles of
    values l and l+64, byte l+32 those of l+32 and l+96; qh byte l their top 2 bits; one int8
    scale per 16 values, under an fp16 d. The codes of a super-block are unpacked first, then
    scaled in runs of 16: two simple loops the compiler vectorises, where one mixed loop was not."""
    codes = np.empty(256, np.float32)
    for r in range(ids.shape[0]):
        raw = blocks[ids[r]]
        for s in range(out.shape[1] // 256):
            at = s * 210
            for h in range(2):
                ql, qh, base = at + 64 * h, at + 128 + 32 * h, 128 * h
                for lane in range(32):
                    low0, low1, top = np.int32(raw[ql + lane]), np.int32(raw[ql + 32 + lane]), np.int32(raw[qh + lane])
                    codes[base + lane] = np.float32(((low0 & 15) | ((top & 3) << 4)) - 32)
                    codes[base + 32 + lane] = np.float32(((low1 & 15) | (((top >> 2) & 3) << 4)) - 32)
                    codes[base + 64 + lane] = np.float32(((low0 >> 4) | (((top >> 4) & 3) << 4)) - 32)
                    codes[base + 96 + lane] = np.float32(((low1 >> 4) | (((top >> 6) & 3) << 4)) - 32)
            d = _half(raw, at + 208, half)
            for k in range(16):
                step = d * np.float32(np.int8(raw[at + 192 + k]))
                for j in range(16):
                    out[r, s * 256 + 16 * k + j] = step * codes[16 * k + j]


@_jit
def q4_k(blocks: np.ndarray, ids: np.ndarray, half: np.ndarray, out: np.ndarray) -> None:
    """llama.cpp's dequantize_row_q4_K: fp16 d and dmin, 6-bit scales and mins, nibbles."""
    for r in range(ids.shape[0]):
        raw = blocks[ids[r]]
        for s in range(out.shape[1] // 256):
            at = s * 144
            d, dmin = _half(raw, at, half), _half(raw, at + 2, half)
            packed = at + 4
            for j in range(8):  # sub-blocks of 32; llama.cpp's get_scale_min_k4
                if j < 4:
                    scale, low = np.int32(raw[packed + j]) & 63, np.int32(raw[packed + j + 4]) & 63
                else:
                    scale = (np.int32(raw[packed + j + 4]) & 15) | ((np.int32(raw[packed + j - 4]) >> 6) << 4)
                    low = (np.int32(raw[packed + j + 4]) >> 4) | ((np.int32(raw[packed + j]) >> 6) << 4)
                step, offset = d * np.float32(scale), dmin * np.float32(low)
                qs, shift, base = at + 16 + 32 * (j // 2), 4 * (j % 2), s * 256 + 32 * j
                for lane in range(32):
                    out[r, base + lane] = np.float32((np.int32(raw[qs + lane]) >> shift) & 15) * step - offset


def row_ids(ids: np.ndarray, rows: int) -> np.ndarray:
    """`ids` as intp, refused as np.take refuses them when out of range (the kernels do not check);
    negative ids count from the end, as in np.take."""
    ids = np.asarray(ids, dtype=np.intp)
    if not ids.size:
        return ids
    lowest = ids.min()
    if lowest < -rows or ids.max() >= rows:
        raise IndexError(f"token id out of range for a table of {rows} rows")
    return np.where(ids < 0, ids + rows, ids) if lowest < 0 else ids
