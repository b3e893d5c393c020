"""The main path: model -> recipe -> compressed table -> quality report -> OUT/.

    from edgeemb.pipeline import compress
    result = compress("minilm", "int4", "out/minilm-int4")
    result.report.table.ratio_vs_source

The report is typed (`edgeemb.results`); each export format's writing and verification is its
exporter's (`edgeemb.export.exporters`), flash offload is `edgeemb.offload.run`.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from edgeemb import __version__
from edgeemb.artifact import (
    MANIFEST_FILE,
    REPORT_FILE,
    REPORT_MD_FILE,
    TABLE_FILE,
    Artifact,
    load_artifact,
    write_artifact_files,
    write_report_files,
)
from edgeemb.errors import EdgeembError
from edgeemb.evaluate.data import (
    RELATIONS,
    BeirData,
    Probes,
    StsData,
    WordPairs,
    read_beir,
    read_probes,
    read_sts,
    read_text,
    read_texts,
    read_word_pairs,
)
from edgeemb.evaluate.encoder import (
    Encode,
    SentenceEncoder,
    SpanEncode,
    memoize,
    sentence_encoder,
    static_encoder,
    unk_id,
)
from edgeemb.evaluate.perplexity import CausalLM, Perplexity
from edgeemb.evaluate.probes import SPAN_VECTOR, builtin_probes, probe_cosines, separations
from edgeemb.evaluate.sentence import embedding_drift, retrieval_by_similarity, sts_by_similarity, sts_texts
from edgeemb.evaluate.similarity import SIMILARITIES, Cosine, Similarity, similarity
from edgeemb.evaluate.table import table_quality
from edgeemb.evaluate.words import (
    CONTEXTUAL_VECTOR,
    STATIC_VECTOR,
    contextual_vectors,
    coverage,
    static_vectors,
    word_pieces,
    word_spearman,
)
from edgeemb.export.exporters import EXPORTERS, export_table
from edgeemb.export.request import ExportRequest, tokenizer_json
from edgeemb.outputs import check_target, staged
from edgeemb.recipe import ExportConfig, Recipe, load_recipe, parse_recipe
from edgeemb.report.markdown import human_bytes, render_report
from edgeemb.results import (
    ArrayFacts,
    BitsPerByte,
    CalibrationRecord,
    DataFile,
    Drift,
    Evaluation,
    Exported,
    GGUFCheck,
    Manifest,
    ModelFacts,
    PerplexityQuality,
    ProbeQuality,
    ProbeSeparation,
    Quality,
    RecipeRef,
    RelationCosine,
    Report,
    RetrievalQuality,
    RetrievalScores,
    RetrievalSimilarity,
    SimilarityFit,
    SourceRecord,
    SourceTableRecord,
    StsQuality,
    StsSimilarity,
    TableFacts,
    TableQuality,
    TableRecord,
    TrimPreview,
    VocabularyFacts,
    WordQuality,
    relocated,
)
from edgeemb.sources import SourceModel, open_model
from edgeemb.sources.catalog import catalog
from edgeemb.steps import StepContext
from edgeemb.steps.trim import TrimConfig, trim_vocab
from edgeemb.table import EmbeddingTable, TrimmedTable, require_finite


@dataclass(frozen=True)
class EvaluationData:
    """The user's evaluation data, by path: STS TSV, BEIR folder, plain text (one text per line)
    for sentence-embedding models; plain text for the perplexity of causal LMs; word-similarity
    TSVs and context probes for the health check; and the similarities STS and retrieval are
    scored with besides cosine (`edgeemb.evaluate.similarity`)."""

    sts: Path | None = None
    beir: Path | None = None
    texts: Path | None = None
    perplexity: Path | None = None
    max_tokens: int = 4096
    words: tuple[Path, ...] = ()
    probes: Path | None = None
    builtin_probes: bool = False
    similarities: tuple[str, ...] = ()
    fit_text: Path | None = None
    csls_k: int = 10
    prompts: tuple[str, ...] = ()  # ROLE=NAME overrides of PROMPT_ROLES' defaults (NAME none: no prompt)

    def sentence_data(self) -> bool:
        return any((self.sts, self.beir, self.texts, self.probes, self.builtin_probes))

    def merged_over(self, recipe: Recipe) -> EvaluationData:
        """These paths, falling back to the ones the recipe names in its `evaluate:`."""
        paths = {
            key: getattr(self, key) or (Path(recipe.evaluate[key]) if key in recipe.evaluate else None)
            for key in _DATA_KEYS
        }
        return replace(self, **paths)


_DATA_KEYS = ("sts", "beir", "texts", "perplexity")


@dataclass(frozen=True)
class CompressResult:
    out: Path
    manifest: Manifest
    report: Report

    @property
    def export(self) -> Exported | None:
        """The recipe's export and its verification, when the recipe asks for one."""
        return self.report.export


