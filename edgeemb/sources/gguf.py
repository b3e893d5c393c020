"""Read GGUF model files: a fast header parser and a loader for the token embedding table.

`gguf.GGUFReader` builds Python objects for every field element (25 s for Gemma 3's 262,144
tokens), so the header is parsed here directly over an mmap: numeric arrays in one
`np.frombuffer`, string arrays in one tight loop. Tensor data is never read whole: callers map
just the bytes of the tensor they need.

Layout (GGUF v2/v3, little-endian): magic "GGUF", version u32, tensor count u64, KV count u64;
the KV pairs (key string, value type u32, value); the tensor infos (name, n_dims u32,
dims u64[n_dims] innermost first, type u32, offset u64 relative to the data section); then the
data section, aligned to `general.alignment`. A string is a u64 length and its bytes; an array
is an element type u32, a count u64 and the elements.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize

from edgeemb.errors import EdgeembError
from edgeemb.progress import silenced_output, track
from edgeemb.sources.base import SourceModel
from edgeemb.table import DenseTable
from edgeemb.vocab import Vocabulary, merge_survives

TOKEN_EMBD = "token_embd.weight"
OUTPUT = "output.weight"
TOKENS_KEY = "tokenizer.ggml.tokens"

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_BIG_ENDIAN_VERSIONS = {v << 24 for v in _VERSIONS}  # what a big-endian file's version reads as
_DEFAULT_ALIGNMENT = 32
_DEQUANT_ROWS = 16384  # rows dequantised at a time: bounds the temporaries, paces progress

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
SCALARS: dict[int, struct.Struct] = {
    GGUFValueType.UINT8: struct.Struct("<B"),
    GGUFValueType.INT8: struct.Struct("<b"),
    GGUFValueType.UINT16: struct.Struct("<H"),
    GGUFValueType.INT16: struct.Struct("<h"),
    GGUFValueType.UINT32: _U32,
    GGUFValueType.INT32: struct.Struct("<i"),
    GGUFValueType.FLOAT32: struct.Struct("<f"),
    GGUFValueType.BOOL: struct.Struct("<?"),
    GGUFValueType.UINT64: _U64,
    GGUFValueType.INT64: struct.Struct("<q"),
    GGUFValueType.FLOAT64: struct.Struct("<d"),
}
ARRAY_DTYPES: dict[int, np.dtype] = {
    GGUFValueType.UINT8: np.dtype("<u1"),
    GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"),
    GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"),
    GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"),
    GGUFValueType.BOOL: np.dtype("<u1"),  # one byte each; turned into bool after the read
    GGUFValueType.UINT64: np.dtype("<u8"),
    GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}


@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy row-major order (GGUF dims reversed): token_embd is (vocab, dim)
    type_name: str  # GGML type, e.g. "F32", "Q8_0", "Q4_K"
    offset: int  # absolute position of the first byte in the file
    nbytes: int

    @property
    def qtype(self) -> GGMLQuantizationType:
        return GGMLQuantizationType[self.type_name]

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def byte_shape(self) -> tuple[int, ...]:
        """Shape of the raw bytes: rows as in `shape`, the last axis in whole blocks of bytes."""
        block_size, type_size = GGML_QUANT_SIZES[self.qtype]
        *outer, inner = self.shape
        return (*outer, inner // block_size * type_size)


@dataclass(frozen=True)
class KVSpan:
    """Where a metadata pair lies in the file, and its value's types (to write a new value alike)."""

    start: int
    end: int
    vtype: int
    etype: int | None  # an array's element type


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    metadata: dict[str, Any]  # str, int, float, bool; numeric arrays as numpy; string arrays as list[str]
    spans: dict[str, KVSpan]
    tensors: list[GGUFTensorInfo]  # in file order
    infos_offset: int  # end of the metadata, start of the tensor infos
    data_offset: int  # start of the (aligned) data section
    file_size: int

    @property
    def alignment(self) -> int:
        return self.metadata.get("general.alignment", _DEFAULT_ALIGNMENT)

    def tensor(self, name: str) -> GGUFTensorInfo | None:
        return next((t for t in self.tensors if t.name == name), None)


