"""The core table type: storages, exact bytes, lookup, serialisation; and the integer formats."""

import json

import numpy as np
import pytest

from edgeemb.errors import EdgeembError
from edgeemb.formats import get_format
from edgeemb.table import DenseTable, LowRankTable, QuantizedTable, load_table, save_table


@pytest.fixture
def weight():
    return np.random.default_rng(0).standard_normal((300, 128)).astype(np.float32)


@pytest.mark.parametrize(
    ("name", "block", "bits"),
    [("int8", None, 8), ("int8", 32, 8), ("int4", 32, 4), ("int4", 64, 4), ("int2", 16, 2), ("int2", 128, 2)],
)
def test_integer_round_trip_within_half_a_step(weight, name, block, bits):
    fmt = get_format(name, block_size=block)
    arrays = fmt.quantize(weight)
    restored = fmt.dequantize(arrays, weight.shape[1])
    size = block or weight.shape[1]
    scales = np.abs(arrays["scales"].astype(np.float32))
    step = np.repeat(scales, size, axis=1)
    error = np.abs(restored - weight)
    # Round to nearest: within half a step, except values of the opposite sign to the block's
    # extreme beyond the top level (2**(bits-1) - 1 steps), which clip by at most one step.
    beyond_top = np.abs(weight) > ((1 << (bits - 1)) - 1) * step
    slack = 1e-3 * step + 1e-6
    assert np.all(error[~beyond_top] <= 0.5 * step[~beyond_top] + slack[~beyond_top])
    assert np.all(error[beyond_top] <= step[beyond_top] + slack[beyond_top])
    assert arrays["codes"].nbytes == weight.size * bits // 8
    assert arrays["scales"].shape == (weight.shape[0], weight.shape[1] // size)


@pytest.mark.parametrize(
    ("name", "block", "bits"), [("int8", None, 8), ("int4", 32, 4), ("int4", 128, 4), ("int2", 32, 2)]
)
def test_asymmetric_round_trip_within_one_step(weight, name, block, bits):
    fmt = get_format(name, block_size=block, zero_point=True)
    shifted = weight + 2.0  # blocks far from centred on zero: where zero points pay off
    arrays = fmt.quantize(shifted)
    blocks = shifted.shape[1] // (block or shifted.shape[1])
    assert arrays["zero_points"].shape == (shifted.shape[0], -(-blocks * bits // 8))  # packed like the codes
    restored = fmt.dequantize(arrays, shifted.shape[1])
    step = np.repeat(arrays["scales"].astype(np.float32), block or shifted.shape[1], axis=1)
    # The rounded zero point shifts the grid by up to half a step: every value within one step.
    assert np.all(np.abs(restored - shifted) <= step * (1 + 1e-3) + 1e-6)
    symmetric = get_format(name, block_size=block).quantize(shifted)
    symmetric_error = np.linalg.norm(
        get_format(name, block_size=block).dequantize(symmetric, shifted.shape[1]) - shifted
    )
    assert np.linalg.norm(restored - shifted) < symmetric_error


def unpacked(packed: np.ndarray, bits: int) -> np.ndarray:
    """Codes packed low bits first -> one code per column, as uint8."""
    shifts = (np.arange(8 // bits) * bits).astype(np.uint8)
    return ((packed[..., None] >> shifts) & ((1 << bits) - 1)).reshape(len(packed), -1)


@pytest.mark.parametrize(
    ("name", "block", "zero_point"),
    [
        ("int8", None, False),
        ("int8", 32, True),
        ("int4", 32, False),
        ("int4", 32, True),
        ("int2", 16, False),
        ("int2", 16, True),
    ],
)
def test_decode_equals_the_reference_formula(weight, name, block, zero_point):
    """The decoders take shortcuts (int8 codes read as int8 with the top bit flipped, sub-byte codes
    through a lookup table); the values must be exactly those of the plain formula."""
    fmt = get_format(name, block_size=block, zero_point=zero_point)
    arrays = fmt.quantize(weight * 3 + 1)
    size, blocks = block or weight.shape[1], weight.shape[1] // (block or weight.shape[1])
    codes = unpacked(arrays["codes"], fmt.bits).astype(np.float32)
    scales = np.repeat(arrays["scales"].astype(np.float32), size, axis=1)
    if zero_point:
        zeros = np.repeat(unpacked(arrays["zero_points"], fmt.bits)[:, :blocks].astype(np.float32), size, axis=1)
        expected = codes * scales - zeros * scales
    else:
        expected = (codes - (1 << (fmt.bits - 1))) * scales
    np.testing.assert_array_equal(fmt.dequantize(arrays, weight.shape[1]), expected)


def test_asymmetric_constant_blocks_are_exact():
    fmt = get_format("int4", block_size=16, zero_point=True)
    rows = np.array([[0.7] * 16, [-0.3] * 16, [0.0] * 16], np.float32)
    assert np.allclose(fmt.dequantize(fmt.quantize(rows), 16), rows, rtol=1e-3)


def test_int4_packs_low_nibble_first():
    fmt = get_format("int4", block_size=16)
    row = np.zeros((1, 16), np.float32)
    row[0, 0], row[0, 1] = -8.0, 1.0  # extreme -8 gives scale 1, so codes are value + 8
    codes = fmt.quantize(row)["codes"]
    assert codes[0, 0] == (0 | (9 << 4))  # low nibble: code 0 (value -8), high nibble: code 9 (value 1)
    assert codes[0, 1] == (8 | (8 << 4))


def test_int4_uses_all_sixteen_levels_and_exact_extreme():
    fmt = get_format("int4", block_size=16)
    row = np.linspace(-1, 1, 16, dtype=np.float32)[None]
    restored = fmt.dequantize(fmt.quantize(row), 16)
    assert restored[0, 0] == pytest.approx(-1.0, abs=1e-3)  # the extreme sits exactly on a level


def test_zero_rows_stay_zero():
    fmt = get_format("int4", block_size=32)
    zeros = np.zeros((3, 64), np.float32)
    assert np.array_equal(fmt.dequantize(fmt.quantize(zeros), 64), zeros)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("int4", {"block_size": 48}, "does not divide"),
        ("int5", {}, "unknown quantisation format"),
        ("int4", {"bits": 3}, "format 'int4' has no option 'bits' \\(options: block_size, zero_point, scale_dtype\\)"),
    ],
)
def test_bad_formats_are_clear(weight, name, options, message):
    with pytest.raises(EdgeembError, match=message):
        get_format(name, **options).check_width(weight.shape[1])


def test_bytes_are_exact_and_lookup_matches_dense(weight):
    dense = DenseTable(weight)
    quantized = QuantizedTable.quantize(weight, get_format("int4", block_size=32))
    assert dense.nbytes == 300 * 128 * 4
    assert quantized.nbytes == 300 * 128 // 2 + 300 * (128 // 32) * 2
    assert quantized.bits_per_param == pytest.approx(4.5)
    ids = np.array([5, 0, 299, 5])
    assert np.array_equal(quantized.lookup(ids), quantized.to_dense()[ids])


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("int8", {}),
        ("int8", {"zero_point": True}),
        ("int8", {"block_size": 64}),
        ("int4", {"block_size": 16}),
        ("int4", {"block_size": 32, "zero_point": True}),
        ("int4", {"block_size": 128, "scale_dtype": "float32"}),
        ("int2", {"block_size": 32}),
        ("int2", {"block_size": 16, "zero_point": True}),
    ],
)
def test_fused_lookup_returns_exactly_the_decoded_rows(weight, name, options):
    """The compiled gather-and-decode kernel against the numpy decoder: the same float32 values,
    for repeated, negative and 2-D ids; an id out of range is refused as np.take refuses it."""
    table = QuantizedTable.quantize(weight, get_format(name, **options))
    full = table.to_dense()
    ids = np.array([[5, 0, 299], [5, -1, 17]])
    np.testing.assert_array_equal(table.lookup(ids), full[ids])
    assert table.lookup(np.array([], np.int64)).shape == (0, 128)
    for bad in (300, -301):
        with pytest.raises(IndexError, match="out of range"):
            table.lookup(np.array([0, bad]))


def test_low_rank_lookup_and_bytes(weight):
    left = DenseTable(weight[:, :16].copy())
    right = np.random.default_rng(1).standard_normal((16, 128)).astype(np.float16)
    bias = np.ones(128, np.float16)
    table = LowRankTable(left, right, bias)
    ids = np.array([3, 7])
    expected = weight[ids, :16] @ right.astype(np.float32) + 1.0
    assert np.allclose(table.lookup(ids), expected, atol=1e-5)
    assert table.nbytes == left.nbytes + right.nbytes + bias.nbytes


@pytest.mark.parametrize("kind", ["dense", "quantized", "lowrank"])
def test_save_and_load_round_trip_is_exact(tmp_path, weight, kind):
    tables = {
        "dense": DenseTable(weight),
        "quantized": QuantizedTable.quantize(weight, get_format("int8")),
        "lowrank": LowRankTable(
            QuantizedTable.quantize(weight[:, :32].copy(), get_format("int4")), weight[:32].astype(np.float16), None
        ),
    }
    table = tables[kind]
    save_table(table, tmp_path / "t.safetensors")
    loaded = load_table(tmp_path / "t.safetensors")
    assert type(loaded) is type(table) and loaded.nbytes == table.nbytes
    assert np.array_equal(loaded.to_dense(), table.to_dense())


def test_load_table_rejects_truncated_and_foreign_files(tmp_path, weight):
    path = tmp_path / "t.safetensors"
    save_table(DenseTable(weight), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(EdgeembError, match="not a readable safetensors"):
        load_table(path)
    from safetensors.numpy import save_file

    save_file({"x": weight}, str(path))
    with pytest.raises(EdgeembError, match="without an edgeemb table spec"):
        load_table(path)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("{not json", "Expecting property name"),
        ("[1, 2]", "the spec is a JSON list"),
        ('{"kind": "quantized", "dim": 4}', "'format' is missing"),
        ('{"kind": "lowrank", "left": {"kind": "dense"}}', "'weight' is missing"),
        (
            '{"kind": "quantized", "format": {"name": "int4", "block_size": 7}, "dim": 4}',
            "block size 7 does not divide",
        ),
        ('{"kind": "sparse"}', "unknown table kind 'sparse'"),
    ],
)
def test_a_table_spec_that_does_not_describe_its_arrays_is_one_clear_error(tmp_path, spec, message):
    from safetensors.numpy import save

    path = tmp_path / "t.safetensors"
    path.write_bytes(save({"weight": np.ones((3, 4), np.float32)}, metadata={"edgeemb.table": spec}))
    with pytest.raises(EdgeembError, match=message):
        load_table(path)


