"""GGUF block formats: each row stored as exactly the bytes llama.cpp keeps for it.

A format's only array is `blocks`, uint8 of shape (rows, bytes per row): the row's GGML blocks
back to back. Writing a GGUF tensor is a copy of `blocks`; reading one back is a view of its bytes.

- Q8_0, Q5_0, Q4_0, Q4_1: blocks of 32 values with an fp16 scale (and an fp16 minimum for Q4_1).
  The quantisers are gguf-py's formulas (themselves llama.cpp's reference ones), so the bytes are
  identical to `gguf.quants.quantize`.
- Q6_K, Q4_K: super-blocks of 256 values with 6-bit sub-block scales under one fp16 scale. gguf-py
  cannot quantise these; the quantisers port llama.cpp's `quantize_row_q6_K_ref` (make_qx_quants)
  and `quantize_row_q4_K_ref` (make_qkx2_quants), searching all sub-blocks at once. Floats are
  summed in another order than in C, so a near-tie between two scale candidates can resolve the
  other way: against llama.cpp's own quantiser, Q6_K bytes matched exactly and Q4_K in ~99% of
  super-blocks, at the same error.

Every decoder is numpy over whole blocks, written to give the same float32 values as
`gguf.quants.dequantize` (and llama.cpp's dequantize_row_*): same products, same order.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from edgeemb.errors import EdgeembError
from edgeemb.formats.base import Arrays, QuantFormat, reciprocal_or_zero
from edgeemb.progress import track

_F32 = np.float32
_GROUP_MAX_EPS = 1e-15  # llama.cpp: a (sub-)block whose largest magnitude is below this is zero
# Values encoded at a time. Encoders make many passes over their input (K-quants ~7 per candidate
# scale): tiles keep their temporaries near the CPU (Q8_0: 3x faster than 16384-row chunks), but
# each pass is a numpy call, whose fixed cost holds the GIL. Measured with two threads on 32768 x
# 1024: Q4_K 19.6 s in tiles of 2^14 values, 3.0 s in 2^17, 2.5 s in 2^18 and 2^19.
_TILE_VALUES = 1 << 18
# Q5_0's fifth bits: byte value -> its 8 bits, low first, each as 0x10 (the bit's place in a code).
_FIFTH_BITS = (((np.arange(256)[:, None] >> np.arange(8)) & 1) << 4).astype(np.uint8)


@dataclass(frozen=True)
class GGMLFormat(QuantFormat):
    """A GGML block type, declared by its type: `class Q8_0(GGMLFormat, qtype=..., kernel="q8_0")`
    (its name is the type's). `kernel` is its fused lookup (blocks, ids, HALF, out) -> None: the
    name of a function in `kernels`, or, for a format in a file of its own, a function that
    returns the compiled kernel (numba loads on the first lookup, not on import)."""

    qtype: ClassVar[GGMLQuantizationType]
    kernel: ClassVar[str | Callable[[], Callable[..., None]]]

    def __init_subclass__(cls, qtype: GGMLQuantizationType | None = None, **traits: object) -> None:
        if qtype is not None:
            traits = {"name": qtype.name, "qtype": qtype, **traits}
        super().__init_subclass__(**traits)  # type: ignore[arg-type]

    @property
    def _block(self) -> int:
        return GGML_QUANT_SIZES[self.qtype][0]

    @property
    def _block_bytes(self) -> int:
        return GGML_QUANT_SIZES[self.qtype][1]

    def check_width(self, dim: int) -> None:
        if dim <= 0 or dim % self._block:
            raise EdgeembError(f"{self.name} needs a row width that is a multiple of {self._block}; {dim} is not")

    def quantize(self, rows: np.ndarray) -> Arrays:
        n, dim = rows.shape
        self.check_width(dim)
        blocks = rows.astype(_F32, copy=False).reshape(-1, self._block)
        # Tiles of whole blocks, each encoded at once, shared out to one thread per CPU: numpy
        # releases the GIL in each pass (on 163840 x 1024 with two CPUs: Q6_K 11.0 -> 8.1 s, Q4_K
        # 16.3 -> 11.3 s; every block is encoded on its own, so the bytes do not change).
        step = _TILE_VALUES // self._block
        with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
            tiles = list(
                pool.map(self._encode, (blocks[start : start + step] for start in range(0, len(blocks), step)))
            )
        encoded = np.concatenate(tiles) if tiles else np.empty((0, self._block_bytes), np.uint8)
        return {"blocks": encoded.reshape(n, dim // self._block * self._block_bytes)}

    def dequantize(self, arrays: Arrays, dim: int) -> np.ndarray:
        raw = arrays["blocks"]
        return self._decode(raw.reshape(-1, self._block_bytes)).reshape(raw.shape[0], dim)

    def lookup(self, arrays: Arrays, ids: np.ndarray, dim: int) -> np.ndarray:
        # numba is loaded by the first lookup, not by every import of the formats
        from edgeemb.formats import kernels

        blocks = arrays["blocks"]
        ids = kernels.row_ids(ids, len(blocks))
        out = np.empty((len(ids), dim), _F32)
        declared = type(self).kernel  # from the class: a function there would bind to the instance
        kernel = getattr(kernels, declared) if isinstance(declared, str) else declared()
        kernel(blocks, ids, kernels.HALF, out)
        return out

    def describe(self) -> str:
        bits = 8 * self._block_bytes / self._block
        return f"GGUF {self.name} ({bits:g} bits/value, blocks of {self._block})"

    def _encode(self, blocks: np.ndarray) -> np.ndarray:
        """float32 (blocks, block) -> uint8 (blocks, block_bytes), for one tile of blocks."""
        raise NotImplementedError

    def _decode(self, raw: np.ndarray) -> np.ndarray:
        """uint8 (blocks, block_bytes) -> float32 (blocks, block)."""
        raise NotImplementedError


# --- legacy formats: blocks of 32 --------------------------------------------------------------


class Q8_0(GGMLFormat, qtype=GGMLQuantizationType.Q8_0, kernel="q8_0"):
    def _encode(self, blocks: np.ndarray) -> np.ndarray:
        d = np.abs(blocks).max(axis=1, keepdims=True) / 127
        q = _round_half_away(blocks * reciprocal_or_zero(d))
        return np.concatenate([_fp16_bytes(d), q.astype(np.int8).view(np.uint8)], axis=1)

    def _decode(self, raw: np.ndarray) -> np.ndarray:
        values = raw[:, 2:].view(np.int8).astype(_F32)
        values *= _fp16(raw[:, :2])
        return values


@dataclass(frozen=True)
class _Symmetric(GGMLFormat, weighted=True):
    """Q4_0, Q5_0: the block's largest-magnitude value lands on the lowest code, -2**(bits-1).

    `search=True` keeps the layout (llama.cpp reads it unchanged) but picks each block's scale by
    least squares over 19 candidates, as llama.cpp's make_qx_quants does, with uniform weights: on
    SmolLM2's table ~9% less squared error than the reference rule for Q4_0 and Q5_0. (With
    make_qx_quants' own x**2 weights the error does not drop for Q4_0.) The bytes then differ
    from gguf's and llama.cpp's reference quantiser, which is the point."""

    bits: ClassVar[int]
    search: bool = False

    def quantize_weighted(self, rows: np.ndarray, importance: np.ndarray) -> Arrays:
        """As `quantize` with `search`, each block's least-squares fit weighted as llama.cpp's
        imatrix quantiser weighs it: importance[j] * sqrt(mean(row**2) + x[j]**2), where
        importance[j] is the mean square of input j of the matmul that reads the table (for a
        tied head: the final hidden state), so errors land where they move the logits least."""
        n, dim = rows.shape
        self.check_width(dim)
        if importance.shape != (dim,):
            raise EdgeembError(f"{self.name}: importance has shape {importance.shape}, expected ({dim},)")
        step = max(1, _TILE_VALUES // dim)
        tiles = []
        for start in track(range(0, n, step), f"quantize {self.name} (weighted)", -(-n // step)):
            x = rows[start : start + step].astype(_F32, copy=False)
            weights = importance.astype(_F32) * np.sqrt((x * x).mean(axis=1, keepdims=True) + x * x)
            tiles.append(self._encode(x.reshape(-1, self._block), weights.reshape(-1, self._block)))
        return {"blocks": np.concatenate(tiles).reshape(n, -1)}

    def _encode(self, blocks: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """As `GGMLFormat._encode`, each block's scale fitted under `weights` when given."""
        raise NotImplementedError

    def _codes(self, blocks: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        zero = 1 << (self.bits - 1)
        if self.search or weights is not None:
            columns = np.ascontiguousarray(blocks.T)  # _make_qx_quants fits one column per block
            w = np.ones_like(columns) if weights is None else np.ascontiguousarray(weights.T)
            scale, codes = _make_qx_quants(columns, zero, w)
            return scale[:, None], codes.T.astype(np.uint8)
        extreme = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None], axis=1)
        d = extreme / -zero
        q = np.trunc(blocks * reciprocal_or_zero(d) + _F32(zero + 0.5))
        return d, np.minimum(q, 2 * zero - 1).astype(np.uint8)

    def describe(self) -> str:
        return super().describe() + (", least-squares scales" if self.search else "")


