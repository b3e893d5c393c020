"""GGUF export, verified in llama.cpp: the source GGUF with token_embd rewritten (`export_gguf`),
run beside the source (greedy output, decode tokens/s, peak RSS; with text, perplexity)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from edgeemb.errors import EdgeembError
from edgeemb.evaluate.data import read_text
from edgeemb.evaluate.llamacpp import greedy_agreement, measure_ggufs
from edgeemb.evaluate.table import table_quality
from edgeemb.export.gguf import export_gguf
from edgeemb.export.request import Exporter, ExportRequest
from edgeemb.ggufio import TOKEN_EMBD, dequantize_tensor, read_gguf_header
from edgeemb.outputs import staged
from edgeemb.results import (
    GGUFCheck,
    GGUFExported,
    GGUFFile,
    LlamaRun,
    Requantised,
    TableFigures,
    TableQuality,
    relocated,
)
from edgeemb.sources import SourceModel
from edgeemb.table import DenseTable, EmbeddingTable, TrimmedTable


def write_and_verify(request: ExportRequest) -> GGUFExported:
    source = request.source
    if source.format != "gguf":
        raise EdgeembError(
            f"{source.name} is a {source.format} model: GGUF export rewrites a source GGUF "
            "(make one with llama.cpp's convert_hf_to_gguf.py, then compress that file)"
        )
    with staged(request.file, request.force) as staging:  # the file replaces an earlier one only once verified
        config = request.config
        exported = export_gguf(source.path, request.table, staging, config.type, head_type=config.head_type)
        requantised = shipped_table(source, request.table, staging) if exported.rebuilt else None
        text = read_text(request.text) if request.text else None
        source_run, export_run = measure_ggufs([source.path, staging], text, request.max_tokens)
    result = GGUFExported(
        export=GGUFFile(**asdict(exported)),
        verify=GGUFCheck(
            runtime="llama.cpp (llama-cpp-python)",
            greedy_tokens_equal_to_source=greedy_agreement(source_run, export_run),
            source=LlamaRun(**asdict(source_run)),
            export=LlamaRun(**asdict(export_run)),
            text=request.text_facts(),
        ),
        requantised=requantised,
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
