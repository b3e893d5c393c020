"""Vocabulary trimming on the real models, in one run: issue #8's README numbers.

    python tools/trim_numbers.py --data ../shared/data -o docs/trim

Gemma 3 270M: WikiText-2 (test) is cut at the line nearest its middle. The trims count tokens in
the second half; every GGUF is scored in llama.cpp on the first 4096 tokens of the first half
(bits per byte, and perplexity per source token), beside the shipped file and llama.cpp's own
token_embd Q5_0 in the same sweep.
The lines of the first half that contain letters of other scripts (CJK, Cyrillic, Greek, ...)
are scored again on their own: text the English trim was not made for.

MiniLM: trimmed to the pieces of Cranfield's documents (its queries are held out by BEIR's
layout), then scored on STS-B dev (another domain) and Cranfield retrieval.

Writes OUT/gemma3-270m/ and OUT/minilm/ (one output folder per recipe, and compare.md), and
OUT/trim.json with the figures the README quotes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from edgeemb.evaluate.llamacpp import measure_ggufs
from edgeemb.pipeline import EvaluationData
from edgeemb.recipe import load_recipe, parse_recipe
from edgeemb.report.compare import to_markdown
from edgeemb.sweep import sweep
from edgeemb.vocab import char_script


def gemma_recipes(corpus: Path) -> list:
    """Trims counted on `corpus`: alone, and united with script policies; as stored (Q8_0) and
    with llama.cpp's Q5_0 rule; beside llama.cpp's own token_embd Q5_0 of the whole vocabulary."""
    corpus_only = {"corpus": [str(corpus)]}
    english = {"scripts": ["latin"], "characters": True, "corpus": [str(corpus)]}
    compact = {"scripts": ["ascii", {"latin": 100000}], "characters": True, "corpus": [str(corpus)]}
    q5_0 = {"quantize": {"format": "Q5_0"}}
    return [
        parse_recipe({"name": "trim-corpus", "steps": [{"trim_vocab": corpus_only}], "export": {"format": "gguf", "type": "Q8_0"}}),
        parse_recipe({"name": "trim-english", "steps": [{"trim_vocab": english}], "export": {"format": "gguf", "type": "Q8_0"}}),
        parse_recipe({"name": "trim-english-q5_0", "steps": [{"trim_vocab": english}, q5_0], "export": {"format": "gguf"}}),
        parse_recipe({"name": "trim-english-compact-q5_0", "steps": [{"trim_vocab": compact}, q5_0], "export": {"format": "gguf"}}),
        load_recipe("peer-llama-q5_0"),
    ]


def other_script_lines(text: str) -> str:
    """Lines with a letter outside ASCII and Latin (CJK, Cyrillic, Greek, ...)."""
    return "\n".join(line for line in text.splitlines() if any(char_script(c) not in ("ascii", "common", "latin") for c in line)) + "\n"


def row(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    ppl, export = report["quality"].get("perplexity", {}), report.get("export", {}).get("export", {})
    return {
        "output": out.name, "storage": report["table"]["storage"], "vocabulary": report["table"].get("vocabulary"),
        "file_bytes": export.get("file_bytes"), "source_bytes": export.get("source_bytes"),
        "perplexity": ppl.get("compressed"), "source_perplexity": ppl.get("original"), "bits_per_byte": ppl.get("bits_per_byte"),
        "tokens_scored": ppl.get("compressed_tokens_scored", ppl.get("tokens_scored")),
        "sts": report["quality"].get("sts"), "retrieval": report["quality"].get("retrieval"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared data folder (wikitext2/, stsb/, cranfield_beir/)")
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--skip", choices=["gemma", "minilm"], action="append", default=[])
    args = parser.parse_args()
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
            result = sweep("gemma3-270m", gemma_recipes(second), [], args.out / "gemma3-270m", data=data, force=True)
            (args.out / "gemma3-270m" / "compare.md").write_text(to_markdown(result.comparison))
            results["gemma3-270m"] = [row(out) for out in result.outs]
            others = Path(folder) / "other-scripts.txt"
            others.write_text(other_script_lines(text[:middle]), encoding="utf-8")
            source = Path(json.loads((result.outs[0] / "manifest.json").read_text())["source"]["path"])
            trims = [out / "model.gguf" for out in result.outs if out.name in ("trim-english", "trim-english-compact-q5_0")]
            runs = measure_ggufs([source, *trims], others.read_text(encoding="utf-8"), args.max_tokens)
            results["gemma3-270m-other-scripts"] = [
                {"file": run.path, "tokens_scored": run.perplexity.tokens_scored, "bytes_scored": run.perplexity.bytes_scored,
                 "bits_per_byte": run.perplexity.bits_per_byte, "lines": others.read_text(encoding="utf-8").count("\n")}
                for run in runs
            ]
        if "minilm" not in args.skip:
            beir, sts = args.data / "cranfield_beir", args.data / "stsb" / "stsb_en_dev.tsv"
            recipes = [parse_recipe({"name": "trim-cranfield", "steps": [{"trim_vocab": {"corpus": [str(beir)]}}]}),
                       parse_recipe({"name": "trim-cranfield-int4", "steps": [{"trim_vocab": {"corpus": [str(beir)]}}, {"quantize": {"format": "int4", "block_size": 32}}]})]
            result = sweep("minilm", recipes, [], args.out / "minilm", data=EvaluationData(sts=sts, beir=beir), force=True)
            (args.out / "minilm" / "compare.md").write_text(to_markdown(result.comparison))
            results["minilm"] = [row(out) for out in result.outs]
    (args.out / "trim.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
