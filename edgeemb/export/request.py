"""What an exporter is given, and what it is: the table with its source model in memory, and a
function that writes the file and verifies it in the runtime it is for (`edgeemb.export.exporters`
holds one per format)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer

from edgeemb.evaluate.onnxruntime import sentence_transformer
from edgeemb.recipe import ExportConfig
from edgeemb.results import DataFile, Exported
from edgeemb.sources import SourceModel
from edgeemb.sources.hf import tokenizer_json_file, trimmed_tokenizer_json
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
    onnx_source: Path | None = None  # onnx: rewrite this ONNX file's (or optimum folder's) embedding instead
    verify: bool = True  # False (`--no-verify`): write the file, run no check in its runtime
    tolerances: Mapping[str, float] = field(default_factory=dict)  # `--tolerance` limits over the defaults

    def text_facts(self) -> DataFile | None:
        return DataFile.of(self.text) if self.text else None


def tokenizer_json(source: SourceModel, table: EmbeddingTable) -> str | None:
    """The tokenizer.json of a trimmed table's vocabulary (None for an untrimmed table)."""
    return trimmed_tokenizer_json(source.path, table.keep) if isinstance(table, TrimmedTable) else None


def shipped_tokenizer_json(source: SourceModel, table: EmbeddingTable) -> str:
    """The tokenizer.json that goes beside an exported graph, whose ids it feeds: a trimmed table's
    rewritten one, else the model's own file, else (a model with only a vocabulary file) the fast
    tokenizer transformers builds from it, without the truncation and padding a call leaves set."""
    trimmed = tokenizer_json(source, table)
    if trimmed is not None:
        return trimmed
    own = tokenizer_json_file(source.path)
    if own is not None:
        return own.read_text(encoding="utf-8")
    backend = Tokenizer.from_str(sentence_transformer(source.path)[0].tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend.to_str()


@dataclass(frozen=True)
class Exporter:
    format: str
    file: str  # its name in OUT/
    # Writes `request.file` through `outputs.staged` (an earlier file is replaced only once the new
    # one is verified) and returns the export's and the verification's figures.
    write_and_verify: Callable[[ExportRequest], Exported]
