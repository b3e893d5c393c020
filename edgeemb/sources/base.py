"""`SourceModel`: what a loader found in a model, around its embedding table."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from edgeemb.table import DenseTable
from edgeemb.vocab import Vocabulary


@dataclass(eq=False)
class SourceModel:
    """A model's token embedding table and the facts needed to judge it.

    `table` holds the weights as float32 (dequantised if the file stores them quantised);
    `stored_dtype` and `stored_nbytes` say how the source file actually stores them.
    """

    name: str  # short name or the path as given
    path: Path  # the model directory or file
    format: str  # "sentence-transformers" | "transformers" | "gguf"
    architecture: str  # e.g. "bert", "llama", "gemma3"
    table: DenseTable
    tensor_name: str  # name of the embedding tensor in the source file
    stored_dtype: str  # e.g. "F32", "BF16", "Q8_0"
    stored_nbytes: int
    total_params: int  # every weight of the model, the table included
    total_nbytes: int  # bytes of every tensor as stored
    tied: bool | None  # output head shares the table; None: the model has no output head
    layers: int | None  # transformer blocks (decoder layers), if the model says
    weights_file: Path  # the file holding the table (hashed for the manifest)
    tokens: list[str] | None = field(default=None, repr=False)  # token text by id, if known
    tokenize: Callable[[str], list[int]] | None = field(default=None, repr=False)  # text -> ids, no special tokens
    # text, max tokens -> mean square of each input of the tied output head (GGUF causal LMs)
    head_input_power: Callable[[str, int], np.ndarray] | None = field(default=None, repr=False)
    vocabulary: Callable[[], Vocabulary] | None = field(default=None, repr=False)  # the tokenizer, as a trim needs it

    @property
    def vocab_size(self) -> int:
        return self.table.shape[0]

    @property
    def dim(self) -> int:
        return self.table.shape[1]

    @property
    def table_params(self) -> int:
        return self.vocab_size * self.dim

    @cached_property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        with open(self.weights_file, "rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
        return digest.hexdigest()
