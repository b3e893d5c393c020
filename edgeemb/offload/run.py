"""`edgeemb offload`: a model's or an OUT/ folder's table streamed from flash while a text is
decoded (`emulate_offload`), with an OUT/ recipe's `offload:` plan filling the options not given,
and optionally the GGUF run in llama.cpp with mmap on and off.

    result = offload("gemma3-270m", Path("wiki.txt"), OffloadConfig(("ufs-3.1",), cache_bytes=(1 << 20,)))
    result.offload.points[0].hit_rate
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeemb.artifact import MANIFEST_FILE, Artifact, load_artifact
from edgeemb.errors import EdgeembError
from edgeemb.evaluate.data import read_text
from edgeemb.evaluate.llamacpp import measure_ggufs
from edgeemb.formats import get_format
from edgeemb.offload import (
    INPUT_ONLY,
    CacheUnit,
    Layout,
    Mode,
    OffloadConfig,
    OffloadedHead,
    OffloadReport,
    Throttle,
    emulate_offload,
    load_profile,
    profile_names,
    source_rows,
    table_rows,
    write_store,
)
from edgeemb.offload.store import LayoutKind
from edgeemb.pipeline import artifact_recipe, model_facts, open_source
from edgeemb.recipe import OffloadPlan
from edgeemb.results import ModelFacts, Result
from edgeemb.sources import SourceModel, open_model
from edgeemb.table import EmbeddingTable, TrimmedTable


class MmapRun(Result):
    """The GGUF run in llama.cpp with mmap on or off."""

    file: str
    use_mmap: bool
    peak_rss_bytes: int
    rss_file_bytes: int
    rss_anon_bytes: int
    decode_tokens_per_s: float
    prefill_tokens_per_s: float | None
    load_seconds: float


class OffloadResult(Result):
    model: ModelFacts
    source: str  # the model's name, or the OUT/ folder whose table is on flash
    offload: OffloadReport
    runtime: list[MmapRun] | None = None


@dataclass(frozen=True)
class PlannedOffload:
    config: OffloadConfig
    layout: LayoutKind
    head_type: str | None


def plan_offload(
    model: str | Path | None,
    *,
    profiles: tuple[str, ...] = (),
    cache_mb: tuple[float, ...] = (),
    hot_mb: float | None = None,
    layout: LayoutKind | None = None,
    head_type: str | None = None,
    cache_unit: CacheUnit = "row",
    mode: Mode = "sim",
    throttle: Throttle = "user",
) -> PlannedOffload:
    """The options given (None or empty: not given), the others from the recipe's `offload:` plan
    when `model` is an OUT/ folder with one (a device recipe), else `OffloadPlan`'s defaults.
    Budgets are MB (1e6 bytes); profile 'all' is every built-in one."""
    plan = _recipe_plan(model) or OffloadPlan()
    profiles = profiles or plan.profiles
    cache_mb = cache_mb or ((plan.cache_mb,) if plan.cache_mb else ())
    hot_mb = plan.hot_mb if hot_mb is None else hot_mb
    names = tuple(profile_names()) if "all" in profiles else profiles
    budgets = tuple(int(mb * 1e6) for mb in cache_mb)
    config = OffloadConfig(names, budgets, int(hot_mb * 1e6), cache_unit, mode, throttle)
    return PlannedOffload(config, layout or plan.layout, head_type or plan.head_type)


def _recipe_plan(model: str | Path | None) -> OffloadPlan | None:
    """The recipe's `offload:` plan of an OUT/ folder (None for a model, or a recipe without one)."""
    if model is None or not (Path(model) / MANIFEST_FILE).is_file():
        return None
    return artifact_recipe(load_artifact(Path(model))).offload