def model_facts(model: SourceModel) -> ModelFacts:
    return ModelFacts(
        name=model.name,
        path=str(model.path),
        format=model.format,
        architecture=model.architecture,
        tensor=model.tensor_name,
        vocab=model.vocab_size,
        dim=model.dim,
        stored_dtype=model.stored_dtype,
        table_bytes=model.stored_nbytes,
        table_params=model.table_params,
        total_params=model.total_params,
        total_bytes=model.total_nbytes,
        table_share_of_params=model.table_params / model.total_params,
        table_share_of_bytes=model.stored_nbytes / model.total_nbytes,
        tied=model.tied,
    )


def table_facts(table: EmbeddingTable, model: SourceModel, replaces_model: bool = False) -> TableFacts:
    """The table's storage and bytes; `model_bytes` is the whole model with this table (a static
    model's table is all of it)."""
    vocabulary = None
    if isinstance(table, TrimmedTable):
        dropped_bytes = model.stored_nbytes * (model.vocab_size - len(table.keep)) // model.vocab_size
        vocabulary = VocabularyFacts(**table.facts, source_bytes_of_dropped_rows=dropped_bytes)
    return TableFacts(
        storage=table.describe(),
        bytes=table.nbytes,
        model_bytes=table.nbytes if replaces_model else model.total_nbytes - model.stored_nbytes + table.nbytes,
        replaces_model=_STATIC_MODEL if replaces_model else None,
        bits_per_param=table.bits_per_param,
        ratio_vs_source=model.stored_nbytes / table.nbytes,
        ratio_vs_fp32=4 * model.table_params / table.nbytes,
        arrays={
            name: ArrayFacts(shape=list(a.shape), dtype=a.dtype.name, bytes=a.nbytes)
            for name, a in table.arrays().items()
        },
        vocabulary=vocabulary,
        warnings=_size_warnings(table, model, replaces_model),
    )


def _size_warnings(table: EmbeddingTable, model: SourceModel, replaces_model: bool) -> list[str] | None:
    """A table larger than the source stores it is a surprise worth a warning (int8 of a Q5_0 table)."""
    if replaces_model or table.nbytes <= model.stored_nbytes:
        return None
    source_bits = 8 * model.stored_nbytes / model.table_params
    return [
        f"the compressed table is larger than the source's: {human_bytes(model.stored_nbytes)} "
        f"({model.stored_dtype}, {source_bits:.2f} bits per value) -> {human_bytes(table.nbytes)} "
        f"({table.describe()}, {table.bits_per_param:.2f} bits), {table.nbytes / model.stored_nbytes:.2f}x "
        "the bytes: the source already stores it in fewer bits; choose a smaller format"
    ]


_STATIC_MODEL = "a static model (model2vec): the table is the whole model, not its input table"


