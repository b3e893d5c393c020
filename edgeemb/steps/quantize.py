"""`quantize`: store rows in a quantisation format; `mixed_precision`: frequent tokens' rows in
one format, the rest in another.

On a low-rank table the (rows x rank) factor is quantised and the small right factor and mean
row are kept in `factor_dtype`. Format options (block_size, zero_point, subspaces, ...) are given
beside `format` and go to the format itself, which rejects the ones it does not take.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from edgeemb import formats
from edgeemb.errors import EdgeembError
from edgeemb.steps import StepContext, StepConfig, register
from edgeemb.table import DenseTable, EmbeddingTable, LowRankTable, MixedTable, QuantizedTable


class FormatConfig(StepConfig):
    """A format name and its options, e.g. {format: int4, block_size: 32}."""

    model_config = ConfigDict(extra="allow", frozen=True)
    format: str = Field(default="int4", description=f"one of: {', '.join(formats.names())}")

    @model_validator(mode="after")
    def _known_format(self) -> "FormatConfig":
        self.build_format()
        return self

    def build_format(self) -> formats.QuantFormat:
        try:
            return formats.get_format(self.format, **(self.model_extra or {}))
        except EdgeembError as exc:
            raise ValueError(str(exc)) from None


class QuantizeConfig(FormatConfig):
    factor_dtype: Literal["float16", "float32"] = Field(default="float16", description="dtype of a low-rank table's right factor and mean")
    importance: Literal["head"] | None = Field(
        default=None, description="'head': weight each column's error by the tied output head's input power on calibration text"
    )


def _on_rows(table: EmbeddingTable, factor_dtype: str, store) -> EmbeddingTable:
    """Apply `store(weight) -> table` to the table's rows, or to a low-rank table's row factor."""
    if isinstance(table, DenseTable):
        return store(table.weight)
    if isinstance(table, LowRankTable) and isinstance(table.left, DenseTable):
        dtype = np.dtype(factor_dtype)
        bias = None if table.bias is None else table.bias.astype(dtype)
        return LowRankTable(store(table.left.weight), table.right.astype(dtype), bias)
    raise EdgeembError(f"the table is already quantised ({table.describe()}); quantise once")


@register("quantize", QuantizeConfig)
def quantize(table: EmbeddingTable, config: QuantizeConfig, context: StepContext = StepContext()) -> EmbeddingTable:
    fmt = config.build_format()
    if config.importance is None:
        return _on_rows(table, config.factor_dtype, lambda weight: QuantizedTable.quantize(weight, fmt))
    if not hasattr(fmt, "quantize_weighted"):
        raise EdgeembError(f"quantize: format {fmt.name} does not take importance weights (Q4_0 and Q5_0 do)")
    if context.head_importance is None or not isinstance(table, DenseTable):
        raise EdgeembError(
            "quantize: importance: head needs calibration text (--calibration FILE), a GGUF causal LM whose "
            "output head is tied to the table, and the full table (not a low-rank one)"
        )
    weight = table.weight
    return QuantizedTable(fmt, fmt.quantize_weighted(weight, context.head_importance()), weight.shape[1])


class MixedPrecisionConfig(StepConfig):
    frequent: FormatConfig = Field(default_factory=lambda: FormatConfig(format="int8"), description="format of the frequent tokens' rows")
    rare: FormatConfig = Field(default_factory=lambda: FormatConfig(format="int4"), description="format of every other row")
    frequent_fraction: float = Field(default=0.1, gt=0, lt=1, description="share of rows counted as frequent")
    corpus: Path | None = Field(default=None, description="text file tokenised to count token frequency; unset: the tokenizer's id order (merge rank)")
    factor_dtype: Literal["float16", "float32"] = "float16"


def token_frequency(rows: int, context: StepContext, corpus: Path | None) -> np.ndarray:
    """A frequency score per row: corpus counts, or, without a corpus, decreasing with token id
    (BPE vocabularies number tokens in merge order, which follows frequency)."""
    if corpus is None:
        return np.arange(rows, 0, -1, dtype=np.float64)
    if context.tokenize is None:
        raise EdgeembError("mixed_precision: counting a corpus needs the model's tokenizer, and this model has none")
    try:
        lines = Path(corpus).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeembError(f"mixed_precision: cannot read corpus {corpus} ({exc})") from None
    ids = np.fromiter((i for line in lines if line.strip() for i in context.tokenize(line)), dtype=np.int64)
    if ids.size == 0:
        raise EdgeembError(f"mixed_precision: corpus {corpus} has no text")
    return np.bincount(ids[ids < rows], minlength=rows).astype(np.float64)


@register("mixed_precision", MixedPrecisionConfig)
def mixed_precision(table: EmbeddingTable, config: MixedPrecisionConfig, context: StepContext = StepContext()) -> EmbeddingTable:
    rows = table.shape[0]
    frequency = token_frequency(rows, context, config.corpus)
    # Most frequent first; ties broken by lower id (stable sort on the negated score).
    order = np.argsort(-frequency, kind="stable")
    group = np.ones(rows, np.uint8)
    group[order[: max(1, round(config.frequent_fraction * rows))]] = 0
    frequent, rare = config.frequent.build_format(), config.rare.build_format()
    store = lambda weight: MixedTable.split(  # noqa: E731
        weight, group, [lambda w: QuantizedTable.quantize(w, frequent), lambda w: QuantizedTable.quantize(w, rare)]
    )
    return _on_rows(table, config.factor_dtype, store)
