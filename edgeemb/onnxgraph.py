"""`OnnxGraph`: the small builder a storage type writes its ONNX lookup with.

Each storage carries its own lowering (`EmbeddingTable.onnx_rows`, `QuantFormat.onnx_rows`): given
this builder and the name of the ids tensor, it adds the nodes and initializers that turn ids into
float32 rows, and returns the name of their output. The ONNX exporter then splices those nodes into
a graph in place of the word-embedding Gather. Nothing here knows a storage type.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

PREFIX = "edgeemb_embedding"


class OnnxGraph:
    """Nodes and initializers of an embedding lookup, all named under `PREFIX`."""

    def __init__(self, ids: str) -> None:
        self.ids = ids
        self.nodes: list = []
        self.initializers: list = []
        self.uses_contrib = False  # a com.microsoft operator was used (the model must import that domain)
        self._shapes: dict[tuple[str, int], str] = {}

    def const(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper  # onnx: only when a graph is built

        name = f"{PREFIX}.{name}"
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], domain: str = "", **attributes) -> str:
        from onnx import helper  # onnx: only when a graph is built

        name = f"{PREFIX}/{op_type}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, domain=domain, **attributes))
        self.uses_contrib |= domain == "com.microsoft"
        return name

    def float32(self, name: str, dtype: npt.DTypeLike) -> str:
        """`name` as float32 (a Cast unless it already is)."""
        return name if dtype == np.float32 else self.op("Cast", [name], to=_FLOAT)

    def index(self, name: str) -> str:
        """Gathered codes or slots (uint8/uint16/int32) as int64 indices for the next Gather."""
        return self.op("Cast", [name], to=_INT64)

    def gather(self, name: str, array: np.ndarray, ids: str) -> str:
        """Rows `ids` of a constant `array` (stored under `name`)."""
        return self.op("Gather", [self.const(name, array), ids], axis=0)

    def rows_shape(self, ids: str, dim: int) -> str:
        """ids.shape + (dim,), built once per ids tensor."""
        if (ids, dim) not in self._shapes:
            tail = self.const(f"width{len(self.initializers)}", np.array([dim], np.int64))
            self._shapes[ids, dim] = self.op("Concat", [self.op("Shape", [ids]), tail], axis=0)
        return self._shapes[ids, dim]


_FLOAT, _INT64 = 1, 7  # onnx.TensorProto.FLOAT and INT64 (fixed by the ONNX standard)
