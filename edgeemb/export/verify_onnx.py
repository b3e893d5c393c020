"""ONNX export, verified in onnxruntime: the whole sentence-embedding model with the table in the
graph (or an ONNX file or optimum folder exported elsewhere with its embedding Gather rewritten),
checked by onnx.checker and held to `edgeemb.export.tolerance`'s limits against the compressed
model's reference: the compressed model in PyTorch, or with `--from` the given graph with only the
table's values swapped in. A given graph that differs from the source model is a warning (its
cosine to the source, measured untouched); a rewrite that departs from it fails the export."""

from __future__ import annotations

from dataclasses import asdict, replace

from edgeemb.errors import EdgeembError
from edgeemb.evaluate.data import read_texts
from edgeemb.export import onnx as onnx_export
from edgeemb.export.request import Exporter, ExportRequest, shipped_tokenizer_json
from edgeemb.export.tolerance import held, limits
from edgeemb.outputs import check_target, owned, staged
from edgeemb.results import GivenGraphCheck, OnnxCheck, OnnxExported, OnnxFile, relocated
from edgeemb.table import TrimmedTable


def write_and_verify(request: ExportRequest) -> OnnxExported:
    source, table, config = request.source, request.table, request.config
    if source.format != "sentence-transformers":
        raise EdgeembError(
            f"{source.name} is a {source.format} model: the ONNX export is for sentence-embedding "
            "models (GGUF models export to GGUF)"
        )
    given = onnx_export.onnx_source(request.onnx_source) if request.onnx_source is not None else None
    bounds = limits("onnx", "onnx-int8-rest" if config.quantize_rest else "onnx", request.tolerances)
    beside = onnx_export.tokenizer_beside(request.file)
    if beside.exists() and not (request.force and owned(request.file)):  # an earlier export's goes with it
        check_target(beside, request.force)  # a tokenizer file of the user's is not replaced
    check = None
    with staged(request.file, request.force) as staging:  # the file replaces an earlier one only once verified
        if given is not None:
            exported = onnx_export.compress_onnx(given, table, staging, quantize_rest=config.quantize_rest)
        else:
            exported = onnx_export.export_onnx(source, table, staging, quantize_rest=config.quantize_rest)
        # The graph takes ids, so its tokenizer ships beside it (a companion: it moves with the file),
        # and verification tokenises with that file, so a wrong one shows in its figures. An optimum
        # folder's own tokenizer is the one its graph was exported with (a trimmed table needs its own).
        own = given.tokenizer if given is not None and not isinstance(table, TrimmedTable) else None
        tokenizer = own.read_text(encoding="utf-8") if own is not None else shipped_tokenizer_json(source, table)
        onnx_export.tokenizer_beside(staging).write_text(tokenizer, encoding="utf-8")
        if request.verify:
            try:
                check = _verify(request, staging, given, bounds)
            except EdgeembError as exc:  # name the file as the user asked for it, not its temporary
                raise EdgeembError(str(exc).replace(str(staging), str(request.file))) from None
    exported = replace(exported, tokenizer=onnx_export.tokenizer_beside(request.file))  # where it is once in place
    paths = {"path": str(exported.path), "tokenizer": exported.tokenizer and str(exported.tokenizer)}
    result = OnnxExported(
        export=OnnxFile(**{**asdict(exported), **paths}, from_=given and str(given.file)),
        verify=check,
    )
    return relocated(result, staging, request.file)


def _verify(request: ExportRequest, staging, given: onnx_export.OnnxSource | None, bounds: dict) -> OnnxCheck:
    texts = read_texts(request.text) if request.text else onnx_export.SAMPLE_TEXTS
    verified = onnx_export.verify_onnx(staging, request.source, request.table, texts, given=given)
    # a complaint the untouched graph gets as well is the given graph's, not the rewrite's
    shared = verified.checker != "ok" and verified.given is not None and verified.given.checker == verified.checker
    if verified.checker != "ok" and not shared:
        raise EdgeembError(f"{request.file}: onnx.checker rejects the export: {verified.checker}")
    figures = {
        "max_abs_diff": verified.max_abs_diff,
        "reference_min_cosine": verified.reference_min_cosine,
        "reference_mean_cosine": verified.reference_mean_cosine,
        "given_min_cosine": verified.given.min_cosine if verified.given is not None else None,
    }
    warnings = [
        f"the graph given with --from differs from the source model {request.source.name}: {warning}; "
        "the rewrite is checked against that graph, and the cosines to the original include the difference"
        for warning in held("onnx", request.file, figures, bounds)
    ]
    if shared and verified.given is not None:
        warnings.append(
            f"onnx.checker rejects the graph given with --from as well: {verified.given.checker} "
            "(onnxruntime runs it, and the rewrite checked against it passed)"
        )
    facts = {key: value for key, value in asdict(verified).items() if key != "given"}
    given_check = None
    if verified.given is not None:
        tokenizer = verified.given.tokenizer
        given_check = GivenGraphCheck(
            **{**asdict(verified.given), "path": str(verified.given.path), "tokenizer": tokenizer and str(tokenizer)}
        )
    return OnnxCheck(
        runtime="onnxruntime",
        **{**facts, "path": str(verified.path)},
        text=request.text_facts(),
        given=given_check,
        tolerances={name: limit for name, limit in bounds.items() if figures.get(name) is not None},
        warnings=warnings,
    )


EXPORTER = Exporter("onnx", "model.onnx", write_and_verify)
