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

or, in Python, `Recipe.from_steps([SVDConfig(rank=128), QuantizeConfig(format=Int4(block_size=32))], name="svd-int4")`.
A `Recipe` is validated however it is built: unknown steps and keys are errors that name the
offending key, values are not coerced, and the order rules hold. A recipe's `digest` hashes its
validated content (step defaults filled in, format options as written), so two runs of the same
recipe are recognisably the same. Recipe files are bounded: at most 1 MiB, no YAML anchors or
aliases (an alias bomb grows a few lines into gigabytes once a value is printed or hashed).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from edgeemb.errors import EdgeembError
from edgeemb.steps import STEPS, StepConfig, StepContext
from edgeemb.table import EmbeddingTable, TrimmedTable

DEFAULT_RECIPE = "int4"
MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few lines: anything larger is not one
_MAX_DEPTH = 32  # YAML nesting; a recipe needs about 5 levels
_EVALUATE_KEYS = ("sts", "beir", "texts", "perplexity")


class ExportConfig(BaseModel):
    """What `compress` exports OUT/ to once it is written (see `edgeemb export`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    format: Literal["gguf", "onnx", "st", "hf"]
    type: str | None = None  # gguf: the GGUF type for a table not already stored in one
    head_type: str | None = None  # gguf: quantise a separate output.weight to this type (default: left as it is)
    quantize_rest: bool = False  # onnx: the other MatMul weights to int8 (onnxruntime dynamic quantisation)

    def as_written(self) -> dict:
        """The config for a recipe's dict and digest; head_type, added later, is left out while
        unset, so the digests of recipes written before it stand."""
        return self.model_dump(mode="json", exclude={"head_type"} if self.head_type is None else None)


class OffloadPlan(BaseModel):
    """How the device a recipe is for keeps the table on flash: the defaults `edgeemb offload OUT`
    takes for OUT/ (options given on the command line win)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    profiles: tuple[str, ...] = Field(default=("ufs-3.1",), strict=False)  # a recipe writes a list
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


class Recipe(BaseModel):
    """Steps applied in order, with the evaluation data, export and offload plan that go with them.

    The order rules are the type's own: a step that renumbers the vocabulary comes first and once;
    a step that makes a static model comes first, and the recipe cannot export it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    name: str = Field(min_length=1, max_length=200)
    steps: tuple[tuple[str, SerializeAsAny[StepConfig]], ...]
    description: str = ""
    evaluate: dict[str, str] = Field(default_factory=dict)
    export: ExportConfig | None = None
    offload: OffloadPlan | None = None

    @classmethod
    def from_steps(
        cls,
        steps: Iterable[StepConfig],
        *,
        name: str,
        description: str = "",
        evaluate: dict[str, str] | None = None,
        export: ExportConfig | None = None,
        offload: OffloadPlan | None = None,
    ) -> Recipe:
        """A recipe of these step configs, in order (each config knows its step); a recipe that
        breaks a rule is an error of one line, as a recipe file's is."""
        try:
            return cls.model_validate(
                {
                    "name": name,
                    "steps": list(steps),
                    "description": description,
                    "evaluate": evaluate,
                    "export": export,
                    "offload": offload,
                }
            )
        except ValidationError as exc:
            raise EdgeembError(f"recipe {name}: {_recipe_error(exc)}") from None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        # The name becomes part of a folder's name (edgeemb-out/MODEL-NAME).
        if name in (".", "..") or any(char in name for char in "/\\\0"):
            raise ValueError(f"{name!r} is not a plain name: it names a folder, so no '/', '\\' or '..'")
        return name

    @field_validator("steps", mode="before")
    @classmethod
    def _step_configs(cls, steps: Any) -> Any:
        if not isinstance(steps, list | tuple) or not steps:
            raise ValueError("'steps' must be a non-empty list, e.g. [{quantize: {format: int4}}]")
        return tuple(_step(item, index) for index, item in enumerate(steps, start=1))

    @field_validator("evaluate", mode="before")
    @classmethod
    def _evaluation_data(cls, evaluate: Any) -> Any:
        if evaluate is None:
            return {}
        if not isinstance(evaluate, dict) or set(evaluate) - set(_EVALUATE_KEYS):
            raise ValueError(f"'evaluate' takes only {', '.join(_EVALUATE_KEYS)} (paths to the user's data)")
        return evaluate

    @model_validator(mode="after")
    def _order(self) -> Recipe:
        trimming = [index for index, (name, _) in enumerate(self.steps) if STEPS[name].trims_vocab]
        if trimming and trimming != [0]:
            name = self.steps[trimming[-1]][0]
            raise ValueError(f"'{name}' renumbers the vocabulary: it must be the first step, and come once")
        replacing = [index for index, (name, _) in enumerate(self.steps) if STEPS[name].replaces_model]
        if replacing and (replacing != [0] or self.export is not None):
            raise ValueError(
                f"'{self.steps[replacing[0]][0]}' makes a static model: it must be the first step, "
                "and the recipe cannot export it as the source model's file"
            )
        return self

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "steps": [{name: config.model_dump(mode="json")} for name, config in self.steps],
            "evaluate": dict(self.evaluate),
            **({"export": self.export.as_written()} if self.export else {}),
            **({"offload": self.offload.model_dump(mode="json")} if self.offload else {}),
        }

    def steps_as_written(self) -> list[dict]:
        """The steps with only the arguments given (a file's as written; defaults left out)."""
        return [{name: config.model_dump(mode="json", exclude_unset=True)} for name, config in self.steps]

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