def evaluate_quality(
    model: SourceModel, table: EmbeddingTable, data: EvaluationData = EvaluationData(), replaces_model: bool = False
) -> Quality:
    """Table-level figures always; model-level ones (STS, retrieval, drift) for the data given.

    A static model's table (`replaces_model`) lives in another space than the input table, so it
    has no table-level figures and no drift; it is scored as the static model it is."""
    similarities, fit = _similarities(data)
    original = model.table.weight[table.keep] if isinstance(table, TrimmedTable) else model.table.weight
    table_figures = None if replaces_model else TableQuality(**asdict(table_quality(original, table)))
    perplexity = _perplexity(model, table, data.perplexity, data.max_tokens) if data.perplexity is not None else None
    sentence_model = model.format == "sentence-transformers"
    if data.sentence_data() and not sentence_model:
        raise EdgeembError(
            f"{model.name} is a {model.format} model: STS, retrieval, text drift and context probes need a "
            "sentence-embedding model"
        )
    word_files = [read_word_pairs(path) for path in data.words]
    probe_set = read_probes(data.probes or builtin_probes()) if data.probes or data.builtin_probes else None
    if not sentence_model or not (data.sentence_data() or word_files):
        words = [_word_quality(model, table, path, pairs) for path, pairs in zip(data.words, word_files)]
        return Quality(table=table_figures, perplexity=perplexity, words=words or None)
    sts = read_sts(data.sts) if data.sts else None
    beir = read_beir(data.beir) if data.beir else None
    texts = read_texts(data.texts) if data.texts else None
    encoder = sentence_encoder(model.path, model.sha256)
    prompts = _prompts(data, encoder.prompts)
    encoders = _Encoders(model, table, encoder, replaces_model)
    original_encoder, compressed = encoders.pair(None)
    _check_fits(similarities, fit, sts, beir, (original_encoder, compressed))
    words = [
        _word_quality(model, table, path, pairs, (original_encoder, compressed))
        for path, pairs in zip(data.words, word_files)
    ]
    probes = None
    if probe_set is not None:
        if replaces_model:
            raise EdgeembError("a static model has no contextual token states: context probes need a transformer")
        dense = table.to_dense()
        compressed_spans = encoder.span_encoder(dense, "encode spans (compressed)", tokenizer_json(model, table))
        probes = _probe_quality(data.probes or builtin_probes(), probe_set, encoder.original_spans, compressed_spans)
    sts_quality = retrieval_quality = drift = None
    kinds = [Cosine(), *similarities]  # cosine, the headline compare and sweep read, and the others beside it
    if sts is not None:
        before, after = (sts_by_similarity(encode, sts, kinds, fit) for encode in encoders.pair(prompts["sts"]))
        fitted = _fit_record(data, fit, len(sts_texts(sts)), "the STS file's sentences")
        sts_quality = StsQuality(
            **_data(data.sts),
            pairs=len(sts.scores),
            prompt=prompts["sts"],
            original=before["cosine"],
            compressed=after["cosine"],
            delta=after["cosine"] - before["cosine"],
            similarities={
                kind.name: StsSimilarity(
                    **_setup(kind, fitted),
                    original=before[kind.name],
                    compressed=after[kind.name],
                    delta=after[kind.name] - before[kind.name],
                )
                for kind in similarities
            }
            or None,
        )
    if beir is not None:
        before, after = (
            {
                name: RetrievalScores(**asdict(scores))
                for name, scores in retrieval_by_similarity(documents, beir, kinds, fit, queries).items()
            }
            for documents, queries in zip(encoders.pair(prompts["document"]), encoders.pair(prompts["query"]))
        )
        fitted = _fit_record(data, fit, len(set(beir.corpus_texts)), "the corpus documents")
        qrels = data.beir / "qrels" / "test.tsv"
        retrieval_quality = RetrievalQuality(
            **_data(qrels),
            query_prompt=prompts["query"],
            document_prompt=prompts["document"],
            original=before["cosine"],
            compressed=after["cosine"],
            similarities={
                kind.name: RetrievalSimilarity(
                    **_setup(kind, fitted), original=before[kind.name], compressed=after[kind.name]
                )
                for kind in similarities
            }
            or None,
        )
    if not replaces_model:
        if texts is None and sts is not None:
            texts = sorted(set(sts.sentences1) | set(sts.sentences2))
        elif texts is None and beir is not None:
            texts = list(beir.query_texts)
        elif texts is None and probe_set is not None:
            texts = sorted(set(probe_set.sentences_a) | set(probe_set.sentences_b))
        if texts is not None:
            drift = Drift(**asdict(embedding_drift(original_encoder, compressed, texts)))
    return Quality(
        table=table_figures,
        perplexity=perplexity,
        sts=sts_quality,
        retrieval=retrieval_quality,
        drift=drift,
        words=words or None,
        probes=probes,
    )


