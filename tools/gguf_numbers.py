"""edgeemb's GGUF exports against llama.cpp's own token-embedding choices, in one run.

    python tools/gguf_numbers.py --model gemma3-270m \
        --text ../shared/data/wikitext2/wikitext2_raw_test_joined.txt -o docs
    python tools/gguf_numbers.py --model smollm2-135m --text ... -o docs
    taskset -c 1 python tools/gguf_numbers.py --model gemma3-270m \
        --text ../shared/data/wikitext2/wikitext2_raw_test_joined.txt --max-tokens 4096 \
        --llama Q4_0,IQ4_NL --recipes "" --formats IQ4_NL --name gguf-iq4_nl-gemma3-270m -o docs

For one source GGUF: llama.cpp's quantiser (`llama_model_quantize` with `token_embedding_type`,
every other tensor kept) makes one file per `--llama` type; edgeemb applies each `--recipes`
recipe to the table (and each `--formats` format, as a one-step `quantize` recipe) and exports it
with `export_gguf`; an edgeemb file whose token_embd bytes equal a llama.cpp file's says so.
Recipes that weigh columns by the tied head's input power calibrate on the second half of `--text`
(by characters), which the perplexity (the first `--max-tokens` tokens) never sees. Every file,
the source included, then runs in llama.cpp in its own process on the same token ids: perplexity
over the first `--max-tokens` tokens (windows of 1024), greedy output on a fixed prompt, decode
tokens/s and peak RSS; llama.cpp uses one thread per CPU the process may run on (`taskset -c 1`: one pinned
thread). With `--decode-repeats K`, every file is loaded and decodes again K - 1 more times, in
rounds over all files (no perplexity), and its decode tokens/s is the median of its K runs. Writes
OUT/NAME.md and .json (NAME: gguf-MODEL), each naming the command. Speeds are noisy on a shared
machine: read them as ratios to the source measured in the same run.

An edgeemb file beats a llama.cpp point when it is smaller at no worse perplexity, or has a
lower perplexity at no larger file size; the table says which points each one beats.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edgeemb.evaluate.llamacpp import greedy_agreement, measure_ggufs
from edgeemb.export.gguf import export_gguf, llama_quantize_token_embd
from edgeemb.ggufio import TOKEN_EMBD, read_gguf_header, tensor_bytes
from edgeemb.pipeline import step_context
from edgeemb.recipe import load_recipe, parse_recipe
from edgeemb.sources import open_model


def beats(row: dict, peer: dict) -> bool:
    smaller_no_worse = row["file_bytes"] < peer["file_bytes"] and row["perplexity"] <= peer["perplexity"]
    better_no_larger = row["perplexity"] < peer["perplexity"] and row["file_bytes"] <= peer["file_bytes"]
    return smaller_no_worse or better_no_larger


def same_token_embd(path: Path, peers: list[tuple[str, Path]]) -> list[str]:
    """The peers whose token_embd has the same type and bytes as `path`'s."""
    mine = read_gguf_header(path).tensor(TOKEN_EMBD)
    same = []
    for label, peer in peers:
        theirs = read_gguf_header(peer).tensor(TOKEN_EMBD)
        if theirs.type_name == mine.type_name and np.array_equal(tensor_bytes(path, mine), tensor_bytes(peer, theirs)):
            same.append(label)
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--text", type=Path, required=True, help="plain text for perplexity (e.g. WikiText-2 raw test)")
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--llama", default="Q5_0,Q4_0", help="llama.cpp token_embd types to compare with")
    parser.add_argument("--recipes", default="gguf-q5_0-act,gguf-q4_0-act", help="edgeemb recipes ('' for none)")
    parser.add_argument("--formats", default="", help="edgeemb formats to export as they are, e.g. IQ4_NL")
    parser.add_argument("--calibration-tokens", type=int, default=2048)
    parser.add_argument("-o", "--out", type=Path, default=Path("docs"))
    parser.add_argument("--name", help="output file name without suffix (default: gguf-MODEL)")
    parser.add_argument("--decode-repeats", type=int, default=1, help="decode runs per file; the median is reported")
    args = parser.parse_args()
    recipes = [load_recipe(name) for name in args.recipes.split(",") if name]
    for name in filter(None, args.formats.split(",")):
        recipes.append(parse_recipe({"steps": [{"quantize": {"format": name}}]}, default_name=name))

    model = open_model(args.model)
    text = args.text.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="edgeemb-gguf-") as work:
        work = Path(work)
        calibration = work / "calibration.txt"
        calibration.write_text(text[len(text) // 2 :], encoding="utf-8")
        files = [("source", model.stored_dtype, model.path, None)]
        for qtype in args.llama.split(","):
            path = work / f"llama-{qtype}.gguf"
            llama_quantize_token_embd(model.path, path, qtype)
            files.append((f"llama.cpp token_embd {qtype}", qtype, path, None))
        context = step_context(model, calibration, args.calibration_tokens)  # one calibration for all recipes
        for recipe in recipes:
            export = export_gguf(model.path, recipe.apply(model.table, context), work / f"{recipe.name}.gguf")
            files.append((f"edgeemb {recipe.name}", export.tensor_type, Path(export.path), export.notes))
        llama_files = [(label, path) for label, _, path, _ in files if label.startswith("llama.cpp")]
        same = {label: same_token_embd(path, llama_files) for label, _, path, _ in files if label.startswith("edgeemb")}
        paths = [path for _, _, path, _ in files]
        runs = measure_ggufs(paths, text, args.max_tokens)
        decode_runs = [[run.decode_tokens_per_s] for run in runs]
        for _ in range(args.decode_repeats - 1):
            for rates, again in zip(decode_runs, measure_ggufs(paths, None)):
                rates.append(again.decode_tokens_per_s)

    source_run = runs[0]
    rows = []
    for (label, qtype, _, notes), run, rates in zip(files, runs, decode_runs):
        rows.append(
            {
                "file": label,
                "token_embd": qtype,
                "file_bytes": run.file_bytes,
                "perplexity": run.perplexity.perplexity,
                "tokens_scored": run.perplexity.tokens_scored,
                "decode_tokens_per_s": statistics.median(rates),
                "decode_tokens_per_s_runs": rates,
                "prefill_tokens_per_s": run.prefill_tokens_per_s,
                "peak_rss_bytes": run.peak_rss_bytes,
                "greedy_text": run.greedy_text,
                "greedy_agrees_with_source": greedy_agreement(run, source_run),
                "same_token_embd_as": same.get(label, []),
                "notes": notes or [],
            }
        )
    peers = [row for row in rows if row["file"].startswith("llama.cpp")]
    for row in rows:
        row["beats"] = [peer["file"] for peer in peers if row["file"].startswith("edgeemb") and beats(row, peer)]

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / (args.name or f"gguf-{args.model}")
    cpus = sorted(os.sched_getaffinity(0))
    pinned = f"taskset -c {','.join(map(str, cpus))} " if len(cpus) < (os.cpu_count() or 1) else ""
    command = pinned + shlex.join(["python", "tools/gguf_numbers.py", *sys.argv[1:]])
    summary = {
        "model": args.model,
        "source": str(model.path),
        "text": str(args.text),
        "command": command,
        "llama_threads": len(cpus),
        "rows": rows,
        "runs": [asdict(r) for r in runs],
    }
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    source = rows[0]
    repeats = f", median of {args.decode_repeats} runs each" if args.decode_repeats > 1 else ""
    lines = [
        f"{args.model}: {model.path.name}; perplexity of {source['tokens_scored']} tokens scored "
        f"in the first {args.max_tokens} of {args.text.name} (windows of 1024)",
        f"llama.cpp on {len(cpus)} thread(s); decode tokens/s of 32 greedy tokens{repeats}. Made by:",
        "",
        f"    {command}",
        "",
        "| file | token_embd | file MB | vs source | perplexity | vs source | decode tok/s | vs source | peak RSS MB "
        "| greedy tokens = source | beats | token_embd bytes identical to |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['file']} | {row['token_embd']} | {row['file_bytes'] / 1e6:.1f} "
            f"| {row['file_bytes'] / source['file_bytes'] - 1:+.1%} "
            f"| {row['perplexity']:.3f} | {row['perplexity'] / source['perplexity'] - 1:+.2%} "
            f"| {row['decode_tokens_per_s']:.1f} | {row['decode_tokens_per_s'] / source['decode_tokens_per_s']:.2f}x "
            f"| {row['peak_rss_bytes'] / 1e6:.0f} | {row['greedy_agrees_with_source']}/32 "
            f"| {', '.join(row['beats']) or '–'} "
            f"| {', '.join(row['same_token_embd_as']) or '–'} |"
        )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
