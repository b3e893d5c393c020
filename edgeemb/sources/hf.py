"""Load the token embedding table of a local Hugging Face transformers or sentence-transformers
directory. Reads safetensors headers and the one embedding tensor; never unpickles (.bin files
are refused) and never loads the rest of the model."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from edgeemb.errors import EdgeembError
from edgeemb.sources.base import SourceModel
from edgeemb.table import DenseTable

# Preferred first: the names transformers gives the input embedding across common architectures.
_EMBEDDING_SUFFIXES = ("embed_tokens.weight", "word_embeddings.weight", "wte.weight", "tok_embeddings.weight", "shared.weight")
_HEAD_ARCHITECTURES = ("ForCausalLM", "LMHeadModel", "ForMaskedLM", "ForConditionalGeneration")
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def transformer_dir(path: Path) -> Path:
    """The folder holding config.json: the model itself, or a sentence-transformers Transformer module."""
    modules = path / "modules.json"
    if modules.exists():
        for module in json.loads(modules.read_text()):
            if module.get("type", "").endswith("Transformer"):
                return path / module.get("path", "")
    return path


def load_hf(path: Path, name: str | None = None) -> SourceModel:
    path = Path(path)
    model_dir = transformer_dir(path)
    config = _read_json(model_dir / "config.json")
    vocab = config.get("vocab_size")
    hidden = config.get("hidden_size") or config.get("d_model") or config.get("n_embd")
    architecture = str(config.get("model_type", "unknown"))
    if not vocab or not hidden:
        raise EdgeembError(f"{model_dir / 'config.json'}: no vocab_size/hidden_size: architecture '{architecture}' is not supported")

    headers = {file: _tensor_headers(file) for file in _weight_files(model_dir)}
    shapes = {key: (file, shape, dtype) for file, tensors in headers.items() for key, (shape, dtype) in tensors.items()}
    candidates = [key for suffix in _EMBEDDING_SUFFIXES for key in shapes if key.endswith(suffix) and shapes[key][1] == [vocab, hidden]]
    if not candidates:
        raise EdgeembError(
            f"{model_dir}: no token embedding tensor of shape ({vocab}, {hidden}): architecture '{architecture}' is not supported"
        )
    key = candidates[0]
    weights_file, _, dtype = shapes[key]
    with safe_open(os.fspath(weights_file), framework="pt") as handle:
        weight = handle.get_tensor(key).float().numpy()

    has_head = any(arch.endswith(_HEAD_ARCHITECTURES) for arch in config.get("architectures") or [])
    tied = (config.get("tie_word_embeddings", True) and not any(k.endswith("lm_head.weight") for k in shapes)) if has_head else None
    return SourceModel(
        name=name or str(path),
        path=path,
        format="sentence-transformers" if (path / "modules.json").exists() else "transformers",
        architecture=architecture,
        table=DenseTable(np.ascontiguousarray(weight)),
        tensor_name=key,
        stored_dtype=dtype,
        stored_nbytes=int(np.prod(shapes[key][1])) * _DTYPE_BYTES.get(dtype, 4),
        total_params=sum(int(np.prod(shape)) for _, shape, _ in shapes.values()),
        total_nbytes=sum(int(np.prod(shape)) * _DTYPE_BYTES.get(dt, 4) for _, shape, dt in shapes.values()),
        tied=tied,
        layers=config.get("num_hidden_layers") or config.get("n_layer"),
        weights_file=weights_file,
        tokens=_read_tokens(model_dir, path, vocab),
        tokenize=_tokenizer(model_dir, path),
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgeembError(f"{path.parent}: no config.json: not a Hugging Face model directory") from None
    except (OSError, ValueError) as exc:
        raise EdgeembError(f"{path}: unreadable JSON ({exc})") from None


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        return sorted({model_dir / file for file in _read_json(index).get("weight_map", {}).values()})
    files = sorted(model_dir.glob("*.safetensors"))
    if files:
        return files
    if any(model_dir.glob("*.bin")) or any(model_dir.glob("*.pt")):
        raise EdgeembError(f"{model_dir}: only pickled weights (.bin/.pt); edgeemb reads safetensors and never unpickles")
    raise EdgeembError(f"{model_dir}: no .safetensors weights")


def _tensor_headers(file: Path) -> dict[str, tuple[list[int], str]]:
    try:
        with safe_open(os.fspath(file), framework="pt") as handle:
            slices = {key: handle.get_slice(key) for key in handle.keys()}
            return {key: (piece.get_shape(), piece.get_dtype()) for key, piece in slices.items()}
    except (SafetensorError, OSError) as exc:
        raise EdgeembError(f"{file}: not a valid safetensors file ({exc})") from None


def _tokenizer(model_dir: Path, root: Path) -> Callable[[str], list[int]] | None:
    """text -> token ids (no special tokens) from tokenizer.json, loaded on first use."""
    file = next((folder / "tokenizer.json" for folder in (model_dir, root) if (folder / "tokenizer.json").exists()), None)
    if file is None:
        return None

    @functools.cache
    def load():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(os.fspath(file))
        # a sentence model's tokenizer.json may pad and truncate to its context (MiniLM: 128);
        # counting and streaming want every token of the text and no padding
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return tokenizer

    return lambda text: load().encode(text, add_special_tokens=False).ids


def _read_tokens(model_dir: Path, root: Path, vocab: int) -> list[str] | None:
    for folder in (model_dir, root):
        if (folder / "tokenizer.json").exists():
            from tokenizers import Tokenizer

            tokens = [""] * vocab
            for token, index in Tokenizer.from_file(os.fspath(folder / "tokenizer.json")).get_vocab().items():
                if index < vocab:
                    tokens[index] = token
            return tokens
        if (folder / "vocab.txt").exists():
            lines = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
            return (lines + [""] * vocab)[:vocab]
    return None
