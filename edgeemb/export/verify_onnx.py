"""ONNX export, verified in onnxruntime: the whole sentence-embedding model with the table in the
graph (or an existing ONNX file with its embedding Gather rewritten), checked by onnx.checker and
run against the compressed model in PyTorch and the original model."""

from __future__ import annotations

from dataclasses import asdict, replace

from edgeemb.errors import EdgeembError
from edgeemb.evaluate.data import read_texts
from edgeemb.export import onnx as onnx_export
from edgeemb.export.request import Exporter, ExportRequest, shipped_tokenizer_json
from edgeemb.outputs import check_target, owned, staged
from edgeemb.results import OnnxCheck, OnnxExported, OnnxFile, relocated


def write_and_verify(request: ExportRequest) -> OnnxExported:
    source, table, config = request.source, request.table, request.config
    if source.format != "sentence-transformers":
        raise EdgeembError(
            f"{source.name} is a {source.format} model: the ONNX export is for sentence-embedding "
            "models (GGUF models export to GGUF)"
        )
    beside = onnx_export.tokenizer_beside(request.file)
    if beside.exists() and not (request.force and owned(request.file)):  # an earlier export's goes with it
        check_target(beside, request.force)  # a tokenizer file of the user's is not replaced
    with staged(request.file, request.force) as staging:  # the file replaces an earlier one only once verified
        if request.onnx_source is not None:
            exported = onnx_export.compress_onnx(
                request.onnx_source, table, staging, quantize_rest=config.quantize_rest
            )
        else:
            exported = onnx_export.export_onnx(source, table, staging, quantize_rest=config.quantize_rest)
        # The graph takes ids, so its tokenizer ships beside it (a companion: it moves with the file),
        # and verification tokenises with that file, so a wrong one shows in its figures.
        onnx_export.tokenizer_beside(staging).write_text(shipped_tokenizer_json(source, table), encoding="utf-8")
        texts = read_texts(request.text) if request.text else onnx_export.SAMPLE_TEXTS
        verified = onnx_export.verify_onnx(staging, source, table, texts)
        if verified.checker != "ok":
            raise EdgeembError(f"{request.file}: onnx.checker rejects the export: {verified.checker}")
    exported = replace(exported, tokenizer=onnx_export.tokenizer_beside(request.file))  # where it is once in place
    paths = {"path": str(exported.path), "tokenizer": exported.tokenizer and str(exported.tokenizer)}
    result = OnnxExported(
        export=OnnxFile(**{**asdict(exported), **paths}, from_=request.onnx_source and str(request.onnx_source)),
        verify=OnnxCheck(
            runtime="onnxruntime", **{**asdict(verified), "path": str(verified.path)}, text=request.text_facts()
        ),
    )
    return relocated(result, staging, request.file)


EXPORTER = Exporter("onnx", "model.onnx", write_and_verify)
