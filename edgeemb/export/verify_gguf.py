"""GGUF export, verified in llama.cpp: the source GGUF with token_embd rewritten (`export_gguf`),
run beside the source (greedy output, decode tokens/s, peak RSS; with text, perplexity)."""

from __future__ import annotations

from dataclasses import asdict

from edgeemb.errors import EdgeembError
from edgeemb.evaluate.data import read_text
from edgeemb.evaluate.llamacpp import greedy_agreement, measure_ggufs
from edgeemb.export.gguf import export_gguf
from edgeemb.export.request import Exporter, ExportRequest
from edgeemb.outputs import staged
from edgeemb.results import GGUFCheck, GGUFExported, GGUFFile, LlamaRun, relocated


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
    )
    return relocated(result, staging, request.file)


EXPORTER = Exporter("gguf", "model.gguf", write_and_verify)
