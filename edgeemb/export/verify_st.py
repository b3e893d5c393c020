"""sentence-transformers export, verified by loading it back: the folder `SentenceTransformer(path)`
reads offline, compared with the compressed model on the same texts and held to
`edgeemb.export.tolerance`'s limit."""

from __future__ import annotations

import numpy as np

from edgeemb.evaluate.data import read_texts
from edgeemb.evaluate.encoder import sentence_encoder
from edgeemb.export.onnx import SAMPLE_TEXTS
from edgeemb.export.request import Exporter, ExportRequest, tokenizer_json
from edgeemb.export.st import export_sentence_transformers
from edgeemb.export.tolerance import held, limits
from edgeemb.outputs import staged
from edgeemb.results import StCheck, StExported, StFolder, relocated


def write_and_verify(request: ExportRequest) -> StExported:
    # sentence_transformers: seconds to import (torch), only to load the export back
    from sentence_transformers import SentenceTransformer

    source, table = request.source, request.table
    bounds = limits("st", "st", request.tolerances)  # a bad --tolerance fails before the export
    check = None
    with staged(request.file, request.force) as staging:  # the folder replaces an earlier one only once verified
        exported = export_sentence_transformers(source, table, staging)
        if request.verify:
            texts = read_texts(request.text) if request.text else list(SAMPLE_TEXTS)
            loaded = SentenceTransformer(str(staging), device="cpu", local_files_only=True)
            got = loaded.encode(texts, convert_to_numpy=True, show_progress_bar=False)
            reference = sentence_encoder(source.path, source.sha256)
            want = reference.encoder(table.to_dense(), "encode (compressed)", tokenizer_json(source, table))(texts)
            max_abs_diff = float(np.abs(got - want).max())
            held("st", request.file, {"max_abs_diff": max_abs_diff}, bounds)
            check = StCheck(
                runtime="sentence-transformers", texts=len(texts), max_abs_diff=max_abs_diff, tolerances=bounds
            )
    result = StExported(
        export=StFolder(path=str(exported.path), file_bytes=exported.bytes, table=exported.table), verify=check
    )
    return relocated(result, staging, request.file)


EXPORTER = Exporter("st", "sentence-transformers", write_and_verify)
