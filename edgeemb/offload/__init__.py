"""Embedding offload to flash: how much RAM a table needs when its rows stream from flash into
a small cache, and what that costs per token, as Gemma 3n does with its per-layer embeddings.

    rows = table_rows(table)                      # or source_rows(model): the bytes on flash
    layout = Layout("single", *rows.records.shape, page_size=4096)
    report = emulate_offload(rows, layout, tokens, OffloadConfig(profiles=("ufs-3.1",), cache_bytes=(1 << 20,)))

The emulation is deterministic (`sim`): every token's lookups go through an LRU cache and a
pinned hot set, and the pages its misses touch are priced by a flash profile's read model. In
`real` mode the same reads are performed on a store file and timed.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from edgeemb.errors import EdgeembError
from edgeemb.offload.profiles import FlashProfile, load_profile, profile_names
from edgeemb.offload.replay import (
    INDEX_BYTES_PER_ENTRY,
    Measured,
    Plan,
    cgroup_available,
    measure,
    measure_in_cgroup,
    plan,
    remove_cgroup,
    simulate,
)
from edgeemb.offload.store import (
    LAYOUTS,
    Layout,
    StoredRows,
    source_rows,
    table_rows,
    write_store,
)
from edgeemb.progress import track
from edgeemb.results import Result

__all__ = [
    "INPUT_ONLY",
    "LAYOUTS",
    "FlashProfile",
    "Layout",
    "OffloadConfig",
    "OffloadReport",
    "OffloadedHead",
    "StoredRows",
    "emulate_offload",
    "load_profile",
    "profile_names",
    "source_rows",
    "sweep_budgets",
    "table_rows",
    "write_store",
]

Mode = Literal["sim", "real"]
CacheUnit = Literal["row", "page"]
Throttle = Literal["user", "cgroup", "none"]


@dataclass(frozen=True)
class OffloadConfig:
    """What to emulate. Budgets are bytes of RAM: the LRU cache's covers its rows and their
    index entries; the hot set's covers the pinned rows and theirs."""

    profiles: tuple[str, ...] = ("ufs-3.1",)
    cache_bytes: tuple[int, ...] = ()  # empty: `sweep_budgets` of the stream
    hot_bytes: int = 0
    cache_unit: CacheUnit = "row"  # page: whole pages as read, as the OS page cache under mmap
    mode: Mode = "sim"
    throttle: Throttle = "user"  # real mode: how reads are held to each profile (see `replay.measure`)


class Latency(Result):
    p50_us: float
    p99_us: float
    mean_us: float

    @classmethod
    def of(cls, seconds: np.ndarray) -> Latency:
        micro = np.asarray(seconds) * 1e6
        p50, p99 = np.percentile(micro, [50, 99])
        return cls(p50_us=float(p50), p99_us=float(p99), mean_us=float(micro.mean()))


class ProfileResult(Result):
    profile: str
    sim: Latency  # added latency per token, from the profile's read model
    real: Latency | None  # measured on the store file (real mode)
    real_bytes_per_token: float | None  # bytes the reads returned, for checking against sim
    host_limited: bool | None  # this disk is slower than the profile: real shows the host


class CachePoint(Result):
    cache_budget_bytes: int
    cache_peak_bytes: int  # LRU rows and index entries at their fullest
    resident_bytes: int  # cache + hot set + resident table parts + the head (tied tables)
    hit_rate: float  # lookups served from RAM (LRU or hot set)
    reads_per_token: float
    bytes_per_token: float  # read from flash, whole pages
    results: list[ProfileResult]
    # Why a budget the user gave holds less than itself (whole units, or all the stream reads fits)
    note: str | None = None


class StoreLayout(Result):
    """Where the rows sit in the store file (`Layout.describe()`)."""

    kind: str
    layers: int
    rows: int
    record_bytes: int
    slice_bytes: list[int]
    page_size: int
    file_bytes: int
    padding_bytes: int


class HotSet(Result):
    budget_bytes: int
    tokens: int
    bytes: int


class OffloadedHead(Result):
    """RAM an output head keeps once the table's input lookups move to flash."""

    bytes: int
    tied: bool
    type: str | None = None
    note: str


class RealReads(Result):
    """Real mode: O_DIRECT or page cache, the throttle, this host's own time per read."""

    o_direct: bool
    page_cache: bool
    throttle: str
    host_read_us: float | None  # unthrottled, mean per read
    host_reads: int


