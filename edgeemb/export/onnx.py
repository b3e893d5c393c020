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

`compress_onnx` takes an ONNX file exported elsewhere, or an optimum export folder (`onnx_source`:
its model.onnx, external data beside it, and its tokenizer.json); `verify_onnx` then compares the
rewritten file with that graph with only the table's values swapped in (`swapped_reference`), and
the untouched graph with the source model, so that a graph that differs from the source is told
apart from a rewrite that broke it.

With `quantize_rest`, onnxruntime's `quantize_dynamic` turns the other MatMul (and fused Attention)
weights to int8 and leaves the embedding subgraph as it is.
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
class OnnxSource:
    """What `--from` names: an ONNX file, and the tokenizer.json of the optimum folder it is in."""

    file: Path
    tokenizer: Path | None = None


@dataclass(frozen=True)
class GivenGraph:
    """The untouched graph given with `--from` against the source model (its original table)."""

    path: Path
    tokenizer: Path | None  # the optimum folder's tokenizer.json that fed it (None: the source model's)
    checker: str  # onnx.checker on the untouched graph: a complaint it shares is not the rewrite's
    max_abs_diff: float
    mean_cosine: float
    min_cosine: float


@dataclass(frozen=True)
class OnnxVerification:
    path: Path
    file_bytes: int
    checker: str  # "ok", or onnx.checker's complaint
    texts: int
    reference: str  # what the file must compute: `REFERENCE_PYTORCH`, or `REFERENCE_SWAPPED` (--from)
    max_abs_diff: float  # against that reference
    reference_mean_cosine: float
    reference_min_cosine: float
    mean_cosine: float  # against the original model's sentence embeddings
    p01_cosine: float
    min_cosine: float
    p50_latency_ms: float  # one sentence per run, `threads` intra-op threads
    # peak RSS of a fresh process loading the session and running the texts,
    # minus its RSS before (Python, numpy, onnxruntime)
    session_rss_mb: float
    threads: int
    given: GivenGraph | None = None  # with --from: the graph as given, against the source model


REFERENCE_PYTORCH = "the compressed model in PyTorch (the table swapped in)"
REFERENCE_SWAPPED = "the given graph with only the table's values swapped in (onnxruntime)"


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
    source: str | Path | OnnxSource,
    table: EmbeddingTable,
    out: str | Path,
    *,
    quantize_rest: bool = False,
    force: bool = False,
) -> OnnxExport:
    """Rewrite the word embedding of an ONNX file exported elsewhere (or of an optimum export
    folder's model.onnx): the Gather that reads the largest 2-D initializer at ids coming from a
    graph input becomes `table`'s subgraph; every other node, input and output stays as it was."""
    out = Path(out)
    check_target(out, force)
    file = onnx_source(source).file
    return _finish(_load(file), table, out, quantize_rest, force, origin=str(file))


def onnx_source(path: str | Path | OnnxSource) -> OnnxSource:
    """`--from FILE|DIR`: an ONNX file, or a folder `optimum-cli export onnx` wrote (model.onnx,
    model.onnx_data when the weights are external, config.json and the tokenizer's files), whose
    tokenizer.json then feeds the graph."""
    if isinstance(path, OnnxSource):
        return path
    path = Path(path)
    if not path.is_dir():
        return OnnxSource(path)
    model = path / "model.onnx"
    if not model.is_file():
        others = sorted(entry.name for entry in path.glob("*.onnx"))
        hint = f"; it holds {', '.join(others)}: give one of them as --from FILE" if others else ""
        raise EdgeembError(f"{path}: no model.onnx, so not an optimum ONNX export folder{hint}")
    tokenizer = path / "tokenizer.json"
    return OnnxSource(model, tokenizer if tokenizer.is_file() else None)