class _Truncated(Exception):
    """The header runs past the end of the file (caught and reported with the path)."""


class _Malformed(Exception):
    """The header is well-sized but says something impossible (reported with the path)."""


class _Parser:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.size = len(buf)
        self.pos = 0

    def take(self, n: int) -> int:
        """Advance past `n` bytes and return where they start."""
        start = self.pos
        if start + n > self.size:
            raise _Truncated
        self.pos = start + n
        return start

    def u32(self) -> int:
        return _U32.unpack_from(self.buf, self.take(4))[0]

    def u64(self) -> int:
        return _U64.unpack_from(self.buf, self.take(8))[0]

    def string(self) -> str:
        n = self.u64()
        start = self.take(n)
        return str(self.buf[start : start + n], "utf-8", "replace")

    def value(self, vtype: int) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            return self.array()
        scalar = SCALARS.get(vtype)
        if scalar is None:
            raise _Malformed(f"unknown metadata value type {vtype}")
        return scalar.unpack_from(self.buf, self.take(scalar.size))[0]

    def array(self) -> np.ndarray | list:
        etype = self.u32()
        count = self.u64()
        dtype = ARRAY_DTYPES.get(etype)
        if dtype is not None:
            start = self.take(count * dtype.itemsize)
            # A copy: a view would pin the mmap open.
            values = np.frombuffer(self.buf, dtype=dtype, count=count, offset=start).copy()
            return values.astype(bool) if etype == GGUFValueType.BOOL else values
        if etype == GGUFValueType.STRING:
            return self.strings(count)
        if etype != GGUFValueType.ARRAY:
            raise _Malformed(f"unknown metadata array element type {etype}")
        if count * 12 > self.size - self.pos:  # each nested array needs at least 12 bytes
            raise _Truncated
        return [self.value(etype) for _ in range(count)]

    def strings(self, count: int) -> list[str]:
        # The hot loop of the whole parse (a vocabulary): locals only, no method calls.
        buf, pos, end = self.buf, self.pos, self.size
        if count * 8 > end - pos:
            raise _Truncated
        unpack = _U64.unpack_from
        out: list[str] = []
        append = out.append
        for _ in range(count):
            if pos + 8 > end:
                raise _Truncated
            n = unpack(buf, pos)[0]
            pos += 8
            stop = pos + n
            if stop > end:
                raise _Truncated
            append(str(buf[pos:stop], "utf-8", "replace"))
            pos = stop
        self.pos = pos
        return out

    def tensor_info(self) -> tuple[str, tuple[int, ...], GGMLQuantizationType, int]:
        name = self.string()
        n_dims = self.u32()
        # struct, not np.frombuffer: a live numpy view would keep the mmap from closing on an error.
        dims = struct.unpack_from(f"<{n_dims}Q", self.buf, self.take(8 * n_dims))
        type_id = self.u32()
        offset = self.u64()
        try:
            qtype = GGMLQuantizationType(type_id)
        except ValueError:
            raise _Malformed(f"tensor {name!r} has unknown GGML type {type_id}") from None
        return name, dims[::-1], qtype, offset


