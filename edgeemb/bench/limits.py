"""Run a command under a device's limits on this host: its cores, its memory cap, optionally a CPU
quota and its flash storage's read speed.

- Cores: the child is pinned to the profile's number of this host's CPUs (`sched_setaffinity`,
  what `taskset` does). A host with fewer CPUs than the profile applies what it has, and says so.
- Memory: a memory cgroup of its own, created for the run and removed after it: cgroup v2
  (`memory.max`, swap off with `memory.swap.max`) or v1 (`memory.limit_in_bytes`, and
  `memory.memsw.limit_in_bytes` where the kernel accounts swap). The kernel charges the child's
  anonymous memory and the page cache it reads (a mmapped model's pages), reclaims clean pages
  under the cap and kills the child when that is not enough: such a run "does not fit".
  Without cgroups (not root, no memory controller) a watchdog polls the child's RSS every 20 ms
  and kills it above the cap: page cache is then not charged, and a spike shorter than a poll can
  slip through. The result says which limit was applied.
- CPU quota (optional): a share of each pinned core's time, by the cgroup cpu controller
  (`cpu.max` in v2, `cpu.cfs_quota_us` in v1): a crude stand-in for a slower core.
- Flash (optional): reads of the model's disk throttled to the flash profile's sequential
  bandwidth and random-read IOPS (`io.max` in v2, `blkio.throttle.read_*_device` in v1). Reads are
  synchronous in the reader's context, so buffered reads and mmap page faults are throttled as
  direct I/O is, once the file is out of the page cache (the benchmark evicts it first).
Neither has a user-space fallback: without a cgroup they are not applied, and the result says so.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgeemb.errors import EdgeembError
from edgeemb.proc import memory_status

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_POLL_SECONDS = 0.02
_names = itertools.count()

MemoryLimit = Literal["auto", "cgroup", "watchdog"]


@dataclass(frozen=True)
class ReadThrottle:
    """Reads from the block device holding a file, capped as a flash profile reads."""

    device: str  # MAJOR:MINOR of the whole disk
    bytes_per_s: int
    iops: int


@dataclass
class LimitedRun:
    returncode: int
    stdout: str
    stderr: str
    limits: dict  # what was asked and what was applied, for the report
    out_of_memory: bool = False  # killed for going over the memory cap
    charged_peak_bytes: int | None = None  # the cgroup's peak charge (anonymous memory and page cache)


def run_limited(
    command: list[str],
    request: dict,
    *,
    cores: int | None = None,
    memory_mb: int | None = None,
    memory_limit: MemoryLimit = "auto",
    cpu_quota: float | None = None,
    read_throttle: ReadThrottle | None = None,
) -> LimitedRun:
    """Run the worker `command` on `request` (JSON on its stdin), pinned to `cores` CPUs, capped at
    `memory_mb`, given `cpu_quota` of each pinned core's time and its reads throttled (None: no
    such limit). The worker enters its limits itself (`enter_limits`), first thing: a parent that
    pinned and moved a forked child before exec (preexec_fn) could deadlock when it has threads."""
    available = sorted(os.sched_getaffinity(0))
    cpus = available[:cores] if cores else available
    limits: dict = {"cores": {"asked": cores, "applied": len(cpus), "cpus": cpus, "how": "sched_setaffinity"}}
    if cores and cores > len(available):
        limits["cores"]["note"] = f"{cores} cores asked, this host has {len(available)}"
    if cpu_quota is not None and not 0 < cpu_quota <= 1:
        raise EdgeembError(f"the CPU quota is a share of each core's time, in (0, 1]; got {cpu_quota}")
    cap = memory_mb if memory_mb and memory_limit in ("auto", "cgroup") else None
    cgroup = None
    if cap or cpu_quota or read_throttle:
        cgroup = _Cgroup.create(cap, cpu_quota and (cpu_quota, len(cpus)), read_throttle)
    if memory_mb and memory_limit == "cgroup" and not (cgroup and cgroup.memory):
        raise EdgeembError(
            "cannot create a memory cgroup (needs root and a memory controller under /sys/fs/cgroup); "
            "run as root, or use --memory-limit watchdog"
        )
    watched = memory_mb and not (cgroup and cgroup.memory)
    if memory_mb:
        how = "RSS watchdog (user space, polled every 20 ms)" if watched else cgroup.how("memory")
        limits["memory"] = {"cap_mb": memory_mb, "how": how}
        if not watched and cgroup.swap_note:
            limits["memory"]["swap"] = cgroup.swap_note
    if cpu_quota:
        how = cgroup.how("cpu") if cgroup and cgroup.cpu else "not applied: no cpu cgroup (needs root)"
        limits["cpu_quota"] = {"share": cpu_quota, "how": how}
    if read_throttle:
        how = cgroup.how("io") if cgroup and cgroup.io else "not applied: no blkio/io cgroup (needs root)"
        limits["reads"] = {
            "device": read_throttle.device,
            "bytes_per_s": read_throttle.bytes_per_s,
            "iops": read_throttle.iops,
            "how": how,
        }

    procs = [str(path / "cgroup.procs") for path in cgroup.paths] if cgroup else []
    request = {**request, "limits": {"cpus": cpus, "cgroup_procs": procs}}
    try:
        child = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        watchdog = _Watchdog(child.pid, memory_mb) if watched else None
        stdout, stderr = child.communicate(json.dumps(request))
        if watchdog is not None:
            watchdog.stop()
        run = LimitedRun(child.returncode, stdout, stderr, limits)
        if cgroup is not None and cgroup.memory:
            run.charged_peak_bytes = cgroup.peak()
            run.out_of_memory = child.returncode == -signal.SIGKILL and cgroup.oom_killed()
        elif watchdog is not None:
            run.out_of_memory = watchdog.killed
        return run
    finally:
        if cgroup is not None:
            cgroup.remove()


def block_device(path: Path) -> str | None:
    """MAJOR:MINOR of the whole disk holding `path` (throttle rules name disks, not partitions),
    or None when it is on no block device (tmpfs, overlay, network)."""
    number = os.stat(path).st_dev
    entry = Path(f"/sys/dev/block/{os.major(number)}:{os.minor(number)}")
    if not entry.exists():
        return None
    if (entry / "partition").exists():
        return (entry.resolve().parent / "dev").read_text().strip()
    return f"{os.major(number)}:{os.minor(number)}"


def enter_limits(limits: dict) -> None:
    """The worker's side of `run_limited`: pin this process to its CPUs and join its cgroup, before
    it loads anything (the interpreter and numpy, ~26 MB, are charged where they started)."""
    os.sched_setaffinity(0, limits["cpus"])
    for procs in limits["cgroup_procs"]:
        Path(procs).write_text(str(os.getpid()))


def memory_cgroups_available() -> bool:
    """Whether this process can make memory cgroups (root and a memory controller)."""
    cgroup = _Cgroup.create(64, None, None)
    if cgroup is not None:
        cgroup.remove()
    return cgroup is not None and cgroup.memory


def evict_page_cache(path: Path) -> None:
    """Drop the file's (or folder's files') clean pages from the page cache, as after a reboot: the
    benchmark then reads the model from storage, and a memory cgroup is charged for its pages
    (a page stays charged to the group that first read it, usually not ours)."""
    for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if file.is_file():
            descriptor = os.open(file, os.O_RDONLY)
            try:
                os.fsync(descriptor)  # dirty pages (a file just written) are not dropped
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)


class _Cgroup:
    """A cgroup of our own for one run, with the controllers its limits need: one group under
    cgroup v2, one per controller hierarchy under v1. A controller that cannot be set up is left
    out (its flag stays False) and the caller reports that limit as not applied."""

    _PERIOD_US = 100_000

    def __init__(self, version: int) -> None:
        self.version, self.paths = version, []
        self.memory = self.cpu = self.io = False
        self.swap_note: str | None = None

    def how(self, controller: str) -> str:
        files = {
            2: {"memory": "memory.max", "cpu": "cpu.max", "io": "io.max"},
            1: {"memory": "memory.limit_in_bytes", "cpu": "cpu.cfs_quota_us", "io": "blkio.throttle.read_bps_device"},
        }
        return f"cgroup v{self.version} {controller} limit ({files[self.version][controller]})"

    @classmethod
    def create(cls, memory_mb: int | None, cpu: tuple[float, int] | None, reads: ReadThrottle | None) -> _Cgroup | None:
        name = f"edgeemb-bench-{os.getpid()}-{next(_names)}"
        quota_us = cpu and str(round(cpu[0] * cpu[1] * cls._PERIOD_US))  # the share of each core, over all pinned cores
        v2 = _CGROUP_ROOT / "cgroup.controllers"
        if v2.is_file():
            group = cls(2)
            try:
                (_CGROUP_ROOT / name).mkdir()
            except OSError:
                return None
            group.paths.append(_CGROUP_ROOT / name)
            available = v2.read_text().split()
            settings = {
                "memory": memory_mb and [("memory.max", str(memory_mb * 2**20))],
                "cpu": cpu and [("cpu.max", f"{quota_us} {cls._PERIOD_US}")],
                "io": reads and [("io.max", f"{reads.device} rbps={reads.bytes_per_s} riops={reads.iops}")],
            }
            for controller, files in settings.items():
                if files and controller in available:
                    setattr(group, controller, group._write(group.paths[0], files))
            if group.memory:  # swap is a separate file, absent where the kernel does not account it
                swapped = group._write(group.paths[0], [("memory.swap.max", "0")])
                unaccounted = "not limited: this kernel does not account swap to cgroups"
                group.swap_note = "off (memory.swap.max 0)" if swapped else unaccounted
            return group
        group = cls(1)
        if memory_mb and (path := group._make("memory", name)):
            limit = str(memory_mb * 2**20)
            group.memory = group._write(path, [("memory.limit_in_bytes", limit)])
            swap = path / "memory.memsw.limit_in_bytes"
            if group.memory and swap.exists():
                group._write(path, [("memory.memsw.limit_in_bytes", limit)])
                group.swap_note = "counted in the cap (memory.memsw.limit_in_bytes)"
            elif group.memory:
                group.swap_note = "not limited: this kernel does not account swap to cgroups"
        if cpu and (path := group._make("cpu", name)):
            group.cpu = group._write(path, [("cpu.cfs_period_us", str(cls._PERIOD_US)), ("cpu.cfs_quota_us", quota_us)])
        if reads and (path := group._make("blkio", name)):
            group.io = group._write(
                path,
                [
                    ("blkio.throttle.read_bps_device", f"{reads.device} {reads.bytes_per_s}"),
                    ("blkio.throttle.read_iops_device", f"{reads.device} {reads.iops}"),
                ],
            )
        if not group.paths:
            return None
        return group

    def _make(self, hierarchy: str, name: str) -> Path | None:
        path = _CGROUP_ROOT / hierarchy / name
        try:
            path.mkdir()
        except OSError:
            return None
        self.paths.append(path)
        return path

    @staticmethod
    def _write(path: Path, files: list[tuple[str, str]]) -> bool:
        try:
            for file, value in files:
                (path / file).write_text(value)
        except OSError:
            return False
        return True

    @property
    def _memory_path(self) -> Path:
        return self.paths[0] if self.version == 2 else next(path for path in self.paths if path.parent.name == "memory")

    def peak(self) -> int | None:
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((self._memory_path / name).read_text())
        except (OSError, ValueError):
            return None

    def oom_killed(self) -> bool:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            lines = (self._memory_path / name).read_text().splitlines()
            fields = dict(line.split() for line in lines if len(line.split()) == 2)
        except OSError:
            return False
        if "oom_kill" in fields:
            return int(fields["oom_kill"]) > 0
        try:  # older v1 kernels report no kill count: a SIGKILL after hitting the cap is the OOM killer's
            return int((self._memory_path / "memory.failcnt").read_text()) > 0
        except (OSError, ValueError):
            return False

    def remove(self) -> None:
        for path in self.paths:
            for _ in range(50):  # the last task leaves the group shortly after the child is reaped
                try:
                    path.rmdir()
                    break
                except OSError:
                    time.sleep(0.02)


class _Watchdog:
    """Kill `pid` once its RSS exceeds `memory_mb`."""

    def __init__(self, pid: int, memory_mb: int) -> None:
        self.pid, self.cap, self.killed = pid, memory_mb * 2**20, False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(_POLL_SECONDS):
            try:
                rss = memory_status(self.pid).get("VmRSS", 0)
            except OSError:  # the child is gone
                return
            if rss > self.cap:
                self.killed = True
                os.kill(self.pid, signal.SIGKILL)
                return

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
