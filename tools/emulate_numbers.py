"""`edgeemb bench --emulate` on an emulated Cortex-A76 (the rpi5 profile): instructions per
sentence and per generated token, original against compressed, each counted twice.

    python tools/emulate_numbers.py --text ../shared/data/wikitext2/wikitext2_raw_test_joined.txt

- MiniLM as one ONNX file: the fp32 export against edgeemb's int4 table with the other MatMuls
  int8 (the files of tools/bench_numbers.py), over bench's eight built-in sentences.
- SmolLM2-135M GGUF: the shipped file (token_embd Q8_0) against the `smollm2-135m-q5_0-act` and
  `smollm2-135m-q4_0-act` recipes' GGUFs, fitted on the second half of --text; 16 tokens counted.

Every file is counted twice, in separate runs; the script fails if a count differs. Writes
OUT.md and OUT.json; the compressed files stay in --work.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench_numbers import minilm_files
from report_files import write_report

from edgeemb.bench.devices import load_device
from edgeemb.bench.run import bench, compare_runs
from edgeemb.pipeline import compress
from edgeemb.results import BenchResult, to_dict
from edgeemb.sources import open_model

GENERATE = 16


def smollm2_files(work: Path, text: Path) -> list[Path]:
    calibration = work / "calibration.txt"
    if not calibration.exists():
        whole = text.read_text(encoding="utf-8")
        calibration.write_text(whole[len(whole) // 2 :], encoding="utf-8")
    files = [Path(open_model("smollm2-135m").path)]
    for recipe in ("smollm2-135m-q5_0-act", "smollm2-135m-q4_0-act"):
        out = work / recipe
        if not out.exists():
            compress("smollm2-135m", recipe, out, calibration=calibration)
        files.append(next(out.glob("*.gguf")))
    return files


def counted_twice(path: Path, device) -> tuple[BenchResult, dict]:
    first, second = (bench(path, profile=device, emulate=True, generate=GENERATE) for _ in range(2))
    for key in ("instructions", "short_run_instructions"):
        if getattr(first, key) != getattr(second, key):
            raise SystemExit(
                f"{path.name}: {key} differ between two runs: {getattr(first, key)} and {getattr(second, key)}"
            )
    return first, {
        "instructions": second.instructions,
        "short_run_instructions": second.short_run_instructions,
        "peak_rss_bytes": second.peak_rss_bytes,
    }


def measure(work: Path, text: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    device = load_device("rpi5")
    started, groups = time.time(), []
    for label, files in (
        ("MiniLM ONNX, per sentence", list(minilm_files(work))),
        ("SmolLM2-135M GGUF, per generated token", smollm2_files(work, text)),
    ):
        results = [counted_twice(path, device) for path in files]
        groups.append(
            {
                "group": label,
                "results": [
                    {**to_dict(result), "repeated": repeated, "vs_original": compare_runs(results[0][0], result)}
                    for result, repeated in results
                ],
            }
        )
    return {"seconds": time.time() - started, "profile": device.name, "groups": groups}


def render(result: dict) -> str:
    emulated = result["groups"][0]["results"][0]["emulated"]
    lines = [
        "`edgeemb bench --emulate` (`python tools/emulate_numbers.py`): "
        f"qemu {emulated['qemu'].split()[0]} user mode as a {emulated['cpu']}",
        f"({result['profile']} profile), one thread. Each file counted in two separate runs; "
        "both runs gave the counts shown, to the instruction.",
        "Instructions are the guest's; peak RSS is the qemu process's (the guest's memory and the emulator's).",
        "",
        "| file | size | instructions per unit | vs original | start-up run | qemu peak RSS | vs original |",
        "|---|---|---|---|---|---|---|",
    ]
    for group in result["groups"]:
        lines.append(f"| **{group['group']}** | | | | | | |")
        for row in group["results"]:
            ratios = row["vs_original"]
            path = Path(row["artifact"])
            label = path.parent.name if path.name == "model.gguf" else path.name
            lines.append(
                f"| {label} | {row['file_bytes'] / 1e6:.1f} MB | "
                f"{row['instructions_per_unit']:,.0f} (over {row['units']}) | {ratios['instructions']:.3f}x | "
                f"{row['short_run_instructions']:,} | "
                f"{row['peak_rss_bytes'] / 2**20:.0f} MB | {ratios['peak_rss']:.2f}x |"
            )
    lines += ["", f"Run time {result['seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--text", type=Path, help="plain text whose second half fits the SmolLM2 recipes (WikiText-2 raw test)"
    )
    parser.add_argument(
        "-o", "--out", type=Path, default=Path("docs/bench-emulated"), help="writes OUT.md and OUT.json"
    )
    parser.add_argument("--work", type=Path, default=Path("out/bench"), help="folder for the compressed files")
    parser.add_argument("--render", action="store_true", help="only re-render OUT.md from OUT.json")
    args = parser.parse_args()
    if not args.render and args.text is None:
        parser.error("--text is required to measure")
    write_report(args.out, None if args.render else lambda: measure(args.work, args.text), render)


if __name__ == "__main__":
    main()
