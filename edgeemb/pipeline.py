"""The main path: model -> recipe -> compressed table -> quality report -> OUT/.

    from edgeemb.pipeline import compress
    result = compress("minilm", "int4", "out/minilm-int4")
    result.report["table"]["ratio_vs_source"]
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from edgeemb import __version__
from edgeemb.artifact import Artifact, check_writable, load_artifact, write_artifact
from edgeemb.errors import EdgeembError
from edgeemb.passes import PassContext
from edgeemb.recipe import Recipe, load_recipe
from edgeemb.report.markdown import render_report
from edgeemb.sources import SourceModel, open_model
from edgeemb.sources.catalog import catalog
from edgeemb.table import EmbeddingTable


@dataclass(frozen=True)
class EvaluationData:
    """The user's evaluation data, by path: STS TSV, BEIR folder, plain text (one text per line)
    for sentence-embedding models; plain text for the perplexity of causal LMs."""

    sts: Path | None = None
    beir: Path | None = None
    texts: Path | None = None
    perplexity: Path | None = None
    max_tokens: int = 4096

    def sentence_data(self) -> bool:
        return any((self.sts, self.beir, self.texts))

    def merged_over(self, recipe: Recipe) -> EvaluationData:
        """These paths, falling back to the ones the recipe names."""
        paths = {key: getattr(self, key) or (Path(recipe.evaluate[key]) if key in recipe.evaluate else None) for key in _DATA_KEYS}
        return EvaluationData(**paths, max_tokens=self.max_tokens)


_DATA_KEYS = ("sts", "beir", "texts", "perplexity")


@dataclass(frozen=True)
class CompressResult:
    out: Path
    manifest: dict
    report: dict
    export: dict | None = None  # export_artifact's report, when the recipe asks for an export


def model_facts(model: SourceModel) -> dict:
    return {
        "name": model.name,
        "path": str(model.path),
        "format": model.format,
        "architecture": model.architecture,
        "tensor": model.tensor_name,
        "vocab": model.vocab_size,
        "dim": model.dim,
        "stored_dtype": model.stored_dtype,
        "table_bytes": model.stored_nbytes,
        "table_params": model.table_params,
        "total_params": model.total_params,
        "total_bytes": model.total_nbytes,
        "table_share_of_params": model.table_params / model.total_params,
        "table_share_of_bytes": model.stored_nbytes / model.total_nbytes,
        "tied": model.tied,
    }


def table_facts(table: EmbeddingTable, model: SourceModel) -> dict:
    return {
        "storage": table.describe(),
        "bytes": table.nbytes,
        "bits_per_param": table.bits_per_param,
        "ratio_vs_source": model.stored_nbytes / table.nbytes,
        "ratio_vs_fp32": 4 * model.table_params / table.nbytes,
        "arrays": {name: {"shape": list(a.shape), "dtype": a.dtype.name, "bytes": a.nbytes} for name, a in table.arrays().items()},
    }


def evaluate_quality(model: SourceModel, table: EmbeddingTable, data: EvaluationData = EvaluationData()) -> dict:
    """Table-level figures always; model-level ones (STS, retrieval, drift) for the data given."""
    from edgeemb.evaluate.table import table_quality

    quality: dict = {"table": asdict(table_quality(model.table.weight, table))}
    if data.perplexity is not None:
        quality["perplexity"] = _perplexity(model, table, data.perplexity, data.max_tokens)
    if not data.sentence_data():
        return quality
    if model.format != "sentence-transformers":
        raise EdgeembError(
            f"{model.name} is a {model.format} model: STS, retrieval and text drift need a sentence-embedding model"
        )
    from edgeemb.evaluate.data import read_beir, read_sts, read_texts
    from edgeemb.evaluate.encoder import memoize, sentence_encoder
    from edgeemb.evaluate.sentence import embedding_drift, retrieval, sts_spearman

    sts = read_sts(data.sts) if data.sts else None
    beir = read_beir(data.beir) if data.beir else None
    texts = read_texts(data.texts) if data.texts else None
    encoder = sentence_encoder(model.path, model.sha256)
    original = encoder.original
    compressed = memoize(encoder.encoder(table.to_dense(), "encode (compressed)"))
    if sts is not None:
        before, after = sts_spearman(original, sts), sts_spearman(compressed, sts)
        quality["sts"] = {**_data_facts(data.sts), "pairs": len(sts.scores), "original": before, "compressed": after, "delta": after - before}
    if beir is not None:
        before, after = retrieval(original, beir), retrieval(compressed, beir)
        quality["retrieval"] = {**_data_facts(data.beir / "qrels" / "test.tsv"), "original": asdict(before), "compressed": asdict(after)}
    if texts is None:
        texts = sorted(set(sts.sentences1) | set(sts.sentences2)) if sts is not None else list(beir.query_texts)
    quality["drift"] = asdict(embedding_drift(original, compressed, texts))
    return quality


def _perplexity(model: SourceModel, table: EmbeddingTable, text: Path, max_tokens: int) -> dict:
    """Perplexity of the causal LM with its original and its compressed table (transformers)."""
    if model.tied is None:
        raise EdgeembError(f"{model.name} is a sentence-embedding model: perplexity needs a causal LM (GGUF or Hugging Face)")
    from edgeemb.evaluate.data import read_text
    from edgeemb.evaluate.perplexity import CausalLM

    lm = CausalLM(model.path)
    ids = lm.tokens(read_text(text), max_tokens)
    before, after = lm.perplexity(ids), lm.perplexity(ids, table.to_dense())
    return {
        **_data_facts(text), "runtime": "transformers", "tokens_scored": after.tokens_scored, "window": after.window,
        "original": before.perplexity, "compressed": after.perplexity, "delta": after.perplexity - before.perplexity,
    }


def compress(
    model: str | Path | SourceModel | None = None,
    recipe: str | Path | Recipe | None = None,
    out: str | Path | None = None,
    *,
    force: bool = False,
    data: EvaluationData = EvaluationData(),
) -> CompressResult:
    """Run `recipe` on `model`'s embedding table, evaluate it, and write OUT/ atomically."""
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    source = model if isinstance(model, SourceModel) else open_model(model)
    out = Path(out) if out is not None else default_out(source, recipe)
    check_writable(out, force)
    data = data.merged_over(recipe)

    table = recipe.apply(source.table, PassContext(source.tokens, source.tokenize))
    report = {
        "edgeemb_version": __version__,
        "model": model_facts(source),
        "recipe": {"name": recipe.name, "digest": recipe.digest},
        "table": table_facts(table, source),
        "quality": evaluate_quality(source, table, data),
    }
    manifest = {
        "edgeemb_version": __version__,
        "source": {"name": source.name, "path": str(source.path.resolve()), "sha256": source.sha256},
        "recipe": {**recipe.to_dict(), "digest": recipe.digest},
        "table": {"file": "table.safetensors", "shape": list(table.shape), "storage": table.describe(), "bytes": table.nbytes},
        "source_table": {"tensor": source.tensor_name, "dtype": source.stored_dtype, "bytes": source.stored_nbytes},
    }
    write_artifact(out, table, manifest, report, render_report(report), force)
    exported = None
    if recipe.export is not None:
        exported = export_artifact(out, tensor_type=recipe.export.type, text=data.perplexity, max_tokens=data.max_tokens)
    return CompressResult(out, manifest, report, exported)


