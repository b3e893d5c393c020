"""Produce the figures the README quotes, on the real models and the real evaluation data.

    python tools/readme_numbers.py --data ../shared/data -o readme-numbers/

Writes readme-numbers/numbers.md (the tables pasted into the README), numbers.json, and the
inspect plot of MiniLM (minilm-inspect.png). Evaluation data are the user's: STS-B dev (STS TSV)
and Cranfield (BEIR folder), given by path.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from edgeemb.analysis import analyze_table
from edgeemb.pipeline import EvaluationData, compress, model_facts
from edgeemb.recipe import parse_recipe
from edgeemb.report.markdown import human_bytes
from edgeemb.report.plots import plot_analysis
from edgeemb.results import to_dict
from edgeemb.sources import open_model

RECIPES = {
    "int8": {"steps": [{"quantize": {"format": "int8"}}]},
    "int4": {"steps": [{"quantize": {"format": "int4", "block_size": 32}}]},
    "svd-r256-int4": {"steps": [{"svd": {"rank": 256}}, {"quantize": {"format": "int4", "block_size": 32}}]},
    "svd-r128-int4": {"steps": [{"svd": {"rank": 128}}, {"quantize": {"format": "int4", "block_size": 32}}]},
}


def inspect_rows(names: list[str], out: Path) -> tuple[list[dict], list[str]]:
    rows: list[dict] = []
    lines = [
        "| model | table | stored as | table bytes | share of params | share of bytes | head "
        "| 90/95/99% energy rank | anisotropy | hubness skew | low-norm rows | inspect time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        start = time.perf_counter()
        model = open_model(name)
        analysis = analyze_table(model.table.weight, model.tokens)
        seconds = time.perf_counter() - start
        if name == "minilm":
            plot_analysis(analysis, out / "minilm-inspect.png", title="minilm: embedding table")
        facts = to_dict(model_facts(model))
        ranks = "/".join(str(r) for r in analysis.spectrum.energy_rank.values())
        head = {None: "none", True: "tied", False: "untied"}[facts["tied"]]
        lines.append(
            f"| {name} | {facts['vocab']} x {facts['dim']} | {facts['stored_dtype']} | "
            f"{human_bytes(facts['table_bytes'])} | "
            f"{facts['table_share_of_params']:.1%} | {facts['table_share_of_bytes']:.1%} | {head} | {ranks} | "
            f"{analysis.anisotropy.mean_pair_cosine:.3f} | {analysis.hubness.skewness:.2f} | "
            f"{analysis.norms.outlier_low_count} | {seconds:.1f} s |"
        )
        rows.append(
            {
                "model": facts,
                "analysis": {
                    "energy_rank": analysis.spectrum.energy_rank,
                    "anisotropy": asdict(analysis.anisotropy),
                    "hubness_skew": analysis.hubness.skewness,
                    "low_norm_rows": analysis.norms.outlier_low_count,
                },
                "seconds": seconds,
            }
        )
    return rows, lines


def compress_rows(data: Path) -> tuple[list[dict], list[str]]:
    evaluation = EvaluationData(sts=data / "stsb" / "stsb_en_dev.tsv", beir=data / "cranfield_beir")
    source = open_model("minilm")
    rows: list[dict] = []
    lines = [
        "| recipe | storage | table bytes | smaller | bits/param | row cosine (mean / p1) | top-10 NN overlap "
        "| STS-B dev Spearman | Cranfield nDCG@10 | recall@10 | sentence cosine (mean / p1) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as scratch:
        for name, recipe in RECIPES.items():
            result = compress(source, parse_recipe({"name": name, **recipe}), Path(scratch) / name, data=evaluation)
            report = to_dict(result.report)
            table, quality = report["table"], report["quality"]
            tq, sts, ret, drift = quality["table"], quality["sts"], quality["retrieval"], quality["drift"]
            lines.append(
                f"| {name} | {table['storage']} | {human_bytes(table['bytes'])} | {table['ratio_vs_source']:.2f}x | "
                f"{table['bits_per_param']:.2f} | "
                f"{tq['row_cosine_mean']:.4f} / {tq['row_cosine_p1']:.4f} | {tq['nn_overlap_mean']:.3f} | "
                f"{sts['original']:.2f} → {sts['compressed']:.2f} ({sts['delta']:+.2f}) | "
                f"{ret['original']['ndcg_at_10']:.4f} → {ret['compressed']['ndcg_at_10']:.4f} | "
                f"{ret['original']['recall_at_10']:.4f} → {ret['compressed']['recall_at_10']:.4f} | "
                f"{drift['mean_cosine']:.4f} / {drift['p01_cosine']:.4f} |"
            )
            rows.append({"recipe": name, "report": report})
    return rows, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("-o", "--out", type=Path, default=Path("readme-numbers"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    inspected, inspect_lines = inspect_rows(["minilm", "smollm2-135m", "gemma3-270m"], args.out)
    compressed, compress_lines = compress_rows(args.data)
    (args.out / "numbers.md").write_text(
        "\n".join(["## inspect", "", *inspect_lines, "", "## compress minilm", "", *compress_lines]) + "\n"
    )
    (args.out / "numbers.json").write_text(json.dumps({"inspect": inspected, "compress": compressed}, indent=2) + "\n")
    print((args.out / "numbers.md").read_text())


if __name__ == "__main__":
    main()
