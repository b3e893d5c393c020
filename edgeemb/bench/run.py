"""Benchmark one file: load time, latency, throughput and peak memory in its runtime, optionally
under a device profile's cores and memory cap on this host.

Each measurement runs in a fresh process (`edgeemb.bench.worker`), so its peak RSS is that model's
alone, and starts cold: the file's pages are dropped from the page cache first, as after a
reboot. A run the memory cap kills is a result, "does not fit in N MB", not an error. Latency on
this host is this host's: a profile caps what the device caps (cores, memory), not CPU speed;
compare files by the ratios of runs made side by side. llama.cpp's threads spin while they wait
for each other: another busy process on the pinned cores slows it by orders of magnitude, so
benchmark on an otherwise idle machine. `emulate=True` counts instructions on the profile's CPU
under qemu instead (`edgeemb.bench.instructions`): exact and repeatable, but blind to memory stalls.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

from pydantic import ValidationError

from edgeemb.bench.backends import BACKENDS, SCHEMA, backend_for
from edgeemb.bench.devices import DeviceProfile, load_device
from edgeemb.bench.instructions import count_instructions
from edgeemb.bench.limits import (
    MemoryLimit,
    ReadThrottle,
    block_device,
    evict_page_cache,
    run_limited,
)
from edgeemb.errors import EdgeembError
from edgeemb.evaluate.llamacpp import tokenize_text
from edgeemb.evaluate.onnxruntime import sentence_tokenizer
from edgeemb.export.onnx import tokenizer_beside
from edgeemb.offload.profiles import load_profile
from edgeemb.results import BenchResult
from edgeemb.sources import open_model

DEFAULT_TEXTS = (
    "A man is playing a guitar on the street.",
    "The new phone has a much better camera than the old one.",
    "Embedding tables dominate the weights of small language models.",
    "Rows of the table can stay on flash and stream into a small cache.",
    "She bought three apples, a loaf of bread and some cheese at the market.",
    "The committee postponed its decision until the next meeting in March.",
    "Quantisation trades a little accuracy for a much smaller model.",
    "How long does the train from Cambridge to London take?",
)


def bench(
    artifact: str | Path,
    *,
    backend: str | None = None,
    profile: DeviceProfile | None = None,
    runs: int = 3,
    texts: list[str] | None = None,
    tokenizer: str = "minilm",
    prompt_tokens: int = 64,
    generate: int = 32,
    batch: int = 4096,
    mmap: bool = True,
    memory_mb: int | None = None,
    memory_limit: MemoryLimit = "auto",
    cpu_quota: float | None = None,
    flash: bool = False,
    emulate: bool = False,
) -> BenchResult:
    """Benchmark one file (see the module docstring); returns its result (schema `SCHEMA`).
    `runs` passes over the texts (onnxruntime), prompt-and-generate rounds of `prompt_tokens` and
    `generate` tokens (llama.cpp, which maps the file unless `mmap` is False: then the weights are
    read into memory, as a runtime without mmap holds them), or 20 lookups of `batch` ids each
    (numpy). `profile` applies its cores and memory cap (MB of 2**20 bytes, as RAM is sized);
    `memory_mb` overrides the cap, or sets one without a profile. `cpu_quota` gives the run that
    share of each pinned core's time; `flash` throttles reads of the file's disk to the profile's
    flash storage (sequential MB/s and random-read IOPS). `emulate` counts instructions
    on the profile's CPU under qemu instead (`edgeemb.bench.instructions`; the rpi5 without a profile)."""
    artifact = Path(artifact)
    if not artifact.exists():
        raise EdgeembError(f"{artifact}: no such file or folder")
    backend = backend or backend_for(artifact)
    if backend not in BACKENDS:
        raise EdgeembError(f"unknown backend {backend!r} ({', '.join(BACKENDS)})")
    if runs < 1:
        raise EdgeembError(f"runs must be at least 1, got {runs}")
    if emulate:
        if memory_mb is not None or cpu_quota is not None or flash:
            raise EdgeembError(
                "an emulated run counts instructions; memory caps, CPU quotas and flash throttling apply to runs "
                "on this host"
            )
        ids = None
        if backend == "onnxruntime":
            ids = _token_ids(artifact, backend, list(texts or DEFAULT_TEXTS), tokenizer, prompt_tokens)
        counted = count_instructions(artifact, profile or load_device("rpi5"), ids=ids, generate=generate, mmap=mmap)
        return BenchResult.model_validate(counted)
    ids = _token_ids(artifact, backend, list(texts or DEFAULT_TEXTS), tokenizer, prompt_tokens)
    request = {
        "artifact": str(artifact),
        "backend": backend,
        "runs": runs,
        "ids": ids,
        "generate": generate,
        "batch": batch,
        "mmap": mmap,
    }
    cap = memory_mb or (profile.memory_cap_mb if profile else None)
    evict_page_cache(artifact)
    run = run_limited(
        [sys.executable, "-m", "edgeemb.bench.worker"],
        request,
        cores=profile.cores if profile else None,
        memory_mb=cap,
        memory_limit=memory_limit,
        cpu_quota=cpu_quota,
        read_throttle=_flash_throttle(artifact, profile) if flash else None,
    )
    result = {
        "schema": SCHEMA,
        "artifact": str(artifact),
        "backend": backend,
        "file_bytes": _size(artifact),
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "profile": profile.name if profile else None,
        "limits": run.limits,
    }
    if run.out_of_memory:
        killer = run.limits["memory"]["how"]
        message = f"does not fit in {cap} MB ({killer} killed it)"
        return BenchResult.model_validate({**result, "fits": False, "message": message})
    if run.returncode:
        last = (run.stderr.strip().splitlines() or ["no message"])[-1]
        reason = last.removeprefix("edgeemb.errors.EdgeembError: ")
        raise EdgeembError(f"{artifact}: the {backend} benchmark failed: {reason}")
    measured = json.loads(run.stdout)
    if run.charged_peak_bytes is not None:
        measured["charged_peak_bytes"] = run.charged_peak_bytes
    return BenchResult.model_validate({**result, "fits": True, **measured})