def open_source(artifact: Artifact) -> SourceModel:
    """The source model OUT/ was compressed from, checked unchanged by its sha256."""
    source_info = artifact.manifest["source"]
    source = open_model(source_info["name"] if source_info["name"] in catalog() else source_info["path"])
    if source.sha256 != source_info["sha256"]:
        raise EdgeembError(f"{artifact.path}: the source model {source_info['name']} changed since it was compressed (sha256 differs)")
    return source


def evaluate_artifact(out: str | Path, data: EvaluationData = EvaluationData()) -> dict:
    """Recompute the quality of OUT/ against its source model, which must be unchanged."""
    artifact = load_artifact(Path(out))
    source = open_source(artifact)
    return {
        "model": model_facts(source),
        "table": table_facts(artifact.table, source),
        "quality": evaluate_quality(source, artifact.table, data),
    }


def default_out(model: SourceModel, recipe: Recipe) -> Path:
    stem = model.name if model.name in catalog() else Path(model.name).stem
    return Path("edgeemb-out") / f"{stem}-{recipe.name}"


def _data_facts(path: Path) -> dict:
    return {"data": str(path), "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def export_artifact(
    out: str | Path, file: str | Path | None = None, *, tensor_type: str | None = None, force: bool = False,
    text: Path | None = None, max_tokens: int = 8192,
) -> dict:
    """Export OUT/ as a GGUF for llama.cpp (its source must be a GGUF) and verify it there.

    Verification loads the export and the source in llama.cpp, each in its own process: greedy
    output on a fixed prompt, decode tokens/s and peak RSS, and with `text` the perplexity of
    both on the same tokens. A file llama.cpp cannot run is removed and the export fails."""
    from edgeemb.evaluate.data import read_text
    from edgeemb.evaluate.llamacpp import measure_ggufs
    from edgeemb.export.gguf import export_gguf

    artifact = load_artifact(Path(out))
    source = open_source(artifact)
    if source.format != "gguf":
        raise EdgeembError(
            f"{source.name} is a {source.format} model: GGUF export rewrites a source GGUF "
            "(make one with llama.cpp's convert_hf_to_gguf.py, then compress that file)"
        )
    file = Path(file) if file is not None else artifact.path / "model.gguf"
    exported = export_gguf(source.path, artifact.table, file, tensor_type, force)
    try:
        source_run, export_run = measure_ggufs([source.path, file], read_text(text) if text else None, max_tokens)
    except BaseException:
        file.unlink(missing_ok=True)
        raise
    agree = next((i for i, (a, b) in enumerate(zip(source_run.greedy_ids, export_run.greedy_ids)) if a != b), len(export_run.greedy_ids))
    return {
        "export": asdict(exported),
        "verify": {
            "runtime": "llama.cpp (llama-cpp-python)",
            "greedy_tokens_equal_to_source": agree,
            "source": asdict(source_run),
            "export": asdict(export_run),
            **({"text": _data_facts(text)} if text else {}),
        },
    }