def _step(item: Any, index: int) -> tuple[str, StepConfig]:
    """One step as (name, validated config), from a config (`SVDConfig(rank=8)`), a (name, config)
    pair, or a recipe's `{name: {arguments}}` or bare `name`."""
    if isinstance(item, StepConfig):
        if item.step_name is None:
            known = ", ".join(sorted(STEPS))
            raise ValueError(f"step {index}: a {type(item).__name__} configures no step (steps: {known})")
        return item.step_name, item
    if isinstance(item, str):
        item = {item: {}}
    elif isinstance(item, tuple) and len(item) == 2:
        item = dict([item])
    if not isinstance(item, dict) or len(item) != 1:
        raise ValueError(f"step {index} must be one 'name: {{arguments}}' mapping")
    ((name, arguments),) = item.items()
    if name not in STEPS:
        shown = repr(name) if isinstance(name, str) else f"named by a {type(name).__name__}"
        raise ValueError(f"step {index}: unknown step {shown} (known: {', '.join(sorted(STEPS))})")
    config_type = STEPS[name].config_type
    if isinstance(arguments, StepConfig):
        if not isinstance(arguments, config_type):
            raise ValueError(f"step {index} '{name}' takes a {config_type.__name__}, not a {type(arguments).__name__}")
        return name, arguments
    try:
        return name, config_type.model_validate(arguments or {})
    except ValidationError as exc:
        raise ValueError(f"step {index} '{name}': {_first_error(exc, config_type)}") from None


def narrowed(context: StepContext, keep) -> StepContext:
    """`context` for a trimmed vocabulary: token texts and the tokenizer speak the new ids."""
    tokenize = None
    vocabulary = context.vocabulary
    if vocabulary is not None:  # built on first use: most later steps never tokenise
        trimmed = functools.cache(lambda: vocabulary().retokenizer(keep))
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


def is_recipe_path(spec: str | Path) -> bool:
    """Whether `spec` names a file rather than a built-in recipe: a Path, or a string with a path
    separator or a .yaml/.yml suffix. A bare word is always a built-in's name, so a folder or file
    called `int8` in the working directory does not hide the built-in `int8`."""
    if isinstance(spec, Path):
        return True
    separators = {os.sep, "/", *([os.altsep] if os.altsep else [])}
    return any(sep in spec for sep in separators) or spec.lower().endswith((".yaml", ".yml"))


