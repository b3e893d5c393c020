"""GGUF files at the byte level: read the header, map a tensor's bytes, dequantise a tensor, and
write a copy with some tensors or metadata values replaced. The layer under `sources.gguf` (a
model from a GGUF file), `export.gguf` (what an export writes) and `evaluate.llamacpp` (running a
file): it knows the file format, not models, tables or runtimes.

`gguf.GGUFReader` builds Python objects for every field element (25 s for Gemma 3's 262,144
tokens), so the header is parsed here directly over an mmap: numeric arrays in one
`np.frombuffer`, string arrays in one tight loop. Tensor data is never read whole: callers map
just the bytes of the tensor they need.

Layout (GGUF v2/v3, little-endian): magic "GGUF", version u32, tensor count u64, KV count u64;
the KV pairs (key string, value type u32, value); the tensor infos (name, n_dims u32,
dims u64[n_dims] innermost first, type u32, offset u64 relative to the data section); then the
data section, aligned to `general.alignment`. A string is a u64 length and its bytes; an array
is an element type u32, a count u64 and the elements.

A rewrite copies everything else byte for byte: the metadata pairs verbatim (re-encoded with their
own types only where a value changes) and every other tensor's bytes; only the tensor infos are
rebuilt (a replaced tensor's type and the data offsets that follow it).
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize

from edgeemb.errors import EdgeembError, regular_file
from edgeemb.outputs import MARK, register_mark, staged
from edgeemb.progress import track
from edgeemb.vocab import merge_survives

TOKEN_EMBD = "token_embd.weight"
OUTPUT = "output.weight"
TOKENS_KEY = "tokenizer.ggml.tokens"

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_BIG_ENDIAN_VERSIONS = {v << 24 for v in _VERSIONS}  # what a big-endian file's version reads as
_DEFAULT_ALIGNMENT = 32
_DEQUANT_ROWS = 16384  # rows dequantised at a time: bounds the temporaries, paces progress
_COPY_CHUNK = 1 << 24
# The metadata key that marks a GGUF as edgeemb's (llama.cpp ignores keys it does not know).
MARK_KEY = "edgeemb.version"

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
    """Parse the metadata and tensor infos of a GGUF file, and check its layout as llama.cpp does:
    every tensor inside the file, starting on `general.alignment` (a power of two), sharing no byte
    with another."""
    path = regular_file(path, "GGUF file")
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
            is_array = vtype == GGUFValueType.ARRAY and parser.pos + 4 <= parser.size
            etype = _U32.unpack_from(parser.buf, parser.pos)[0] if is_array else None
            metadata[key] = parser.value(vtype)
            spans[key] = KVSpan(start, parser.pos, vtype, etype)
        infos_offset = parser.pos
        raw_infos = [parser.tensor_info() for _ in range(tensor_count)]
    except _Truncated:
        raise EdgeembError(f"{path}: truncated GGUF file (the header runs past the end, {file_size} bytes)") from None
    except _Malformed as exc:
        raise EdgeembError(f"{path}: malformed GGUF header: {exc}") from None

    alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 or alignment & (alignment - 1):
        raise EdgeembError(f"{path}: malformed GGUF header: general.alignment is {alignment!r}, not a power of two")
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
        if offset % alignment:
            raise EdgeembError(
                f"{path}: malformed GGUF header: tensor {name!r} starts at data offset {offset}, "
                f"not a multiple of general.alignment {alignment}"
            )
        info = GGUFTensorInfo(name, shape, qtype.name, data_offset + offset, math.prod(shape) // block_size * type_size)
        # A cut-off download keeps a whole header: only the tensor extents reveal it.
        if info.offset + info.nbytes > file_size:
            raise EdgeembError(
                f"{path}: truncated GGUF file (tensor {name!r} ends at byte {info.offset + info.nbytes}, "
                f"the file has {file_size})"
            )
        tensors.append(info)
    _refuse_overlaps(path, tensors)
    return GGUFHeader(version, metadata, spans, tensors, infos_offset, data_offset, file_size)


def _refuse_overlaps(path: Path, tensors: list[GGUFTensorInfo]) -> None:
    """No byte belongs to two tensors: llama.cpp lays tensors out back to back and refuses any
    other layout, and a table that shares bytes with another tensor is not a table."""
    sized = [t for t in tensors if t.nbytes]
    # every extent is inside the file by now: int64 holds them
    order = np.argsort(np.array([t.offset for t in sized], dtype=np.int64), kind="stable")
    starts = np.array([sized[i].offset for i in order], dtype=np.int64)
    ends = starts + np.array([sized[i].nbytes for i in order], dtype=np.int64)
    reach = np.maximum.accumulate(ends)  # the furthest byte covered by the tensors starting so far
    clash = np.flatnonzero(starts[1:] < reach[:-1])
    if clash.size:
        later = sized[order[clash[0] + 1]]
        earlier = sized[order[int(np.argmax(ends[: clash[0] + 1]))]]
        raise EdgeembError(
            f"{path}: malformed GGUF file: tensor {later.name!r} (bytes {later.offset}-{later.offset + later.nbytes}) "
            f"overlaps tensor {earlier.name!r} (bytes {earlier.offset}-{earlier.offset + earlier.nbytes})"
        )


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
        raise EdgeembError(
            f"{path}: tensor {info.name!r} is stored as {info.type_name}, which edgeemb cannot decode"
        ) from None
    return out


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
        merges = meta["tokenizer.ggml.merges"]
        changes["tokenizer.ggml.merges"] = [m for m in merges if merge_survives(*m.split(" ", 1), kept)]
    new_id = {int(old): new for new, old in enumerate(keep)}
    changes.update({key: new_id[index] for key, index in special_token_ids(meta).items() if index in new_id})
    vocab_size = f"{meta.get('general.architecture')}.vocab_size"
    if vocab_size in meta:
        changes[vocab_size] = len(keep)
    return changes


def special_token_ids(meta: dict[str, Any]) -> dict[str, int]:
    """The `tokenizer.ggml.*_token_id` keys (bos, eos, unknown, padding, ...) and their ids."""
    return {
        key: int(value)
        for key, value in meta.items()
        if key.startswith("tokenizer.ggml.") and key.endswith("_token_id")
    }


@register_mark(".gguf")
def _marked(path: Path) -> bool:
    return read_gguf_header(path).metadata.get(MARK_KEY, "").startswith("edgeemb ")


def rewrite_gguf(
    source: Path,
    header: GGUFHeader,
    out: Path,
    replacements: dict[str, tuple[str, np.ndarray]],
    metadata: dict[str, Any] | None = None,
    tensors: bool = True,
    force: bool = False,
) -> None:
    """Copy `source` to `out` with the named tensors' types and bytes replaced (a replaced matrix
    may have fewer rows: a trimmed vocabulary) and the `metadata` values changed, every other byte
    copied, and edgeemb's mark added (`MARK_KEY`); atomic. Without `tensors`, a metadata-only file
    (a vocabulary for llama.cpp)."""
    infos, plan, offset = bytearray(), [], 0
    alignment = header.alignment
    for tensor in header.tensors if tensors else ():
        type_name, data = replacements.get(tensor.name, (tensor.type_name, None))
        qtype = GGMLQuantizationType[type_name]
        block, type_size = GGML_QUANT_SIZES[qtype]
        shape = tensor.shape if data is None else (data.shape[0], *tensor.shape[1:])
        nbytes = math.prod(shape) // block * type_size
        if data is not None and data.nbytes != nbytes:
            raise EdgeembError(f"{tensor.name}: {data.nbytes} bytes given, {type_name} of shape {shape} needs {nbytes}")
        name = tensor.name.encode("utf-8")
        dims = shape[::-1]  # GGUF lists dimensions innermost first
        infos += struct.pack(f"<Q{len(name)}sI{len(dims)}QIQ", len(name), name, len(dims), *dims, qtype, offset)
        plan.append((tensor, data))
        offset += _padded(nbytes, alignment)

    with staged(out, force) as staging, open(source, "rb") as src, open(staging, "wb") as dst:
        dst.write(_metadata_section(src, header, {**(metadata or {}), MARK_KEY: MARK}, len(plan)))
        dst.write(infos)
        dst.write(bytes(_padded(dst.tell(), alignment) - dst.tell()))
        for tensor, data in plan:
            start = dst.tell()
            if data is None:
                src.seek(tensor.offset)
                _copy(src, dst, tensor.nbytes)
            else:
                dst.write(np.ascontiguousarray(data).data)
            dst.write(bytes(_padded(dst.tell() - start, alignment) - (dst.tell() - start)))


def write_vocab_gguf(source: Path, header: GGUFHeader, out: Path, metadata: dict[str, Any]) -> None:
    """A vocabulary-only GGUF: `source`'s metadata with `metadata` changed, and no tensors."""
    rewrite_gguf(source, header, out, {}, metadata, tensors=False)