def _load(source: Path):
    """An ONNX file with its external data, or one line saying why not."""
    import onnx
    from google.protobuf.message import DecodeError

    if not source.is_file():
        raise EdgeembError(f"{source}: no such ONNX file")
    try:  # onnx itself refuses external data that points outside the model's folder
        return onnx.load(os.fspath(source))
    except (DecodeError, ValueError, OSError, onnx.checker.ValidationError) as exc:
        raise EdgeembError(
            f"{source}: not a readable ONNX file ({' '.join(str(exc).split()) or type(exc).__name__})"
        ) from None


def swapped_reference(source: str | Path, table: EmbeddingTable, out: str | Path) -> Path:
    """`source` with only its word embedding's values replaced by `table`'s decoded rows (in the
    graph's float type, read by its own Gather): what a faithful rewrite of that graph computes.
    Verification runs it beside the rewritten file."""
    from onnx import helper, numpy_helper

    source, out = Path(source), Path(out)
    check_target(out, False)
    graph = _load(source)
    _, weight = _word_embedding(graph.graph, str(source))
    _check_shape(table, tuple(weight.dims), f"{source}: {weight.name}")
    rows = table.to_dense().astype(helper.tensor_dtype_to_np_dtype(weight.data_type))
    weight.CopyFrom(numpy_helper.from_array(rows, weight.name))
    with staged(out, False) as staging:
        onnx_save(graph, staging)
    return out


def _finish(
    graph, table: EmbeddingTable | None, out: Path, quantize_rest: bool, force: bool, origin: str = "the exported model"
) -> OnnxExport:
    if table is None:
        _write(graph, out, quantize_rest, [], force, origin)
        return OnnxExport(out, out.stat().st_size, "original", 0, quantize_rest)
    _write(graph, out, quantize_rest, _rewrite(graph, table, origin), force, origin)
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


def _write(graph, out: Path, quantize_rest: bool, keep: list[str], force: bool, origin: str) -> None:
    """Save atomically, with edgeemb's mark in the model's metadata: nothing is left on failure."""
    _set_mark(graph)
    with staged(out, force) as staging:
        if quantize_rest:
            _quantize_rest(graph, staging, keep, origin)
        else:
            onnx_save(graph, staging)


def onnx_save(graph, path: Path) -> None:
    import onnx

    onnx.save(graph, os.fspath(path))


