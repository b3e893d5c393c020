"""Open a model's embedding table from a short name, a Hugging Face directory or a GGUF file."""

from __future__ import annotations

from pathlib import Path

from edgeemb.errors import EdgeembError, regular_file
from edgeemb.sources.base import SourceModel
from edgeemb.sources.catalog import DEFAULT_MODEL, catalog, locate
from edgeemb.sources.gguf import load_gguf
from edgeemb.sources.hf import load_hf

__all__ = ["SourceModel", "open_model", "resolve_model"]


def resolve_model(spec: str | Path | None) -> tuple[str, Path]:
    """(name, path) for a catalog name or an existing path."""
    spec = DEFAULT_MODEL if spec is None else str(spec)
    entries = catalog()
    if spec in entries:
        return spec, locate(entries[spec])
    path = Path(spec)
    if not path.exists():
        raise EdgeembError(f"no model '{spec}': not a known name ({', '.join(sorted(entries))}) nor an existing path")
    return spec, path


def open_model(spec: str | Path | None = None) -> SourceModel:
    """Load the embedding table of `spec` (default: the embedded MiniLM)."""
    name, path = resolve_model(spec)
    _refuse_onnx_export(path)
    if path.is_file() and path.suffix == ".safetensors":
        path = path.parent
    if path.is_dir():
        return load_hf(path, name)
    with open(regular_file(path, "model file"), "rb") as handle:
        magic = handle.read(4)
    if magic == b"GGUF" or path.suffix == ".gguf":
        return load_gguf(path, name)
    raise EdgeembError(f"{path}: not a model directory or a GGUF file")


def _refuse_onnx_export(path: Path) -> None:
    """An ONNX file, or a folder `optimum-cli export onnx` wrote (model.onnx beside config.json, no
    safetensors weights), holds a graph, not the table edgeemb compresses: say where it goes."""
    folder_export = path.is_dir() and any(path.glob("*.onnx")) and not any(path.glob("*.safetensors*"))
    if path.suffix == ".onnx" or folder_export:
        raise EdgeembError(
            f"{path}: an ONNX export, not a model edgeemb reads a table from: compress the model it was "
            f"exported from, then rewrite this export's embedding with `edgeemb export OUT --format onnx --from {path}`"
        )
