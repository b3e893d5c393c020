"""Quantise and lookup throughput of every format, against baselines measured in the same run.

    python tools/bench_formats.py                       # Gemma 3 270M's table (262144 x 640)
    python tools/bench_formats.py --model minilm --json bench.json
    python tools/bench_formats.py --model random:163840x1024 --formats Q6_K,Q4_K   # K-quant widths

The table goes to stdout; docs/ holds two runs:

    python tools/bench_formats.py --model gemma3-270m --json docs/bench-formats-gemma.json > docs/bench-formats-gemma.md
    python tools/bench_formats.py --model random:163840x1024 --formats Q8_0,Q4_0,Q6_K,Q4_K \
        --json docs/bench-formats-kquants.json > docs/bench-formats-kquants.md

- quantise: wall seconds and MB/s (fp32 input) for the whole table, the fastest of `--repeats`
  runs (3; as timeit reports, since other processes only ever add time), and the CPU seconds of
  all threads in that run; the JSON keeps every run's seconds. PQ's assignment and the GGUF
  encoders run on one thread per CPU and vocab k-means' matmuls on BLAS threads: CPU seconds
  above wall seconds is that parallelism, and wall seconds above CPU seconds means
  other processes had the CPUs. Where the `gguf` package has a quantiser for the same type,
  `gguf.quants.quantize` is timed on the same table beside it.
- lookup: rows/s for batches of 4096 random token ids (`EmbeddingTable.lookup`, decoded to
  float32 on one thread: block formats through their compiled gather-and-decode kernel
  (`edgeemb/formats/kernels.py`), codebooks through numpy), as a share of an fp32 `np.take`
  of the same ids from the dense table (also one thread), measured again right before each format
  so that both see the same load.

Targets (from issue #3): quantising 262144 x 640 in <= 10 s, lookup >= 50% of the fp32 gather.
The machine is shared and noisy: read the ratios, which are measured side by side; the load
average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from edgeemb.errors import EdgeembError
from edgeemb.formats import get_format
from edgeemb.sources import open_model
from edgeemb.table import QuantizedTable

FORMATS = [
    ("int8", {}),
    ("int8", {"zero_point": True}),
    ("int4", {"block_size": 32}),
    ("int4", {"block_size": 32, "zero_point": True}),
    ("int4", {"block_size": 128}),
    ("int2", {"block_size": 32}),
    ("Q8_0", {}),
    ("Q5_0", {}),
    ("Q4_0", {}),
    ("Q4_1", {}),
    ("Q6_K", {}),
    ("Q4_K", {}),
    ("pq", {"subspaces_per_value": 4}),
    ("vocab_kmeans", {"clusters": 1024}),
]
BATCH = 4096


def best_of(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def lookup_rate(lookup, rows: int, seconds: float = 1.0) -> float:
    """Rows per second over random batches, for about `seconds`."""
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, rows, BATCH) for _ in range(16)]
    lookup(batches[0])  # warm up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        lookup(batches[done % len(batches)])
        done += 1
    return done * BATCH / (time.perf_counter() - start)


def gguf_quantize_seconds(weight: np.ndarray, name: str, repeats: int) -> float | None:
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    qtype = getattr(GGMLQuantizationType, name, None)
    try:
        return best_of(lambda: quantize(weight, qtype), repeats) if qtype is not None else None
    except NotImplementedError:  # gguf has no quantiser for this type (the K-quants)
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default="gemma3-270m", help="a model, or random:ROWSxDIM for a seeded Gaussian table"
    )
    parser.add_argument("--formats", help="comma-separated format names to run (default: all)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument(
        "--repeats", type=int, default=3, help="quantise each format this many times and report the fastest (default 3)"
    )
    args = parser.parse_args()
    if args.model.startswith("random:"):
        rows, dim = (int(v) for v in args.model.removeprefix("random:").split("x"))
        weight = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32)
    else:
        weight = open_model(args.model).table.weight
    rows, dim = weight.shape
    megabytes = weight.nbytes / 1e6
    dense_rate = lookup_rate(lambda ids: np.take(weight, ids, axis=0), rows)
    results = []
    print(
        f"{args.model}: {rows} x {dim} float32 ({megabytes:.0f} MB); "
        f"fp32 np.take: {dense_rate / 1e6:.2f} M rows/s at the start; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start\n"
    )
    print(
        f"| format | quantise s (best of {args.repeats}) | CPU s | MB/s "
        "| gguf quantise s | lookup M rows/s | vs fp32 gather |"
    )
    print("|---|---|---|---|---|---|---|")
    chosen = set(args.formats.split(",")) if args.formats else None
    for name, options in FORMATS:
        if chosen is not None and name not in chosen:
            continue
        if "subspaces_per_value" in options:
            options = {"subspaces": dim // options["subspaces_per_value"]}
        fmt = get_format(name, **options)
        label = fmt.describe()
        try:
            fmt.check_width(dim)
        except EdgeembError as exc:
            print(f"| {label} | not applicable: {exc} | | | | | |")
            results.append({"format": label, "skipped": str(exc)})
            continue
        runs = []
        for _ in range(args.repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            table = QuantizedTable.quantize(weight, fmt)
            runs.append((time.perf_counter() - start, time.process_time() - cpu_start))
        seconds, cpu_seconds = min(runs)
        reference = gguf_quantize_seconds(weight, name, args.repeats) if not options else None
        dense_rate = lookup_rate(lambda ids: np.take(weight, ids, axis=0), rows)
        rate = lookup_rate(table.lookup, rows)
        row = {
            "format": label,
            "quantize_seconds": seconds,
            "quantize_cpu_seconds": cpu_seconds,
            "quantize_seconds_all": [r[0] for r in runs],
            "quantize_mb_per_s": megabytes / seconds,
            "gguf_quantize_seconds": reference,
            "lookup_rows_per_s": rate,
            "lookup_vs_fp32": rate / dense_rate,
            "bits_per_param": table.bits_per_param,
        }
        results.append(row)
        gguf_cell = f"{reference:.2f}" if reference is not None else "–"
        print(
            f"| {label} | {seconds:.2f} | {cpu_seconds:.2f} | {megabytes / seconds:.0f} "
            f"| {gguf_cell} | {rate / 1e6:.2f} | {rate / dense_rate:.0%} |",
            flush=True,
        )
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        summary = {
            "model": args.model,
            "shape": [rows, dim],
            "cpus": os.cpu_count(),
            "fp32_lookup_rows_per_s": dense_rate,
            "formats": results,
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
