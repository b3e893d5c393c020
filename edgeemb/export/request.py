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
    tokenizer transformers builds from it. It truncates where the sentence-transformers model does
    (all-mpnet-base-v2's own file cuts at 128 tokens, the model reads 384) and, if it pads, pads a
    batch to its longest text (a fixed length below the truncation would leave batches ragged)."""
    model = sentence_transformer(source.path)
    trimmed = tokenizer_json(source, table)
    own = tokenizer_json_file(source.path)
    if trimmed is not None:
        tokenizer = Tokenizer.from_str(trimmed)
    elif own is not None:
        tokenizer = Tokenizer.from_str(own.read_text(encoding="utf-8"))
    else:
        tokenizer = Tokenizer.from_str(model[0].tokenizer.backend_tokenizer.to_str())
        tokenizer.no_padding()  # what a call left set, not the model's
    if model.max_seq_length:
        tokenizer.enable_truncation(**{**(tokenizer.truncation or {}), "max_length": model.max_seq_length})
    if tokenizer.padding is not None:
        tokenizer.enable_padding(**{**tokenizer.padding, "length": None})
    return tokenizer.to_str()


@dataclass(frozen=True)
class Exporter:
    format: str
    file: str  # its name in OUT/
    # Writes `request.file` through `outputs.staged` (an earlier file is replaced only once the new
    # one is verified) and returns the export's and the verification's figures.
    write_and_verify: Callable[[ExportRequest], Exported]
