"""Word-level and context probes of the real models, original against compressed tables.

    python tools/word_probes.py --data ../shared/data -o docs/word-probes

WordSim353 and SimLex-999 Spearman of the static table (mean of the rows of ' ' + word's pieces)
for MiniLM, SmolLM2-135M and Gemma 3 270M, and of MiniLM's contextual model (the word alone
through the sentence model), for the original table, int4 blocks of 32 and the smallest recipe
of docs/rate-distortion.md (PQ with 6 values per sub-space); the bare word's pieces beside the
running-text ones, which is why edgeemb tokenises ' ' + word. Then edgeemb's built-in context
probes on MiniLM: mean cosine per relation and the polysemy and synonymy AUCs, by language.

Writes OUT.md, OUT.json and OUT.png (probe cosines by relation; word Spearman by table).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from edgeemb.evaluate.data import read_probes, read_word_pairs
from edgeemb.evaluate.encoder import sentence_encoder
from edgeemb.evaluate.probes import builtin_probes, probe_cosines
from edgeemb.evaluate.words import coverage, static_vectors, word_pieces, word_spearman
from edgeemb.pipeline import EvaluationData, evaluate_quality
from edgeemb.recipe import parse_recipe
from edgeemb.results import to_dict
from edgeemb.sources import open_model

MODELS = ("minilm", "smollm2-135m", "gemma3-270m")


def tables(dim: int) -> dict[str, dict]:
    """Recipes by label: int4 and the smallest rate-distortion row (PQ, 6 values per sub-space;
    5 where 6 does not divide the width, as Gemma's 640)."""
    values = 6 if dim % 6 == 0 else 5
    return {
        "int4 b32": {"name": "int4", "steps": [{"quantize": {"format": "int4", "block_size": 32}}]},
        f"pq, {values} values per sub-space": {
            "name": "pq",
            "steps": [{"quantize": {"format": "pq", "subspaces": dim // values}}],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("-o", "--out", type=Path, default=Path("docs/word-probes"))
    args = parser.parse_args()
    started = time.perf_counter()
    word_files = [args.data / "word_similarity" / f for f in ("wordsim353.tsv", "simlex999.tsv")]
    result: dict = {"words": [], "tokenisation": [], "probes": []}
    probe_set = read_probes(builtin_probes())
    probe_cosine_sets: dict[str, np.ndarray] = {}

    for name in MODELS:
        model = open_model(name)
        for path in word_files:
            pairs = read_word_pairs(path)
            for label, tokenize in (("' ' + word", model.tokenize), ("word alone", lambda t: model.tokenize(t[1:]))):
                pieces = word_pieces(pairs.words1 + pairs.words2, tokenize, None)
                covered, scored = coverage(pairs, pieces)
                spearman = word_spearman(pairs, static_vectors(model.table, pieces), scored)
                result["tokenisation"].append(
                    dict(
                        model=name,
                        data=path.name,
                        pieces=label,
                        single_piece=covered.single_piece,
                        words=covered.words,
                        static=spearman,
                    )
                )
        sentence_model = model.format == "sentence-transformers"
        for label, recipe in {"original": None, **tables(model.dim)}.items():
            table = model.table if recipe is None else parse_recipe(recipe).apply(model.table)
            data = EvaluationData(words=tuple(word_files), builtin_probes=sentence_model)
            quality = evaluate_quality(model, table, data)
            for words in quality.words:
                result["words"].append(dict(model=name, table=label, **to_dict(words)))
            if sentence_model:
                result["probes"].append(dict(model=name, table=label, **to_dict(quality.probes)))
                encoder = sentence_encoder(model.path, model.sha256)
                spans = encoder.span_encoder(None if recipe is None else table.to_dense())
                probe_cosine_sets[label] = probe_cosines(spans, probe_set)
        print(f"{name} done at {time.perf_counter() - started:.0f} s", flush=True)

    result["seconds"] = round(time.perf_counter() - started, 1)
    result["command"] = "python tools/word_probes.py --data ../shared/data -o docs/word-probes"
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render(result))
    plot(result, probe_cosine_sets, np.asarray(probe_set.relations), args.out.with_suffix(".png"))


def render(result: dict) -> str:
    lines = [
        "# Word-level and context probes: do compressed tables keep meaning?",
        "",
        f"Measured with `{result['command']}` ({result['seconds'] / 60:.1f} min on this 2-core machine).",
        "Rerun it to reproduce every figure on this page. The same figures come from",
        "`edgeemb evaluate OUT --words FILE --builtin-probes` (or `compress ... --words ... --probes FILE`).",
        "",
        "## Word similarity (Spearman x100)",
        "",
        "Static: the mean of the table rows of the word's pieces. Contextual: the sentence model's",
        "embedding of the word alone (sentence-embedding models only). All pairs of both files are",
        "covered by every tokenizer here.",
        "",
        "| model | table | WordSim353 static | SimLex-999 static | WordSim353 contextual | SimLex-999 contextual |",
        "|---|---|---|---|---|---|",
    ]
    rows: dict[tuple[str, str], dict[str, dict]] = {}
    for words in result["words"]:
        rows.setdefault((words["model"], words["table"]), {})[Path(words["data"]).name] = words
    for (model, table), by_file in rows.items():
        ws, sl = by_file["wordsim353.tsv"], by_file["simlex999.tsv"]

        def cell(words: dict, key: str) -> str:
            value = words.get(f"{key}_compressed")
            if value is None:
                return "–"
            if table == "original":
                return f"{value:.2f}"
            return f"{value:.2f} ({value - words[f'{key}_original']:+.2f})"

        lines.append(
            f"| {model} | {table} | {cell(ws, 'static')} | {cell(sl, 'static')} | "
            f"{cell(ws, 'contextual')} | {cell(sl, 'contextual')} |"
        )
    lines += [
        "",
        "### Why ' ' + word",
        "",
        "Byte-level BPE (SmolLM2) and SentencePiece (Gemma) keep the space before a word in its first",
        "piece; the bare word falls into rarer, split pieces. Static Spearman of the original table:",
        "",
        "| model | data | pieces | one-piece words | static Spearman |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {t['model']} | {t['data']} | {t['pieces']} | {t['single_piece']} of {t['words']} | {t['static']:.2f} |"
        for t in result["tokenisation"]
    ]
    lines += [
        "",
        "## Context probes (MiniLM, edgeemb's built-in set)",
        "",
        "A span's vector is the mean of the last hidden states over its tokens; a probe scores the",
        "cosine of its two spans. Polysemy AUC: P(a same-sense probe scores above a different-sense",
        "one); synonymy AUC: P(a synonym probe scores above a different-sense one), i.e. does meaning",
        "beat word form. 0.5 is chance.",
        "",
        "| table | same-sense cos | different-sense cos | synonym cos | polysemy AUC | synonymy AUC |",
        "|---|---|---|---|---|---|",
    ]
    for probes in result["probes"]:
        means = {r["relation"]: r["compressed"] for r in probes["relations"]}
        aucs = {s["name"]: s["compressed"] for s in probes["separations"]}
        lines.append(
            f"| {probes['table']} | {means['same-sense']:.4f} | {means['different-sense']:.4f} | "
            f"{means['synonym']:.4f} | {aucs['polysemy']:.3f} | {aucs['synonymy']:.3f} |"
        )
    lines += ["", "By language (polysemy AUC / synonymy AUC; few probes outside English):", ""]
    languages = sorted(result["probes"][0]["languages"])
    lines += ["| table | " + " | ".join(languages) + " |", "|---|" + "---|" * len(languages)]
    for probes in result["probes"]:
        cells = []
        for language in languages:
            found = {s["name"]: s["compressed"] for s in probes["languages"][language]}
            cells.append(f"{found['polysemy']:.2f} / {found['synonymy']:.2f}")
        lines.append(f"| {probes['table']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "![probe cosines by relation; word Spearman by table](word-probes.png)",
        "",
    ]
    return "\n".join(lines)


def plot(result: dict, cosines: dict[str, np.ndarray], relations: np.ndarray, path: Path) -> None:
    import matplotlib  # plotting only in this tool

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = ("same-sense", "different-sense", "synonym")
    width = 0.8 / len(cosines)
    for i, (label, values) in enumerate(cosines.items()):
        positions = np.arange(len(names)) + (i - (len(cosines) - 1) / 2) * width
        parts = left.boxplot(
            [values[relations == name] for name in names],
            positions=positions,
            widths=width * 0.9,
            patch_artist=True,
            manage_ticks=False,
        )
        for box in parts["boxes"]:
            box.set_facecolor(f"C{i}")
        left.plot([], [], color=f"C{i}", linewidth=8, label=label)
    left.set_xticks(range(len(names)), names)
    left.set_ylabel("cosine of the two spans' vectors")
    left.set_title("MiniLM, built-in probes: cosine by relation")
    left.legend(fontsize=8)
    labels = [f"{w['model']}\n{w['table']}" for w in result["words"] if w["data"].endswith("simlex999.tsv")]
    simlex = [w["static_compressed"] for w in result["words"] if w["data"].endswith("simlex999.tsv")]
    wordsim = [w["static_compressed"] for w in result["words"] if w["data"].endswith("wordsim353.tsv")]
    x = np.arange(len(labels))
    right.bar(x - 0.2, wordsim, 0.4, label="WordSim353")
    right.bar(x + 0.2, simlex, 0.4, label="SimLex-999")
    right.set_xticks(x, labels, fontsize=6, rotation=60, ha="right")
    right.set_ylabel("static table Spearman x100")
    right.set_title("word similarity of the static table")
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
