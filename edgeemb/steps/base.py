"""The step type: a config (a frozen pydantic model: data) and a function
`(EmbeddingTable, config, context) -> EmbeddingTable` (the work), registered by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Strict

from edgeemb.table import EmbeddingTable
from edgeemb.vocab import Vocabulary


class StepConfig(BaseModel):
    """Base of every step's arguments: immutable, unknown keys are errors, and values are not
    coerced (`rank: "8"` or `center: "no"` is an error naming the key, not 8 or False). A config
    knows the step it configures (`step_name`, set when the step registers)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    step_name: ClassVar[str | None] = None


# A path as a recipe writes it, a string (strict validation alone would take only Path objects).
# A tuple field that a recipe writes as a list says so the same way: Field(strict=False).
PathArgument = Annotated[Path, Strict(False)]


@dataclass(frozen=True)
class StepContext:
    """The model around the table, when known: token texts by id, a tokenizer (text -> ids), the
    importance of the table's columns to a tied output head, measured on the user's calibration
    text (mean square of the head's inputs; computed on first use), and the source model's file
    or folder with its format (only the peer steps read it: other tools work on model files), and
    the tokenizer's vocabulary as `trim_vocab` needs it (built on first use)."""

    tokens: list[str] | None = None
    tokenize: Callable[[str], list[int]] | None = None
    head_importance: Callable[[], np.ndarray] | None = None
    model_path: Path | None = None
    model_format: str | None = None  # "sentence-transformers" | "transformers" | "gguf"
    vocabulary: Callable[[], Vocabulary] | None = None


@dataclass(frozen=True)
class Step:
    name: str
    config_type: type[StepConfig]
    apply: Callable[[EmbeddingTable, StepConfig, StepContext], EmbeddingTable]
    # The step's table is a whole static model (model2vec), not the model's input table: it is
    # evaluated on its own, and no later step may need the model's own table.
    replaces_model: bool = False
    # The step renumbers the vocabulary (returns a TrimmedTable): it comes first, and the steps
    # after it see the kept rows and a context speaking the new ids.
    trims_vocab: bool = False
    # The step runs another tool's method (a baseline that compare marks apart).
    peer: bool = False


STEPS: dict[str, Step] = {}


def register(
    name: str,
    config_type: type[StepConfig],
    *,
    replaces_model: bool = False,
    trims_vocab: bool = False,
    peer: bool = False,
):
    def wrap(function):
        if "step_name" in vars(config_type):
            raise TypeError(f"{config_type.__name__} already configures step {config_type.step_name!r}")
        config_type.step_name = name
        STEPS[name] = Step(name, config_type, function, replaces_model, trims_vocab, peer)
        return function

    return wrap