class Q4_0(_Symmetric, qtype=GGMLQuantizationType.Q4_0, kernel="q4_0", bits=4):
    def _encode(self, blocks: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        d, q = self._codes(blocks, weights)
        return np.concatenate([_fp16_bytes(d), _pack_nibbles(q)], axis=1)

    def _decode(self, raw: np.ndarray) -> np.ndarray:
        return _scaled(_unpack_nibbles(raw[:, 2:]), 8, raw[:, :2])


class Q5_0(_Symmetric, qtype=GGMLQuantizationType.Q5_0, kernel="q5_0", bits=5):
    def _encode(self, blocks: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        d, q = self._codes(blocks, weights)
        high = np.packbits(q >> 4, axis=1, bitorder="little")  # bit j of a little-endian u32: value j's 5th bit
        return np.concatenate([_fp16_bytes(d), high, _pack_nibbles(q & 0x0F)], axis=1)

    def _decode(self, raw: np.ndarray) -> np.ndarray:
        q = _unpack_nibbles(raw[:, 6:])
        q |= np.take(_FIFTH_BITS, raw[:, 2:6], axis=0).reshape(q.shape)
        return _scaled(q, 16, raw[:, :2])


class Q4_1(GGMLFormat, qtype=GGMLQuantizationType.Q4_1, kernel="q4_1"):
    def _encode(self, blocks: np.ndarray) -> np.ndarray:
        low = blocks.min(axis=1, keepdims=True)
        d = (blocks.max(axis=1, keepdims=True) - low) / 15
        q = np.minimum(np.trunc((blocks - low) * reciprocal_or_zero(d) + _F32(0.5)), 15).astype(np.uint8)
        return np.concatenate([_fp16_bytes(d), _fp16_bytes(low), _pack_nibbles(q)], axis=1)

    def _decode(self, raw: np.ndarray) -> np.ndarray:
        values = _unpack_nibbles(raw[:, 4:]).astype(_F32)
        values *= _fp16(raw[:, :2])
        values += _fp16(raw[:, 2:4])
        return values


# --- K-quants: super-blocks of 256 -------------------------------------------------------------


@dataclass(frozen=True)
class _KQuant(GGMLFormat):
    fallback: ClassVar[str]  # what llama-quantize stores instead when a row is not whole super-blocks

    def check_width(self, dim: int) -> None:
        if dim <= 0 or dim % self._block:
            others = ", ".join(name for name in ("Q8_0", "Q5_0", "Q4_0") if name != self.fallback)
            raise EdgeembError(
                f"{self.name} needs a row width that is a multiple of {self._block}; {dim} is not "
                f"(all-MiniLM 384, SmolLM2 576 and Gemma 3 640 are such widths, and llama.cpp cannot store "
                f"them as {self.name} either). Use {self.fallback}, llama.cpp's fallback for such rows, or {others}"
            )

    def describe(self) -> str:
        return super().describe().replace("blocks of", "super-blocks of")


class Q6_K(_KQuant, qtype=GGMLQuantizationType.Q6_K, kernel="q6_k", fallback="Q8_0"):
    """ql (128 B: low 4 bits), qh (64 B: high 2 bits), 16 int8 sub-block scales, fp16 d."""

    def _encode(self, blocks: np.ndarray) -> np.ndarray:
        n = len(blocks)
        # Sub-blocks of 16 as columns: the per-sub-block scalars broadcast along contiguous rows.
        x = np.ascontiguousarray(blocks.reshape(n * 16, 16).T)
        sub_scales, search_codes = _make_qx_quants(x, 32)
        sub_scales = sub_scales.reshape(n, 16)

        # The sub-block scale of largest magnitude (sign kept) becomes -128 in int8.
        extreme = np.take_along_axis(sub_scales, np.abs(sub_scales).argmax(axis=1)[:, None], axis=1)
        zero = np.abs(extreme) < _GROUP_MAX_EPS
        with np.errstate(divide="ignore", invalid="ignore"):
            iscale = np.where(zero, _F32(0), _F32(-128) / extreme)
            d = (1 / iscale).astype(np.float16)
        d[zero[:, 0]] = 0
        scales = np.minimum(np.rint(iscale * sub_scales), 127).astype(np.int8)

        # Requantise every value against the scale it will actually be decoded with.
        step = (d.astype(_F32) * scales.astype(_F32)).reshape(n * 16, 1)
        flat = blocks.reshape(n * 16, 16)
        with np.errstate(divide="ignore", invalid="ignore"):
            codes = np.clip(np.rint(flat / step), -32, 31) + 32
        codes = np.where(step == 0, search_codes.T, codes).astype(np.uint8).reshape(n, 2, 4, 32)
        codes[zero[:, 0]] = 0

        # Per half of 128: ql byte l holds values l and l+64 (l+32 and l+96 in the next 32 bytes);
        # qh byte l holds the high 2 bits of values l, l+32, l+64, l+96.
        ql = (codes[:, :, :2] & 0x0F) | ((codes[:, :, 2:] & 0x0F) << 4)
        qh = np.bitwise_or.reduce((codes >> 4) << np.array([0, 2, 4, 6], np.uint8)[:, None], axis=2)
        scale_bytes = np.where(zero, 0, scales).astype(np.int8).view(np.uint8)
        return np.concatenate([ql.reshape(n, 128), qh.reshape(n, 64), scale_bytes, d.view(np.uint8)], axis=1)

    def _decode(self, raw: np.ndarray) -> np.ndarray:
        n = len(raw)
        ql = raw[:, :128].reshape(n, 2, 1, 64) >> np.array([0, 4], np.uint8)[:, None]
        qh = raw[:, 128:192].reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8)[:, None]
        q = (ql & 0x0F).reshape(n, 2, 128) | ((qh & 0x03).reshape(n, 2, 128) << 4)
        step = _fp16(raw[:, 208:210]) * raw[:, 192:208].view(np.int8).astype(_F32)
        return _scaled(q.reshape(n * 16, 16), 32, step.reshape(n * 16, 1)).reshape(n, 256)


class Q4_K(_KQuant, qtype=GGMLQuantizationType.Q4_K, kernel="q4_k", fallback="Q5_0"):
    """fp16 d, fp16 dmin, 8 six-bit scales and 8 six-bit mins in 12 bytes, 128 B of nibbles."""

    def _encode(self, blocks: np.ndarray) -> np.ndarray:
        n = len(blocks)
        x = np.ascontiguousarray(blocks.reshape(n * 8, 32).T)
        # llama.cpp's weights: the sub-block's RMS plus each value's magnitude.
        weights = np.sqrt(np.einsum("ij,ij->j", x, x) / 32) + np.abs(x)
        sub_scales, sub_mins, search_codes = _make_qkx2_quants(x, weights, 15, -1.0, 0.1, 20)
        sub_scales, sub_mins = sub_scales.reshape(n, 8), sub_mins.reshape(n, 8)

        # Scales and negated minimums are >= 0: 6-bit multiples of their largest / 63.
        max_scale = np.maximum(sub_scales.max(axis=1, keepdims=True), 0)
        max_min = np.maximum(sub_mins.max(axis=1, keepdims=True), 0)
        with np.errstate(divide="ignore"):
            inv_scale = np.where(max_scale > 0, _F32(63) / max_scale, _F32(0))
            inv_min = np.where(max_min > 0, _F32(63) / max_min, _F32(0))
        ls = np.clip(np.rint(inv_scale * sub_scales), 0, 63).astype(np.uint8)
        lm = np.clip(np.rint(inv_min * sub_mins), 0, 63).astype(np.uint8)
        d = (max_scale / 63).astype(np.float16)
        dmin = (max_min / 63).astype(np.float16)

        step = (d.astype(_F32) * ls.astype(_F32)).reshape(n * 8, 1)
        offset = (dmin.astype(_F32) * lm.astype(_F32)).reshape(n * 8, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            codes = np.clip(np.rint((blocks.reshape(n * 8, 32) + offset) / step), 0, 15)
        codes = np.where(step == 0, search_codes.T, codes).astype(np.uint8).reshape(n, 4, 2, 32)

        # Scales 0-3 and mins 0-3 fill the low 6 bits of bytes 0-7; scales and mins 4-7 put their low
        # nibbles in bytes 8-11 and their top 2 bits in the spare top bits of bytes 0-7.
        packed = np.concatenate(
            [
                ls[:, :4] | ((ls[:, 4:] >> 4) << 6),
                lm[:, :4] | ((lm[:, 4:] >> 4) << 6),
                (ls[:, 4:] & 0x0F) | ((lm[:, 4:] & 0x0F) << 4),
            ],
            axis=1,
        )
        qs = codes[:, :, 0] | (codes[:, :, 1] << 4)  # 64 values per 32 bytes: value l low, l+32 high
        return np.concatenate([d.view(np.uint8), dmin.view(np.uint8), packed, qs.reshape(n, 128)], axis=1)

    def _decode(self, raw: np.ndarray) -> np.ndarray:
        n = len(raw)
        packed = raw[:, 4:16]
        low, high, nib = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
        sc = np.concatenate([low & 0x3F, (nib & 0x0F) | ((low >> 6) << 4)], axis=1).astype(_F32)
        mn = np.concatenate([high & 0x3F, (nib >> 4) | ((high >> 6) << 4)], axis=1).astype(_F32)
        step = (_fp16(raw[:, 0:2]) * sc).reshape(n, 8, 1)
        offset = (_fp16(raw[:, 2:4]) * mn).reshape(n, 8, 1)
        q = (raw[:, 16:].reshape(n, 4, 1, 32) >> np.array([0, 4], np.uint8)[:, None]) & 0x0F
        values = q.reshape(n, 8, 32).astype(_F32)
        values *= step
        values -= offset
        return values.reshape(n, 256)


def _make_qx_quants(x: np.ndarray, nmax: int, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """llama.cpp's make_qx_quants (rmse_type 1, no importance weights) for every column of `x`.

    A symmetric scale per sub-block (column): start from the one that maps the largest-magnitude
    value to -nmax, try 18 nearby ones, keep the least-squares scale of the candidate with the
    smallest `w`-weighted error (llama.cpp's x**2 when `w` is None). Returns the scales and the
    codes (0 .. 2*nmax-1) of the winner.
    """
    extreme = np.take_along_axis(x, np.abs(x).argmax(axis=0)[None], axis=0)[0]
    zero = np.abs(extreme) < _GROUP_MAX_EPS
    w = x * x if w is None else w
    wx = w * x
    t = np.empty_like(x)

    def fit(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        np.multiply(x, iscale, out=t)
        np.rint(t, out=t)
        np.clip(t, -nmax, nmax - 1, out=t)
        return np.einsum("ij,ij->j", wx, t), np.einsum("ij,ij,ij->j", w, t, t)

    # All-zero columns divide by zero into inf and nan, never win a comparison, and are zeroed last.
    # Rather than update the best scale in place, keep every candidate's and the winner's index.
    factors = np.array([nmax, *(_F32(nmax) + _F32(0.1) * _F32(i) for i in (*range(-9, 0), *range(1, 10)))], _F32)
    scales = []
    winner = np.zeros(x.shape[1], np.int8)
    with np.errstate(all="ignore"):
        for k, factor in enumerate(factors):
            sumlx, suml2 = fit(-factor / extreme)
            scales.append(sumlx / suml2)
            if k == 0:
                scales[0] = np.where(suml2 != 0, scales[0], _F32(0))
                best = scales[0] * sumlx
                continue
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            best = _select(better, scales[k] * sumlx, best)
            np.maximum(winner, better * np.int8(k), out=winner)  # k only grows: the latest better one
        scale = np.take_along_axis(np.stack(scales), winner[None].astype(np.intp), axis=0)[0]
        codes = np.clip(np.rint(x * (-factors[winner] / extreme)), -nmax, nmax - 1) + nmax
    return np.where(zero, _F32(0), scale), np.where(zero, _F32(0), codes)


def _make_qkx2_quants(
    x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """llama.cpp's make_qkx2_quants (squared error) for every column of `x`, weights `w`.

    An affine fit `scale * code - min` per sub-block: candidates' inverse scales run from
    (nmax + rmin) to (nmax + rmin + nstep * rdelta) over the value range; each candidate's codes get
    a weighted least-squares scale and minimum, and the smallest weighted error wins. Each accepted
    candidate moves the minimum that later candidates start from, as in C. Returns the scales, the
    mins (as positive offsets: value = scale * code - min) and the winning codes (0 .. nmax).
    """
    low = np.minimum(x.min(axis=0), 0)
    hi = x.max(axis=0)
    flat = hi == low
    sum_w = w.sum(axis=0)
    wx = w * x
    sum_x = wx.sum(axis=0)
    sum_xx = np.einsum("ij,ij->j", wx, x)
    t = np.empty_like(x)

    def fit(low: np.ndarray, iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        np.subtract(x, low, out=t)
        np.multiply(t, iscale, out=t)
        np.rint(t, out=t)
        np.clip(t, 0, nmax, out=t)
        return np.einsum("ij,ij->j", w, t), np.einsum("ij,ij,ij->j", w, t, t), np.einsum("ij,ij->j", wx, t)

    # The weighted squared errors sum w * (scale * l + low - x)**2 come from the sums, without
    # another pass over the values. Their float32 rounding (~1e-5 of the error) only matters
    # between near-equal candidates.
    # Flat columns divide by zero into inf and nan, never win a comparison, and are zeroed last.
    # Rather than update the best parameters in place, keep every candidate's and the winner's index.
    winner = np.zeros(x.shape[1], np.int8)
    with np.errstate(all="ignore"):
        iscale = _F32(nmax) / (hi - low)
        scale = 1 / iscale
        sum_l, sum_l2, sum_xl = fit(low, iscale)
        best = scale * (scale * sum_l2 + 2 * (low * sum_l - sum_xl)) + low * (low * sum_w - 2 * sum_x) + sum_xx
        lows, iscales, scales = [low], [iscale], [scale]
        for i in range(nstep + 1):
            iscale = (_F32(rmin) + _F32(rdelta) * _F32(i) + _F32(nmax)) / (hi - low)
            sum_l, sum_l2, sum_xl = fit(low, iscale)
            det = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_low = (sum_l2 * sum_x - sum_l * sum_xl) / det
            # A minimum above zero would waste code 0: fit a pure scale instead.
            positive = this_low > 0
            this_scale = _select(positive, sum_xl / sum_l2, this_scale)
            this_low = _select(positive, np.zeros_like(this_low), this_low)
            # At a least-squares fit (also the pure-scale one) the residual is orthogonal to the
            # fitted terms, so the error is sum w * x * residual.
            this_error = sum_xx - this_scale * sum_xl - this_low * sum_x
            better = (det > 0) & (this_error < best)
            best = _select(better, this_error, best)
            np.maximum(winner, better * np.int8(i + 1), out=winner)
            lows.append(low)
            iscales.append(iscale)
            scales.append(this_scale)
            low = _select(better, this_low, low)  # later candidates start from the accepted minimum

        def pick(values: list[np.ndarray]) -> np.ndarray:
            return np.take_along_axis(np.stack(values), winner[None].astype(np.intp), axis=0)[0]

        scale = pick(scales)
        codes = np.clip(np.rint((x - pick(lows)) * pick(iscales)), 0, nmax)
    return np.where(flat, _F32(0), scale), -low, np.where(flat, _F32(0), codes)


def _select(mask: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.where(mask, a, b) for float32, by bit masks: np.where branches, 5x slower on random masks."""
    bits = np.negative(mask.astype(np.uint32))  # all ones where True
    a_bits, b_bits = a.view(np.uint32), b.view(np.uint32)
    return (b_bits ^ ((a_bits ^ b_bits) & bits)).view(_F32)


def _round_half_away(v: np.ndarray) -> np.ndarray:
    """C's roundf, exactly: the fraction doubled reaches +-1 from a half on (no sign flips needed)."""
    whole = np.trunc(v)
    return whole + np.trunc(2 * (v - whole))


def _scaled(q: np.ndarray, zero: int, scale: np.ndarray) -> np.ndarray:
    """(q - zero) * scale as float32, for uint8 codes q < 2 * zero (q is overwritten): the
    subtraction wraps in uint8 to the int8 value, so the only float passes are the conversion and
    the in-place multiply. `scale` is one float32 per row of q, or its fp16 bytes."""
    q -= np.uint8(zero)
    values = q.view(np.int8).astype(_F32)
    values *= _fp16(scale) if scale.dtype == np.uint8 else scale
    return values


def _fp16_bytes(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16).view(np.uint8)


def _fp16(raw: np.ndarray) -> np.ndarray:
    """(blocks, 2) little-endian fp16 bytes -> float32 (blocks, 1)."""
    return np.ascontiguousarray(raw).view(np.float16).astype(_F32)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(blocks, 32) codes < 16 -> (blocks, 16) bytes: value j in the low nibble, j + 16 in the high."""
    return q[:, :16] | (q[:, 16:] << 4)


def _unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    return np.concatenate([packed & 0x0F, packed >> 4], axis=1)
