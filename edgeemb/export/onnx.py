"""ONNX: a whole sentence-embedding model with its compressed table inside the graph, or an existing
ONNX file with its word-embedding Gather rewritten, both verified in onnxruntime.

    from edgeemb.export.onnx import export_onnx, verify_onnx
    export_onnx("minilm", table, "minilm-int4.onnx", quantize_rest=True)
    verify_onnx("minilm-int4.onnx", "minilm", table).mean_cosine

The model is exported once in fp32 (torch.export, then torch.onnx's dynamo exporter) with mean
pooling and L2 normalisation in the graph; then the Gather that reads the word embedding is
replaced by a subgraph over the compressed table's own arrays, unchanged: each storage writes its
own lookup (`EmbeddingTable.onnx_rows`, `QuantFormat.onnx_rows`; e.g. int8/int4/int2 as
onnxruntime's com.microsoft::GatherBlockQuantized over the stored codes, scales and zero points,
PQ as two Gathers), and a storage with no ONNX mapping (the GGUF block types) raises an error
naming what maps. The runtime side (sessions, encoders, probes) is `edgeemb.evaluate.onnxruntime`.

With `quantize_rest`, onnxruntime's `quantize_dynamic` turns the other MatMul weights to int8 and
leaves the embedding subgraph as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeemb.errors import EdgeembError
from edgeemb.evaluate.encoder import memoize, sentence_encoder
from edgeemb.evaluate.onnxruntime import (
    onnx_encoder,
    probe_in_child,
    sentence_model,
    sentence_tokenizer,
    sentence_transformer,
)
from edgeemb.evaluate.sentence import embedding_drift
from edgeemb.onnxgraph import OnnxGraph
from edgeemb.outputs import MARK, check_target, register_mark, staged
from edgeemb.progress import quiet
from edgeemb.rows import unit_rows
from edgeemb.sources import SourceModel
from edgeemb.sources.hf import trimmed_tokenizer_json
from edgeemb.table import EmbeddingTable, TrimmedTable

OPSET = 21
_MIN_OPSET = 13  # Unsqueeze/Squeeze with axes as inputs, Min on int64
_PASS_THROUGH = {"Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}  # ids keep their values

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
    tokenizer: Path | None = None  # the tokenizer.json the exporter writes beside the file (`tokenizer_beside`)


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
    # peak RSS of a fresh process loading the session and running the texts,
    # minus its RSS before (Python, numpy, onnxruntime)
    session_rss_mb: float
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
    source = sentence_model(model)
    if table is not None:  # fail before the slow export, not after it
        _check_shape(table, source.table.shape, str(source.name))
        table.onnx_rows(OnnxGraph("input_ids"), "table", "input_ids")  # raises for storages with no ONNX mapping
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
    try:  # onnx itself refuses external data that points outside the model's folder
        graph = onnx.load(os.fspath(source))
    except (DecodeError, ValueError, OSError, onnx.checker.ValidationError) as exc:
        raise EdgeembError(
            f"{source}: not a readable ONNX file ({' '.join(str(exc).split()) or type(exc).__name__})"
        ) from None
    return _finish(graph, table, out, quantize_rest, force, origin=str(source))


def _finish(
    graph, table: EmbeddingTable | None, out: Path, quantize_rest: bool, force: bool, origin: str = "the exported model"
) -> OnnxExport:
    if table is None:
        _write(graph, out, quantize_rest, [], force)
        return OnnxExport(out, out.stat().st_size, "original", 0, quantize_rest)
    _write(graph, out, quantize_rest, _rewrite(graph, table, origin), force)
    return OnnxExport(out, out.stat().st_size, table.describe(), table.nbytes, quantize_rest)


def _check_shape(table: EmbeddingTable, shape: tuple[int, ...], origin: str) -> None:
    """The table replaces a word embedding of `shape` (a trimmed one, a subset of its rows)."""
    rows = int(table.facts.get("source_rows", 0)) if isinstance(table, TrimmedTable) else table.shape[0]
    if tuple(shape) != (rows, table.shape[1]):
        raise EdgeembError(
            f"{origin}: the word embedding is {shape[0]} x {shape[1]}, the table {table.shape[0]} x {table.shape[1]}"
        )


def _torch_export(path: Path):
    """The fp32 model as an onnx.ModelProto, pooling and normalisation included."""
    import torch

    st = sentence_transformer(path)
    kinds = [type(module).__name__ for module in st]
    if kinds[:2] != ["Transformer", "Pooling"] or st[1].pooling_mode != "mean" or set(kinds[2:]) - {"Normalize"}:
        modes = f" ({st[1].pooling_mode} pooling)" if kinds[1:2] == ["Pooling"] else ""
        raise EdgeembError(
            f"{path}: the ONNX export covers Transformer + mean Pooling (+ Normalize) models; "
            f"this one is {' + '.join(kinds)}{modes}"
        )

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
            MeanPooled(transformer).eval(),
            (ids, mask),
            dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
        )
        exported = torch.onnx.export(
            program,
            dynamo=True,
            input_names=["input_ids", "attention_mask"],
            output_names=["sentence_embedding"],
            opset_version=OPSET,
            verbose=False,
        )
    graph = exported.model_proto
    # The exporter annotates every node and value with stack traces and module paths: 0.6 MB of
    # MiniLM's file that no runtime reads.
    for entry in [
        *graph.graph.node,
        *graph.graph.input,
        *graph.graph.output,
        *graph.graph.value_info,
        *graph.graph.initializer,
    ]:
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
                    graph,
                    staging,
                    op_types_to_quantize=["MatMul"],
                    per_channel=True,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=keep,
                    extra_options={"MatMulConstBOnly": True},
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
        raise EdgeembError(
            f"{origin}: the word embedding {weight.name} is also read by {', '.join(users) or 'a graph output'} "
            "(a tied head?); only an input embedding can be replaced"
        )
    if weight.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
        raise EdgeembError(
            f"{origin}: the word embedding {weight.name} is {TensorProto.DataType.Name(weight.data_type)}; "
            "a float32 or float16 table is replaced"
        )

    builder = OnnxGraph(gather.input[1])
    rows = table.onnx_rows(builder, "table", builder.ids)
    if weight.data_type != TensorProto.FLOAT:
        rows = builder.op("Cast", [rows], to=weight.data_type)
    next(node for node in builder.nodes if rows in node.output).output[0] = gather.output[0]  # what the graph reads

    position = list(graph.node).index(gather)
    del graph.node[position]
    for offset, node in enumerate(builder.nodes):
        graph.node.insert(position + offset, node)
    graph.initializer.remove(weight)
    graph.initializer.extend(builder.initializers)
    for entry in [
        entry for entry in graph.input if entry.name == weight.name
    ]:  # initializers listed as inputs (old IRs)
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
        raise EdgeembError(
            f"{origin}: no Gather reads a 2-D initializer at ids from a graph input: no word embedding to compress"
        )
    return max(found, key=lambda pair: pair[1].dims[0])


# --- verify -------------------------------------------------------------------------------------


def tokenizer_beside(onnx_file: Path) -> Path:
    """Where the tokenizer.json goes beside an ONNX export (model.onnx -> model.tokenizer.json):
    the graph takes token ids, and a trimmed vocabulary's are not the source model's."""
    return Path(onnx_file).with_suffix(".tokenizer.json")


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
    size; and, in a fresh process, the session's peak RSS and the p50 latency of one sentence.
    The file is fed by the tokenizer.json beside it (`tokenizer_beside`) when there is one, as a
    user would run it; else by the tokenizer the table implies (the model's, or its trimmed one)."""
    import onnx  # onnx: only where a file is checked

    path, texts = Path(path), list(texts)
    if not path.is_file():
        raise EdgeembError(f"{path}: no such ONNX file")
    try:
        onnx.checker.check_model(os.fspath(path), full_check=False)
        checker = "ok"
    except onnx.checker.ValidationError as exc:
        checker = " ".join(str(exc).split())
    source = sentence_model(model)
    tokenizer_json = trimmed_tokenizer_json(source.path, table.keep) if isinstance(table, TrimmedTable) else None
    beside = tokenizer_beside(path)
    shipped = beside.read_text(encoding="utf-8") if beside.is_file() else tokenizer_json
    reference = sentence_encoder(source.path, source.sha256)
    ours = memoize(onnx_encoder(path, source, threads=threads, tokenizer_json=shipped))
    compressed = reference.encoder(None if table is None else table.to_dense(), "encode (reference)", tokenizer_json)
    drift = embedding_drift(reference.original, ours, texts)
    max_abs_diff = float(np.abs(ours(texts) - unit_rows(compressed(texts))).max())
    probe = probe_in_child([path], sentence_tokenizer(source.path, shipped)(texts), threads, rounds)
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
