"""The main path: model -> recipe -> compressed table -> quality report -> OUT/.

    from edgeemb.pipeline import compress
    result = compress("minilm", "int4", "out/minilm-int4")
    result.report["table"]["ratio_vs_source"]
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING
from pathlib import Path

import numpy as np

from edgeemb import __version__
from edgeemb.artifact import MANIFEST_FILE, Artifact, load_artifact, write_artifact_files, write_report_files
from edgeemb.errors import EdgeembError
from edgeemb.outputs import check_target, staged
from edgeemb.steps import StepContext
from edgeemb.recipe import ExportConfig, OffloadPlan, Recipe, load_recipe, parse_recipe
from edgeemb.report.markdown import render_report
from edgeemb.sources import SourceModel, open_model
from edgeemb.sources.catalog import catalog
from edgeemb.table import EmbeddingTable, TrimmedTable

if TYPE_CHECKING:
    from edgeemb.offload import OffloadConfig, OffloadReport
    from edgeemb.steps.trim import TrimConfig


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


def table_facts(table: EmbeddingTable, model: SourceModel, replaces_model: bool = False) -> dict:
    """The table's storage and bytes; `model_bytes` is the whole model with this table (a static
    model's table is all of it)."""
    return {
        "storage": table.describe(),
        "bytes": table.nbytes,
        "model_bytes": table.nbytes if replaces_model else model.total_nbytes - model.stored_nbytes + table.nbytes,
        **({"replaces_model": "a static model (model2vec): the table is the whole model, not its input table"} if replaces_model else {}),
        "bits_per_param": table.bits_per_param,
        "ratio_vs_source": model.stored_nbytes / table.nbytes,
        "ratio_vs_fp32": 4 * model.table_params / table.nbytes,
        "arrays": {name: {"shape": list(a.shape), "dtype": a.dtype.name, "bytes": a.nbytes} for name, a in table.arrays().items()},
        **({"vocabulary": {**table.facts, "source_bytes_of_dropped_rows": model.stored_nbytes * (model.vocab_size - len(table.keep)) // model.vocab_size}}
           if isinstance(table, TrimmedTable) else {}),
    }


def evaluate_quality(model: SourceModel, table: EmbeddingTable, data: EvaluationData = EvaluationData(), replaces_model: bool = False) -> dict:
    """Table-level figures always; model-level ones (STS, retrieval, drift) for the data given.

    A static model's table (`replaces_model`) lives in another space than the input table, so it
    has no table-level figures and no drift; it is scored as the static model it is."""
    from edgeemb.evaluate.table import table_quality

    original = model.table.weight[table.keep] if isinstance(table, TrimmedTable) else model.table.weight
    quality: dict = {"table": {} if replaces_model else asdict(table_quality(original, table))}
    if data.perplexity is not None:
        quality["perplexity"] = _perplexity(model, table, data.perplexity, data.max_tokens)
    if not data.sentence_data():
        return quality
    if model.format != "sentence-transformers":
        raise EdgeembError(
            f"{model.name} is a {model.format} model: STS, retrieval and text drift need a sentence-embedding model"
        )
    from edgeemb.evaluate.data import read_beir, read_sts, read_texts
    from edgeemb.evaluate.encoder import memoize, sentence_encoder, static_encoder, unk_id
    from edgeemb.evaluate.sentence import embedding_drift, retrieval, sts_spearman

    sts = read_sts(data.sts) if data.sts else None
    beir = read_beir(data.beir) if data.beir else None
    texts = read_texts(data.texts) if data.texts else None
    encoder = sentence_encoder(model.path, model.sha256)
    original = encoder.original
    if replaces_model:
        compressed = memoize(static_encoder(table, model.tokenize, unk_id(model.tokens)))
    else:
        compressed = memoize(encoder.encoder(table.to_dense(), "encode (compressed)", _tokenizer_json(model, table)))
    if sts is not None:
        before, after = sts_spearman(original, sts), sts_spearman(compressed, sts)
        quality["sts"] = {**_data_facts(data.sts), "pairs": len(sts.scores), "original": before, "compressed": after, "delta": after - before}
    if beir is not None:
        before, after = retrieval(original, beir), retrieval(compressed, beir)
        quality["retrieval"] = {**_data_facts(data.beir / "qrels" / "test.tsv"), "original": asdict(before), "compressed": asdict(after)}
    if replaces_model:
        return quality
    if texts is None:
        texts = sorted(set(sts.sentences1) | set(sts.sentences2)) if sts is not None else list(beir.query_texts)
    quality["drift"] = asdict(embedding_drift(original, compressed, texts))
    return quality


def _tokenizer_json(model: SourceModel, table: EmbeddingTable) -> str | None:
    """The tokenizer.json of a trimmed table's vocabulary (None for an untrimmed table)."""
    if not isinstance(table, TrimmedTable):
        return None
    from edgeemb.sources.hf import trimmed_tokenizer_json

    return trimmed_tokenizer_json(model.path, table.keep)


def _perplexity(model: SourceModel, table: EmbeddingTable, text: Path, max_tokens: int) -> dict:
    """Perplexity of the causal LM with its original and its compressed table (transformers)."""
    if model.tied is None:
        raise EdgeembError(f"{model.name} is a sentence-embedding model: perplexity needs a causal LM (GGUF or Hugging Face)")
    if isinstance(table, TrimmedTable):
        raise EdgeembError("a trimmed vocabulary's perplexity is measured in llama.cpp, by bits per byte: give the recipe a GGUF export (export: {format: gguf})")
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
    calibration: Path | None = None,
    calibration_tokens: int = 2048,
) -> CompressResult:
    """Run `recipe` on `model`'s embedding table, evaluate it, and write OUT/ atomically.

    `calibration`: plain text on which steps that ask for it (`quantize: {importance: head}`)
    measure the model's activations; keep it apart from the text you evaluate on."""
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    source = model if isinstance(model, SourceModel) else open_model(model)
    out = Path(out) if out is not None else default_out(source, recipe)
    check_target(out, force)
    data = data.merged_over(recipe)

    table = recipe.apply(source.table, step_context(source, calibration, calibration_tokens))
    # A GGUF export is verified in llama.cpp, perplexity included: that figure, from the runtime
    # the file is for, replaces the transformers one (and saves running both).
    gguf_perplexity = recipe.export is not None and recipe.export.format == "gguf" and data.perplexity is not None
    report = {
        "edgeemb_version": __version__,
        "model": model_facts(source),
        "recipe": {"name": recipe.name, "digest": recipe.digest},
        "table": table_facts(table, source, recipe.replaces_model),
        "quality": evaluate_quality(source, table, replace(data, perplexity=None) if gguf_perplexity else data, recipe.replaces_model),
    }
    manifest = {
        "edgeemb_version": __version__,
        "source": {"name": source.name, "path": str(source.path.resolve()), "sha256": source.sha256},
        "recipe": {**recipe.to_dict(), "digest": recipe.digest},
        "table": {"file": "table.safetensors", "shape": list(table.shape), "storage": table.describe(), "bytes": table.nbytes},
        "source_table": {"tensor": source.tensor_name, "dtype": source.stored_dtype, "bytes": source.stored_nbytes},
        **({"calibration": {**_data_facts(calibration), "max_tokens": calibration_tokens}} if calibration else {}),
    }
    exported = None
    # OUT/ is written aside and put in place only once complete, its export written and verified:
    # a failure at any step leaves nothing, and an OUT/ it was to replace as it was.
    with staged(out, force) as staging:
        write_artifact_files(staging, table, manifest, report, render_report(report))
        if recipe.export is not None:
            # The source and table in hand: no second load of the model, nor of OUT/.
            text = data.perplexity if recipe.export.format == "gguf" else data.texts
            file = staging / _EXPORT_FILES[recipe.export.format]
            exported = _moved(export_table(source, table, file, recipe.export, text=text, max_tokens=data.max_tokens), staging, out)
            report["export"] = exported
            if gguf_perplexity:
                report["quality"]["perplexity"] = _llama_perplexity(exported["verify"])
            write_report_files(staging, report, render_report(report))
    return CompressResult(out, manifest, report, exported)


def _moved(data: dict, old: Path, new: Path) -> dict:
    """`data` with the paths under `old` (an output being staged) as they are once it is `new`."""
    return json.loads(json.dumps(data).replace(json.dumps(str(old))[1:-1], json.dumps(str(new))[1:-1]))


def _llama_perplexity(verify: dict) -> dict:
    """quality.perplexity from a GGUF export's verification: source and export on the same text.

    A trimmed vocabulary tokenises that text its own way, so the two compare by bits per byte;
    `compressed` is then the export's perplexity per source token (its bits per byte at the
    source's bytes per token), which equals its own perplexity when the tokens are the same."""
    from edgeemb.evaluate.perplexity import Perplexity

    before, after = verify["source"]["perplexity"], verify["export"]["perplexity"]
    bits = {"original": Perplexity(**before).bits_per_byte, "compressed": Perplexity(**after).bits_per_byte}
    source_bytes_per_token = before["bytes_scored"] / before["tokens_scored"]
    compressed = math.exp(bits["compressed"] * math.log(2) * source_bytes_per_token)
    return {
        **verify["text"], "runtime": "llama.cpp", "tokens_scored": before["tokens_scored"], "window": after["window"],
        "original": before["perplexity"], "compressed": compressed, "delta": compressed - before["perplexity"],
        "bits_per_byte": {**bits, "delta": bits["compressed"] - bits["original"]},
        **({"compressed_tokens_scored": after["tokens_scored"], "compressed_per_own_token": after["perplexity"]}
           if after["tokens_scored"] != before["tokens_scored"] else {}),
    }


def trim_preview(model: str | Path | SourceModel | None, config: TrimConfig) -> dict:
    """What `trim_vocab` with `config` keeps of `model`'s vocabulary, and the bytes its table
    would take as the source stores it; nothing is written."""
    from edgeemb.steps.trim import trim_vocab

    source = model if isinstance(model, SourceModel) else open_model(model)
    trimmed = trim_vocab(source.table, config, step_context(source))
    kept_bytes = source.stored_nbytes * len(trimmed.keep) // source.vocab_size
    dropped = np.setdiff1d(np.arange(source.vocab_size), trimmed.keep)
    spread = dropped[:: max(1, len(dropped) // 12)][:12]  # a dozen, from across the vocabulary
    return {
        "model": model_facts(source), "policy": config.model_dump(mode="json"), **trimmed.facts,
        "table_bytes": kept_bytes, "model_bytes": source.total_nbytes - source.stored_nbytes + kept_bytes,
        "examples_dropped": [source.tokens[i] for i in spread] if source.tokens else [],
    }


def step_context(source: SourceModel, calibration: Path | None = None, calibration_tokens: int = 2048) -> StepContext:
    """What the steps may know of `source` beyond its table, with calibration text if given."""
    head_importance = None
    if calibration is not None and source.head_input_power is not None:
        from edgeemb.evaluate.data import read_text

        text = read_text(calibration)
        head_importance = functools.cache(lambda: source.head_input_power(text, calibration_tokens))
    return StepContext(source.tokens, source.tokenize, head_importance, Path(source.path), source.format, source.vocabulary)


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
    static = _replaces_model(artifact)
    return {
        "model": model_facts(source),
        "table": table_facts(artifact.table, source, static),
        "quality": evaluate_quality(source, artifact.table, data, static),
    }


def artifact_recipe(artifact: Artifact) -> Recipe:
    """The recipe OUT/ was made with, as its manifest records it (validated again)."""
    recorded = {key: value for key, value in artifact.manifest["recipe"].items() if key != "digest"}
    return parse_recipe(recorded, origin=f"{artifact.path / MANIFEST_FILE}")


def _replaces_model(artifact: Artifact) -> bool:
    return artifact_recipe(artifact).replaces_model


def default_out(model: SourceModel, recipe: Recipe) -> Path:
    stem = model.name if model.name in catalog() else Path(model.name).stem
    return Path("edgeemb-out") / f"{stem}-{recipe.name}"


def _data_facts(path: Path) -> dict:
    return {"data": str(path), "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def export_artifact(
    out: str | Path, config: ExportConfig = ExportConfig(format="gguf"), file: str | Path | None = None, *,
    force: bool = False, text: Path | None = None, max_tokens: int = 8192, onnx_source: Path | None = None,
) -> dict:
    """Export OUT/ to a file a device runtime loads, then verify it there; a file that fails
    verification is removed. Returns the export's and the verification's figures.

    - gguf: the source GGUF with token_embd rewritten, run in llama.cpp beside the source (greedy
      output, decode tokens/s, peak RSS; with `text`, perplexity on its first `max_tokens` tokens).
    - onnx: the whole sentence-embedding model with the table in the graph (or, with
      `onnx_source`, that ONNX file with its embedding Gather rewritten), run in onnxruntime against
      PyTorch and the original model on `text`'s lines (built-in sentences without it).
    - st: a sentence-transformers directory with the table decoded into it, loaded back with
      `SentenceTransformer(path)` offline and compared with the compressed model on those lines."""
    artifact = load_artifact(Path(out))
    if _replaces_model(artifact):
        raise EdgeembError(f"{out} holds a static model (model2vec), not an input table for its source model: there is nothing to export into the source's file")
    file = Path(file) if file is not None else artifact.path / _EXPORT_FILES[config.format]
    return export_table(open_source(artifact), artifact.table, file, config, force=force, text=text, max_tokens=max_tokens, onnx_source=onnx_source)


_EXPORT_FILES = {"gguf": "model.gguf", "onnx": "model.onnx", "st": "sentence-transformers"}


def export_table(
    source: SourceModel, table: EmbeddingTable, file: Path, config: ExportConfig, *,
    force: bool = False, text: Path | None = None, max_tokens: int = 8192, onnx_source: Path | None = None,
) -> dict:
    """`export_artifact` for a table and its source model already in memory."""
    export = {"gguf": _export_gguf, "onnx": _export_onnx, "st": _export_st}[config.format]
    return export(source, table, Path(file), config, force, text, max_tokens, onnx_source)


def _export_gguf(source: SourceModel, table: EmbeddingTable, file: Path, config: ExportConfig, force: bool,
                 text: Path | None, max_tokens: int, onnx_source: Path | None) -> dict:
    from edgeemb.evaluate.data import read_text
    from edgeemb.evaluate.llamacpp import greedy_agreement, measure_ggufs
    from edgeemb.export.gguf import export_gguf

    if source.format != "gguf":
        raise EdgeembError(
            f"{source.name} is a {source.format} model: GGUF export rewrites a source GGUF "
            "(make one with llama.cpp's convert_hf_to_gguf.py, then compress that file)"
        )
    with staged(file, force) as staging:  # the file replaces an earlier one only once verified
        exported = export_gguf(source.path, table, staging, config.type)
        source_run, export_run = measure_ggufs([source.path, staging], read_text(text) if text else None, max_tokens)
    return _moved({
        "export": {"format": "gguf", **asdict(exported)},
        "verify": {
            "runtime": "llama.cpp (llama-cpp-python)",
            "greedy_tokens_equal_to_source": greedy_agreement(source_run, export_run),
            "source": asdict(source_run),
            "export": asdict(export_run),
            **({"text": _data_facts(text)} if text else {}),
        },
    }, staging, file)


def _export_onnx(source: SourceModel, table: EmbeddingTable, file: Path, config: ExportConfig, force: bool,
                 text: Path | None, max_tokens: int, onnx_source: Path | None) -> dict:
    from edgeemb.evaluate.data import read_texts
    from edgeemb.export.onnx import SAMPLE_TEXTS, compress_onnx, export_onnx, tokenizer_beside, verify_onnx

    if source.format != "sentence-transformers":
        raise EdgeembError(f"{source.name} is a {source.format} model: the ONNX export is for sentence-embedding models (GGUF models export to GGUF)")
    with staged(file, force) as staging:  # the file replaces an earlier one only once verified
        if onnx_source is not None:
            exported = compress_onnx(onnx_source, table, staging, quantize_rest=config.quantize_rest)
        else:
            exported = export_onnx(source, table, staging, quantize_rest=config.quantize_rest)
        verified = verify_onnx(staging, source, table, read_texts(text) if text else SAMPLE_TEXTS)
        if verified.checker != "ok":
            raise EdgeembError(f"{file}: onnx.checker rejects the export: {verified.checker}")
        if isinstance(table, TrimmedTable):  # the graph's ids are the trimmed vocabulary's
            tokenizer_beside(staging).write_text(_tokenizer_json(source, table))
            exported = replace(exported, tokenizer=tokenizer_beside(file))  # where it is once in place
    return _moved({
        "export": {"format": "onnx", **asdict(exported), "path": str(exported.path), "tokenizer": exported.tokenizer and str(exported.tokenizer),
                   **({"from": str(onnx_source)} if onnx_source else {})},
        "verify": {"runtime": "onnxruntime", **asdict(verified), "path": str(verified.path), **({"text": _data_facts(text)} if text else {})},
    }, staging, file)


def _export_st(source: SourceModel, table: EmbeddingTable, file: Path, config: ExportConfig, force: bool,
               text: Path | None, max_tokens: int, onnx_source: Path | None) -> dict:
    from sentence_transformers import SentenceTransformer

    from edgeemb.evaluate.data import read_texts
    from edgeemb.evaluate.encoder import sentence_encoder
    from edgeemb.export.onnx import SAMPLE_TEXTS
    from edgeemb.export.st import export_sentence_transformers

    with staged(file, force) as staging:  # the folder replaces an earlier one only once verified
        exported = export_sentence_transformers(source, table, staging)
        texts = read_texts(text) if text else list(SAMPLE_TEXTS)
        loaded = SentenceTransformer(str(staging), device="cpu", local_files_only=True)
        got = loaded.encode(texts, convert_to_numpy=True, show_progress_bar=False)
        want = sentence_encoder(source.path, source.sha256).encoder(table.to_dense(), "encode (compressed)", _tokenizer_json(source, table))(texts)
    return _moved({
        "export": {"format": "st", "path": str(exported.path), "file_bytes": exported.bytes, "table": exported.table},
        "verify": {"runtime": "sentence-transformers", "texts": len(texts), "max_abs_diff": float(np.abs(got - want).max())},
    }, staging, file)


def offload(
    model: str | Path | None, text: Path, config: OffloadConfig, *, layout: str = "single", layers: int | None = None,
    max_tokens: int = 512, calibration: Path | None = None, calibration_tokens: int | None = None, head_type: str | None = None,
    store: Path | None = None, force: bool = False, runtime: bool = False,
) -> dict:
    """Emulate streaming the embedding table of `model` (a model, or an OUT/ folder: its
    compressed table) from flash while `text` is decoded; see `edgeemb.offload`.

    A tied table also serves the output head, which reads every row for every generated token:
    offloading its input lookups means keeping a separate head in RAM, counted here at the
    table's own size or, with `head_type`, quantised to that format. With `runtime`, the GGUF
    (the model itself, or OUT/model.gguf) is also run in llama.cpp with mmap on and off."""
    from edgeemb.evaluate.data import read_text
    from edgeemb.offload import Layout, emulate_offload, load_profile, source_rows, table_rows, write_store

    artifact = load_artifact(Path(model)) if model is not None and (Path(model) / MANIFEST_FILE).is_file() else None
    source = open_source(artifact) if artifact else open_model(model)
    table = artifact.table if artifact else source.table
    if source.tokenize is None:
        raise EdgeembError(f"{source.name}: no tokenizer found beside the model, so a text cannot become token ids")
    gguf = _runtime_gguf(source, artifact) if runtime else None
    page_sizes = {load_profile(name).page_size for name in config.profiles}
    if len(page_sizes) != 1:
        raise EdgeembError(f"the profiles read pages of different sizes ({sorted(page_sizes)}); emulate them in separate runs")
    if layout != "single" and layers is None:
        layers = source.layers
        if layers is None:
            raise EdgeembError(f"{source.name} does not say how many layers it has; give --layers for the {layout} layout")
    tokenize = table_tokenizer(source, table)
    rows = table_rows(table) if artifact else source_rows(source)
    shape = Layout(layout, rows.records.shape[0], rows.records.shape[1], page_sizes.pop(), layers or 1)  # type: ignore[arg-type]
    tokens = np.asarray(tokenize(read_text(text))[:max_tokens])
    calibration_ids = np.asarray(tokenize(read_text(calibration))[:calibration_tokens]) if calibration else None
    head_bytes, head = _offloaded_head(source, table, rows.nbytes, head_type)

    def run(store_file: Path | None) -> OffloadReport:
        return emulate_offload(rows, shape, tokens, config, head_bytes=head_bytes, head=head, calibration=calibration_ids, store=store_file)

    if config.mode == "real" and store is None:  # real mode reads a store; without --store, a temporary one
        import tempfile

        with tempfile.TemporaryDirectory(prefix="edgeemb-store-", dir=Path.cwd()) as folder:
            write_store(Path(folder) / "table.store", rows, shape)
            report = run(Path(folder) / "table.store")
    else:
        if store is not None:
            write_store(store, rows, shape, force)
        report = run(store)
    result = {"model": model_facts(source), "source": str(artifact.path) if artifact else source.name, "offload": report.to_dict()}
    if gguf is not None:
        result["runtime"] = _mmap_runtime(gguf, text, max_tokens)
    return result


def table_tokenizer(source: SourceModel, table: EmbeddingTable):
    """text -> the ids `table` is indexed by: the source's tokenizer, or a trimmed vocabulary's."""
    if not isinstance(table, TrimmedTable):
        return source.tokenize
    if source.vocabulary is None:
        raise EdgeembError(f"{source.name}: the trimmed vocabulary's tokenizer cannot be rebuilt (no tokenizer found beside the model)")
    return source.vocabulary().retokenizer(table.keep)


def offload_plan(model: str | Path | None) -> OffloadPlan | None:
    """The recipe's `offload:` plan of an OUT/ folder (None for a model, or a recipe without one)."""
    if model is None or not (Path(model) / MANIFEST_FILE).is_file():
        return None
    return artifact_recipe(load_artifact(Path(model))).offload


def _offloaded_head(source: SourceModel, table: EmbeddingTable, table_bytes: int, head_type: str | None) -> tuple[int, dict]:
    """RAM an output head needs once the table's input lookups move to flash."""
    if not source.tied:
        if head_type:
            raise EdgeembError(f"{source.name} has no output head tied to its table; --head-type applies to tied tables")
        return 0, {"tied": bool(source.tied), "note": "the table is input-only: nothing of it has to stay in RAM"}
    if head_type is None:
        return table_bytes, {"tied": True, "type": "as stored", "note": "the head reads every row per generated token, so a tied table stays whole in RAM: offloading it saves nothing unless the head is stored apart (--head-type)"}
    from edgeemb.formats import get_format

    fmt = get_format(head_type)
    if fmt.shared:
        raise EdgeembError(f"--head-type {head_type}: a head needs a row-wise format, not one with a shared codebook")
    sample = table.lookup(np.arange(min(256, table.shape[0])))
    per_row = sum(a.nbytes for a in fmt.quantize(sample).values()) / len(sample)
    return int(per_row * table.shape[0]), {"tied": True, "type": fmt.describe(), "note": "a separate head in RAM; its quality cost is not measured here (compress and evaluate it)"}


def _runtime_gguf(source: SourceModel, artifact: Artifact | None) -> Path:
    """The GGUF file llama.cpp runs for `offload --runtime`: the model, or OUT/model.gguf."""
    gguf = artifact.path / "model.gguf" if artifact else Path(source.path)
    if source.format != "gguf" or not gguf.is_file():
        raise EdgeembError("the llama.cpp runtime check needs a GGUF model" + (f" (export OUT/ first: edgeemb export {artifact.path} --format gguf)" if artifact else ""))
    return gguf


def _mmap_runtime(gguf: Path, text: Path, max_tokens: int) -> list[dict]:
    """The GGUF run in llama.cpp with mmap on and off: peak RSS, resident file pages, tokens/s."""
    from edgeemb.evaluate.data import read_text
    from edgeemb.evaluate.llamacpp import measure_ggufs

    runs = measure_ggufs([gguf, gguf], read_text(text), max_tokens, options=[{"use_mmap": True}, {"use_mmap": False}])
    return [
        {"file": str(gguf), "use_mmap": run.options["use_mmap"], "peak_rss_bytes": run.peak_rss_bytes, "rss_file_bytes": run.rss_file_bytes,
         "rss_anon_bytes": run.rss_anon_bytes, "decode_tokens_per_s": run.decode_tokens_per_s, "prefill_tokens_per_s": run.prefill_tokens_per_s,
         "load_seconds": run.load_seconds}
        for run in runs
    ]