class OffloadReport(Result):
    table: str
    rows: int
    record_bytes: int
    table_bytes: int  # the table as stored, all resident: the baseline
    layout: StoreLayout
    tokens: int
    distinct_tokens: int
    lookups_per_token: int
    cache_unit: str
    hot_set: HotSet
    head: OffloadedHead
    resident_fixed_bytes: int  # what stays in RAM at any cache size (table's resident parts, head, hot set)
    points: list[CachePoint]
    real: RealReads | None


def _token_bytes(layout: Layout) -> int:
    """RAM one token's units take in a row cache or the hot set: its bytes and index entries."""
    return int(layout.slice_bytes.sum()) + INDEX_BYTES_PER_ENTRY * layout.layers


def sweep_budgets(tokens: np.ndarray, layout: Layout, rows_bytes: int, points: int = 10) -> tuple[int, ...]:
    """Cache budgets from none up to the stream's working set (every distinct token's units
    cached; a larger cache only adds idle rows), spaced geometrically from 16 tokens' worth."""
    per_token = _token_bytes(layout)
    working_set = min(len(np.unique(tokens)) * per_token, rows_bytes)
    smallest = min(16 * per_token, working_set)
    return (0, *sorted({int(b) for b in np.geomspace(smallest, working_set, points - 1)}))


def hot_units(calibration: np.ndarray, layout: Layout, budget_bytes: int) -> frozenset[int]:
    """The most frequent tokens of a calibration stream, all their layers' units, within budget."""
    pinned, used = [], 0
    cost = _token_bytes(layout)
    for token, _ in Counter(calibration.tolist()).most_common():
        if used + cost > budget_bytes:
            break
        pinned.extend(token * layout.layers + layer for layer in range(layout.layers))
        used += cost
    return frozenset(pinned)


INPUT_ONLY = OffloadedHead(bytes=0, tied=False, note="the table is input-only: nothing of it has to stay in RAM")


