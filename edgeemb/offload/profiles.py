"""Flash profiles: how fast a class of device storage serves reads, as published by its vendors.

A profile is a YAML data file (`edgeemb/offload/profiles/NAME.yaml`, or any path the user gives)
that cites where each figure comes from. The read model built from it is deliberately simple and
stated in full, so every simulated latency can be checked by hand:

    a batch of k reads of B bytes in all, issued together (one token's misses), takes
    max(ceil(k / queue_depth) * read_latency, k / rand_read_iops) + B / seq_read_bandwidth

i.e. up to `queue_depth` reads overlap their access latency, the device never exceeds its
published random-read rate, and every byte crosses the bus at the sequential bandwidth.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeemb.errors import EdgeembError

Profile = TypeVar("Profile", bound=BaseModel)


class Citation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    figure: str
    cite: str
    url: str | None = None
    note: str | None = None


class FlashProfile(BaseModel):
    """One class of flash storage (UFS 3.1, eMMC 5.1, ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    description: str
    page_size: int = Field(gt=0)  # bytes: the smallest unit the device reads
    seq_read_mb_s: float = Field(gt=0)  # MB/s, 10^6 bytes per second
    rand_read_iops: float = Field(gt=0)  # 4 KiB random reads/s at `queue_depth`
    queue_depth: int = Field(gt=0)
    read_latency_us: float = Field(gt=0)  # one 4 KiB random read at queue depth 1
    sources: tuple[Citation, ...] = Field(min_length=1)

    def read_seconds(self, reads: int, nbytes: int) -> float:
        """Time to serve `reads` reads of `nbytes` bytes in all, issued together (module docstring)."""
        if reads == 0:
            return 0.0
        access = max(math.ceil(reads / self.queue_depth) * self.read_latency_us * 1e-6, reads / self.rand_read_iops)
        return access + nbytes / (self.seq_read_mb_s * 1e6)


def builtin_files(package: str) -> dict[str, Path]:
    """The profile YAML files shipped in `package`/profiles, by name."""
    folder = resources.files(package) / "profiles"
    return {Path(entry.name).stem: Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def load_profile_file(spec: str | Path, package: str, model: type[Profile], kind: str) -> Profile:
    """A profile shipped in `package` by name, or a YAML file by path, validated as `model`."""
    builtin = builtin_files(package)
    path = builtin.get(str(spec)) or Path(spec)
    if not path.is_file():
        known = ", ".join(sorted(builtin))
        raise EdgeembError(f"unknown {kind} {str(spec)!r}: not a built-in ({known}) nor a YAML file")
    try:
        return model.model_validate(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ValidationError) as exc:
        first = str(exc).splitlines()
        raise EdgeembError(f"{path}: not a valid {kind} ({'; '.join(first[:3])})") from None


def builtin_names() -> list[str]:
    """Built-in flash profile names, alphabetical (file names only: nothing is read)."""
    return sorted(builtin_files("edgeemb.offload"))


def profile_names() -> list[str]:
    """Built-in flash profiles, fastest first (by the time of one 4 KiB read)."""
    profiles = [load_profile(name) for name in builtin_names()]
    return [p.name for p in sorted(profiles, key=lambda p: p.read_seconds(1, p.page_size))]


def load_profile(spec: str | Path) -> FlashProfile:
    """A built-in flash profile by name, or a flash profile YAML file by path."""
    return load_profile_file(spec, "edgeemb.offload", FlashProfile, "flash profile")