def offload(
    model: str | Path | None,
    text: Path,
    config: OffloadConfig,
    *,
    layout: LayoutKind = "single",
    layers: int | None = None,
    max_tokens: int = 512,
    calibration: Path | None = None,
    calibration_tokens: int | None = None,
    head_type: str | None = None,
    store: Path | None = None,
    force: bool = False,
    runtime: bool = False,
) -> OffloadResult:
    """Emulate streaming the embedding table of `model` (a model, or an OUT/ folder: its
    compressed table) from flash while `text` is decoded; see `edgeemb.offload`.

    A tied table also serves the output head, which reads every row for every generated token:
    offloading its input lookups means keeping a separate head in RAM, counted here at the
    table's own size or, with `head_type`, quantised to that format. With `runtime`, the GGUF
    (the model itself, or OUT/model.gguf) is also run in llama.cpp with mmap on and off."""
    artifact = load_artifact(Path(model)) if model is not None and (Path(model) / MANIFEST_FILE).is_file() else None
    source = open_source(artifact) if artifact else open_model(model)
    table = artifact.table if artifact else source.table
    if source.tokenize is None:
        raise EdgeembError(f"{source.name}: no tokenizer found beside the model, so a text cannot become token ids")
    gguf = _runtime_gguf(source, artifact) if runtime else None
    page_sizes = {load_profile(name).page_size for name in config.profiles}
    if len(page_sizes) != 1:
        raise EdgeembError(
            f"the profiles read pages of different sizes ({sorted(page_sizes)}); " "emulate them in separate runs"
        )
    if layout != "single" and layers is None:
        layers = source.layers
        if layers is None:
            raise EdgeembError(
                f"{source.name} does not say how many layers it has; " f"give --layers for the {layout} layout"
            )
    tokenize = table_tokenizer(source, table)
    rows = table_rows(table) if artifact else source_rows(source)
    shape = Layout(layout, rows.records.shape[0], rows.records.shape[1], page_sizes.pop(), layers or 1)
    tokens = np.asarray(tokenize(read_text(text))[:max_tokens])
    calibration_ids = np.asarray(tokenize(read_text(calibration))[:calibration_tokens]) if calibration else None
    head = _offloaded_head(source, table, rows.nbytes, head_type)

    def run(store_file: Path | None) -> OffloadReport:
        return emulate_offload(rows, shape, tokens, config, head=head, calibration=calibration_ids, store=store_file)

    if config.mode == "real" and store is None:  # real mode reads a store; without --store, a temporary one
        with tempfile.TemporaryDirectory(prefix="edgeemb-store-", dir=Path.cwd()) as folder:
            write_store(Path(folder) / "table.store", rows, shape)
            report = run(Path(folder) / "table.store")
    else:
        if store is not None:
            write_store(store, rows, shape, force)
        report = run(store)
    return OffloadResult(
        model=model_facts(source),
        source=str(artifact.path) if artifact else source.name,
        offload=report,
        runtime=_mmap_runtime(gguf, text, max_tokens) if gguf is not None else None,
    )


def table_tokenizer(source: SourceModel, table: EmbeddingTable) -> Callable[[str], list[int]]:
    """text -> the ids `table` is indexed by: the source's tokenizer, or a trimmed vocabulary's."""
    if not isinstance(table, TrimmedTable):
        return source.tokenize
    if source.vocabulary is None:
        raise EdgeembError(
            f"{source.name}: the trimmed vocabulary's tokenizer cannot be rebuilt "
            "(no tokenizer found beside the model)"
        )
    return source.vocabulary().retokenizer(table.keep)


_SEPARATE_HEAD = OffloadedHead(
    bytes=0,
    tied=False,
    note="the output head is a separate tensor (untied), not this table: the table is input-only, "
    "so nothing of it has to stay in RAM",
)


def _offloaded_head(
    source: SourceModel, table: EmbeddingTable, table_bytes: int, head_type: str | None
) -> OffloadedHead:
    """RAM an output head needs once the table's input lookups move to flash."""
    if not source.tied:
        if head_type:
            raise EdgeembError(
                f"{source.name} has no output head tied to its table; " "--head-type applies to tied tables"
            )
        return INPUT_ONLY if source.tied is None else _SEPARATE_HEAD
    if head_type is None:
        return OffloadedHead(
            bytes=table_bytes,
            tied=True,
            type="as stored",
            note=(
                "the head reads every row per generated token, so a tied table stays whole in RAM: "
                "offloading it saves nothing unless the head is stored apart (--head-type)"
            ),
        )
    fmt = get_format(head_type)
    if fmt.shared:
        raise EdgeembError(f"--head-type {head_type}: a head needs a row-wise format, not one with a shared codebook")
    sample = table.lookup(np.arange(min(256, table.shape[0])))
    per_row = sum(a.nbytes for a in fmt.quantize(sample).values()) / len(sample)
    return OffloadedHead(
        bytes=int(per_row * table.shape[0]),
        tied=True,
        type=fmt.describe(),
        note=("a separate head in RAM; its quality cost is not measured here (compress and evaluate it)"),
    )


def _runtime_gguf(source: SourceModel, artifact: Artifact | None) -> Path:
    """The GGUF file llama.cpp runs for `offload --runtime`: the model, or OUT/model.gguf."""
    gguf = artifact.path / "model.gguf" if artifact else Path(source.path)
    if source.format != "gguf" or not gguf.is_file():
        hint = f" (export OUT/ first: edgeemb export {artifact.path} --format gguf)" if artifact else ""
        raise EdgeembError(f"the llama.cpp runtime check needs a GGUF model{hint}")
    return gguf


def _mmap_runtime(gguf: Path, text: Path, max_tokens: int) -> list[MmapRun]:
    """The GGUF run in llama.cpp with mmap on and off: peak RSS, resident file pages, tokens/s."""
    runs = measure_ggufs([gguf, gguf], read_text(text), max_tokens, options=[{"use_mmap": True}, {"use_mmap": False}])
    return [
        MmapRun(
            file=str(gguf),
            use_mmap=run.options["use_mmap"],
            peak_rss_bytes=run.peak_rss_bytes,
            rss_file_bytes=run.rss_file_bytes,
            rss_anon_bytes=run.rss_anon_bytes,
            decode_tokens_per_s=run.decode_tokens_per_s,
            prefill_tokens_per_s=run.prefill_tokens_per_s,
            load_seconds=run.load_seconds,
        )
        for run in runs
    ]
