"""The exporters, by the format a recipe's `export:` or `edgeemb export --format` names."""

from __future__ import annotations

from edgeemb.export import verify_gguf, verify_hf, verify_onnx, verify_st
from edgeemb.export.request import Exporter, ExportRequest
from edgeemb.results import Exported

EXPORTERS: dict[str, Exporter] = {
    exporter.format: exporter
    for exporter in (verify_gguf.EXPORTER, verify_onnx.EXPORTER, verify_st.EXPORTER, verify_hf.EXPORTER)
}


def export_table(request: ExportRequest) -> Exported:
    """Write `request.file` in the format its config names, verified in that format's runtime."""
    return EXPORTERS[request.config.format].write_and_verify(request)
