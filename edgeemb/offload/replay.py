"""Replay a token stream against a flash store and a RAM cache.

`plan` decides, token by token, which lookups hit the cache and which pages must be read (the
same for every flash profile and for both modes); `simulate` prices those reads with a profile's
read model, `measure` performs them on the store file and times them.
"""

from __future__ import annotations

import mmap
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeemb.errors import EdgeembError
from edgeemb.offload.profiles import FlashProfile
from edgeemb.offload.store import Layout
from edgeemb.progress import track

INDEX_BYTES_PER_ENTRY = 16  # a cached unit's id, its slot and two LRU links, 4 bytes each


class RowCache:
    """An LRU cache of units (rows, row slices or pages) within a byte budget that covers the
    units and their index entries."""

    def __init__(self, budget_bytes: int, unit_bytes: np.ndarray) -> None:
        self.budget = budget_bytes
        self.unit_bytes = unit_bytes  # bytes of unit u are unit_bytes[u % len(unit_bytes)]
        self.entries: OrderedDict[int, int] = OrderedDict()
        self.used = 0
        self.evictions = 0  # none: the budget held everything the stream read

    def _cost(self, unit: int) -> int:
        return int(self.unit_bytes[unit % len(self.unit_bytes)]) + INDEX_BYTES_PER_ENTRY

    def lookup(self, unit: int) -> bool:
        """True on a hit (refreshing the unit's recency)."""
        if unit in self.entries:
            self.entries.move_to_end(unit)
            return True
        return False

    def insert(self, unit: int) -> None:
        cost = self._cost(unit)
        if cost > self.budget:
            return  # a cache smaller than one unit holds nothing
        while self.used + cost > self.budget:
            _, evicted = self.entries.popitem(last=False)
            self.used -= evicted
            self.evictions += 1
        self.entries[unit] = cost
        self.used += cost


@dataclass(frozen=True, eq=False)
class Plan:
    """What each token of the stream costs: lookups, hits and the page runs read from flash."""

    lookups: np.ndarray  # (tokens,)
    hits: np.ndarray  # (tokens,)
    runs: list[np.ndarray]  # per token: (k, 2) int64 [byte offset, byte length], page-aligned
    peak_cache_bytes: int  # LRU units and their index entries at their fullest
    evictions: int  # units the LRU evicted: none means it never filled

    @property
    def reads(self) -> np.ndarray:
        return np.array([len(r) for r in self.runs])

    @property
    def bytes_read(self) -> np.ndarray:
        return np.array([int(r[:, 1].sum()) for r in self.runs])


def plan(
    tokens: np.ndarray,
    layout: Layout,
    budget_bytes: int,
    pinned: frozenset[int] = frozenset(),
    cache_unit: str = "row",
) -> Plan:
    """Replay `tokens` through a cache of `budget_bytes`: each token looks up each layer's unit,
    and its misses are read together as runs of contiguous pages.

    `cache_unit`: "row" caches the units themselves (a runtime that copies rows out of its
    reads); "page" caches whole pages as read, as the OS page cache under mmap does, so a page's
    other rows come along and cost RAM. `pinned` units (the hot set) are rows either way."""
    if cache_unit not in ("row", "page"):
        raise EdgeembError(f"unknown cache unit {cache_unit!r}; choose row or page")
    page = layout.page_size
    by_page = cache_unit == "page"
    cache = RowCache(budget_bytes, np.array([page]) if by_page else layout.slice_bytes)
    offsets, sizes = layout.extents(tokens)
    layers = layout.layers
    lookups = np.full(len(tokens), layers)
    hits = np.zeros(len(tokens), dtype=np.int64)
    runs, peak = [], 0
    for step, token in enumerate(tokens.tolist()):
        missed = []
        for layer in range(layers):
            unit = token * layers + layer
            if unit in pinned:
                hits[step] += 1
                continue
            first, last = int(offsets[step, layer]) // page, int(offsets[step, layer] + sizes[step, layer] - 1) // page
            keys = range(first, last + 1) if by_page else (unit,)
            present = [cache.lookup(key) for key in keys]
            if all(present):
                hits[step] += 1
                continue
            missed.append(layer)
            for key, cached in zip(keys, present):
                if not cached:
                    cache.insert(key)
        peak = max(peak, cache.used)
        runs.append(_page_runs(offsets[step, missed], sizes[step, missed], page))
    return Plan(lookups, hits, runs, peak, cache.evictions)


def _page_runs(offsets: np.ndarray, sizes: np.ndarray, page: int) -> np.ndarray:
    """The distinct pages the extents touch, merged into runs of consecutive pages."""
    if len(offsets) == 0:
        return np.zeros((0, 2), np.int64)
    first, last = offsets // page, (offsets + sizes - 1) // page
    pages = np.unique(np.concatenate([np.arange(a, b + 1) for a, b in zip(first, last)]))
    breaks = np.flatnonzero(np.diff(pages) != 1) + 1
    starts = pages[np.concatenate([[0], breaks])]
    counts = np.diff(np.concatenate([[0], breaks, [len(pages)]]))
    return np.stack([starts * page, counts * page], axis=1).astype(np.int64)


