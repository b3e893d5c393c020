"""A model from a GGUF file: its token embedding table dequantised to float32, with llama.cpp's
own tokenizer and, for a tied head, llama.cpp's measure of the head's inputs. The bytes are read
by `edgeemb.ggufio`; llama.cpp runs through `edgeemb.evaluate.llamacpp`."""

from __future__ import annotations

import functools
import importlib.util
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

from edgeemb.errors import EdgeembError
from edgeemb.evaluate.llamacpp import head_input_power, llama_vocabulary
from edgeemb.ggufio import (
    OUTPUT,
    TOKEN_EMBD,
    TOKENS_KEY,
    GGUFHeader,
    dequantize_tensor,
    read_gguf_header,
    special_token_ids,
    tensor_bytes,  # noqa: F401  re-exported for steps/peers.py and offload/store.py until they import edgeemb.ggufio
    trimmed_vocab_metadata,
    write_vocab_gguf,
)
from edgeemb.sources.base import SourceModel
from edgeemb.table import DenseTable
from edgeemb.vocab import Vocabulary


def load_gguf(path: Path, name: str | None = None) -> SourceModel:
    """Load the token embedding table of a GGUF model, dequantised to float32."""
    path = Path(path)
    header = read_gguf_header(path)
    embd = header.tensor(TOKEN_EMBD)
    if embd is None:
        raise EdgeembError(f"{path}: no {TOKEN_EMBD} tensor in this GGUF file")
    tokens = header.metadata.get(TOKENS_KEY)
    return SourceModel(
        name=name if name is not None else str(path),
        path=path,
        format="gguf",
        architecture=str(header.metadata.get("general.architecture", "unknown")),
        table=DenseTable(dequantize_tensor(path, embd, f"dequantize {TOKEN_EMBD} ({embd.type_name})")),
        tensor_name=TOKEN_EMBD,
        stored_dtype=embd.type_name,
        stored_nbytes=embd.nbytes,
        total_params=sum(t.n_elements for t in header.tensors),
        total_nbytes=sum(t.nbytes for t in header.tensors),
        # llama.cpp falls back to token_embd for the output head when output.weight is absent.
        tied=header.tensor(OUTPUT) is None,
        layers=_block_count(header),
        weights_file=path,
        tokens=tokens if isinstance(tokens, list) else None,
        tokenize=_llama_tokenizer(path),
        head_input_power=_head_input_power(path) if header.tensor(OUTPUT) is None else None,
        vocabulary=functools.cache(lambda: gguf_vocabulary(path)),
    )


def _block_count(header: GGUFHeader) -> int | None:
    count = header.metadata.get(f"{header.metadata.get('general.architecture')}.block_count")
    return int(count) if count is not None else None


def _llama_tokenizer(path: Path) -> Callable[[str], list[int]] | None:
    """text -> ids with llama.cpp's own tokenizer for this file (vocabulary only, loaded on first
    use); None when llama-cpp-python is not installed."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    load = functools.cache(lambda: llama_vocabulary(path))
    return lambda text: load().tokenize(text.encode("utf-8"), add_bos=False, special=False)


_GGUF_MODELS: dict[str, Literal["spm", "bpe"]] = {"llama": "spm", "gpt2": "bpe"}


def gguf_vocabulary(path: Path) -> Vocabulary:
    """The GGUF file's vocabulary (SentencePiece-style `llama` or byte-level BPE `gpt2`), with a
    retokenizer that loads a vocabulary-only GGUF rewritten for the kept ids in llama.cpp."""
    path = Path(path)
    header = read_gguf_header(path)
    meta = header.metadata
    model = meta.get("tokenizer.ggml.model")
    kind = _GGUF_MODELS.get(model) if isinstance(model, str) else None
    if kind is None:
        raise EdgeembError(f"{path}: trim_vocab: tokenizer.ggml.model {model!r} is not supported (llama, gpt2)")
    tokens = meta[TOKENS_KEY]
    types = np.asarray(meta.get("tokenizer.ggml.token_type", np.ones(len(tokens))), np.uint8)
    special = {
        key.removeprefix("tokenizer.ggml.").removesuffix("_token_id"): index
        for key, index in special_token_ids(meta).items()
        if 0 <= index < len(tokens)
    }
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])] if kind == "bpe" else None
    tokenize = _llama_tokenizer(path)
    if tokenize is None:
        raise EdgeembError("trim_vocab on a GGUF model needs llama-cpp-python (llama.cpp's tokenizer)")
    return Vocabulary(
        kind,
        tokens,
        types,
        special,
        tokenize,
        functools.partial(_trimmed_tokenizer, path, header),
        scores=np.asarray(meta["tokenizer.ggml.scores"], np.float32) if "tokenizer.ggml.scores" in meta else None,
        merges=merges,
        byte_level=kind == "bpe",
    )


def _trimmed_tokenizer(path: Path, header: GGUFHeader, keep: np.ndarray) -> Callable[[str], list[int]]:
    """llama.cpp's tokenizer of the trimmed vocabulary, from a vocabulary-only GGUF written aside."""
    with tempfile.TemporaryDirectory(prefix="edgeemb-vocab-") as folder:
        file = Path(folder) / "vocab.gguf"
        write_vocab_gguf(path, header, file, trimmed_vocab_metadata(header, keep))
        vocab = llama_vocabulary(file)  # read whole at load: the file may go
    return lambda text: vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)


def _head_input_power(path: Path) -> Callable[[str, int], np.ndarray] | None:
    """llama.cpp's measure of the tied head's inputs; None without llama-cpp-python."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    return functools.partial(head_input_power, path)