def emulate_offload(
    rows: StoredRows,
    layout: Layout,
    tokens: np.ndarray,
    config: OffloadConfig,
    *,
    head: OffloadedHead = INPUT_ONLY,
    calibration: np.ndarray | None = None,
    store: Path | None = None,
) -> OffloadReport:
    """Replay `tokens` (ids) against `rows` stored with `layout`, for each cache budget and each
    flash profile. `head` is the output head a tied table keeps in RAM whatever the cache;
    `store` is the file real mode reads (written by `write_store`)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) == 0:
        raise EdgeembError("the token stream is empty: give a text with at least one token")
    if tokens.min() < 0 or tokens.max() >= layout.rows:
        raise EdgeembError(f"token ids must lie in [0, {layout.rows}); the stream has {tokens.min()}..{tokens.max()}")
    table_bytes = rows.nbytes
    budgets = config.cache_bytes or sweep_budgets(tokens, layout, rows.records.nbytes)
    too_big = [b for b in budgets if b > rows.records.nbytes]
    if too_big:
        raise EdgeembError(
            f"a cache of {too_big[0]:,} bytes is larger than the table's rows "
            f"({rows.records.nbytes:,} bytes): keep the table resident instead"
        )
    if config.hot_bytes and calibration is None:
        raise EdgeembError("a hot set needs calibration text to count token frequencies (--calibration)")
    if config.mode == "real" and store is None:
        raise EdgeembError("real mode needs the store file (write_store) to read from")
    profiles = [load_profile(name) for name in config.profiles]
    pinned = hot_units(calibration, layout, config.hot_bytes) if config.hot_bytes else frozenset()
    hot_set_bytes = (len(pinned) // layout.layers) * _token_bytes(layout)
    fixed = rows.resident_bytes + head.bytes + hot_set_bytes
    host_reads: list[Measured] = []
    points = []
    for budget in track(budgets, "cache sizes", len(budgets)):
        replay = plan(tokens, layout, int(budget), pinned, config.cache_unit)
        results = [
            ProfileResult(
                profile=p.name,
                sim=Latency.of(simulate(replay.runs, p)),
                real=None,
                real_bytes_per_token=None,
                host_limited=None,
            )
            for p in profiles
        ]
        if config.mode == "real":
            results = _real(store, replay, profiles, results, config.throttle, host_reads)
        points.append(
            CachePoint(
                cache_budget_bytes=int(budget),
                cache_peak_bytes=replay.peak_cache_bytes,
                resident_bytes=fixed + replay.peak_cache_bytes,
                hit_rate=float(replay.hits.sum() / replay.lookups.sum()),
                reads_per_token=float(replay.reads.mean()),
                bytes_per_token=float(replay.bytes_read.mean()),
                results=results,
                note=_cache_note(int(budget), replay, layout, config.cache_unit) if config.cache_bytes else None,
            )
        )
    return OffloadReport(
        table=rows.describe,
        rows=layout.rows,
        record_bytes=layout.record_bytes,
        table_bytes=table_bytes,
        layout=StoreLayout(**layout.describe()),
        tokens=len(tokens),
        distinct_tokens=len(np.unique(tokens)),
        lookups_per_token=layout.layers,
        cache_unit=config.cache_unit,
        hot_set=HotSet(budget_bytes=config.hot_bytes, tokens=len(pinned) // layout.layers, bytes=hot_set_bytes),
        head=head,
        resident_fixed_bytes=fixed,
        points=points,
        real=_real_facts(host_reads, config.throttle) if host_reads else None,
    )


def _cache_note(budget: int, replay: Plan, layout: Layout, unit: CacheUnit) -> str | None:
    """Why a cache of `budget` bytes held less than that at its fullest (None when it filled it,
    or was asked to hold nothing): units are cached whole, and a stream reads only so much."""
    peak = replay.peak_cache_bytes
    if budget == 0 or peak == budget:
        return None
    costs = sorted(
        {int(size) + INDEX_BYTES_PER_ENTRY for size in ([layout.page_size] if unit == "page" else layout.slice_bytes)}
    )
    what = "page" if unit == "page" else "row" if layout.layers == 1 else "row slice"
    cost = f"{costs[0]:,}" if len(costs) == 1 else f"{costs[0]:,} to {costs[-1]:,}"
    sized = f"{cost} bytes (index entry included)"
    if budget < costs[0]:
        return f"a budget of {budget:,} bytes holds nothing: less than one {what} of {sized}"
    if replay.evictions == 0:
        return (
            f"a budget of {budget:,} bytes holds at most {peak:,}: all the stream reads; a longer text fills more of it"
        )
    return f"a budget of {budget:,} bytes holds at most {peak:,}: whole {what}s of {sized}"


def _real(
    store: Path,
    replay: Plan,
    profiles: list[FlashProfile],
    results: list[ProfileResult],
    throttle: Throttle,
    host_reads: list[Measured],
) -> list[ProfileResult]:
    """Read the plan's pages from `store`: once unthrottled (this host), then held to each profile."""
    if throttle == "cgroup" and not cgroup_available():
        raise EdgeembError(
            "cgroup throttling needs root and cgroup v1 blkio (/sys/fs/cgroup/blkio); " "use --throttle user"
        )
    host = measure(store, replay.runs, None, "none")
    host_reads.append(host)
    host_read = _seconds_per_read(host)
    measured = []
    for result, profile in zip(results, profiles):
        run = host if throttle == "none" else _measure_throttled(store, replay.runs, profile, throttle)
        if not np.array_equal(run.bytes_read, replay.bytes_read):
            raise EdgeembError(
                f"{store}: reads returned {run.bytes_read.sum():,} bytes, the plan asked for "
                f"{replay.bytes_read.sum():,} (was the file changed?)"
            )
        # a profile whose single page read is quicker than this disk's cannot be played here
        host_limited = host_read is not None and host_read > profile.read_seconds(1, profile.page_size)
        measured.append(
            result.model_copy(
                update={
                    "real": Latency.of(run.seconds),
                    "real_bytes_per_token": float(run.bytes_read.mean()),
                    "host_limited": host_limited,
                }
            )
        )
    return measured


def _seconds_per_read(run: Measured) -> float | None:
    return float(run.seconds.sum() / run.reads) if run.reads else None


def _real_facts(host_reads: list[Measured], throttle: Throttle) -> RealReads:
    reads = sum(run.reads for run in host_reads)
    per_read = sum(float(run.seconds.sum()) for run in host_reads) / reads if reads else None
    return RealReads(
        o_direct=host_reads[0].direct,
        page_cache=not host_reads[0].direct,
        throttle={"cgroup": "cgroup-blkio", "user": "user-space", "none": "none"}[throttle],
        host_read_us=per_read * 1e6 if per_read is not None else None,
        host_reads=reads,
    )


def _measure_throttled(store: Path, runs: list[np.ndarray], profile: FlashProfile, mode: str) -> Measured:
    if mode == "user":
        return measure(store, runs, profile, "user-space")
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # the cgroup move is for good: a child moves
        pid = pool.apply(_pid)
        try:
            return pool.apply(measure_in_cgroup, (store, runs, profile))
        finally:
            pool.terminate()
            pool.join()
            remove_cgroup(pid)


def _pid() -> int:
    return os.getpid()
