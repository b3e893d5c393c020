"""A Hugging Face transformers model with its token embedding replaced by a compressed table.

    from edgeemb.export.hf import export_hf
    export_hf(source, table, "qwen-int4-hf")
    AutoModelForCausalLM.from_pretrained("qwen-int4-hf")  # the compressed model, in transformers

This is for transformers users: the folder holds the table decoded to the source's own float type
(F32, F16 or BF16), so it is as large as the original; the size win lives in the GGUF export. A
tied output head follows the table, as it does in llama.cpp; an untied head is the source's.

`model_with_table` is also the reference the GGUF export of a Hugging Face model is checked
against: transformers running the rows llama.cpp should read.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeemb import __version__
from edgeemb.errors import EdgeembError
from edgeemb.outputs import FOLDER_MANIFESTS, VERSION_KEY, check_target, staged
from edgeemb.progress import silenced_output
from edgeemb.sources import SourceModel
from edgeemb.sources.hf import transformer_dir
from edgeemb.table import EmbeddingTable, TrimmedTable

# The torch dtype a folder keeps for the source table's float type (anything else: float32).
_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
# What save_pretrained writes itself, and weights the copy must not carry over from the source.
_WRITTEN = ("config.json", "generation_config.json", "model.safetensors.index.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".gguf")


@dataclass(frozen=True)
class HfExport:
    path: Path
    bytes: int  # every file in the folder
    table: str  # the storage the decoded rows came from
    dtype: str  # the float type the folder stores the weights in


def load_model(folder: Path, causal: bool, dtype: str = "float32"):
    """A transformers model folder, as a causal LM with its head or as the bare model, in `dtype`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach for a hub
    # heavy (torch, transformers: seconds to import): only an HF export or its check loads a model
    import torch
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    try:
        with silenced_output():  # loading reports unused or missing keys from C++ and Python alike
            auto = AutoModelForCausalLM if causal else AutoModel
            return auto.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise EdgeembError(f"{folder}: transformers cannot load this model ({reason})") from None


def model_with_table(source: SourceModel, rows: np.ndarray, keep: np.ndarray | None = None, dtype: str = "float32"):
    """The transformers model of `source` (a causal LM with its head, else the bare model) in
    `dtype`, its input embedding `rows`. With `keep` (a trimmed vocabulary: `rows` are the kept
    ids' rows), an untied head keeps those rows too and the vocabulary shrinks to them."""
    import torch  # heavy: loaded by load_model already; only bound here

    model = load_model(transformer_dir(source.path), source.tied is not None, dtype)
    embedding = model.get_input_embeddings()
    weight = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)).to(embedding.weight.dtype)
    if keep is None:
        if weight.shape != embedding.weight.shape:
            raise EdgeembError(f"table shape {tuple(weight.shape)} does not match the model's embedding's")
        embedding.weight.data = weight  # a tied head shares this parameter
        return model
    head = model.get_output_embeddings()
    # the module stays (Gemma scales its lookups); only its rows change
    embedding.weight = torch.nn.Parameter(weight, requires_grad=False)
    embedding.num_embeddings = len(keep)
    if head is not None:
        kept = torch.from_numpy(np.asarray(keep, dtype=np.int64))
        own = torch.nn.Parameter(head.weight.data[kept], requires_grad=False)
        head.weight = embedding.weight if source.tied else own
        if getattr(head, "bias", None) is not None:
            head.bias = torch.nn.Parameter(head.bias.data[kept], requires_grad=False)
        head.out_features = len(keep)
    model.config.vocab_size = len(keep)
    return model


def model_outputs(model: Any, ids: list[int]) -> np.ndarray:
    """float32 logits (a causal LM) or last hidden states (a bare model) for one sequence of ids."""
    import torch  # heavy: loaded with the model already; only bound here

    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long))
    values = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
    return values[0].float().numpy()


def export_hf(source: SourceModel, table: EmbeddingTable, out: str | Path, *, force: bool = False) -> HfExport:
    """Save `source` with its input embedding replaced by `table`'s decoded rows, in the source's
    float type, beside a copy of its other files (tokenizer, licence), atomically, with an
    `edgeemb.json` saying what it holds."""
    out = Path(out)
    check_target(out, force)
    if source.format != "transformers":
        other = "--format st" if source.format == "sentence-transformers" else "--format gguf"
        raise EdgeembError(f"{source.name} is a {source.format} model, not a transformers one: export it with {other}")
    if isinstance(table, TrimmedTable):
        raise EdgeembError(
            "--format hf keeps the source's tokenizer, so it takes a table over the whole vocabulary; "
            "a trimmed one exports with --format gguf, whose tokenizer is rewritten with it"
        )
    if table.shape != source.table.shape:
        raise EdgeembError(f"table shape {table.shape} does not match {source.name}'s {source.table.shape}")
    dtype = _DTYPES.get(source.stored_dtype, "float32")
    model = model_with_table(source, table.to_dense(), dtype=dtype)
    folder = transformer_dir(source.path)
    with staged(out, force) as staging:
        model.save_pretrained(os.fspath(staging))
        for file in sorted(folder.iterdir()):
            if file.is_file() and file.name not in _WRITTEN and not file.name.endswith(_WEIGHT_SUFFIXES):
                shutil.copy2(file, staging / file.name)
        provenance = {
            VERSION_KEY: __version__,
            "source": {"name": source.name, "sha256": source.sha256},
            "table": table.describe(),
            "note": f"the table decoded to {dtype}: as large as the source; the size win is in the GGUF export",
        }
        (staging / FOLDER_MANIFESTS[1]).write_text(json.dumps(provenance, indent=2) + "\n")
    size = sum(file.stat().st_size for file in out.rglob("*") if file.is_file())
    return HfExport(out, size, table.describe(), dtype)
