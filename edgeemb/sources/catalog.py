"""Short names for real models that install from PyPI, described by the manifests in models/."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from edgeemb.errors import EdgeembError

DEFAULT_MODEL = "minilm"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    package: str
    install: str
    module: str
    call: str | None = None  # a function of the module returning the model path
    file: str | None = None  # or a file inside the module's folder (found without importing it)


def catalog() -> dict[str, ModelEntry]:
    entries = {}
    for manifest in resources.files("edgeemb.catalog.models").iterdir():
        if manifest.name.endswith(".yaml"):
            entry = ModelEntry(**yaml.safe_load(manifest.read_text()))
            entries[entry.name] = entry
    return entries


def locate(entry: ModelEntry) -> Path:
    """The installed model's path, or a clear error saying what to install."""
    spec = importlib.util.find_spec(entry.module)
    if spec is None:
        raise EdgeembError(f"model '{entry.name}' needs the package {entry.package}: {entry.install}")
    if entry.file:
        if not spec.submodule_search_locations:
            raise EdgeembError(
                f"model '{entry.name}': {entry.module} is not a package folder; reinstall: {entry.install}"
            )
        return Path(spec.submodule_search_locations[0]) / entry.file
    if entry.call is None:
        raise EdgeembError(f"model '{entry.name}': its catalog entry names neither a file nor a call")
    try:
        return Path(getattr(importlib.import_module(entry.module), entry.call)())
    except (ImportError, OSError, ValueError) as exc:
        raise EdgeembError(
            f"model '{entry.name}': {entry.package} could not provide the model ({exc}); reinstall: {entry.install}"
        ) from None
