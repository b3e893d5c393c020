"""Commands for where the table runs: offload, bench, cross, bundle."""

from __future__ import annotations

from pathlib import Path

import click

from edgeemb.bench.bundle import make_bundle
from edgeemb.bench.cross import cross_build
from edgeemb.bench.devices import device_names, load_device
from edgeemb.bench.run import bench as run_bench
from edgeemb.bench.run import compare_runs
from edgeemb.cli.base import (
    _FILE,
    _FOLDER,
    _MODEL_HELP,
    _NEW_FILE,
    _given,
    _model_argument,
    main,
)
from edgeemb.offload.profiles import builtin_names
from edgeemb.offload.run import offload as run_offload
from edgeemb.offload.run import plan_offload
from edgeemb.outputs import check_target
from edgeemb.report import console

_OFFLOAD_HELP = (
    """Emulate keeping MODEL's embedding table on flash: rows stream into a small RAM
cache as TEXT is decoded, as Gemma 3n's per-layer embeddings do. Reports resident memory, flash
reads and bytes per token, hit rate and the latency the reads add per token (p50, p99), for each
cache size and flash profile, against the whole table resident.

\b
edgeemb offload gemma3-270m --text wiki.txt -p ufs-3.1 --plot offload.png
edgeemb offload gemma3-270m --text wiki.txt --layout ple -p all --cache-mb 1
edgeemb offload out/gemma-q4_0 --text wiki.txt --mode real --runtime

MODEL may also be an OUT/ folder (its compressed table is what flash holds); if its recipe has an
`offload:` plan (a device recipe), that plan sets the options not given here. Profiles: {profiles},
or a profile YAML file. sim prices each read with the profile's published figures; real reads
the same pages from a store file (O_DIRECT) and times them, held to each profile (--throttle).

""".format(profiles=", ".join(builtin_names()))
    + _MODEL_HELP
)


@main.command(help=_OFFLOAD_HELP)
@_model_argument
@click.option("--text", type=_FILE, required=True, help="Plain text to decode, tokenised by the model's own tokenizer.")
@click.option(
    "--max-tokens", type=click.IntRange(min=1), default=512, show_default=True, help="Tokens of --text in the stream."
)
@click.option(
    "-p",
    "--profile",
    "profiles",
    multiple=True,
    default=("ufs-3.1",),
    show_default=True,
    help="Flash profile (repeat for several; 'all' for every built-in one).",
)
@click.option(
    "--cache-mb",
    "cache_mb",
    type=click.FloatRange(min=0),
    multiple=True,
    help=(
        "RAM cache budget in MB (rows + index; repeat for several). Default: a sweep up to the stream's working set."
    ),
)
@click.option(
    "--hot-mb",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Pinned hot set: the most frequent tokens of --calibration, within this many MB.",
)
@click.option(
    "--calibration",
    type=_FILE,
    help="Plain text to count token frequencies for the hot set (keep it apart from --text).",
)
@click.option(
    "--cache-unit",
    type=click.Choice(["row", "page"]),
    default="row",
    show_default=True,
    help=("row: the cache keeps the rows it needs; page: whole pages as read, as the OS page cache does under mmap."),
)
@click.option(
    "--layout",
    type=click.Choice(["single", "ple", "ple-layer"]),
    default="single",
    show_default=True,
    help=(
        "single: a row per token; ple: the row split into per-layer slices, a token's slices contiguous; "
        "ple-layer: one table per layer."
    ),
)
@click.option(
    "--layers", type=click.IntRange(min=1), help="Layers for the ple layouts. Default: the model's decoder layers."
)
@click.option(
    "--head-type",
    help=("Tied tables: the format of a separate RAM-resident output head (e.g. Q4_0). Default: the table as stored."),
)
@click.option(
    "--mode",
    type=click.Choice(["sim", "real"]),
    default="sim",
    show_default=True,
    help="sim: the profiles' read model; real: also read the store file and time it.",
)
@click.option(
    "--throttle",
    type=click.Choice(["user", "cgroup", "none"]),
    default="user",
    show_default=True,
    help=(
        "real: hold each token's reads to the profile's modelled time (user), or cap read bandwidth and IOPS with a "
        "blkio cgroup (root; no access latency), or not at all."
    ),
)
@click.option(
    "--store",
    type=_NEW_FILE,
    help="Write the flash store file here and keep it (default: a temporary file for real mode).",
)
@click.option(
    "--runtime", is_flag=True, help="Also run the GGUF in llama.cpp with mmap on and off: peak RSS and tokens/s."
)
@click.option("--plot", type=_NEW_FILE, help="Write a PNG: hit rate, bytes and added latency against cache size.")
@click.option("--force", is_flag=True, help="Replace an existing --store or --plot file.")
@click.option("--json", "as_json", is_flag=True, help="Print every figure as JSON.")
def offload(
    model: str | None,
    text: Path,
    max_tokens: int,
    profiles: tuple[str, ...],
    cache_mb: tuple[float, ...],
    hot_mb: float,
    calibration: Path | None,
    cache_unit: str,
    layout: str,
    layers: int | None,
    head_type: str | None,
    mode: str,
    throttle: str,
    store: Path | None,
    runtime: bool,
    plot: Path | None,
    force: bool,
    as_json: bool,
) -> None:
    if plot is not None:
        check_target(plot, force)
    # Options left at their defaults are filled from an OUT/ recipe's `offload:` plan when it has one.
    given = _given(profiles=profiles, cache_mb=cache_mb, hot_mb=hot_mb, layout=layout, head_type=head_type)
    planned = plan_offload(model, **given, cache_unit=cache_unit, mode=mode, throttle=throttle)
    with console.progress_bars():
        result = run_offload(
            model,
            text,
            planned.config,
            layout=planned.layout,
            layers=layers,
            max_tokens=max_tokens,
            calibration=calibration,
            head_type=planned.head_type,
            store=store,
            force=force,
            runtime=runtime,
        )
    if plot is not None:
        from edgeemb.report.plots import plot_offload  # matplotlib: ~0.5 s to import, only for --plot

        plot_offload(result.offload, plot, result.model.name)
    if as_json:
        console.print_json(result)
        return
    console.print_offload(result)


