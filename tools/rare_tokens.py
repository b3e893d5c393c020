"""The rare-token audit on Cranfield's corpus for MiniLM, with the error by frequency band of int4
and PQ (issue #23's must-show).

    python tools/rare_tokens.py --data ../shared/data -o docs

MiniLM is compressed with the built-in `int4` and `minilm-pq` recipes into temporary folders
(`edgeemb.pipeline.compress`, no evaluation data); `edgeemb.audit.audit_corpus` then audits
Cranfield's documents (cranfield_beir/corpus.jsonl) against the table and both outputs.
The same figures, as the CLI gives them:

    edgeemb compress minilm -r int4 -o out/minilm-int4
    edgeemb compress minilm -r minilm-pq -o out/minilm-pq
    edgeemb inspect minilm --corpus cranfield_beir --compressed out/minilm-int4 --compressed out/minilm-pq

OUT/ gets rare-tokens.json (every figure, the command and its wall times), rare-tokens.md and
rare-tokens.png; `--render` rewrites the markdown from the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeemb.analysis import OUTLIER_Z, norm_outlier_z, row_norms
from edgeemb.audit import audit_corpus
from edgeemb.pipeline import compress
from edgeemb.report.plots import plot_audit
from edgeemb.results import to_dict
from edgeemb.sources import open_model
from edgeemb.steps.trim import corpus_lines, token_counts

MODEL = "minilm"
RECIPES = ("int4", "minilm-pq")


def measure(data: Path, plot: Path) -> dict:
    corpus = data / "cranfield_beir"
    started = time.perf_counter()
    source = open_model(MODEL)
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="edgeemb-rare-") as folder:
        outs = []
        for recipe in RECIPES:
            begun = time.perf_counter()
            outs.append(compress(source, recipe, Path(folder) / recipe).out)
            seconds[f"compress {recipe}"] = time.perf_counter() - begun
        begun = time.perf_counter()
        audit = audit_corpus(source, [corpus], outs)
        seconds["audit"] = time.perf_counter() - begun
    plot_audit(audit, plot, title=f"{MODEL}: rare-token audit")
    seconds["total"] = time.perf_counter() - started
    return {
        "command": "python tools/rare_tokens.py " + " ".join(sys.argv[1:]),
        "cpus": os.cpu_count(),
        "wall_seconds": seconds,
        "model": MODEL,
        "low_norm_context": low_norm_context(source, corpus),
        "audit": to_dict(audit),
    }


def low_norm_context(source, corpus: Path) -> dict:
    """The table's low-norm rows (inspect's outliers) and how close the corpus's rows come to them."""
    z = norm_outlier_z(row_norms(source.table.weight))
    counts = token_counts(source.tokenize, corpus_lines((corpus,), "rare_tokens"), source.vocab_size)
    used = np.flatnonzero(counts[: source.vocab_size] > 0)
    lowest = used[np.argsort(z[used])[:5]]
    return {
        "table_low_norm_rows": int((z < -OUTLIER_Z).sum()),
        "used_low_norm_rows": int((z[used] < -OUTLIER_Z).sum()),
        "lowest_used": [{"token": source.tokens[i], "count": int(counts[i]), "norm_z": float(z[i])} for i in lowest],
    }


