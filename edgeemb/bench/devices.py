"""Device profiles: the CPU, core count, memory and flash storage of a class of device, as data.

A profile is a YAML file (`edgeemb/bench/profiles/NAME.yaml`, or any path the user gives) citing
where each figure comes from. `edgeemb bench --profile NAME` applies its cores and memory cap to
the benchmark on this host; `edgeemb cross --target NAME` builds llama.cpp for its `arm_arch` and
tries the build under qemu as its `qemu_cpu`; `flash` names the flash profile (`edgeemb offload`)
of its storage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgeemb.offload.profiles import (
    Citation,
    builtin_files,
    builtin_names,
    load_profile_file,
)


class DeviceProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    description: str
    cpu: str  # the core the device runs inference on, e.g. Cortex-A72
    qemu_cpu: str  # qemu's model of it (QEMU_CPU=...)
    arm_arch: str  # what its llama.cpp build targets (GGML_CPU_ARM_ARCH, gcc's -march)
    os: Literal["linux", "android"]
    cores: int = Field(gt=0)
    memory_mb: int = Field(gt=0)  # the device's RAM
    memory_cap_mb: int = Field(gt=0)  # what one model may use there: the benchmark's memory cap
    flash: str  # a flash profile name (edgeemb/offload/profiles)
    sources: tuple[Citation, ...] = Field(min_length=1)

    @field_validator("flash")
    @classmethod
    def _known_flash(cls, flash: str) -> str:
        if flash not in builtin_names():
            raise ValueError(f"unknown flash profile {flash!r} ({', '.join(builtin_names())})")
        return flash


def device_names() -> list[str]:
    return sorted(builtin_files("edgeemb.bench"))


def load_device(spec: str | Path) -> DeviceProfile:
    """A built-in device profile by name, or a device profile YAML file by path."""
    return load_profile_file(spec, "edgeemb.bench", DeviceProfile, "device profile")
