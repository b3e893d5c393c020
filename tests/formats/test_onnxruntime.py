"""The integer formats' arrays are exactly what onnxruntime's com.microsoft::GatherBlockQuantized
reads: a graph built from them, unchanged, returns the rows our own lookup decodes."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeemb.formats import get_format
from edgeemb.table import QuantizedTable


def gather_block_quantized(table: QuantizedTable, ids: np.ndarray) -> np.ndarray:
    fmt = table.format
    block = fmt.block_size or table.dim
    arrays = table.arrays()
    initializers = [
        numpy_helper.from_array(arrays["codes"], "codes"),
        numpy_helper.from_array(arrays["scales"], "scales"),
    ]
    inputs = ["codes", "ids", "scales"]
    if fmt.zero_point:
        initializers.append(numpy_helper.from_array(arrays["zero_points"], "zero_points"))
        inputs.append("zero_points")
    node = helper.make_node(
        "GatherBlockQuantized",
        inputs,
        ["rows"],
        domain="com.microsoft",
        gather_axis=0,
        quantize_axis=1,
        block_size=block,
        bits=fmt.bits,
    )
    graph = helper.make_graph(
        [node],
        "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT16, [None, table.dim])],
        initializers,
    )
    # IR 10: the newest this onnxruntime reads (onnx itself writes a newer one by default).
    model = helper.make_model(
        graph, ir_version=10, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"ids": ids})[0].astype(np.float32)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("int4", {"block_size": 32}),
        ("int4", {"block_size": 16}),
        ("int4", {"block_size": 128}),
        ("int4", {"block_size": 32, "zero_point": True}),
        ("int8", {"block_size": 32}),
        ("int8", {"block_size": 64, "zero_point": True}),
    ],
)
def test_onnxruntime_reads_our_arrays_as_they_are(name, options):
    weight = np.random.default_rng(0).standard_normal((500, 256)).astype(np.float32) + 0.3
    table = QuantizedTable.quantize(weight, get_format(name, **options))
    ids = np.array([0, 17, 499, 17, 250], dtype=np.int64)
    ours = table.lookup(ids)
    theirs = gather_block_quantized(table, ids)
    # onnxruntime multiplies in fp16 (the scales' type): equal to fp16 rounding of our rows.
    assert np.allclose(theirs, ours, rtol=2e-3, atol=2e-3 * np.abs(ours).max())