def read_gguf_header(path: Path) -> GGUFHeader:
    """Parse the metadata and tensor infos of a GGUF file, and check every tensor fits in it."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            file_size = handle.seek(0, 2)
            if file_size < len(_MAGIC):
                raise EdgeembError(f"{path}: not a GGUF file ({file_size} bytes)")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                if buf[: len(_MAGIC)] != _MAGIC:
                    raise EdgeembError(f"{path}: not a GGUF file (no GGUF magic at the start)")
                return _parse(_Parser(buf), path, file_size)
    except OSError as exc:
        raise EdgeembError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _parse(parser: _Parser, path: Path, file_size: int) -> GGUFHeader:
    try:
        parser.take(len(_MAGIC))
        version = parser.u32()
        if version not in _VERSIONS:
            if version in _BIG_ENDIAN_VERSIONS:
                raise EdgeembError(f"{path}: big-endian GGUF is not supported")
            raise EdgeembError(f"{path}: unsupported GGUF version {version} (edgeemb reads v2 and v3)")
        tensor_count = parser.u64()
        kv_count = parser.u64()
        metadata: dict[str, Any] = {}
        spans: dict[str, KVSpan] = {}
        for _ in range(kv_count):
            start = parser.pos
            key = parser.string()
            vtype = parser.u32()
            etype = _U32.unpack_from(parser.buf, parser.pos)[0] if vtype == GGUFValueType.ARRAY and parser.pos + 4 <= parser.size else None
            metadata[key] = parser.value(vtype)
            spans[key] = KVSpan(start, parser.pos, vtype, etype)
        infos_offset = parser.pos
        raw_infos = [parser.tensor_info() for _ in range(tensor_count)]
    except _Truncated:
        raise EdgeembError(f"{path}: truncated GGUF file (the header runs past the end, {file_size} bytes)") from None
    except _Malformed as exc:
        raise EdgeembError(f"{path}: malformed GGUF header: {exc}") from None

    alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0:
        raise EdgeembError(f"{path}: malformed GGUF header: general.alignment is {alignment!r}")
    data_offset = -(-parser.pos // alignment) * alignment

    tensors: list[GGUFTensorInfo] = []
    seen: set[str] = set()
    for name, shape, qtype, offset in raw_infos:
        if name in seen:
            raise EdgeembError(f"{path}: malformed GGUF header: duplicate tensor {name!r}")
        seen.add(name)
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        if shape and shape[-1] % block_size:
            raise EdgeembError(
                f"{path}: malformed GGUF header: tensor {name!r} has rows of {shape[-1]}, "
                f"not a multiple of the {qtype.name} block of {block_size}"
            )
        info = GGUFTensorInfo(name, shape, qtype.name, data_offset + offset, math.prod(shape) // block_size * type_size)
        # A cut-off download keeps a whole header: only the tensor extents reveal it.
        if info.offset + info.nbytes > file_size:
            raise EdgeembError(
                f"{path}: truncated GGUF file (tensor {name!r} ends at byte {info.offset + info.nbytes}, "
                f"the file has {file_size})"
            )
        tensors.append(info)
    return GGUFHeader(version, metadata, spans, tensors, infos_offset, data_offset, file_size)


def tensor_bytes(path: Path, info: GGUFTensorInfo) -> np.ndarray:
    """The raw bytes of a tensor as a read-only uint8 memmap shaped `info.byte_shape`."""
    return np.memmap(path, dtype=np.uint8, mode="r", offset=info.offset, shape=info.byte_shape)


def dequantize_tensor(path: Path, info: GGUFTensorInfo, description: str | None = None) -> np.ndarray:
    """A 2-D tensor as a float32 array, decoded a block of rows at a time (with progress)."""
    if len(info.shape) != 2 or 0 in info.shape:
        raise EdgeembError(f"{path}: tensor {info.name!r} has shape {info.shape}, expected a non-empty matrix")
    raw = tensor_bytes(path, info)
    rows = info.shape[0]
    out = np.empty(info.shape, dtype=np.float32)
    starts = range(0, rows, _DEQUANT_ROWS)
    try:
        for start in track(starts, description or f"dequantize {info.type_name}", len(starts)):
            stop = min(start + _DEQUANT_ROWS, rows)
            out[start:stop] = dequantize(raw[start:stop], info.qtype)
    except NotImplementedError:
        raise EdgeembError(f"{path}: tensor {info.name!r} is stored as {info.type_name}, which edgeemb cannot decode") from None
    return out


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


def llama_vocabulary(path: Path):
    """llama.cpp's vocabulary of a GGUF file (a vocab-only `Llama`). Not cached here: a cached
    `Llama` would outlive llama_cpp itself at interpreter exit and fail to free."""
    import llama_cpp

    try:
        with silenced_output():  # the vocab-only loader logs from C even with verbose=False
            return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise EdgeembError(f"{path}: llama.cpp cannot read this file's vocabulary ({exc})") from None


def _llama_tokenizer(path: Path) -> Callable[[str], list[int]] | None:
    """text -> ids with llama.cpp's own tokenizer for this file (vocabulary only, loaded on first
    use); None when llama-cpp-python is not installed."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    load = functools.cache(lambda: llama_vocabulary(path))
    return lambda text: load().tokenize(text.encode("utf-8"), add_bos=False, special=False)


