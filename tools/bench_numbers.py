"""`edgeemb bench` under device profiles on this host: original against compressed, side by side.

    python tools/bench_numbers.py -o docs/bench-devices --work out/bench

- MiniLM as one ONNX file: the fp32 export against edgeemb's int4 table with the other MatMuls
  int8 (`export_onnx(..., quantize_rest=True)`), on the rpi4 profile.
- Gemma 3 270M GGUF: the shipped file against the `gemma3-270m-english-q5_0` recipe's GGUF
  (vocabulary trimmed to Latin script, token_embd Q5_0), on rpi4; and on rpi-zero2 (350 MB cap),
  once with the file mapped (llama.cpp's default) and once with the weights read into memory;
  and that last again under a 300 MB cap (a Zero 2 W with less left for the model).

Each pair runs baseline first, then the compressed file, each in a fresh cold process (the file
dropped from the page cache). Latency is this host's, on the profile's cores: read the ratios.
Writes OUT.md and OUT.json; the compressed files stay in --work.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from report_files import write_report

from edgeemb.bench.devices import load_device
from edgeemb.bench.run import bench, compare_runs
from edgeemb.export.onnx import export_onnx
from edgeemb.pipeline import compress
from edgeemb.recipe import load_recipe
from edgeemb.results import to_dict
from edgeemb.sources import open_model
from edgeemb.steps import StepContext


def minilm_files(work: Path) -> tuple[Path, Path]:
    source = open_model("minilm")
    fp32, small = work / "minilm-fp32.onnx", work / "minilm-int4-int8rest.onnx"
    if not fp32.exists():
        export_onnx(source, None, fp32)
    if not small.exists():
        table = load_recipe("int4").apply(source.table, StepContext(source.tokens, source.tokenize))
        export_onnx(source, table, small, quantize_rest=True)
    return fp32, small


def gemma_files(work: Path) -> tuple[Path, Path]:
    out = work / "gemma3-270m-english-q5_0"
    if not out.exists():
        compress("gemma3-270m", "gemma3-270m-english-q5_0", out)
    return Path(open_model("gemma3-270m").path), next(out.glob("*.gguf"))


SCENARIOS = [  # (label, files, profile, bench options)
    ("MiniLM ONNX, rpi4", minilm_files, "rpi4", {"runs": 5}),
    ("Gemma 3 270M GGUF, rpi4", gemma_files, "rpi4", {"runs": 2}),
    ("Gemma 3 270M GGUF, rpi-zero2, mmap", gemma_files, "rpi-zero2", {"runs": 2}),
    ("Gemma 3 270M GGUF, rpi-zero2, no mmap", gemma_files, "rpi-zero2", {"runs": 2, "mmap": False}),
    (
        "Gemma 3 270M GGUF, rpi-zero2 at 300 MB, no mmap",
        gemma_files,
        "rpi-zero2",
        {"runs": 2, "mmap": False, "memory_mb": 300},
    ),
]


def measure(work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    started, rows = time.time(), []
    for label, files, profile, options in SCENARIOS:
        original, compressed = files(work)
        device = load_device(profile)
        before = bench(original, profile=device, **options)
        after = bench(compressed, profile=device, **options)
        rows.append(
            {
                "scenario": label,
                "profile": profile,
                "options": options,
                "original": to_dict(before),
                "compressed": to_dict(after),
                "ratios": compare_runs(before, after),
            }
        )
    return {"seconds": time.time() - started, "rows": rows}


def _cell(result: dict) -> str:
    if not result["fits"]:
        return result["message"]
    line = f"p50 {result['latency_ms']['p50']:.1f} ms / {result['unit']}"
    if "prompt_ms_per_token" in result:
        line += f", prompt {result['prompt_ms_per_token']:.1f} ms / token"
    charged = f", cgroup peak {result['charged_peak_bytes'] / 2**20:.0f} MB" if "charged_peak_bytes" in result else ""
    return f"{line}; peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MB{charged}; {result['major_faults']} pages read"


def render(result: dict) -> str:
    lines = [
        "`edgeemb bench` under device profiles on this host (`python tools/bench_numbers.py`). "
        "Latency is this x86 host's on the",
        "profile's pinned cores (2 of the 4 the profiles ask for: the host has 2), not the device's; "
        "the ratios, measured side by side, carry over.",
        "",
        "| scenario | original | compressed | file | latency p50 | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        original, compressed, ratios = row["original"], row["compressed"], row["ratios"]
        names = (
            f"{Path(original['artifact']).name} ({original['file_bytes'] / 1e6:.1f} MB)",
            f"{Path(compressed['artifact']).name} ({compressed['file_bytes'] / 1e6:.1f} MB)",
        )
        file_ratio = f"{compressed['file_bytes'] / original['file_bytes']:.2f}x"
        latency = f"{ratios['latency_p50']:.2f}x" if ratios else "–"
        memory = f"{ratios['peak_rss']:.2f}x" if ratios else "–"
        lines.append(
            f"| {row['scenario']} | {names[0]}: {_cell(original)} | {names[1]}: {_cell(compressed)} "
            f"| {file_ratio} | {latency} | {memory} |"
        )
    limits = result["rows"][0]["original"]["limits"]
    lines += [
        "",
        f"Limits applied: cores by {limits['cores']['how']}; memory by {limits['memory']['how']}.",
        f"Run time {result['seconds'] / 60:.1f} min.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=Path("docs/bench-devices"), help="writes OUT.md and OUT.json")
    parser.add_argument("--work", type=Path, default=Path("out/bench"), help="folder for the compressed files")
    parser.add_argument("--render", action="store_true", help="only re-render OUT.md from OUT.json")
    args = parser.parse_args()
    write_report(args.out, None if args.render else lambda: measure(args.work), render)


if __name__ == "__main__":
    main()
