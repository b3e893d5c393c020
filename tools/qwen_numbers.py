"""Qwen2.5-0.5B, the catalog's untied GGUF: inspect, compress, export, verified in llama.cpp.

    taskset -c 1 python tools/qwen_numbers.py \
        --text ../shared/data/wikitext2/wikitext2_raw_test_joined.txt --max-tokens 4096 -o docs

One run, one pinned thread (llama.cpp uses one per CPU the process may run on):

1. inspect: the model's facts (its output head reported separate, untied), its output.weight
   beside token_embd, and what `offload` says of the head.
2. compress, as `edgeemb compress qwen2.5-0.5b -r RECIPE` does (`pipeline.compress`): int8, Q5_0
   (gguf-q5_0, the default `compress` picks for a causal LM), Q4_0 with least-squares scales, and
   the activation-weighted gguf-q5_0-act with calibration text (it weighs by a tied head's inputs:
   on this untied model it refuses, and its one-line error is recorded); llama.cpp's own quantiser's
   token_embd Q5_0 and Q4_0 (the peer-llama-* recipes) beside them.
3. export each, as `edgeemb export OUT --format gguf [--type T] --text EVAL` does
   (`pipeline.export_artifact`): int8 is no GGUF type, so it ships as Q8_0, and the export reports
   the shipped table's own figures. Each export runs in llama.cpp beside the source on the same
   token ids: perplexity over the first `--max-tokens` tokens of the evaluation text (windows of
   1024), greedy output, decode tokens/s and peak RSS.

The text is split by characters at its middle: the first half is the calibration text, the second
half the evaluation text, so no token scored was calibrated on. Writes OUT/gguf-qwen2.5-0.5b.md and
.json, each naming the command and its wall time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeemb.errors import EdgeembError
from edgeemb.formats import get_format
from edgeemb.ggufio import OUTPUT, TOKEN_EMBD, dequantize_tensor, read_gguf_header, tensor_bytes
from edgeemb.offload import OffloadConfig
from edgeemb.offload.run import offload
from edgeemb.pipeline import compress, default_recipe, export_artifact, model_facts
from edgeemb.recipe import ExportConfig, load_recipe, parse_recipe
from edgeemb.report.markdown import size_change
from edgeemb.results import GGUFExported, to_json
from edgeemb.sources import open_model
from edgeemb.table import QuantizedTable

MODEL = "qwen2.5-0.5b"
Q4_0_SEARCH = {"name": "q4_0-search", "steps": [{"quantize": {"format": "Q4_0", "search": True}}]}
# (label, recipe, GGUF type the export asks for: None when the table is stored in one)
VARIANTS = [
    ("int8", "int8", "Q8_0"),
    ("Q5_0 (gguf-q5_0, the default)", "gguf-q5_0", None),
    ("Q4_0, least-squares scales", Q4_0_SEARCH, None),
    ("activation-weighted Q5_0 (gguf-q5_0-act)", "gguf-q5_0-act", None),
    ("llama.cpp token_embd Q5_0 (peer-llama-q5_0)", "peer-llama-q5_0", None),
    ("llama.cpp token_embd Q4_0 (peer-llama-q4_0)", "peer-llama-q4_0", None),
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def head_facts(path: Path) -> dict:
    """The separate output head beside token_embd: types, bytes, and how far apart the two are."""
    header = read_gguf_header(path)
    embd, head = header.tensor(TOKEN_EMBD), header.tensor(OUTPUT)
    table, output = (dequantize_tensor(path, info) for info in (embd, head))
    rounded = QuantizedTable.quantize(output, get_format(embd.type_name)).to_dense()
    return {
        "token_embd": {"type": embd.type_name, "shape": list(embd.shape), "bytes": embd.nbytes},
        "output": {"type": head.type_name, "shape": list(head.shape), "bytes": head.nbytes},
        "relative_difference": float(np.linalg.norm(table - output) / np.linalg.norm(output)),
        # the head quantised to token_embd's type: how far that rounding alone moves it
        "head_in_token_embd_type_relative_error": float(np.linalg.norm(rounded - output) / np.linalg.norm(output)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", type=Path, required=True, help="WikiText-2 raw test, joined")
    parser.add_argument("--max-tokens", type=int, default=4096, help="evaluation tokens scored")
    parser.add_argument("--calibration-tokens", type=int, default=2048)
    parser.add_argument("-o", "--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    started = time.monotonic()
    cpus = sorted(os.sched_getaffinity(0))
    pinned = f"taskset -c {','.join(map(str, cpus))} " if len(cpus) < (os.cpu_count() or 1) else ""
    command = pinned + shlex.join(["python", "tools/qwen_numbers.py", *sys.argv[1:]])

    source = open_model(MODEL)
    text = args.text.read_text(encoding="utf-8")
    middle = len(text) // 2
    with tempfile.TemporaryDirectory(prefix="edgeemb-qwen-") as work:
        work = Path(work)
        calibration, evaluation = work / "calibration.txt", work / "evaluation.txt"
        calibration.write_text(text[:middle], encoding="utf-8")
        evaluation.write_text(text[middle:], encoding="utf-8")
        split = {
            "text": str(args.text),
            "text_sha256": sha256(args.text),
            "calibration": f"characters [0, {middle}) of the text",
            "evaluation": f"characters [{middle}, {len(text)}) of the text; its first {args.max_tokens} tokens scored",
        }
        offloaded = offload(MODEL, evaluation, OffloadConfig(), max_tokens=256)
        inspected = {
            "model": json.loads(to_json(model_facts(source))),
            "head": head_facts(source.path),
            "offload_head": json.loads(to_json(offloaded.offload.head)),
            "default_recipe": dict(zip(("name", "why"), default_recipe(source))),
            "default_recipe_with_calibration": dict(zip(("name", "why"), default_recipe(source, calibration))),
        }
        rows = []
        for label, spec, tensor_type in VARIANTS:
            recipe = parse_recipe(spec, origin=spec["name"]) if isinstance(spec, dict) else load_recipe(spec)
            out = work / recipe.name
            try:
                compressed = compress(
                    source, recipe, out, calibration=calibration, calibration_tokens=args.calibration_tokens
                )
            except EdgeembError as exc:
                rows.append({"variant": label, "recipe": recipe.name, "refused": str(exc)})
                continue
            exported = export_artifact(
                out,
                ExportConfig(format="gguf", type=tensor_type),
                out / "verified.gguf",
                text=evaluation,
                max_tokens=args.max_tokens,
            )
            assert isinstance(exported, GGUFExported)
            rows.append(row(label, recipe.name, compressed.report, exported, source.path))

    wall = time.monotonic() - started
    summary = {
        "model": MODEL,
        "source": str(source.path),
        "source_sha256": source.sha256,
        "command": command,
        "wall_seconds": wall,
        "llama_threads": len(cpus),
        "split": split,
        "inspect": inspected,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"gguf-{MODEL}"  # not Path.with_suffix: the name has dots of its own
    (args.out / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = markdown(summary, args.max_tokens)
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def row(label: str, recipe: str, report, exported: GGUFExported, source: Path) -> dict:
    """One variant: its compress report's table, its export's file and llama.cpp check."""
    check, written = exported.verify, exported.export
    shipped = exported.requantised.shipped if exported.requantised else None
    file = Path(written.path)
    embd = read_gguf_header(file).tensor(TOKEN_EMBD)
    source_embd = read_gguf_header(source).tensor(TOKEN_EMBD)
    same_as_source = embd.type_name == source_embd.type_name and np.array_equal(
        tensor_bytes(file, embd), tensor_bytes(source, source_embd)
    )
    return {
        "variant": label,
        "recipe": recipe,
        "table": {
            "storage": report.table.storage,
            "bytes": report.table.bytes,
            "ratio_vs_source": report.table.ratio_vs_source,
            "relative_error": report.quality.table.relative_error,
            "warnings": report.table.warnings or [],
        },
        "shipped": {
            "token_embd": written.tensor_type,
            "bytes": written.table_bytes,
            "relative_error": shipped.quality.relative_error if shipped else report.quality.table.relative_error,
            "requantised": shipped is not None,
            "token_embd_bytes_equal_to_source": bool(same_as_source),
        },
        "file_bytes": written.file_bytes,
        "notes": written.notes,
        "source_perplexity": check.source.perplexity.perplexity,
        "perplexity": check.export.perplexity.perplexity,
        "tokens_scored": check.export.perplexity.tokens_scored,
        "greedy_tokens_equal_to_source": check.greedy_tokens_equal_to_source,
        "greedy_tokens": len(check.export.greedy_ids),
        "decode_tokens_per_s": check.export.decode_tokens_per_s,
        "source_decode_tokens_per_s": check.source.decode_tokens_per_s,
        "peak_rss_bytes": check.export.peak_rss_bytes,
        "export": json.loads(to_json(exported)),
    }


def markdown(summary: dict, max_tokens: int) -> list[str]:
    inspected, rows = summary["inspect"], summary["rows"]
    model, head = inspected["model"], inspected["head"]
    default, calibrated = inspected["default_recipe"], inspected["default_recipe_with_calibration"]
    measured = [row for row in rows if "refused" not in row]
    source_ppl = measured[0]["source_perplexity"]
    spread = max(abs(row["source_perplexity"] - source_ppl) for row in measured)
    same = "in every run" if spread == 0 else f"(within {spread:.2g} across runs)"
    lines = [
        "# Qwen2.5-0.5B (GGUF, untied head): compress, export, llama.cpp",
        "",
        f"{Path(summary['source']).name} (sha256 {summary['source_sha256'][:12]}…), llama.cpp on "
        f"{summary['llama_threads']} thread(s). Made by (wall time {summary['wall_seconds'] / 60:.1f} min):",
        "",
        f"    {summary['command']}",
        "",
        "## inspect",
        "",
        f"- {model['architecture']} ({model['format']}), vocab {model['vocab']} x dim {model['dim']}; token_embd "
        f"{model['stored_dtype']}, {model['table_bytes'] / 1e6:.2f} MB, {model['table_share_of_params']:.1%} of "
        f"{model['total_params'] / 1e6:.1f} M parameters.",
        f"- output head: separate (`tied: {str(model['tied']).lower()}`): output.weight {head['output']['type']}, "
        f"{head['output']['bytes'] / 1e6:.2f} MB, the same {head['output']['shape'][0]} x {head['output']['shape'][1]} "
        f"matrix stored apart: token_embd differs from it by {head['relative_difference']:.4f} (relative), and "
        f"the head rounded to {head['token_embd']['type']} by {head['head_in_token_embd_type_relative_error']:.4f}. "
        "`edgeemb inspect` prints \"output head: separate\".",
        f"- offload says of the head: \"{inspected['offload_head']['note']}\" ({inspected['offload_head']['bytes']} "
        "bytes kept in RAM for it).",
        f"- `edgeemb compress qwen2.5-0.5b` picks `{default['name']}`: {default['why']}. With --calibration it "
        f"picks `{calibrated['name']}`: {calibrated['why']}.",
        "",
        "## compress, export, llama.cpp",
        "",
        f"Calibration text: {summary['split']['calibration']}; evaluation text: {summary['split']['evaluation']} "
        f"({Path(summary['split']['text']).name}). Perplexity of {measured[0]['tokens_scored']} tokens scored "
        f"(windows of 1024); the source scores {source_ppl:.3f} {same}. Each export is verified in "
        "llama.cpp beside the source; the untied head is left as the source stores it (Q8_0) in every file.",
        "",
        "| variant | recipe's table | MB | vs source table | shipped token_embd | MB | rel. error | file MB "
        "| perplexity | vs source | greedy = source | decode tok/s (source) | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "refused" in row:
            lines.append(f"| {row['variant']} | refused: {row['refused']} |" + " |" * 11)
            continue
        table, shipped = row["table"], row["shipped"]
        ratio = table["ratio_vs_source"]
        change = size_change(ratio) if ratio >= 1 else f"**{size_change(ratio)}**"
        marks = (" (re-quantised)" if shipped["requantised"] else "") + (
            " (= source bytes)" if shipped["token_embd_bytes_equal_to_source"] else ""
        )
        lines.append(
            f"| {row['variant']} | {table['storage']} | {table['bytes'] / 1e6:.2f} | {change} "
            f"| {shipped['token_embd']}{marks} | {shipped['bytes'] / 1e6:.2f} | {shipped['relative_error']:.4f} "
            f"| {row['file_bytes'] / 1e6:.1f} | {row['perplexity']:.3f} | {row['perplexity'] / source_ppl - 1:+.2%} "
            f"| {row['greedy_tokens_equal_to_source']}/{row['greedy_tokens']} "
            f"| {row['decode_tokens_per_s']:.1f} ({row['source_decode_tokens_per_s']:.1f}) "
            f"| {row['peak_rss_bytes'] / 1e6:.0f} |"
        )
    lines += ["", "Relative error: the shipped token_embd against the source's (dequantised) table.", ""]
    for row in rows:
        for warning in row.get("table", {}).get("warnings", []):
            lines.append(f"- {row['variant']}: warning: {warning}.")
        if row.get("shipped", {}).get("requantised"):
            export = row["export"]["requantised"]
            lines.append(
                f"- {row['variant']}: the export re-quantised the recipe's {export['recipe']['storage']} table "
                f"(relative error {export['recipe']['quality']['relative_error']:.4f}) to "
                f"{export['shipped']['storage']} (relative error {export['shipped']['quality']['relative_error']:.4f}),"
                " and reports the shipped file's figures beside the recipe's."
            )
    return lines


if __name__ == "__main__":
    main()