_BENCH_HELP = """Benchmark a model file in the runtime a device runs it in: load time, latency per sentence
(ONNX, onnxruntime) or per generated token and per prompt token (GGUF, llama.cpp), throughput,
and peak memory; for an edgeemb output folder, lookups of its table (numpy).

Each run is a fresh process that starts cold (the file's pages dropped from the page cache).
--profile applies a device's cores (pinned CPUs) and memory cap (a cgroup of its own as root, an
RSS watchdog otherwise; the result says which): a run the cap kills is reported as "does not fit".
--cpu-quota gives it a share of each core's time, --flash reads the model at the profile's flash
speed (both cgroups, as root; the result says what was applied). Latency here is this host's, not
the device's: --baseline runs the uncompressed file in the same session and reports ratios.

--emulate counts instructions instead, on the profile's CPU (the rpi5's Cortex-A76 by default)
under qemu user mode, one thread: per sentence in onnxruntime (an aarch64 Python, fetched once)
or per generated token in llama-bench (built by `edgeemb cross`). The count is the same in every
run; qemu's wall time is not the device's and is not reported. Profiles: {profiles} (or a YAML file).""".format(
    profiles=", ".join(device_names())
)


@main.command(help=_BENCH_HELP)
@click.argument("artifact", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--backend",
    type=click.Choice(["onnxruntime", "llama.cpp", "numpy"]),
    help="Runtime (default: by the file: .onnx, .gguf, output folder).",
)
@click.option("--profile", help="Device profile whose cores and memory cap apply (name or YAML file).")
@click.option(
    "--baseline",
    type=click.Path(exists=True, path_type=Path),
    help="The uncompressed file, benchmarked first in the same session; results get ratios.",
)
@click.option(
    "--runs",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Passes over the sentences / prompt-and-generate rounds / 20-lookup rounds.",
)
@click.option("--text", type=_FILE, help="Sentences to run, one per line (default: eight built-in English sentences).")
@click.option(
    "--tokenizer", default="minilm", show_default=True, help="Sentence model whose tokenizer feeds an ONNX file."
)
@click.option(
    "--generate", type=click.IntRange(min=1), default=32, show_default=True, help="Tokens generated per round (GGUF)."
)
@click.option("--no-mmap", is_flag=True, help="llama.cpp reads the weights into memory instead of mapping the file.")
@click.option(
    "--memory-mb",
    type=click.IntRange(min=1),
    help="Memory cap in MB (2**20 bytes), instead of the profile's or without one.",
)
@click.option(
    "--memory-limit",
    type=click.Choice(["auto", "cgroup", "watchdog"]),
    default="auto",
    show_default=True,
    help="How the memory cap is applied.",
)
@click.option(
    "--cpu-quota",
    type=click.FloatRange(0, 1, min_open=True),
    help="Share of each pinned core's time, in (0, 1] (a cgroup cpu quota; root): a crude slower core.",
)
@click.option(
    "--flash",
    is_flag=True,
    help=("Throttle reads of the file's disk to the profile's flash storage (MB/s and IOPS; a blkio/io cgroup; root)."),
)
@click.option(
    "--emulate",
    is_flag=True,
    help=("Count instructions on the profile's CPU under qemu (aarch64, one thread) instead of timing on this host."),
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the results as JSON (the same schema a device run writes)."
)
def bench(
    artifact: Path,
    backend: str | None,
    profile: str | None,
    baseline: Path | None,
    runs: int,
    text: Path | None,
    tokenizer: str,
    generate: int,
    no_mmap: bool,
    memory_mb: int | None,
    memory_limit: str,
    cpu_quota: float | None,
    flash: bool,
    emulate: bool,
    as_json: bool,
) -> None:
    texts = [line for line in text.read_text().splitlines() if line.strip()] if text else None
    options = {
        "backend": backend,
        "profile": load_device(profile) if profile else None,
        "runs": runs,
        "texts": texts,
        "tokenizer": tokenizer,
        "generate": generate,
        "mmap": not no_mmap,
        "memory_mb": memory_mb,
        "memory_limit": memory_limit,
        "cpu_quota": cpu_quota,
        "flash": flash,
        "emulate": emulate,
    }
    counting = "counting instructions under qemu (the first run fetches and builds its tools)"
    with console.err_console.status(counting if emulate else "benchmarking"):
        results = [run_bench(baseline, **options)] if baseline else []
        results.append(run_bench(artifact, **options))
    ratios = compare_runs(*results) if baseline else {}
    if as_json and baseline:
        console.print_json({"baseline": results[0], "result": results[1].model_copy(update={"vs_baseline": ratios})})
    elif as_json:
        console.print_json(results[0])
    else:
        (console.print_emulated if emulate else console.print_bench)(results, ratios)


