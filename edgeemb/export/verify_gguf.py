"""GGUF export, verified in llama.cpp: the source GGUF with token_embd rewritten (`export_gguf`),
run beside the source (greedy output, decode tokens/s, peak RSS; with text, perplexity), and
held to `edgeemb.export.tolerance`'s limit on its logits against the same file with the expected
rows in F32 (`edgeemb.export.gguf_check`): a file whose token_embd is not the table fails.

A Hugging Face causal LM is converted to GGUF first by llama.cpp's own converter, that file is
the source rewritten and run beside the export, and the export must run as transformers runs the
same table (`edgeemb.export.convert`).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from edgeemb.evaluate.data import read_text
from edgeemb.evaluate.llamacpp import greedy_agreement, measure_ggufs
from edgeemb.evaluate.table import table_quality
from edgeemb.export.convert import converted_gguf, transformers_agreement
from edgeemb.export.gguf import export_gguf
from edgeemb.export.gguf_check import expected_rows, table_logits
from edgeemb.export.request import Exporter, ExportRequest
from edgeemb.export.tolerance import held, limits
from edgeemb.ggufio import TOKEN_EMBD, dequantize_tensor, read_gguf_header
from edgeemb.outputs import check_target, staged
from edgeemb.results import (
    GGUFCheck,
    GGUFExported,
    GGUFFile,
    LlamaRun,
    Requantised,
    TableFigures,
    TableLogitsCheck,
    TableQuality,
    relocated,
)
from edgeemb.sources import SourceModel
from edgeemb.table import DenseTable, EmbeddingTable, TrimmedTable


def write_and_verify(request: ExportRequest) -> GGUFExported:
    source = request.source
    check_target(request.file, request.force)  # before a conversion that may take minutes
    # a bad --tolerance fails before the export; a converted model is also held to transformers
    bounds = limits("gguf", "gguf" if source.format == "gguf" else "gguf-hf", request.tolerances)
    converted = None if source.format == "gguf" else converted_gguf(source)  # refuses what it cannot convert
    base = source.path if converted is None else converted.path
    check = None
    with staged(request.file, request.force) as staging:  # the file replaces an earlier one only once verified
        config = request.config
        exported = export_gguf(base, request.table, staging, config.type, head_type=config.head_type)
        requantised = shipped_table(source, request.table, staging) if exported.rebuilt else None
        if request.verify:
            text = read_text(request.text) if request.text else None
            source_run, export_run = measure_ggufs([base, staging], text, request.max_tokens)
            expected = expected_rows(request.table, exported.tensor_type, exported.rebuilt)
            logits = table_logits(staging, expected)
            held("gguf", request.file, {"mean_kl": logits.mean_kl, "top1_agreement": logits.top1_agreement}, bounds)
            agreement = None
            if converted is not None:  # the file must run as transformers runs the same rows
                agreement = transformers_agreement(source, request.table, expected, staging, export_run)
                held("gguf", request.file, {"greedy_tokens_equal_to_transformers": agreement}, bounds)
            check = GGUFCheck(
                runtime="llama.cpp (llama-cpp-python)",
                greedy_tokens_equal_to_source=greedy_agreement(source_run, export_run),
                source=LlamaRun(**asdict(source_run)),
                export=LlamaRun(**asdict(export_run)),
                text=request.text_facts(),
                greedy_tokens_equal_to_transformers=agreement,
                table=TableLogitsCheck(**asdict(logits)),
                tolerances=bounds,
            )
    notes = exported.notes if converted is None else [converted.note, *exported.notes]
    result = GGUFExported(
        export=GGUFFile(**{**asdict(exported), "notes": notes}), verify=check, requantised=requantised
    )
    return relocated(result, staging, request.file)


def shipped_table(source: SourceModel, table: EmbeddingTable, file: Path) -> Requantised:
    """The recipe's table and the token_embd `file` ships (read back from it), each measured
    against the source's original table: what a re-quantised export reports beside the recipe."""
    original = source.table.weight[table.keep] if isinstance(table, TrimmedTable) else source.table.weight
    info = read_gguf_header(file).tensor(TOKEN_EMBD)
    shipped = DenseTable(dequantize_tensor(file, info, f"read back {TOKEN_EMBD} ({info.type_name})"))

    def figures(storage: str, nbytes: int, rows: EmbeddingTable) -> TableFigures:
        return TableFigures(
            storage=storage,
            bytes=nbytes,
            bits_per_param=8 * nbytes / original.size,
            ratio_vs_source=source.stored_nbytes / nbytes,
            quality=TableQuality(**asdict(table_quality(original, rows))),
        )

    return Requantised(
        recipe=figures(table.describe(), table.nbytes, table), shipped=figures(info.type_name, info.nbytes, shipped)
    )


EXPORTER = Exporter("gguf", "model.gguf", write_and_verify)
