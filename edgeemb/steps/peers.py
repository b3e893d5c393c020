"""The peers' methods as recipe steps, so they run in edgeemb's harness beside its own recipes.

Each step hands the model's own table to another tool's quantiser, takes the arrays that tool
stores as they are, and wraps them in the edgeemb storage that holds them exactly (same bytes,
same decoding). The result is then evaluated, compared and exported like any other table.

- `onnxruntime_dynamic`: onnxruntime's dynamic quantisation of a Gather's table, with the
  settings of optimum's `AutoQuantizationConfig.arm64` (what sentence-transformers'
  `export_dynamic_quantized_onnx_model(model, "arm64")` runs): one uint8 scale and zero point for
  the whole table (`int8-tensor`).
- `onnxruntime_int4`: onnxruntime's `MatMulNBitsQuantizer` with `op_types_to_quantize=("Gather",)`:
  int4 blocks along the row, float32 scales, zero points unless symmetric (`int4`). Its uint4
  zero-point tensor packs across rows; edgeemb pads each row's to whole bytes (the uint8 layout
  GatherBlockQuantized reads), half a byte more per row when a row has an odd number of blocks.
- `llama_quantize`: llama.cpp's own quantiser (`llama_model_quantize` with
  `token_embedding_type`) on the source GGUF: its token_embd bytes in that GGUF type.
- `model2vec_distill`: model2vec's distillation of a sentence-transformers model into a static
  model (each token's output embedding, PCA-reduced): a table that replaces the whole model, a
  text's embedding being the normalised mean of its tokens' rows. Optional: needs `model2vec`.

Every step checks edgeemb decodes the tool's arrays as the tool's runtime does: onnxruntime runs
the quantised graph over every row; gguf-py decodes llama.cpp's bytes; model2vec's own `encode`
gives the sentence embeddings edgeemb's static encoder gives.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edgeemb.errors import EdgeembError
from edgeemb.formats import get_format
from edgeemb.formats.integer import pack_codes
from edgeemb.progress import quiet, silenced_output
from edgeemb.steps.base import StepConfig, StepContext, register
from edgeemb.table import DenseTable, EmbeddingTable, QuantizedTable

_CHECK_ROWS = 16384


class OnnxruntimeDynamicConfig(StepConfig):
    """No options: the arm64 settings are the point of this baseline."""


class OnnxruntimeInt4Config(StepConfig):
    block_size: int = Field(default=128, description="values per block (onnxruntime's default: 128)")
    symmetric: bool = Field(default=False, description="no zero points (onnxruntime's default: asymmetric)")


class LlamaQuantizeConfig(StepConfig):
    type: Literal["Q8_0", "Q5_0", "Q4_0", "Q4_1"] = Field(
        default="Q5_0",
        description=(
            "token_embedding_type given to llama.cpp's quantiser (Q5_0: its fallback for widths K-quants cannot take)"
        ),
    )


@register("onnxruntime_dynamic", OnnxruntimeDynamicConfig, peer=True)
def onnxruntime_dynamic(
    table: EmbeddingTable, config: OnnxruntimeDynamicConfig, context: StepContext = StepContext()
) -> QuantizedTable:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weight = _own_table(table, "onnxruntime_dynamic")

    def run(source: Path, out: Path) -> None:
        # The arm64 config's arguments, as tools/onnx_numbers.py's whole-model peer passes them.
        quantize_dynamic(
            source,
            out,
            op_types_to_quantize=["Gather"],
            per_channel=True,
            reduce_range=False,
            weight_type=QuantType.QInt8,
            extra_options={
                "WeightSymmetric": True,
                "ActivationSymmetric": False,
                "EnableSubgraph": False,
                "ForceSymmetric": False,
            },
        )

    graph, session = _quantized_gather(weight, run)
    gather = _single(graph, "Gather")
    dequantize = _single(graph, "DequantizeLinear")
    inits = _initializers(graph)
    arrays = {
        "codes": inits[gather.input[0]],
        "scale": inits[dequantize.input[1]].reshape(1).astype(np.float32),
        "zero_point": inits[dequantize.input[2]].reshape(1),
    }
    return _checked(QuantizedTable(get_format("int8-tensor"), arrays, weight.shape[1]), session, "onnxruntime")


@register("onnxruntime_int4", OnnxruntimeInt4Config, peer=True)
def onnxruntime_int4(
    table: EmbeddingTable, config: OnnxruntimeInt4Config, context: StepContext = StepContext()
) -> QuantizedTable:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    weight = _own_table(table, "onnxruntime_int4")
    dim = weight.shape[1]
    if dim % config.block_size:
        raise EdgeembError(f"onnxruntime_int4: block size {config.block_size} does not divide the row width {dim}")

    def run(source: Path, out: Path) -> None:
        import onnx

        quantizer = MatMulNBitsQuantizer(
            onnx.load(source),
            block_size=config.block_size,
            is_symmetric=config.symmetric,
            op_types_to_quantize=("Gather",),
            quant_axes=(("Gather", 1),),
        )
        quantizer.process()
        quantizer.model.save_model_to_file(str(out))

    graph, session = _quantized_gather(weight, run)
    node = _single(graph, "GatherBlockQuantized")
    inits = _initializers(graph)
    attributes = {a.name: a.i for a in node.attribute}
    if attributes.get("bits", 4) != 4 or attributes.get("block_size") != config.block_size:
        raise EdgeembError(f"onnxruntime_int4: onnxruntime wrote {attributes}, not int4 blocks of {config.block_size}")
    # onnxruntime writes uint4 tensors; their codes are packed here two to a byte, low nibble
    # first, each row's zero points padded to whole bytes (GatherBlockQuantized's uint8 layout).
    # Symmetric, it writes signed int4: code - 8, the implicit zero point of edgeemb's unsigned codes.
    data = inits[node.input[0]]
    values = data.astype(np.int16).reshape(len(weight), dim) + (8 if data.dtype.name == "int4" else 0)
    codes = pack_codes(values.astype(np.uint8), 4)
    arrays = {"codes": codes, "scales": inits[node.input[2]].reshape(len(weight), -1)}
    zero_point = len(node.input) > 3 and bool(node.input[3])
    if zero_point:
        arrays["zero_points"] = pack_codes(inits[node.input[3]].astype(np.uint8).reshape(len(weight), -1), 4)
    fmt = get_format("int4", block_size=config.block_size, zero_point=zero_point, scale_dtype="float32")
    return _checked(QuantizedTable(fmt, arrays, dim), session, "onnxruntime")


@register("llama_quantize", LlamaQuantizeConfig, peer=True)
def llama_quantize(
    table: EmbeddingTable, config: LlamaQuantizeConfig, context: StepContext = StepContext()
) -> QuantizedTable:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    from edgeemb.export.gguf import llama_quantize_token_embd
    from edgeemb.sources.gguf import TOKEN_EMBD, read_gguf_header, tensor_bytes

    weight = _own_table(table, "llama_quantize")
    if context.model_format != "gguf" or context.model_path is None:
        raise EdgeembError("llama_quantize runs llama.cpp's quantiser on the model's GGUF file: give a GGUF model")
    with tempfile.TemporaryDirectory(prefix="edgeemb-llama-quantize-") as folder:
        out = Path(folder) / "model.gguf"
        llama_quantize_token_embd(context.model_path, out, config.type)
        info = read_gguf_header(out).tensor(TOKEN_EMBD)
        if info is None or info.type_name != config.type or info.shape != weight.shape:
            raise EdgeembError(f"llama.cpp's quantiser did not write {TOKEN_EMBD} as {config.type} {weight.shape}")
        blocks = np.array(tensor_bytes(out, info))
    quantized = QuantizedTable(get_format(config.type), {"blocks": blocks}, weight.shape[1])
    sample = np.linspace(0, len(weight) - 1, num=min(len(weight), _CHECK_ROWS), dtype=np.int64)
    theirs = dequantize(blocks[sample], GGMLQuantizationType[config.type])
    if not np.array_equal(quantized.lookup(sample), theirs):
        raise EdgeembError(f"edgeemb decodes llama.cpp's {config.type} bytes differently from gguf-py")
    return quantized


class Model2VecConfig(StepConfig):
    pca_dims: int | None = Field(
        default=256,
        ge=1,
        description="PCA width of the static vectors (model2vec's default 256; null keeps the model's width)",
    )


@register("model2vec_distill", Model2VecConfig, replaces_model=True, peer=True)
def model2vec_distill(
    table: EmbeddingTable, config: Model2VecConfig, context: StepContext = StepContext()
) -> DenseTable:
    _own_table(table, "model2vec_distill")
    if (
        context.model_format != "sentence-transformers"
        or context.model_path is None
        or context.tokenize is None
        or context.tokens is None
    ):
        raise EdgeembError("model2vec_distill distils a sentence-transformers model: give one (e.g. minilm)")
    from edgeemb.evaluate.encoder import static_encoder, unk_id

    try:
        from model2vec.distill import distill
    except ImportError:
        raise EdgeembError(
            "model2vec_distill needs model2vec: pip install 'model2vec==0.10.0' 'skeletoken==0.6.1' scikit-learn"
        ) from None
    with quiet(), silenced_output():
        static = distill(
            model_name=str(context.model_path),
            pca_dims=config.pca_dims,
            token_remove_pattern=None,
            quantize_to="float16",
        )
    # model2vec drops the special tokens and renumbers the rest: its rows go back to the model's
    # own token ids, and the few it dropped stay zero (a static model never looks them up).
    rows = static.tokenizer.get_vocab()
    ids = [rows.get(token, -1) for token in context.tokens]
    if sum(i >= 0 for i in ids) != len(rows):
        raise EdgeembError(
            "model2vec's vocabulary is not a subset of the model's: the rows cannot be put back in token id order"
        )
    weight = np.zeros((table.shape[0], static.embedding.shape[1]), np.float16)
    kept = np.flatnonzero(np.asarray(ids) >= 0)
    weight[kept] = np.asarray(static.embedding, np.float16)[np.asarray(ids)[kept]]
    distilled = DenseTable(weight)
    ours = static_encoder(distilled, context.tokenize, unk_id(context.tokens))(_CHECK_TEXTS)
    theirs = static.encode(_CHECK_TEXTS).astype(np.float32)
    if np.abs(ours - theirs).max() > 1e-3:
        raise EdgeembError("edgeemb's static encoder disagrees with model2vec's own encode on this model")
    return distilled


_CHECK_TEXTS = [
    "A man is playing a guitar.",
    "The stock market fell sharply on Monday.",
    "Wind tunnel tests of a swept wing.",
]


def _own_table(table: EmbeddingTable, step: str) -> np.ndarray:
    if not isinstance(table, DenseTable):
        raise EdgeembError(
            f"{step} quantises the model's own table: make it the recipe's only step (got a {table.describe()} table)"
        )
    return table.weight.astype(np.float32, copy=False)


def _quantized_gather(weight: np.ndarray, run):
    """Run a quantiser `run(source.onnx, out.onnx)` on a graph of one Gather over `weight`; return
    the quantised graph and an onnxruntime session over it."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0)
    graph = helper.make_graph(
        [node],
        "table",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [None, weight.shape[1]])],
        [numpy_helper.from_array(weight, "table")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 10  # what onnxruntime 1.31 reads; onnx would stamp its own newer version
    with tempfile.TemporaryDirectory(prefix="edgeemb-peer-") as folder, quiet():
        source, out = Path(folder) / "table.onnx", Path(folder) / "quantized.onnx"
        onnx.save(model, source)
        run(source, out)
        quantized = onnx.load(out)
        session = onnxruntime.InferenceSession(quantized.SerializeToString(), providers=["CPUExecutionProvider"])
    return quantized.graph, session


def _single(graph, op_type: str):
    nodes = [node for node in graph.node if node.op_type == op_type]
    if len(nodes) != 1:
        raise EdgeembError(
            f"the peer's quantiser wrote {len(nodes)} {op_type} nodes, expected one ({[n.op_type for n in graph.node]})"
        )
    return nodes[0]


def _initializers(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {init.name: numpy_helper.to_array(init) for init in graph.initializer}


def _checked(table: QuantizedTable, session, tool: str) -> QuantizedTable:
    """The table, once edgeemb's decoding of every row equals the tool's runtime's."""
    rows = table.shape[0]
    for start in range(0, rows, _CHECK_ROWS):
        ids = np.arange(start, min(start + _CHECK_ROWS, rows), dtype=np.int64)
        theirs = session.run(None, {"ids": ids})[0]
        if not np.array_equal(table.lookup(ids), theirs):
            difference = float(np.abs(table.lookup(ids) - theirs).max())
            raise EdgeembError(
                f"edgeemb decodes {tool}'s {table.describe()} table differently from {tool} "
                f"(max difference {difference:.3g})"
            )
    return table
