"""A Hugging Face causal LM as a GGUF file, converted by llama.cpp's own converter, and how far its
export runs as transformers runs the same table.

The converter is the `convert_hf_to_gguf.py` vendored in the llama-cpp-python sdist of the
version edgeemb pins (the llama.cpp that runs the exports; `edgeemb cross` unpacks the same
sdist), run in a subprocess with the sdist's own gguf-py first on its path, not the gguf wheel
edgeemb installs. Its weights are written in the source's own float type (F32, F16 or BF16:
the conversion adds no rounding of its own), and the file is cached per source and converter
version, so a second export of the same model does not convert it again.

The converted file is the base a GGUF export rewrites (`export_gguf`: token_embd replaced by the
compressed table), as a GGUF source model is. Its check then measures the export against
transformers running the same rows (`transformers_agreement`; `edgeemb.export.tolerance` holds the
limit).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from edgeemb.bench.cross import llama_cpp_source
from edgeemb.errors import EdgeembError
from edgeemb.evaluate.llamacpp import DEFAULT_PROMPT, LlamaRun, tokenize_text
from edgeemb.export.hf import model_outputs, model_with_table
from edgeemb.outputs import staged
from edgeemb.sources import SourceModel
from edgeemb.sources.hf import transformer_dir
from edgeemb.table import EmbeddingTable, TrimmedTable

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeemb" / "convert"
# The converter's --outtype for the source table's float type; anything else: its own guess.
_OUTTYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16"}


@dataclass(frozen=True)
class ConvertedModel:
    path: Path  # the GGUF file, in the cache
    architecture: str  # the Hugging Face architecture the converter read (config.json)
    outtype: str
    llama_cpp: str  # the llama-cpp-python version whose converter wrote it
    cached: bool  # converted by an earlier run

    @property
    def note(self) -> str:
        how = "an earlier run's conversion, cached" if self.cached else "converted now, cached"
        return (
            f"base GGUF: the Hugging Face {self.architecture} converted by llama.cpp's convert_hf_to_gguf.py "
            f"(llama-cpp-python {self.llama_cpp}, --outtype {self.outtype}; {how} at {self.path})"
        )


def hf_architecture(source: SourceModel) -> str:
    """The architecture the converter dispatches on: config.json's first `architectures` entry
    (a multimodal config's text model's, as the converter reads it)."""
    config = json.loads((transformer_dir(source.path) / "config.json").read_text(encoding="utf-8"))
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    for names in (text.get("architectures"), config.get("architectures")):
        if isinstance(names, list) and names and isinstance(names[0], str):
            return names[0]
    raise EdgeembError(f"{source.path}: config.json names no architectures, so llama.cpp's converter cannot read it")


def converter_architectures(llama_cpp: Path) -> set[str]:
    """The Hugging Face text architectures the vendored converter knows (its TEXT_MODEL_MAP, read
    from the source, not imported: importing the converter loads torch)."""
    tree = ast.parse((llama_cpp / "conversion" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "TEXT_MODEL_MAP" for t in targets) and node.value is not None:
                return set(ast.literal_eval(node.value))
    raise EdgeembError(f"{llama_cpp}: no TEXT_MODEL_MAP in conversion/__init__.py; the converter's layout changed")


def require_convertible(source: SourceModel) -> str:
    """The source's architecture if GGUF export can convert it: a transformers causal LM whose
    architecture llama.cpp's converter knows; else one line saying why not. Nothing is written."""
    if source.format == "sentence-transformers":
        raise EdgeembError(
            f"{source.name} is a sentence-transformers model: llama.cpp runs causal LMs here; "
            "export it with --format onnx or st"
        )
    if source.format != "transformers" or source.tied is None:
        raise EdgeembError(
            f"{source.name} is a {source.format} model without a language-model head: GGUF export takes a GGUF "
            "file or a Hugging Face causal LM"
        )
    architecture = hf_architecture(source)
    version = metadata.version("llama-cpp-python")
    if architecture not in converter_architectures(llama_cpp_source(version)):
        raise EdgeembError(
            f"{source.name}: llama.cpp's converter (llama-cpp-python {version}) does not know the architecture "
            f"{architecture}, so it cannot become a GGUF file; export --format hf writes a transformers folder"
        )
    return architecture


def converted_gguf(source: SourceModel) -> ConvertedModel:
    """`source` (a Hugging Face causal LM) as a GGUF file: from the cache, or converted now."""
    architecture = require_convertible(source)
    version = metadata.version("llama-cpp-python")
    outtype = _OUTTYPES.get(source.stored_dtype, "auto")
    target = CACHE / f"{_folder_digest(source, version, outtype)}.gguf"
    if target.is_file():
        return ConvertedModel(target, architecture, outtype, version, cached=True)
    llama_cpp = llama_cpp_source(version)
    with staged(target, force=False) as staging:
        _run_converter(llama_cpp, transformer_dir(source.path), staging, outtype)
    return ConvertedModel(target, architecture, outtype, version, cached=False)


def _run_converter(llama_cpp: Path, model_dir: Path, out: Path, outtype: str) -> None:
    # the vendored gguf-py, not the installed gguf wheel: the converter and its gguf move together
    env = {key: value for key, value in os.environ.items() if key != "NO_LOCAL_GGUF"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(llama_cpp / "gguf-py"), env.get("PYTHONPATH")]))
    env["HF_HUB_OFFLINE"] = "1"  # a local folder: the converter must not reach for the hub
    command = [sys.executable, str(llama_cpp / "convert_hf_to_gguf.py"), str(model_dir)]
    command += ["--outtype", outtype, "--outfile", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode or not out.is_file():
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if "Error" in line or line.startswith("ERROR")]
        reason = (errors or lines or ["no message"])[-1].strip()
        raise EdgeembError(f"{model_dir}: llama.cpp's convert_hf_to_gguf.py failed ({reason})")


def _folder_digest(source: SourceModel, version: str, outtype: str) -> str:
    """The cache key: the converter's version and outtype, and every file the converter reads
    (the folder's top-level files: config, tokenizer, weights); the table's file by the hash
    the source already has."""
    digest = hashlib.sha256(f"{version}\0{outtype}\0{source.sha256}".encode())
    folder = transformer_dir(source.path)
    for file in sorted(folder.iterdir()):
        if file.is_file() and file.resolve() != Path(source.weights_file).resolve():
            digest.update(f"\0{file.name}\0".encode())
            with open(file, "rb") as handle:
                while block := handle.read(1 << 22):
                    digest.update(block)
    return digest.hexdigest()[:32]


def transformers_agreement(
    source: SourceModel, table: EmbeddingTable, expected: np.ndarray, exported: Path, run: LlamaRun
) -> int:
    """Of `run`'s greedy tokens (llama.cpp on `exported`), how many transformers running `source`
    with `expected` as its table (the rows the file should hold; a trimmed `table` says which ids
    they are) predicts before the first difference: one forward pass over the prompt and those
    tokens, the argmax at each step against llama.cpp's choice."""
    keep = table.keep if isinstance(table, TrimmedTable) else None
    model = model_with_table(source, expected, keep)
    prompt = tokenize_text(exported, DEFAULT_PROMPT).ids.tolist()  # the ids llama.cpp was given, BOS included
    logits = model_outputs(model, prompt + run.greedy_ids[:-1])
    predicted = logits[len(prompt) - 1 :].argmax(axis=1)
    differ = np.flatnonzero(predicted != np.asarray(run.greedy_ids))
    return int(differ[0]) if len(differ) else len(run.greedy_ids)
