"""ONNX: a whole sentence-embedding model with its compressed table inside the graph, or an existing
ONNX file with its word-embedding Gather rewritten, both verified in onnxruntime.

    from edgeemb.export.onnx import export_onnx, verify_onnx
    export_onnx("minilm", table, "minilm-int4.onnx", quantize_rest=True)
    verify_onnx("minilm-int4.onnx", "minilm", table).mean_cosine

The model is exported once in fp32 (torch.export, then torch.onnx's dynamo exporter) with mean
pooling and L2 normalisation in the graph; then the Gather that reads the word embedding is
replaced by a subgraph over the compressed table's own arrays, unchanged. How each table maps
(rows come out float32, or the dtype the original table had):
- dense: Gather (a float16 table is cast after the gather).
- int8/int4/int2: onnxruntime's com.microsoft::GatherBlockQuantized reads the stored codes, scales
  and zero points as they are (tests/test_formats_onnxruntime.py). That operator needs blocks of a
  power of two of at least 16, so int8 with other blocks (per row, the default) is Gather of codes
  and of scales, then Cast, Sub and Mul.
- pq: Gather of the row's codes, offset by 256 per sub-space, Gather in the flattened codebooks.
- vocab_kmeans: Gather of the code, Gather of its centroid, times the row's gathered scale.
- low-rank: the left table's lookup (any of these), MatMul by the right factor, Add the mean.
- mixed: every part is gathered at the row's slot (clamped to the part), and Where picks the row's
  group: no data-dependent shapes, which runtimes handle worst, for one extra lookup per part.
GGUF block types have no ONNX operator and raise an error naming what maps.

With `quantize_rest`, onnxruntime's `quantize_dynamic` turns the other MatMul weights to int8 and
leaves the embedding subgraph as it is.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeemb.errors import EdgeembError
from edgeemb.formats.codebook import PQ, VocabKMeans
from edgeemb.formats.integer import Int2, Int4, Int8, Int8Tensor
from edgeemb.outputs import MARK, check_target, register_mark, staged
from edgeemb.proc import memory_status
from edgeemb.progress import quiet
from edgeemb.rows import unit_rows
from edgeemb.sources import SourceModel, open_model
from edgeemb.sources.hf import trimmed_tokenizer_json
from edgeemb.table import DenseTable, EmbeddingTable, LowRankTable, MixedTable, QuantizedTable, TrimmedTable

Encode = Callable[[list[str]], np.ndarray]

OPSET = 21
_MIN_OPSET = 13  # Unsqueeze/Squeeze with axes as inputs, Min on int64
_PREFIX = "edgeemb_embedding"
_MAPS = (
    "dense fp32/fp16, int8/int4/int2 (GatherBlockQuantized), int8-tensor (DequantizeLinear), pq, vocab_kmeans, "
    "and low-rank or mixed tables of these (GGUF block types go to the GGUF export)"
)
_PASS_THROUGH = {"Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}  # ids keep their values
_BATCH = 64
_WARMUP = 3

SAMPLE_TEXTS = (
    "A man is playing a guitar.",
    "The new phone has a much better camera than the old one.",
    "Embedding tables dominate the weights of small language models.",
    "Two dogs run across a snowy field.",
    "What is the capital of France?",
    "Paris is the capital and largest city of France.",
    "The stock market fell sharply after the announcement.",
    "She sliced the onions and added them to the pan.",
    "Quantisation trades a little accuracy for a much smaller model.",
    "A child is reading a book under a tree.",
    "The train to Edinburgh leaves at half past nine.",
    "Heavy rain is expected across the north tomorrow.",
)


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    file_bytes: int
    table: str  # storage of the embedding in the graph ("original" when left as exported)
    table_bytes: int  # bytes of that storage's arrays, as counted by the table
    quantized_rest: bool  # the other MatMul weights are int8 (onnxruntime dynamic quantisation)
    tokenizer: Path | None = None  # a trimmed vocabulary's tokenizer.json, written beside the file


@dataclass(frozen=True)
class OnnxVerification:
    path: Path
    file_bytes: int
    checker: str  # "ok", or onnx.checker's complaint
    texts: int
    max_abs_diff: float  # against the compressed model run in PyTorch (the table swapped in)
    mean_cosine: float  # against the original model's sentence embeddings
    p01_cosine: float
    min_cosine: float
    p50_latency_ms: float  # one sentence per run, `threads` intra-op threads
    session_rss_mb: float  # peak RSS of a fresh process loading the session and running the texts, minus its RSS before (Python, numpy, onnxruntime)
    threads: int


# --- export -------------------------------------------------------------------------------------


def export_onnx(
    model: str | Path | SourceModel,
    table: EmbeddingTable | None,
    out: str | Path,
    *,
    quantize_rest: bool = False,
    force: bool = False,
) -> OnnxExport:
    """Export a sentence-transformers model (Transformer, mean Pooling, optional Normalize) as one
    ONNX graph: inputs `input_ids` and `attention_mask` (int64, batch x sequence), output
    `sentence_embedding`, mean-pooled and L2-normalised. `table` replaces the word embedding inside
    the graph (None: the model's own fp32 table, a plain export)."""
    out = Path(out)
    check_target(out, force)
    source = _sentence_model(model)
    if table is not None:  # fail before the slow export, not after it
        _check_shape(table, source.table.shape, str(source.name))
        _Builder("input_ids").lookup(table, "table")  # raises for storages with no ONNX mapping
    return _finish(_torch_export(source.path), table, out, quantize_rest, force)


def compress_onnx(
    source: str | Path,
    table: EmbeddingTable,
    out: str | Path,
    *,
    quantize_rest: bool = False,
    force: bool = False,
) -> OnnxExport:
    """Rewrite the word embedding of an ONNX file exported elsewhere: the Gather that reads the
    largest 2-D initializer at ids coming from a graph input becomes `table`'s subgraph; every
    other node, input and output stays as it was."""
    import onnx
    from google.protobuf.message import DecodeError

    source, out = Path(source), Path(out)
    check_target(out, force)
    if not source.is_file():
        raise EdgeembError(f"{source}: no such ONNX file")
    try:
        graph = onnx.load(os.fspath(source))
    except (DecodeError, ValueError, OSError) as exc:
        raise EdgeembError(f"{source}: not a readable ONNX file ({' '.join(str(exc).split()) or type(exc).__name__})") from None
    return _finish(graph, table, out, quantize_rest, force, origin=str(source))


def _finish(graph, table: EmbeddingTable | None, out: Path, quantize_rest: bool, force: bool, origin: str = "the exported model") -> OnnxExport:
    if table is None:
        _write(graph, out, quantize_rest, [], force)
        return OnnxExport(out, out.stat().st_size, "original", 0, quantize_rest)
    _write(graph, out, quantize_rest, _rewrite(graph, table, origin), force)
    return OnnxExport(out, out.stat().st_size, table.describe(), table.nbytes, quantize_rest)


def _check_shape(table: EmbeddingTable, shape: tuple[int, ...], origin: str) -> None:
    """The table replaces a word embedding of `shape` (a trimmed one, a subset of its rows)."""
    rows = int(table.facts.get("source_rows", 0)) if isinstance(table, TrimmedTable) else table.shape[0]
    if tuple(shape) != (rows, table.shape[1]):
        raise EdgeembError(f"{origin}: the word embedding is {shape[0]} x {shape[1]}, the table {table.shape[0]} x {table.shape[1]}")


def _sentence_model(model: str | Path | SourceModel) -> SourceModel:
    source = model if isinstance(model, SourceModel) else open_model(model)
    if source.format != "sentence-transformers":
        raise EdgeembError(f"{source.name} is a {source.format} model: the ONNX export takes a sentence-transformers model")
    return source


@functools.lru_cache(maxsize=1)
def _sentence_transformer(path: Path):
    """The loaded sentence-transformers model: its transformer to export, its tokenizer to feed the ONNX."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach for a hub
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    try:
        return SentenceTransformer(os.fspath(path), device="cpu", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise EdgeembError(f"{path}: cannot load as a sentence-transformers model ({exc})") from None


def _torch_export(path: Path):
    """The fp32 model as an onnx.ModelProto, pooling and normalisation included."""
    import torch

    st = _sentence_transformer(path)
    kinds = [type(module).__name__ for module in st]
    if kinds[:2] != ["Transformer", "Pooling"] or st[1].pooling_mode != "mean" or set(kinds[2:]) - {"Normalize"}:
        modes = f" ({st[1].pooling_mode} pooling)" if kinds[1:2] == ["Pooling"] else ""
        raise EdgeembError(f"{path}: the ONNX export covers Transformer + mean Pooling (+ Normalize) models; this one is {' + '.join(kinds)}{modes}")

    class MeanPooled(torch.nn.Module):
        """What sentence-transformers computes: masked mean of the token states, L2-normalised."""

        def __init__(self, transformer: torch.nn.Module) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            states = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    transformer = st[0].auto_model
    vocab = transformer.get_input_embeddings().weight.shape[0]
    # A batch of 2 with padding, so that neither axis is specialised to its example size.
    ids = torch.arange(16).reshape(2, 8) % vocab
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    longest = getattr(transformer.config, "max_position_embeddings", None)  # position ids bound the sequence
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", max=longest) if longest else torch.export.Dim("sequence")
    with torch.no_grad(), quiet():
        program = torch.export.export(
            MeanPooled(transformer).eval(), (ids, mask), dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}}
        )
        exported = torch.onnx.export(
            program, dynamo=True, input_names=["input_ids", "attention_mask"], output_names=["sentence_embedding"], opset_version=OPSET, verbose=False
        )
    graph = exported.model_proto
    # The exporter annotates every node and value with stack traces and module paths: 0.6 MB of
    # MiniLM's file that no runtime reads.
    for entry in [*graph.graph.node, *graph.graph.input, *graph.graph.output, *graph.graph.value_info, *graph.graph.initializer]:
        del entry.metadata_props[:]
    return graph


def _write(graph, out: Path, quantize_rest: bool, keep: list[str], force: bool) -> None:
    """Save atomically, with edgeemb's mark in the model's metadata: nothing is left on failure."""
    import onnx

    _set_mark(graph)
    with staged(out, force) as staging:
        if quantize_rest:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            with quiet():
                # Weights of MatMuls with a constant B only (the default for dynamic quantisation),
                # per output channel; the embedding subgraph's own nodes are left alone.
                quantize_dynamic(
                    graph, staging, op_types_to_quantize=["MatMul"], per_channel=True, weight_type=QuantType.QInt8,
                    nodes_to_exclude=keep, extra_options={"MatMulConstBOnly": True},
                )
        else:
            onnx.save(graph, os.fspath(staging))


# The metadata_props key that marks an ONNX file as edgeemb's.
MARK_KEY = "edgeemb.version"


def _set_mark(graph) -> None:
    props = {prop.key: prop for prop in graph.metadata_props}
    if MARK_KEY in props:
        props[MARK_KEY].value = MARK
    else:
        graph.metadata_props.add(key=MARK_KEY, value=MARK)


@register_mark(".onnx")
def _marked(path: Path) -> bool:
    import onnx

    model = onnx.load(os.fspath(path), load_external_data=False)
    return any(prop.key == MARK_KEY and prop.value.startswith("edgeemb ") for prop in model.metadata_props)


# --- the embedding subgraph ---------------------------------------------------------------------


def _rewrite(model, table: EmbeddingTable, origin: str) -> list[str]:
    """Replace the word-embedding Gather of `model` (in place) by `table`'s subgraph; returns the
    names of the new nodes."""
    from onnx import TensorProto, helper

    graph = model.graph
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)
    if opset < _MIN_OPSET:
        raise EdgeembError(f"{origin}: opset {opset}; the embedding subgraph needs opset {_MIN_OPSET} or newer")
    gather, weight = _word_embedding(graph, origin)
    _check_shape(table, tuple(weight.dims), f"{origin}: {weight.name}")
    users = [node.name or node.op_type for node in graph.node if node is not gather and weight.name in node.input]
    if users or weight.name in {output.name for output in graph.output}:
        raise EdgeembError(f"{origin}: the word embedding {weight.name} is also read by {', '.join(users) or 'a graph output'} (a tied head?); only an input embedding can be replaced")
    if weight.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
        raise EdgeembError(f"{origin}: the word embedding {weight.name} is {TensorProto.DataType.Name(weight.data_type)}; a float32 or float16 table is replaced")

    builder = _Builder(gather.input[1])
    rows = builder.lookup(table, "table")
    if weight.data_type != TensorProto.FLOAT:
        rows = builder.op("Cast", [rows], to=weight.data_type)
    next(node for node in builder.nodes if rows in node.output).output[0] = gather.output[0]  # what the graph reads

    position = list(graph.node).index(gather)
    del graph.node[position]
    for offset, node in enumerate(builder.nodes):
        graph.node.insert(position + offset, node)
    graph.initializer.remove(weight)
    graph.initializer.extend(builder.initializers)
    for entry in [entry for entry in graph.input if entry.name == weight.name]:  # initializers listed as inputs (old IRs)
        graph.input.remove(entry)
    if builder.uses_contrib and not any(entry.domain == "com.microsoft" for entry in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, "edgeemb.table": table.describe()})
    return [node.name for node in builder.nodes]


def _word_embedding(graph, origin: str):
    """The Gather (axis 0) of a 2-D initializer at ids that come from a graph input (through
    value-preserving ops); the largest such table when there are several (token types, say)."""
    from onnx import helper

    initializers = {tensor.name: tensor for tensor in graph.initializer}
    inputs = {entry.name for entry in graph.input} - set(initializers)
    producers = {output: node for node in graph.node for output in node.output}

    def from_input(name: str) -> bool:
        while name not in inputs:
            node = producers.get(name)
            if node is None or node.op_type not in _PASS_THROUGH:
                return False
            name = node.input[0]
        return True

    found = [
        (node, initializers[node.input[0]])
        for node in graph.node
        if node.op_type == "Gather"
        and node.domain in ("", "ai.onnx")
        and node.input[0] in initializers
        and len(initializers[node.input[0]].dims) == 2
        and all(helper.get_attribute_value(a) == 0 for a in node.attribute if a.name == "axis")
        and from_input(node.input[1])
    ]
    if not found:
        raise EdgeembError(f"{origin}: no Gather reads a 2-D initializer at ids from a graph input: no word embedding to compress")
    return max(found, key=lambda pair: pair[1].dims[0])


class _Builder:
    """Nodes and initializers of the embedding subgraph, named under one prefix, computing float32
    rows of a table at `ids` (any shape): the output has shape ids.shape + (dim,)."""

    def __init__(self, ids: str) -> None:
        self.ids = ids
        self.nodes: list = []
        self.initializers: list = []
        self.uses_contrib = False
        self._shapes: dict[tuple[str, int], str] = {}

    def const(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        name = f"{_PREFIX}.{name}"
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], domain: str = "", **attributes) -> str:
        from onnx import helper

        name = f"{_PREFIX}/{op_type}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, domain=domain, **attributes))
        self.uses_contrib |= domain == "com.microsoft"
        return name

    def float32(self, name: str, dtype: np.dtype) -> str:
        from onnx import TensorProto

        return name if dtype == np.float32 else self.op("Cast", [name], to=TensorProto.FLOAT)

    def index(self, name: str) -> str:
        """Gathered codes or slots (uint8/uint16/int32) as int64 indices for the next Gather."""
        from onnx import TensorProto

        return self.op("Cast", [name], to=TensorProto.INT64)

    def rows_shape(self, ids: str, dim: int) -> str:
        """ids.shape + (dim,), built once per ids tensor."""
        if (ids, dim) not in self._shapes:
            tail = self.const(f"width{len(self.initializers)}", np.array([dim], np.int64))
            self._shapes[ids, dim] = self.op("Concat", [self.op("Shape", [ids]), tail], axis=0)
        return self._shapes[ids, dim]

    def lookup(self, table: EmbeddingTable, path: str, ids: str | None = None) -> str:
        ids = ids or self.ids
        if isinstance(table, TrimmedTable):  # the tokenizer is rewritten (beside the file): ids are the new ones
            return self.lookup(table.rows, path, ids)
        if isinstance(table, DenseTable):
            return self.float32(self.op("Gather", [self.const(f"{path}.weight", table.weight), ids], axis=0), table.weight.dtype)
        if isinstance(table, LowRankTable):
            rows = self.op("MatMul", [self.lookup(table.left, f"{path}.left", ids), self.float32(self.const(f"{path}.right", table.right), table.right.dtype)])
            return rows if table.bias is None else self.op("Add", [rows, self.float32(self.const(f"{path}.bias", table.bias), table.bias.dtype)])
        if isinstance(table, MixedTable):
            return self._mixed(table, path, ids)
        if isinstance(table, QuantizedTable) and isinstance(table.format, (Int8, Int4, Int2)):
            return self._integer(table, path, ids)
        if isinstance(table, QuantizedTable) and isinstance(table.format, Int8Tensor):
            # As onnxruntime's dynamic quantisation writes it: gather the uint8 rows, then dequantise.
            codes = self.op("Gather", [self.const(f"{path}.codes", table.data["codes"]), ids], axis=0)
            return self.op("DequantizeLinear", [codes, self.const(f"{path}.scale", table.data["scale"][0]), self.const(f"{path}.zero_point", table.data["zero_point"][0])])
        if isinstance(table, QuantizedTable) and isinstance(table.format, PQ):
            return self._pq(table, path, ids)
        if isinstance(table, QuantizedTable) and isinstance(table.format, VocabKMeans):
            return self._vocab_kmeans(table, path, ids)
        raise EdgeembError(f"ONNX export: {table.describe()} has no ONNX mapping; what maps: {_MAPS}")

    def _integer(self, table: QuantizedTable, path: str, ids: str) -> str:
        fmt, data, dim = table.format, table.data, table.dim
        block = fmt.block_size or dim
        if block >= 16 and block & (block - 1) == 0:
            inputs = [self.const(f"{path}.codes", data["codes"]), ids, self.const(f"{path}.scales", data["scales"])]
            if fmt.zero_point:
                inputs.append(self.const(f"{path}.zero_points", data["zero_points"]))
            rows = self.op(
                "GatherBlockQuantized", inputs, domain="com.microsoft", gather_axis=0, quantize_axis=1, block_size=block, bits=fmt.bits
            )
            return self.float32(rows, data["scales"].dtype)
        if fmt.bits != 8:
            raise EdgeembError(f"ONNX export: {fmt.describe()}: GatherBlockQuantized needs blocks of a power of two of at least 16")
        # int8 codes need no unpacking: gather them as (rows, blocks, block) and scale each block.
        n, blocks = data["scales"].shape
        codes = self.op("Gather", [self.const(f"{path}.codes", data["codes"].reshape(n, blocks, -1)), ids], axis=0)
        scales = self.op("Gather", [self.const(f"{path}.scales", data["scales"].reshape(n, blocks, 1)), ids], axis=0)
        if fmt.zero_point:
            zeros = self.float32(self.op("Gather", [self.const(f"{path}.zero_points", data["zero_points"].reshape(n, blocks, 1)), ids], axis=0), np.uint8)
        else:
            zeros = self.const(f"{path}.zero", np.array(128, np.float32))  # the implicit symmetric zero point
        values = self.op("Sub", [self.float32(codes, np.uint8), zeros])
        return self.op("Reshape", [self.op("Mul", [values, self.float32(scales, data["scales"].dtype)]), self.rows_shape(ids, dim)])

    def _pq(self, table: QuantizedTable, path: str, ids: str) -> str:
        codebooks = table.data["codebooks"]
        subspaces, centroids, width = codebooks.shape
        # Sub-space j's code c is row j * centroids + c of the codebooks stacked into one table.
        codes = self.index(self.op("Gather", [self.const(f"{path}.codes", table.data["codes"]), ids], axis=0))
        offsets = self.const(f"{path}.offsets", np.arange(subspaces, dtype=np.int64) * centroids)
        flat = self.const(f"{path}.codebooks", codebooks.reshape(subspaces * centroids, width))
        pieces = self.op("Gather", [flat, self.op("Add", [codes, offsets])], axis=0)
        return self.op("Reshape", [self.float32(pieces, codebooks.dtype), self.rows_shape(ids, table.dim)])

    def _vocab_kmeans(self, table: QuantizedTable, path: str, ids: str) -> str:
        data = table.data
        codes = self.index(self.op("Gather", [self.const(f"{path}.codes", data["codes"]), ids], axis=0))
        centroids = self.float32(self.op("Gather", [self.const(f"{path}.centroids", data["centroids"]), codes], axis=0), data["centroids"].dtype)
        # Scales stored as (rows, 1) (the same bytes) so the gathered scale broadcasts over the row.
        scales = self.op("Gather", [self.const(f"{path}.scales", data["scales"].reshape(-1, 1)), ids], axis=0)
        return self.op("Mul", [centroids, self.float32(scales, data["scales"].dtype)])

    def _mixed(self, table: MixedTable, path: str, ids: str) -> str:
        slots = self.index(self.op("Gather", [self.const(f"{path}.slot", table.slot), ids], axis=0))
        groups = self.op("Gather", [self.const(f"{path}.group", table.group.reshape(-1, 1)), ids], axis=0)  # (..., 1)
        rows = None
        for index, part in enumerate(table.parts):
            # A slot belongs to the row's own group; clamped, it is a valid (unused) row of any other part.
            last = self.const(f"{path}.part{index}.last", np.array(part.shape[0] - 1, np.int64))
            part_rows = self.lookup(part, f"{path}.part{index}", self.op("Min", [slots, last]))
            if rows is None:
                rows = part_rows
                continue
            chosen = self.op("Equal", [groups, self.const(f"{path}.part{index}.group", np.array(index, np.uint8))])
            rows = self.op("Where", [chosen, part_rows, rows])
        return rows


# --- verify -------------------------------------------------------------------------------------


def tokenizer_beside(onnx_file: Path) -> Path:
    """Where a trimmed vocabulary's tokenizer.json goes beside its ONNX export (model.onnx ->
    model.tokenizer.json): the graph's ids are the trimmed vocabulary's."""
    return Path(onnx_file).with_suffix(".tokenizer.json")


def onnx_encoder(path: str | Path, model: str | Path | SourceModel = "minilm", *, threads: int = 1, tokenizer_json: str | None = None) -> Encode:
    """Encode texts with an ONNX sentence model in onnxruntime, tokenised as the sentence-transformers
    model `model` tokenises them (or by `tokenizer_json`, a trimmed vocabulary's). A graph that
    outputs token states (an optimum export, say) is mean-pooled here; every output row is
    L2-normalised."""
    source = _sentence_model(model)
    session = onnx_session(Path(path), threads)
    tokenize = sentence_tokenizer(source.path, tokenizer_json)

    def encode(texts: list[str]) -> np.ndarray:
        ids = tokenize(texts)
        order = np.argsort([len(row) for row in ids], kind="stable")  # similar lengths share a batch: little padding
        batches = [_run(session, [ids[i] for i in order[start : start + _BATCH]]) for start in range(0, len(ids), _BATCH)]
        rows = np.concatenate(batches)
        out = np.empty_like(rows)
        out[order] = rows
        return out

    return encode


def verify_onnx(
    path: str | Path,
    model: str | Path | SourceModel = "minilm",
    table: EmbeddingTable | None = None,
    texts: list[str] | tuple[str, ...] = SAMPLE_TEXTS,
    *,
    threads: int = 1,
    rounds: int = 3,
) -> OnnxVerification:
    """Check an exported model: onnx.checker; its outputs against the compressed model in PyTorch
    (`table` swapped into `model`; None: the original) and against the original model; the file
    size; and, in a fresh process, the session's peak RSS and the p50 latency of one sentence."""
    import onnx

    from edgeemb.evaluate.encoder import memoize, sentence_encoder
    from edgeemb.evaluate.sentence import embedding_drift

    path, texts = Path(path), list(texts)
    if not path.is_file():
        raise EdgeembError(f"{path}: no such ONNX file")
    try:
        onnx.checker.check_model(os.fspath(path), full_check=False)
        checker = "ok"
    except onnx.checker.ValidationError as exc:
        checker = " ".join(str(exc).split())
    source = _sentence_model(model)
    tokenizer_json = trimmed_tokenizer_json(source.path, table.keep) if isinstance(table, TrimmedTable) else None
    reference = sentence_encoder(source.path, source.sha256)
    ours = memoize(onnx_encoder(path, source, threads=threads, tokenizer_json=tokenizer_json))
    compressed = reference.encoder(None if table is None else table.to_dense(), "encode (reference)", tokenizer_json)
    drift = embedding_drift(reference.original, ours, texts)
    max_abs_diff = float(np.abs(ours(texts) - unit_rows(compressed(texts))).max())
    probe = _probe_in_child([path], sentence_tokenizer(source.path, tokenizer_json)(texts), threads, rounds)
    return OnnxVerification(
        path=path,
        file_bytes=path.stat().st_size,
        checker=checker,
        texts=len(texts),
        max_abs_diff=max_abs_diff,
        mean_cosine=drift.mean_cosine,
        p01_cosine=drift.p01_cosine,
        min_cosine=drift.min_cosine,
        p50_latency_ms=probe["p50_ms"][0],
        session_rss_mb=(probe["peak_rss"] - probe["rss_before"]) / 2**20,
        threads=threads,
    )


def compare_latency(
    paths: list[str | Path], model: str | Path | SourceModel, texts: list[str], *, threads: int = 1, rounds: int = 3
) -> list[float]:
    """p50 milliseconds per sentence of each ONNX file, measured side by side in one fresh process:
    every sentence runs on every session in turn (rotating who goes first), so load from other
    work on the machine falls on all of them alike."""
    source = _sentence_model(model)
    return _probe_in_child([Path(p) for p in paths], sentence_tokenizer(source.path)(texts), threads, rounds)["p50_ms"]


def sentence_tokenizer(path: Path, tokenizer_json: str | None = None) -> Callable[[list[str]], list[list[int]]]:
    """texts -> token ids with special tokens, truncated as the sentence-transformers model does
    (with `tokenizer_json`: that tokenizer's ids, a trimmed vocabulary's)."""
    from edgeemb.export.st import trimmed_tokenizer

    st = _sentence_transformer(path)
    tokenizer, longest = st[0].tokenizer, st.max_seq_length
    if tokenizer_json is not None:
        tokenizer = trimmed_tokenizer(tokenizer, tokenizer_json)
    return lambda texts: tokenizer(list(texts), truncation="longest_first", max_length=longest)["input_ids"]


def onnx_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types, not exported as a base
        raise EdgeembError(f"{path}: onnxruntime cannot load it ({' '.join(str(exc).split())})") from None


def onnx_feed(session, ids: list[list[int]]) -> tuple[dict, np.ndarray]:
    """Padded inputs for every input the graph declares (token types are zeros), and the mask."""
    width = max(len(row) for row in ids)
    mask = np.array([[1] * len(row) + [0] * (width - len(row)) for row in ids], np.int64)
    values = {"input_ids": np.array([row + [0] * (width - len(row)) for row in ids], np.int64), "attention_mask": mask, "token_type_ids": np.zeros_like(mask)}
    feed = {}
    for entry in session.get_inputs():
        if entry.name not in values:
            raise EdgeembError(f"the ONNX input {entry.name!r} is not one of input_ids, attention_mask, token_type_ids")
        feed[entry.name] = values[entry.name].astype(np.int32 if entry.type == "tensor(int32)" else np.int64)
    return feed, mask


def _run(session, ids: list[list[int]]) -> np.ndarray:
    feed, mask = onnx_feed(session, ids)
    out = session.run(None, feed)[0].astype(np.float32)
    if out.ndim == 3:  # token states: mean over the real tokens, as sentence-transformers pools them
        weights = mask[..., None].astype(np.float32)
        out = (out * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
    return unit_rows(out)


def _probe_in_child(paths: list[Path], ids: list[list[int]], threads: int, rounds: int) -> dict:
    """Run `_probe` in a fresh interpreter, so that its RSS holds onnxruntime and the sessions only."""
    request = json.dumps({"paths": [os.fspath(p) for p in paths], "ids": ids, "threads": threads, "rounds": rounds})
    done = subprocess.run(
        [sys.executable, "-c", "from edgeemb.export.onnx import _probe; _probe()"], input=request, capture_output=True, text=True, check=False
    )
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise EdgeembError(f"onnxruntime probe failed: {last}")
    return json.loads(done.stdout)


def _probe() -> None:
    """Child side of `_probe_in_child`: a JSON request on stdin, the measurements on stdout."""
    import time

    import onnxruntime  # noqa: F401  (loaded before the baseline: the session is what is measured)

    request = json.load(sys.stdin)
    rss_before = memory_status()["VmRSS"]
    sessions = [onnx_session(Path(p), request["threads"]) for p in request["paths"]]
    feeds = [[onnx_feed(session, [row])[0] for row in request["ids"]] for session in sessions]
    for session, feed in zip(sessions, feeds):
        for sentence in feed[:_WARMUP]:
            session.run(None, sentence)
    times: list[list[float]] = [[] for _ in sessions]
    for number in range(request["rounds"] * len(request["ids"])):
        sentence = number % len(request["ids"])
        for k in range(len(sessions)):
            which = (k + number) % len(sessions)
            start = time.perf_counter()
            sessions[which].run(None, feeds[which][sentence])
            times[which].append(time.perf_counter() - start)
    peak = memory_status()["VmHWM"]
    json.dump({"p50_ms": [1000 * float(np.median(t)) for t in times], "peak_rss": peak, "rss_before": rss_before}, sys.stdout)
