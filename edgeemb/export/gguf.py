"""GGUF export: the source GGUF with `token_embd.weight` replaced by the compressed table.

Everything else is copied byte for byte (`ggufio.rewrite_gguf`): the metadata section verbatim
(the tokenizer, the architecture, `general.file_type`), and every other tensor's bytes with its
type and shape. Only the tensor infos are rewritten (a replaced tensor's type and the data
offsets that follow it).

llama.cpp stores a token embedding as one GGML type per tensor, with no factorised, codebook or
mixed-precision form. A table already stored in a GGML type (a recipe's `quantize: {format:
Q5_0}`) is copied as is; any other table (low-rank, int4 blocks, PQ, mixed) is rebuilt at full
width and quantised to the type asked for, and the export says so. A source's own `output.weight`
(an untied head) is left as it is: no recipe asked to touch it (a trimmed vocabulary keeps its
rows' bytes, in their own type); `head_type` (`export --head-type`) quantises it from the source
to that type, with a warning in the notes below Q8_0.

The source is a GGUF model, or a Hugging Face causal LM converted by llama.cpp's own converter
(`edgeemb.export.convert`).
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf.constants import GGMLQuantizationType

from edgeemb.errors import EdgeembError
from edgeemb.formats import get_format, names
from edgeemb.ggufio import (
    OUTPUT,
    TOKEN_EMBD,
    dequantize_tensor,
    read_gguf_header,
    rewrite_gguf,
    tensor_bytes,
    trimmed_vocab_metadata,
)
from edgeemb.outputs import check_target
from edgeemb.progress import silenced_output
from edgeemb.table import EmbeddingTable, QuantizedTable, TrimmedTable

_DENSE = {"F32": np.float32, "F16": np.float16}
_Q8_0_BITS = 8.5  # below this an output head is quantised harder than llama.cpp's Q8_0


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
    return [name for name in names() if type(get_format(name)).qtype is not None] + list(_DENSE)


def ggml_bytes(table: EmbeddingTable, tensor_type: str | None) -> tuple[str, np.ndarray, bool]:
    """(type, raw bytes (rows, bytes per row), rebuilt) of `table` as llama.cpp stores it.

    A table already stored in a GGML type is returned as is (unless another type is asked for);
    anything else is decoded to float32 at full width and quantised to `tensor_type`."""
    stored = table.ggml_blocks()
    if stored is not None and tensor_type in (None, stored[0]):
        return stored[0], stored[1], False
    if tensor_type is None:
        raise EdgeembError(
            f"llama.cpp cannot store a {table.describe()} table; choose a GGUF type to quantise it to with --type "
            f"({', '.join(gguf_types())})"
        )
    return tensor_type, encode_ggml(table.to_dense(), tensor_type), True


def encode_ggml(weight: np.ndarray, tensor_type: str) -> np.ndarray:
    if tensor_type in _DENSE:
        return weight.astype(_DENSE[tensor_type]).view(np.uint8).reshape(weight.shape[0], -1)
    if tensor_type not in gguf_types():
        raise EdgeembError(f"unknown GGUF type {tensor_type!r}; edgeemb writes {', '.join(gguf_types())}")
    return QuantizedTable.quantize(weight, get_format(tensor_type)).data["blocks"]


def export_gguf(
    source: Path,
    table: EmbeddingTable,
    out: Path,
    tensor_type: str | None = None,
    force: bool = False,
    head_type: str | None = None,
) -> GGUFExport:
    """Write `out`: the GGUF `source` with its token embedding replaced by `table`; with
    `head_type`, its separate output head quantised from the source to that type."""
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
        raise EdgeembError(
            f"the table is {source_rows} x {table.shape[1]} "
            f"but {source}'s {TOKEN_EMBD} is {embd.shape[0]} x {embd.shape[1]}"
        )
    type_name, blocks, rebuilt = ggml_bytes(rows, tensor_type)
    replacements = {TOKEN_EMBD: (type_name, blocks)}
    notes = []
    if rebuilt:
        if rows.ggml_blocks() is None:
            notes.append(
                f"llama.cpp has no {rows.describe()} embedding: "
                f"the table was rebuilt at full width and quantised to {type_name}"
            )
        else:
            notes.append(f"the {rows.describe()} table was decoded and quantised again to {type_name}, as asked")
    head = header.tensor(OUTPUT)
    if head_type is not None and head is None:
        raise EdgeembError(f"head type {head_type}: {source} has no separate {OUTPUT} (its head is tied to the table)")
    if head is not None and head_type not in (None, head.type_name):  # asked for: never done otherwise
        weight = dequantize_tensor(source, head, f"dequantize {OUTPUT}")
        head_blocks = encode_ggml(weight if keep is None else weight[keep], head_type)
        replacements[OUTPUT] = (head_type, head_blocks)
        bits = 8 * head_blocks.nbytes / (head_blocks.shape[0] * head.shape[1])
        notes.append(_head_note(head.type_name, head_type, bits))
    elif head is not None:
        if keep is not None:  # rows are whole blocks: the kept ones copy in any type
            replacements[OUTPUT] = (head.type_name, np.ascontiguousarray(tensor_bytes(source, head)[keep]))
        notes.append(f"the untied {OUTPUT} is the source's ({head.type_name}), not requantised")
    if keep is not None:
        notes.append(
            f"vocabulary trimmed to {len(keep)} of {source_rows} tokens: "
            "the tokenizer in the metadata and the output head follow"
        )
    rewrite_gguf(
        source,
        header,
        out,
        replacements,
        trimmed_vocab_metadata(header, keep) if keep is not None else None,
        force=force,
    )
    return GGUFExport(
        str(out),
        str(source),
        type_name,
        rebuilt,
        sorted(replacements),
        header.file_size,
        out.stat().st_size,
        embd.nbytes,
        blocks.nbytes,
        notes,
    )


def _head_note(stored: str, asked: str, bits: float) -> str:
    note = f"the untied {OUTPUT} was quantised from the source's {stored} to {asked}, as asked"
    if bits < _Q8_0_BITS:  # the head scores every token of the vocabulary at every step
        note += f"; warning: {bits:.2f} bits per value is below Q8_0, and the head's error reaches every logit"
    return note


def llama_quantize_token_embd(source: Path, out: Path, tensor_type: str, force: bool = False) -> None:
    """llama.cpp's own quantiser with `token_embedding_type` set: the peer edgeemb compares with.

    Only the token_embd it writes is kept: `out` is the source with that tensor replaced, every
    other tensor as the source stores it. (Given the source's own `general.file_type`, llama.cpp
    re-decides a K-quant mixture by its current rules: on Qwen2.5-0.5B's Q4_K_M file it swaps 32
    ffn_down and attn_v tensors between Q4_K and Q6_K, Q5_0 and Q8_0, which a comparison of
    token_embd choices must not carry.)"""
    import llama_cpp  # heavy (the compiled llama.cpp): only this peer quantiser needs it

    source, out = Path(source), Path(out)
    check_target(out, force)
    header = read_gguf_header(source)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(header.metadata.get("general.file_type", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0))
    params.token_embedding_type = int(GGMLQuantizationType[tensor_type])
    params.allow_requantize = True
    params.nthread = len(os.sched_getaffinity(0))  # the CPUs this process may run on
    with tempfile.TemporaryDirectory(prefix="edgeemb-llama-quantize-") as folder:
        quantised = Path(folder) / "model.gguf"
        with silenced_output():  # llama.cpp logs every tensor it copies to stderr
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(quantised).encode(), ctypes.byref(params))
        info = read_gguf_header(quantised).tensor(TOKEN_EMBD) if status == 0 else None
        if info is None or info.type_name != tensor_type:
            raise EdgeembError(f"{source}: llama.cpp's quantiser failed for token_embd {tensor_type}")
        blocks = np.array(tensor_bytes(quantised, info))
    rewrite_gguf(source, header, out, {TOKEN_EMBD: (tensor_type, blocks)}, force=force)