# The model's own prompt each evaluation role takes by default, where the model defines it
# (EmbeddingGemma's prompts are named so; models without prompts encode texts as they are).
PROMPT_ROLES = {"sts": "STS", "query": "query", "document": "document"}


def _prompts(data: EvaluationData, defined: dict[str, str]) -> dict[str, str | None]:
    """The prompt name each role uses: PROMPT_ROLES' where the model defines it, overridden by
    `--prompt ROLE=NAME` (NAME `none`: no prompt)."""
    chosen: dict[str, str | None] = {role: name if name in defined else None for role, name in PROMPT_ROLES.items()}
    for item in data.prompts:
        role, separator, name = item.partition("=")
        if not separator or role not in PROMPT_ROLES:
            raise EdgeembError(f"--prompt {item!r}: expected ROLE=NAME, ROLE one of {', '.join(PROMPT_ROLES)}")
        if name != "none" and name not in defined:
            names = ", ".join(sorted(defined)) if defined else "none"
            raise EdgeembError(f"--prompt {item}: the model defines no prompt {name!r} (its prompts: {names})")
        chosen[role] = None if name == "none" else name
    return chosen


class _Encoders:
    """The original and the compressed model's sentence encoders, one memoized pair per prompt."""

    def __init__(self, model: SourceModel, table: EmbeddingTable, encoder: SentenceEncoder, static: bool) -> None:
        self._encoder = encoder
        # a static model (model2vec) has no prompts: its encoder is the same for every prompt
        self._static = memoize(static_encoder(table, model.tokenize, unk_id(model.tokens))) if static else None
        self._dense = None if static else table.to_dense()
        self._tokenizer_json = None if static else tokenizer_json(model, table)
        self._compressed: dict[str | None, Encode] = {}

    def pair(self, prompt: str | None) -> tuple[Encode, Encode]:
        if self._static is not None:
            return self._encoder.original_with(prompt), self._static
        if prompt not in self._compressed:
            label = f"encode (compressed, {prompt} prompt)" if prompt else "encode (compressed)"
            self._compressed[prompt] = memoize(
                self._encoder.encoder(self._dense, label, self._tokenizer_json, prompt=prompt)
            )
        return self._encoder.original_with(prompt), self._compressed[prompt]


def _word_quality(
    model: SourceModel,
    table: EmbeddingTable,
    path: Path,
    pairs: WordPairs,
    encoders: tuple[Encode, Encode] | None = None,
) -> WordQuality:
    """Word-similarity Spearman of the static table and, given the (original, compressed) sentence
    encoders, of the contextual model; pairs are those both words of which the source covers."""
    if model.tokenize is None:
        raise EdgeembError(f"{model.name}: word similarity needs the model's tokenizer, which edgeemb cannot load")
    unknown = unk_id(model.tokens)
    pieces = word_pieces(pairs.words1 + pairs.words2, model.tokenize, unknown)
    covered, scored = coverage(pairs, pieces)
    if isinstance(table, TrimmedTable):  # the trimmed vocabulary tokenises the same words with its own ids
        if model.vocabulary is None:
            raise EdgeembError(f"{model.name}: word similarity of a trimmed table needs the model's vocabulary")
        retokenize = model.vocabulary().retokenizer(table.keep)
        compressed_pieces = word_pieces(list(pieces), retokenize, unk_id([model.tokens[i] for i in table.keep]))
    else:
        compressed_pieces = pieces
    contextual = {}
    if encoders is not None:
        before, after = (contextual_vectors(encode, list(pieces)) for encode in encoders)
        contextual = dict(
            contextual_vector=CONTEXTUAL_VECTOR,
            contextual_original=word_spearman(pairs, before, scored),
            contextual_compressed=word_spearman(pairs, after, scored),
        )
    return WordQuality(
        **_data(path),
        pairs=len(pairs.scores),
        **asdict(covered),
        static_vector=STATIC_VECTOR,
        static_original=word_spearman(pairs, static_vectors(model.table, pieces), scored),
        static_compressed=word_spearman(pairs, static_vectors(table, compressed_pieces), scored),
        **contextual,
    )


