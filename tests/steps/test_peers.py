"""The peers' quantisers as recipe steps: onnxruntime's and llama.cpp's own tools run on the table,
their arrays kept as written, and checked to decode as those runtimes decode them."""

from __future__ import annotations

import numpy as np
import pytest

from edgeemb.errors import EdgeembError
from edgeemb.formats import get_format
from edgeemb.recipe import load_recipe
from edgeemb.steps import StepContext
from edgeemb.steps.peers import (
    LlamaQuantizeConfig,
    OnnxruntimeDynamicConfig,
    OnnxruntimeInt4Config,
    _checked,
    _quantized_gather,
    llama_quantize,
    onnxruntime_dynamic,
    onnxruntime_int4,
)
from edgeemb.table import DenseTable, QuantizedTable


@pytest.fixture(scope="module")
def table() -> DenseTable:
    rng = np.random.default_rng(7)
    return DenseTable((rng.standard_normal((300, 256)) * rng.uniform(0.01, 0.2, (300, 1))).astype(np.float32))


def test_onnxruntime_dynamic_is_one_uint8_range_for_the_whole_table(table):
    peer = onnxruntime_dynamic(table, OnnxruntimeDynamicConfig())
    assert peer.format == get_format("int8-tensor")
    assert peer.nbytes == 300 * 256 + 4 + 1  # codes, one float32 scale, one uint8 zero point
    weight = table.weight
    scale = float(peer.data["scale"][0])
    assert scale == pytest.approx((weight.max() - weight.min()) / 255, rel=1e-6)
    assert np.abs(peer.to_dense() - weight).max() <= scale / 2 + 1e-7


@pytest.mark.parametrize(
    "config, bits",
    [
        (OnnxruntimeInt4Config(), 4 + 32 / 128 + 4 / 128),  # its defaults: blocks of 128, fp32 scales, zero points
        (OnnxruntimeInt4Config(block_size=32, symmetric=True), 4 + 32 / 32),
    ],
)
def test_onnxruntime_int4_keeps_its_blocks_scales_and_zero_points(table, config, bits):
    peer = onnxruntime_int4(table, config)
    assert peer.format == get_format(
        "int4", block_size=config.block_size, zero_point=not config.symmetric, scale_dtype="float32"
    )
    assert peer.bits_per_param == pytest.approx(bits)
    cosine = (
        np.sum(peer.to_dense() * table.weight, 1)
        / np.linalg.norm(peer.to_dense(), axis=1)
        / np.linalg.norm(table.weight, axis=1)
    )
    assert cosine.min() > 0.98


def test_a_table_that_decodes_unlike_the_runtime_is_refused(table):
    """The exactness check can fail: one changed code no longer matches onnxruntime's own output."""

    def run(source, out):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(source, out, op_types_to_quantize=["Gather"], weight_type=QuantType.QUInt8)

    peer = onnxruntime_dynamic(table, OnnxruntimeDynamicConfig())
    _, session = _quantized_gather(table.weight, run)
    codes = peer.data["codes"].copy()
    codes[5, 7] ^= 1
    tampered = QuantizedTable(peer.format, {**peer.data, "codes": codes}, peer.dim)
    with pytest.raises(EdgeembError, match="decodes onnxruntime's .* differently"):
        _checked(tampered, session, "onnxruntime")


def test_peers_take_only_the_models_own_table(table):
    quantized = QuantizedTable.quantize(table.weight, get_format("int8"))
    with pytest.raises(EdgeembError, match="make it the recipe's only step"):
        onnxruntime_dynamic(quantized, OnnxruntimeDynamicConfig())
    with pytest.raises(EdgeembError, match="does not divide the row width 256"):
        onnxruntime_int4(table, OnnxruntimeInt4Config(block_size=96))
    with pytest.raises(EdgeembError, match="give a GGUF model"):
        llama_quantize(table, LlamaQuantizeConfig(type="Q4_0"), StepContext())


def test_peer_recipes_are_one_peer_step_each():
    for name, step in [
        ("peer-onnxruntime-arm64", "onnxruntime_dynamic"),
        ("peer-onnxruntime-int4", "onnxruntime_int4"),
        ("peer-llama-q5_0", "llama_quantize"),
        ("peer-llama-q4_0", "llama_quantize"),
    ]:
        recipe = load_recipe(name)
        assert [s for s, _ in recipe.steps] == [step]


@pytest.mark.real
def test_llama_quantize_keeps_llama_cpps_own_bytes_for_smollm2():
    """On the real SmolLM2 GGUF: llama.cpp's quantiser re-encodes token_embd (Q8_0 -> Q4_0); the
    step keeps its bytes (576 x 49152 in Q4_0 is 18 B per 32 values) and they match edgeemb's own
    Q4_0 encoding of the same dequantised table, since both are byte-compatible with ggml."""
    from edgeemb.pipeline import step_context
    from edgeemb.sources import open_model

    source = open_model("smollm2-135m")
    peer = llama_quantize(source.table, LlamaQuantizeConfig(type="Q4_0"), step_context(source))
    assert peer.format == get_format("Q4_0") and peer.nbytes == 49152 * 576 // 32 * 18
    ours = QuantizedTable.quantize(source.table.weight[:2048], get_format("Q4_0"))
    assert np.array_equal(peer.data["blocks"][:2048], ours.data["blocks"])


def test_model2vec_distills_a_static_model_scored_as_one(tiny_model, tiny_sts, tmp_path):
    """The tiny sentence model distilled by model2vec: a static table (vocab x 16, fp16) that is
    the whole model. It is scored by its own encoder (checked against model2vec's encode inside
    the step), has no table-level figures, and cannot be exported into the source model's file."""
    import importlib.util

    from edgeemb.pipeline import EvaluationData, compress, export_artifact
    from edgeemb.recipe import ExportConfig, parse_recipe

    recipe = parse_recipe({"name": "m2v", "steps": [{"model2vec_distill": {"pca_dims": 16}}]})
    if importlib.util.find_spec("model2vec") is None:
        with pytest.raises(EdgeembError, match="needs model2vec: pip install"):
            compress(str(tiny_model), recipe, tmp_path / "m2v")
        pytest.skip("model2vec is not installed (pip install -e '.[peers]'); its clear error is checked")
    result = compress(str(tiny_model), recipe, tmp_path / "m2v", data=EvaluationData(sts=tiny_sts))
    table, quality = result.report.table, result.report.quality
    assert table.storage == "dense float16" and table.bytes == 192 * 16 * 2
    assert table.model_bytes == table.bytes and table.replaces_model is not None
    assert quality.table is None and quality.drift is None
    assert -100 <= quality.sts.compressed <= 100 and quality.sts.compressed != quality.sts.original
    with pytest.raises(EdgeembError, match="static model"):
        export_artifact(tmp_path / "m2v", ExportConfig(format="onnx"))


def test_model2vec_needs_a_sentence_model(table):
    from edgeemb.steps.peers import Model2VecConfig, model2vec_distill

    with pytest.raises(EdgeembError, match="distils a sentence-transformers model"):
        model2vec_distill(table, Model2VecConfig(), StepContext(model_format="gguf"))
