"""`quantize`: store rows in a quantisation format; `mixed_precision`: frequent tokens' rows in
one format, the rest in another.

On a low-rank table the (rows x rank) factor is quantised and the small right factor and mean
row are kept in `factor_dtype`. The format is a format object, `QuantizeConfig(format=Int4(block_size=32))`,
or, as a recipe writes it, a name with the format's options beside it, `{format: int4, block_size: 32}`:
the format validates its own options (types, ranges) and rejects the ones it does not take.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from edgeemb import formats
from edgeemb.errors import EdgeembError, regular_file
from edgeemb.steps.base import PathArgument, StepConfig, StepContext, register
from edgeemb.table import DenseTable, EmbeddingTable, LowRankTable, MixedTable, QuantizedTable

DEFAULT_FORMAT = "int4"


class FormatConfig(StepConfig):
    """A format: a format object, or its name and options, e.g. {format: int4, block_size: 32}."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    format: formats.QuantFormat = Field(
        default_factory=lambda: formats.get_format(DEFAULT_FORMAT),
        exclude=True,
        description=f"a format object, or one of: {', '.join(formats.names())}, with its options beside it",
    )

    @model_validator(mode="before")
    @classmethod
    def _named_format(cls, data: Any) -> Any:
        """{format: name, option: value, ...} -> {format: the format built with those options}."""
        if not isinstance(data, dict):
            return data
        fmt = data.get("format", DEFAULT_FORMAT)
        own = {key: value for key, value in data.items() if key in cls.model_fields}
        options = {key: value for key, value in data.items() if key not in cls.model_fields}
        if isinstance(fmt, formats.QuantFormat):
            if options:
                key = next(iter(options))
                raise ValueError(f"'{key}' goes to the format object itself, e.g. {type(fmt).__name__}({key}=...)")
            return data
        if not isinstance(fmt, str):
            known = ", ".join(formats.names())
            raise ValueError(f"format: a format name ({known}) or a format object, not a {type(fmt).__name__}")
        try:
            return {**own, "format": formats.get_format(fmt, **options)}
        except EdgeembError as exc:
            raise ValueError(str(exc)) from None

    @model_serializer(mode="wrap")
    def _as_written(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """As a recipe writes it (and its digest hashes it): the format's name, the options it was
        built with, then the step's own arguments."""
        return {"format": self.format.name, **self.format.options(), **handler(self)}


class QuantizeConfig(FormatConfig):
    factor_dtype: Literal["float16", "float32"] = Field(
        default="float16", description="dtype of a low-rank table's right factor and mean"
    )
    importance: Literal["head"] | None = Field(
        default=None,
        description="'head': weight each column's error by the tied output head's input power on calibration text",
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
    fmt = config.format
    if config.importance is None:
        return _on_rows(table, config.factor_dtype, lambda weight: QuantizedTable.quantize(weight, fmt))
    if not fmt.weighted:
        weighted = ", ".join(name for name in formats.names() if formats.get_format(name).weighted)
        raise EdgeembError(f"quantize: format {fmt.name} does not take importance weights ({weighted} do)")
    if context.head_importance is None or not isinstance(table, DenseTable):
        raise EdgeembError(
            "quantize: importance: head needs calibration text (--calibration FILE), a GGUF causal LM whose "
            "output head is tied to the table, and the full table (not a low-rank one)"
        )
    weight = table.weight
    return QuantizedTable(fmt, fmt.quantize_weighted(weight, context.head_importance()), weight.shape[1])


class MixedPrecisionConfig(StepConfig):
    frequent: FormatConfig = Field(
        default_factory=lambda: FormatConfig(format=formats.get_format("int8")),
        description="format of the frequent tokens' rows",
    )
    rare: FormatConfig = Field(
        default_factory=lambda: FormatConfig(format=formats.get_format("int4")), description="format of every other row"
    )
    frequent_fraction: float = Field(default=0.1, gt=0, lt=1, description="share of rows counted as frequent")
    corpus: PathArgument | None = Field(
        default=None,
        description="text file tokenised to count token frequency; unset: the tokenizer's id order (merge rank)",
    )
    factor_dtype: Literal["float16", "float32"] = "float16"


def token_frequency(rows: int, context: StepContext, corpus: Path | None) -> np.ndarray:
    """A frequency score per row: corpus counts, or, without a corpus, decreasing with token id
    (BPE vocabularies number tokens in merge order, which follows frequency)."""
    if corpus is None:
        return np.arange(rows, 0, -1, dtype=np.float64)
    if context.tokenize is None:
        raise EdgeembError("mixed_precision: counting a corpus needs the model's tokenizer, and this model has none")
    try:
        lines = regular_file(corpus, "mixed_precision corpus").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeembError(f"mixed_precision: cannot read corpus {corpus} ({exc})") from None
    ids = np.fromiter((i for line in lines if line.strip() for i in context.tokenize(line)), dtype=np.int64)
    if ids.size == 0:
        raise EdgeembError(f"mixed_precision: corpus {corpus} has no text")
    return np.bincount(ids[ids < rows], minlength=rows).astype(np.float64)


@register("mixed_precision", MixedPrecisionConfig)
def mixed_precision(
    table: EmbeddingTable, config: MixedPrecisionConfig, context: StepContext = StepContext()
) -> EmbeddingTable:
    rows = table.shape[0]
    frequency = token_frequency(rows, context, config.corpus)
    # Most frequent first; ties broken by lower id (stable sort on the negated score).
    order = np.argsort(-frequency, kind="stable")
    group = np.ones(rows, np.uint8)
    group[order[: max(1, round(config.frequent_fraction * rows))]] = 0
    frequent, rare = config.frequent.format, config.rare.format
    store = lambda weight: MixedTable.split(  # noqa: E731
        weight, group, [lambda w: QuantizedTable.quantize(w, frequent), lambda w: QuantizedTable.quantize(w, rare)]
    )
    return _on_rows(table, config.factor_dtype, store)