def _probe_quality(path: Path, probes: Probes, original: SpanEncode, compressed: SpanEncode) -> ProbeQuality:
    """Mean cosine per relation and the separations between relations, original vs compressed."""
    before, after = probe_cosines(original, probes), probe_cosines(compressed, probes)
    relations = np.asarray(probes.relations)
    languages = np.asarray(probes.languages)

    def compared(mask: np.ndarray) -> list[ProbeSeparation]:
        labels = list(relations[mask])
        pairs = zip(separations(before[mask], labels), separations(after[mask], labels))
        return [
            ProbeSeparation(name=a.name, closer=a.closer, farther=a.farther, original=a.auc, compressed=b.auc)
            for a, b in pairs
        ]

    everything = np.ones(len(relations), bool)
    return ProbeQuality(
        **_data(path),
        probes=len(relations),
        span_vector=SPAN_VECTOR,
        relations=[
            RelationCosine(
                relation=relation,
                probes=int((relations == relation).sum()),
                original=float(before[relations == relation].mean()),
                compressed=float(after[relations == relation].mean()),
            )
            for relation in RELATIONS
            if (relations == relation).any()
        ],
        separations=compared(everything),
        languages={language: compared(languages == language) for language in sorted(set(probes.languages)) if language},
    )


def _data(path: Path) -> dict:
    """The `data` and `sha256` fields of a figure measured on `path`."""
    return dict(DataFile.of(path))


def _similarities(data: EvaluationData) -> tuple[list[Similarity], list[str] | None]:
    """The similarities STS and retrieval are scored with beside cosine, and the --fit-text's
    distinct lines (None: each fits on the texts it scores), refused when they cannot apply."""
    kinds = [similarity(name, data.csls_k) for name in SIMILARITIES if name in data.similarities and name != "cosine"]
    if kinds and data.sts is None and data.beir is None:
        raise EdgeembError("--similarity scores STS and retrieval: give --sts or --beir with it")
    if data.fit_text is None:
        return kinds, None
    if not any(kind.uses_fit for kind in kinds):
        raise EdgeembError("--fit-text is what centered and whitened similarities fit on: add --similarity for one")
    return kinds, list(dict.fromkeys(read_texts(data.fit_text)))


def _check_fits(
    kinds: list[Similarity],
    fit: list[str] | None,
    sts: StsData | None,
    beir: BeirData | None,
    encoders: tuple[Encode, Encode],
) -> None:
    """Refuse a fit set too small for its similarity (whitening) before the evaluated texts are
    encoded; each model's embedding size is read from one text (memoized, so not encoded twice)."""
    if not any(kind.uses_fit for kind in kinds):
        return
    fit_sets = [fit] if fit is not None else [sts_texts(sts)] if sts is not None else []
    if fit is None and beir is not None:
        fit_sets.append(list(dict.fromkeys(beir.corpus_texts)))
    for texts in fit_sets:
        for dim in {encode(texts[:1]).shape[1] for encode in encoders}:
            for kind in kinds:
                kind.check_fit(len(texts), dim)


def _fit_record(data: EvaluationData, fit: list[str] | None, evaluated: int, what: str) -> SimilarityFit:
    """What centered and whitened fitted on: the --fit-text file, or the `evaluated` texts."""
    if fit is None or data.fit_text is None:
        return SimilarityFit(texts=evaluated, source=what)
    file = DataFile.of(data.fit_text)
    return SimilarityFit(texts=len(fit), source=file.data, sha256=file.sha256)


def _setup(kind: Similarity, fitted: SimilarityFit) -> dict:
    """The report's record of how `kind` was set up: its fit set, or its neighbours."""
    return dict(fit=fitted if kind.uses_fit else None, k=kind.k if kind.uses_neighbours else None)


