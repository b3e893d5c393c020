"""Recipes: a short YAML list of named steps with arguments, validated on load.

    name: svd-int4
    description: low-rank factors, then int4 blocks
    steps:
      - svd: {rank: 128}
      - quantize: {format: int4, block_size: 32}
    evaluate:            # optional; paths are the user's data, relative to the working directory
      sts: data/stsb_en_dev.tsv
    export: {format: gguf, type: Q4_0}   # optional; `compress` then exports OUT/ and verifies it
    offload: {profiles: [emmc-5.1], cache_mb: 2, head_type: Q4_0}  # optional; `edgeemb offload OUT`'s defaults

Unknown steps and keys are errors that name the offending key. A recipe's `digest` hashes its
validated content (defaults filled in), so two runs of the same recipe are recognisably the same.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgeemb.errors import EdgeembError
from edgeemb.steps import STEPS, StepContext, StepConfig
from edgeemb.table import EmbeddingTable, TrimmedTable

DEFAULT_RECIPE = "int4"
_TOP_KEYS = {"name", "description", "steps", "evaluate", "export", "offload"}
_EVALUATE_KEYS = ("sts", "beir", "texts", "perplexity")


class ExportConfig(BaseModel):
    """What `compress` exports OUT/ to once it is written (see `edgeemb export`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Literal["gguf", "onnx", "st"]
    type: str | None = None  # gguf: the GGUF type for a table not already stored in one
    quantize_rest: bool = False  # onnx: the other MatMul weights to int8 (onnxruntime dynamic quantisation)


class OffloadPlan(BaseModel):
    """How the device a recipe is for keeps the table on flash: the defaults `edgeemb offload OUT`
    takes for OUT/ (options given on the command line win)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    profiles: tuple[str, ...] = ("ufs-3.1",)
    cache_mb: float | None = Field(default=None, gt=0)
    hot_mb: float = Field(default=0.0, ge=0)
    layout: Literal["single", "ple", "ple-layer"] = "single"
    head_type: str | None = None

    @field_validator("profiles")
    @classmethod
    def _known_profiles(cls, profiles: tuple[str, ...]) -> tuple[str, ...]:
        from edgeemb.offload.profiles import builtin_names

        unknown = [name for name in profiles if name not in builtin_names()]
        if unknown:
            raise ValueError(f"unknown flash profile {unknown[0]!r} (built in: {', '.join(builtin_names())})")
        return profiles


@dataclass(frozen=True)
class Recipe:
    name: str
    steps: tuple[tuple[str, StepConfig], ...]
    description: str = ""
    evaluate: dict[str, str] = field(default_factory=dict)
    export: ExportConfig | None = None
    offload: OffloadPlan | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "steps": [{name: config.model_dump(mode="json")} for name, config in self.steps],
            "evaluate": dict(self.evaluate),
            **({"export": self.export.model_dump(mode="json")} if self.export else {}),
            **({"offload": self.offload.model_dump(mode="json")} if self.offload else {}),
        }

    @property
    def digest(self) -> str:
        content = {k: v for k, v in self.to_dict().items() if k != "evaluate"}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    @property
    def replaces_model(self) -> bool:
        """The recipe distils a static model (its table is the whole model, not its input table)."""
        return any(STEPS[name].replaces_model for name, _ in self.steps)

    def apply(self, table: EmbeddingTable, context: StepContext = StepContext()) -> EmbeddingTable:
        trimmed = None
        for name, config in self.steps:
            table = STEPS[name].apply(table, config, context)
            if isinstance(table, TrimmedTable):  # later steps work on the kept rows, in the new ids
                trimmed, table = table, table.rows
                context = narrowed(context, trimmed.keep)
        return table if trimmed is None else TrimmedTable(table, trimmed.keep, trimmed.facts)


def narrowed(context: StepContext, keep) -> StepContext:
    """`context` for a trimmed vocabulary: token texts and the tokenizer speak the new ids."""
    tokenize = None
    if context.vocabulary is not None:  # built on first use: most later steps never tokenise
        trimmed = functools.cache(lambda: context.vocabulary().retokenizer(keep))
        tokenize = lambda text: trimmed()(text)  # noqa: E731
    return replace(
        context,
        tokens=[context.tokens[i] for i in keep] if context.tokens is not None else None,
        tokenize=tokenize,
        vocabulary=None,
    )


def builtin_recipes() -> dict[str, Path]:
    folder = resources.files("edgeemb.catalog.recipes")
    return {Path(entry.name).stem: Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def load_recipe(spec: str | Path | None = None) -> Recipe:
    """A recipe from a YAML path, or by the name of one shipped in recipes/ (default: int4)."""
    spec = DEFAULT_RECIPE if spec is None else spec
    path = Path(spec)
    if not path.exists():
        known = builtin_recipes()
        if str(spec) not in known:
            raise EdgeembError(f"no recipe '{spec}': not a file, nor a built-in recipe ({', '.join(sorted(known))})")
        path = known[str(spec)]
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise EdgeembError(f"recipe {path}: cannot read it as YAML ({' '.join(str(exc).split())})") from None
    return parse_recipe(data, default_name=path.stem, origin=str(path))


def parse_recipe(data: object, default_name: str = "recipe", origin: str = "recipe") -> Recipe:
    def fail(message: str) -> EdgeembError:
        return EdgeembError(f"recipe {origin}: {message}")

    if not isinstance(data, dict):
        raise fail("expected a mapping with a 'steps' list")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise fail(f"unknown key '{sorted(unknown)[0]}' (allowed: {', '.join(sorted(_TOP_KEYS))})")
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise fail("'steps' must be a non-empty list, e.g. [{quantize: {format: int4}}]")
    steps = tuple(_parse_step(item, index, fail) for index, item in enumerate(raw_steps, start=1))
    evaluate = data.get("evaluate") or {}
    if not isinstance(evaluate, dict) or set(evaluate) - set(_EVALUATE_KEYS):
        raise fail(f"'evaluate' takes only {', '.join(_EVALUATE_KEYS)} (paths to the user's data)")
    trimming = [index for index, (name, _) in enumerate(steps) if STEPS[name].trims_vocab]
    if trimming and trimming != [0]:
        raise fail(f"'{steps[trimming[-1]][0]}' renumbers the vocabulary: it must be the first step, and come once")
    replacing = [index for index, (name, _) in enumerate(steps) if STEPS[name].replaces_model]
    if replacing and (replacing != [0] or data.get("export") is not None):
        raise fail(f"'{steps[replacing[0]][0]}' makes a static model: it must be the first step, and the recipe cannot export it as the source model's file")
    return Recipe(
        name=str(data.get("name") or default_name),
        description=str(data.get("description") or ""),
        steps=steps,
        evaluate={key: str(value) for key, value in evaluate.items()},
        export=_section(data, "export", ExportConfig, fail),
        offload=_section(data, "offload", OffloadPlan, fail),
    )


def _section(data: dict, key: str, model: type[BaseModel], fail):
    if data.get(key) is None:
        return None
    try:
        return model.model_validate(data[key])
    except ValidationError as exc:
        error = exc.errors()[0]
        raise fail(f"{key}: {'.'.join(map(str, error['loc'])) or 'value'}: {error['msg'].removeprefix('Value error, ')}") from None


def _parse_step(item: object, index: int, fail) -> tuple[str, StepConfig]:
    if isinstance(item, str):
        item = {item: {}}
    if not isinstance(item, dict) or len(item) != 1:
        raise fail(f"step {index} must be one 'name: {{arguments}}' mapping")
    (name, arguments), = item.items()
    if name not in STEPS:
        raise fail(f"step {index}: unknown step '{name}' (known: {', '.join(sorted(STEPS))})")
    config_type = STEPS[name].config_type
    try:
        return name, config_type.model_validate(arguments or {})
    except ValidationError as exc:
        raise fail(f"step {index} '{name}': {_first_error(exc, config_type)}") from None


def _first_error(exc: ValidationError, config_type: type[StepConfig]) -> str:
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}' (allowed: {', '.join(config_type.model_fields)})"
    message = error["msg"].removeprefix("Value error, ")
    return f"{key}: {message}" if key else message
