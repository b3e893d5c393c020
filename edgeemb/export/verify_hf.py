"""Hugging Face transformers export, verified by loading it back: the folder `from_pretrained(path)`
reads offline, its logits (a bare model's hidden states) compared with the compressed model's on
the same token ids and held to `edgeemb.export.tolerance`'s limit. The compressed model is the
source with the table rounded to the folder's float type, so the two hold the same weights: a
difference is a folder that does not load as written."""

from __future__ import annotations

import numpy as np

from edgeemb.errors import EdgeembError
from edgeemb.evaluate.data import read_texts
from edgeemb.export.hf import export_hf, load_model, model_outputs, model_with_table
from edgeemb.export.onnx import SAMPLE_TEXTS
from edgeemb.export.request import Exporter, ExportRequest
from edgeemb.export.tolerance import held, limits
from edgeemb.outputs import staged
from edgeemb.results import HfCheck, HfExported, HfFolder, relocated
from edgeemb.sources import SourceModel


def write_and_verify(request: ExportRequest) -> HfExported:
    source, table = request.source, request.table
    bounds = limits("hf", "hf", request.tolerances)  # a bad --tolerance fails before the export
    check = None
    with staged(request.file, request.force) as staging:  # the folder replaces an earlier one only once verified
        exported = export_hf(source, table, staging)
        if request.verify:
            # torch: loaded with the models already; only the table's rounding to the folder's type needs it
            import torch

            sequences = token_ids(source, read_texts(request.text) if request.text else list(SAMPLE_TEXTS))
            rows = torch.from_numpy(table.to_dense()).to(getattr(torch, exported.dtype)).float().numpy()
            reference = model_with_table(source, rows)
            want = [model_outputs(reference, ids) for ids in sequences]
            del reference  # one model in memory at a time
            loaded = load_model(staging, causal=source.tied is not None)
            difference = max(float(np.abs(model_outputs(loaded, ids) - w).max()) for ids, w in zip(sequences, want))
            held("hf", request.file, {"max_abs_diff": difference}, bounds)
            check = HfCheck(
                runtime="transformers",
                texts=len(sequences),
                tokens=sum(map(len, sequences)),
                max_abs_diff=difference,
                tolerances=bounds,
            )
    result = HfExported(
        export=HfFolder(path=str(exported.path), file_bytes=exported.bytes, table=exported.table, dtype=exported.dtype),
        verify=check,
    )
    return relocated(result, staging, request.file)


def token_ids(source: SourceModel, texts: list[str]) -> list[list[int]]:
    """Each text's ids by the source's tokenizer (the first 64 ids of the vocabulary without one)."""
    if source.tokenize is None:
        return [list(range(min(64, source.vocab_size)))]
    sequences = [ids[:256] for ids in map(source.tokenize, texts) if ids]
    if not sequences:
        raise EdgeembError("no text to check the export on: every line tokenises to nothing")
    return sequences


EXPORTER = Exporter("hf", "transformers", write_and_verify)
