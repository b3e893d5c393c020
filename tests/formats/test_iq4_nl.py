"""IQ4_NL: bytes against llama.cpp's own quantiser (on awkward rows, a tiny llama and the real
SmolLM2 and Gemma 3 tables), decoding against gguf-py, the lookup kernel against the decoder,
and an exported GGUF in llama.cpp."""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as Q
from gguf.quants import dequantize

from edgeemb.errors import EdgeembError
from edgeemb.formats import get_format
from edgeemb.table import QuantizedTable
from tests.formats.test_ggml import VOCAB, _layer_weights, _logits, _write_llama

BLOCK_BYTES = 18
F32 = np.float32


def _llama_cpp():
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed: no llama.cpp to compare with")
    import llama_cpp

    return llama_cpp


def _awkward(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    """Gaussian rows of varied scale, and the cases a port gets wrong: zero rows and blocks,
    constant blocks, a lone spike, blocks at and below llama.cpp's zero threshold (1e-15), fp16
    subnormal scales, values on the midpoints between grid levels (ties) and one ulp either
    side, the largest magnitude twice with both signs, large values, an all-negative row."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, dim)) * rng.lognormal(-2, 1, (rows, 1))).astype(F32)
    w[0] = 0
    w[1, : dim // 2] = 0
    w[2, :32], w[2, 32:64] = 1.5, -2.0
    w[3] = 0
    w[3, 5] = 7.0
    w[4] *= F32(1e-20)
    w[5] *= F32(1e-13) / np.abs(w[5]).max()
    w[5, :32] = rng.uniform(-1, 1, 32) * F32(1e-16)
    w[5, 7] = F32(1e-15)  # exactly llama.cpp's GROUP_MAX_EPS: quantised, not zeroed
    w[5, 32:64] = rng.uniform(-1, 1, 32) * F32(1e-16)
    w[5, 40] = np.nextafter(F32(1e-15), F32(0))  # just below it: a zero block
    # A first scale of exactly 1 (the block's extreme is -127): values land on the midpoints.
    grid = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], F32)
    midpoints = (grid[:-1] + grid[1:]) / 2
    ties = np.concatenate([midpoints, np.nextafter(midpoints, F32(-200)), np.nextafter(midpoints, F32(200))])
    for block in range(dim // 32):
        w[6, 32 * block : 32 * block + 32] = rng.choice(ties, 32)
        w[6, 32 * block + block % 32] = -127
    w[7, :] = rng.integers(-126, 127, dim)
    w[7, ::32] = 127
    w[8, 3], w[8, 20] = 0.75, -0.75  # equal magnitudes, both signs: the first one sets the scale
    w[9] = -np.abs(w[9]) - 0.5
    w[10] *= F32(1e4)
    return w


def _ggml_quantize(rows: np.ndarray) -> np.ndarray:
    """llama.cpp's quantiser itself: ggml_quantize_chunk, which llama_model_quantize runs on each
    chunk of rows (no imatrix). Reached through the ggml library llama-cpp-python ships, as it
    has no Python binding for it; unlike llama_model_quantize it does not refuse the NaN and inf
    scales of overflowing rows."""
    _llama_cpp()
    from llama_cpp._ggml import libggml

    quantize = libggml.ggml_quantize_chunk
    quantize.restype = ctypes.c_size_t
    quantize.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int64] * 3 + [ctypes.c_void_p]
    rows = np.ascontiguousarray(rows, F32)
    out = np.zeros((rows.shape[0], rows.shape[1] // 32 * BLOCK_BYTES), np.uint8)
    assert quantize(int(Q.IQ4_NL), rows.ctypes.data, out.ctypes.data, 0, rows.shape[0], rows.shape[1], None) == out.size
    return out


def _token_embd(path: Path) -> tuple[str, np.ndarray]:
    tensor = next(t for t in gguf.GGUFReader(path).tensors if t.name == "token_embd.weight")
    return tensor.tensor_type.name, np.array(tensor.data)


def _llama_quantize(source: Path, out: Path) -> np.ndarray:
    """token_embd as llama_model_quantize writes it with token_embedding_type IQ4_NL."""
    llama_cpp = _llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.token_embedding_type = int(Q.IQ4_NL)
    assert llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params)) == 0
    type_name, blocks = _token_embd(out)
    assert type_name == "IQ4_NL"
    return blocks


def _overflowing(dim: int) -> np.ndarray:
    """Rows whose fp16 scale overflows to inf (~1e7) and whose x**2 overflows to NaN (~1e20)."""
    rng = np.random.default_rng(11)
    return (rng.standard_normal((2, dim)) * np.array([[1e7], [1e20]])).astype(F32)


@pytest.fixture(scope="module")
def weight() -> np.ndarray:
    # 256 x 640 (Gemma 3's width): 5,120 blocks, more than one encoder tile
    return _awkward(256, 640)


# --- bytes ------------------------------------------------------------------------------------


def test_bytes_identical_to_llama_cpp_quantiser(weight):
    rows = np.concatenate([weight, _overflowing(640)])
    ours = get_format("IQ4_NL").quantize(rows)["blocks"]
    assert ours.dtype == np.uint8 and ours.shape == (258, 20 * BLOCK_BYTES)
    np.testing.assert_array_equal(ours, _ggml_quantize(rows))


def test_bytes_identical_to_llama_model_quantize_on_a_tiny_llama(tmp_path):
    """The whole path llama.cpp's quantiser takes for a token embedding: a GGUF in, a GGUF out."""
    embd = _awkward(VOCAB, 320, seed=1)  # 320: ten blocks of 32, no whole super-block of 256
    _write_llama(tmp_path / "f32.gguf", embd, Q.F32, _layer_weights(320, seed=1))
    theirs = _llama_quantize(tmp_path / "f32.gguf", tmp_path / "iq4_nl.gguf")
    np.testing.assert_array_equal(get_format("IQ4_NL").quantize(embd)["blocks"], theirs)


def test_bytes_identical_to_llama_cpp_quantiser_one_block_at_a_time():
    """A lone block is encoded on its own: its sums must still run in C's order (numpy's own sum
    of 32 contiguous values unrolls and pairs them, and flips some of these blocks)."""
    rng = np.random.default_rng(12)
    w = (rng.standard_normal((400, 32)) * rng.lognormal(-2, 1, (400, 1))).astype(F32)
    fmt = get_format("IQ4_NL")
    ours = np.concatenate([fmt.quantize(row[None])["blocks"] for row in w])
    np.testing.assert_array_equal(ours, _ggml_quantize(w))


def test_float16_input_quantises_as_its_float32_values():
    w = _awkward(64, 96, seed=3).astype(np.float16)
    fmt = get_format("IQ4_NL")
    np.testing.assert_array_equal(fmt.quantize(w)["blocks"], fmt.quantize(w.astype(F32))["blocks"])


@pytest.mark.real
@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m"])
def test_bytes_identical_to_llama_cpp_on_the_real_table(tmp_path, model):
    """Every row of the real table: llama_quantize_token_embd (llama.cpp's quantiser, the peer
    edgeemb compares with) requantises the GGUF's Q8_0 token_embd from the same float32 values
    edgeemb reads from it."""
    _llama_cpp()
    from edgeemb.export.gguf import llama_quantize_token_embd
    from edgeemb.sources import open_model

    source = open_model(model)
    llama_quantize_token_embd(source.path, tmp_path / "iq4_nl.gguf", "IQ4_NL")
    type_name, theirs = _token_embd(tmp_path / "iq4_nl.gguf")
    table = source.table.to_dense()
    ours = get_format("IQ4_NL").quantize(table)["blocks"]
    assert type_name == "IQ4_NL" and len(ours) == len(table) >= 2048
    differing = int(np.any(ours != theirs, axis=1).sum())
    assert differing == 0, f"{differing} of {len(ours)} rows differ from llama.cpp's"


# --- decoding ---------------------------------------------------------------------------------


def test_dequantize_equals_gguf_on_quantized_rows(weight):
    fmt = get_format("IQ4_NL")
    arrays = fmt.quantize(np.concatenate([weight, _overflowing(640)]))
    np.testing.assert_array_equal(fmt.dequantize(arrays, 640), dequantize(arrays["blocks"], Q.IQ4_NL))


def test_dequantize_equals_gguf_on_every_bit_pattern():
    """Random bytes reach every index, scale bit and nibble position (NaN/inf scales included)."""
    raw = np.random.default_rng(2).integers(0, 256, (200, 20 * BLOCK_BYTES), dtype=np.uint8)
    with np.errstate(all="ignore"):
        ours, theirs = get_format("IQ4_NL").dequantize({"blocks": raw}, 640), dequantize(raw, Q.IQ4_NL)
    np.testing.assert_array_equal(ours, theirs)


def test_lookup_equals_full_dequantisation(weight):
    """The fused lookup kernel returns exactly gguf's decode of the same rows."""
    table = QuantizedTable.quantize(weight, get_format("IQ4_NL"))
    assert table.shape == (256, 640) and table.nbytes == 256 * 20 * BLOCK_BYTES
    full = dequantize(table.arrays()["blocks"], Q.IQ4_NL)
    ids = np.random.default_rng(7).integers(-256, 256, 300)
    np.testing.assert_array_equal(table.lookup(ids), full[ids])
    np.testing.assert_array_equal(table.to_dense(), full)
    # Random bytes: every index and scale bit, NaN and inf scales included.
    raw = np.random.default_rng(8).integers(0, 256, (40, 20 * BLOCK_BYTES), dtype=np.uint8)
    with np.errstate(all="ignore"):
        looked_up = get_format("IQ4_NL").lookup({"blocks": raw}, ids % 40, 640)
        np.testing.assert_array_equal(looked_up, dequantize(raw, Q.IQ4_NL)[ids % 40])


# --- what the quantiser keeps -----------------------------------------------------------------


def test_zero_and_constant_blocks(weight):
    fmt = get_format("IQ4_NL")
    restored = fmt.dequantize(fmt.quantize(weight[:5]), 640)
    np.testing.assert_array_equal(restored[0], 0)
    np.testing.assert_array_equal(restored[1, :320], 0)
    np.testing.assert_array_equal(restored[4], 0)  # 1e-20: below llama.cpp's threshold, zero blocks
    # A constant block lands on one level: only the fp16 rounding of its scale is lost.
    np.testing.assert_allclose(restored[2, :64], weight[2, :64], rtol=2**-11)
    # A lone spike takes the top level (113); the grid has no zero, so the zeros beside it take
    # the level nearest zero (1): d itself.
    assert restored[3, 5] == pytest.approx(7.0, rel=2**-11)
    np.testing.assert_array_equal(np.delete(restored[3, :32], 5), restored[3, 5] / 113)


def test_error_below_q4_0_at_the_same_size():
    """Relative RMSE on Gaussian rows at 4.5 bits/value: the non-linear grid with fitted scales
    beats Q4_0's uniform grid set by each block's extreme."""
    w = np.random.default_rng(4).standard_normal((512, 576)).astype(F32)
    rmse = {}
    for name in ("IQ4_NL", "Q4_0", "Q4_1"):
        fmt = get_format(name)
        rmse[name] = float(np.sqrt(np.mean((fmt.dequantize(fmt.quantize(w), 576) - w) ** 2)))
    assert rmse["IQ4_NL"] < 0.9 * rmse["Q4_0"] and rmse["IQ4_NL"] < rmse["Q4_1"], rmse


@pytest.mark.parametrize("dim", [100, 48, 0])
def test_width_must_be_whole_blocks(dim):
    with pytest.raises(EdgeembError, match=rf"^IQ4_NL needs a row width that is a multiple of 32; {dim} is not$"):
        get_format("IQ4_NL").quantize(np.zeros((2, dim), F32))


def test_every_catalog_width_label_and_spec():
    fmt = get_format("IQ4_NL")
    for dim in (384, 576, 640):
        fmt.check_width(dim)
    assert fmt.describe() == "GGUF IQ4_NL (4.5 bits/value, blocks of 32), a fixed non-linear grid of 16 levels"
    assert fmt.spec() == {"name": "IQ4_NL"}
    with pytest.raises(EdgeembError, match="format 'IQ4_NL' has no option 'block_size'"):
        get_format("IQ4_NL", block_size=32)


# --- exported to GGUF, run in llama.cpp -------------------------------------------------------


IDS = [1, 300, 301, 450, 511, 259, 2]


def _greedy(path: Path, ids: list[int], count: int) -> list[int]:
    llama_cpp = _llama_cpp()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=2, logits_all=True, verbose=False)
    out = []
    llm.eval(ids)
    for _ in range(count):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval(out[-1:])
    llm.close()
    return out