def recipe_file(spec: str | Path) -> Path:
    """The YAML file a recipe argument names: a built-in's by its name, or the path given (see
    `is_recipe_path`: `./int8` or `int8.yaml` for a file named like a built-in)."""
    if is_recipe_path(spec):
        path = Path(spec)
        if not path.exists():
            raise EdgeembError(f"recipe {path}: no such file")
        return path
    known = builtin_recipes()
    if spec not in known:
        raise EdgeembError(
            f"no recipe '{spec}': not a built-in recipe ({', '.join(sorted(known))}); "
            f"a recipe file is given as a path (./{spec}.yaml)"
        )
    return known[str(spec)]


def load_recipe(spec: str | Path | None = None) -> Recipe:
    """A recipe by the name of one shipped in recipes/ (default: int4), or from a YAML file given
    as a path (see `recipe_file`)."""
    path = recipe_file(DEFAULT_RECIPE if spec is None else spec)
    try:
        data = yaml.load(_read_bounded(path), Loader=_RecipeLoader)  # a SafeLoader, bounded
    except _Refused as exc:
        raise EdgeembError(f"recipe {path}: {exc}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise EdgeembError(f"recipe {path}: cannot read it as YAML ({' '.join(str(exc).split())})") from None
    return parse_recipe(data, default_name=path.stem, origin=str(path))


def parse_recipe(data: object, default_name: str = "recipe", origin: str = "recipe") -> Recipe:
    """A recipe from its YAML form (a mapping); any error is one line naming `origin` and the key."""
    if not isinstance(data, dict):
        raise EdgeembError(f"recipe {origin}: expected a mapping with a 'steps' list")
    given = {**data, "name": data.get("name") or default_name}
    if given.get("description") is None:
        given.pop("description", None)
    try:
        return Recipe.model_validate(given)
    except ValidationError as exc:
        raise EdgeembError(f"recipe {origin}: {_recipe_error(exc)}") from None


def _recipe_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    key, *rest = [str(part) for part in error["loc"]] or [""]
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden" and not rest:
        return f"unknown key '{key}' (allowed: {', '.join(sorted(Recipe.model_fields))})"
    if key in ("", "steps", "evaluate") and error["type"] == "value_error":
        return message  # the validators' own sentences
    if rest or key in ("export", "offload"):
        return f"{key}: {'.'.join(rest) or 'value'}: {message}"
    return f"{key}: {message}"


class _Refused(yaml.YAMLError):
    """YAML a recipe must not contain."""


class _RecipeLoader(yaml.SafeLoader):
    """A SafeLoader that refuses anchors and aliases (each alias repeats a whole subtree: nine
    lines of them mean 9**9 strings once printed or hashed) and nesting no recipe needs."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if getattr(event, "anchor", None) is not None:
            anchor = event.anchor
            raise _Refused(
                f"line {line}: YAML anchors and aliases (&{anchor}, *{anchor}) are not allowed in a recipe; "
                "write the value out"
            )
        if self._depth >= _MAX_DEPTH:
            raise _Refused(f"line {line}: nested more than {_MAX_DEPTH} levels deep")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _read_bounded(path: Path) -> str:
    """The text of a regular file of at most MAX_RECIPE_BYTES (a FIFO or device is refused
    before it is read: opened non-blocking, checked, then read with a bound)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _Refused("not a regular file")
    with os.fdopen(fd, "rb") as file:
        data = file.read(MAX_RECIPE_BYTES + 1)
    if len(data) > MAX_RECIPE_BYTES:
        raise _Refused(f"larger than {MAX_RECIPE_BYTES // (1 << 20)} MiB: a recipe is a few lines of YAML")
    return data.decode("utf-8")


def _first_error(exc: ValidationError, config_type: type[StepConfig]) -> str:
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}' (allowed: {', '.join(config_type.model_fields)})"
    message = error["msg"].removeprefix("Value error, ")
    return f"{key}: {message}" if key else message