_CROSS_HELP = """Build llama.cpp's runtime (llama-bench, llama-completion) for a device, from the llama.cpp
vendored in the llama-cpp-python sdist edgeemb pins, and try it under qemu as the device's CPU.

Targets are device profiles (see `edgeemb bench --help`): Raspberry Pis get static aarch64
binaries (Debian's gcc-aarch64-linux-gnu; -march from the profile, OpenMP off); Android targets use
the NDK when given (--ndk or ANDROID_NDK_HOME), else the same static binary for `adb shell`. The
build is cached (~/.cache/edgeemb/cross); the first takes ~10 minutes on 2 cores. --smoke runs
llama-bench on a GGUF under qemu; --try-cpu runs it as another CPU (a dot-product build on a
cortex-a53 is reported as needing a newer CPU)."""


@main.command(help=_CROSS_HELP)
@click.option("--target", required=True, help="Device profile name or YAML file, e.g. rpi5, rpi4, rpi3, android-mid.")
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    help="Folder for the binaries and BUILD.json. Default: edgeemb-cross/TARGET.",
)
@click.option("--ndk", type=_FOLDER, help="Android NDK folder (default: ANDROID_NDK_HOME).")
@click.option("--api", default=28, show_default=True, help="Android API level for an NDK build.")
@click.option(
    "--smoke", "smoke_model", type=_FILE, help="A GGUF that llama-bench runs under qemu (default: --version only)."
)
@click.option("--try-cpu", help="Run the smoke test as this QEMU_CPU instead of the target's (e.g. cortex-a53).")
@click.option("--force", is_flag=True, help="Replace files in an existing output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the build record as JSON.")
def cross(
    target: str,
    out: Path | None,
    ndk: Path | None,
    api: int,
    smoke_model: Path | None,
    try_cpu: str | None,
    force: bool,
    as_json: bool,
) -> None:
    device = load_device(target)
    out = out or Path("edgeemb-cross") / device.name
    status = f"building llama.cpp for {device.name} ({device.arm_arch}); the first build takes ~10 minutes"
    with console.err_console.status(status):
        build = cross_build(device, out, ndk=ndk, api=api, smoke_model=smoke_model, try_cpu=try_cpu, force=force)
    if as_json:
        console.print_json(build)
    else:
        console.print_cross(build, out)
    if not build.smoke.ok:
        raise click.exceptions.Exit(1)


@main.command()
@click.argument("model", type=_FILE)
@click.option("--target", required=True, help="Device profile name or YAML file (see `edgeemb cross --help`).")
@click.option("-o", "--out", type=_NEW_FILE, required=True, help="The bundle to write (.tar.gz).")
@click.option(
    "--prompt-tokens",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Prompt length llama-bench processes.",
)
@click.option(
    "--generate", type=click.IntRange(min=1), default=32, show_default=True, help="Tokens llama-bench generates."
)
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True, help="llama-bench repetitions.")
@click.option("--ndk", type=_FOLDER, help="Android NDK folder for an Android target.")
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def bundle(
    model: Path,
    target: str,
    out: Path,
    prompt_tokens: int,
    generate: int,
    runs: int,
    ndk: Path | None,
    force: bool,
    as_json: bool,
) -> None:
    """Pack a GGUF, llama-bench built for a device (`edgeemb cross`) and run.sh into a tarball. On
    the device, `sh run.sh` benchmarks the model and writes bench.json in the schema of `edgeemb
    bench`; `edgeemb compare host.json bench.json` shows it beside this host's run.

    \b
    edgeemb bundle out/gemma-english-q5_0/model.gguf --target rpi5 -o gemma-rpi5.tar.gz
    """
    device = load_device(target)
    status = f"building llama-bench for {device.name} (cached after the first build, ~10 minutes)"
    with console.err_console.status(status):
        written = make_bundle(
            model, device, out, prompt_tokens=prompt_tokens, generate=generate, runs=runs, ndk=ndk, force=force
        )
    if as_json:
        console.print_json(written)
        return
    console.print_bundle(written, device.name)