def _quantize_rest(graph, out: Path, keep: list[str], origin: str) -> None:
    """onnxruntime's dynamic int8 quantisation of the weights of MatMuls with a constant B (per
    output channel) and of fused com.microsoft Attention nodes (an optimised graph holds its
    projections there); the embedding subgraph's own nodes (`keep`) are left alone."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Shape inference cannot type the outputs of com.microsoft ops (an `--optimize O2` export's
    # SkipLayerNormalization, BiasGelu, Attention); the quantiser then needs the graph's float type.
    floats = [t.data_type for t in graph.graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    float_type = max(set(floats), key=floats.count, default=TensorProto.FLOAT)
    if float_type != TensorProto.FLOAT:  # it would quantise float16 activations, which no kernel takes
        raise EdgeembError(
            f"{origin}: the graph's weights are float16; onnxruntime's int8 quantiser (--quantize-rest) "
            "takes float32 graphs: export it without --quantize-rest, or give the float32 export"
        )
    try:
        with quiet():
            quantize_dynamic(
                graph,
                out,
                op_types_to_quantize=["MatMul", "Attention"],
                per_channel=True,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=keep,
                extra_options={"MatMulConstBOnly": True, "DefaultTensorType": float_type},
            )
    except Exception as exc:  # the quantiser raises assorted types (RuntimeError, ValueError, KeyError, ...)
        message = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise EdgeembError(
            f"{origin}: onnxruntime's int8 quantiser (--quantize-rest) cannot handle this graph "
            f"({message}): export it without --quantize-rest"
        ) from None


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
        if any(node.op_type == "EmbedLayerNormalization" for node in graph.node):
            raise EdgeembError(
                f"{origin}: the word embedding is read inside a fused com.microsoft EmbedLayerNormalization "
                "node (onnxruntime's transformer optimizer made it), which takes the whole table: "
                "give the graph as exported, before that fusion"
            )
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
    given: str | Path | OnnxSource | None = None,
    threads: int = 1,
    rounds: int = 3,
) -> OnnxVerification:
    """Check an exported model: onnx.checker; its outputs against the compressed model's reference
    and against the original model; the file size; and, in a fresh process, the session's peak
    RSS and the p50 latency of one sentence. The reference is the compressed model in PyTorch
    (`table` swapped into `model`; None: the original), or, when the file rewrote the ONNX graph
    `given` (`export --from`), that graph with only the table's values swapped in, run in
    onnxruntime; the untouched `given` graph is then also compared with the source model.
    The file is fed by the tokenizer.json beside it (`tokenizer_beside`) when there is one, as a
    user would run it; else by the tokenizer the table implies (the model's, or its trimmed one)."""
    path, texts = Path(path), list(texts)
    if not path.is_file():
        raise EdgeembError(f"{path}: no such ONNX file")
    checker = _checker(path)
    source = sentence_model(model)
    tokenizer_json = trimmed_tokenizer_json(source.path, table.keep) if isinstance(table, TrimmedTable) else None
    beside = tokenizer_beside(path)
    shipped = beside.read_text(encoding="utf-8") if beside.is_file() else tokenizer_json
    reference = sentence_encoder(source.path, source.sha256)
    ours = memoize(onnx_encoder(path, source, threads=threads, tokenizer_json=shipped))
    drift = embedding_drift(reference.original, ours, texts)
    given_graph = None
    if given is None:
        dense = None if table is None else table.to_dense()
        compressed = reference.encoder(dense, "encode (reference)", tokenizer_json)
        against = _compare(ours(texts), unit_rows(compressed(texts)))
    else:
        given = onnx_source(given)
        swapped = path.with_name(f"{path.name.removesuffix('.onnx')}.reference.onnx")  # a companion of a staged file
        try:
            swapped_reference(given.file, table if table is not None else source.table, swapped)
            swapped_rows = onnx_encoder(swapped, source, threads=threads, tokenizer_json=shipped)(texts)
            against = _compare(ours(texts), swapped_rows)
        finally:
            swapped.unlink(missing_ok=True)
        own = given.tokenizer.read_text(encoding="utf-8") if given.tokenizer is not None else None
        untouched = onnx_encoder(given.file, source, threads=threads, tokenizer_json=own)(texts)
        figures = _compare(untouched, unit_rows(reference.original(texts)))
        given_graph = GivenGraph(given.file, given.tokenizer, _checker(given.file), *figures)
    probe = probe_in_child([path], sentence_tokenizer(source.path, shipped)(texts), threads, rounds)
    return OnnxVerification(
        path=path,
        file_bytes=path.stat().st_size,
        checker=checker,
        texts=len(texts),
        reference=REFERENCE_PYTORCH if given is None else REFERENCE_SWAPPED,
        max_abs_diff=against[0],
        reference_mean_cosine=against[1],
        reference_min_cosine=against[2],
        mean_cosine=drift.mean_cosine,
        p01_cosine=drift.p01_cosine,
        min_cosine=drift.min_cosine,
        p50_latency_ms=probe["p50_ms"][0],
        session_rss_mb=(probe["peak_rss"] - probe["rss_before"]) / 2**20,
        threads=threads,
        given=given_graph,
    )


def _checker(path: Path) -> str:
    """ "ok", or onnx.checker's complaint about the file."""
    import onnx  # onnx: only where a file is checked

    try:
        onnx.checker.check_model(os.fspath(path), full_check=False)
        return "ok"
    except onnx.checker.ValidationError as exc:
        return " ".join(str(exc).split())


def _compare(ours: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    """(max abs difference, mean cosine, lowest cosine) of unit rows against their reference."""
    cosines = np.einsum("ij,ij->i", ours, reference)
    return float(np.abs(ours - reference).max()), float(cosines.mean()), float(cosines.min())