def _metadata_section(src, header: GGUFHeader, changes: dict[str, Any], tensor_count: int) -> bytes:
    """Magic, version, counts and the metadata pairs: each copied verbatim, or re-encoded with
    its original types where `changes` gives it a new value."""
    src.seek(0)
    added = {key: value for key, value in changes.items() if key not in header.spans}  # new keys: strings
    head = bytearray(src.read(8)) + struct.pack("<QQ", tensor_count, len(header.spans) + len(added))
    for key, span in header.spans.items():
        if key in changes:
            head += _encode_kv(key, span, changes[key])
        else:
            src.seek(span.start)
            head += src.read(span.end - span.start)
    for key, value in added.items():
        head += _gguf_string(key) + struct.pack("<I", GGUFValueType.STRING) + _gguf_string(value)
    return bytes(head)


def _encode_kv(key: str, span: KVSpan, value: Any) -> bytes:
    out = bytearray(_gguf_string(key)) + struct.pack("<I", span.vtype)
    if span.vtype == GGUFValueType.ARRAY:
        out += struct.pack("<IQ", span.etype, len(value))
        if span.etype == GGUFValueType.STRING:
            out += b"".join(map(_gguf_string, value))
        else:
            out += np.asarray(value, dtype=ARRAY_DTYPES[span.etype]).tobytes()
    elif span.vtype == GGUFValueType.STRING:
        out += _gguf_string(value)
    else:
        out += SCALARS[span.vtype].pack(value)
    return bytes(out)


def _gguf_string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def _copy(src, dst, nbytes: int) -> None:
    while nbytes > 0:
        chunk = src.read(min(nbytes, _COPY_CHUNK))
        if not chunk:
            raise EdgeembError(f"{src.name}: the file ended while copying a tensor (was it changed during the export?)")
        dst.write(chunk)
        nbytes -= len(chunk)


def _padded(size: int, alignment: int) -> int:
    return -(-size // alignment) * alignment
