"""`quantize`: store rows in a quantisation format. On a low-rank table the (rows x rank)
factor is quantised and the small right factor and mean row are kept in `factor_dtype`."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from edgeemb import formats
from edgeemb.errors import EdgeembError
from edgeemb.passes import PassContext, StepConfig, register
from edgeemb.table import DenseTable, EmbeddingTable, LowRankTable, QuantizedTable


class QuantizeConfig(StepConfig):
    format: str = Field(default="int4", description=f"one of: {', '.join(formats.names())}")
    block_size: int | None = Field(default=None, description="values per scale; unset: the format's default; null: one block per row")
    factor_dtype: Literal["float16", "float32"] = Field(default="float16", description="dtype of a low-rank table's right factor and mean")

    @model_validator(mode="after")
    def _known_format(self) -> "QuantizeConfig":
        self.build_format()
        return self

    def build_format(self) -> formats.QuantFormat:
        options = {"block_size": self.block_size} if "block_size" in self.model_fields_set else {}
        try:
            return formats.get_format(self.format, **options)
        except EdgeembError as exc:
            raise ValueError(str(exc)) from None


@register("quantize", QuantizeConfig)
def quantize(table: EmbeddingTable, config: QuantizeConfig, context: PassContext = PassContext()) -> EmbeddingTable:
    fmt = config.build_format()
    if isinstance(table, DenseTable):
        return QuantizedTable.quantize(table.weight, fmt)
    if isinstance(table, LowRankTable) and isinstance(table.left, DenseTable):
        dtype = np.dtype(config.factor_dtype)
        bias = None if table.bias is None else table.bias.astype(dtype)
        return LowRankTable(QuantizedTable.quantize(table.left.weight, fmt), table.right.astype(dtype), bias)
    raise EdgeembError(f"quantize: the table is already quantised ({table.describe()})")