def test_llama_cpp_decodes_iq4_nl_like_we_do(tmp_path):
    """llama.cpp reads token_embd IQ4_NL rows as our decoder does: the logits of a tiny llama with
    the table in IQ4_NL equal those with our decode stored in float32 (the head is fp16 in both)."""
    _llama_cpp()
    fmt = get_format("IQ4_NL")
    embd = (np.random.default_rng(5).standard_normal((VOCAB, 320)) * 0.5).astype(F32)
    weights = _layer_weights(320, seed=2)
    _write_llama(tmp_path / "iq4_nl.gguf", embd, Q.IQ4_NL, weights)
    _write_llama(tmp_path / "decoded.gguf", fmt.dequantize(fmt.quantize(embd), 320), Q.F32, weights)
    _write_llama(tmp_path / "original.gguf", embd, Q.F32, weights)
    iq4_nl, decoded, original = (_logits(tmp_path / f"{name}.gguf", IDS) for name in ("iq4_nl", "decoded", "original"))
    assert np.all(np.isfinite(iq4_nl)) and iq4_nl.std() > 0.1
    spread = np.abs(decoded).max()
    np.testing.assert_allclose(iq4_nl, decoded, rtol=0, atol=1e-4 * spread)
    assert np.abs(iq4_nl - original).max() > 100 * np.abs(iq4_nl - decoded).max() + 1e-6 * spread