def compare_runs(baseline: BenchResult, result: BenchResult) -> dict[str, float]:
    """`result` against `baseline` (ratios, result / baseline), for runs that both fit. Latency is
    compared at p50, or by means where one side has no percentiles (a device's llama-bench run);
    emulated runs by instructions per unit."""
    if not (baseline.fits and result.fits):
        return {}
    counted = (baseline.instructions_per_unit is not None) + (result.instructions_per_unit is not None)
    if counted == 1:  # an instruction count and a timed run have no ratios
        return {}
    if counted == 2:
        pairs = (
            ("file_bytes", "file_bytes"),
            ("instructions", "instructions_per_unit"),
            ("peak_rss", "peak_rss_bytes"),
        )
        return {key: getattr(result, name) / getattr(baseline, name) for key, name in pairs}
    before, after = baseline.latency_ms, result.latency_ms
    both = {key for key in ("p50", "p95") if getattr(before, key) is not None and getattr(after, key) is not None}
    ratios = {
        "file_bytes": result.file_bytes / baseline.file_bytes,
        **{f"latency_{key}": getattr(after, key) / getattr(before, key) for key in (both or {"mean"})},
        "throughput": result.throughput.value / baseline.throughput.value,
        "peak_rss": result.peak_rss_bytes / baseline.peak_rss_bytes,
    }
    for key in ("load_s", "prompt_ms_per_token"):
        if getattr(result, key) is not None and getattr(baseline, key) is not None:
            ratios[key] = getattr(result, key) / getattr(baseline, key)
    return ratios


def read_results(path: Path) -> list[BenchResult]:
    """Bench results from a JSON file `edgeemb bench --json` or a device's run.sh wrote."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise EdgeembError(f"{path}: not a readable JSON file ({exc})") from None
    results = [data["baseline"], data["result"]] if isinstance(data, dict) and "baseline" in data else [data]
    if not all(isinstance(result, dict) and result.get("schema") == SCHEMA for result in results):
        raise EdgeembError(f"{path}: not an edgeemb bench result (schema {SCHEMA})")
    try:
        return [BenchResult.model_validate(result) for result in results]
    except ValidationError as exc:
        raise EdgeembError(f"{path}: not an edgeemb bench result ({exc.errors()[0]['msg']})") from None


def _token_ids(artifact: Path, backend: str, texts: list[str], tokenizer: str, prompt_tokens: int) -> list:
    """The texts as the model reads them, tokenised here rather than in the measured process: one
    list of ids per sentence (onnxruntime), one prompt of `prompt_tokens` ids (llama.cpp)."""
    if backend == "onnxruntime":
        beside = tokenizer_beside(artifact)
        return sentence_tokenizer(open_model(tokenizer).path, beside.read_text() if beside.is_file() else None)(texts)
    if backend == "llama.cpp":
        text = " ".join(texts)
        ids = tokenize_text(artifact, text, max_tokens=prompt_tokens).ids
        while len(ids) < prompt_tokens and text:  # a short text is repeated up to the prompt length
            text = f"{text} {text}"
            ids = tokenize_text(artifact, text, max_tokens=prompt_tokens).ids
        return ids.tolist()
    return []


def _flash_throttle(artifact: Path, profile: DeviceProfile | None) -> ReadThrottle:
    if profile is None:
        raise EdgeembError("flash throttling reads as a device profile's storage does: give --profile")
    device = block_device(artifact)
    if device is None:
        raise EdgeembError(
            f"{artifact}: cannot throttle its reads: it is on no block device (tmpfs, overlay or network)"
        )
    storage = load_profile(profile.flash)
    return ReadThrottle(device, round(storage.seq_read_mb_s * 1e6), round(storage.rand_read_iops))


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
