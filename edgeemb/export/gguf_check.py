"""Does a GGUF export run the table it should? llama.cpp's logits from the file on a fixed text,
against its logits from the same file with token_embd replaced by the expected rows in F32 (the
compressed table decoded; when the export rebuilt it in another type, that rebuild decoded).

Everything else in the two files is the same bytes, so the only differences are the rows llama.cpp
reads and, for a tied head, the matrix product's kernel (a quantised head rounds activations to 8
bits, the F32 one does not): a mean KL divergence of ~1e-3 nats per token for a right file, several
nats for rows read from the wrong place (`edgeemb.export.tolerance` holds the limit).
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeemb.evaluate.llamacpp import Decoder, load_llama, tokenize_text
from edgeemb.export.gguf import ggml_bytes
from edgeemb.export.onnx import SAMPLE_TEXTS
from edgeemb.ggufio import TOKEN_EMBD, read_gguf_header, rewrite_gguf
from edgeemb.table import EmbeddingTable, TrimmedTable

TEXT = " ".join(SAMPLE_TEXTS)  # the fixed text: ~120 tokens of plain English sentences
_BATCH = 256


@dataclass(frozen=True)
class TableLogits:
    tokens: int  # positions compared (the fixed text, BOS included when the model adds one)
    mean_kl: float  # KL(expected || file) of the next-token distributions, nats, averaged over positions
    max_kl: float
    top1_agreement: float  # share of positions where both rank the same next token first


def expected_rows(table: EmbeddingTable, tensor_type: str, rebuilt: bool) -> np.ndarray:
    """The float32 rows an export of `table` holds: the table decoded (a trimmed table's kept
    rows), or, when the export rebuilt it in `tensor_type`, that rebuild decoded."""
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize

    rows = table.rows if isinstance(table, TrimmedTable) else table
    if not rebuilt:
        return rows.to_dense().astype(np.float32)
    _, blocks, _ = ggml_bytes(rows, tensor_type)
    return dequantize(np.asarray(blocks), GGMLQuantizationType[tensor_type]).reshape(rows.shape).astype(np.float32)


def table_logits(path: Path, expected: np.ndarray, text: str = TEXT) -> TableLogits:
    """Compare llama.cpp's logits from `path` with those from a copy whose token_embd is `expected`
    in F32 (written beside `path` as a companion of a staged file, removed after), both run in one
    fresh process."""
    path = Path(path)
    reference = path.with_name(f"{path.name.removesuffix('.gguf')}.reference.gguf")
    rows = np.ascontiguousarray(expected, dtype=np.float32)
    rewrite_gguf(path, read_gguf_header(path), reference, {TOKEN_EMBD: ("F32", rows.view(np.uint8))})
    try:
        ids = tokenize_text(path, text).ids
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(_compare, (reference, path, ids))
    finally:
        reference.unlink(missing_ok=True)


def _compare(reference: Path, path: Path, ids: np.ndarray) -> TableLogits:
    want, got = _log_probs(reference, ids), _log_probs(path, ids)
    kl = (np.exp(want) * (want - got)).sum(axis=1)
    return TableLogits(
        tokens=len(ids),
        mean_kl=float(kl.mean()),
        max_kl=float(kl.max()),
        top1_agreement=float((want.argmax(axis=1) == got.argmax(axis=1)).mean()),
    )


def _log_probs(path: Path, ids: np.ndarray) -> np.ndarray:
    """Log-softmax of llama.cpp's logits at every position of `ids`, from an empty cache."""
    llm = load_llama(path, n_ctx=max(len(ids), 8), n_batch=_BATCH)
    decoder = Decoder(llm, _BATCH)
    try:
        # each decode overwrites llama.cpp's logits buffer, so every batch's rows are copied out
        logits = np.concatenate(
            [
                np.array(decoder.decode(ids[start : start + _BATCH], start, all_logits=True), np.float32)
                for start in range(0, len(ids), _BATCH)
            ]
        )
    finally:
        decoder.close()
        llm.close()
    logits -= logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
