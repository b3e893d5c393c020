"""IQ4_NL: llama.cpp's non-linear 4-bit type, byte for byte as llama.cpp writes it.

A block is 32 values in 18 bytes (4.5 bits/value): an fp16 scale d, then 16 bytes of 4-bit
indices into a fixed grid of 16 levels, denser near zero (value j in byte j's low nibble, j + 16
in its high one); a value decodes to d * grid[index]. Blocks of 32 fit every catalog width (384,
576, 640), where the K-quants' super-blocks of 256 do not.

The quantiser is llama.cpp's `quantize_iq4_nl` without an importance matrix (what
`llama_model_quantize` runs for a token embedding): weights x**2, a first scale that puts the
block's largest magnitude on the grid's end, then 15 more inverse scales (itry - 127) / max, each
refitted by least squares, the best fit kept; the indices are then chosen again for that scale (in
float32, before fp16 rounds it). Ported in float32 in C's order, each candidate's sums accumulated
position by position as C does, so the bytes are llama.cpp's exactly (tests compare them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from gguf.constants import GGMLQuantizationType

from edgeemb.formats.ggml import GGMLFormat

_F32 = np.float32
_GRID = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], _F32)  # kvalues_iq4nl
_GROUP_MAX_EPS = _F32(1e-15)  # llama.cpp: a block whose largest magnitude is below this is zero
_TRIES = 7  # llama.cpp's ntry: inverse scales (itry + grid[0]) / max for itry in -7 .. 7
# llama.cpp's best_index_int8 (the nearest level, a tie going up) for every x in [h / 2, (h + 1) / 2),
# h = -256 .. 255, at index h + 256: one table lookup instead of a binary search. The levels are
# integers, so the midpoints between them are multiples of 1/2 and none lies inside such an
# interval; and C's float32 test `x - lo < hi - x` is exact near a midpoint (both differences are
# at most 12, and no coarser than x's ulp there), so it agrees with the real comparison. Doubling
# is exact, so 2 * (s * x) is (2 * s) * x. Tests hold the table to a transcription of C.
_MIDPOINTS = (_GRID[:-1] + _GRID[1:]) / 2
_NEAREST = np.searchsorted(_MIDPOINTS, np.arange(-256, 256, dtype=_F32) / 2, side="right").astype(np.uint8)
_NEAREST_LEVEL = _GRID[_NEAREST]


@functools.cache
def _lookup_kernel() -> Callable[..., None]:
    import numba  # ~0.5 s and ~85 MB on import: loaded by the first lookup, not by the formats

    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def iq4_nl(blocks: np.ndarray, ids: np.ndarray, half: np.ndarray, out: np.ndarray) -> None:
        """llama.cpp's dequantize_row_iq4_nl for rows ids: d * grid[index], as `_decode`."""
        for r in range(ids.shape[0]):
            raw = blocks[ids[r]]
            for b in range(out.shape[1] // 32):
                at, base = b * 18, b * 32
                d = half[np.int64(raw[at]) | (np.int64(raw[at + 1]) << 8)]
                for j in range(16):
                    byte = raw[at + 2 + j]
                    out[r, base + j] = d * _GRID[byte & 15]
                    out[r, base + 16 + j] = d * _GRID[byte >> 4]

    return iq4_nl


class IQ4_NL(GGMLFormat, qtype=GGMLQuantizationType.IQ4_NL, kernel=_lookup_kernel):
    def _encode(self, blocks: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(blocks.T)  # one row per position: sums run down it as C's loop does
        # The first value of largest magnitude, its sign kept (C keeps the first of equal ones).
        extreme = np.take_along_axis(x, np.abs(x).argmax(axis=0)[None], axis=0)[0]
        # As in C, zero blocks divide by zero (they are zeroed below) and values beyond ~1e19
        # overflow x**2 (their scale becomes NaN; beyond ~8e6 it is an fp16 inf).
        with np.errstate(all="ignore"):
            weights = x * x

            def fit(inverse_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                """sum w*q*x and sum w*q*q over the block, q the levels nearest to inverse_scale * x."""
                q = np.take(_NEAREST_LEVEL, _halves(x * (inverse_scale + inverse_scale)))
                wq = weights * q
                return _sum_down(wq * x), _sum_down(wq * q)

            scale = -extreme / _GRID[0]
            sumqx, sumq2 = fit(1 / scale)
            scale = np.where(sumq2 > 0, sumqx / sumq2, _F32(0))
            best = scale * sumqx
            for step in range(-_TRIES, _TRIES + 1):
                sumqx, sumq2 = fit((_F32(step) + _GRID[0]) / extreme)
                better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
                scale = np.where(better, sumqx / sumq2, scale)
                best = np.where(better, scale * sumqx, best)
            scale[np.abs(extreme) < _GROUP_MAX_EPS] = 0
            inverse = np.divide(_F32(1), scale, out=np.zeros_like(scale), where=scale != 0)
            codes = np.take(_NEAREST, _halves(x * (inverse + inverse)))
            d = scale.astype(np.float16).view(np.uint8).reshape(-1, 2)
        return np.concatenate([d, (codes[:16] | (codes[16:] << 4)).T], axis=1)

    def _decode(self, raw: np.ndarray) -> np.ndarray:
        codes = np.concatenate([raw[:, 2:] & 0x0F, raw[:, 2:] >> 4], axis=1)
        values = np.take(_GRID, codes)
        values *= np.ascontiguousarray(raw[:, :2]).view(np.float16).astype(_F32)
        return values

    def describe(self) -> str:
        return super().describe() + ", a fixed non-linear grid of 16 levels"


def _halves(twice: np.ndarray) -> np.ndarray:
    """Index into `_NEAREST` for values x given doubled (overwritten): floor(2x) + 256, clamped to
    the table. NaN (from non-finite input) lands on the last level, as in C."""
    np.fmin(twice, _F32(255), out=twice)  # fmin drops NaN for 255
    np.maximum(twice, _F32(-256), out=twice)
    np.floor(twice, out=twice)
    twice += _F32(256)
    return twice.astype(np.uint16)


def _sum_down(terms: np.ndarray) -> np.ndarray:
    """Column sums accumulated row by row in float32, C's order (numpy's sum may pair or unroll
    them, depending on the layout: it does for a tile of one block)."""
    total = terms[0].copy()
    for row in terms[1:]:
        total += row
    return total