def test_arrays_that_do_not_fit_their_format_are_refused_before_a_kernel_reads_them(tmp_path):
    weight = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    pq = QuantizedTable.quantize(weight, get_format("pq", subspaces=8, centroids=16, train_rows=64, iterations=2))
    cases = {
        "narrow codes": (
            QuantizedTable.quantize(weight, get_format("int4")),
            {"codes": lambda a: a[:, :-1]},
            "array 'codes' is uint8 \\(64, 15\\), expected uint8 \\(64, 16\\)",
        ),
        "short blocks": (QuantizedTable.quantize(weight, get_format("Q8_0")), {"blocks": lambda a: a[:-1]}, ""),
        "a code past the codebook": (
            pq,
            {"codes": lambda a: np.full_like(a, 200)},
            "a code is 200, but there are only 16 centres",
        ),
    }
    for name, (table, edits, message) in cases.items():
        arrays = {key: edits.get(key, lambda a: a)(array) for key, array in table.arrays().items()}
        save_table(table, tmp_path / "t.safetensors")
        from safetensors.numpy import save

        spec = json.dumps(table.spec())
        (tmp_path / "t.safetensors").write_bytes(
            save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata={"edgeemb.table": spec})
        )
        if message:
            with pytest.raises(EdgeembError, match=message):
                load_table(tmp_path / "t.safetensors")
        else:  # fewer rows than before is still a consistent table
            assert load_table(tmp_path / "t.safetensors").shape == (63, 32), name
