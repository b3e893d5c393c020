"""A sentence-transformers directory with the compressed table decoded into its word embeddings.

    from edgeemb.export.st import export_sentence_transformers
    export_sentence_transformers("minilm", table, "minilm-int4-st")
    SentenceTransformer("minilm-int4-st")  # loads offline, encodes as the compressed model does

This is for tools that only read sentence-transformers models: the directory holds the decoded
table in fp32, so it is as large as the original. The size win lives in the ONNX and GGUF exports,
which keep the compressed storage itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from edgeemb import __version__
from edgeemb.errors import EdgeembError
from edgeemb.outputs import FOLDER_MANIFESTS, VERSION_KEY, check_target, staged
from edgeemb.sources import SourceModel, open_model
from edgeemb.sources.hf import trimmed_tokenizer_json
from edgeemb.table import EmbeddingTable, TrimmedTable


@dataclass(frozen=True)
class StExport:
    path: Path
    bytes: int  # every file in the directory
    table: str  # the storage the decoded rows came from


def export_sentence_transformers(
    model: str | Path | SourceModel, table: EmbeddingTable, out: str | Path, *, force: bool = False
) -> StExport:
    """Save `model` with its word embeddings replaced by `table`'s decoded rows, atomically: the
    directory is written beside OUT and renamed into place, with an `edgeemb.json` saying what
    it holds (and that edgeemb wrote it)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach for a hub
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    out = Path(out)
    check_target(out, force)
    source = model if isinstance(model, SourceModel) else open_model(model)
    if source.format != "sentence-transformers":
        raise EdgeembError(f"{source.name} is a {source.format} model, not a sentence-transformers one")
    rows = len(table.keep) if isinstance(table, TrimmedTable) else source.table.shape[0]
    if table.shape != (rows, source.table.shape[1]):
        raise EdgeembError(f"table shape {table.shape} does not match {source.name}'s {source.table.shape}")
    transformers_logging.disable_progress_bar()
    st = SentenceTransformer(os.fspath(source.path), device="cpu", local_files_only=True)
    model = st[0].auto_model
    if isinstance(table, TrimmedTable):  # a smaller embedding, and the tokenizer rewritten for it
        model.set_input_embeddings(torch.nn.Embedding.from_pretrained(torch.from_numpy(table.to_dense()), freeze=True))
        model.config.vocab_size = rows
        st[0].processor = trimmed_tokenizer(st[0].tokenizer, trimmed_tokenizer_json(source.path, table.keep))
    else:
        model.get_input_embeddings().weight.data = torch.from_numpy(table.to_dense())

    with staged(out, force) as staging:
        st.save(os.fspath(staging))
        provenance = {
            VERSION_KEY: __version__,
            "source": {"name": source.name, "sha256": source.sha256},
            "table": table.describe(),
        }
        (staging / FOLDER_MANIFESTS[1]).write_text(json.dumps(provenance, indent=2) + "\n")
    size = sum(file.stat().st_size for file in out.rglob("*") if file.is_file())
    return StExport(out, size, table.describe())


def trimmed_tokenizer(tokenizer, tokenizer_json: str):
    """A copy of a transformers tokenizer whose ids come from `tokenizer_json` (a trimmed vocabulary)."""
    import copy

    from tokenizers import Tokenizer

    trimmed = copy.copy(tokenizer)
    trimmed._tokenizer = Tokenizer.from_str(tokenizer_json)  # transformers' fast tokenizers read ids from this backend
    return trimmed
