"""Load the token embedding table of a local Hugging Face transformers or sentence-transformers
directory. Reads safetensors headers and the one embedding tensor; never unpickles (a folder
whose weights, or any of whose modules' weights, are only .bin/.pt pickles is refused before
anything loads them) and never loads the rest of the model."""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from safetensors import SafetensorError, safe_open
from tokenizers import Tokenizer

from edgeemb.errors import EdgeembError, regular_file
from edgeemb.sources.base import SourceModel
from edgeemb.table import DenseTable
from edgeemb.vocab import TokenType, Vocabulary, merge_survives

# Preferred first: the names transformers gives the input embedding across common architectures.
_EMBEDDING_SUFFIXES = (
    "embed_tokens.weight",
    "word_embeddings.weight",
    "wte.weight",
    "tok_embeddings.weight",
    "shared.weight",
)
_HEAD_ARCHITECTURES = ("ForCausalLM", "LMHeadModel", "ForMaskedLM", "ForConditionalGeneration")
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
# Files torch.load reads (pickles). transformers and sentence-transformers fall back to them when
# a folder has no model.safetensors, so such a folder is refused before either library sees it.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
# The JSON objects sentence-transformers and transformers read when they load a model's folders.
_LOADED_CONFIGS = (
    "config.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def _modules(path: Path) -> list[dict[str, str]]:
    """The entries of a sentence-transformers folder's modules.json ([] without one), each a module
    type and a folder inside `path`."""
    file = path / "modules.json"
    if not file.exists():
        return []
    modules = _read_json(file, list)
    for number, module in enumerate(modules):
        if not (isinstance(module, dict) and all(isinstance(module.get(key, ""), str) for key in ("type", "path"))):
            raise EdgeembError(f"{file}: module {number} is not a JSON object with a string type and path")
        inside = (path / module.get("path", "")).resolve()
        if inside != path.resolve() and path.resolve() not in inside.parents:
            raise EdgeembError(f"{file}: module path {module['path']!r} leaves the model folder")
    return modules


def transformer_dir(path: Path) -> Path:
    """The folder holding config.json: the model itself, or a sentence-transformers Transformer module."""
    for module in _modules(path):
        if module.get("type", "").endswith("Transformer"):
            return path / module.get("path", "")
    return path


def _check_folders(path: Path) -> None:
    """Before any library loads the model, refuse it in one line if the folder or a module's
    folder holds its weights only as pickles, or a config the loaders read that is not a JSON
    object."""
    folders = dict.fromkeys([path, *(path / module.get("path", "") for module in _modules(path))])
    for folder in folders:
        pickles = sorted(file.name for file in folder.glob("*") if file.suffix in _PICKLE_SUFFIXES)
        if pickles and not any((folder / name).exists() for name in _SAFE_WEIGHTS):
            raise EdgeembError(
                f"{folder}: weights only as pickles ({', '.join(pickles)}), no model.safetensors; "
                "edgeemb never unpickles: save the model with safetensors"
            )
        for name in _LOADED_CONFIGS:
            if (folder / name).exists():
                _read_json(folder / name)


def load_hf(path: Path, name: str | None = None) -> SourceModel:
    path = Path(path)
    _check_folders(path)
    model_dir = transformer_dir(path)
    if not (model_dir / "config.json").exists():
        raise EdgeembError(f"{model_dir}: no config.json: not a Hugging Face model directory")
    config = _read_json(model_dir / "config.json")
    vocab = config.get("vocab_size")
    hidden = config.get("hidden_size") or config.get("d_model") or config.get("n_embd")
    architecture = str(config.get("model_type", "unknown"))
    if not _positive_int(vocab) or not _positive_int(hidden):
        raise EdgeembError(
            f"{model_dir / 'config.json'}: no vocab_size/hidden_size: architecture '{architecture}' is not supported"
        )

    headers = {file: _tensor_headers(file) for file in _weight_files(model_dir)}
    shapes = {key: (file, shape, dtype) for file, tensors in headers.items() for key, (shape, dtype) in tensors.items()}
    # every tensor the model runs, its other modules' included (kept per file: two Dense modules
    # both name theirs linear.weight)
    modules = [_tensor_headers(file) for file in _module_weight_files(path, model_dir)]
    every = [tensor for tensors in [*headers.values(), *modules] for tensor in tensors.values()]
    candidates = [
        key
        for suffix in _EMBEDDING_SUFFIXES
        for key in shapes
        if key.endswith(suffix) and shapes[key][1] == [vocab, hidden]
    ]
    if not candidates:
        raise EdgeembError(
            f"{model_dir}: no token embedding tensor of shape ({vocab}, {hidden}): "
            f"architecture '{architecture}' is not supported"
        )
    key = candidates[0]
    weights_file, _, dtype = shapes[key]
    with safe_open(os.fspath(weights_file), framework="pt") as handle:
        weight = handle.get_tensor(key).float().numpy()

    architectures = config.get("architectures")
    sentence_model = (path / "modules.json").exists()
    # a sentence-transformers Transformer module loads the base model (AutoModel): whatever
    # architectures names (all-mpnet-base-v2: MPNetForMaskedLM), no output head runs
    has_head = (
        not sentence_model
        and isinstance(architectures, list)
        and any(isinstance(arch, str) and arch.endswith(_HEAD_ARCHITECTURES) for arch in architectures)
    )
    tied = None
    if has_head:
        tied = config.get("tie_word_embeddings", True) and not any(k.endswith("lm_head.weight") for k in shapes)
    return SourceModel(
        name=name or str(path),
        path=path,
        format="sentence-transformers" if sentence_model else "transformers",
        architecture=architecture,
        table=DenseTable(np.ascontiguousarray(weight)),
        tensor_name=key,
        stored_dtype=dtype,
        stored_nbytes=int(np.prod(shapes[key][1])) * _DTYPE_BYTES.get(dtype, 4),
        total_params=sum(int(np.prod(shape)) for shape, _ in every),
        total_nbytes=sum(int(np.prod(shape)) * _DTYPE_BYTES.get(dt, 4) for shape, dt in every),
        tied=tied,
        layers=config.get("num_hidden_layers") or config.get("n_layer"),
        weights_file=weights_file,
        tokens=_read_tokens(model_dir, path, vocab),
        tokenize=_tokenizer(model_dir, path),
        vocabulary=_vocabulary(model_dir, path, vocab),
    )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


_JSON_KINDS = {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean"}


def _read_json(path: Path, kind: type = dict) -> Any:
    """A JSON file of the model folder, which must hold a `kind` (an object, or a list)."""
    try:
        data = json.loads(regular_file(path, path.name).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise EdgeembError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(data, kind):
        found = _JSON_KINDS.get(type(data), "null")
        raise EdgeembError(f"{path}: holds a JSON {found}, not a JSON {_JSON_KINDS[kind]}")
    return data


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(file, str) for file in weight_map.values()):
            raise EdgeembError(f"{index}: no weight_map object naming each tensor's file")
        return sorted({model_dir / file for file in weight_map.values()})
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise EdgeembError(f"{model_dir}: no .safetensors weights")
    return files


def _module_weight_files(path: Path, model_dir: Path) -> list[Path]:
    """The safetensors files of a sentence-transformers model's modules besides its Transformer
    (Dense projections, ...); a module without weights (Pooling, Normalize) has none."""
    folders = dict.fromkeys((path / module.get("path", "")).resolve() for module in _modules(path))
    folders.pop(model_dir.resolve(), None)
    return [
        file
        for folder in folders
        if any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").exists()
        for file in _weight_files(folder)
    ]


def _tensor_headers(file: Path) -> dict[str, tuple[list[int], str]]:
    regular_file(file, "safetensors file")
    try:
        with safe_open(os.fspath(file), framework="pt") as handle:
            slices = {key: handle.get_slice(key) for key in handle.keys()}
            return {key: (piece.get_shape(), piece.get_dtype()) for key, piece in slices.items()}
    except (SafetensorError, OSError) as exc:
        raise EdgeembError(f"{file}: not a valid safetensors file ({exc})") from None


def _tokenizer(model_dir: Path, root: Path) -> Callable[[str], list[int]] | None:
    """text -> token ids (no special tokens) from tokenizer.json, loaded on first use."""
    file = _tokenizer_file(model_dir, root)
    if file is None:
        return None
    load = functools.cache(lambda: _read_tokenizer(file))
    return lambda text: load().encode(text, add_special_tokens=False).ids


def _tokenizer_file(model_dir: Path, root: Path) -> Path | None:
    files = (folder / "tokenizer.json" for folder in (model_dir, root))
    return next((file for file in files if file.exists()), None)


def _read_tokenizer(file: Path) -> Tokenizer:
    """The model's tokenizer.json, or one line naming it when the tokenizers library refuses it."""
    try:
        text = regular_file(file, "tokenizer.json").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeembError(f"{file}: unreadable ({exc})") from None
    try:
        return _load_tokenizer(text)
    except Exception as exc:  # noqa: BLE001  the tokenizers library raises a bare Exception for a malformed file
        reason = " ".join(str(exc).split())
        raise EdgeembError(f"{file}: not a tokenizer.json the tokenizers library reads ({reason})") from None


def _vocabulary(model_dir: Path, root: Path, size: int) -> Callable[[], Vocabulary] | None:
    """The tokenizer.json's vocabulary, read on first use (None without a tokenizer.json)."""
    file = _tokenizer_file(model_dir, root)
    return None if file is None else functools.cache(lambda: tokenizer_vocabulary(_read_json(file), size))


_MODELS: dict[str, Literal["wordpiece", "bpe", "unigram"]] = {
    "WordPiece": "wordpiece",
    "BPE": "bpe",
    "Unigram": "unigram",
}


def tokenizer_vocabulary(data: dict, size: int | None = None) -> Vocabulary:
    """A `Vocabulary` of a tokenizer.json (WordPiece, BPE or Unigram) over `size` ids (the
    table's rows; default: the tokenizer's), with a retokenizer rewriting the JSON for kept ids."""
    model = data.get("model", {})
    kind = _MODELS.get(model.get("type"))
    if kind is None:
        raise EdgeembError(
            f"trim_vocab: tokenizer type {model.get('type')!r} is not supported (WordPiece, BPE, Unigram)"
        )
    if kind == "unigram":
        pieces = dict(enumerate(piece for piece, _ in model["vocab"]))
    else:
        pieces = {i: t for t, i in model["vocab"].items()}
    added = {a["id"]: a for a in data.get("added_tokens", [])}
    size = max(size or 0, max([*pieces, *added], default=-1) + 1)
    tokens = [pieces.get(i, "") for i in range(size)]
    # ids no piece has (a gap, or rows past the tokenizer) are never produced: unused
    types = np.array([TokenType.NORMAL if i in pieces else TokenType.UNUSED for i in range(size)], np.uint8)
    if model.get("byte_fallback"):
        types[[i for i, t in enumerate(tokens) if re.fullmatch(r"<0x[0-9A-F]{2}>", t)]] = TokenType.BYTE
    special = {}
    for added in data.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
        if added.get("special"):
            special[added["content"]] = added["id"]
    unk = model.get("unk_id") if kind == "unigram" else model["vocab"].get(model.get("unk_token"))
    if unk is not None:
        types[unk] = TokenType.UNKNOWN
        special["unk"] = unk
    tokenizer = _load_tokenizer(json.dumps(data))
    return Vocabulary(
        kind,
        tokens,
        types,
        special,
        tokenize=_encoder(tokenizer),
        retokenizer=lambda keep: _encoder(_load_tokenizer(json.dumps(trim_tokenizer_json(data, keep)))),
        merges=[_merge_pair(m) for m in model.get("merges", [])] if kind == "bpe" else None,
        subword_prefix=model.get("continuing_subword_prefix") or "",
        byte_level="ByteLevel" in json.dumps(data.get("pre_tokenizer")),
    )


def tokenizer_json_file(path: Path) -> Path | None:
    """The model's own tokenizer.json (in its transformer folder or at its root), if it has one."""
    return _tokenizer_file(transformer_dir(Path(path)), Path(path))


def trimmed_tokenizer_json(path: Path, keep: np.ndarray) -> str:
    """The model's tokenizer.json rewritten for the kept ids, as text."""
    file = tokenizer_json_file(path)
    if file is None:
        raise EdgeembError(f"{path}: no tokenizer.json to rewrite for a trimmed vocabulary")
    return json.dumps(trim_tokenizer_json(_read_json(file), keep), ensure_ascii=False)


def trim_tokenizer_json(data: dict, keep: np.ndarray) -> dict:
    """tokenizer.json for the kept ids (ascending; new id = position in `keep`): the vocabulary,
    BPE merges whose parts and result survive, and every special id renumbered."""
    data = copy.deepcopy(data)
    model = data["model"]
    kept = [int(i) for i in keep]
    new_id = {old: new for new, old in enumerate(kept)}
    if model["type"] == "Unigram":
        model["vocab"] = [model["vocab"][old] for old in kept if old < len(model["vocab"])]
        if model.get("unk_id") is not None:
            model["unk_id"] = new_id[model["unk_id"]]
    else:
        by_id = {index: piece for piece, index in model["vocab"].items()}
        model["vocab"] = {by_id[old]: new for new, old in enumerate(kept) if old in by_id}
        if model["type"] == "BPE":
            model["merges"] = [m for m in model["merges"] if merge_survives(*_merge_pair(m), model["vocab"])]
    for added in data.get("added_tokens", []):
        added["id"] = new_id[added["id"]]
    _renumber_post_processor(data.get("post_processor"), new_id)
    if data.get("padding"):
        data["padding"]["pad_id"] = new_id[data["padding"]["pad_id"]]
    return data


def _renumber_post_processor(processor: dict | None, new_id: dict[int, int]) -> None:
    if not processor:
        return
    if processor["type"] == "TemplateProcessing":
        for special in processor["special_tokens"].values():
            special["ids"] = [new_id[i] for i in special["ids"]]
    elif processor["type"] in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            processor[key] = [processor[key][0], new_id[processor[key][1]]]
    elif processor["type"] == "Sequence":
        for inner in processor["processors"]:
            _renumber_post_processor(inner, new_id)


def _merge_pair(merge: list | str) -> tuple[str, str]:
    """A BPE merge: [a, b] in current tokenizer.json files, "a b" in older ones."""
    return tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ", 1))  # type: ignore[return-value]


def _load_tokenizer(text: str):
    tokenizer = Tokenizer.from_str(text)
    # a sentence model's tokenizer.json may pad and truncate to its context (MiniLM: 128);
    # counting and streaming want every token of the text and no padding
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def _encoder(tokenizer) -> Callable[[str], list[int]]:
    """text -> ids, no special tokens added."""
    return lambda text: tokenizer.encode(text, add_special_tokens=False).ids


def _read_tokens(model_dir: Path, root: Path, vocab: int) -> list[str] | None:
    """Token text by id (read now, so a malformed tokenizer.json is refused when the model opens)."""
    for folder in (model_dir, root):
        if (folder / "tokenizer.json").exists():
            tokens = [""] * vocab
            for token, index in _read_tokenizer(folder / "tokenizer.json").get_vocab().items():
                if index < vocab:
                    tokens[index] = token
            return tokens
        if (folder / "vocab.txt").exists():
            try:
                lines = regular_file(folder / "vocab.txt", "vocab.txt").read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise EdgeembError(f"{folder / 'vocab.txt'}: unreadable ({exc})") from None
            return (lines + [""] * vocab)[:vocab]
    return None
