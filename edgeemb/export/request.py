"""What an exporter is given, and what it is: the table with its source model in memory, and a
function that writes the file and verifies it in the runtime it is for (`edgeemb.export.exporters`
holds one per format)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeemb.recipe import ExportConfig
from edgeemb.results import DataFile, Exported
from edgeemb.sources import SourceModel
from edgeemb.sources.hf import trimmed_tokenizer_json
from edgeemb.table import EmbeddingTable, TrimmedTable


@dataclass(frozen=True)
class ExportRequest:
    source: SourceModel
    table: EmbeddingTable
    file: Path
    config: ExportConfig
    force: bool = False
    text: Path | None = None  # gguf: text for perplexity; onnx, st: one sentence per line for the checks
    max_tokens: int = 8192  # gguf: tokens of `text` to score
    onnx_source: Path | None = None  # onnx: rewrite this ONNX file's embedding instead of exporting the model

    def text_facts(self) -> DataFile | None:
        return DataFile.of(self.text) if self.text else None


def tokenizer_json(source: SourceModel, table: EmbeddingTable) -> str | None:
    """The tokenizer.json of a trimmed table's vocabulary (None for an untrimmed table)."""
    return trimmed_tokenizer_json(source.path, table.keep) if isinstance(table, TrimmedTable) else None


@dataclass(frozen=True)
class Exporter:
    format: str
    file: str  # its name in OUT/
    # Writes `request.file` through `outputs.staged` (an earlier file is replaced only once the new
    # one is verified) and returns the export's and the verification's figures.
    write_and_verify: Callable[[ExportRequest], Exported]