_GGUF_MODELS = {"llama": "spm", "gpt2": "bpe"}


def gguf_vocabulary(path: Path) -> Vocabulary:
    """The GGUF file's vocabulary (SentencePiece-style `llama` or byte-level BPE `gpt2`), with a
    retokenizer that loads a vocabulary-only GGUF rewritten for the kept ids in llama.cpp."""
    path = Path(path)
    header = read_gguf_header(path)
    meta = header.metadata
    kind = _GGUF_MODELS.get(meta.get("tokenizer.ggml.model"))
    if kind is None:
        raise EdgeembError(f"{path}: trim_vocab: tokenizer.ggml.model {meta.get('tokenizer.ggml.model')!r} is not supported (llama, gpt2)")
    tokens = meta[TOKENS_KEY]
    types = np.asarray(meta.get("tokenizer.ggml.token_type", np.ones(len(tokens))), np.uint8)
    special = {key.removeprefix("tokenizer.ggml.").removesuffix("_token_id"): index
               for key, index in _special_ids(meta).items() if 0 <= index < len(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])] if kind == "bpe" else None
    tokenize = _llama_tokenizer(path)
    if tokenize is None:
        raise EdgeembError("trim_vocab on a GGUF model needs llama-cpp-python (llama.cpp's tokenizer)")
    return Vocabulary(
        kind, tokens, types, special, tokenize, functools.partial(_trimmed_tokenizer, path, header),
        scores=np.asarray(meta["tokenizer.ggml.scores"], np.float32) if "tokenizer.ggml.scores" in meta else None,
        merges=merges, byte_level=kind == "bpe",
    )


def trimmed_vocab_metadata(header: GGUFHeader, keep: np.ndarray) -> dict[str, Any]:
    """The metadata values that change when the vocabulary keeps only `keep` (ascending): the
    tokenizer arrays, BPE merges whose parts and result survive, the special ids, the vocab size."""
    meta = header.metadata
    keep = np.asarray(keep)
    tokens = [meta[TOKENS_KEY][i] for i in keep]
    changes: dict[str, Any] = {TOKENS_KEY: tokens}
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        if key in meta:
            changes[key] = np.asarray(meta[key])[keep]
    if "tokenizer.ggml.merges" in meta:
        kept = set(tokens)
        changes["tokenizer.ggml.merges"] = [m for m in meta["tokenizer.ggml.merges"] if merge_survives(*m.split(" ", 1), kept)]
    new_id = {int(old): new for new, old in enumerate(keep)}
    changes.update({key: new_id[index] for key, index in _special_ids(meta).items() if index in new_id})
    vocab_size = f"{meta.get('general.architecture')}.vocab_size"
    if vocab_size in meta:
        changes[vocab_size] = len(keep)
    return changes


def _special_ids(meta: dict[str, Any]) -> dict[str, int]:
    """The `tokenizer.ggml.*_token_id` keys (bos, eos, unknown, padding, ...) and their ids."""
    return {key: int(value) for key, value in meta.items() if key.startswith("tokenizer.ggml.") and key.endswith("_token_id")}


def _trimmed_tokenizer(path: Path, header: GGUFHeader, keep: np.ndarray) -> Callable[[str], list[int]]:
    """llama.cpp's tokenizer of the trimmed vocabulary, from a vocabulary-only GGUF written aside."""
    import tempfile

    from edgeemb.export.gguf import write_vocab_gguf

    with tempfile.TemporaryDirectory(prefix="edgeemb-vocab-") as folder:
        file = Path(folder) / "vocab.gguf"
        write_vocab_gguf(path, header, file, trimmed_vocab_metadata(header, keep))
        vocab = llama_vocabulary(file)  # read whole at load: the file may go
    return lambda text: vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)


def _head_input_power(path: Path) -> Callable[[str, int], np.ndarray] | None:
    """llama.cpp's measure of the tied head's inputs; None without llama-cpp-python."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    from edgeemb.evaluate.llamacpp import head_input_power

    return functools.partial(head_input_power, path)