def test_exported_gguf_loads_and_generates_in_llama_cpp(tmp_path):
    """export_gguf writes the table as token_embd IQ4_NL, our bytes, and the untied head in
    IQ4_NL too (asked for: head_type); llama.cpp loads the file and continues a prompt as a float32 copy of both decoded
    would: its IQ4_NL head multiplies 8-bit activations, so logits agree to ~1% rather than
    exactly, and each token it picks is the copy's best or within that noise of it."""
    _llama_cpp()
    from edgeemb.export.gguf import export_gguf

    fmt = get_format("IQ4_NL")
    embd = (np.random.default_rng(6).standard_normal((VOCAB, 320)) * 0.5).astype(F32)
    weights = _layer_weights(320, seed=3)
    _write_llama(tmp_path / "source.gguf", embd, Q.F32, weights)
    table = QuantizedTable.quantize(embd, fmt)
    export = export_gguf(tmp_path / "source.gguf", table, tmp_path / "iq4_nl.gguf", head_type="IQ4_NL")
    assert export.tensor_type == "IQ4_NL" and not export.rebuilt
    assert export.replaced == ["output.weight", "token_embd.weight"]
    type_name, written = _token_embd(tmp_path / "iq4_nl.gguf")
    assert type_name == "IQ4_NL"
    np.testing.assert_array_equal(written, table.arrays()["blocks"])
    head = fmt.dequantize(fmt.quantize(weights["output.weight"].astype(F32)), 320)
    _write_llama(tmp_path / "decoded.gguf", table.to_dense(), Q.F32, {**weights, "output.weight": head})

    generated = _greedy(tmp_path / "iq4_nl.gguf", IDS[:4], 8)
    assert len(set(generated)) > 1
    ids = IDS[:4] + generated
    iq4_nl, decoded = _logits(tmp_path / "iq4_nl.gguf", ids), _logits(tmp_path / "decoded.gguf", ids)
    noise = 0.02 * np.abs(decoded).max()
    np.testing.assert_allclose(iq4_nl, decoded, rtol=0, atol=noise)
    picked = decoded[np.arange(3, 11), generated]
    assert np.all(picked >= decoded[3:11].max(axis=1) - noise)