def markdown(results: dict) -> str:
    audit = results["audit"]
    bands = audit["bands"]
    outputs = audit["compressed"]
    context = results["low_norm_context"]
    seconds = results["wall_seconds"]
    lines = [
        "# Rare tokens: which rows Cranfield uses, and what int4 and PQ do to them",
        "",
        f"`{results['command']}` ({seconds['total']:.0f} s wall on {results['cpus']} shared cores: "
        + ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items() if name != "total")
        + "). The same audit from the CLI: `edgeemb inspect minilm --corpus cranfield_beir "
        "--compressed out/minilm-int4 --compressed out/minilm-pq`.",
        "",
        f"Cranfield's {audit['lines']:,} documents are {audit['tokens']:,} MiniLM tokens on "
        f"{audit['distinct_rows']:,} of the table's {audit['rows']:,} rows ({audit['unknown_tokens']} unknown). "
        f"Bands: *frequent*, the most frequent rows covering {audit['band_edges'][0]:.0%} of the tokens; *mid*, "
        f"to {audit['band_edges'][1]:.0%}; *rare*, the rest the corpus uses; *unused*, the rows it never uses.",
        "",
        "| band | rows | share of tokens | tokens per row | median row norm "
        f"| mean cosine to {audit['k']} nearest rows |",
        "|---|---|---|---|---|---|",
    ]
    for band in bands:
        sampled = f" ({band['neighbour_rows']:,}-row sample)" if band["neighbour_rows"] < band["rows"] else ""
        counts = f"{band['count_min']:,}-{band['count_max']:,}" if band["tokens"] else "0"
        lines.append(
            f"| {band['name']} | {band['rows']:,} | {band['token_share']:.1%} | {counts} | {band['median_norm']:.3f} "
            f"| {band['neighbour_cosine']:.3f}{sampled} |"
        )
    lowest = ", ".join(f"{row['token']!r} (z {row['norm_z']:.1f}, {row['count']}x)" for row in context["lowest_used"])
    lines += [
        "",
        f"Nearest rows are searched over the whole table for at most {audit['sample']:,} rows per band "
        f"(seed {audit['seed']}).",
        "",
        "## Undertrained rows",
        "",
        f"{audit['undertrained_count']} of the rows Cranfield uses look undertrained: a log norm below "
        f"-{audit['outlier_z']:g} robust z (inspect's low-norm outliers), or a mean {audit['k']}-NN cosine below "
        f"{audit['neighbour_cosine_low']:.3f} (the same robust test on a {audit['neighbour_reference_rows']:,}-row "
        f"table sample). The table has {context['table_low_norm_rows']:,} low-norm rows; the corpus uses "
        f"{context['used_low_norm_rows']} of them. Its lowest-norm rows: {lowest}.",
    ]
    for row in audit["undertrained"][:12]:
        lines.append(f"- {row['token']!r}: {row['count']}x, norm {row['norm']:.3f} (z {row['norm_z']:.1f})")
    names = [Path(output["path"]).name for output in outputs]
    lines += [
        "",
        "## Error by frequency band",
        "",
        "Relative error ||W_b - W'_b||_F / ||W_b||_F and mean row cosine of each band's rows against the original "
        "table; the last row weights each used row by its count (the error the corpus's text meets).",
        "",
        "| band | " + " | ".join(f"{name} error | {name} row cosine" for name in names) + " |",
        "|---|" + "---|---|" * len(names),
    ]
    for index, band in enumerate(bands):
        cells = [
            f"{output['bands'][index]['relative_error']:.4f} | {output['bands'][index]['row_cosine_mean']:.4f}"
            for output in outputs
        ]
        lines.append(f"| {band['name']} | " + " | ".join(cells) + " |")
    lines.append("| corpus-weighted | " + " | ".join(f"{o['corpus_relative_error']:.4f} | -" for o in outputs) + " |")
    lines += ["", *(_finding(name, output) for name, output in zip(names, outputs)), ""]
    lines += ["![rare-token audit](rare-tokens.png)", ""]
    return "\n".join(lines)


def _finding(name: str, output: dict) -> str:
    by_band = {band["band"]: band["relative_error"] for band in output["bands"]}
    frequent, rare = by_band["frequent"], by_band["rare"]
    return (
        f"- {name} ({output['storage']}): the frequent band's error is {frequent:.4f}, the rare band's "
        f"{rare:.4f} ({frequent / rare - 1:+.1%} for the frequent rows)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="the shared data folder (holding cranfield_beir/)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="folder for rare-tokens.{json,md,png}")
    parser.add_argument("--render", action="store_true", help="only rewrite OUT/rare-tokens.md from its JSON")
    args = parser.parse_args()
    json_path, md_path = args.out / "rare-tokens.json", args.out / "rare-tokens.md"
    if args.render:
        md_path.write_text(markdown(json.loads(json_path.read_text())))
        return
    if args.data is None:
        parser.error("--data is required (the shared data folder holding cranfield_beir/)")
    args.out.mkdir(parents=True, exist_ok=True)
    results = measure(args.data, args.out / "rare-tokens.png")
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path.write_text(markdown(results))
    print(md_path.read_text())


if __name__ == "__main__":
    main()
