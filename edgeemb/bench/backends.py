"""What `bench.run` (timed runs) and `bench.instructions` (counts under qemu) share: the runtime a
file is benchmarked in, and the schema every bench result carries."""

from __future__ import annotations

from pathlib import Path

from edgeemb.errors import EdgeembError

SCHEMA = "edgeemb.bench/1"
BACKENDS = ("onnxruntime", "llama.cpp", "numpy")


def backend_for(artifact: Path) -> str:
    """The runtime a file is benchmarked in, by what it is."""
    if artifact.is_dir():
        return "numpy"
    if artifact.suffix == ".onnx":
        return "onnxruntime"
    if artifact.suffix == ".gguf":
        return "llama.cpp"
    raise EdgeembError(
        f"{artifact}: cannot tell its runtime (an .onnx file, a .gguf file or an edgeemb output folder); give --backend"
    )