def simulate(runs: list[np.ndarray], profile: FlashProfile) -> np.ndarray:
    """Seconds each token waits for its reads under `profile` (reads issued together, no overlap
    with compute)."""
    return np.array([profile.read_seconds(len(r), int(r[:, 1].sum())) for r in runs])


@dataclass(frozen=True)
class Measured:
    seconds: np.ndarray  # per token, wall time of its reads (after any throttle)
    bytes_read: np.ndarray  # per token, bytes the reads returned
    direct: bool  # O_DIRECT: the page cache was bypassed
    throttle: str  # "cgroup-blkio" | "user-space" | "none"
    reads: int  # preads issued


def measure(store: Path, runs: list[np.ndarray], profile: FlashProfile | None, throttle: str) -> Measured:
    """Perform each token's reads on `store` with pread and time them.

    With a profile, reads are held to it. `user-space` sleeps until the profile's modelled time
    for the token's reads has passed (access latency included). `cgroup-blkio` has the kernel cap
    this process's read bandwidth and IOPS on the store's disk (root, cgroup v1; run it in a
    child process); blk-throttle enforces rates over time slices and adds no access latency, so
    it shows sustained limits rather than the per-read wait. Either way a host slower than the
    profile stays slower: the caller compares with the unthrottled host."""
    direct, fd = _open(store)
    largest = max((int(r[:, 1].max()) for r in runs if len(r)), default=0)
    buffer = mmap.mmap(-1, max(largest, mmap.PAGESIZE))  # page-aligned, as O_DIRECT requires
    view = memoryview(buffer)
    seconds = np.zeros(len(runs))
    returned = np.zeros(len(runs), dtype=np.int64)
    try:
        for step, token_runs in enumerate(track(runs, "flash reads", len(runs))):
            begin = time.perf_counter()
            for offset, length in token_runs.tolist():
                returned[step] += os.preadv(fd, [view[:length]], offset)
            elapsed = time.perf_counter() - begin
            if throttle == "user-space" and profile is not None:
                target = profile.read_seconds(len(token_runs), int(token_runs[:, 1].sum()))
                if target > elapsed:
                    _sleep_until(begin + target)
                    elapsed = time.perf_counter() - begin
            seconds[step] = elapsed
    finally:
        view.release()
        buffer.close()
        os.close(fd)
    return Measured(seconds, returned, direct, throttle if profile is not None else "none", sum(len(r) for r in runs))


def _open(store: Path) -> tuple[bool, int]:
    """O_DIRECT where the filesystem allows it; otherwise drop the file's cached pages first."""
    try:
        return True, os.open(store, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        fd = os.open(store, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return False, fd


def _sleep_until(deadline: float) -> None:
    """Sleep, then spin the last stretch: time.sleep alone overshoots by ~50-100 us."""
    while (left := deadline - time.perf_counter()) > 0:
        if left > 2e-4:
            time.sleep(left - 1e-4)


# --- cgroup v1 blkio throttling (root only) -------------------------------------------------

_BLKIO = Path("/sys/fs/cgroup/blkio")


def cgroup_available() -> bool:
    return os.geteuid() == 0 and (_BLKIO / "blkio.throttle.read_bps_device").exists()


def _disk_device(path: Path) -> str:
    """'major:minor' of the whole disk holding `path` (blkio throttles disks, not partitions)."""
    dev = os.stat(path).st_dev
    node = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if (node / "partition").exists():
        node = node.resolve().parent
    try:
        return (node / "dev").read_text().strip()
    except OSError:
        raise EdgeembError(
            f"cannot find the block device of {path} (is it on a network or overlay filesystem?)"
        ) from None


def measure_in_cgroup(store: Path, runs: list[np.ndarray], profile: FlashProfile) -> Measured:
    """`measure` in this process after moving it into a fresh blkio cgroup capped at the
    profile's bandwidth and IOPS (call it in a child process: the move is for good)."""
    group = _BLKIO / f"edgeemb-{os.getpid()}"
    group.mkdir()
    device = _disk_device(store)
    (group / "blkio.throttle.read_bps_device").write_text(f"{device} {int(profile.seq_read_mb_s * 1e6)}")
    (group / "blkio.throttle.read_iops_device").write_text(f"{device} {int(profile.rand_read_iops)}")
    (group / "cgroup.procs").write_text(str(os.getpid()))
    return measure(store, runs, profile, "cgroup-blkio")


def remove_cgroup(pid: int) -> None:
    group = _BLKIO / f"edgeemb-{pid}"
    if group.exists():
        try:
            group.rmdir()
        except OSError:
            pass  # still has a member; the kernel frees it when the process is gone