def _perplexity(model: SourceModel, table: EmbeddingTable, text: Path, max_tokens: int) -> PerplexityQuality:
    """Perplexity of the causal LM with its original and its compressed table (transformers)."""
    if model.tied is None:
        raise EdgeembError(
            f"{model.name} is a sentence-embedding model: perplexity needs a causal LM " "(GGUF or Hugging Face)"
        )
    if isinstance(table, TrimmedTable):
        raise EdgeembError(
            "a trimmed vocabulary's perplexity is measured in llama.cpp, by bits per byte: "
            "give the recipe a GGUF export (export: {format: gguf})"
        )
    lm = CausalLM(model.path)
    ids = lm.tokens(read_text(text), max_tokens)
    before, after = lm.perplexity(ids), lm.perplexity(ids, table.to_dense())
    return PerplexityQuality(
        **_data(text),
        runtime="transformers",
        tokens_scored=after.tokens_scored,
        window=after.window,
        original=before.perplexity,
        compressed=after.perplexity,
        delta=after.perplexity - before.perplexity,
    )


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

    Without a recipe, `default_recipe` picks one the model's runtime ships (the report says why).
    `calibration`: plain text on which steps that ask for it (`quantize: {importance: head}`)
    measure the model's activations; keep it apart from the text you evaluate on."""
    if recipe is not None and not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)  # a bad recipe fails before the model loads
    source = model if isinstance(model, SourceModel) else open_model(model)
    default = None
    if recipe is None:
        name, default = default_recipe(source, calibration)
        recipe = load_recipe(name)
    out = Path(out) if out is not None else default_out(source, recipe)
    check_target(out, force)
    data = data.merged_over(recipe)

    require_finite(source.table.weight, f"{source.name}'s embedding table")
    table = recipe.apply(source.table, step_context(source, calibration, calibration_tokens))
    # A GGUF export is verified in llama.cpp, perplexity included: that figure, from the runtime
    # the file is for, replaces the transformers one (and saves running both).
    gguf_perplexity = recipe.export is not None and recipe.export.format == "gguf" and data.perplexity is not None
    report = Report(
        edgeemb_version=__version__,
        model=model_facts(source),
        recipe=RecipeRef(name=recipe.name, digest=recipe.digest, default=default),
        table=table_facts(table, source, recipe.replaces_model),
        quality=evaluate_quality(
            source, table, replace(data, perplexity=None) if gguf_perplexity else data, recipe.replaces_model
        ),
    )
    manifest = Manifest(
        edgeemb_version=__version__,
        source=SourceRecord(name=source.name, path=str(source.path.resolve()), sha256=source.sha256),
        recipe={**recipe.to_dict(), "digest": recipe.digest},
        table=TableRecord(file=TABLE_FILE, shape=list(table.shape), storage=table.describe(), bytes=table.nbytes),
        source_table=SourceTableRecord(
            tensor=source.tensor_name, dtype=source.stored_dtype, bytes=source.stored_nbytes
        ),
        calibration=CalibrationRecord(**_data(calibration), max_tokens=calibration_tokens) if calibration else None,
    )
    # OUT/ is written aside and put in place only once complete, its export written and verified:
    # a failure at any step leaves nothing, and an OUT/ it was to replace as it was.
    with staged(out, force) as staging:
        write_artifact_files(staging, table, manifest, report, render_report(report))
        if recipe.export is not None:
            # The source and table in hand: no second load of the model, nor of OUT/.
            text = data.perplexity if recipe.export.format == "gguf" else data.texts
            file = staging / EXPORTERS[recipe.export.format].file
            request = ExportRequest(source, table, file, recipe.export, text=text, max_tokens=data.max_tokens)
            exported = export_table(request)
            exported = relocated(exported, staging, out)
            quality = report.quality
            if gguf_perplexity:
                quality = quality.model_copy(update={"perplexity": _llama_perplexity(exported.verify)})
            report = report.model_copy(update={"quality": quality, "export": exported})
            write_report_files(staging, report, render_report(report))
    return CompressResult(out, manifest, report)


