"""Rate–distortion table of every quantisation format, on the real models and data.

    python tools/rate_distortion.py --data ../shared/data -o docs/rate-distortion
    python tools/rate_distortion.py --data ../shared/data -o docs/rate-distortion --only IQ4_NL  # new rows only

For each format (and combinations with svd and mixed precision): bits per parameter (codes,
scales, zero points, codebooks, factors and routing arrays all counted), relative reconstruction
error and mean row cosine; for MiniLM the whole model's STS-B dev Spearman with the table
replaced; for SmolLM2-135M the WikiText-2 perplexity of the first 4096 test tokens with the
(tied) table replaced, through the transformers model that dequantises the GGUF.

Writes OUT.md (the README's table), OUT.json and OUT.png. `--only` measures just the rows named
(no source row) and merges them into the existing OUT.json, in the grid's order.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edgeemb.errors import EdgeembError
from edgeemb.evaluate.perplexity import CausalLM
from edgeemb.pipeline import EvaluationData, evaluate_quality
from edgeemb.recipe import parse_recipe
from edgeemb.sources import open_model
from edgeemb.steps import StepContext


def q(fmt: str, **options) -> dict:
    return {"quantize": {"format": fmt, **options}}


def svd(rank: int) -> dict:
    return {"svd": {"rank": rank}}


def mixed(frequent: dict, rare: dict, fraction: float, corpus: Path) -> dict:
    return {
        "mixed_precision": {"frequent": frequent, "rare": rare, "frequent_fraction": fraction, "corpus": str(corpus)}
    }


def grid(corpus: Path, dim: int) -> dict[str, list[dict]]:
    pq = lambda dims: {"format": "pq", "subspaces": dim // dims}  # noqa: E731  (sub-spaces of `dims` values: 8/dims bits per value)
    return {
        "int8 per row": [q("int8")],
        "int8 per row, zero points": [q("int8", zero_point=True)],
        "Q8_0": [q("Q8_0")],
        "Q6_K": [q("Q6_K")],
        "Q5_0": [q("Q5_0")],
        "int4 b16": [q("int4", block_size=16)],
        "int4 b32": [q("int4", block_size=32)],
        "int4 b32, zero points": [q("int4", block_size=32, zero_point=True)],
        "int4 b64": [q("int4", block_size=64)],
        "int4 b128": [q("int4", block_size=128)],
        "Q4_0": [q("Q4_0")],
        "Q4_1": [q("Q4_1")],
        "IQ4_NL": [q("IQ4_NL")],
        "Q4_K": [q("Q4_K")],
        "int2 b16": [q("int2", block_size=16)],
        "int2 b32": [q("int2", block_size=32)],
        "pq, 4 values per sub-space": [{"quantize": pq(4)}],
        "pq, 6 values per sub-space": [{"quantize": pq(6)}],
        # 10 Lloyd iterations, as when these rows were measured; the format's default is now 8.
        "vocab k-means 4096": [q("vocab_kmeans", clusters=4096, iterations=10)],
        "svd r256 + int4 b32": [svd(256), q("int4", block_size=32)],
        "svd r128 + int4 b32": [svd(128), q("int4", block_size=32)],
        "svd r256 + int2 b16": [svd(256), q("int2", block_size=16)],
        "mixed: 10% int8, rest int4 b32": [mixed({"format": "int8"}, {"format": "int4"}, 0.1, corpus)],
        "mixed: 10% int4 b32, rest int2 b32": [mixed({"format": "int4"}, {"format": "int2"}, 0.1, corpus)],
        "mixed: 10% int4 b32, rest pq 4": [mixed({"format": "int4"}, pq(4), 0.1, corpus)],
        "mixed: 10% int4 b32, rest pq 6": [mixed({"format": "int4"}, pq(6), 0.1, corpus)],
        "mixed: 20% int4 b32, rest pq 6": [mixed({"format": "int4"}, pq(6), 0.2, corpus)],
    }


def measure(model_name: str, data: Path, corpus: Path, text: str | None, only: set[str] | None = None) -> list[dict]:
    source = open_model(model_name)
    context = StepContext(source.tokens, source.tokenize)
    sentence_data = (
        EvaluationData(sts=data / "stsb" / "stsb_en_dev.tsv")
        if source.format == "sentence-transformers"
        else EvaluationData()
    )
    lm = ids = None
    rows = []
    if text is not None:
        lm = CausalLM(source.path)
        ids = lm.tokens(text, 4096)
    if lm is not None and only is None:
        rows.append(
            {
                "model": model_name,
                "format": "source table (" + source.stored_dtype + ")",
                "bits_per_param": 8 * source.stored_nbytes / source.table_params,
                "perplexity": lm.perplexity(ids).perplexity,
                "tokens": len(ids),
            }
        )
    for label, steps in grid(corpus, source.dim).items():
        if only is not None and label not in only:
            continue
        row = {"model": model_name, "format": label}
        try:
            start = time.perf_counter()
            table = parse_recipe({"name": label, "steps": steps}).apply(source.table, context)
            row["quantize_seconds"] = time.perf_counter() - start
        except EdgeembError as exc:
            rows.append({**row, "skipped": str(exc)})
            continue
        quality = evaluate_quality(source, table, sentence_data)
        row.update(
            storage=table.describe(),
            bytes=table.nbytes,
            bits_per_param=table.bits_per_param,
            ratio_vs_fp32=4 * source.table_params / table.nbytes,
            relative_error=quality.table.relative_error,
            row_cosine_mean=quality.table.row_cosine_mean,
        )
        if quality.sts is not None:
            row.update(sts=quality.sts.compressed, sts_original=quality.sts.original)
        if lm is not None:
            row["perplexity"] = lm.perplexity(ids, table.to_dense()).perplexity
        rows.append(row)
    return rows


def merged(old: list[dict], new: list[dict], labels: list[str]) -> list[dict]:
    """`old` rows with the `new` ones replacing or joining them; each model's rows in grid order
    (its source row first)."""
    fresh = {(r["model"], r["format"]): r for r in new}
    rows = [fresh.pop((r["model"], r["format"]), r) for r in old] + list(fresh.values())
    models = list(dict.fromkeys(r["model"] for r in rows))
    rank = {label: i for i, label in enumerate(labels)}
    return sorted(rows, key=lambda r: (models.index(r["model"]), rank.get(r["format"], -1)))


def markdown(rows: list[dict]) -> str:
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        quality = "STS-B dev Spearman" if any("sts" in r for r in mine) else "WikiText-2 ppl (4096 tokens)"
        lines += [
            f"### {model}",
            "",
            f"| format | bits/param | smaller than fp32 | relative error | mean row cosine | {quality} |",
            "|---|---|---|---|---|---|",
        ]
        for r in mine:
            if "skipped" in r:
                lines.append(f"| {r['format']} | – | – | – | – | not applicable: {r['skipped']} |")
                continue
            score = (
                f"{r['sts']:.2f} ({r['sts'] - r['sts_original']:+.2f})"
                if "sts" in r
                else f"{r['perplexity']:.2f}"
                if "perplexity" in r
                else "–"
            )
            if "relative_error" not in r:
                lines.append(f"| {r['format']} | {r['bits_per_param']:.2f} | – | 0 | 1 | {score} |")
                continue
            lines.append(
                f"| {r['format']} | {r['bits_per_param']:.2f} | {r['ratio_vs_fp32']:.1f}x "
                f"| {r['relative_error']:.4f} | {r['row_cosine_mean']:.4f} | {score} |"
            )
        if any("sts_original" in r for r in mine):
            original = next(r["sts_original"] for r in mine if "sts_original" in r)
            lines.append(f"\nOriginal model: STS-B dev Spearman {original:.2f}.")
        lines.append("")
    return "\n".join(lines)


def frontier(points: list[tuple[float, float]], higher_is_better: bool) -> set[int]:
    """Indices of the points no other point beats on both size and quality."""
    sign = 1 if higher_is_better else -1
    return {
        i
        for i, (bits, quality) in enumerate(points)
        if not any(b <= bits and sign * q >= sign * quality and (b, q) != (bits, quality) for b, q in points)
    }


def plot(rows: list[dict], path: Path) -> None:
    """Quality against bits per parameter; the Pareto frontier is labelled and joined."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [
        ("minilm", "sts", "MiniLM: STS-B dev Spearman x100", True),
        ("smollm2-135m", "perplexity", "SmolLM2-135M: WikiText-2 perplexity (log)", False),
    ]
    figure = Figure(figsize=(15, 6), layout="constrained")
    for axis, (model, key, title, higher) in zip(figure.subplots(1, 2), panels):
        mine = [r for r in rows if r["model"] == model and key in r and "relative_error" in r]
        if not mine:
            continue
        points = [(r["bits_per_param"], r[key]) for r in mine]
        best = frontier(points, higher)
        axis.scatter(*zip(*points), s=14, color="tab:gray", label="measured")
        line = sorted(points[i] for i in best)
        axis.plot(*zip(*line), "-o", color="tab:blue", markersize=4, label="Pareto frontier")
        for i in best:
            axis.annotate(mine[i]["format"], points[i], fontsize=7, xytext=(4, 3), textcoords="offset points")
        if higher:
            original = mine[0]["sts_original"]
            axis.axhline(original, color="tab:green", linestyle="--", linewidth=1, label=f"original {original:.2f}")
            axis.set_ylim(original - 2.0, original + 0.4)  # lower points are off the chart: see the table
        else:
            axis.set_yscale("log")
        axis.set(xlabel="bits per parameter (everything counted)", title=title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    FigureCanvasAgg(figure).print_png(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("-o", "--out", type=Path, default=Path("rate-distortion"), help="output path without suffix")
    parser.add_argument("--models", default="minilm,smollm2-135m")
    parser.add_argument(
        "--from-json", action="store_true", help="re-render OUT.md and OUT.png from OUT.json without measuring"
    )
    parser.add_argument("--only", help="grid rows to measure (comma-separated labels), merged into OUT.json")
    args = parser.parse_args()
    if args.from_json:
        rows = json.loads(args.out.with_suffix(".json").read_text())
        args.out.with_suffix(".md").write_text(markdown(rows))
        plot(rows, args.out.with_suffix(".png"))
        return
    corpus = args.data / "wikitext2" / "wikitext2_raw_test_joined.txt"
    text = corpus.read_text(encoding="utf-8")
    only = set(args.only.split(",")) if args.only else None
    labels = list(grid(corpus, 384))
    if only is not None and not only <= set(labels):
        parser.error(f"--only: no grid row {sorted(only - set(labels))[0]!r}")
    rows = []
    for name in args.models.split(","):
        rows += measure(name, args.data, corpus, text if name != "minilm" else None, only)
    if only is not None:
        rows = merged(json.loads(args.out.with_suffix(".json").read_text()), rows, labels)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows))
    plot(rows, args.out.with_suffix(".png"))
    print(markdown(rows))


if __name__ == "__main__":
    main()
