"""Run a command under a device's limits on this host: its cores and its memory cap.

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


@dataclass
class LimitedRun:
    returncode: int
    stdout: str
    stderr: str
    limits: dict  # what was asked and what was applied, for the report
    out_of_memory: bool = False  # killed for going over the memory cap
    charged_peak_bytes: int | None = None  # the cgroup's peak charge (anonymous memory and page cache)


def run_limited(
    command: list[str], request: dict, *, cores: int | None = None, memory_mb: int | None = None, memory_limit: MemoryLimit = "auto"
) -> LimitedRun:
    """Run the worker `command` on `request` (JSON on its stdin), pinned to `cores` CPUs and capped
    at `memory_mb` (None: no limit). The worker enters its limits itself (`enter_limits`), first
    thing: a parent that pinned and moved a forked child before exec (preexec_fn) could deadlock
    when it has threads of its own."""
    available = sorted(os.sched_getaffinity(0))
    cpus = available[: cores] if cores else available
    limits: dict = {"cores": {"asked": cores, "applied": len(cpus), "cpus": cpus, "how": "sched_setaffinity"}}
    if cores and cores > len(available):
        limits["cores"]["note"] = f"{cores} cores asked, this host has {len(available)}"
    cgroup = _Cgroup.create(memory_mb) if memory_mb and memory_limit in ("auto", "cgroup") else None
    if memory_mb and cgroup is None and memory_limit == "cgroup":
        raise EdgeembError(
            "cannot create a memory cgroup (needs root and a memory controller under /sys/fs/cgroup); "
            "run as root, or use --memory-limit watchdog"
        )
    if memory_mb:
        limits["memory"] = {"cap_mb": memory_mb, "how": cgroup.how if cgroup else "RSS watchdog (user space, polled every 20 ms)"}
        if cgroup and cgroup.swap_note:
            limits["memory"]["swap"] = cgroup.swap_note

    request = {**request, "limits": {"cpus": cpus, "cgroup_procs": str(cgroup.path / "cgroup.procs") if cgroup else None}}
    try:
        child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        watchdog = _Watchdog(child.pid, memory_mb) if memory_mb and cgroup is None else None
        stdout, stderr = child.communicate(json.dumps(request))
        if watchdog is not None:
            watchdog.stop()
        run = LimitedRun(child.returncode, stdout, stderr, limits)
        if cgroup is not None:
            run.charged_peak_bytes = cgroup.peak()
            run.out_of_memory = child.returncode == -signal.SIGKILL and cgroup.oom_killed()
        elif watchdog is not None:
            run.out_of_memory = watchdog.killed
        return run
    finally:
        if cgroup is not None:
            cgroup.remove()


def enter_limits(limits: dict) -> None:
    """The worker's side of `run_limited`: pin this process to its CPUs and join its cgroup, before
    it loads anything (the interpreter and numpy, ~26 MB, are charged where they started)."""
    os.sched_setaffinity(0, limits["cpus"])
    if limits["cgroup_procs"]:
        Path(limits["cgroup_procs"]).write_text(str(os.getpid()))


def memory_cgroups_available() -> bool:
    """Whether this process can make memory cgroups (root and a memory controller)."""
    cgroup = _Cgroup.create(64)
    if cgroup is not None:
        cgroup.remove()
    return cgroup is not None


def evict_page_cache(path: Path) -> None:
    """Drop the file's (or folder's files') clean pages from the page cache, as after a reboot: the
    benchmark then reads the model from storage, and a memory cgroup is charged for its pages
    (a page stays charged to the group that first read it, usually not ours)."""
    for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if file.is_file():
            descriptor = os.open(file, os.O_RDONLY)
            try:
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)


class _Cgroup:
    """A memory cgroup of our own, v2 or v1."""

    def __init__(self, path: Path, version: int, swap_note: str | None) -> None:
        self.path, self.version, self.swap_note = path, version, swap_note
        self.how = f"cgroup v{version} memory limit"

    @classmethod
    def create(cls, memory_mb: int) -> _Cgroup | None:
        name = f"edgeemb-bench-{os.getpid()}-{next(_names)}"
        limit = str(memory_mb * 2**20)
        v2 = _CGROUP_ROOT / "cgroup.controllers"
        try:
            if v2.is_file() and "memory" in v2.read_text().split():
                path = _CGROUP_ROOT / name
                path.mkdir()
                (path / "memory.max").write_text(limit)
                (path / "memory.swap.max").write_text("0")
                return cls(path, 2, "off (memory.swap.max 0)")
            v1 = _CGROUP_ROOT / "memory"
            if v1.is_dir():
                path = v1 / name
                path.mkdir()
                (path / "memory.limit_in_bytes").write_text(limit)
                swap = path / "memory.memsw.limit_in_bytes"
                if swap.exists():
                    swap.write_text(limit)
                    return cls(path, 1, "counted in the cap (memory.memsw.limit_in_bytes)")
                return cls(path, 1, "not limited: this kernel does not account swap to cgroups")
        except OSError:
            return None
        return None

    def peak(self) -> int | None:
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((self.path / name).read_text())
        except (OSError, ValueError):
            return None

    def oom_killed(self) -> bool:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            fields = dict(line.split() for line in (self.path / name).read_text().splitlines() if len(line.split()) == 2)
        except OSError:
            return False
        if "oom_kill" in fields:
            return int(fields["oom_kill"]) > 0
        try:  # older v1 kernels report no kill count: a SIGKILL after hitting the cap is the OOM killer's
            return int((self.path / "memory.failcnt").read_text()) > 0
        except (OSError, ValueError):
            return False

    def remove(self) -> None:
        for _ in range(50):  # the last task leaves the group shortly after the child is reaped
            try:
                self.path.rmdir()
                return
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