def default_recipe(source: SourceModel, calibration: Path | None = None) -> tuple[str, str]:
    """The built-in recipe `compress` runs when none is named, and why: one whose table the
    model's own runtime loads as it is, so no export has to quantise it again."""
    if source.tied is None:
        return "int4", (
            "the default for a sentence encoder: int4 blocks of 32 are the layout onnxruntime's "
            "GatherBlockQuantized reads, so the ONNX export ships the table as it is"
        )
    why = "the default for a causal LM: GGUF Q5_0 (5.5 bits per value), a type llama.cpp loads as it is"
    if calibration is None:
        return "gguf-q5_0", f"{why}; with --calibration text, the activation-weighted gguf-q5_0-act"
    if source.head_input_power is not None:
        return "gguf-q5_0-act", (
            "the default for a causal LM given --calibration: GGUF Q5_0, a type llama.cpp loads as it is, "
            "each block's scale weighted by the tied output head's inputs on the calibration text"
        )
    missing = (
        "its output head is separate (untied), while gguf-q5_0-act weighs by a tied head's inputs"
        if source.tied is False
        else "gguf-q5_0-act measures a tied head's inputs in llama.cpp, which needs a GGUF file and llama-cpp-python"
    )
    return "gguf-q5_0", f"{why}; --calibration is not used: {missing}"


def _llama_perplexity(verify: GGUFCheck) -> PerplexityQuality:
    """quality.perplexity from a GGUF export's verification: source and export on the same text.

    A trimmed vocabulary tokenises that text its own way, so the two compare by bits per byte;
    `compressed` is then the export's perplexity per source token (its bits per byte at the
    source's bytes per token), which equals its own perplexity when the tokens are the same."""
    before, after = verify.source.perplexity, verify.export.perplexity
    original_bits, compressed_bits = (Perplexity(**dict(run)).bits_per_byte for run in (before, after))
    source_bytes_per_token = before.bytes_scored / before.tokens_scored
    compressed = math.exp(compressed_bits * math.log(2) * source_bytes_per_token)
    retokenised = after.tokens_scored != before.tokens_scored
    return PerplexityQuality(
        **dict(verify.text),
        runtime="llama.cpp",
        tokens_scored=before.tokens_scored,
        window=after.window,
        original=before.perplexity,
        compressed=compressed,
        delta=compressed - before.perplexity,
        bits_per_byte=BitsPerByte(
            original=original_bits, compressed=compressed_bits, delta=compressed_bits - original_bits
        ),
        compressed_tokens_scored=after.tokens_scored if retokenised else None,
        compressed_per_own_token=after.perplexity if retokenised else None,
    )


