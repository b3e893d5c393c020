"""Typed results: what edgeemb measures, as data read by attribute, and the one way it becomes JSON.

    result = compress("minilm", "int4", "out/minilm-int4")
    result.report.table.ratio_vs_source, result.report.quality.table.row_cosine_mean

Every JSON edgeemb writes or prints (OUT/report.json and manifest.json, `--json` output) goes
through `to_json`; every JSON it reads back through `from_json`, which validates it against its
type. A field that defaults to None is left out of the JSON while it is None (a figure not
measured: no `sts` without STS data); a field that must be given keeps its null (a fact that is
unknown, as an encoder's `tied`).

report.json carries `schema_version`; its JSON Schema is `report_schema()`, committed as
edgeemb/report/report.schema.json (tests/test_results.py checks that the two agree). After
changing a type here, regenerate the file with
`python -c "from edgeemb.results import write_report_schema; write_report_schema()"`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer
from pydantic_core import to_jsonable_python

from edgeemb.bench.backends import SCHEMA as BENCH_SCHEMA
from edgeemb.errors import EdgeembError

REPORT_SCHEMA_VERSION = 1
REPORT_SCHEMA_FILE = Path(__file__).parent / "report" / "report.schema.json"


class Result(BaseModel):
    """A result: frozen, unknown keys rejected, JSON by `to_json`."""

    # defer_build: each type's validator is built when first used, not at import (~0.08 s of every
    # `edgeemb` start-up); inf stays Infinity in JSON, as json.dumps wrote it before.
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        ser_json_inf_nan="constants",
        defer_build=True,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )

    @model_serializer(mode="wrap")
    def _leave_out_unmeasured(self, handler: Any) -> dict[str, Any]:
        """A field that defaults to None is left out while None; a required one keeps its null."""
        data = handler(self)
        for name, field in type(self).model_fields.items():
            if field.default is None and getattr(self, name) is None:
                data.pop(field.alias or name, None)
                data.pop(name, None)
        return data


R = TypeVar("R", bound=BaseModel)


def to_json(data: Any) -> str:
    """`data` (a result, or dicts, lists and dataclasses holding results) as indented JSON."""
    return json.dumps(to_dict(data), indent=2)


def to_dict(data: Any) -> Any:
    """`data` as JSON-able Python: dicts, lists, strings, numbers."""
    return to_jsonable_python(data, by_alias=True, inf_nan_mode="constants")


def from_json(kind: type[R], text: str | bytes) -> R:
    """JSON text as a `kind`, validated (pydantic's ValidationError when it is not one)."""
    return kind.model_validate_json(text)


def relocated(result: R, old: Path, new: Path) -> R:
    """`result` with the paths under `old` (an output being staged) as they are once it is `new`."""
    moved = to_json(result).replace(json.dumps(str(old))[1:-1], json.dumps(str(new))[1:-1])
    return from_json(type(result), moved)


# --- the model and its table -------------------------------------------------------------------


class ModelFacts(Result):
    """The source model and its embedding table as stored."""

    name: str
    path: str
    format: str
    architecture: str
    tensor: str
    vocab: int
    dim: int
    stored_dtype: str
    table_bytes: int
    table_params: int
    total_params: int
    total_bytes: int
    table_share_of_params: float
    table_share_of_bytes: float
    tied: bool | None  # the head reads the table (True), has weights of its own (False), or none (null: an encoder)


class ArrayFacts(Result):
    shape: list[int]
    dtype: str
    bytes: int


class CorpusFacts(Result):
    files: list[str]
    lines_counted: int
    tokens_counted: int
    distinct_tokens: int
    frequent_rows: int


class HoldoutFacts(Result):
    """How text held back from the corpus tokenises with the trimmed vocabulary."""

    lines: int
    tokens_original: int
    tokens_trimmed: int
    token_coverage: float
    lines_changed: float
    token_increase: float


class TrimFacts(Result):
    """What a vocabulary trim kept, and why."""

    source_rows: int
    tokenizer: str
    floor_rows: int  # rows always kept: special, byte and fallback pieces
    script_rows: int | None = None
    character_rows: int | None = None
    corpus: CorpusFacts | None = None
    closure_rows_added: int  # merge intermediates added so that every kept piece can still be produced
    rows: int
    holdout: HoldoutFacts | None = None


class VocabularyFacts(TrimFacts):
    source_bytes_of_dropped_rows: int


class TrimPreview(TrimFacts):
    """`edgeemb trim`: what a trim policy keeps of a model's vocabulary; nothing is written."""

    model: ModelFacts
    policy: dict[str, Any]
    table_bytes: int
    model_bytes: int
    examples_dropped: list[str]


class TableFacts(Result):
    """The compressed table's storage and bytes."""

    storage: str
    bytes: int
    model_bytes: int  # the whole model with this table (a static model's table is all of it)
    replaces_model: str | None = None
    bits_per_param: float
    ratio_vs_source: float
    ratio_vs_fp32: float
    arrays: dict[str, ArrayFacts]
    vocabulary: VocabularyFacts | None = None
    warnings: list[str] | None = None  # e.g. the table is larger than the source stores it


# --- quality -----------------------------------------------------------------------------------


class DataFile(Result):
    """The data a figure was measured on: figures compare only on the same sha256."""

    data: str
    sha256: str

    @classmethod
    def of(cls, path: Path) -> DataFile:
        return DataFile(data=str(path), sha256=hashlib.sha256(Path(path).read_bytes()).hexdigest())


class TableQuality(Result):
    """The compressed table against the original, row by row: no data needed."""

    rows: int
    dim: int
    relative_error: float
    row_cosine_mean: float
    row_cosine_p1: float
    row_cosine_min: float
    worst_row_id: int
    nn_queries: int
    k: int
    nn_overlap_mean: float
    nn_overlap_min: float


class SimilarityFit(Result):
    """The texts centered and whitened similarities took their mean (and covariance) from."""

    texts: int  # distinct texts
    source: str  # the evaluated texts (STS: the file's sentences; retrieval: the corpus) or the --fit-text file
    sha256: str | None = None  # the --fit-text file's


class SimilarityScored(Result):
    """How a similarity other than cosine was set up (`edgeemb.evaluate.similarity`)."""

    fit: SimilarityFit | None = None  # centered, whitened
    k: int | None = None  # csls: the neighbours in each side's hubness penalty


class StsSimilarity(SimilarityScored):
    original: float
    compressed: float
    delta: float


class StsQuality(DataFile):
    """Spearman x100 of the whole sentence-embedding model on an STS set: cosine, and by similarity
    the others asked for (`--similarity`)."""

    pairs: int
    prompt: str | None = None  # the model's prompt the sentences were encoded with (None: none)
    original: float
    compressed: float
    delta: float
    similarities: dict[str, StsSimilarity] | None = None


class RetrievalScores(Result):
    ndcg_at_10: float
    recall_at_10: float
    queries: int


class RetrievalSimilarity(SimilarityScored):
    original: RetrievalScores
    compressed: RetrievalScores


class RetrievalQuality(DataFile):
    """Cosine retrieval, and by similarity the others asked for (`--similarity`)."""

    query_prompt: str | None = None  # the model's prompts queries and documents were encoded with
    document_prompt: str | None = None
    original: RetrievalScores
    compressed: RetrievalScores
    similarities: dict[str, RetrievalSimilarity] | None = None


class Drift(Result):
    """Cosine between the original and the compressed model's sentence embeddings of the same texts."""

    mean_cosine: float
    p01_cosine: float
    min_cosine: float
    n: int


class WordQuality(DataFile):
    """Word-similarity Spearman x100 (WordSim353, SimLex-999, ...) of the static table and, for a
    sentence-embedding model, of the contextual model, on the pairs both words of which the
    source's tokenizer covers."""

    pairs: int
    pairs_scored: int
    words: int
    single_piece: int
    split: int
    uncovered: int
    pieces_per_word: float
    static_vector: str
    static_original: float
    static_compressed: float
    contextual_vector: str | None = None
    contextual_original: float | None = None
    contextual_compressed: float | None = None


class RelationCosine(Result):
    """The mean cosine of one relation's probes (same-sense, different-sense, synonym)."""

    relation: str
    probes: int
    original: float
    compressed: float


class ProbeSeparation(Result):
    """AUC of the `closer` relation's cosines above the `farther` one's (0.5: not told apart)."""

    name: str
    closer: str
    farther: str
    original: float | None  # None: the probes lack one of the two relations
    compressed: float | None


class ProbeQuality(DataFile):
    """Context probes: spans' contextual vectors in pairs of sentences, by relation."""

    probes: int
    span_vector: str
    relations: list[RelationCosine]
    separations: list[ProbeSeparation]
    languages: dict[str, list[ProbeSeparation]]  # by the probe file's language column, where it has one


class BitsPerByte(Result):
    original: float
    compressed: float
    delta: float


class PerplexityQuality(DataFile):
    """Perplexity of a causal LM with its original and its compressed table on the same text."""

    runtime: str
    tokens_scored: int
    window: int
    original: float
    # with a trimmed vocabulary: per source token (the export's bits per byte at the source's bytes per token)
    compressed: float
    delta: float
    bits_per_byte: BitsPerByte | None = None
    compressed_tokens_scored: int | None = None
    compressed_per_own_token: float | None = None


class Quality(Result):
    table: TableQuality | None  # null for a static model, whose table lives in another space than the input table
    perplexity: PerplexityQuality | None = None
    sts: StsQuality | None = None
    retrieval: RetrievalQuality | None = None
    drift: Drift | None = None
    words: list[WordQuality] | None = None
    probes: ProbeQuality | None = None

    @field_validator("table", mode="before")
    @classmethod
    def _no_figures(cls, value: Any) -> Any:
        return None if value == {} else value  # report.json before schema 1 wrote {} for "none"


class Evaluation(Result):
    """`edgeemb evaluate`: an output's quality measured again against its source model."""

    model: ModelFacts
    table: TableFacts
    quality: Quality


# --- exports and their verification ------------------------------------------------------------


class Perplexity(Result):
    perplexity: float
    nll_per_token: float
    tokens_scored: int
    window: int
    bytes_scored: int | None


class LlamaRun(Result):
    """A GGUF file run in llama.cpp: greedy output, speed, memory and, given text, perplexity."""

    path: str
    file_bytes: int
    load_seconds: float
    greedy_ids: list[int]
    greedy_text: str
    greedy_pieces: list[str]
    decode_tokens_per_s: float
    prefill_tokens_per_s: float | None
    peak_rss_bytes: int
    perplexity: Perplexity | None
    rss_file_bytes: int
    rss_anon_bytes: int
    options: dict[str, Any]


class GGUFFile(Result):
    format: Literal["gguf"] = "gguf"
    path: str
    source: str
    tensor_type: str
    rebuilt: bool
    replaced: list[str]
    source_bytes: int
    file_bytes: int
    source_table_bytes: int
    table_bytes: int
    notes: list[str]


class GGUFCheck(Result):
    runtime: str
    greedy_tokens_equal_to_source: int
    source: LlamaRun
    export: LlamaRun
    text: DataFile | None = None
    # a Hugging Face source: of the export's greedy tokens, how many transformers running the rows
    # the file should hold predicts before the two first differ
    greedy_tokens_equal_to_transformers: int | None = None
    table: TableLogitsCheck | None = None  # the file's rows as llama.cpp reads them (None: an older report)
    tolerances: dict[str, float] = {}  # the limit each figure was held to (`edgeemb.export.tolerance`)


class TableLogitsCheck(Result):
    """llama.cpp's logits from the export on a fixed text against the same file with token_embd
    the expected rows in F32 (`edgeemb.export.gguf_check`)."""

    tokens: int
    mean_kl: float  # nats per token
    max_kl: float
    top1_agreement: float


class TableFigures(Result):
    """A table's size and its table-level quality against the source's original table."""

    storage: str
    bytes: int
    bits_per_param: float
    ratio_vs_source: float
    quality: TableQuality


class Requantised(Result):
    """A table the export quantised again (llama.cpp stores one GGML type per tensor): the
    shipped file's own token_embd, read back from it, beside the recipe's table."""

    recipe: TableFigures
    shipped: TableFigures


class GGUFExported(Result):
    """A GGUF export, run in llama.cpp beside its source (verify: None when written with
    `--no-verify`)."""

    export: GGUFFile
    verify: GGUFCheck | None
    requantised: Requantised | None = None  # the table was not stored in a GGML type, or in another one


class OnnxFile(Result):
    format: Literal["onnx"] = "onnx"
    path: str
    file_bytes: int
    table: str
    table_bytes: int
    quantized_rest: bool
    tokenizer: str | None  # the tokenizer.json beside the file that feeds it (the source's, or a trimmed one)
    from_: str | None = Field(None, alias="from")  # the ONNX file whose embedding was rewritten (`export --from`)


class OnnxCheck(Result):
    runtime: str
    path: str
    file_bytes: int
    checker: str
    texts: int
    max_abs_diff: float
    mean_cosine: float
    p01_cosine: float
    min_cosine: float
    p50_latency_ms: float
    session_rss_mb: float
    threads: int
    text: DataFile | None = None
    # What the file must compute (max_abs_diff and reference_* are against it): the compressed
    # model in PyTorch, or with `--from` the given graph with the table swapped in (None: a report
    # written before the reference was named, always the PyTorch model then).
    reference: str | None = None
    reference_mean_cosine: float | None = None
    reference_min_cosine: float | None = None
    given: GivenGraphCheck | None = None  # `--from`: the untouched graph against the source model
    tolerances: dict[str, float] = {}  # the limit each figure was held to (`edgeemb.export.tolerance`)
    warnings: list[str] = []  # figures outside a limit that only warns (the given graph's)


class GivenGraphCheck(Result):
    """The ONNX graph given with `export --from`, untouched, against the source model."""

    path: str
    tokenizer: str | None  # the optimum folder's tokenizer.json that fed it (None: the source model's)
    checker: str  # onnx.checker on the untouched graph
    max_abs_diff: float
    mean_cosine: float
    min_cosine: float


class OnnxExported(Result):
    """An ONNX export, run in onnxruntime against its reference and the original model (verify:
    None when written with `--no-verify`)."""

    export: OnnxFile
    verify: OnnxCheck | None


class StFolder(Result):
    format: Literal["st"] = "st"
    path: str
    file_bytes: int
    table: str


class StCheck(Result):
    runtime: str
    texts: int
    max_abs_diff: float
    tolerances: dict[str, float] = {}  # the limit each figure was held to (`edgeemb.export.tolerance`)


class StExported(Result):
    """A sentence-transformers folder, loaded back and compared with the compressed model (verify:
    None when written with `--no-verify`)."""

    export: StFolder
    verify: StCheck | None


class HfFolder(Result):
    format: Literal["hf"] = "hf"
    path: str
    file_bytes: int
    table: str
    dtype: str  # the float type the folder stores the decoded table (and every weight) in


class HfCheck(Result):
    runtime: str
    texts: int
    tokens: int
    max_abs_diff: float  # logits (hidden states of a bare model) against the compressed model
    tolerances: dict[str, float] = {}  # the limit each figure was held to (`edgeemb.export.tolerance`)


class HfExported(Result):
    """A transformers folder with the table decoded into it, loaded back and compared with the
    compressed model (verify: None when written with --no-verify)."""

    export: HfFolder
    verify: HfCheck | None


Exported = GGUFExported | OnnxExported | StExported | HfExported


# --- OUT/ ---------------------------------------------------------------------------------------


class RecipeRef(Result):
    name: str
    digest: str
    default: str | None = None  # no recipe was named: why compress picked this one


class Report(Result):
    """OUT/report.json: every figure measured, and the recipe's export verified in its runtime."""

    schema_version: Literal[1] = REPORT_SCHEMA_VERSION
    edgeemb_version: str
    model: ModelFacts
    recipe: RecipeRef
    table: TableFacts
    quality: Quality
    export: Exported | None = None


class SourceRecord(Result):
    name: str
    path: str
    sha256: str


class TableRecord(Result):
    file: str
    shape: list[int]
    storage: str
    bytes: int


class SourceTableRecord(Result):
    tensor: str
    dtype: str
    bytes: int


class CalibrationRecord(DataFile):
    max_tokens: int


class Manifest(Result):
    """OUT/manifest.json: the recipe, the source model and its sha256, the table's file."""

    edgeemb_version: str
    source: SourceRecord
    recipe: dict[str, Any]  # the recipe as `Recipe.to_dict()` gives it, and its digest
    table: TableRecord
    source_table: SourceTableRecord
    calibration: CalibrationRecord | None = None


# --- bench ------------------------------------------------------------------------------------------


class CoreLimit(Result):
    asked: int | None
    applied: int
    cpus: list[int] | None = None
    how: str
    note: str | None = None


class MemoryCap(Result):
    cap_mb: int
    how: str
    swap: str | None = None


class CpuQuota(Result):
    share: float
    how: str


class ReadLimit(Result):
    device: str
    bytes_per_s: int
    iops: int
    how: str


class Limits(Result):
    """What a run was held to on this host, and how (or why it was not)."""

    cores: CoreLimit
    memory: MemoryCap | None = None
    cpu_quota: CpuQuota | None = None
    reads: ReadLimit | None = None


class Host(Result):
    machine: str
    python: str | None = None
    runner: str | None = None  # a device's run.sh: what ran llama-bench


class LatencyMs(Result):
    p50: float | None  # null where a device's llama-bench gives means only
    p95: float | None
    mean: float
    count: int


class Throughput(Result):
    value: float
    unit: str


class Emulation(Result):
    qemu: str
    cpu: str
    threads: int
    arm_arch: str | None = None
    mmap: bool | None = None


class BenchResult(Result):
    """One file benchmarked (`edgeemb bench`, or a bundle's run.sh on a device): timed in its runtime,
    or its instructions counted under qemu (`emulated`); a run its memory cap killed does not `fit`."""

    schema_id: str = Field(BENCH_SCHEMA, alias="schema")
    artifact: str
    backend: str
    file_bytes: int
    host: Host
    profile: str | None
    limits: Limits | None = None
    fits: bool
    message: str | None = None
    load_s: float | None = None
    unit: str | None = None
    latency_ms: LatencyMs | None = None
    prompt_ms_per_token: float | None = None
    prompt_tokens: int | None = None
    throughput: Throughput | None = None
    threads: int | None = None
    mmap: bool | None = None
    emulated: Emulation | None = None
    units: int | None = None
    instructions: int | None = None
    instructions_per_unit: float | None = None
    short_run_instructions: int | None = None
    other_thread_instructions: list[int] | None = None
    peak_rss_bytes: int | None = None
    interpreter_rss_bytes: int | None = None
    rss_file_bytes: int | None = None
    rss_anon_bytes: int | None = None
    major_faults: int | None = None
    charged_peak_bytes: int | None = None
    measured_by: str | None = None
    vs_baseline: dict[str, float] | None = None  # `bench --baseline --json`: this run's ratios to the baseline's


def read_json_file(kind: type[R], path: Path, rerun: str) -> R:
    """`path` read as a `kind`; JSON of another shape or schema version is one line naming `rerun`."""
    try:
        return from_json(kind, Path(path).read_bytes())
    except ValidationError as exc:
        error = exc.errors()[0]
        if error["type"] == "json_invalid":
            raise EdgeembError(f"{path}: unreadable JSON ({error['msg']})") from None
        where = ".".join(str(part) for part in error["loc"])
        raise EdgeembError(f"{path}: written by another edgeemb version ({where}: {error['msg']}); {rerun}") from None


def report_schema() -> dict[str, Any]:
    """The JSON Schema of OUT/report.json."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:edgeemb:report-schema:{REPORT_SCHEMA_VERSION}",
        **Report.model_json_schema(by_alias=True),
    }


def write_report_schema(path: Path = REPORT_SCHEMA_FILE) -> None:
    Path(path).write_text(json.dumps(report_schema(), indent=2) + "\n")
