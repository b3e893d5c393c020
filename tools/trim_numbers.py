"""Vocabulary trimming on the real models, in one run: issue #8's README numbers.

    python tools/trim_numbers.py --data ../shared/data -o docs/trim --work out/trim

Gemma 3 270M: WikiText-2 (test) is cut at the line nearest its middle. The trims count tokens in
the second half; every GGUF is scored in llama.cpp on the first 4096 tokens of the first half
(bits per byte, and perplexity per source token), beside the shipped file and llama.cpp's own
token_embd Q5_0 in the same sweep.
The lines of the first half that contain letters of other scripts (CJK, Cyrillic, Greek, ...)
are scored again on their own: text the English trim was not made for.

MiniLM: trimmed to the pieces of Cranfield's documents (its queries are held out by BEIR's
layout), then scored on STS-B dev (another domain) and Cranfield retrieval.

Each recipe's output folder (GGUF exports included) goes under WORK/gemma3-270m/ and WORK/minilm/;
OUT/ gets compare-gemma3-270m.md, compare-minilm.md, and trim.md and trim.json: the figures the
README quotes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from edgeemb.evaluate.llamacpp import measure_ggufs
from edgeemb.pipeline import EvaluationData
from edgeemb.recipe import load_recipe, parse_recipe
from edgeemb.report.compare import Comparison, to_markdown
from edgeemb.sweep import SweepResult, sweep
from edgeemb.vocab import char_script


def gemma_recipes(corpus: Path) -> list:
    """Trims counted on `corpus`: alone, and united with script policies; as stored (Q8_0) and
    with llama.cpp's Q5_0 rule; beside llama.cpp's own token_embd Q5_0 of the whole vocabulary."""
    corpus_only = {"corpus": [str(corpus)]}
    english = {"scripts": ["latin"], "characters": True, "corpus": [str(corpus)]}
    compact = {"scripts": ["ascii", {"latin": 100000}], "characters": True, "corpus": [str(corpus)]}
    q5_0 = {"quantize": {"format": "Q5_0"}}
    return [
        parse_recipe(
            {
                "name": "trim-corpus",
                "steps": [{"trim_vocab": corpus_only}],
                "export": {"format": "gguf", "type": "Q8_0"},
            }
        ),
        parse_recipe(
            {"name": "trim-english", "steps": [{"trim_vocab": english}], "export": {"format": "gguf", "type": "Q8_0"}}
        ),
        parse_recipe(
            {"name": "trim-english-q5_0", "steps": [{"trim_vocab": english}, q5_0], "export": {"format": "gguf"}}
        ),
        parse_recipe(
            {
                "name": "trim-english-compact-q5_0",
                "steps": [{"trim_vocab": compact}, q5_0],
                "export": {"format": "gguf"},
            }
        ),
        load_recipe("peer-llama-q5_0"),
    ]


def other_script_lines(text: str) -> str:
    """Lines with a letter outside ASCII and Latin (CJK, Cyrillic, Greek, ...)."""
    return (
        "\n".join(
            line for line in text.splitlines() if any(char_script(c) not in ("ascii", "common", "latin") for c in line)
        )
        + "\n"
    )


def compared(result: SweepResult) -> Comparison:
    """The sweep's comparison: these tables need every variant, so one that failed stops the tool."""
    if result.failed or result.comparison is None:
        raise SystemExit(f"variants failed: {result.failed}")
    return result.comparison