def trim_preview(model: str | Path | SourceModel | None, config: TrimConfig) -> TrimPreview:
    """What `trim_vocab` with `config` keeps of `model`'s vocabulary, and the bytes its table
    would take as the source stores it; nothing is written."""
    source = model if isinstance(model, SourceModel) else open_model(model)
    trimmed = trim_vocab(source.table, config, step_context(source))
    kept_bytes = source.stored_nbytes * len(trimmed.keep) // source.vocab_size
    dropped = np.setdiff1d(np.arange(source.vocab_size), trimmed.keep)
    spread = dropped[:: max(1, len(dropped) // 12)][:12]  # a dozen, from across the vocabulary
    return TrimPreview(
        **trimmed.facts,
        model=model_facts(source),
        policy=config.model_dump(mode="json"),
        table_bytes=kept_bytes,
        model_bytes=source.total_nbytes - source.stored_nbytes + kept_bytes,
        examples_dropped=[source.tokens[i] for i in spread] if source.tokens else [],
    )


def step_context(source: SourceModel, calibration: Path | None = None, calibration_tokens: int = 2048) -> StepContext:
    """What the steps may know of `source` beyond its table, with calibration text if given."""
    head_importance = None
    if calibration is not None and source.head_input_power is not None:
        text = read_text(calibration)
        head_importance = functools.cache(
            lambda: _finite(
                source.head_input_power(text, calibration_tokens), f"{source.name}'s head input power on {calibration}"
            )
        )
    return StepContext(
        source.tokens, source.tokenize, head_importance, Path(source.path), source.format, source.vocabulary
    )


def _finite(values: np.ndarray, what: str) -> np.ndarray:
    require_finite(values, what)
    return values


def open_source(artifact: Artifact) -> SourceModel:
    """The source model OUT/ was compressed from, checked unchanged by its sha256."""
    recorded = artifact.manifest.source
    source = open_model(recorded.name if recorded.name in catalog() else recorded.path)
    if source.sha256 != recorded.sha256:
        raise EdgeembError(
            f"{artifact.path}: the source model {recorded.name} changed since it was compressed " "(sha256 differs)"
        )
    return source


def artifact_recipe(artifact: Artifact) -> Recipe:
    """The recipe OUT/ was made with, as its manifest records it (validated again)."""
    recorded = {key: value for key, value in artifact.manifest.recipe.items() if key != "digest"}
    return parse_recipe(recorded, origin=f"{artifact.path / MANIFEST_FILE}")


def evaluate_artifact(out: str | Path, data: EvaluationData = EvaluationData()) -> Evaluation:
    """Recompute the quality of OUT/ against its source model, which must be unchanged."""
    artifact = load_artifact(Path(out))
    source = open_source(artifact)
    static = artifact_recipe(artifact).replaces_model
    return Evaluation(
        model=model_facts(source),
        table=table_facts(artifact.table, source, static),
        quality=evaluate_quality(source, artifact.table, data, static),
    )


def export_artifact(
    out: str | Path,
    config: ExportConfig = ExportConfig(format="gguf"),
    file: str | Path | None = None,
    *,
    force: bool = False,
    text: Path | None = None,
    max_tokens: int = 8192,
    onnx_source: Path | None = None,
    verify: bool = True,
    tolerances: dict[str, float] | None = None,
) -> Exported:
    """Export OUT/ to a file a device runtime loads, then verify it there; a file that fails
    verification (a figure outside `edgeemb.export.tolerance`'s limits, or `tolerances` over them)
    is removed. Returns the export's and the verification's figures (no check with `verify=False`).

    - gguf: the source GGUF with token_embd rewritten, run in llama.cpp beside the source (greedy
      output, decode tokens/s, peak RSS; with `text`, perplexity on its first `max_tokens` tokens).
    - onnx: the whole sentence-embedding model with the table in the graph (or, with
      `onnx_source`, that ONNX file or optimum folder with its embedding Gather rewritten), run in
      onnxruntime against PyTorch (or the given graph with the table swapped in) and the original
      model on `text`'s lines (built-in sentences without it).
    - st: a sentence-transformers directory with the table decoded into it, loaded back with
      `SentenceTransformer(path)` offline and compared with the compressed model on those lines."""
    artifact = load_artifact(Path(out))
    if artifact_recipe(artifact).replaces_model:
        raise EdgeembError(
            f"{out} holds a static model (model2vec), not an input table for its source model: "
            "there is nothing to export into the source's file"
        )
    report = artifact.report  # read before the export: a folder without one fails first
    file = Path(file) if file is not None else artifact.path / EXPORTERS[config.format].file
    request = ExportRequest(
        open_source(artifact),
        artifact.table,
        file,
        config,
        force,
        text,
        max_tokens,
        onnx_source,
        verify=verify,
        tolerances=tolerances or {},
    )
    exported = export_table(request)
    _record_export(artifact.path, report.model_copy(update={"export": exported}))
    return exported


def _record_export(out: Path, report: Report) -> None:
    """OUT/report.json and report.md rewritten with the export just verified (replacing an
    earlier one's), so OUT/'s report shows the file shipped, a re-quantised table's figures
    included. OUT/ is staged whole again: its other files hard-linked (copied where links fail),
    the report files new."""
    with staged(out, True) as staging:
        shutil.copytree(out, staging, copy_function=_link, ignore=shutil.ignore_patterns(REPORT_FILE, REPORT_MD_FILE))
        write_report_files(staging, report, render_report(report))


def _link(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def default_out(model: SourceModel, recipe: Recipe) -> Path:
    stem = model.name if model.name in catalog() else Path(model.name).stem
    return Path("edgeemb-out") / f"{stem}-{recipe.name}"
