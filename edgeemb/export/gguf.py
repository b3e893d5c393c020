"""GGUF export: the source GGUF with `token_embd.weight` replaced by the compressed table.

Everything else is copied byte for byte: the metadata section verbatim (the tokenizer, the
architecture, `general.file_type`), and every other tensor's bytes with its type and shape. Only
the tensor infos are rewritten (a replaced tensor's type and the data offsets that follow it).

llama.cpp stores a token embedding as one GGML type per tensor, with no factorised, codebook or
mixed-precision form. A table already stored in a GGML type (a recipe's `quantize: {format:
Q5_0}`) is copied as is; any other table (low-rank, int4 blocks, PQ, mixed) is rebuilt at full
width and quantised to the type asked for, and the export says so. When the source has its own
`output.weight` (an untied head), that matrix is quantised to the same type.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from edgeemb.errors import EdgeembError
from edgeemb.formats import get_format, names
from edgeemb.outputs import MARK, check_target, register_mark, staged
from edgeemb.progress import silenced_output
from edgeemb.sources.gguf import (
    ARRAY_DTYPES,
    OUTPUT,
    SCALARS,
    TOKEN_EMBD,
    GGUFHeader,
    KVSpan,
    dequantize_tensor,
    read_gguf_header,
    trimmed_vocab_metadata,
)
from edgeemb.table import EmbeddingTable, QuantizedTable, TrimmedTable

_DENSE = {"F32": np.float32, "F16": np.float16}
_COPY_CHUNK = 1 << 24
# The metadata key that marks a GGUF as edgeemb's (llama.cpp ignores keys it does not know).
MARK_KEY = "edgeemb.version"


@register_mark(".gguf")
def _marked(path: Path) -> bool:
    return read_gguf_header(path).metadata.get(MARK_KEY, "").startswith("edgeemb ")


@dataclass(frozen=True)
class GGUFExport:
    path: str
    source: str
    tensor_type: str  # GGML type of token_embd.weight in the export
    rebuilt: bool  # the table was decoded to full width and quantised again for llama.cpp
    replaced: list[str]  # tensors whose bytes differ from the source
    source_bytes: int
    file_bytes: int
    source_table_bytes: int
    table_bytes: int
    notes: list[str]


def gguf_types() -> list[str]:
    """Types a token embedding can be exported to: the GGML formats edgeemb quantises, F16, F32."""
    return [name for name in names() if getattr(type(get_format(name)), "qtype", None) is not None] + list(_DENSE)


def ggml_bytes(table: EmbeddingTable, tensor_type: str | None) -> tuple[str, np.ndarray, bool]:
    """(type, raw bytes (rows, bytes per row), rebuilt) of `table` as llama.cpp stores it.

    A table stored in a GGML type is returned as is (unless another type is asked for); anything
    else is decoded to float32 at full width and quantised to `tensor_type`."""
    stored = table.format.name if isinstance(table, QuantizedTable) and hasattr(type(table.format), "qtype") else None
    if stored is not None and tensor_type in (None, stored):
        return stored, table.data["blocks"], False
    if tensor_type is None:
        raise EdgeembError(
            f"llama.cpp cannot store a {table.describe()} table; choose a GGUF type to quantise it to "
            f"({', '.join(gguf_types())})"
        )
    return tensor_type, encode_ggml(table.to_dense(), tensor_type), True


def encode_ggml(weight: np.ndarray, tensor_type: str) -> np.ndarray:
    if tensor_type in _DENSE:
        return weight.astype(_DENSE[tensor_type]).view(np.uint8).reshape(weight.shape[0], -1)
    if tensor_type not in gguf_types():
        raise EdgeembError(f"unknown GGUF type {tensor_type!r}; edgeemb writes {', '.join(gguf_types())}")
    return QuantizedTable.quantize(weight, get_format(tensor_type)).data["blocks"]


def export_gguf(source: Path, table: EmbeddingTable, out: Path, tensor_type: str | None = None, force: bool = False) -> GGUFExport:
    """Write `out`: the GGUF `source` with its token embedding replaced by `table`."""
    source, out = Path(source), Path(out)
    check_target(out, force)
    header = read_gguf_header(source)
    embd = header.tensor(TOKEN_EMBD)
    if embd is None:
        raise EdgeembError(f"{source}: no {TOKEN_EMBD} tensor in this GGUF file")
    keep = table.keep if isinstance(table, TrimmedTable) else None
    rows = table.rows if isinstance(table, TrimmedTable) else table
    source_rows = int(table.facts.get("source_rows", embd.shape[0])) if keep is not None else table.shape[0]
    if (source_rows, table.shape[1]) != embd.shape:
        raise EdgeembError(f"the table is {source_rows} x {table.shape[1]} but {source}'s {TOKEN_EMBD} is {embd.shape[0]} x {embd.shape[1]}")
    type_name, blocks, rebuilt = ggml_bytes(rows, tensor_type)
    replacements = {TOKEN_EMBD: (type_name, blocks)}
    notes = []
    if rebuilt:
        notes.append(f"llama.cpp has no {rows.describe()} embedding: the table was rebuilt at full width and quantised to {type_name}")
    head = header.tensor(OUTPUT)
    if head is not None:
        weight = dequantize_tensor(source, head, f"dequantize {OUTPUT}")
        replacements[OUTPUT] = (type_name, encode_ggml(weight if keep is None else weight[keep], type_name))
        notes.append(f"the untied {OUTPUT} was quantised from the source to {type_name} as well")
    if keep is not None:
        notes.append(f"vocabulary trimmed to {len(keep)} of {source_rows} tokens: the tokenizer in the metadata and the tied output head follow")
    rewrite_gguf(source, header, out, replacements, trimmed_vocab_metadata(header, keep) if keep is not None else None, force=force)
    return GGUFExport(
        str(out), str(source), type_name, rebuilt, sorted(replacements), header.file_size, out.stat().st_size,
        embd.nbytes, blocks.nbytes, notes,
    )


def rewrite_gguf(
    source: Path, header: GGUFHeader, out: Path, replacements: dict[str, tuple[str, np.ndarray]],
    metadata: dict[str, Any] | None = None, tensors: bool = True, force: bool = False,
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


def llama_quantize_token_embd(source: Path, out: Path, tensor_type: str, force: bool = False) -> None:
    """llama.cpp's own quantiser with `token_embedding_type` set: the peer edgeemb compares with.

    The ftype is the source's own `general.file_type`, so every other tensor keeps its type (and
    llama.cpp copies it unchanged); only the token embedding is requantised from the source."""
    import ctypes

    import llama_cpp

    source, out = Path(source), Path(out)
    check_target(out, force)
    header = read_gguf_header(source)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(header.metadata.get("general.file_type", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0))
    params.token_embedding_type = int(GGMLQuantizationType[tensor_type])
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    with staged(out, force) as staging:
        with silenced_output():  # llama.cpp logs every tensor it copies to stderr
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(staging).encode(), ctypes.byref(params))
        if status != 0:
            raise EdgeembError(f"{source}: llama.cpp's quantiser failed for token_embd {tensor_type}")