def row(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    ppl, export = report["quality"].get("perplexity", {}), report.get("export", {}).get("export", {})
    return {
        "output": out.name,
        "storage": report["table"]["storage"],
        "vocabulary": report["table"].get("vocabulary"),
        "file_bytes": export.get("file_bytes"),
        "source_bytes": export.get("source_bytes"),
        "perplexity": ppl.get("compressed"),
        "source_perplexity": ppl.get("original"),
        "bits_per_byte": ppl.get("bits_per_byte"),
        "tokens_scored": ppl.get("tokens_scored"),
        "table_bytes": report["table"]["bytes"],
        "sts": report["quality"].get("sts"),
        "retrieval": report["quality"].get("retrieval"),
    }


def markdown(results: dict) -> str:
    lines = []
    gemma = results.get("gemma3-270m")
    if gemma:
        first = gemma[0]
        bits = first["bits_per_byte"]["original"]
        lines += [
            f"Gemma 3 270M, shipped GGUF {first['source_bytes'] / 1e6:.1f} MB: "
            f"perplexity {first['source_perplexity']:.3f}, "
            f"{bits:.4f} bits per byte on the first {first['tokens_scored']} tokens of WikiText-2's first half.",
            "",
            "| output | rows | GGUF | vs shipped | bits per byte | perplexity per source token | vs shipped "
            "| held-out lines tokenised differently |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in gemma:
            vocab = row["vocabulary"] or {}
            held = vocab.get("holdout", {})
            lines.append(
                f"| {row['output']} | {vocab.get('rows', 262144):,} | {row['file_bytes'] / 1e6:.1f} MB "
                f"| {row['file_bytes'] / row['source_bytes'] - 1:+.1%} "
                f"| {row['bits_per_byte']['compressed']:.4f} | {row['perplexity']:.3f} "
                f"| {row['perplexity'] / row['source_perplexity'] - 1:+.2%} "
                f"| {held.get('lines_changed', 0):.1%} |"
            )
    others = results.get("gemma3-270m-other-scripts")
    if others:
        lines += [
            "",
            f"Other scripts: the {others[0]['lines']} lines of the first half with CJK, Cyrillic, Greek, ... letters.",
            "",
            "| file | tokens | bits per byte | vs shipped |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {'shipped' if i == 0 else Path(o['file']).parent.name} | {o['tokens_scored']} "
            f"| {o['bits_per_byte']:.4f} | {o['bits_per_byte'] / others[0]['bits_per_byte'] - 1:+.1%} |"
            for i, o in enumerate(others)
        ]
    minilm = results.get("minilm")
    if minilm:
        lines += [
            "",
            "| output | rows | table | STS-B dev (original) | Cranfield nDCG@10 (original) "
            "| held-out documents tokenised differently |",
            "|---|---|---|---|---|---|",
        ]
        for row in minilm:
            sts, ret, vocab = row["sts"], row["retrieval"], row["vocabulary"]
            lines.append(
                f"| {row['output']} | {vocab['rows']:,} of {vocab['source_rows']:,} "
                f"| {row['table_bytes'] / 1e6:.2f} MB | {sts['compressed']:.2f} ({sts['original']:.2f}) "
                f"| {ret['compressed']['ndcg_at_10']:.4f} ({ret['original']['ndcg_at_10']:.4f}) "
                f"| {vocab['holdout']['lines_changed']:.1%} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, required=True, help="the shared data folder (wikitext2/, stsb/, cranfield_beir/)"
    )
    parser.add_argument("-o", "--out", type=Path, required=True, help="folder for the comparisons and trim.json")
    parser.add_argument("--work", type=Path, help="folder for the output folders and their exports (hundreds of MB)")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--skip", choices=["gemma", "minilm"], action="append", default=[])
    parser.add_argument("--render", action="store_true", help="only rewrite OUT/trim.md from OUT/trim.json")
    args = parser.parse_args()
    if args.render:
        (args.out / "trim.md").write_text(markdown(json.loads((args.out / "trim.json").read_text())))
        return
    if args.work is None:
        parser.error("--work is required (the output folders and their exports go there)")
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="edgeemb-trim-") as folder:
        text = (args.data / "wikitext2" / "wikitext2_raw_test_joined.txt").read_text(encoding="utf-8")
        middle = text.index("\n", len(text) // 2) + 1
        first, second = Path(folder) / "wikitext2-first-half.txt", Path(folder) / "wikitext2-second-half.txt"
        first.write_text(text[:middle], encoding="utf-8")
        second.write_text(text[middle:], encoding="utf-8")
        if "gemma" not in args.skip:
            data = EvaluationData(perplexity=first, max_tokens=args.max_tokens)
            result = sweep("gemma3-270m", gemma_recipes(second), [], args.work / "gemma3-270m", data=data, force=True)
            (args.out / "compare-gemma3-270m.md").write_text(to_markdown(compared(result)))
            results["gemma3-270m"] = [row(out) for out in result.outs]
            others = Path(folder) / "other-scripts.txt"
            others.write_text(other_script_lines(text[:middle]), encoding="utf-8")
            source = Path(json.loads((result.outs[0] / "manifest.json").read_text())["source"]["path"])
            trims = [
                out / "model.gguf" for out in result.outs if out.name in ("trim-english", "trim-english-compact-q5_0")
            ]
            runs = measure_ggufs([source, *trims], others.read_text(encoding="utf-8"), args.max_tokens)
            results["gemma3-270m-other-scripts"] = [
                {
                    "file": run.path,
                    "tokens_scored": run.perplexity.tokens_scored,
                    "bytes_scored": run.perplexity.bytes_scored,
                    "bits_per_byte": run.perplexity.bits_per_byte,
                    "lines": others.read_text(encoding="utf-8").count("\n"),
                }
                for run in runs
            ]
        if "minilm" not in args.skip:
            beir, sts = args.data / "cranfield_beir", args.data / "stsb" / "stsb_en_dev.tsv"
            recipes = [
                parse_recipe({"name": "trim-cranfield", "steps": [{"trim_vocab": {"corpus": [str(beir)]}}]}),
                parse_recipe(
                    {
                        "name": "trim-cranfield-int4",
                        "steps": [
                            {"trim_vocab": {"corpus": [str(beir)]}},
                            {"quantize": {"format": "int4", "block_size": 32}},
                        ],
                    }
                ),
            ]
            result = sweep(
                "minilm", recipes, [], args.work / "minilm", data=EvaluationData(sts=sts, beir=beir), force=True
            )
            (args.out / "compare-minilm.md").write_text(to_markdown(compared(result)))
            results["minilm"] = [row(out) for out in result.outs]
    (args.out / "trim.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "trim.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
